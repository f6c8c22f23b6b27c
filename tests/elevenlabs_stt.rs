//! The speech-to-text client against the simulator over a real WebSocket: configuration by URL
//! only, Twilio's payloads forwarded as they are, partials while the caller speaks and a commit
//! after the silence, errors of every kind, unknown types, the silent-session warning, and
//! bounded reconnects.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use cotrackpro_voice::config::{BaseUrl, Secret};
use cotrackpro_voice::providers::elevenlabs_stt::{SttError, SttEvent, SttSettings, SttStream};
use cotrackpro_voice::providers::ws::ConnectError;
use cotrackpro_voice::sim::elevenlabs_stt::{Fault, SttSim, SttSimOptions};
use cotrackpro_voice::sim::voice;

fn settings(base: &str, key: &str) -> SttSettings {
    SttSettings {
        ws_base: BaseUrl::parse(base, &["ws", "wss"]).unwrap(),
        api_key: Secret::new(key),
        model_id: "scribe_v2_realtime".into(),
        language_code: "en".into(),
        vad_silence_secs: 0.5,
        connect_timeout: Duration::from_secs(5),
        silent_service_limit: Duration::from_secs(20),
        chunk: Duration::from_millis(20),
        commit: cotrackpro_voice::providers::elevenlabs_stt::CommitStrategy::Vad,
    }
}

fn key() -> String {
    SttSimOptions::default().api_key
}

/// 20 ms Twilio frames (160 bytes of μ-law) of speech for `text`, then `silence_ms`.
fn frames(text: &str, silence_ms: usize) -> Vec<Vec<u8>> {
    let mut audio = voice::speak(text, 150.0);
    audio.extend(std::iter::repeat_n(voice::ULAW_SILENCE, silence_ms * 8));
    audio.chunks(160).map(<[u8]>::to_vec).collect()
}

/// Sends one frame; if the socket did not take it all, waits until it did.
fn send(stream: &mut SttStream, frame: &[u8]) -> Result<(), SttError> {
    stream.send_audio(frame)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while stream.wants_write() && Instant::now() < deadline {
        stream.next_event(Instant::now() + Duration::from_millis(10))?;
    }
    Ok(())
}

/// Sends every frame (reading what has arrived after each), then reads events until a commit
/// (or 5 s).
fn speak(stream: &mut SttStream, frames: &[Vec<u8>]) -> Vec<SttEvent> {
    let mut events = Vec::new();
    for frame in frames {
        send(stream, frame).unwrap();
        while let Some(event) = stream.try_next_event().unwrap() {
            events.push(event);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !events.iter().any(|e| matches!(e, SttEvent::Committed(_))) {
        match stream.next_event(deadline).unwrap() {
            Some(event) => events.push(event),
            None => break,
        }
    }
    events
}

#[test]
fn speech_gives_partials_then_one_committed_transcript() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    let said = "I need to document what happened at the exchange on Friday";
    sim.push_utterances([said.to_string()]);
    let mut stream = SttStream::open(&settings(&sim.base_url(), &key())).unwrap();
    let audio = frames("I need to document what happened", 700);
    let events = speak(&mut stream, &audio);
    assert!(matches!(events.first(), Some(SttEvent::SessionStarted(id)) if id == "sim-stt-0"));
    let partials: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            SttEvent::Partial(t) => Some(t),
            _ => None,
        })
        .collect();
    assert!(partials.len() >= 2, "{events:?}");
    assert!(
        partials.windows(2).all(|w| w[1].len() >= w[0].len()),
        "partials grow: {partials:?}"
    );
    assert_eq!(events.last(), Some(&SttEvent::Committed(said.to_string())));

    let summary = stream.close();
    assert_eq!(summary.committed, 1);
    assert!(
        (summary.audio_secs - audio.len() as f64 * 0.02).abs() < 0.02,
        "{summary:?}"
    );
    assert!(!summary.looks_silent());

    // What went over the wire: the documented chunk message, the audio in base64. (The frames
    // go out without pause, so the simulator may still be reading the last ones.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.received(0).len() < audio.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let received = sim.received(0);
    assert_eq!(received.len(), audio.len());
    assert_eq!(
        received[0],
        json!({"message_type": "input_audio_chunk",
               "audio_base_64": base64::engine::general_purpose::STANDARD.encode(&audio[0]),
               "commit": false, "sample_rate": 8000})
    );
}

#[test]
fn the_session_is_configured_by_the_url_only() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    let url = SttStream::url(&settings(&sim.base_url(), "k"));
    assert!(url.ends_with(
        "/v1/speech-to-text/realtime?model_id=scribe_v2_realtime&audio_format=ulaw_8000&language_code=en&commit_strategy=vad&vad_silence_threshold_secs=0.5"
    ));
    // The original's bug, against the simulator: a session_config message is an input_error.
    let (mut raw, _) = tungstenite::client::client_with_config(
        tungstenite::client::IntoClientRequest::into_client_request(url.as_str())
            .map(|mut r| {
                r.headers_mut().insert("xi-api-key", key().parse().unwrap());
                r
            })
            .unwrap(),
        std::net::TcpStream::connect(sim.base_url().trim_start_matches("ws://")).unwrap(),
        None,
    )
    .unwrap();
    let _started = raw.read().unwrap();
    raw.send(tungstenite::Message::text(
        r#"{"message_type":"session_config","audio_format":"ulaw_8000"}"#,
    ))
    .unwrap();
    let answer: serde_json::Value =
        serde_json::from_str(raw.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(answer["message_type"], "input_error");
    assert_eq!(answer["error"], "Unexpected message type: session_config");
}

#[test]
fn every_error_type_is_an_error() {
    for kind in [
        "quota_exceeded",
        "session_time_limit_exceeded",
        "transcriber_error",
        "some_new_error",
    ] {
        let sim = SttSim::start(SttSimOptions::default()).unwrap();
        sim.push_fault(Fault::Error {
            message_type: kind.into(),
            after_chunks: 3,
        });
        let mut stream = SttStream::open(&settings(&sim.base_url(), &key())).unwrap();
        let silence = frames("", 200);
        let mut result = Ok(None);
        for frame in &silence {
            if send(&mut stream, frame).is_err() {
                break;
            }
            result = stream.try_next_event();
            if result.is_err() {
                break;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while result.is_ok() && Instant::now() < deadline {
            result = stream.next_event(deadline);
        }
        match result {
            Err(SttError::Service { kind: got, message }) => {
                assert_eq!(got, kind);
                assert!(message.contains("simulated"), "{message}");
            }
            other => panic!("{kind}: expected a service error, got {other:?}"),
        }
    }
}

#[test]
fn a_wrong_key_or_format_is_refused_and_not_retried_forever() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    let sleep = |pause| {
        std::thread::sleep(pause);
        true
    };
    let started = Instant::now();
    match SttStream::open_retrying(
        &settings(&sim.base_url(), "nope"),
        3,
        Duration::from_millis(200),
        sleep,
    ) {
        Err(SttError::Connect(ConnectError::Refused { status: 401, .. })) => {}
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "a refused key is not retried"
    );
    assert_eq!(sim.sessions(), 0);

    // Nothing listening: three attempts with a doubling pause, then the error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let started = Instant::now();
    let result = SttStream::open_retrying(
        &settings(&base, &key()),
        3,
        Duration::from_millis(100),
        sleep,
    );
    assert!(matches!(
        result,
        Err(SttError::Connect(ConnectError::Failed(_)))
    ));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn a_dropped_connection_is_reported_and_a_new_session_can_follow() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    sim.push_fault(Fault::Drop { after_chunks: 5 });
    let mut stream = SttStream::open(&settings(&sim.base_url(), &key())).unwrap();
    let mut failed = None;
    for frame in frames("", 2000) {
        if let Err(err) = send(&mut stream, &frame).and_then(|()| {
            stream
                .next_event(Instant::now() + Duration::from_millis(10))
                .map(|_| ())
        }) {
            failed = Some(err);
            break;
        }
    }
    assert!(matches!(failed, Some(SttError::Closed(_))), "{failed:?}");
    sim.push_utterances(["Are you still there?".to_string()]);
    let mut again = SttStream::open(&settings(&sim.base_url(), &key())).unwrap();
    let events = speak(&mut again, &frames("still there", 700));
    assert_eq!(
        events.last(),
        Some(&SttEvent::Committed("Are you still there?".into()))
    );
    assert_eq!(sim.sessions(), 2);
}

#[test]
fn a_long_silent_session_is_flagged() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    let mut stream = SttStream::open(&settings(&sim.base_url(), &key())).unwrap();
    for frame in frames("", 11_000) {
        send(&mut stream, &frame).unwrap();
    }
    let summary = stream.close();
    assert!(summary.audio_secs >= 11.0);
    assert_eq!(summary.committed, 0);
    assert!(summary.looks_silent());
}

#[test]
fn unknown_message_types_are_recorded_once_and_ignored() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    sim.push_fault(Fault::UnknownType("committed_transcript_entities".into()));
    sim.push_utterances(["Thank you".to_string()]);
    let mut stream = SttStream::open(&settings(&sim.base_url(), &key())).unwrap();
    let events = speak(&mut stream, &frames("thank you", 700));
    assert_eq!(
        events.last(),
        Some(&SttEvent::Committed("Thank you".into()))
    );
    let summary = stream.close();
    assert_eq!(
        summary.unknown_types,
        vec!["committed_transcript_entities".to_string()]
    );
}

/// The official `elevenlabs` Python SDK (`client.speech_to_text.realtime`, 2.78.0) transcribes
/// from our simulator as from the service: configured as our server configures it (μ-law at
/// 8000 Hz, VAD commits), it gets `session_started`, partials that grow while the caller
/// speaks, and one `committed_transcript` with the scripted words after the silence; a wrong
/// key is refused at the handshake.
#[test]
fn the_official_elevenlabs_sdk_transcribes_from_the_simulator() {
    let sims = cotrackpro_voice::sim::Simulators::start().expect("simulators");
    let said = "I think my son is being bullied at school";
    sims.elevenlabs.stt().push_utterances([said.to_string()]);
    // Twilio-sized frames: about three seconds of speech, then a second of quiet.
    let chunks: Vec<String> = frames(said, 1000)
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
        .collect();
    let result = crate::support::run_python(
        "elevenlabs_ws_interop.py",
        &["stt"],
        &json!({
            "base_url": sims.elevenlabs.api_base_url(),
            "api_key": key(),
            "model_id": "scribe_v2_realtime",
            "language_code": "en",
            "vad_silence_threshold_secs": 0.5,
            "chunks": chunks,
            "wait_for_commits": 1,
        }),
    );
    let url = result["url"].as_str().expect("the URL the SDK opened");
    assert!(
        url.starts_with(&format!(
            "{}/v1/speech-to-text/realtime?model_id=scribe_v2_realtime&audio_format=ulaw_8000&commit_strategy=vad",
            sims.elevenlabs.ws_base_url()
        )),
        "{url}"
    );
    assert!(
        result["headers"]
            .as_array()
            .unwrap()
            .contains(&json!("xi-api-key")),
        "{result}"
    );
    let events = result["events"].as_array().expect("events");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"session_started"), "{result}");
    assert!(!kinds.contains(&"error"), "{result}");
    // The SDK's close (1000) is answered: the closing handshake completes.
    assert_eq!(result["close"]["code"], 1000, "{result}");
    let committed: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "committed_transcript")
        .map(|e| e["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(committed, [said], "{result}");
    let partials: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "partial_transcript")
        .map(|e| e["data"]["text"].as_str().unwrap())
        .collect();
    assert!(!partials.is_empty(), "{result}");
    assert!(
        partials.iter().all(|p| said.starts_with(p)),
        "partials are prefixes of the utterance: {partials:?}"
    );
    // The SDK asked for no timestamps (include_timestamps=false), so got no twin.
    assert!(url.contains("include_timestamps=false"), "{url}");
    assert!(!kinds.contains(&"committed_transcript_with_timestamps"));
    // Every chunk arrived as the SDK frames it.
    let received = sims.elevenlabs.stt().received(0);
    assert_eq!(received.len(), chunks.len());
    assert_eq!(
        received[0],
        json!({"message_type": "input_audio_chunk", "audio_base_64": chunks[0],
               "commit": false, "sample_rate": 8000, "previous_text": null})
    );
    assert_eq!(result["wrong_key_status"], 401, "{result}");
}
