//! `cotrackpro-voice bench`: many simulated calls at once against the real server, in one
//! process with the simulated providers (realistic timing). Each caller listens to the
//! greeting, then speaks a few short turns and waits for each answer. It prints what a caller
//! waits (end of their speech → first audio frame received), the server's per-stage turn
//! latencies, the CPU time of the server's own threads, their wake-ups per call-second
//! (context switches while every call is live: a thread that polls shows up here), and memory.
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
    /// The simulated network round trip to every provider (`--provider-rtt-ms`).
    pub provider_rtt_ms: u64,
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
    /// Times the caller's playback buffer ran dry inside a piece (`SimCaller::frame_gaps`).
    frame_gaps: u64,
}

pub fn run(options: &BenchOptions) -> Result<(), Box<dyn Error>> {
    let sims = Simulators::start()?;
    sims.set_provider_rtt(std::time::Duration::from_millis(options.provider_rtt_ms));
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
    let http = server.http_addr();
    let mut peak_rss = baseline_rss;
    let mut peak_calls = 0;
    let mut wakeups = WakeupWindow::default();
    let runs: Vec<CallerRun> = std::thread::scope(|scope| {
        let mut spawn_failures = Vec::new();
        let handles: Vec<_> = (0..options.calls)
            .filter_map(|i| {
                // Staggered a little, as real calls arrive.
                std::thread::sleep(Duration::from_millis(20));
                std::thread::Builder::new()
                    .name(format!("bench-caller-{i}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || one_caller(http, media, options.turns))
                    .map_err(|err| {
                        spawn_failures.push(CallerRun {
                            waits_ms: Vec::new(),
                            failed: Some(format!("cannot start a caller thread: {err}")),
                            frame_gaps: 0,
                        })
                    })
                    .ok()
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            peak_rss = peak_rss.max(rss_kib());
            sample_server_cpu(&mut cpu_seen);
            let active = server.app.calls.active();
            peak_calls = peak_calls.max(active);
            wakeups.sample(active == options.calls);
            std::thread::sleep(Duration::from_millis(100));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or(CallerRun {
                    waits_ms: Vec::new(),
                    failed: Some("the caller thread panicked".into()),
                    frame_gaps: 0,
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
        "frame gaps (the caller's playback buffer ran dry inside a piece): {}; provider round trip: {} ms",
        runs.iter().map(|r| r.frame_gaps).sum::<u64>(),
        options.provider_rtt_ms
    );
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
    wakeups.print();
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

fn one_caller(http: std::net::SocketAddr, media: std::net::SocketAddr, turns: usize) -> CallerRun {
    let mut run = CallerRun {
        waits_ms: Vec::new(),
        failed: None,
        frame_gaps: 0,
    };
    let caller = match SimCaller::dial(
        http,
        media,
        "parent",
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
    run.frame_gaps = caller.frame_gaps();
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

/// Whether a thread (by its name as the kernel keeps it, cut to 15 bytes) is the server's.
/// The server names its threads `call-N` (and `call-N-rx`, `-stt`, `-llm`, `-tts`), `http-N`,
/// `media-accept`, `records-compactor` and `mcp-tools-refresh`; the simulators' threads are
/// `sim-…`, the bench's callers `bench-caller-N`, and unnamed threads (this main thread,
/// tiny_http's own acceptor and connection threads) carry the process name: none of those
/// count.
fn server_thread_role(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("call-") {
        // call-N is the call thread; call-N-rx, call-N-stt, … its helpers.
        return Some(match rest.split_once('-') {
            Some((_, role)) => role.to_string(),
            None => "call".to_string(),
        });
    }
    if name.starts_with("http-") {
        return Some("http".to_string());
    }
    if name == "media-accept"
        || name.starts_with("records-compac")
        || name.starts_with("mcp-tools-ref")
    {
        return Some(name.to_string());
    }
    None
}

/// Context switches of one thread: (voluntary, nonvoluntary).
type Switches = (u64, u64);

/// Context switches of the server's threads over a window in which every call is live.
///
/// Counted per thread id: a thread's contribution is its last sample minus its first one in
/// the window (zero for a thread born inside it, whose count starts at zero). A thread that
/// ends inside the window keeps its last sample, so it contributes what it did up to then
/// rather than vanishing from the sum or making it go backwards; at worst the switches of its
/// last 100 ms are missed.
#[derive(Default)]
struct WakeupWindow {
    /// tid → (role, first sample in the window, last sample).
    threads: HashMap<String, (String, Switches, Switches)>,
    started: Option<Instant>,
    last: Option<Instant>,
    closed: bool,
}

impl WakeupWindow {
    /// Samples while `all_live`; the window closes at the first sample where some call is no
    /// longer live (a caller hung up or failed).
    fn sample(&mut self, all_live: bool) {
        if self.closed {
            return;
        }
        if !all_live {
            self.closed = self.started.is_some();
            return;
        }
        let opening = self.started.is_none();
        let now = Instant::now();
        for (tid, role, switches) in server_thread_switches() {
            let entry = self
                .threads
                .entry(tid)
                .or_insert_with(|| (role, if opening { switches } else { (0, 0) }, switches));
            entry.2 = switches;
        }
        self.started.get_or_insert(now);
        self.last = Some(now);
    }

    fn print(&self) {
        let (Some(started), Some(last)) = (self.started, self.last) else {
            println!("server wake-ups: not measured (the calls were never all live at once)");
            return;
        };
        let secs = last.duration_since(started).as_secs_f64();
        let calls = self
            .threads
            .values()
            .filter(|(role, ..)| role == "call")
            .count();
        if secs < 0.5 || calls == 0 {
            println!("server wake-ups: not measured (all calls were live for only {secs:.1} s)");
            return;
        }
        let call_secs = calls as f64 * secs;
        let mut by_role: std::collections::BTreeMap<&str, Switches> = Default::default();
        for (role, first, last) in self.threads.values() {
            let sum = by_role.entry(role.as_str()).or_default();
            sum.0 += last.0.saturating_sub(first.0);
            sum.1 += last.1.saturating_sub(first.1);
        }
        let voluntary: u64 = by_role.values().map(|s| s.0).sum();
        let involuntary: u64 = by_role.values().map(|s| s.1).sum();
        println!(
            "server wake-ups per call-second: {:.0} ({voluntary} voluntary context switches of the server's threads over {secs:.1} s with {calls} calls live; {:.0} involuntary)",
            voluntary as f64 / call_secs,
            involuntary as f64 / call_secs
        );
        let parts: Vec<String> = by_role
            .iter()
            .map(|(role, s)| format!("{role} {:.1}", s.0 as f64 / call_secs))
            .collect();
        println!("  by thread, per call-second: {}", parts.join(" · "));
    }
}

/// (tid, role, switches) of every live server thread, from /proc/self/task/*/status (Linux).
fn server_thread_switches() -> Vec<(String, String, Switches)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // it ended meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        let Some(role) = field("Name:").and_then(server_thread_role) else {
            continue;
        };
        let count = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok());
        let (Some(voluntary), Some(involuntary)) = (
            count("voluntary_ctxt_switches:"),
            count("nonvoluntary_ctxt_switches:"),
        ) else {
            continue;
        };
        let tid = task.file_name().to_string_lossy().to_string();
        found.push((tid, role, (voluntary, involuntary)));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::server_thread_role;

    #[test]
    fn only_the_servers_threads_are_counted() {
        assert_eq!(server_thread_role("call-12").as_deref(), Some("call"));
        assert_eq!(server_thread_role("call-12-stt").as_deref(), Some("stt"));
        assert_eq!(server_thread_role("http-3").as_deref(), Some("http"));
        assert_eq!(
            server_thread_role("media-accept").as_deref(),
            Some("media-accept")
        );
        // The kernel keeps 15 bytes of a name.
        assert!(server_thread_role("records-compact").is_some());
        for other in [
            "sim-stt-conn",
            "sim-elevenlabs-",
            "bench-caller-3",
            "cotrackpro-voi",
        ] {
            assert_eq!(server_thread_role(other), None, "{other}");
        }
    }
}
