//! What the simulators send, against `tests/golden/simulator_shapes.json`: the providers'
//! documented message shapes, key by key and type by type. A simulator that drifted from the
//! real protocol would fail here even if a client had drifted the same way.

use std::io::BufReader;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::Message;

use cotrackpro_voice::providers::sse::SseReader;
use cotrackpro_voice::sim::anthropic::{AnthropicSim, Reply, Timing};
use cotrackpro_voice::sim::elevenlabs::ElevenLabsSim;
use cotrackpro_voice::sim::elevenlabs_stt::{Fault, SttSimOptions};
use cotrackpro_voice::sim::elevenlabs_tts::TtsSimOptions;
use cotrackpro_voice::sim::mcp::{Framing, McpSim};
use cotrackpro_voice::sim::twilio::TwilioSim;
use cotrackpro_voice::sim::voice;

fn golden() -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/simulator_shapes.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Whether `actual` has `shape`: the same keys, values of the named JSON types. An empty
/// object or array in the shape accepts any object or array.
fn conforms(shape: &Value, actual: &Value, at: &str) -> Result<(), String> {
    match (shape, actual) {
        (Value::String(kind), _) => {
            let ok = match kind.as_str() {
                "string" => actual.is_string(),
                "number" => actual.is_number(),
                "bool" => actual.is_boolean(),
                "null" => actual.is_null(),
                other => return Err(format!("{at}: unknown type {other} in the golden file")),
            };
            ok.then_some(())
                .ok_or_else(|| format!("{at}: expected {kind}, got {actual}"))
        }
        (Value::Object(expected), Value::Object(got)) => {
            if expected.is_empty() {
                return Ok(());
            }
            let mut want: Vec<&String> = expected.keys().collect();
            let mut have: Vec<&String> = got.keys().collect();
            want.sort();
            have.sort();
            if want != have {
                return Err(format!("{at}: keys {have:?}, documented {want:?}"));
            }
            for (key, inner) in expected {
                conforms(inner, &got[key], &format!("{at}.{key}"))?;
            }
            Ok(())
        }
        (Value::Array(expected), Value::Array(got)) => match expected.first() {
            None => Ok(()),
            Some(item) => got
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| conforms(item, v, &format!("{at}[{i}]"))),
        },
        _ => Err(format!("{at}: expected {shape}, got {actual}")),
    }
}

#[track_caller]
fn check(name: &str, actual: &Value) {
    let golden = golden();
    let shape = golden
        .get(name)
        .unwrap_or_else(|| panic!("no golden shape {name}"));
    if let Err(problem) = conforms(shape, actual, name) {
        panic!("the simulator's {name} differs from the documented shape:\n{problem}\nmessage: {actual}");
    }
}

fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.post(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.send(body.to_string().as_bytes()).unwrap();
    (
        response.status().as_u16(),
        response.body_mut().read_to_string().unwrap(),
    )
}

#[test]
fn anthropic_events_have_the_documented_shapes() {
    let sim = AnthropicSim::start(Timing {
        first_token: Duration::ZERO,
        per_token: Duration::ZERO,
    })
    .unwrap();
    sim.push([
        Reply::ToolUse {
            preface: "Checking.".into(),
            name: "check_safety".into(),
            input: json!({"context": "x"}),
        },
        Reply::OverloadedMidStream { text: "I".into() },
    ]);
    let body = json!({"model": "m", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let response = agent
            .post(&format!("{}/v1/messages", sim.base_url()))
            .header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
            .send(body.to_string().as_bytes())
            .unwrap();
        let mut events =
            SseReader::new(BufReader::new(response.into_body().into_reader()), 1 << 20);
        while let Some(event) = events.next_event().unwrap() {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(
                data["type"],
                json!(event.event),
                "the SSE event name repeats the type"
            );
            let name = match event.event.as_str() {
                "content_block_start" => format!(
                    "anthropic.content_block_start.{}",
                    data["content_block"]["type"].as_str().unwrap()
                ),
                "content_block_delta" => format!(
                    "anthropic.content_block_delta.{}",
                    data["delta"]["type"].as_str().unwrap()
                ),
                other => format!("anthropic.{other}"),
            };
            check(&name, &data);
            seen.insert(name);
        }
    }
    assert_eq!(
        seen.len(),
        10,
        "every documented event was produced: {seen:?}"
    );
}

#[test]
fn elevenlabs_messages_have_the_documented_shapes() {
    let sim = ElevenLabsSim::start(
        TtsSimOptions {
            first_byte: Duration::ZERO,
            ..TtsSimOptions::default()
        },
        SttSimOptions {
            commit_latency: Duration::ZERO,
            ..SttSimOptions::default()
        },
    )
    .unwrap();
    let key = TtsSimOptions::default().api_key;
    let open = |path: &str| {
        let url = format!("{}{path}", sim.ws_base_url());
        let mut request =
            tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
        request
            .headers_mut()
            .insert("xi-api-key", key.parse().unwrap());
        let tcp =
            std::net::TcpStream::connect(sim.ws_base_url().trim_start_matches("ws://")).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tungstenite::client::client_with_config(request, tcp, None)
            .unwrap()
            .0
    };
    let read_json = |socket: &mut tungstenite::WebSocket<std::net::TcpStream>| -> Value {
        serde_json::from_str(socket.read().unwrap().to_text().unwrap()).unwrap()
    };

    let mut tts = open("/v1/text-to-speech/EXAVITQu4vr4xnSDxMaL/stream-input?model_id=eleven_flash_v2_5&output_format=ulaw_8000");
    for text in [
        json!({"text": " ", "voice_settings": {"stability": 0.5}}),
        json!({"text": "Hello. ", "flush": true}),
        json!({"text": ""}),
    ] {
        tts.send(Message::text(text.to_string())).unwrap();
    }
    let audio = read_json(&mut tts);
    check("elevenlabs.tts.audio", &audio);
    let mut last = audio;
    while last.get("audio").is_some() {
        last = read_json(&mut tts);
    }
    check("elevenlabs.tts.final", &last);
    assert_eq!(last["isFinal"], true);

    let mut idle = open("/v1/text-to-speech/EXAVITQu4vr4xnSDxMaL/stream-input?output_format=ulaw_8000&inactivity_timeout=1");
    idle.send(Message::text(
        json!({"text": " ", "voice_settings": {}}).to_string(),
    ))
    .unwrap();
    check("elevenlabs.tts.error", &read_json(&mut idle));

    sim.stt().push_utterances(["Hello there".to_string()]);
    let mut stt = open("/v1/speech-to-text/realtime?model_id=scribe_v2_realtime&audio_format=ulaw_8000&commit_strategy=vad&vad_silence_threshold_secs=0.5");
    check("elevenlabs.stt.session_started", &read_json(&mut stt));
    let mut audio = voice::speak("hello there", 150.0);
    audio.extend(std::iter::repeat_n(voice::ULAW_SILENCE, 8 * 700));
    for chunk in audio.chunks(160) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
        stt.send(Message::text(json!({"message_type": "input_audio_chunk", "audio_base_64": b64, "commit": false, "sample_rate": 8000}).to_string())).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut kinds = std::collections::BTreeSet::new();
    while !kinds.contains("committed_transcript") && Instant::now() < deadline {
        let message = read_json(&mut stt);
        let kind = message["message_type"].as_str().unwrap().to_string();
        check(&format!("elevenlabs.stt.{kind}"), &message);
        kinds.insert(kind);
    }
    assert!(
        kinds.contains("partial_transcript") && kinds.contains("committed_transcript"),
        "{kinds:?}"
    );

    sim.stt().push_fault(Fault::Error {
        message_type: "quota_exceeded".into(),
        after_chunks: 1,
    });
    let mut failing =
        open("/v1/speech-to-text/realtime?audio_format=ulaw_8000&commit_strategy=vad");
    let _started = read_json(&mut failing);
    failing.send(Message::text(json!({"message_type": "input_audio_chunk", "audio_base_64": "/w==", "commit": false, "sample_rate": 8000}).to_string())).unwrap();
    check("elevenlabs.stt.error", &read_json(&mut failing));
}

#[test]
fn mcp_answers_have_the_documented_shapes() {
    let sim = McpSim::start(Framing::Json).unwrap();
    let accept = ("Accept", "application/json, text/event-stream");
    let (status, text) = post_json(
        &sim.url(),
        &[accept],
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    );
    assert_eq!(status, 200);
    check("mcp.initialize", &serde_json::from_str(&text).unwrap());
    let session = "sim-session-1";
    let headers = [
        accept,
        ("Mcp-Session-Id", session),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let (_, text) = post_json(
        &sim.url(),
        &headers,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    );
    check("mcp.tools/list", &serde_json::from_str(&text).unwrap());
    let (_, text) = post_json(
        &sim.url(),
        &headers,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "check_safety", "arguments": {"sessionId": "s", "context": "x"}}}),
    );
    check("mcp.tools/call", &serde_json::from_str(&text).unwrap());
}

#[test]
fn twilio_answers_have_the_documented_shapes() {
    let sid = "AC0123456789abcdef0123456789abcdef";
    let sim = TwilioSim::start(sid, "token").unwrap();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{sid}:token"))
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/2010-04-01/Accounts/{sid}/Calls.json", sim.base_url());
    let mut ok = agent
        .post(&url)
        .header("Authorization", &auth)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send("To=%2B14165550123&From=%2B15551230000&Url=https%3A%2F%2Fx.example%2F".as_bytes())
        .unwrap();
    assert_eq!(ok.status().as_u16(), 201);
    check(
        "twilio.call",
        &serde_json::from_str(&ok.body_mut().read_to_string().unwrap()).unwrap(),
    );
    let mut bad = agent
        .post(&url)
        .header("Authorization", &auth)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send("To=nope&From=%2B15551230000&Url=x".as_bytes())
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    check(
        "twilio.error",
        &serde_json::from_str(&bad.body_mut().read_to_string().unwrap()).unwrap(),
    );
}

#[test]
fn the_simulated_caller_speaks_twilio_media_streams() {
    use cotrackpro_voice::sim::caller::{CallerOptions, SimCaller};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::Builder::new()
        .name("golden-twilio".into())
        .spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut socket = tungstenite::accept(stream).unwrap();
            let mut seen: Vec<Value> = Vec::new();
            let mut sent_mark = false;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let Ok(message) = socket.read() else { break };
                let Message::Text(text) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                if value["event"] == "media" && !sent_mark {
                    sent_mark = true;
                    let sid = value["streamSid"].clone();
                    socket
                        .send(Message::text(
                            json!({"event": "mark", "streamSid": sid, "mark": {"name": "m-1"}})
                                .to_string(),
                        ))
                        .unwrap();
                }
                let stop = value["event"] == "stop";
                seen.push(value);
                if stop {
                    break;
                }
            }
            seen
        })
        .unwrap();
    let caller = SimCaller::connect(addr, CallerOptions::default()).unwrap();
    assert!(
        caller.wait_for_echoes(1, Duration::from_secs(5)),
        "the mark was echoed"
    );
    caller.press('7');
    std::thread::sleep(Duration::from_millis(100));
    caller.hang_up();
    let seen = server.join().unwrap();
    let mut checked = std::collections::BTreeSet::new();
    for message in &seen {
        let event = message["event"].as_str().unwrap_or("?");
        check(&format!("twilio.stream.{event}"), message);
        checked.insert(event.to_string());
    }
    assert_eq!(
        checked.into_iter().collect::<Vec<_>>(),
        ["connected", "dtmf", "mark", "media", "start", "stop"]
    );
}
