//! A simulated ElevenLabs text-to-speech WebSocket, both endpoints:
//! - `multi-stream-input`, what the server uses (one socket per call, a context per piece): it
//!   holds contexts by `context_id`, speaks a context's flushed text — or text past the
//!   50-character schedule — after a configurable time to first byte, with `contextId` on every
//!   reply, and sends `{"isFinal":true,"contextId":…}` when a context is closed. It refuses what
//!   the service refuses, with the service's error message and close code 1008: an unknown
//!   field, text for a closed context, voice settings after a context's first message, a sixth
//!   open context (`max_active_conversations`). `close_socket` ends the socket (1000).
//! - `stream-input`, one stream per socket, for the official SDK's `convert_realtime`: the
//!   opening message, text, then `{"text":""}` answered by `isFinal` and a close.
//!
//! Both check the handshake (path, `output_format=ulaw_8000`, the `xi-api-key` header, a
//! `sync_alignment` that is a boolean), and
//! close a socket that hears nothing for the inactivity timeout the way the service does
//! (`input_timeout_exceeded`, close code 1008). Every message received is kept for tests.
//!
//! Asked for `sync_alignment=true`, every audio message carries an `alignment`: the characters
//! whose sound starts in that chunk, each with its start within the chunk and its length, as
//! the simulated voice says them ([`voice::MS_PER_CHAR`] each). Otherwise `alignment` is null,
//! as the service sends it.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::Message;

use super::hops::{key_of, Hop, HopClock};
use super::http::{Responder, SimRequest};
use super::listener::{ConnectionServer, SimStream, WsSimCore};
use super::voice;

/// Audio bytes per message sent (a quarter second).
const AUDIO_CHUNK: usize = 2000;
const TICK: Duration = Duration::from_millis(20);
/// Contexts one multi-context socket may hold (the service's documented limit).
const MAX_CONTEXTS: usize = 5;
/// Fields a multi-context message may carry (the AsyncAPI's `WebsocketTTSClientMessageMulti`
/// and the messages it lists).
const MULTI_FIELDS: [&str; 10] = [
    "text",
    "context_id",
    "voice_settings",
    "generation_config",
    "pronunciation_dictionary_locators",
    "flush",
    "close_context",
    "close_socket",
    "xi_api_key",
    "authorization",
];

#[derive(Clone, Debug)]
pub struct TtsSimOptions {
    pub api_key: String,
    pub first_byte: Duration,
    /// Used when the URL does not set `inactivity_timeout` (the service's default, 20 s).
    pub inactivity: Duration,
}

impl Default for TtsSimOptions {
    fn default() -> TtsSimOptions {
        TtsSimOptions {
            api_key: "sim-elevenlabs-key".into(),
            // Flash v2.5's published time to first byte is about 75 ms.
            first_byte: Duration::from_millis(75),
            inactivity: Duration::from_secs(20),
        }
    }
}

#[derive(Default)]
struct State {
    /// Per connection: the voice and every text message received.
    sessions: Vec<(String, Vec<Value>)>,
    closed_by_client: usize,
    /// Pieces still to fail (an error message in answer to their text, and the socket
    /// closed). On `stream-input` a session is one piece.
    failing: u32,
    /// Pieces still to answer with no audio at all (`isFinal` alone).
    mute: u32,
    /// Where text arrivals and first audio are timed (`sentence_to_tts`, `tts_to_twilio`).
    hops: Option<Arc<HopClock>>,
    /// Mark each piece's first bytes with its number, so no two pieces start alike.
    tag_audio: bool,
    pieces: u64,
}

pub struct TtsSim {
    core: WsSimCore<State>,
}

impl TtsSim {
    /// A TTS simulator on its own port.
    pub fn start(options: TtsSimOptions) -> io::Result<TtsSim> {
        let (sim, server) = TtsSim::detached(options);
        Ok(TtsSim {
            core: sim.core.listen("sim-tts", server)?,
        })
    }

    /// The simulator without a listener, and what serves a connection for it.
    pub fn detached(options: TtsSimOptions) -> (TtsSim, ConnectionServer) {
        let (core, server) =
            WsSimCore::detached(move |stream, state| serve(stream, &options, state));
        (TtsSim { core }, server)
    }

    /// The base URL to set as `ELEVENLABS_WS_BASE` (empty when detached).
    pub fn base_url(&self) -> String {
        self.core.base_url()
    }

    /// Per connection: the voice id and the messages received.
    pub fn sessions(&self) -> Vec<(String, Vec<Value>)> {
        self.core.lock().sessions.clone()
    }

    /// Makes the next `n` pieces fail: their text is answered with an error message and the
    /// socket closed, as the service does when it cannot generate.
    pub fn fail_next(&self, n: u32) {
        self.core.lock().failing += n;
    }

    /// Makes the next `n` pieces speak nothing: their text is taken and the piece ends with
    /// `isFinal` and not a byte of audio.
    pub fn mute_next(&self, n: u32) {
        self.core.lock().mute += n;
    }

    /// Times texts received and first audio sent on `clock` (see [`super::hops`]).
    pub fn record_hops(&self, clock: Arc<HopClock>) {
        self.core.lock().hops = Some(clock);
    }

    /// Writes each piece's number into its first 8 samples, at the quietest μ-law levels
    /// (inaudible), so no two pieces start with the same bytes: the bench matches audio
    /// frames by their bytes (`super::hops`).
    pub fn tag_audio(&self, on: bool) {
        self.core.lock().tag_audio = on;
    }

    /// Connections accepted so far (each a session in [`TtsSim::sessions`]), without copying
    /// their messages.
    pub fn session_count(&self) -> usize {
        self.core.lock().sessions.len()
    }

    /// Connections the client closed before the end of its input.
    pub fn closed_by_client(&self) -> usize {
        self.core.lock().closed_by_client
    }
}

/// The voice's pitch: each voice id sounds different, and always the same.
fn pitch_of(voice_id: &str) -> f32 {
    120.0 + (voice_id.bytes().map(u32::from).sum::<u32>() % 80) as f32
}

/// REST text-to-speech, `POST /v1/text-to-speech/{voice_id}?output_format=ulaw_8000` with JSON
/// `{text, model_id, voice_settings}`: the whole phrase as raw μ-law (what `generate-audio`
/// stores). Like the service, it wants `xi-api-key` and takes the format from the query string.
pub fn rest(req: &SimRequest, res: &mut Responder, api_key: &str) -> io::Result<()> {
    let json = [("Content-Type", "application/json")];
    let error = |status: &str, message: &str| {
        json!({"detail": {"status": status, "message": message}}).to_string()
    };
    let voice = req
        .path()
        .strip_prefix("/v1/text-to-speech/")
        .filter(|v| !v.is_empty() && !v.contains('/'));
    let Some(voice) = voice else {
        return res.send(404, &json, error("not_found", "Not found").as_bytes());
    };
    if req.header("xi-api-key") != Some(api_key) {
        return res.send(
            401,
            &json,
            error("invalid_api_key", "Invalid API key").as_bytes(),
        );
    }
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    if query_value(query, "output_format") != Some("ulaw_8000") {
        return res.send(
            422,
            &json,
            error(
                "invalid_output_format",
                "this simulator renders output_format=ulaw_8000 only",
            )
            .as_bytes(),
        );
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let Some(text) = body["text"].as_str().filter(|t| !t.trim().is_empty()) else {
        return res.send(
            422,
            &json,
            error("invalid_text", "text is required").as_bytes(),
        );
    };
    let audio = voice::speak(text, pitch_of(voice));
    // The service declares a content type that is not reliable for ulaw; callers ignore it.
    res.send(200, &[("Content-Type", "audio/basic")], &audio)
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn refuse(status: u16, message: &str) -> ErrorResponse {
    let mut response =
        ErrorResponse::new(Some(json!({"detail": {"message": message}}).to_string()));
    *response.status_mut() = tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tungstenite::http::StatusCode::BAD_REQUEST);
    response
}

fn serve(stream: SimStream, options: &TtsSimOptions, state: &Mutex<State>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    let mut voice_id = String::new();
    let mut inactivity = options.inactivity;
    let mut multi = false;
    let mut align = false;
    // The signature is tungstenite's handshake Callback; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let path = request.uri().path();
        let rest = path
            .strip_prefix("/v1/text-to-speech/")
            .ok_or_else(|| refuse(404, "not found"))?;
        let voice = if let Some(voice) = rest.strip_suffix("/multi-stream-input") {
            multi = true;
            voice
        } else {
            rest.strip_suffix("/stream-input")
                .ok_or_else(|| refuse(404, "not found"))?
        };
        if voice.is_empty() || voice.contains('/') {
            return Err(refuse(404, "not found"));
        }
        let query = request.uri().query().unwrap_or("");
        if multi && query_value(query, "model_id") == Some("eleven_v3") {
            return Err(refuse(
                400,
                "multi-context websockets are not available for eleven_v3",
            ));
        }
        if query_value(query, "output_format") != Some("ulaw_8000") {
            return Err(refuse(
                400,
                "this simulator speaks output_format=ulaw_8000 only",
            ));
        }
        let key = request
            .headers()
            .get("xi-api-key")
            .and_then(|v| v.to_str().ok());
        if key != Some(options.api_key.as_str()) {
            return Err(refuse(401, "Invalid API key"));
        }
        if let Some(value) = query_value(query, "sync_alignment") {
            // Query booleans as a typical validator reads them (these spellings, any case);
            // anything else is refused. The service documents only true and false.
            align = match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => return Err(refuse(422, "sync_alignment must be a boolean")),
            };
        }
        voice_id = voice.to_string();
        if let Some(secs) = query_value(query, "inactivity_timeout") {
            match secs.parse::<u64>() {
                Ok(secs @ 1..=180) => inactivity = Duration::from_secs(secs),
                _ => {
                    return Err(refuse(
                        400,
                        "inactivity_timeout must be a whole number of seconds from 1 to 180",
                    ))
                }
            }
        }
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let mut socket = tungstenite::accept_hdr_with_config(stream, check, Some(config))
        .map_err(|e| io::Error::other(e.to_string()))?;
    if multi {
        return serve_multi(socket, options, state, &voice_id, inactivity, align);
    }
    socket.get_ref().set_read_timeout(Some(TICK))?;
    let hops = lock(state).hops.clone();
    let (session, failing, mute) = {
        let mut state = lock(state);
        state.sessions.push((voice_id.clone(), Vec::new()));
        let failing = state.failing > 0;
        state.failing = state.failing.saturating_sub(1);
        let mute = !failing && state.mute > 0;
        if mute {
            state.mute -= 1;
        }
        (state.sessions.len() - 1, failing, mute)
    };
    let voice = Voice {
        pitch: pitch_of(&voice_id),
        first_byte: options.first_byte,
        hops: hops.as_deref(),
        align,
    };
    let speak = |socket: &mut tungstenite::WebSocket<SimStream>, text: &str| {
        if mute {
            Ok(())
        } else {
            let tag = {
                let mut state = lock(state);
                state.pieces += 1;
                state.tag_audio.then_some(state.pieces)
            };
            speak(socket, text, &voice, tag, None)
        }
    };
    let mut buffered = String::new();
    let mut opened = false;
    let mut last_text = Instant::now();
    let send = |socket: &mut tungstenite::WebSocket<SimStream>, value: Value| {
        socket
            .send(Message::text(value.to_string()))
            .map_err(|e| io::Error::other(e.to_string()))
    };
    loop {
        let message = match socket.read() {
            Ok(message) => message,
            Err(err) if crate::providers::ws::is_timeout(&err) => {
                if last_text.elapsed() >= inactivity {
                    let seconds = inactivity.as_secs();
                    send(
                        &mut socket,
                        json!({
                            "message": format!("Have not received new text in {seconds} seconds. Closing the socket."),
                            "error": "input_timeout_exceeded",
                            "code": 1008,
                        }),
                    )?;
                    let _ = socket.close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "input_timeout_exceeded".into(),
                    }));
                    let _ = socket.flush();
                    return Ok(());
                }
                continue;
            }
            Err(_) => {
                lock(state).closed_by_client += 1;
                return Ok(());
            }
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => {
                lock(state).closed_by_client += 1;
                // Send the queued close reply: the closing handshake completes.
                let _ = socket.flush();
                return Ok(());
            }
            _ => continue,
        };
        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
            send(
                &mut socket,
                json!({"message": "Invalid JSON", "error": "invalid_request", "code": 1008}),
            )?;
            return Ok(());
        };
        lock(state).sessions[session].1.push(value.clone());
        last_text = Instant::now();
        let chunk = value["text"].as_str().unwrap_or("");
        if let Some(hops) = hops
            .as_deref()
            .filter(|_| opened && !chunk.trim().is_empty())
        {
            hops.end(Hop::SentenceToTts, key_of(chunk.trim()), last_text);
        }
        if !opened {
            // The opening message must be a single space. Its voice settings are optional
            // (absent or null: the voice's own), as the service's `InitializeConnection`
            // has them and the official SDK sends them.
            let settings = &value["voice_settings"];
            if chunk != " " || !(settings.is_null() || settings.is_object()) {
                send(
                    &mut socket,
                    json!({"message": "The first message must be {\"text\": \" \"} (voice_settings, if any, an object)", "error": "invalid_request", "code": 1008}),
                )?;
                return Ok(());
            }
            opened = true;
            continue;
        }
        if failing {
            send(
                &mut socket,
                json!({"message": "simulated generation failure", "error": "internal_server_error", "code": 1011}),
            )?;
            let _ = socket.close(Some(CloseFrame {
                code: CloseCode::Error,
                reason: "internal_server_error".into(),
            }));
            let _ = socket.flush();
            return Ok(());
        }
        if chunk.is_empty() {
            // End of input: speak the rest, then isFinal and close.
            if speak(&mut socket, &buffered).is_err() {
                lock(state).closed_by_client += 1;
                return Ok(());
            }
            send(&mut socket, json!({"isFinal": true}))?;
            // A normal close (1000): the official SDK's `convert_realtime` raises on any other
            // code once its input is done, a close frame without a code (1005) included.
            let _ = socket.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }));
            // Drain until the client's close arrives (or it goes away).
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                match socket.read() {
                    Ok(_) => {}
                    Err(err) if crate::providers::ws::is_timeout(&err) => {}
                    Err(_) => break,
                }
            }
            return Ok(());
        }
        buffered.push_str(chunk);
        if value["flush"] == json!(true) || buffered.chars().count() >= 50 {
            // A send that fails means the client went away mid-sentence (barge-in).
            if speak(&mut socket, &buffered).is_err() {
                lock(state).closed_by_client += 1;
                return Ok(());
            }
            buffered.clear();
        }
    }
}

/// How a socket's voice speaks: its pitch, its time to first byte, where it times hops, and
/// whether its audio carries alignment.
struct Voice<'a> {
    pitch: f32,
    first_byte: Duration,
    hops: Option<&'a HopClock>,
    align: bool,
}

/// The `alignment` of the audio bytes `from..to` of `text` as [`voice::speak`] says it: the
/// characters whose sound starts in those bytes, with their start within them and length.
fn alignment(text: &str, from: usize, to: usize) -> Value {
    let per_char = (voice::SAMPLE_RATE * voice::MS_PER_CHAR / 1000) as usize;
    let (mut chars, mut starts, mut durations) = (Vec::new(), Vec::new(), Vec::new());
    for (i, c) in text.chars().enumerate() {
        let start = i * per_char;
        if start >= to {
            break;
        }
        if start >= from {
            chars.push(c.to_string());
            starts.push((start - from) as u64 * 1000 / u64::from(voice::SAMPLE_RATE));
            durations.push(voice::MS_PER_CHAR);
        }
    }
    json!({"chars": chars, "charStartTimesMs": starts, "charDurationsMs": durations})
}

fn speak(
    socket: &mut tungstenite::WebSocket<SimStream>,
    text: &str,
    speaker: &Voice,
    tag: Option<u64>,
    context: Option<&str>,
) -> io::Result<()> {
    if text.trim().is_empty() {
        return Ok(());
    }
    thread::sleep(speaker.first_byte);
    let mut audio = voice::speak_cached(text, speaker.pitch).to_vec();
    if let Some(tag) = tag {
        // 0xF0..=0xFF are μ-law's quietest codes: 4 bits of the number per sample.
        for (i, byte) in audio.iter_mut().take(8).enumerate() {
            *byte = 0xF0 | ((tag >> (4 * i)) & 0xF) as u8;
        }
    }
    for (n, chunk) in audio.chunks(AUDIO_CHUNK).enumerate() {
        let audio = base64::engine::general_purpose::STANDARD.encode(chunk);
        let from = n * AUDIO_CHUNK;
        // The simulated voice says the text as written: both alignments are the same.
        let aligned = if speaker.align {
            alignment(text, from, from + chunk.len())
        } else {
            Value::Null
        };
        let message = match context {
            Some(context) => json!({
                "audio": audio,
                "normalizedAlignment": aligned,
                "alignment": aligned,
                "contextId": context,
            }),
            None => json!({
                "audio": audio,
                "isFinal": false,
                "normalizedAlignment": aligned,
                "alignment": aligned,
            }),
        };
        socket
            .send(Message::text(message.to_string()))
            .map_err(|e| io::Error::other(e.to_string()))?;
        if let Some(hops) = speaker.hops.filter(|_| n == 0) {
            // The server frames each piece from its start: its first media frame to Twilio is
            // these first bytes (padded with silence when the piece is shorter).
            let mut frame = chunk[..chunk.len().min(crate::speech::ulaw::FRAME_BYTES)].to_vec();
            frame.resize(crate::speech::ulaw::FRAME_BYTES, voice::ULAW_SILENCE);
            let payload = base64::engine::general_purpose::STANDARD.encode(&frame);
            hops.start(Hop::TtsToTwilio, key_of(payload.as_str()), Instant::now());
        }
    }
    Ok(())
}

/// Sends the service's error message, then closes with `code`.
fn refuse_and_close(
    socket: &mut tungstenite::WebSocket<SimStream>,
    error: &str,
    message: &str,
    code: CloseCode,
) -> io::Result<()> {
    let body = json!({"message": message, "error": error, "code": u16::from(code)});
    let sent = socket.send(Message::text(body.to_string()));
    let _ = socket.close(Some(CloseFrame {
        code,
        reason: error.to_string().into(),
    }));
    let _ = socket.flush();
    sent.map_err(|e| io::Error::other(e.to_string()))
}

/// One context of a multi-context socket: text waiting for the chunk schedule or a flush.
#[derive(Default)]
struct Context {
    buffered: String,
}

/// The `multi-stream-input` socket: see the module docs for what it accepts and refuses.
fn serve_multi(
    mut socket: tungstenite::WebSocket<SimStream>,
    options: &TtsSimOptions,
    state: &Mutex<State>,
    voice_id: &str,
    inactivity: Duration,
    align: bool,
) -> io::Result<()> {
    let hops = lock(state).hops.clone();
    let session = {
        let mut state = lock(state);
        state.sessions.push((voice_id.to_string(), Vec::new()));
        state.sessions.len() - 1
    };
    let voice = Voice {
        pitch: pitch_of(voice_id),
        first_byte: options.first_byte,
        hops: hops.as_deref(),
        align,
    };
    let mut open: BTreeMap<String, Context> = BTreeMap::new();
    let mut closed: Vec<String> = Vec::new();
    let mut last_message = Instant::now();
    let send = |socket: &mut tungstenite::WebSocket<SimStream>, value: Value| {
        socket
            .send(Message::text(value.to_string()))
            .map_err(|e| io::Error::other(e.to_string()))
    };
    let client_gone = || {
        lock(state).closed_by_client += 1;
        Ok(())
    };
    loop {
        // Waits for the next message or the inactivity limit, whichever comes first.
        let left = (last_message + inactivity).saturating_duration_since(Instant::now());
        socket
            .get_ref()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let message = match socket.read() {
            Ok(message) => message,
            Err(err) if crate::providers::ws::is_timeout(&err) => {
                if last_message.elapsed() < inactivity {
                    continue;
                }
                let seconds = inactivity.as_secs();
                return refuse_and_close(
                    &mut socket,
                    "input_timeout_exceeded",
                    &format!(
                        "Have not received new text in {seconds} seconds. Closing the socket."
                    ),
                    CloseCode::Policy,
                );
            }
            Err(_) => return client_gone(),
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => {
                let _ = socket.flush();
                return client_gone();
            }
            _ => continue,
        };
        last_message = Instant::now();
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text.as_str()) else {
            return refuse_and_close(
                &mut socket,
                "invalid_request",
                "Invalid JSON",
                CloseCode::Policy,
            );
        };
        lock(state).sessions[session]
            .1
            .push(Value::Object(fields.clone()));
        if let Some(unknown) = fields.keys().find(|k| !MULTI_FIELDS.contains(&k.as_str())) {
            return refuse_and_close(
                &mut socket,
                "invalid_request",
                &format!("Unknown field: {unknown}"),
                CloseCode::Policy,
            );
        }
        if fields.get("close_socket") == Some(&json!(true)) {
            // Every flushed context has been spoken (this simulator speaks as it reads): each
            // open one ends, then the socket.
            for id in std::mem::take(&mut open).into_keys() {
                send(&mut socket, json!({"isFinal": true, "contextId": id}))?;
            }
            let _ = socket.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }));
            let _ = socket.flush();
            return Ok(());
        }
        let id = fields
            .get("context_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if fields.get("close_context") == Some(&json!(true)) {
            // Its flushed text has been spoken; text still waiting for the schedule is dropped.
            if open.remove(&id).is_some() {
                closed.push(id.clone());
                send(&mut socket, json!({"isFinal": true, "contextId": id}))?;
            }
            continue;
        }
        let chunk = fields.get("text").and_then(Value::as_str).unwrap_or("");
        let has_settings = ["voice_settings", "generation_config"]
            .iter()
            .any(|k| fields.get(*k).is_some_and(|v| !v.is_null()));
        if !open.contains_key(&id) {
            if chunk.is_empty() && id.is_empty() && !has_settings {
                // `{"text":""}` with no context: a keep-alive for the socket.
                continue;
            }
            if closed.contains(&id) {
                return refuse_and_close(
                    &mut socket,
                    "invalid_request",
                    &format!("Context {id} was closed: open a new context for more text"),
                    CloseCode::Policy,
                );
            }
            if open.len() >= MAX_CONTEXTS {
                return refuse_and_close(
                    &mut socket,
                    "max_active_conversations",
                    "Maximum simultaneous contexts per WebSocket connection exceeded (5). Please close an existing context before opening a new one.",
                    CloseCode::Policy,
                );
            }
            open.insert(id.clone(), Context::default());
            if chunk == " " {
                // A context's opening space is not text to speak.
                continue;
            }
        } else if has_settings {
            return refuse_and_close(
                &mut socket,
                "invalid_request",
                "voice_settings and generation_config may only be sent in a context's first message",
                CloseCode::Policy,
            );
        }
        if let Some(hops) = hops.as_deref().filter(|_| !chunk.trim().is_empty()) {
            hops.end(Hop::SentenceToTts, key_of(chunk.trim()), last_message);
        }
        let Some(context) = open.get_mut(&id) else {
            continue;
        };
        context.buffered.push_str(chunk);
        let flush = fields.get("flush") == Some(&json!(true));
        if !(flush || context.buffered.chars().count() >= 50) {
            continue;
        }
        let words = std::mem::take(&mut context.buffered);
        if words.trim().is_empty() {
            continue;
        }
        let (fail, mute, tag) = {
            let mut state = lock(state);
            let fail = state.failing > 0;
            state.failing = state.failing.saturating_sub(1);
            let mute = !fail && state.mute > 0;
            if mute {
                state.mute -= 1;
            }
            state.pieces += 1;
            (fail, mute, state.tag_audio.then_some(state.pieces))
        };
        if fail {
            return refuse_and_close(
                &mut socket,
                "internal_server_error",
                "simulated generation failure",
                CloseCode::Error,
            );
        }
        if !mute {
            let spoke = speak(&mut socket, &words, &voice, tag, Some(&id));
            // A send that fails means the client went away mid-piece.
            if spoke.is_err() {
                return client_gone();
            }
        }
    }
}
