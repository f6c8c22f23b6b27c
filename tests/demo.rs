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
        "Status completed, 5 turns, 1 barge-in, 1 tool call(s)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    // What was cut off by the barge-in was never heard, so it is not in the record.
    assert!(!stdout.contains("keep your own notes short"), "{stdout}");
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
        "server threads' CPU",
        "per simultaneous call",
    ] {
        assert!(stdout.contains(figure), "{figure} in {stdout}");
    }
}
