//! The text-to-speech client against the simulator over a real WebSocket: the documented
//! messages (checked as golden JSON), audio as μ-law, `isFinal` after end of input, no text
//! after it, a refused key, the service's inactivity close, and abandoning mid-sentence.

use std::time::{Duration, Instant};

use serde_json::json;

use cotrackpro_voice::config::{BaseUrl, Secret};
use cotrackpro_voice::providers::elevenlabs_tts::{TtsError, TtsEvent, TtsSettings, TtsStream};
use cotrackpro_voice::providers::ws::ConnectError;
use cotrackpro_voice::sim::elevenlabs_tts::{TtsSim, TtsSimOptions};
use cotrackpro_voice::sim::voice;

const VOICE: &str = "EXAVITQu4vr4xnSDxMaL";

fn settings(sim: &TtsSim, key: &str) -> TtsSettings {
    TtsSettings {
        ws_base: BaseUrl::parse(&sim.base_url(), &["ws", "wss"]).unwrap(),
        api_key: Secret::new(key),
        model_id: "eleven_flash_v2_5".into(),
        connect_timeout: Duration::from_secs(5),
        inactivity_secs: 20,
    }
}

fn options() -> TtsSimOptions {
    TtsSimOptions {
        first_byte: Duration::from_millis(10),
        ..TtsSimOptions::default()
    }
}

/// Reads events until `Final` (at most 10 s); returns the audio.
fn drain(stream: &mut TtsStream) -> Result<Vec<u8>, TtsError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut audio = Vec::new();
    while Instant::now() < deadline {
        match stream.next_event(deadline)? {
            Some(TtsEvent::Audio(bytes)) => audio.extend(bytes),
            Some(TtsEvent::Final) => return Ok(audio),
            None => {}
        }
    }
    panic!("no isFinal within 10 s");
}

#[test]
fn sentences_become_mulaw_audio_then_final() {
    let sim = TtsSim::start(options()).unwrap();
    let key = TtsSimOptions::default().api_key;
    let mut stream = TtsStream::open(&settings(&sim, &key), VOICE).unwrap();
    stream.send_sentence("I'm here with you.").unwrap();
    stream.send_sentence("Take your time.").unwrap();
    stream.end_input().unwrap();
    let audio = drain(&mut stream).unwrap();
    let chars = "I'm here with you. Take your time. ".chars().count();
    assert_eq!(stream.chars_sent(), chars as u64);
    // The simulator speaks MS_PER_CHAR per character sent (trailing spaces included).
    let per_char = (voice::SAMPLE_RATE * voice::MS_PER_CHAR / 1000) as usize;
    assert_eq!(audio.len(), chars * per_char);
    assert!(voice::rms(&audio) > 1000.0, "the audio is audible");
    assert!(
        matches!(stream.send_sentence("More?"), Err(TtsError::Protocol(_))),
        "no text after the end"
    );

    // What went over the wire, against the documented shapes.
    let sessions = sim.sessions();
    assert_eq!(sessions.len(), 1);
    let (voice_id, messages) = &sessions[0];
    assert_eq!(voice_id, VOICE);
    assert_eq!(
        messages[0],
        json!({"text": " ", "voice_settings": {"stability": 0.5, "similarity_boost": 0.75, "style": 0.0, "use_speaker_boost": true, "speed": 1.0},
               "generation_config": {"chunk_length_schedule": [50]}})
    );
    assert_eq!(
        messages[1],
        json!({"text": "I'm here with you. ", "flush": true})
    );
    assert_eq!(
        messages[2],
        json!({"text": "Take your time. ", "flush": true})
    );
    assert_eq!(messages[3], json!({"text": ""}));
    assert!(
        messages.iter().all(|m| m.get("xi_api_key").is_none()),
        "the key goes in the header only"
    );
}

#[test]
fn the_url_asks_for_ulaw_and_the_model() {
    let sim = TtsSim::start(options()).unwrap();
    let url = TtsStream::url(&settings(&sim, "k"), VOICE);
    assert!(url.ends_with(&format!(
        "/v1/text-to-speech/{VOICE}/stream-input?model_id=eleven_flash_v2_5&output_format=ulaw_8000&inactivity_timeout=20"
    )));
}

#[test]
fn a_wrong_key_is_refused_at_the_handshake() {
    let sim = TtsSim::start(options()).unwrap();
    match TtsStream::open(&settings(&sim, "wrong-key"), VOICE) {
        Err(TtsError::Connect(ConnectError::Refused { status: 401, body })) => {
            assert!(body.contains("Invalid API key"))
        }
        other => panic!("expected a 401 refusal, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        TtsStream::open(&settings(&sim, "k"), "../../etc/passwd"),
        Err(TtsError::Protocol(_))
    ));
}

#[test]
fn an_idle_stream_is_closed_by_the_service() {
    let sim = TtsSim::start(options()).unwrap();
    let key = TtsSimOptions::default().api_key;
    let mut settings = settings(&sim, &key);
    settings.inactivity_secs = 1;
    let mut stream = TtsStream::open(&settings, VOICE).unwrap();
    let started = Instant::now();
    let result = loop {
        match stream.next_event(started + Duration::from_secs(10)) {
            Ok(None) if started.elapsed() < Duration::from_secs(10) => continue,
            other => break other,
        }
    };
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    match result {
        Err(TtsError::Service { error, message }) => {
            assert_eq!(error, "input_timeout_exceeded");
            assert!(message.contains("1 seconds"), "{message}");
        }
        other => panic!("expected input_timeout_exceeded, got {other:?}"),
    }
}

#[test]
fn abandoning_mid_sentence_closes_the_socket_at_once() {
    let sim = TtsSim::start(options()).unwrap();
    let key = TtsSimOptions::default().api_key;
    let mut stream = TtsStream::open(&settings(&sim, &key), VOICE).unwrap();
    stream
        .send_sentence(
            "This is a long sentence that the caller is going to interrupt before it ends.",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no audio arrived");
        if let Some(TtsEvent::Audio(_)) = stream.next_event(deadline).unwrap() {
            break;
        }
    }
    let started = Instant::now();
    stream.abandon();
    assert!(started.elapsed() < Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.closed_by_client() == 0 {
        assert!(
            Instant::now() < deadline,
            "the simulator never saw the close"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_tls_path_fails_cleanly_when_the_peer_is_not_tls() {
    // Exercises rustls (crypto provider, roots) without the internet: a plain TCP peer that
    // answers garbage must give an error, never a panic over provider selection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::Builder::new()
        .name("test-not-tls".into())
        .spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                use std::io::Write;
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            }
        })
        .unwrap();
    let result = cotrackpro_voice::providers::ws::connect(
        &format!(
            "wss://localhost:{}/v1/text-to-speech/x/stream-input",
            addr.port()
        ),
        &[("xi-api-key", "k")],
        Duration::from_secs(3),
    );
    assert!(
        matches!(result, Err(ConnectError::Failed(_))),
        "{:?}",
        result.map(|_| ())
    );
    peer.join().unwrap();
}

/// The official `elevenlabs` Python SDK's streaming text-to-speech
/// (`text_to_speech.convert_realtime`, 2.78.0, `stream-input`) gets audio and the final
/// message from our simulator, and ends without an error, as against the service.
#[test]
fn the_official_elevenlabs_sdk_streams_speech_from_the_simulator() {
    let sims = cotrackpro_voice::sim::Simulators::start().expect("simulators");
    let key = TtsSimOptions::default().api_key;
    let text = "Thank you for telling me. Take all the time you need.";
    let result = crate::support::run_python(
        "elevenlabs_ws_interop.py",
        &["tts"],
        &json!({
            "base_url": sims.elevenlabs.api_base_url(),
            "ws_base_url": sims.elevenlabs.ws_base_url(),
            "api_key": key,
            "voice_id": VOICE,
            "model_id": "eleven_flash_v2_5",
            "text": text,
        }),
    );
    assert_eq!(result["finished"], true, "{result}");
    assert_eq!(result["error"], serde_json::Value::Null, "{result}");
    assert_eq!(
        result["url"],
        format!(
            "{}/v1/text-to-speech/{VOICE}/stream-input?model_id=eleven_flash_v2_5&output_format=ulaw_8000",
            sims.elevenlabs.ws_base_url()
        )
    );
    assert_eq!(result["saw_final"], true, "{result}");
    let bytes = result["audio_bytes"].as_u64().expect("a count") as usize;
    // The simulated voice speaks MS_PER_CHAR per character sent; the SDK's chunker ends the
    // text with a space.
    let per_char = (voice::SAMPLE_RATE * voice::MS_PER_CHAR / 1000) as usize;
    assert_eq!(
        bytes,
        (text.chars().count() + 1) * per_char,
        "{bytes} bytes: {result}"
    );
    // What the SDK sent: its opening message (no voice settings given), then the text.
    let sessions = sims.elevenlabs.tts().sessions();
    assert_eq!(sessions.len(), 1);
    let (voice_id, messages) = &sessions[0];
    assert_eq!(voice_id, VOICE);
    assert_eq!(
        messages[0],
        json!({"text": " ", "try_trigger_generation": true, "voice_settings": null,
               "generation_config": {"chunk_length_schedule": [50]}})
    );
    assert_eq!(messages.last().unwrap(), &json!({"text": ""}));
}
