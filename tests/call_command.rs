//! `cotrackpro-voice call` against the real binary's `serve`, pointed at the simulated providers with
//! webhook signatures checked: a call dialed with the server's token completes (greeting, an
//! answer to each utterance, a clean hang-up, the WAV written) and exits 0; dialed with another
//! token it exits 1 with one line naming the 403 — and never prints the token.

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use cotrackpro_voice::sim::Simulators;

use crate::support::{binary, serve_binary, TempDir, DOMAIN};

fn call(http: SocketAddr, media: &str, token: &str, wav: &std::path::Path) -> Output {
    binary()
        .args(["call", "--fast", "--role", "judge", "--server"])
        .arg(format!("http://{http}"))
        .arg("--media")
        .arg(format!("ws://{media}/call/stream"))
        .arg("--wav")
        .arg(wav)
        .env_clear()
        .env("TWILIO_AUTH_TOKEN", token)
        .env("SERVER_DOMAIN", DOMAIN)
        .stdin(Stdio::null())
        .output()
        .expect("call runs")
}

#[test]
fn call_completes_against_serve_and_a_wrong_token_is_refused() {
    // The variables `cotrackpro-voice sim` prints, from the same simulators in this process.
    let sims = Simulators::start().expect("the simulators start");
    let vars = sims.env();
    let records = TempDir::new("call-command");
    let mut extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.extend([
        ("BIND_ADDR", "127.0.0.1"),
        ("VALIDATE_TWILIO_SIGNATURE", "true"),
    ]);
    let (_server, http, listening) = serve_binary(&records, &extra);
    assert_eq!(listening["signatureValidation"], true);
    let media = listening["media"].as_str().expect("the media address");
    let token = cotrackpro_voice::sim::SIM_TWILIO_AUTH_TOKEN;
    let wav = records.path().join("call.wav");

    let output = call(http, media, token, &wav);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("🔊 greeting: first audio"), "{stdout}");
    assert_eq!(stdout.matches("🗣  caller: ").count(), 2, "{stdout}");
    assert_eq!(
        stdout.matches("🔊 reply: first audio").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("☎  the caller hung up"), "{stdout}");
    let written = std::fs::metadata(&wav).expect("the WAV was written").len();
    // 44 bytes of header, then seconds of 8 kHz 16-bit stereo.
    assert!(written > 44 + 8000 * 4, "{written} bytes");
    assert!(!stdout.contains(token) && !stderr.contains(token));

    let wrong = "not-the-servers-token";
    let output = call(http, media, wrong, &records.path().join("refused.wav"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: the server refused the webhook's signature (403"),
        "{stderr}"
    );
    assert!(!stdout.contains(wrong) && !stderr.contains(wrong));
    assert!(!records.path().join("refused.wav").exists());
}
