//! `cotrackpro-voice sim`: every simulated provider starts, the printed variables make a valid
//! configuration, and the clients work against the printed addresses — both ElevenLabs sockets
//! on the one `ELEVENLABS_WS_BASE`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cotrackpro_voice::config::{Config, Env, Secret};
use cotrackpro_voice::providers::anthropic::client::AnthropicClient;
use cotrackpro_voice::providers::anthropic::request::{build, RequestParts};
use cotrackpro_voice::providers::anthropic::Turn;
use cotrackpro_voice::providers::elevenlabs_stt::{SttSettings, SttStream};
use cotrackpro_voice::providers::elevenlabs_tts::{TtsSettings, TtsSocket};
use cotrackpro_voice::providers::mcp::McpClient;
use cotrackpro_voice::twilio::rest::{CreateCall, TwilioRest};

use crate::support::binary;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_sim_command_serves_every_provider() {
    let mut child = binary()
        .args(["sim", "--first-token-ms", "5", "--token-ms", "1"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("test-sim-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
        .unwrap();
    let mut vars = BTreeMap::new();
    while vars.len() < 9 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the sim command printed its variables");
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
    }

    let mut env = Env::from_pairs(vars.clone());
    env.set("SERVER_DOMAIN", "voice.example.com");
    let config = Config::from_env(&env).expect("the printed variables make a valid configuration");

    let anthropic =
        AnthropicClient::new(&config.anthropic, config.anthropic.api_key.clone().unwrap());
    let history = [Turn::user("Hello?")];
    let body = build(&RequestParts {
        model: "m",
        max_tokens: 64,
        system: "s",
        tools: &[],
        history: &history,
        max_history_messages: 40,
    });
    let outcome = anthropic
        .stream(
            &body,
            &cotrackpro_voice::providers::cancel::Cancel::new(),
            |_| {},
        )
        .unwrap();
    assert_eq!(outcome.stop_reason.as_deref(), Some("end_turn"));

    let key = config.elevenlabs.api_key.clone().unwrap();
    let tts = TtsSettings {
        ws_base: config.elevenlabs.ws_base.clone(),
        api_key: key.clone(),
        model_id: config.elevenlabs.model_id.clone(),
        connect_timeout: Duration::from_secs(5),
        inactivity_secs: 20,
    };
    let mut speech = TtsSocket::open(&tts, "EXAVITQu4vr4xnSDxMaL").unwrap();
    assert!(speech.speak("1-0-1", "Hello.").unwrap() > 0);
    speech.close();
    let stt = SttSettings {
        ws_base: config.elevenlabs.ws_base.clone(),
        api_key: key,
        model_id: "scribe_v2_realtime".into(),
        language_code: "en".into(),
        vad_silence_secs: 1.0,
        connect_timeout: Duration::from_secs(5),
        silent_service_limit: Duration::from_secs(20),
        chunk: Duration::from_millis(20),
        commit: cotrackpro_voice::providers::elevenlabs_stt::CommitStrategy::Vad,
    };
    let mut listening = SttStream::open(&stt).unwrap();
    let started = listening
        .next_event(std::time::Instant::now() + Duration::from_secs(2))
        .unwrap();
    assert!(matches!(
        started,
        Some(cotrackpro_voice::providers::elevenlabs_stt::SttEvent::SessionStarted(_))
    ));

    let mcp = McpClient::new(
        &config.mcp.url.unwrap().to_string(),
        None,
        Duration::from_secs(5),
    );
    assert_eq!(mcp.list_tools().unwrap().len(), 4);

    let twilio = TwilioRest::new(
        &config.twilio.api_base.to_string(),
        config.twilio.account_sid.as_deref().unwrap(),
        Secret::new(vars["TWILIO_AUTH_TOKEN"].as_str()),
    );
    let call = twilio
        .create_call(&CreateCall {
            to: "+14165550123".into(),
            from: "+15551230000".into(),
            url: "https://voice.example.com/call/incoming".into(),
            status_callback: None,
            status_callback_events: vec![],
            timeout_secs: None,
            time_limit_secs: None,
            amd_callback: None,
        })
        .unwrap();
    assert!(call.sid.starts_with("CA"));
}
