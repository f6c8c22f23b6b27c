//! `cotrackpro-voice demo`, run as a newcomer would: no keys, one command.

use std::time::Duration;

use crate::support::{binary, TempDir};

#[test]
fn the_demo_holds_a_whole_conversation_and_writes_it_to_a_wav_file() {
    let dir = TempDir::new("demo");
    let wav = dir.path().join("call.wav");
    let output = binary()
        .args(["demo", "--fast", "--role", "attorney", "--wav"])
        .arg(&wav)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ELEVENLABS_API_KEY")
        .env("LOG_LEVEL", "warn")
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "phones the attorney persona",
        "caller › Hi. I need help writing down what happened at the exchange last Friday.",
        "attorney › I'm working on that for you right now.",
        "the server cleared Twilio's buffer",
        "attorney › Keep every text message about the exchange, with its date.",
        // The backchannel: said over the first answer, kept, neither a clear nor a turn.
        "caller (while the answer plays): Mm-hmm.",
        "only a backchannel: no clear was sent, and the answer went on",
        "caller › Mm-hmm.   (a backchannel: not a turn)",
        // The cough: a clear, then the answer resumes with the sentence not heard.
        "caller coughs over the answer",
        "the server cleared Twilio's buffer and paused the answer",
        "the answer resumed from the sentence the caller had not heard",
        "attorney › As I was saying,",
        "attorney › You did well today, and writing things down as they happen will help you.",
        // Two clears (the interruption and the cough); the cough is not a turn.
        "Status completed, 5 turns, 2 barge-in(s), 1 tool call(s)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    // What was cut off by the barge-in was never heard, so it is not in the record.
    assert!(!stdout.contains("keep your own notes short"), "{stdout}");
    // The sentence the cough cut off is in the record once: as heard after the resume.
    assert_eq!(
        stdout
            .matches("› You did well today, and writing things down")
            .count(),
        1,
        "{stdout}"
    );
    // Five turns, each with its latencies.
    assert_eq!(
        stdout.matches("first frame to Twilio").count(),
        5,
        "{stdout}"
    );

    let bytes = std::fs::read(&wav).expect("the WAV file was written");
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    let seconds = (bytes.len() - 44) as f64 / (8000.0 * 4.0);
    assert!(
        seconds > Duration::from_secs(10).as_secs_f64(),
        "{seconds} s of call"
    );
}

#[test]
fn the_bench_runs_simultaneous_calls_and_prints_its_figures() {
    let output = binary()
        .args(["bench", "--calls", "4", "--turns", "1"])
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ELEVENLABS_API_KEY")
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("turns answered: 4 of 4; calls failed: 0; peak simultaneous calls: 4"),
        "{stdout}"
    );
    for figure in [
        "caller waits",
        "first frame",
        "server CPU (its whole process)",
        "per simultaneous call",
        "harness CPU",
    ] {
        assert!(stdout.contains(figure), "{figure} in {stdout}");
    }
}

#[test]
fn the_bench_runs_the_server_as_its_own_process_and_prints_json() {
    let output = binary()
        .args(["bench", "--calls", "4", "--turns", "2", "--json"])
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ELEVENLABS_API_KEY")
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // One JSON object and nothing else: the server's logs do not reach stdout.
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    assert_eq!(report["calls"], 4);
    assert_eq!(report["failed_calls"], 0, "{report:#}");
    assert_eq!(report["turns_expected"], 8);
    assert_eq!(report["turns_answered"], 8, "{report:#}");
    // Each caller's second utterance is said over the first answer, and the server clears.
    assert_eq!(report["barge_ins"], 4, "{report:#}");
    assert_eq!(report["clears"], 4, "{report:#}");
    assert!(report["harness_late_frames"].is_u64(), "{report:#}");
    // One text-to-speech socket per call, whatever the number of sentences, counted at the
    // simulator.
    assert_eq!(report["tts_sockets"], 4, "{report:#}");
    // TLS on every provider socket and a round trip to each, by default.
    assert_eq!(report["tls"], true);
    assert_eq!(report["provider_rtt_ms"], 20);
    assert!(report["frame_gaps"].is_u64(), "{report:#}");
    let server_pid = report["server_pid"].as_u64().expect("server_pid");
    let harness_pid = report["harness_pid"].as_u64().expect("harness_pid");
    assert_ne!(server_pid, harness_pid);
    assert_ne!(server_pid, 0);
    assert!(report["harness_cpu_saturated"].is_boolean());
    for key in [
        "server_cpu_ms_per_call_second",
        "server_rss_kib_per_call",
        "server_threads_per_call",
        "server_fds_per_call",
        "server_wakeups_per_call_second",
        "frame_gaps",
    ] {
        let value = &report[key];
        assert!(
            value.is_number() || value.is_null(),
            "{key} is a number or null in {report:#}"
        );
    }
    // The server's process grew by a thread and descriptors per live call.
    assert!(
        report["server_threads_per_call"].as_f64().unwrap_or(0.0) > 0.0,
        "{report:#}"
    );
    let hops = report["hops_ms"].as_object().expect("hops_ms");
    for hop in [
        "twilio_to_stt",
        "transcript_to_llm",
        "sentence_to_tts",
        "tts_to_twilio",
        "partial_to_clear",
    ] {
        assert!(hops.contains_key(hop), "{hop} in {report:#}");
    }
    // Every hop is timed at the simulators' sockets and in the callers: each has samples
    // and ordered, non-negative figures.
    for hop in [
        "twilio_to_stt",
        "transcript_to_llm",
        "sentence_to_tts",
        "tts_to_twilio",
        "partial_to_clear",
    ] {
        let figures = &hops[hop];
        assert!(
            figures["samples"].as_u64().unwrap_or(0) > 0,
            "{hop} in {report:#}"
        );
        let q = |k: &str| figures[k].as_f64().unwrap_or(-1.0);
        assert!(q("p50") >= 0.0, "{hop} in {report:#}");
        assert!(q("p50") <= q("p95") && q("p95") <= q("p99") && q("p99") <= q("max"));
    }
    // One commit and one first sentence per answered turn, one clear per barge-in, each
    // matched once.
    assert_eq!(hops["transcript_to_llm"]["samples"], 8, "{report:#}");
    assert_eq!(hops["sentence_to_tts"]["samples"], 8, "{report:#}");
    assert_eq!(hops["partial_to_clear"]["samples"], 4, "{report:#}");
    for q in ["p50", "p95", "p99", "max"] {
        assert!(report["caller_wait_ms"][q].is_u64(), "{q} in {report:#}");
    }
    assert!(
        report["server_stages_ms"]["first_frame"]["p50"].is_u64(),
        "{report:#}"
    );
}

#[test]
fn the_capacity_search_reports_the_largest_passing_count_and_why_it_stopped() {
    let output = binary()
        .args([
            "bench",
            "--capacity",
            "--max-calls",
            "2",
            "--calls",
            "1",
            "--turns",
            "1",
            "--json",
        ])
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ELEVENLABS_API_KEY")
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    let limit = &report["capacity_limit"];
    let reason = limit["reason"].as_str().expect("capacity_limit.reason");
    let at_calls = limit["at_calls"].as_u64().expect("capacity_limit.at_calls");
    let capacity = report["capacity_calls"].as_u64().expect("capacity_calls");
    assert!(limit["detail"].is_string(), "{report:#}");
    // Two steps at most: 1 call, then 2.
    let steps = report["capacity_steps"].as_array().expect("capacity_steps");
    assert!((1..=2).contains(&steps.len()), "{report:#}");
    assert_eq!(steps[0]["calls"], 1, "{report:#}");
    if reason == "max_calls" {
        // Nothing broke: both steps passed and the capacity is the cap.
        assert_eq!(capacity, 2, "{report:#}");
        assert_eq!(at_calls, 2, "{report:#}");
        assert!(steps.iter().all(|s| s["passed"] == true), "{report:#}");
        // The top-level figures are the largest passing step's.
        assert_eq!(report["calls"], 2, "{report:#}");
        assert_eq!(report["failed_calls"], 0, "{report:#}");
    } else {
        // On a loaded machine a step may break a level (a frame gap, the harness
        // saturating); then the capacity is the step before it.
        assert!(
            reason == "failed_calls"
                || reason == "frame_gaps"
                || reason == "harness_saturated"
                || reason.starts_with("hop_p99:"),
            "{report:#}"
        );
        assert_eq!(capacity + 1, at_calls, "{report:#}");
        let last = steps.last().expect("a step");
        assert_eq!(last["passed"], false, "{report:#}");
        assert_eq!(last["broke"], reason, "{report:#}");
    }
    // One line per step on stderr, stdout holding only the JSON.
    assert!(stderr.contains("step 1: 1 calls"), "{stderr}");
}
