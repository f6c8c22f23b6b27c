//! `cotrackpro-voice bench-records`: how the records store behaves at a million calls. Writes
//! synthetic calls (a created, a status and a completed line each, with a short transcript and a
//! cost summary), then measures the start-up rebuild, the memory the index takes, the records
//! API's list and by-role latency (the handler, without the socket), and a compaction.
//! Figures are printed, not asserted: README.md records them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::{Config, Env};
use crate::http::{route, Incoming};
use crate::personas::Role;
use crate::records::event::{
    CallStatus, CostSummary, Direction, Event, EventKind, Transcript, TranscriptEntry,
};
use crate::records::{RecordStore, RECORDS_FILE};
use crate::timestamp;

const BENCH_KEY: &str = "bench-key-0123456789abcdef";

/// Runs the benchmark in `dir` (emptied first) with `calls` synthetic calls.
pub fn run(dir: &Path, calls: u64) -> io::Result<()> {
    if dir.join(RECORDS_FILE).exists() {
        std::fs::remove_file(dir.join(RECORDS_FILE))?;
    }
    std::fs::create_dir_all(dir)?;
    let started = Instant::now();
    let (lines, bytes) = generate(&dir.join(RECORDS_FILE), calls)?;
    println!(
        "generated       {calls} calls, {lines} lines, {:.1} MB in {:.1} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let rss_before = rss_bytes();
    let started = Instant::now();
    let (store, bad) = RecordStore::open(dir).map_err(io::Error::other)?;
    let rebuild = started.elapsed();
    let rss_after = rss_bytes();
    println!(
        "rebuild         {:.2} s, {:.0} lines/s ({} unreadable)",
        rebuild.as_secs_f64(),
        lines as f64 / rebuild.as_secs_f64(),
        bad.len()
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!(
            "index memory    {:.0} MB RSS growth, {:.0} bytes per call (process RSS {:.0} MB)",
            after.saturating_sub(before) as f64 / 1e6,
            after.saturating_sub(before) as f64 / calls as f64,
            after as f64 / 1e6
        );
    }

    let store = Arc::new(store);
    let mut env = Env::from_pairs([
        ("SERVER_DOMAIN", "bench.example.com"),
        ("OUTBOUND_API_KEY", BENCH_KEY),
        ("RECORDS_RATE_LIMIT_PER_MIN", "0"),
        ("RECORDS_RATE_LIMIT_PER_HOUR", "0"),
    ]);
    env.set("RECORDS_DIR", &dir.display().to_string());
    let config = Config::from_env(&env).map_err(|e| io::Error::other(format!("{e:?}")))?;
    let app = App::new(config, store.clone());
    report_latency(&app, "GET /records?limit=100", "/records", "limit=100");
    report_latency(
        &app,
        "GET /records/by-role/mediator",
        "/records/by-role/mediator",
        "limit=100",
    );
    let first = route(&app, &request("/records", "limit=100"));
    let cursor = serde_json::from_slice::<serde_json::Value>(&first.body)
        .ok()
        .and_then(|v| v["cursor"].as_str().map(str::to_string))
        .unwrap_or_default();
    report_latency(
        &app,
        "GET /records page 2",
        "/records",
        &format!("limit=100&cursor={cursor}"),
    );

    // First every call is three lines (the worst case); then, as on every later day, each is
    // one line already and is copied without parsing.
    for label in ["compaction", "compaction again"] {
        let started = Instant::now();
        let report = store.compact().map_err(io::Error::other)?;
        println!(
            "{label:<17}{:.2} s: {} lines -> {} calls kept, {} dropped",
            started.elapsed().as_secs_f64(),
            report.lines_before,
            report.calls_kept,
            report.calls_dropped
        );
    }
    Ok(())
}

fn request(path: &str, query: &str) -> Incoming {
    Incoming {
        method: "GET".into(),
        path: path.into(),
        query: query.into(),
        headers: vec![("Authorization".into(), format!("Bearer {BENCH_KEY}"))],
        ..Incoming::default()
    }
}

fn report_latency(app: &App, label: &str, path: &str, query: &str) {
    let req = request(path, query);
    let mut samples: Vec<Duration> = (0..2000)
        .map(|_| {
            let started = Instant::now();
            let reply = route(app, &req);
            let took = started.elapsed();
            assert_eq!(reply.status, 200, "{label}: {}", reply.body_text());
            took
        })
        .collect();
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "{label:<30} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}

/// Writes `calls` synthetic calls, three lines each. Returns (lines, bytes).
fn generate(path: &Path, calls: u64) -> io::Result<(u64, u64)> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let now = timestamp::now_ms();
    let ttl = crate::records::ttl_from(now, 365.0);
    let mut lines = 0;
    let mut bytes = 0;
    for n in 0..calls {
        let sid = format!("CA{n:032x}");
        let started_ms = now - (calls - n) as i64 * 1000;
        let started = timestamp::format_ms(started_ms);
        let ended = timestamp::format_ms(started_ms + 180_000);
        let role = Role::ALL[(n % 13) as usize];
        let events = [
            Event {
                twilio_status: Some("ringing".into()),
                ..Event::created(&sid, role, Direction::Inbound, "+1***4567", started_ms, ttl)
            },
            Event {
                status: Some(CallStatus::Active),
                twilio_status: Some("in-progress".into()),
                sequence_number: Some(1),
                ..Event::new(EventKind::Status, &sid, &started, ttl)
            },
            Event {
                status: Some(CallStatus::Completed),
                ended_at: Some(ended.clone()),
                duration_secs: Some(180),
                turn_count: Some(4),
                transcript: Some(Transcript::from_entries(&[
                    TranscriptEntry {
                        role: "user".into(),
                        text: "I need help writing down what happened at the exchange.".into(),
                        timestamp: started.clone(),
                    },
                    TranscriptEntry {
                        role: "assistant".into(),
                        text: "Of course. Let's start with when and where it happened.".into(),
                        timestamp: ended.clone(),
                    },
                ])),
                tool_calls: Some(Vec::new()),
                cost_summary: Some(CostSummary {
                    claude_input_tokens: 1250,
                    claude_output_tokens: 850,
                    claude_cache_creation_tokens: 1875,
                    claude_cache_read_tokens: 18_500,
                    tts_chars: 2200,
                    tts_chars_cached: 195,
                    stt_secs: 142.4,
                    estimated_cost_usd: 0.268068,
                }),
                barge_ins: Some(1),
                ..Event::new(EventKind::Completed, &sid, &ended, ttl)
            },
        ];
        for event in &events {
            let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line)?;
            lines += 1;
            bytes += line.len() as u64;
        }
    }
    out.flush()?;
    Ok((lines, bytes))
}

/// The process's resident memory, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
