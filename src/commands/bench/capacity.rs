//! `bench --capacity`: the number of simultaneous calls the server carries within its service
//! levels.
//!
//! Steps: from `--calls` (default 10), each step ×1.5 rounded up (at least one more call), the
//! last step exactly `--max-calls` (default 1000): 10, 15, 23, 35, 53, 80, 120, 180, 270, 405,
//! 608, 912, 1000. Each step is a whole [`run_step`](super::run_step): fresh simulators and a
//! fresh server process, so no step inherits another's connections, buffers or records. The
//! search stops at the first step that breaks a service level ([`broken`]); the capacity is the
//! last step before it.

use std::error::Error;

use serde_json::{json, Map, Value};

use super::{run_step, BenchOptions, Pinning, Report};

/// `--max-calls` when not given.
pub const DEFAULT_MAX_CALLS: usize = 1000;
/// The first step when `--calls` is not given.
pub const DEFAULT_START_CALLS: usize = 10;
/// A hop's p99 above this breaks the service level.
const HOP_P99_LIMIT_MS: f64 = 10.0;
/// The share of the callers' frames that may leave over 10 ms late (a moment of the machine's
/// noise) before the harness counts as saturated.
const LATE_FRAMES_SHARE: f64 = 0.001;

/// The step after `calls`: ×1.5 rounded up, at least one more, at most `max`; `None` once
/// `max` is reached.
fn next_step(calls: usize, max: usize) -> Option<usize> {
    (calls < max).then(|| {
        calls
            .saturating_add(calls.div_ceil(2))
            .max(calls + 1)
            .min(max)
    })
}

/// The first service level a step broke: `(reason, detail)`, `None` when it met them all.
fn broken(report: &Report, options: &BenchOptions) -> Option<(String, String)> {
    broken_levels(&report.to_json(options))
}

/// [`broken`] on a step's JSON report (the figures `--json` prints). The checks, first match
/// wins:
/// - `harness_saturated`: the harness used 90 % or more of its cores, so whatever else broke
///   may be the harness's doing; the search found the harness's limit, not the server's;
///   the same when more than [`LATE_FRAMES_SHARE`] of the callers' frames left over 10 ms late;
/// - `not_simultaneous`: fewer calls were live at once than the step has (the calls were too
///   short for the ramp): the step measured fewer calls than it says;
/// - `failed_calls`: any call failed;
/// - `frame_gaps`: any caller's playback buffer ran dry inside a spoken piece;
/// - `hop_p99:<name>`: the p99 of a measured hop over 10 ms (the worst such hop; a hop that is
///   `null`, not measured, is not checked).
fn broken_levels(step: &Value) -> Option<(String, String)> {
    let calls = step["calls"].as_u64().unwrap_or(0);
    if step["harness_cpu_saturated"].as_bool() == Some(true) {
        let share = step["harness_cpu_share"]
            .as_f64()
            .map_or("nearly all".to_string(), |s| format!("{:.0} %", s * 100.0));
        return Some((
            "harness_saturated".into(),
            format!(
                "the harness (simulated providers and callers) used {share} of its cores: it ran out first, so this is not the server's capacity"
            ),
        ));
    }
    // Frames that left over 10 ms late: the callers' loop fell behind its clock.
    let late = step["harness_late_frames"].as_u64().unwrap_or(0);
    let frames = calls as f64 * step["wall_secs"].as_f64().unwrap_or(0.0) * 50.0;
    if late as f64 > frames * LATE_FRAMES_SHARE {
        return Some((
            "harness_saturated".into(),
            format!(
                "the harness sent {late} of the callers' frames over 10 ms late: it fell behind, so this is not the server's capacity"
            ),
        ));
    }
    let peak = step["peak_calls"].as_u64().unwrap_or(calls);
    if peak < calls {
        return Some((
            "not_simultaneous".into(),
            format!(
                "at most {peak} of the {calls} calls were live at once: the first ended before the last was dialed; more turns (--turns) make calls long enough"
            ),
        ));
    }
    let failed = step["failed_calls"].as_u64().unwrap_or(0);
    if failed > 0 {
        let first = step["failures"][0].as_str().unwrap_or("");
        return Some((
            "failed_calls".into(),
            format!("{failed} of {calls} calls failed (first: {first})"),
        ));
    }
    let gaps = step["frame_gaps"].as_u64().unwrap_or(0);
    if gaps > 0 {
        return Some((
            "frame_gaps".into(),
            format!("{gaps} frame gaps (a caller's playback buffer ran dry inside a piece)"),
        ));
    }
    let mut over: Vec<(&str, f64)> = step["hops_ms"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, q)| Some((name.as_str(), q["p99"].as_f64()?)))
        .filter(|(_, p99)| *p99 > HOP_P99_LIMIT_MS)
        .collect();
    over.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (worst, _) = *over.first()?;
    let list: Vec<String> = over
        .iter()
        .map(|(name, p99)| format!("{name} p99 {p99} ms"))
        .collect();
    Some((
        format!("hop_p99:{worst}"),
        format!("{} (over {HOP_P99_LIMIT_MS} ms)", list.join(", ")),
    ))
}

/// What stopped the search.
struct Limit {
    reason: String,
    at_calls: usize,
    detail: String,
}

pub(super) fn run_capacity(
    options: &BenchOptions,
    pinning: &(Pinning, Pinning),
) -> Result<(), Box<dyn Error>> {
    let max = options.max_calls.max(1);
    let mut calls = options.calls.clamp(1, max);
    let mut steps: Vec<Value> = Vec::new();
    let mut passed: Option<Value> = None;
    let mut breaking: Option<Value> = None;
    let mut failed_to_run: Option<String> = None;
    let limit = loop {
        let step_options = BenchOptions {
            calls,
            capacity: false,
            ..options.clone()
        };
        let (report, stopped) = match run_step(&step_options, pinning) {
            Ok(done) => done,
            Err(err) => {
                let detail = format!("the step could not run: {err}");
                failed_to_run = Some(detail.clone());
                break Limit {
                    reason: "error".into(),
                    at_calls: calls,
                    detail,
                };
            }
        };
        let step = report.to_json(&step_options);
        let verdict = broken(&report, &step_options);
        print_step(steps.len() + 1, &step, verdict.as_ref(), options.json);
        steps.push(step_summary(&step, verdict.as_ref()));
        if let Some((reason, detail)) = verdict {
            breaking = Some(step);
            break Limit {
                reason,
                at_calls: calls,
                detail,
            };
        }
        if let Err(err) = stopped {
            let detail = format!("the server did not stop cleanly: {err}");
            failed_to_run = Some(detail.clone());
            break Limit {
                reason: "error".into(),
                at_calls: calls,
                detail,
            };
        }
        passed = Some(step);
        match next_step(calls, max) {
            Some(next) => calls = next,
            None => {
                break Limit {
                    reason: "max_calls".into(),
                    at_calls: calls,
                    detail: format!(
                        "every step up to --max-calls {max} met the service levels; raise it to look further"
                    ),
                }
            }
        }
    };
    let capacity = passed
        .as_ref()
        .and_then(|p| p["calls"].as_u64())
        .unwrap_or(0);
    if options.json {
        // The figures of the largest passing step (else of the step that broke), and the search.
        let mut out: Map<String, Value> = passed
            .or(breaking)
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        out.insert("capacity_calls".into(), json!(capacity));
        out.insert(
            "capacity_limit".into(),
            json!({
                "reason": limit.reason,
                "at_calls": limit.at_calls,
                "detail": limit.detail,
            }),
        );
        out.insert("capacity_steps".into(), Value::Array(steps));
        println!("{}", Value::Object(out));
    } else {
        print_summary(capacity, &limit);
    }
    match failed_to_run {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}

/// One step's line: on stdout, or on stderr under `--json` (stdout is the one JSON object).
fn print_step(n: usize, step: &Value, verdict: Option<&(String, String)>, json: bool) {
    let ms = |v: &Value| v.as_f64().map_or("–".to_string(), |v| format!("{v:.0} ms"));
    let worst_hop = step["hops_ms"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, q)| Some((name, q["p99"].as_f64()?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or("–".to_string(), |(name, p99)| format!("{name} {p99} ms"));
    let line = format!(
        "step {n}: {} calls: {} · failed {} · frame gaps {} · worst hop p99 {worst_hop} · caller wait p99 {} · harness CPU {} · server CPU {} per call-second",
        step["calls"],
        match verdict {
            None => "passed".to_string(),
            Some((reason, detail)) => format!("BROKE {reason}: {detail}"),
        },
        step["failed_calls"],
        step["frame_gaps"],
        ms(&step["caller_wait_ms"]["p99"]),
        step["harness_cpu_share"]
            .as_f64()
            .map_or("–".to_string(), |s| format!("{:.0} %", s * 100.0)),
        step["server_cpu_ms_per_call_second"]
            .as_f64()
            .map_or("–".to_string(), |v| format!("{v:.2} ms")),
    );
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn print_summary(capacity: u64, limit: &Limit) {
    let Limit {
        reason,
        at_calls,
        detail,
    } = limit;
    match reason.as_str() {
        "max_calls" => println!(
            "capacity: at least {capacity} simultaneous calls ({detail})"
        ),
        "not_simultaneous" => println!(
            "capacity: at least {capacity} simultaneous calls; the step of {at_calls} calls did not have them all live at once ({detail})"
        ),
        "harness_saturated" => println!(
            "capacity: not found: the harness ran out first, at {at_calls} calls ({detail}); the server met every service level up to {capacity} calls; give the harness more cores (--harness-cpus) to look further"
        ),
        _ => println!(
            "capacity: {capacity} simultaneous calls; at {at_calls} calls: {reason} ({detail})"
        ),
    }
}

/// A step's entry in `capacity_steps`.
fn step_summary(step: &Value, verdict: Option<&(String, String)>) -> Value {
    let hop_p99: Map<String, Value> = step["hops_ms"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, q)| (name.clone(), q["p99"].clone()))
        .collect();
    json!({
        "calls": step["calls"],
        "passed": verdict.is_none(),
        "broke": verdict.map(|(reason, _)| reason),
        "failed_calls": step["failed_calls"],
        "frame_gaps": step["frame_gaps"],
        "harness_cpu_saturated": step["harness_cpu_saturated"],
        "harness_cpu_share": step["harness_cpu_share"],
        "caller_wait_p99_ms": step["caller_wait_ms"]["p99"],
        "server_cpu_ms_per_call_second": step["server_cpu_ms_per_call_second"],
        "hop_p99_ms": hop_p99,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::bench::{ProcSample, Window};
    use std::time::Instant;

    fn report(calls: usize) -> Report {
        let sample = ProcSample {
            at: Instant::now(),
            cpu_secs: None,
            rss_kib: None,
            anon_kib: None,
            threads: None,
            fds: None,
        };
        Report {
            calls,
            turns_expected: calls,
            waits: vec![1200; calls],
            failures: Vec::new(),
            peak_calls: calls,
            server_pid: 2,
            harness_pid: 1,
            server_cpus: Some(vec![1]),
            harness_cpus: Some(vec![0]),
            vad_silence_secs: 0.8,
            stt_chunk_ms: 100,
            metrics: Err("synthetic".into()),
            wall_secs: 10.0,
            rest: sample,
            peak: sample,
            server_cpu_secs: Some(1.0),
            harness_cpu_secs: Some(2.0),
            window: Window::default(),
            frame_gaps: 0,
            barge_ins: 0,
            clears: 0,
            late_frames: 0,
            tts_sockets: 0,
            hops: crate::sim::hops::Hops::default(),
            turn_end: "smart".into(),
            waits_by_ending: Vec::new(),
        }
    }

    #[test]
    fn steps_grow_by_half_up_to_the_cap() {
        let mut steps = vec![10];
        while let Some(next) = next_step(*steps.last().expect("a step"), 1000) {
            steps.push(next);
        }
        assert_eq!(
            steps,
            [10, 15, 23, 35, 53, 80, 120, 180, 270, 405, 608, 912, 1000]
        );
        assert_eq!(next_step(1, 2), Some(2));
        assert_eq!(next_step(2, 2), None);
        assert_eq!(next_step(1, 1000), Some(2));
        assert_eq!(next_step(2, 1000), Some(3));
    }

    #[test]
    fn a_clean_step_meets_the_service_levels() {
        let options = BenchOptions::new(10, 1);
        assert_eq!(broken(&report(10), &options), None);
    }

    #[test]
    fn a_failed_call_breaks_the_service_level() {
        let options = BenchOptions::new(10, 1);
        let mut r = report(10);
        r.failures = vec!["turn 1 got no answer".into()];
        r.frame_gaps = 3;
        let (reason, detail) = broken(&r, &options).expect("broken");
        assert_eq!(reason, "failed_calls");
        assert!(detail.contains("1 of 10 calls failed"), "{detail}");
        assert!(detail.contains("turn 1 got no answer"), "{detail}");
    }

    #[test]
    fn a_frame_gap_breaks_the_service_level() {
        let options = BenchOptions::new(10, 1);
        let mut r = report(10);
        r.frame_gaps = 1;
        let (reason, _) = broken(&r, &options).expect("broken");
        assert_eq!(reason, "frame_gaps");
    }

    #[test]
    fn a_saturated_harness_is_reported_before_what_it_may_have_caused() {
        let options = BenchOptions::new(10, 1);
        let mut r = report(10);
        // 9.5 CPU-seconds of one core over 10 s: 95 %.
        r.harness_cpu_secs = Some(9.5);
        r.failures = vec!["connect: refused".into()];
        let (reason, detail) = broken(&r, &options).expect("broken");
        assert_eq!(reason, "harness_saturated");
        assert!(detail.contains("95 %"), "{detail}");
    }

    #[test]
    fn a_harness_behind_its_clock_is_saturated_and_a_short_overlap_is_not_a_step() {
        let options = BenchOptions::new(10, 1);
        let mut r = report(10);
        // 10 calls for 10 s: 5,000 frames; 5 late is the noise allowed, 6 is not.
        r.late_frames = 5;
        assert_eq!(broken(&r, &options), None);
        r.late_frames = 6;
        let (reason, detail) = broken(&r, &options).expect("broken");
        assert_eq!(reason, "harness_saturated");
        assert!(detail.contains("6 of the callers' frames"), "{detail}");
        let mut r = report(10);
        r.peak_calls = 7;
        let (reason, detail) = broken(&r, &options).expect("broken");
        assert_eq!(reason, "not_simultaneous");
        assert!(detail.contains("at most 7 of the 10 calls"), "{detail}");
    }

    #[test]
    fn the_worst_measured_hop_over_its_limit_breaks_the_service_level() {
        let step = |hops: Value| {
            json!({"calls": 10, "failed_calls": 0, "frame_gaps": 0,
                   "harness_cpu_saturated": false, "hops_ms": hops})
        };
        let q = |p99: f64| json!({"p50": 1, "p95": 2, "p99": p99, "max": 40});
        // Null hops are not measured, so not checked; 10 ms itself is within the level.
        assert_eq!(
            broken_levels(&step(
                json!({"twilio_to_stt": null, "tts_to_twilio": q(10.0)})
            )),
            None
        );
        let (reason, detail) = broken_levels(&step(json!({
            "twilio_to_stt": q(12.5),
            "sentence_to_tts": q(31.0),
            "tts_to_twilio": q(3.0),
            "partial_to_clear": null,
        })))
        .expect("broken");
        assert_eq!(reason, "hop_p99:sentence_to_tts");
        assert!(detail.contains("twilio_to_stt p99 12.5 ms"), "{detail}");
        assert!(!detail.contains("tts_to_twilio"), "{detail}");
    }
}
