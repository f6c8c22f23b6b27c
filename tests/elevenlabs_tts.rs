//! The text-to-speech client against the simulator over a real WebSocket: one socket, a
//! context per piece (checked as golden JSON against the documented messages), audio as μ-law
//! tagged with its context, `isFinal` per context, `close_socket`; what the simulator refuses
//! as the service does (unknown fields, text for a closed context, voice settings after a
//! context's first message, a sixth context); the service's inactivity close and the
//! keep-alive that prevents it; and the official SDK's types against both sides.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use cotrackpro_voice::config::{BaseUrl, Secret};
use cotrackpro_voice::providers::elevenlabs_tts::{TtsError, TtsEvent, TtsSettings, TtsSocket};
use cotrackpro_voice::providers::ws::{self, ConnectError};
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

fn key() -> String {
    TtsSimOptions::default().api_key
}

/// Reads events until every context in `contexts` is final (at most 10 s); returns the audio
/// of each, in the order given.
fn drain(socket: &mut TtsSocket, contexts: &[&str]) -> Result<Vec<Vec<u8>>, TtsError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut audio = vec![Vec::new(); contexts.len()];
    let mut finals = 0;
    let mut events = Vec::new();
    while finals < contexts.len() {
        assert!(
            Instant::now() < deadline,
            "no isFinal for every context within 10 s"
        );
        socket.wait_events(&mut events, deadline)?;
        for event in events.drain(..) {
            match event {
                TtsEvent::Audio {
                    context,
                    audio: bytes,
                } => {
                    let i = contexts
                        .iter()
                        .position(|c| *c == context)
                        .expect("a context of ours");
                    audio[i].extend(bytes);
                }
                TtsEvent::Final { context } => {
                    assert!(contexts.contains(&context.as_str()), "{context}");
                    finals += 1;
                }
                TtsEvent::Alignment { .. } => {}
            }
        }
    }
    Ok(audio)
}

/// What the simulator says and does when it refuses `messages` (sent raw, in order): the error
/// message and the close code.
fn refusal(sim: &TtsSim, messages: &[Value]) -> (Value, Option<u16>) {
    let mut socket = ws::connect(
        &TtsSocket::url(&settings(sim, &key()), VOICE),
        &[("xi-api-key", key().as_str())],
        Duration::from_secs(5),
    )
    .expect("connect");
    ws::tcp_of(&socket)
        .unwrap()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for message in messages {
        socket
            .send(Message::text(message.to_string()))
            .expect("send");
    }
    let mut error = Value::Null;
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("json");
                if value.get("error").is_some() {
                    error = value;
                }
            }
            Ok(Message::Close(frame)) => return (error, frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(err) => panic!("no close frame: {err}; error {error}"),
        }
    }
}

#[test]
fn each_piece_is_a_context_of_its_own_on_one_socket() {
    let sim = TtsSim::start(options()).unwrap();
    let mut socket = TtsSocket::open(&settings(&sim, &key()), VOICE).unwrap();
    let first = socket.speak("1-0-1", "I'm here with you.").unwrap();
    let second = socket.speak("1-1-1", "  Take your time. ").unwrap();
    assert_eq!(first, "I'm here with you. ".chars().count() as u64);
    assert_eq!(second, "Take your time. ".chars().count() as u64);
    assert_eq!(
        socket.speak("1-2-1", "   ").unwrap(),
        0,
        "nothing to say, nothing sent"
    );
    let audio = drain(&mut socket, &["1-0-1", "1-1-1"]).unwrap();
    // The simulator speaks MS_PER_CHAR per character sent (trailing spaces included).
    let per_char = (voice::SAMPLE_RATE * voice::MS_PER_CHAR / 1000) as usize;
    assert_eq!(audio[0].len(), first as usize * per_char);
    assert_eq!(audio[1].len(), second as usize * per_char);
    assert!(voice::rms(&audio[0]) > 1000.0, "the audio is audible");
    socket.keep_alive().unwrap();
    socket.close();

    // What went over the wire, against the documented shapes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.sessions()[0].1.last() != Some(&json!({"close_socket": true})) {
        assert!(Instant::now() < deadline, "close_socket never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sessions = sim.sessions();
    assert_eq!(sessions.len(), 1, "one socket for every piece");
    let (voice_id, messages) = &sessions[0];
    assert_eq!(voice_id, VOICE);
    let opening = |context: &str| {
        json!({"text": " ", "context_id": context,
               "voice_settings": {"stability": 0.5, "similarity_boost": 0.75, "style": 0.0, "use_speaker_boost": true, "speed": 1.0},
               "generation_config": {"chunk_length_schedule": [50]}})
    };
    assert_eq!(
        messages,
        &vec![
            opening("1-0-1"),
            json!({"text": "I'm here with you. ", "context_id": "1-0-1", "flush": true}),
            json!({"context_id": "1-0-1", "close_context": true}),
            opening("1-1-1"),
            json!({"text": "Take your time. ", "context_id": "1-1-1", "flush": true}),
            json!({"context_id": "1-1-1", "close_context": true}),
            json!({"text": ""}),
            json!({"close_socket": true}),
        ]
    );
}

#[test]
fn the_url_asks_for_the_multi_context_socket_ulaw_the_model_and_alignment() {
    let sim = TtsSim::start(options()).unwrap();
    let url = TtsSocket::url(&settings(&sim, "k"), VOICE);
    assert!(url.ends_with(&format!(
        "/v1/text-to-speech/{VOICE}/multi-stream-input?model_id=eleven_flash_v2_5&output_format=ulaw_8000&inactivity_timeout=20&sync_alignment=true"
    )));
}

#[test]
fn a_wrong_key_or_model_is_refused_at_the_handshake() {
    let sim = TtsSim::start(options()).unwrap();
    match TtsSocket::open(&settings(&sim, "wrong-key"), VOICE) {
        Err(TtsError::Connect(ConnectError::Refused { status: 401, body })) => {
            assert!(body.contains("Invalid API key"))
        }
        other => panic!("expected a 401 refusal, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        TtsSocket::open(&settings(&sim, "k"), "../../etc/passwd"),
        Err(TtsError::Protocol(_))
    ));
    let mut v3 = settings(&sim, &key());
    v3.model_id = "eleven_v3".into();
    assert!(matches!(
        TtsSocket::open(&v3, VOICE),
        Err(TtsError::Connect(ConnectError::Refused { status: 400, .. }))
    ));
}

#[test]
fn the_simulator_refuses_what_the_service_refuses() {
    let sim = TtsSim::start(options()).unwrap();
    let open = |c: &str| json!({"text": " ", "context_id": c});
    let (error, code) = refusal(&sim, &[json!({"text": " ", "context_id": "a", "speed": 2})]);
    assert_eq!(error["error"], "invalid_request", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("speed"),
        "{error}"
    );
    assert_eq!(code, Some(1008));

    let (error, code) = refusal(
        &sim,
        &[
            open("a"),
            json!({"context_id": "a", "close_context": true}),
            json!({"text": "More. ", "context_id": "a", "flush": true}),
        ],
    );
    assert!(
        error["message"].as_str().unwrap().contains("closed"),
        "{error}"
    );
    assert_eq!(code, Some(1008));

    let (error, code) = refusal(
        &sim,
        &[
            open("a"),
            json!({"text": "Hi. ", "context_id": "a", "voice_settings": {"stability": 0.1, "similarity_boost": 0.1}}),
        ],
    );
    assert!(
        error["message"].as_str().unwrap().contains("first message"),
        "{error}"
    );
    assert_eq!(code, Some(1008));

    let six: Vec<Value> = (1..=6).map(|n| open(&format!("c{n}"))).collect();
    let (error, code) = refusal(&sim, &six);
    assert_eq!(error["error"], "max_active_conversations", "{error}");
    assert_eq!(code, Some(1008));
    // Five are fine, and a closed one makes room.
    let mut room: Vec<Value> = (1..=5).map(|n| open(&format!("c{n}"))).collect();
    room.push(json!({"context_id": "c1", "close_context": true}));
    room.push(open("c6"));
    room.push(json!({"close_socket": true}));
    let (error, code) = refusal(&sim, &room);
    assert_eq!(error, Value::Null, "no error: {error}");
    assert_eq!(code, Some(1000));
}

#[test]
fn closing_an_unflushed_context_ends_it_without_its_waiting_text() {
    let sim = TtsSim::start(options()).unwrap();
    let mut socket = ws::connect(
        &TtsSocket::url(&settings(&sim, &key()), VOICE),
        &[("xi-api-key", key().as_str())],
        Duration::from_secs(5),
    )
    .unwrap();
    ws::tcp_of(&socket)
        .unwrap()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for message in [
        json!({"text": " ", "context_id": "cut"}),
        json!({"text": "Short, unflushed ", "context_id": "cut"}),
        json!({"context_id": "cut", "close_context": true}),
    ] {
        socket.send(Message::text(message.to_string())).unwrap();
    }
    let Message::Text(text) = socket.read().unwrap() else {
        panic!("a text reply")
    };
    assert_eq!(
        serde_json::from_str::<Value>(text.as_str()).unwrap(),
        json!({"isFinal": true, "contextId": "cut"})
    );
}

#[test]
fn an_idle_socket_is_closed_by_the_service_and_kept_by_keep_alives() {
    let sim = TtsSim::start(options()).unwrap();
    let mut settings = settings(&sim, &key());
    settings.inactivity_secs = 1;

    let mut kept = TtsSocket::open(&settings, VOICE).unwrap();
    let mut events = Vec::new();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        kept.keep_alive().unwrap();
        kept.read_events(&mut events).expect("still open");
    }
    kept.speak("1-0-1", "Still here.").unwrap();
    assert!(!drain(&mut kept, &["1-0-1"]).unwrap()[0].is_empty());

    let mut idle = TtsSocket::open(&settings, VOICE).unwrap();
    let started = Instant::now();
    let result = loop {
        match idle.wait_events(&mut events, started + Duration::from_secs(10)) {
            Ok(()) if started.elapsed() < Duration::from_secs(10) => continue,
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

/// The official `elevenlabs` SDK (2.78.0) has no multi-context client, but it has the
/// endpoint's message types: every message our client sent reads as the request type it is,
/// and a context spoken with messages the SDK's types build gets replies that read as the
/// SDK's reply types, with their context, then `close_socket` closes the socket normally.
#[test]
fn the_official_sdk_types_agree_with_our_client_and_the_simulator() {
    let sims = cotrackpro_voice::sim::Simulators::start().expect("simulators");
    let tts = sims.elevenlabs.tts();
    let ours = TtsSettings {
        ws_base: BaseUrl::parse(&sims.elevenlabs.ws_base_url(), &["ws", "wss"]).unwrap(),
        api_key: Secret::new(key()),
        model_id: "eleven_flash_v2_5".into(),
        connect_timeout: Duration::from_secs(5),
        inactivity_secs: 20,
    };
    let mut socket = TtsSocket::open(&ours, VOICE).unwrap();
    socket.speak("1-0-1", "Hello there.").unwrap();
    drain(&mut socket, &["1-0-1"]).unwrap();
    socket.keep_alive().unwrap();
    socket.close();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tts.sessions()[0].1.last() != Some(&json!({"close_socket": true})) {
        assert!(Instant::now() < deadline, "close_socket never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let client_messages = tts.sessions()[0].1.clone();
    let text = "Thank you for telling me.";
    let result = crate::support::run_python(
        "elevenlabs_ws_interop.py",
        &["multi"],
        &json!({
            "ws_base_url": sims.elevenlabs.ws_base_url(),
            "api_key": key(),
            "voice_id": VOICE,
            "model_id": "eleven_flash_v2_5",
            "text": text,
            "client_messages": client_messages,
        }),
    );
    assert_eq!(result["refused"], json!([]), "{result}");
    let replies = result["replies"].as_array().expect("replies");
    assert!(replies.len() >= 2, "{result}");
    assert!(replies.iter().all(|r| r["context"] == "sdk-1"), "{result}");
    assert_eq!(replies.last().unwrap()["kind"], "final", "{result}");
    let per_char = (voice::SAMPLE_RATE * voice::MS_PER_CHAR / 1000) as u64;
    assert_eq!(
        result["audio_bytes"].as_u64(),
        Some((text.chars().count() as u64 + 1) * per_char),
        "{result}"
    );
    assert_eq!(result["close_code"], 1000, "{result}");
    // Asked for alignment, the chunks align the text as the SDK's `Alignment` reads it.
    assert_eq!(result["aligned"], json!(format!("{text} ")), "{result}");
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
            "wss://localhost:{}/v1/text-to-speech/x/multi-stream-input",
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
