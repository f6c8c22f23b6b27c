//! `cotrackpro-voice bench`: many simulated calls at once against the real server, run as its
//! own process (this binary's `serve`, configured by its environment as an operator would),
//! while this process — the harness — runs the simulated providers and the simulated callers.
//! Each caller listens to the greeting, then speaks a few short turns and waits for each
//! answer.
//!
//! The two sides are pinned to separate cores (`--server-cpus`, `--harness-cpus`; by default
//! the server gets the last core and the harness the others), and the server's figures are
//! read from its own process in `/proc/PID` over the window in which every call is live: CPU,
//! resident memory, threads, file descriptors and context switches (wake-ups). The harness
//! measures its own CPU over the same window (less the thread that reads the server's `/proc`):
//! when it used (nearly) all of its cores, the
//! report says so, because then the harness, not the server, was the limit. What a caller
//! waits is measured by the callers; the server's per-stage turn latencies come from its
//! `GET /metrics`.
//!
//! `--turn-end both` runs the calls twice, with the smart end of turn and with the service's
//! voice detector alone (`TURN_END=smart`, then `vad`), and compares what callers waited, by
//! how each utterance ended (the callers' script has questions, finished sentences, phrases
//! that trail off and plain ones).
//!
//! Figures, not pass/fail: the machine and the simulated providers' timing weigh on them.
//! `--json` prints them as one JSON object instead of the human report.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::metrics::quantile;
use crate::sim::hops::{Hop, Hops};
use crate::sim::Simulators;

mod callers;
mod capacity;
use crate::call::machine::{classify, Ending};
use callers::{utterance_text, CallerRun, UTTERANCES};
use capacity::run_capacity;
pub use capacity::{DEFAULT_MAX_CALLS, DEFAULT_START_CALLS};

#[derive(Clone)]
pub struct BenchOptions {
    pub calls: usize,
    pub turns: usize,
    /// One JSON object on stdout instead of the human report.
    pub json: bool,
    /// The CPUs the server is pinned to (`--server-cpus`); `None`: the default split.
    pub server_cpus: Option<Vec<usize>>,
    /// The CPUs the harness is pinned to (`--harness-cpus`); `None`: the default split.
    pub harness_cpus: Option<Vec<usize>>,
    /// Whether the provider sockets are TLS (the default; `--plain` turns it off for
    /// comparison). The server trusts the simulators' CA through `PROVIDER_CA_FILE`.
    pub tls: bool,
    /// The simulated providers' network round trip, in milliseconds (`--provider-rtt-ms`).
    pub provider_rtt_ms: u64,
    /// The server's `STT_CHUNK_MS` (`--stt-chunk-ms`); `None`: its default.
    pub stt_chunk_ms: Option<u64>,
    /// `--capacity`: raise the number of calls step by step, from `calls`, until a service
    /// level breaks ([`run_capacity`]).
    pub capacity: bool,
    /// `--max-calls`: the capacity search's last step.
    pub max_calls: usize,
    /// `--turn-end smart|vad|both`: the server's `TURN_END`, or both one after the other
    /// (`None`: its default).
    pub turn_end: Option<TurnEndRuns>,
}

/// Which end of turn the server runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnEndRuns {
    Smart,
    Vad,
    /// Two runs, smart then vad, compared.
    Both,
}

impl TurnEndRuns {
    pub fn parse(value: &str) -> Option<TurnEndRuns> {
        match value {
            "smart" => Some(TurnEndRuns::Smart),
            "vad" => Some(TurnEndRuns::Vad),
            "both" => Some(TurnEndRuns::Both),
            _ => None,
        }
    }
}

impl BenchOptions {
    pub fn new(calls: usize, turns: usize) -> BenchOptions {
        BenchOptions {
            calls,
            turns,
            json: false,
            server_cpus: None,
            harness_cpus: None,
            tls: true,
            provider_rtt_ms: 20,
            stt_chunk_ms: None,
            capacity: false,
            max_calls: DEFAULT_MAX_CALLS,
            turn_end: None,
        }
    }
}

/// How long the server may take to log that it listens, and to stop after SIGTERM.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the harness looks at the callers and samples the server's process.
const TICK: Duration = Duration::from_millis(250);
/// Calls are dialed this far apart, as real calls arrive. Not a multiple of the 20 ms frame:
/// each caller's frame clock then starts 3 ms after the previous one's (mod 20), so the callers'
/// frames spread over the frame period as independent calls' do. (At 20 ms every caller would
/// send in the same instant: a burst no set of real calls makes, which the server's hops would
/// pay for.)
const STAGGER: Duration = Duration::from_millis(23);
/// How often, while every call is live, the window's figures are sampled (reading every
/// thread's status is a file per server thread: at 1 s, a twentieth of the harness core's time,
/// which the harness's CPU figure leaves out as the instrument's, but the callers share).
const WINDOW_SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The harness counts as saturated at this share of its cores.
const SATURATED: f64 = 0.9;

pub fn run(options: &BenchOptions) -> Result<(), Box<dyn Error>> {
    let (server_cpus, harness_cpus) = split_cpus(
        &allowed_cpus(),
        options.server_cpus.as_deref(),
        options.harness_cpus.as_deref(),
    )?;
    // Before any thread starts, so every harness thread inherits it.
    if let Some(cpus) = &harness_cpus {
        pin_this_process(cpus)?;
    }
    let pinning = (server_cpus, harness_cpus);
    if options.capacity {
        return run_capacity(options, &pinning);
    }
    if options.turn_end == Some(TurnEndRuns::Both) {
        return run_both_turn_ends(options, &pinning);
    }
    let (report, stopped) = run_step(options, &pinning)?;
    if options.json {
        println!("{}", report.to_json(options));
    } else {
        report.print(options);
    }
    stopped?;
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} calls failed",
            report.failures.len(),
            options.calls
        )
        .into())
    }
}

/// Whether the server stopped cleanly after a step.
type Stopped = Result<(), Box<dyn Error>>;

/// `--turn-end both`: the same calls with `TURN_END=smart`, then with `vad`, each reported,
/// then what callers waited under each, side by side.
fn run_both_turn_ends(
    options: &BenchOptions,
    pinning: &(Pinning, Pinning),
) -> Result<(), Box<dyn Error>> {
    let mut reports = Vec::new();
    for mode in [TurnEndRuns::Smart, TurnEndRuns::Vad] {
        let step = BenchOptions {
            turn_end: Some(mode),
            ..options.clone()
        };
        let (report, stopped) = run_step(&step, pinning)?;
        stopped?;
        if !options.json {
            report.print(&step);
            println!();
        }
        reports.push((step, report));
    }
    if options.json {
        let runs: serde_json::Map<String, Value> = reports
            .iter()
            .map(|(step, report)| (report.turn_end.clone(), report.to_json(step)))
            .collect();
        println!("{}", json!({ "turn_end": runs }));
    } else {
        println!("caller waits by end of turn (end of speech → first audio heard):");
        for (_, report) in &reports {
            println!("  {:<6} {}", report.turn_end, report.waits_line());
        }
    }
    let failed: usize = reports.iter().map(|(_, r)| r.failures.len()).sum();
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} calls failed over both runs").into())
    }
}

/// One measured run of `options.calls` calls: fresh simulators and a fresh server process,
/// both stopped before it returns. The harness is already pinned. Besides the report: whether
/// the server stopped cleanly.
fn run_step(
    options: &BenchOptions,
    (server_cpus, harness_cpus): &(Pinning, Pinning),
) -> Result<(Report, Stopped), Box<dyn Error>> {
    // TLS on every provider socket, as in production, unless `--plain` asks for the comparison.
    let sims = if options.tls {
        Simulators::start_tls(crate::sim::SimTiming::default())?
    } else {
        Simulators::start()?
    };
    sims.set_provider_rtt(std::time::Duration::from_millis(options.provider_rtt_ms));
    let records_dir = std::env::temp_dir().join(format!(
        "cotrackpro-bench-{}-{}",
        std::process::id(),
        options.calls
    ));
    let max_calls = (options.calls + 1).to_string();
    let stt_chunk_ms = options.stt_chunk_ms.map(|ms| ms.to_string());
    let mut settings = vec![
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "json"),
        ("MAX_CONCURRENT_CALLS", max_calls.as_str()),
        ("REPROMPT_AFTER_MS", "60000"),
    ];
    if let Some(ms) = &stt_chunk_ms {
        settings.push(("STT_CHUNK_MS", ms));
    }
    match options.turn_end {
        Some(TurnEndRuns::Smart) => settings.push(("TURN_END", "smart")),
        Some(TurnEndRuns::Vad) => settings.push(("TURN_END", "vad")),
        Some(TurnEndRuns::Both) | None => {}
    }
    let env = super::loopback_env(&sims, &records_dir, &settings);
    // Checked here so a bad setting is reported as such, not as a server that did not start.
    let config = super::config_from_pairs(&env)?;
    let vad_silence_secs = config.calls.tuning.vad_silence_secs;
    let turn_end = config.calls.tuning.turn_end.to_string();
    let stt_chunk_ms = config.calls.tuning.stt_chunk.as_millis() as u64;
    let mut server = ServerProcess::spawn(&env, server_cpus.as_deref())?;
    let measured = measure(&server, &sims, options);
    let stopped = server.stop();
    let _ = std::fs::remove_dir_all(&records_dir);
    let mut report = measured?;
    report.vad_silence_secs = vad_silence_secs;
    report.turn_end = turn_end;
    report.stt_chunk_ms = stt_chunk_ms;
    report.server_cpus = server_cpus.clone();
    report.harness_cpus = harness_cpus.clone();
    Ok((report, stopped.map_err(Into::into)))
}

/// What a run measured; printed by [`Report::print`] or as JSON by [`Report::to_json`].
struct Report {
    calls: usize,
    turns_expected: usize,
    /// Caller waits, sorted, in milliseconds.
    waits: Vec<u64>,
    failures: Vec<String>,
    peak_calls: usize,
    server_pid: u32,
    harness_pid: u32,
    server_cpus: Option<Vec<usize>>,
    harness_cpus: Option<Vec<usize>>,
    vad_silence_secs: f64,
    /// The server's `STT_CHUNK_MS`.
    stt_chunk_ms: u64,
    /// The server's `/metrics` after the run, or why it could not be read.
    metrics: Result<String, String>,
    wall_secs: f64,
    /// The server's process at rest (before the first call) and at its peak during the run.
    rest: ProcSample,
    peak: ProcSample,
    /// The server's CPU seconds over the whole run, and the harness's.
    server_cpu_secs: Option<f64>,
    harness_cpu_secs: Option<f64>,
    window: Window,
    /// Times a caller's playback buffer ran dry inside a spoken piece, over every caller.
    frame_gaps: u64,
    /// Utterances said over an answer, and `clear`s the callers heard.
    barge_ins: u64,
    clears: u64,
    /// Caller frames the harness sent more than `callers::LATE` after their time.
    late_frames: u64,
    /// Text-to-speech sockets the simulator accepted over the run (one per call is the rule).
    tts_sockets: u64,
    /// Per-hop times taken at the simulators' sockets and in the callers (`sim::hops`).
    hops: Hops,
    /// The server's `TURN_END`.
    turn_end: String,
    /// Each caller wait with how its utterance ended (the smart turn end's classes).
    waits_by_ending: Vec<(Ending, u64)>,
}

const ENDINGS: [(Ending, &str); 3] = [
    (Ending::Complete, "complete"),
    (Ending::Trailing, "trailing"),
    (Ending::Open, "open"),
];

const STAGES: [(&str, &str); 5] = [
    ("transcript", "commit"),
    ("first token", "first_token"),
    ("first sentence", "first_sentence"),
    ("first audio", "first_audio"),
    ("first frame", "first_frame"),
];

/// What each hop of `sim::hops` spans, for the human report.
fn hop_label(hop: Hop) -> &'static str {
    match hop {
        Hop::TwilioToStt => "caller's frame → STT socket",
        Hop::TranscriptToLlm => "STT commit → model request",
        Hop::SentenceToTts => "first sentence → TTS socket",
        Hop::TtsToTwilio => "TTS audio → caller's frame",
        Hop::PartialToClear => "interrupting partial → clear",
    }
}

/// Milliseconds (fractional) at quantile `q` of sorted durations.
fn hop_quantile(durations: &[std::time::Duration], q: f64) -> Option<f64> {
    let last = durations.len().checked_sub(1)?;
    let index = ((last as f64) * q).round() as usize;
    durations
        .get(index.min(last))
        .map(|d| (d.as_secs_f64() * 1e5).round() / 100.0)
}

impl Report {
    fn harness_cores(&self) -> usize {
        self.harness_cpus
            .as_ref()
            .map_or_else(|| allowed_cpus().len(), Vec::len)
            .max(1)
    }

    /// The share of its cores the harness used: over the window when there is one, else over
    /// the whole run.
    fn harness_share(&self) -> Option<f64> {
        let (cpu, secs) = match self.window.figures() {
            Some(w) => (w.harness_cpu_secs, w.secs),
            None => (self.harness_cpu_secs?, self.wall_secs),
        };
        (secs > 0.0).then(|| cpu / (secs * self.harness_cores() as f64))
    }

    /// The harness's CPU milliseconds per call-second, over the window when every call was live.
    fn harness_ms_per_call_second(&self) -> Option<f64> {
        let w = self.window.figures()?;
        (w.calls > 0 && w.secs > 0.0)
            .then(|| w.harness_cpu_secs * 1000.0 / (w.calls as f64 * w.secs))
    }

    fn harness_saturated(&self) -> bool {
        self.harness_share().is_some_and(|s| s >= SATURATED)
    }

    /// Growth from rest to peak of one of the process's counts, per simultaneous call.
    fn per_call(&self, field: fn(&ProcSample) -> Option<u64>) -> Option<f64> {
        let (rest, peak) = (field(&self.rest)?, field(&self.peak)?);
        (self.peak_calls > 0).then(|| peak.saturating_sub(rest) as f64 / self.peak_calls as f64)
    }

    /// A stage's latency quantile in milliseconds, estimated from the server's histogram.
    fn stage(&self, stage: &str, q: &str) -> Option<u64> {
        let text = self.metrics.as_ref().ok()?;
        let q: f64 = q.parse().ok()?;
        let label = format!("stage=\"{stage}\"");
        crate::metrics::histogram_quantile(text, "cotrackpro_turn_stage_seconds", &label, q)
            .map(|secs| (secs * 1000.0).round() as u64)
    }

    fn print(&self, options: &BenchOptions) {
        let ms = |v: Option<u64>| v.map_or("–".into(), |v| format!("{v} ms"));
        let cpus = |c: &Option<Vec<usize>>| {
            c.as_ref().map_or("any CPU (not pinned)".into(), |c| {
                format!("CPUs {}", format_cpu_list(c))
            })
        };
        println!(
            "cotrackpro-voice bench: {} simultaneous calls, {} turns each",
            options.calls, options.turns
        );
        println!(
            "  server: `serve` in its own process, pid {} on {}; harness (simulated providers and callers): pid {} on {}",
            self.server_pid,
            cpus(&self.server_cpus),
            self.harness_pid,
            cpus(&self.harness_cpus)
        );
        println!(
            "  provider sockets: {}, simulated round trip {} ms",
            if options.tls { "TLS" } else { "plain (no TLS)" },
            options.provider_rtt_ms
        );
        println!(
            "frame gaps (a caller's playback buffer ran dry inside a spoken piece): {}",
            self.frame_gaps
        );
        println!(
            "barge-ins (an utterance said over the answer): {}; clears heard: {}",
            self.barge_ins, self.clears
        );
        println!(
            "text-to-speech sockets opened (counted at the simulator): {} for {} calls",
            self.tts_sockets, self.calls
        );
        println!(
            "turns answered: {} of {}; calls failed: {}; peak simultaneous calls: {}",
            self.waits.len(),
            self.turns_expected,
            self.failures.len(),
            self.peak_calls
        );
        for failure in self.failures.iter().take(5) {
            println!("  failure: {failure}");
        }
        let w = &self.waits;
        println!(
            "caller waits (end of speech → first audio heard; includes the silence that ends an utterance: TURN_END={}, STT_VAD_SILENCE_SECS={:.1}): p50 {} · p95 {} · p99 {} · max {}",
            self.turn_end,
            self.vad_silence_secs,
            ms(quantile(w, 0.5)),
            ms(quantile(w, 0.95)),
            ms(quantile(w, 0.99)),
            ms(quantile(w, 1.0))
        );
        println!("  by how the utterance ended: {}", self.waits_line());
        match &self.metrics {
            Ok(_) => {
                println!("server stages from the end of speech (its /metrics, recent turns):");
                for (label, stage) in STAGES {
                    println!(
                        "  {label:<15} p50 {} / p95 {}",
                        ms(self.stage(stage, "0.5")),
                        ms(self.stage(stage, "0.95"))
                    );
                }
            }
            Err(err) => println!("server stages: not available ({err})"),
        }
        println!("hops, timed at the simulators' sockets and in the callers (one clock):");
        for hop in Hop::ALL {
            let d = self.hops.get(hop);
            let q = |q: f64| hop_quantile(d, q).map_or("–".into(), |v| format!("{v:.1} ms"));
            if d.is_empty() {
                println!("  {:<30} not measured", hop_label(hop));
            } else {
                println!(
                    "  {:<30} p50 {} · p95 {} · p99 {} · max {} ({} samples)",
                    hop_label(hop),
                    q(0.5),
                    q(0.95),
                    q(0.99),
                    q(1.0),
                    d.len()
                );
            }
        }
        if let Some(cpu) = self.server_cpu_secs {
            let call_minutes = self.calls as f64 * self.wall_secs / 60.0;
            println!(
                "server CPU (its whole process): {cpu:.2} s over {:.1} s of wall time ({:.3} CPU-seconds per call-minute)",
                self.wall_secs,
                if call_minutes > 0.0 { cpu / call_minutes } else { 0.0 }
            );
        }
        match self.window.figures() {
            Some(f) => {
                let call_secs = f.calls as f64 * f.secs;
                println!(
                    "while all {} calls were live ({:.1} s): server CPU {:.2} ms per call-second",
                    f.calls,
                    f.secs,
                    f.server_cpu_secs * 1000.0 / call_secs
                );
                println!(
                    "server wake-ups per call-second: {:.0} ({} voluntary context switches of its threads; {:.0} involuntary per call-second)",
                    f.voluntary as f64 / call_secs,
                    f.voluntary,
                    f.involuntary as f64 / call_secs
                );
                let parts: Vec<String> = f
                    .by_role
                    .iter()
                    .map(|(role, s)| format!("{role} {:.1}", s.0 as f64 / call_secs))
                    .collect();
                println!("  by thread, per call-second: {}", parts.join(" · "));
            }
            None => println!(
                "server CPU per call-second and wake-ups: not measured (the calls were not all live together for a second)"
            ),
        }
        if let (Some(base), Some(peak)) = (self.rest.rss_kib, self.peak.rss_kib) {
            println!(
                "server memory (its process only): {:.1} MiB at rest, {:.1} MiB at peak, ≈{:.0} KiB per simultaneous call ({:.0} KiB of it heap and stacks, RssAnon; the rest is code pages touched once)",
                base as f64 / 1024.0,
                peak as f64 / 1024.0,
                self.per_call(|s| s.rss_kib).unwrap_or(0.0),
                self.per_call(|s| s.anon_kib).unwrap_or(0.0)
            );
        }
        if let (Some(threads), Some(fds)) = (self.rest.threads, self.rest.fds) {
            println!(
                "server threads: {threads} at rest, {:.1} per call; file descriptors: {fds} at rest, {:.1} per call",
                self.per_call(|s| s.threads).unwrap_or(0.0),
                self.per_call(|s| s.fds).unwrap_or(0.0)
            );
        }
        if let Some(share) = self.harness_share() {
            let over = if self.window.figures().is_some() {
                "while all calls were live"
            } else {
                "over the run"
            };
            let cores = self.harness_cores();
            if self.harness_saturated() {
                println!(
                    "harness CPU {over}: {:.0} % of its {cores} core(s): THE HARNESS SATURATED its cores, so these figures show the harness's limit, not the server's",
                    share * 100.0
                );
            } else {
                println!(
                    "harness CPU {over}: {:.0} % of its {cores} core(s) (not saturated)",
                    share * 100.0
                );
            }
        }
        if let Some(ms) = self.harness_ms_per_call_second() {
            println!(
                "harness CPU per call-second: {ms:.2} ms (one harness core would drive about {:.0} calls); caller frames sent over 10 ms late: {}",
                1000.0 / ms.max(0.001),
                self.late_frames
            );
        }
    }

    /// The waits of each kind of ending, sorted, in milliseconds.
    fn waits_of(&self, ending: Ending) -> Vec<u64> {
        let mut waits: Vec<u64> = self
            .waits_by_ending
            .iter()
            .filter(|(e, _)| *e == ending)
            .map(|(_, ms)| *ms)
            .collect();
        waits.sort_unstable();
        waits
    }

    /// One line: p50 and p95 of the waits of each kind of ending, and of all.
    fn waits_line(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("–".into(), |v| format!("{v} ms"));
        let mut parts: Vec<String> = ENDINGS
            .iter()
            .map(|(ending, name)| {
                let w = self.waits_of(*ending);
                format!(
                    "{name} p50 {} / p95 {} ({})",
                    ms(quantile(&w, 0.5)),
                    ms(quantile(&w, 0.95)),
                    w.len()
                )
            })
            .collect();
        parts.push(format!(
            "all p50 {} / p95 {}",
            ms(quantile(&self.waits, 0.5)),
            ms(quantile(&self.waits, 0.95))
        ));
        parts.join(" · ")
    }

    fn to_json(&self, options: &BenchOptions) -> Value {
        let figures = self.window.figures();
        let per_call_second = |f: fn(&WindowFigures) -> f64| {
            figures.as_ref().map(|w| f(w) / (w.calls as f64 * w.secs))
        };
        let stages: serde_json::Map<String, Value> = STAGES
            .iter()
            .map(|(_, stage)| {
                (
                    stage.to_string(),
                    json!({
                        "p50": self.stage(stage, "0.5"),
                        "p95": self.stage(stage, "0.95"),
                        "p99": self.stage(stage, "0.99"),
                    }),
                )
            })
            .collect();
        // A hop nothing was matched for is null (`partial_to_clear`: the callers do not barge
        // in).
        let hops: serde_json::Map<String, Value> = Hop::ALL
            .iter()
            .map(|&hop| {
                let d = self.hops.get(hop);
                let figures = if d.is_empty() {
                    Value::Null
                } else {
                    json!({
                        "p50": hop_quantile(d, 0.5),
                        "p95": hop_quantile(d, 0.95),
                        "p99": hop_quantile(d, 0.99),
                        "max": hop_quantile(d, 1.0),
                        "samples": d.len(),
                    })
                };
                (hop.name().to_string(), figures)
            })
            .collect();
        let w = &self.waits;
        let mut report = json!({
            "calls": self.calls,
            "turns": options.turns,
            "failed_calls": self.failures.len(),
            "failures": self.failures.iter().take(5).collect::<Vec<_>>(),
            "turns_answered": self.waits.len(),
            "turns_expected": self.turns_expected,
            "peak_calls": self.peak_calls,
            "tls": options.tls,
            "provider_rtt_ms": options.provider_rtt_ms,
            "server_pid": self.server_pid,
            "harness_pid": self.harness_pid,
            "server_cpus": self.server_cpus,
            "harness_cpus": self.harness_cpus,
            "wall_secs": self.wall_secs,
            "window_secs": figures.as_ref().map(|w| w.secs),
            "window_calls": figures.as_ref().map(|w| w.calls),
            "window_server_cpu_secs": figures.as_ref().map(|w| w.server_cpu_secs),
            "server_cpu_secs": self.server_cpu_secs,
            "server_cpu_ms_per_call_second": per_call_second(|w| w.server_cpu_secs * 1000.0),
            "server_rss_kib_per_call": self.per_call(|s| s.rss_kib),
            "server_threads_per_call": self.per_call(|s| s.threads),
            "server_fds_per_call": self.per_call(|s| s.fds),
            "server_wakeups_per_call_second": per_call_second(|w| w.voluntary as f64),
            "server_involuntary_switches_per_call_second": per_call_second(|w| w.involuntary as f64),
            "server_rss_kib_at_rest": self.rest.rss_kib,
            "server_threads_at_rest": self.rest.threads,
            "server_fds_at_rest": self.rest.fds,
            "harness_cpu_share": self.harness_share(),
            "harness_cpu_saturated": self.harness_saturated(),
            "harness_cpu_ms_per_call_second": self.harness_ms_per_call_second(),
            "frame_gaps": self.frame_gaps,
            "barge_ins": self.barge_ins,
            "clears": self.clears,
            "harness_late_frames": self.late_frames,
            "hops_ms": hops,
            "server_stages_ms": stages,
            "caller_wait_ms": {
                "p50": quantile(w, 0.5),
                "p95": quantile(w, 0.95),
                "p99": quantile(w, 0.99),
                "max": quantile(w, 1.0),
            },
        });
        // Past what one `json!` expands.
        report["server_anon_kib_per_call"] = json!(self.per_call(|s| s.anon_kib));
        report["tts_sockets"] = json!(self.tts_sockets);
        report["tts_sockets_per_call"] = json!(self.tts_sockets as f64 / self.calls.max(1) as f64);
        report["stt_chunk_ms"] = json!(self.stt_chunk_ms);
        report["turn_end"] = json!(self.turn_end);
        let by_ending: serde_json::Map<String, Value> = ENDINGS
            .iter()
            .map(|(ending, name)| {
                let w = self.waits_of(*ending);
                let figures = json!({"p50": quantile(&w, 0.5), "p95": quantile(&w, 0.95),
                                     "turns": w.len()});
                (name.to_string(), figures)
            })
            .collect();
        report["caller_wait_ms_by_ending"] = Value::Object(by_ending);
        report
    }
}

fn measure(
    server: &ServerProcess,
    sims: &Simulators,
    options: &BenchOptions,
) -> Result<Report, Box<dyn Error>> {
    let pid = server.pid.to_string();
    let rest = ProcSample::take(&pid);
    let harness_rest = harness_cpu_secs();
    let utterances = options.calls * options.turns;
    // Unique words, replies and voices, so every hop's ends can be matched (`sim::hops`).
    sims.distinct_for_hops(true);
    // Under load the STT simulator keeps no audio (tests read it; a bench would only grow).
    sims.elevenlabs.stt().keep_audio(false);
    // Every STT session on one thread of the harness, not a thread each.
    sims.elevenlabs.stt().one_loop(true);
    let hop_clock = sims.hop_clock();
    hop_clock.clear();
    // In the order they are said: every call's first turn, then every call's second… (calls
    // start 23 ms apart and a turn takes seconds), so each transcript ends as its caller's
    // utterance does.
    let calls = options.calls.max(1);
    sims.elevenlabs
        .stt()
        .push_utterances((0..utterances).map(|i| utterance_text(i / calls, i + 1)));
    let (media, http) = (server.media, server.http);
    let live = AtomicUsize::new(0);
    let started = Instant::now();
    let mut peak = rest;
    let mut peak_calls = 0;
    let mut window = Window::default();
    let shared = callers::Shared {
        live: &live,
        hops: &hop_clock,
    };
    let runs: Vec<CallerRun> = std::thread::scope(|scope| {
        let shared = &shared;
        let driver = std::thread::Builder::new()
            .name("bench-callers".into())
            .spawn_scoped(scope, move || {
                callers::run(http, media, options.calls, options.turns, STAGGER, shared)
            });
        let driver = match driver {
            Ok(driver) => driver,
            Err(err) => {
                return Err(format!("cannot start the callers' thread: {err}"));
            }
        };
        // The instrument samples on a thread of its own at a lower priority: reading every
        // server thread's status is a burst of work, and the callers' 20 ms clock must not
        // wait behind it.
        let sampler = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn_scoped(scope, || {
                lower_priority();
                while !driver.is_finished() {
                    // Descriptors are counted only with the window's samples (every
                    // `WINDOW_SAMPLE_EVERY`): listing thousands of them every tick is most of
                    // the sampler's cost.
                    peak = peak.max(&ProcSample::take_without_fds(&pid));
                    let now_live = live.load(Ordering::SeqCst);
                    peak_calls = peak_calls.max(now_live);
                    window.tick(&pid, now_live == options.calls);
                    if let Some((sample, _)) = window.last {
                        peak = peak.max(&sample);
                    }
                    std::thread::sleep(TICK);
                }
                driver
            });
        let driver = match sampler.map(|s| s.join()) {
            Ok(Ok(driver)) => driver,
            Ok(Err(_)) => return Err("the bench's sampler panicked".to_string()),
            Err(err) => return Err(format!("cannot start the bench's sampler: {err}")),
        };
        match driver.join() {
            Ok(Ok(runs)) => Ok(runs),
            Ok(Err(err)) => Err(format!("the callers could not run: {err}")),
            Err(_) => Err("the callers' thread panicked".to_string()),
        }
    })?;
    // The server ends its calls a little after the callers hang up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let active = http_get(http, "/metrics")
            .ok()
            .and_then(|t| metric(&t, "cotrackpro_calls_active"));
        if active == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall_secs = started.elapsed().as_secs_f64();
    let end = ProcSample::take(&pid);
    let harness_end = harness_cpu_secs();
    let metrics = http_get(http, "/metrics");
    if let Some(server_peak) = metrics
        .as_ref()
        .ok()
        .and_then(|t| metric(t, "cotrackpro_calls_peak"))
    {
        peak_calls = peak_calls.max(server_peak as usize);
    }
    let mut waits: Vec<u64> = runs
        .iter()
        .flat_map(|r| r.waits_ms.iter().copied())
        .collect();
    waits.sort_unstable();
    let waits_by_ending = runs
        .iter()
        .flat_map(|r| r.wait_turns.iter().zip(&r.waits_ms))
        .map(|(turn, ms)| (classify(UTTERANCES[turn % UTTERANCES.len()]), *ms))
        .collect();
    let frame_gaps = runs.iter().map(|r| r.frame_gaps).sum();
    let barge_ins = runs.iter().map(|r| r.barge_ins).sum();
    let clears = runs.iter().map(|r| r.clears).sum();
    let late_frames = runs.iter().map(|r| r.late_frames).sum();
    Ok(Report {
        calls: options.calls,
        turns_expected: utterances,
        waits,
        failures: runs.into_iter().filter_map(|r| r.failed).collect(),
        peak_calls,
        server_pid: server.pid,
        harness_pid: std::process::id(),
        server_cpus: None,
        harness_cpus: None,
        vad_silence_secs: 0.0,
        stt_chunk_ms: 0,
        metrics,
        wall_secs,
        rest,
        peak,
        server_cpu_secs: end.cpu_secs.zip(rest.cpu_secs).map(|(e, r)| e - r),
        harness_cpu_secs: harness_end.zip(harness_rest).map(|(e, r)| e - r),
        window,
        frame_gaps,
        barge_ins,
        clears,
        late_frames,
        tts_sockets: sims.elevenlabs.tts().session_count() as u64,
        hops: sims.hops(),
        turn_end: String::new(),
        waits_by_ending,
    })
}

/// The server process's figures at one moment, from `/proc/PID` (Linux).
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    at: Instant,
    /// utime + stime of the whole process (threads that ended included), in seconds.
    cpu_secs: Option<f64>,
    rss_kib: Option<u64>,
    /// The resident memory that is the process's own (`RssAnon`: heap and stacks), without
    /// the pages of the binary's code that running calls touched once (`RssFile`), which a
    /// larger binary makes look like memory per call.
    anon_kib: Option<u64>,
    threads: Option<u64>,
    fds: Option<u64>,
}

impl ProcSample {
    fn take(pid: &str) -> ProcSample {
        ProcSample {
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                .ok()
                .map(|d| d.count() as u64),
            ..ProcSample::take_without_fds(pid)
        }
    }

    /// The sample less the descriptors (the costly part: one directory entry each).
    fn take_without_fds(pid: &str) -> ProcSample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
        let field = |key: &str| status.as_deref().and_then(|s| status_field(s, key));
        ProcSample {
            at: Instant::now(),
            cpu_secs: process_cpu_secs(pid),
            rss_kib: field("VmRSS:"),
            anon_kib: field("RssAnon:"),
            threads: field("Threads:"),
            fds: None,
        }
    }

    /// The larger of each count (memory, threads, descriptors).
    fn max(&self, other: &ProcSample) -> ProcSample {
        let most = |a: Option<u64>, b: Option<u64>| a.max(b);
        ProcSample {
            at: other.at,
            cpu_secs: other.cpu_secs,
            rss_kib: most(self.rss_kib, other.rss_kib),
            anon_kib: most(self.anon_kib, other.anon_kib),
            threads: most(self.threads, other.threads),
            fds: most(self.fds, other.fds),
        }
    }
}

/// A `Key:   value [kB]` line of a `/proc` status file.
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of `/proc/PID/stat` (`self` for this process), in seconds.
/// The harness's CPU seconds so far: this process's, less the thread that measures (this one,
/// which reads the server's `/proc` files: the instrument, not the load it generates).
fn harness_cpu_secs() -> Option<f64> {
    let (process, measuring) = (process_cpu_secs("self")?, process_cpu_secs("thread-self")?);
    Some(process - measuring)
}

fn process_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state … utime stime: fields 14 and 15, counted after the comm's ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// Context switches of one thread: (voluntary, nonvoluntary).
type Switches = (u64, u64);

/// The window in which every call is live: the server's and the harness's CPU at its first
/// and last sample, and the context switches of the server's threads in between.
///
/// Switches are counted per thread id: a thread's contribution is its last sample minus its
/// first one in the window (zero for a thread born inside it, whose count starts at zero). A
/// thread that ends inside the window keeps its last sample, so it contributes what it did up
/// to then rather than vanishing from the sum or making it go backwards.
#[derive(Default)]
struct Window {
    /// (server, harness CPU seconds) at the first and the last sample.
    first: Option<(ProcSample, Option<f64>)>,
    last: Option<(ProcSample, Option<f64>)>,
    /// tid → (role, first sample in the window, last sample).
    threads: HashMap<String, (String, Switches, Switches)>,
    next_sample: Option<Instant>,
    closed: bool,
    calls: usize,
}

/// What the window measured.
struct WindowFigures {
    secs: f64,
    calls: usize,
    server_cpu_secs: f64,
    harness_cpu_secs: f64,
    voluntary: u64,
    involuntary: u64,
    /// Voluntary and involuntary switches by thread role.
    by_role: BTreeMap<String, Switches>,
}

impl Window {
    /// Samples (at most every [`WINDOW_SAMPLE_EVERY`]) while `all_live`; the window closes at
    /// the first tick where some call is no longer live.
    fn tick(&mut self, pid: &str, all_live: bool) {
        if self.closed {
            return;
        }
        if !all_live {
            self.closed = self.first.is_some();
            return;
        }
        let now = Instant::now();
        if self.next_sample.is_some_and(|next| now < next) {
            return;
        }
        self.next_sample = Some(now + WINDOW_SAMPLE_EVERY);
        let opening = self.first.is_none();
        for (tid, role, switches) in thread_switches(pid) {
            let entry = self
                .threads
                .entry(tid)
                .or_insert_with(|| (role, if opening { switches } else { (0, 0) }, switches));
            entry.2 = switches;
        }
        let sample = (ProcSample::take(pid), harness_cpu_secs());
        self.first.get_or_insert(sample);
        self.last = Some(sample);
        // The calls live: the server's call threads at the first sample.
        if opening {
            self.calls = self
                .threads
                .values()
                .filter(|(role, ..)| role == "call")
                .count();
        }
    }

    /// The figures, when the window lasted at least half a second.
    fn figures(&self) -> Option<WindowFigures> {
        let ((first, harness_first), (last, harness_last)) = (self.first?, self.last?);
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs < 0.5 || self.calls == 0 {
            return None;
        }
        let mut by_role: BTreeMap<String, Switches> = BTreeMap::new();
        for (role, first, last) in self.threads.values() {
            let sum = by_role.entry(role.clone()).or_default();
            sum.0 += last.0.saturating_sub(first.0);
            sum.1 += last.1.saturating_sub(first.1);
        }
        Some(WindowFigures {
            secs,
            calls: self.calls,
            server_cpu_secs: last.cpu_secs? - first.cpu_secs?,
            harness_cpu_secs: harness_last? - harness_first?,
            voluntary: by_role.values().map(|s| s.0).sum(),
            involuntary: by_role.values().map(|s| s.1).sum(),
            by_role,
        })
    }
}

/// (tid, role, switches) of every thread of process `pid`, from /proc/PID/task/*/status.
fn thread_switches(pid: &str) -> Vec<(String, String, Switches)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // it ended meanwhile
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map_or("", str::trim);
        let role = server_thread_role(name).unwrap_or_else(|| "other".to_string());
        let (Some(voluntary), Some(involuntary)) = (
            status_field(&status, "voluntary_ctxt_switches:"),
            status_field(&status, "nonvoluntary_ctxt_switches:"),
        ) else {
            continue;
        };
        let tid = task.file_name().to_string_lossy().to_string();
        found.push((tid, role, (voluntary, involuntary)));
    }
    found
}

/// The role of a server thread by its name as the kernel keeps it (cut to 15 bytes). The
/// server names its threads `call-N` (and `call-N-rx`, `-llm`, `-tts`, `-stt-dial` while a
/// speech-to-text handshake runs), `http-N`,
/// `media-accept`, `records-compactor` and `mcp-tools-refresh`; anything else (the main
/// thread, tiny_http's own threads) is "other".
fn server_thread_role(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("call-") {
        // call-N is the call thread; call-N-rx, call-N-tts, … its helpers.
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

/// The value of one series (name with its labels) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `GET path` on a fresh connection, with timeouts; the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let timeout = Duration::from_secs(5);
    let fail = |err: std::io::Error| format!("GET {path}: {err}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut raw = Vec::new();
    stream
        .take(4 * 1024 * 1024)
        .read_to_end(&mut raw)
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no complete answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("GET {path}: status {status}"));
    }
    Ok(body.to_string())
}

/// The last lines the server wrote, kept for an error message.
const TAIL_LINES: usize = 20;

type Tail = Arc<Mutex<VecDeque<String>>>;

fn keep(tail: &Tail, line: String) {
    if let Ok(mut tail) = tail.lock() {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Makes the calling thread yield to the harness's others (nice 10); best effort.
fn lower_priority() {
    // SAFETY: setpriority has no memory effects; who = 0 with PRIO_PROCESS is the calling
    // thread on Linux.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
}

/// The server: this program's `serve` in a child process. Killed on drop if still running.
struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    http: SocketAddr,
    media: SocketAddr,
    tail: Tail,
}

impl ServerProcess {
    /// Starts `serve` with exactly `env`, pinned to `cpus`, and waits (bounded) for the line
    /// it logs when it listens (JSON logs: its `http` and `media` addresses).
    fn spawn(env: &[(String, String)], cpus: Option<&[usize]>) -> Result<ServerProcess, String> {
        let exe = std::env::current_exe()
            .map_err(|err| format!("cannot find this program to run its server: {err}"))?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .env_clear()
            // As the shipped unit runs it (systemd/cotrackpro-voice.service): glibc's heap in
            // two arenas and no per-thread caches, so the figures are production's.
            .env("MALLOC_ARENA_MAX", "2")
            .env("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cpus) = cpus {
            let set = cpu_set(cpus)?;
            use std::os::unix::process::CommandExt as _;
            // SAFETY: between fork and exec the closure makes one system call
            // (sched_setaffinity, async-signal-safe) on a set built before the fork.
            unsafe {
                command.pre_exec(move || set_affinity(0, &set));
            }
        }
        let mut child = command
            .spawn()
            .map_err(|err| format!("cannot start the server process: {err}"))?;
        let tail: Tail = Arc::default();
        let (lines_tx, lines) = mpsc::channel();
        let stderr = child.stderr.take();
        let stdout = child.stdout.take();
        let mut server = ServerProcess {
            pid: child.id(),
            child: Some(child),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            media: SocketAddr::from(([127, 0, 0, 1], 0)),
            tail: Arc::clone(&tail),
        };
        // The readers end when the server does (its pipes close).
        if let Some(stderr) = stderr {
            let tail = Arc::clone(&tail);
            std::thread::Builder::new()
                .name("bench-server-err".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        let _ = lines_tx.send(line.clone());
                        keep(&tail, line);
                    }
                })
                .map_err(|err| format!("cannot start a thread: {err}"))?;
        }
        if let Some(stdout) = stdout {
            std::thread::Builder::new()
                .name("bench-server-out".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                        keep(&tail, line);
                    }
                })
                .map_err(|err| format!("cannot start a thread: {err}"))?;
        }
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(server.failed_to_start(&format!(
                    "it did not log that it listens within {} s",
                    SERVER_START_TIMEOUT.as_secs()
                )));
            }
            match lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some((http, media)) = listening_addrs(&line) {
                        server.http = http;
                        server.media = media;
                        return Ok(server);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                        return Err(server.failed_to_start(&format!("it exited ({status})")));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Its stderr closed: it has exited or is exiting; let the last lines in.
                    std::thread::sleep(Duration::from_millis(200));
                    return Err(server.failed_to_start("it closed its output"));
                }
            }
        }
    }

    fn failed_to_start(&self, why: &str) -> String {
        format!(
            "the server process did not start: {why}; its last lines:\n{}",
            self.last_lines()
        )
    }

    fn last_lines(&self) -> String {
        self.tail
            .lock()
            .map(|t| {
                t.iter()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// SIGTERM, then a bounded wait for it to exit; killed if it does not.
    fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the server process exited during the run ({status}); its last lines:\n{}",
                self.last_lines()
            ));
        }
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill only sends a signal, to our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "the server process ended with {status}; its last lines:\n{}",
                        self.last_lines()
                    ))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the server process did not stop within {} s of SIGTERM and was killed",
                        SERVER_STOP_TIMEOUT.as_secs()
                    ));
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The HTTP and media addresses in the server's JSON "listening" log line.
fn listening_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line: Value = serde_json::from_str(line).ok()?;
    let addr = |key: &str| line.get(key)?.as_str()?.parse::<SocketAddr>().ok();
    Some((addr("http")?, addr("media")?))
}

/// Parses a CPU list like `1` or `0,2-3` (the kernel's own format), strictly.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let bad = |why: String| format!("{text:?} is not a CPU list like 1 or 0,2-3 ({why})");
    let number = |n: &str| {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("{n:?} is not a CPU number")));
        }
        n.parse::<usize>()
            .ok()
            .filter(|c| *c < libc::CPU_SETSIZE as usize)
            .ok_or_else(|| bad(format!("CPU {n} is out of range")))
    };
    let mut cpus = std::collections::BTreeSet::new();
    for part in text.split(',') {
        let (from, to) = match part.split_once('-') {
            Some((from, to)) => (number(from)?, number(to)?),
            None => {
                let cpu = number(part)?;
                (cpu, cpu)
            }
        };
        if from > to {
            return Err(bad(format!("the range {part} goes backwards")));
        }
        cpus.extend(from..=to);
    }
    Ok(cpus.into_iter().collect())
}

/// `0,2-3` for [0, 2, 3].
fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: as above; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } == 0 {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: the index is below CPU_SETSIZE.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    } else {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    }
}

/// The CPUs one side is pinned to; `None`: not pinned.
type Pinning = Option<Vec<usize>>;

/// The (server, harness) CPUs: what was asked, checked against `allowed`, with the side not
/// named getting the allowed CPUs the other does not use (all of them if it uses every one).
/// With nothing asked: on 2 or more CPUs the server gets the last and the harness the
/// others; on one CPU nobody is pinned.
fn split_cpus(
    allowed: &[usize],
    server: Option<&[usize]>,
    harness: Option<&[usize]>,
) -> Result<(Pinning, Pinning), String> {
    for (flag, cpus) in [("--server-cpus", server), ("--harness-cpus", harness)] {
        if let Some(&cpu) = cpus.into_iter().flatten().find(|c| !allowed.contains(c)) {
            return Err(format!(
                "{flag}: CPU {cpu} is not available to this process (it may use {})",
                format_cpu_list(allowed)
            ));
        }
    }
    let rest = |used: &[usize]| {
        let rest: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|c| !used.contains(c))
            .collect();
        if rest.is_empty() {
            allowed.to_vec()
        } else {
            rest
        }
    };
    Ok(match (server, harness) {
        (Some(s), Some(h)) => (Some(s.to_vec()), Some(h.to_vec())),
        (Some(s), None) => (Some(s.to_vec()), Some(rest(s))),
        (None, Some(h)) => (Some(rest(h)), Some(h.to_vec())),
        (None, None) => match allowed.split_last() {
            Some((&last, others)) if !others.is_empty() => {
                (Some(vec![last]), Some(others.to_vec()))
            }
            _ => (None, None),
        },
    })
}

fn cpu_set(cpus: &[usize]) -> Result<libc::cpu_set_t, String> {
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(format!("CPU {cpu} is out of range"));
        }
        // SAFETY: the index is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    Ok(set)
}

/// Pins thread `tid` (0: the calling thread).
fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: the set is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins every thread of this process (threads started later inherit it).
fn pin_this_process(cpus: &[usize]) -> Result<(), String> {
    let set = cpu_set(cpus)?;
    let fail = |err: std::io::Error| {
        format!(
            "cannot pin the harness to CPUs {}: {err}",
            format_cpu_list(cpus)
        )
    };
    set_affinity(0, &set).map_err(fail)?;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<libc::pid_t>().ok())
            {
                set_affinity(tid, &set).map_err(fail)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_threads_have_roles() {
        assert_eq!(server_thread_role("call-12").as_deref(), Some("call"));
        assert_eq!(server_thread_role("call-12-stt").as_deref(), Some("stt"));
        assert_eq!(server_thread_role("http-3").as_deref(), Some("http"));
        assert_eq!(
            server_thread_role("media-accept").as_deref(),
            Some("media-accept")
        );
        // The kernel keeps 15 bytes of a name.
        assert!(server_thread_role("records-compact").is_some());
        assert_eq!(server_thread_role("cotrackpro-voi"), None);
    }

    #[test]
    fn cpu_lists_are_parsed_strictly() {
        assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
        assert_eq!(parse_cpu_list("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list("3,0-1,1"), Ok(vec![0, 1, 3]));
        for bad in [
            "", ",", "1,", "a", "-1", "1-", "3-1", "1 ,2", "0x1", "99999",
        ] {
            let err = parse_cpu_list(bad).unwrap_err();
            assert!(err.contains("is not a CPU list"), "{bad:?}: {err}");
        }
        assert_eq!(format_cpu_list(&[0, 2, 3, 5]), "0,2-3,5");
        assert_eq!(format_cpu_list(&[1]), "1");
    }

    #[test]
    fn the_default_split_gives_the_server_the_last_core() {
        let some = |v: &[usize]| Some(v.to_vec());
        assert_eq!(
            split_cpus(&[0, 1], None, None),
            Ok((some(&[1]), some(&[0])))
        );
        assert_eq!(
            split_cpus(&[0, 1, 2, 3], None, None),
            Ok((some(&[3]), some(&[0, 1, 2])))
        );
        assert_eq!(split_cpus(&[0], None, None), Ok((None, None)));
        assert_eq!(
            split_cpus(&[0, 1, 2], Some(&[0]), None),
            Ok((some(&[0]), some(&[1, 2])))
        );
        assert_eq!(
            split_cpus(&[0, 1], None, Some(&[0, 1])),
            Ok((some(&[0, 1]), some(&[0, 1])))
        );
        let err = split_cpus(&[0, 1], Some(&[7]), None).unwrap_err();
        assert!(
            err.contains("--server-cpus: CPU 7 is not available"),
            "{err}"
        );
    }

    #[test]
    fn metrics_series_are_read_by_exact_name() {
        let text = "cotrackpro_calls_active 2\ncotrackpro_calls_active_x 9\n\
                    cotrackpro_turn_latency_ms{stage=\"first_frame\",quantile=\"0.5\"} 200\n";
        assert_eq!(metric(text, "cotrackpro_calls_active"), Some(2.0));
        assert_eq!(
            metric(
                text,
                "cotrackpro_turn_latency_ms{stage=\"first_frame\",quantile=\"0.5\"}"
            ),
            Some(200.0)
        );
        assert_eq!(metric(text, "cotrackpro_calls_peak"), None);
    }

    #[test]
    fn the_listening_line_gives_both_addresses() {
        let line = r#"{"msg":"listening","http":"127.0.0.1:4000","media":"127.0.0.1:4001"}"#;
        let (http, media) = listening_addrs(line).expect("addresses");
        assert_eq!(http.port(), 4000);
        assert_eq!(media.port(), 4001);
        assert_eq!(listening_addrs("not json"), None);
        assert_eq!(listening_addrs(r#"{"http":"127.0.0.1:1"}"#), None);
    }
}
