//! `cotrackpro-voice generate-audio` against the ElevenLabs simulator's REST endpoint, and a
//! call that plays what it rendered.

use std::collections::BTreeSet;
use std::time::Duration;

use cotrackpro_voice::call::clips::Clips;
use cotrackpro_voice::personas::Role;
use cotrackpro_voice::sim::Simulators;
use serde_json::Value;

use crate::call::Rig;
use crate::support::{binary, TempDir, DOMAIN};

fn generate(sims: &Simulators, dir: &TempDir, key: &str) -> std::process::Output {
    binary()
        .arg("generate-audio")
        .env_clear()
        .envs([
            ("SERVER_DOMAIN", DOMAIN),
            ("LOG_LEVEL", "warn"),
            ("ELEVENLABS_API_KEY", key),
            (
                "ELEVENLABS_API_BASE",
                sims.elevenlabs.api_base_url().as_str(),
            ),
            ("AUDIO_DIR", dir.path().to_str().expect("a UTF-8 path")),
        ])
        .output()
        .expect("generate-audio runs")
}

#[test]
fn renders_every_phrase_per_voice_keeps_what_is_current_and_calls_play_it() {
    let sims = Simulators::start().expect("simulators");
    let dir = TempDir::new("audio");
    let key = cotrackpro_voice::sim::elevenlabs_tts::TtsSimOptions::default().api_key;

    let output = generate(&sims, &dir, &key);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON");
    let voices: BTreeSet<&str> = Role::ALL.iter().map(|r| r.default_voice_id()).collect();
    let expected =
        voices.len() * cotrackpro_voice::personas::prompts::Phrase::ALL.len() + Role::ALL.len();
    assert_eq!(summary["voices"], voices.len());
    assert_eq!(summary["rendered"], expected);
    assert_eq!(summary["kept"], 0);
    let clips = Clips::load(dir.path());
    assert_eq!(clips.len(), expected, "every rendered clip loads");

    let again = generate(&sims, &dir, &key);
    let summary: Value = serde_json::from_str(
        String::from_utf8_lossy(&again.stdout)
            .lines()
            .last()
            .unwrap_or(""),
    )
    .expect("JSON");
    assert_eq!(
        (summary["rendered"].as_u64(), summary["kept"].as_u64()),
        (Some(0), Some(expected as u64))
    );

    let refused = generate(&sims, &TempDir::new("audio-refused"), "not-the-key");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    // A call with these clips plays the greeting from disk: no text-to-speech for it.
    let audio_dir = dir.path().display().to_string();
    let rig = Rig::start(&[("AUDIO_DIR", &audio_dir)]);
    let caller = rig.caller();
    assert!(caller.wait_for_echoes(1, Duration::from_secs(15)));
    let call_sid = caller.call_sid().to_string();
    drop(caller);
    // The call's socket was opened for what the persona may say, and no text went on it.
    let spoken: Vec<String> = rig
        .sims
        .elevenlabs
        .tts()
        .sessions()
        .iter()
        .flat_map(|(_, messages)| messages.iter())
        .filter_map(|m| m["text"].as_str().map(str::trim).map(str::to_string))
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(spoken, Vec::<String>::new(), "no live speech was needed");
    let record = rig.record_after_end(&call_sid);
    let cost = record.cost_summary.expect("cost");
    let greeting = cotrackpro_voice::personas::prompts::greeting(Role::Parent);
    assert_eq!(cost.tts_chars, 0);
    assert_eq!(cost.tts_chars_cached, greeting.chars().count() as u64);
}

/// The official `elevenlabs` Python SDK renders speech from our simulator's REST endpoint as
/// it would from the service, and gets the service's refusal for a wrong key.
#[test]
fn the_official_elevenlabs_sdk_renders_from_the_simulator() {
    let sims = Simulators::start().expect("simulators");
    let key = cotrackpro_voice::sim::elevenlabs_tts::TtsSimOptions::default().api_key;
    let text = "Take all the time you need.";
    let result = crate::support::run_python(
        "elevenlabs_interop.py",
        &[],
        &serde_json::json!({
            "base_url": sims.elevenlabs.api_base_url(),
            "api_key": key,
            "voice_id": Role::Parent.default_voice_id(),
            "text": text,
        }),
    );
    let expected = cotrackpro_voice::sim::voice::speak(text, 0.0).len();
    let bytes = result["audio_bytes"].as_u64().expect("a count") as usize;
    assert!(bytes > 0, "{result}");
    // The simulated voice's length depends on the text only (a second of μ-law is 8000 bytes).
    assert!(
        bytes.abs_diff(expected) < 8000,
        "{bytes} bytes, about {expected} expected"
    );
    assert_eq!(result["wrong_key_status"], 401, "{result}");
}
