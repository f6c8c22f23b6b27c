//! `cotrackpro-voice bench`: many simulated calls at once against the real server, in one
//! process with the simulated providers (realistic timing). Each caller listens to the
//! greeting, then speaks a few short turns and waits for each answer. It prints what a caller
//! waits (end of their speech → first audio frame received), the server's per-stage turn
//! latencies, the CPU time of the server's own threads, and memory.
//!
//! Figures, not pass/fail: the machine, the simulated providers' timing and the simulated
//! callers (which run in the same process) all weigh on them.

use std::collections::HashMap;
use std::error::Error;
use std::time::{Duration, Instant};

use crate::metrics::quantile;
use crate::serve::Server;
use crate::sim::caller::{CallerOptions, Heard, SimCaller};
use crate::sim::Simulators;

pub struct BenchOptions {
    pub calls: usize,
    pub turns: usize,
}

const UTTERANCES: [&str; 4] = [
    "I need help writing this down",
    "It happened last Friday",
    "Can you read that back to me",
    "Thank you that is all",
];

/// One caller's outcome.
struct CallerRun {
    /// Milliseconds from the end of each utterance to the first audio heard back.
    waits_ms: Vec<u64>,
    failed: Option<String>,
}

pub fn run(options: &BenchOptions) -> Result<(), Box<dyn Error>> {
    let sims = Simulators::start()?;
    let records_dir = std::env::temp_dir().join(format!("cotrackpro-bench-{}", std::process::id()));
    let calls = (options.calls + 1).to_string();
    let server = super::start_on_loopback(
        &sims,
        &records_dir,
        &[
            ("LOG_LEVEL", "error"),
            ("MAX_CONCURRENT_CALLS", &calls),
            ("REPROMPT_AFTER_MS", "60000"),
        ],
    )?;
    let result = measure(&server, &sims, options);
    server.shutdown();
    let _ = std::fs::remove_dir_all(&records_dir);
    result
}

fn measure(
    server: &Server,
    sims: &Simulators,
    options: &BenchOptions,
) -> Result<(), Box<dyn Error>> {
    let baseline_rss = rss_kib();
    let mut cpu_seen = HashMap::new();
    sample_server_cpu(&mut cpu_seen);
    let baseline_cpu: f64 = cpu_seen.values().sum();
    let started = Instant::now();
    let utterances = options.calls * options.turns;
    sims.elevenlabs
        .stt()
        .push_utterances((0..utterances).map(|i| UTTERANCES[i % UTTERANCES.len()].to_string()));
    println!(
        "cotrackpro-voice bench: {} simultaneous calls, {} turns each (simulated providers)",
        options.calls, options.turns
    );
    let media = server.media_addr();
    let mut peak_rss = baseline_rss;
    let mut peak_calls = 0;
    let runs: Vec<CallerRun> = std::thread::scope(|scope| {
        let mut spawn_failures = Vec::new();
        let handles: Vec<_> = (0..options.calls)
            .filter_map(|i| {
                // Staggered a little, as real calls arrive.
                std::thread::sleep(Duration::from_millis(20));
                std::thread::Builder::new()
                    .name(format!("bench-caller-{i}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || one_caller(media, options.turns))
                    .map_err(|err| {
                        spawn_failures.push(CallerRun {
                            waits_ms: Vec::new(),
                            failed: Some(format!("cannot start a caller thread: {err}")),
                        })
                    })
                    .ok()
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            peak_rss = peak_rss.max(rss_kib());
            sample_server_cpu(&mut cpu_seen);
            peak_calls = peak_calls.max(server.app.calls.active());
            std::thread::sleep(Duration::from_millis(100));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or(CallerRun {
                    waits_ms: Vec::new(),
                    failed: Some("the caller thread panicked".into()),
                })
            })
            .chain(spawn_failures)
            .collect()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.app.calls.active() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed();
    sample_server_cpu(&mut cpu_seen);
    let cpu = cpu_seen.values().sum::<f64>() - baseline_cpu;

    let mut waits: Vec<u64> = runs
        .iter()
        .flat_map(|r| r.waits_ms.iter().copied())
        .collect();
    waits.sort_unstable();
    let failures: Vec<&str> = runs.iter().filter_map(|r| r.failed.as_deref()).collect();
    let ms =
        |q: f64, values: &[u64]| quantile(values, q).map_or("–".into(), |v| format!("{v} ms"));
    println!(
        "turns answered: {} of {}; calls failed: {}; peak simultaneous calls: {peak_calls}",
        waits.len(),
        utterances,
        failures.len()
    );
    for failure in failures.iter().take(5) {
        println!("  failure: {failure}");
    }
    println!(
        "caller waits (end of speech → first audio heard; includes the {:.1} s of silence that ends an utterance): p50 {} · p95 {} · p99 {} · max {}",
        server.app.config.calls.tuning.vad_silence_secs,
        ms(0.5, &waits),
        ms(0.95, &waits),
        ms(0.99, &waits),
        ms(1.0, &waits)
    );
    let turns = server.app.metrics.recent_turns();
    let stage = |f: fn(&crate::metrics::TurnLatency) -> Option<u64>| {
        let mut v: Vec<u64> = turns.iter().filter_map(f).collect();
        v.sort_unstable();
        format!("p50 {} / p95 {}", ms(0.5, &v), ms(0.95, &v))
    };
    println!("server stages from the end of speech:");
    println!("  transcript      {}", stage(|l| l.speech_end_to_commit_ms));
    println!("  first token     {}", stage(|l| l.first_token_ms));
    println!("  first sentence  {}", stage(|l| l.first_sentence_ms));
    println!("  first audio     {}", stage(|l| l.first_audio_ms));
    println!("  first frame     {}", stage(|l| l.first_frame_ms));
    let call_minutes = options.calls as f64 * wall.as_secs_f64() / 60.0;
    println!(
        "server threads' CPU: {cpu:.2} s over {:.1} s of wall time ({:.3} CPU-seconds per call-minute)",
        wall.as_secs_f64(),
        if call_minutes > 0.0 { cpu / call_minutes } else { 0.0 }
    );
    if let (Some(base), Some(peak)) = (baseline_rss, peak_rss) {
        println!(
            "memory (whole process, simulators and callers included): {:.1} MiB at rest, {:.1} MiB at peak, ≈{:.0} KiB per simultaneous call",
            base as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(base) as f64 / peak_calls.max(1) as f64
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {} calls failed", failures.len(), options.calls).into())
    }
}

fn one_caller(media: std::net::SocketAddr, turns: usize) -> CallerRun {
    let mut run = CallerRun {
        waits_ms: Vec::new(),
        failed: None,
    };
    let caller = match SimCaller::connect(
        media,
        CallerOptions {
            playback_speed: 4,
            ..CallerOptions::default()
        },
    ) {
        Ok(caller) => caller,
        Err(err) => {
            run.failed = Some(format!("connect: {err}"));
            return run;
        }
    };
    if !caller.wait_for_echoes(1, Duration::from_secs(60)) {
        run.failed = Some("the greeting did not play".into());
        return run;
    }
    for turn in 0..turns {
        let from = caller.log().len();
        caller.say(UTTERANCES[turn % UTTERANCES.len()]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while caller.is_speaking() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let Some(done) = caller.speech_done_at() else {
            run.failed = Some("the caller could not finish speaking".into());
            return run;
        };
        let answered = caller.wait_for(Duration::from_secs(60), |log| {
            log[from.min(log.len())..]
                .iter()
                .any(|(at, h)| *at > done && matches!(h, Heard::Media(_)))
        });
        if !answered {
            run.failed = Some(format!("turn {} got no answer", turn + 1));
            return run;
        }
        if let Some((at, _)) = caller
            .log()
            .iter()
            .skip(from)
            .find(|(at, h)| *at > done && matches!(h, Heard::Media(_)))
        {
            run.waits_ms
                .push(at.duration_since(done).as_millis() as u64);
        }
        if !caller.wait_until_quiet(Duration::from_millis(600), Duration::from_secs(60)) {
            run.failed = Some(format!("turn {} did not finish playing", turn + 1));
            return run;
        }
    }
    caller.hang_up();
    run
}

/// The process's resident memory, from /proc (Linux), in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples the CPU seconds of the server's threads (calls, HTTP workers, the media
/// acceptor) into `seen`, by thread id: a thread that has ended keeps its last sample, so a
/// call's threads still count after it hangs up (less their last 100 ms).
fn sample_server_cpu(seen: &mut HashMap<String, f64>) {
    let tick = 100.0; // USER_HZ on Linux
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state … utime stime: fields 14 and 15, counted after the comm's ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        if !(name.starts_with("call-") || name.starts_with("http-") || name == "media-accept") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(utime), Some(stime)) = (
            fields.get(11).and_then(|v| v.parse::<f64>().ok()),
            fields.get(12).and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        let tid = task.file_name().to_string_lossy().to_string();
        seen.insert(tid, (utime + stime) / tick);
    }
}
