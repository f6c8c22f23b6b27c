//! A simulated ElevenLabs realtime speech-to-text WebSocket. Its voice-activity detector works
//! on the μ-law it receives: while the caller's audio is loud it sends partial transcripts of
//! the utterance being spoken. With `commit_strategy=vad`, after `vad_silence_threshold_secs`
//! of quiet (audio time, not wall time) it commits the whole utterance; with
//! `commit_strategy=manual` (the service's default) it commits when the client sends a commit
//! (`"commit": true`), and once the caller pauses it sends a last partial with every word of
//! the utterance, as the service's partials catch up with the audio. The combinations are the
//! provider module's (`providers::elevenlabs_stt`): a commit in a `vad` session is refused
//! with an `input_error` and the session closed, since the service documents commits for
//! `manual` sessions only. The words come from a script the simulated caller shares. Like the
//! service, it is configured by the URL only: any client message other than
//! `input_audio_chunk` — the original's `session_config` — is an `input_error`. With
//! `include_timestamps=true` in the URL (or [`SttSim::always_timestamps`]) every
//! `committed_transcript` is followed by its `committed_transcript_with_timestamps`, as the
//! service documents. Errors, dropped connections and a session that goes silent can be
//! injected. A scripted cough ([`SttSim::push_cough`]) is heard as words in partials and
//! committed as empty text, as the service does with a noise it half took for speech.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

mod event_loop;

use super::hops::{key_of, sampled, Hop, HopClock};
use super::listener::{ConnectionServer, SimStream, WsSimCore};
use super::voice;
use crate::speech::audio_message::JsonText;

/// Loudness (RMS of decoded samples) above which audio counts as speech.
pub const SPEECH_RMS: f32 = 500.0;
/// Audio between two partial transcripts while the caller speaks.
const PARTIAL_EVERY_SECS: f64 = 0.3;
/// Quiet after which a `manual` session's partial catches up with the whole utterance (longer
/// than the gap between two words).
const CATCH_UP_SECS: f64 = 0.15;

#[derive(Clone, Debug)]
pub struct SttSimOptions {
    pub api_key: String,
    /// Wall-clock delay before a commit is sent (the service's processing time).
    pub commit_latency: Duration,
}

impl Default for SttSimOptions {
    fn default() -> SttSimOptions {
        SttSimOptions {
            api_key: "sim-elevenlabs-key".into(),
            commit_latency: Duration::from_millis(50),
        }
    }
}

/// Something to do to the next session instead of transcribing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Send this error message type (e.g. `quota_exceeded`) after this many audio chunks.
    Error {
        message_type: String,
        after_chunks: u32,
    },
    /// Drop the connection without a word after this many audio chunks.
    Drop { after_chunks: u32 },
    /// Send two messages of a type the client does not know, then carry on normally.
    UnknownType(String),
    /// Accept the handshake and every audio chunk, and never send a single message (not even
    /// `session_started`): a service that hangs.
    Silent,
}

/// One scripted utterance: its words, and whether the service commits them (a cough's are
/// only ever partials; its commit is empty).
struct Utterance {
    words: String,
    commits: bool,
}

impl Utterance {
    /// What a commit of it says: its words, or nothing for a cough.
    fn committed(self) -> String {
        if self.commits {
            self.words
        } else {
            String::new()
        }
    }
}

#[derive(Default)]
struct State {
    utterances: VecDeque<Utterance>,
    faults: VecDeque<Fault>,
    sessions: u32,
    /// Send `committed_transcript_with_timestamps` after every commit even when the URL did
    /// not ask for it.
    always_timestamps: bool,
    /// Every client message, per session (audio chunks only without `drop_audio`).
    received: Vec<Vec<Value>>,
    /// Keep no `input_audio_chunk` in `received` ([`SttSim::keep_audio`]).
    drop_audio: bool,
    /// Where audio arrivals and commits are timed (`twilio_to_stt`, `transcript_to_llm`).
    hops: Option<Arc<HopClock>>,
    /// Serve sessions on one thread ([`SttSim::one_loop`]), and that thread once started.
    one_loop: bool,
    event_loop: Option<event_loop::LoopHandle>,
}

pub struct SttSim {
    core: WsSimCore<State>,
}

impl SttSim {
    /// An STT simulator on its own port.
    pub fn start(options: SttSimOptions) -> io::Result<SttSim> {
        let (sim, server) = SttSim::detached(options);
        Ok(SttSim {
            core: sim.core.listen("sim-stt", server)?,
        })
    }

    /// The simulator without a listener, and what serves a connection for it.
    pub fn detached(options: SttSimOptions) -> (SttSim, ConnectionServer) {
        let (core, server) =
            WsSimCore::detached(move |stream, state| serve(stream, &options, state));
        (SttSim { core }, server)
    }

    /// The base URL to set as `ELEVENLABS_WS_BASE` (empty when detached).
    pub fn base_url(&self) -> String {
        self.core.base_url()
    }

    /// What the caller will say, in order (shared with the simulated caller).
    pub fn push_utterances(&self, utterances: impl IntoIterator<Item = String>) {
        self.core
            .lock()
            .utterances
            .extend(utterances.into_iter().map(|words| Utterance {
                words,
                commits: true,
            }));
    }

    /// The next thing the caller "says" is a cough (or any short noise): its partials carry
    /// `heard_as` (words the service thought it heard), its commit is empty text.
    pub fn push_cough(&self, heard_as: &str) {
        self.core.lock().utterances.push_back(Utterance {
            words: heard_as.to_string(),
            commits: false,
        });
    }

    /// Faults for the next sessions, one each.
    pub fn push_fault(&self, fault: Fault) {
        self.core.lock().faults.push_back(fault);
    }

    /// Sends the timestamped twin of every commit, asked for or not (a service whose default
    /// changed, or a client that asks for timestamps).
    pub fn always_timestamps(&self, on: bool) {
        self.core.lock().always_timestamps = on;
    }

    /// Times audio chunks received and transcripts committed on `clock` (see
    /// [`super::hops`]).
    pub fn record_hops(&self, clock: Arc<HopClock>) {
        self.core.lock().hops = Some(clock);
    }

    pub fn sessions(&self) -> u32 {
        self.core.lock().sessions
    }

    /// Whether sessions started from now on keep their `input_audio_chunk` messages for
    /// [`SttSim::received`] (the default). Off, only the other messages are kept: a load run's
    /// memory then does not grow with the audio it sends.
    pub fn keep_audio(&self, on: bool) {
        self.core.lock().drop_audio = !on;
    }

    /// Whether sessions started from now on are served, once their handshake is done, by one
    /// thread for all of them (`sim-stt-loop`, waiting on every socket with epoll) instead of
    /// a thread each: how the benchmark's harness stays light with hundreds of calls. Sessions
    /// given a fault keep a thread of their own.
    pub fn one_loop(&self, on: bool) {
        self.core.lock().one_loop = on;
    }

    /// Client messages of session `n` (0-based), audio payloads included (unless
    /// [`SttSim::keep_audio`] is off).
    pub fn received(&self, n: usize) -> Vec<Value> {
        self.core
            .lock()
            .received
            .get(n)
            .cloned()
            .unwrap_or_default()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn refuse(status: u16, message: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(json!({"detail": message}).to_string()));
    *response.status_mut() = tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tungstenite::http::StatusCode::BAD_REQUEST);
    response
}

/// What the URL asked for.
struct Session {
    silence_secs: f64,
    timestamps: bool,
    /// `commit_strategy=manual`: only the client commits.
    manual: bool,
}

/// A client message as the simulator reads it: the fields it looks at, borrowed from the text
/// where they need no unescaping.
#[derive(Deserialize)]
struct ClientMessage<'a> {
    #[serde(borrow, default)]
    message_type: Option<JsonText<'a>>,
    #[serde(borrow, default)]
    audio_base_64: Option<JsonText<'a>>,
    /// Required by the service; `true` commits (a `manual` session's end of an utterance).
    #[serde(default)]
    commit: Option<bool>,
    #[serde(default)]
    sample_rate: Option<u64>,
}

impl ClientMessage<'_> {
    fn kind(&self) -> &str {
        self.message_type.as_ref().map_or("", |t| &t.0)
    }

    fn is_audio(&self) -> bool {
        self.kind() == "input_audio_chunk"
    }
}

/// Keeps a client message for [`SttSim::received`], unless it is audio and audio is not kept.
fn keep(state: &Mutex<State>, index: usize, text: &str, is_audio: bool, drop_audio: bool) {
    if !(is_audio && drop_audio) {
        let value = serde_json::from_str(text).unwrap_or(Value::Null);
        lock(state).received[index].push(value);
    }
}

fn serve(stream: SimStream, options: &SttSimOptions, state: &Arc<Mutex<State>>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    let mut session = Session {
        silence_secs: 1.5,
        timestamps: false,
        manual: true,
    };
    // The signature is tungstenite's handshake Callback; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != "/v1/speech-to-text/realtime" {
            return Err(refuse(404, "not found"));
        }
        let key = request
            .headers()
            .get("xi-api-key")
            .and_then(|v| v.to_str().ok());
        if key != Some(options.api_key.as_str()) {
            return Err(refuse(401, "Invalid API key"));
        }
        let query = request.uri().query().unwrap_or("");
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        // The service's defaults are pcm_16000 and manual commits: a client that forgets to
        // ask for μ-law gets a session that never transcribes Twilio's audio, and one that
        // forgets VAD gets no commit it does not send itself.
        if param("audio_format").as_deref() != Some("ulaw_8000") {
            return Err(refuse(
                400,
                "this simulator transcribes audio_format=ulaw_8000 only",
            ));
        }
        session.manual = match param("commit_strategy").as_deref() {
            None | Some("manual") => true,
            Some("vad") => false,
            Some(_) => {
                return Err(refuse(400, "commit_strategy must be manual or vad"));
            }
        };
        session.timestamps = param("include_timestamps").as_deref() == Some("true");
        if let Some(secs) = param("vad_silence_threshold_secs").and_then(|s| s.parse::<f64>().ok())
        {
            if !(0.3..=3.0).contains(&secs) {
                return Err(refuse(
                    400,
                    "vad_silence_threshold_secs must be within 0.3 and 3.0",
                ));
            }
            session.silence_secs = secs;
        }
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let mut socket = tungstenite::accept_hdr_with_config(stream, check, Some(config))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let (index, fault, hops, drop_audio, one_loop) = {
        let mut state = lock(state);
        state.sessions += 1;
        state.received.push(Vec::new());
        session.timestamps |= state.always_timestamps;
        (
            state.received.len() - 1,
            state.faults.pop_front(),
            state.hops.clone(),
            state.drop_audio,
            state.one_loop,
        )
    };
    if fault == Some(Fault::Silent) {
        // Read and keep everything, answer nothing, until the client goes away.
        loop {
            match socket.read() {
                Ok(Message::Text(text)) => {
                    let is_audio = serde_json::from_str::<ClientMessage>(text.as_str())
                        .is_ok_and(|m| m.is_audio());
                    keep(state, index, text.as_str(), is_audio, drop_audio);
                }
                Ok(Message::Close(_)) => {
                    // Send the queued close reply: the handshake completes, as with the service.
                    let _ = socket.flush();
                    return Ok(());
                }
                Ok(_) => {}
                Err(err) if crate::providers::ws::is_timeout(&err) => {}
                Err(_) => return Ok(()),
            }
        }
    }
    let send = |socket: &mut tungstenite::WebSocket<SimStream>, value: Value| {
        socket
            .send(Message::text(value.to_string()))
            .map_err(|e| io::Error::other(e.to_string()))
    };
    send(
        &mut socket,
        json!({"message_type": "session_started", "session_id": format!("sim-stt-{index}"),
               "config": {"audio_format": "ulaw_8000",
                          "commit_strategy": if session.manual { "manual" } else { "vad" },
                          "vad_silence_threshold_secs": session.silence_secs}}),
    )?;

    if let Some(Fault::UnknownType(kind)) = &fault {
        for _ in 0..2 {
            send(&mut socket, json!({"message_type": kind, "text": "?"}))?;
        }
    }

    let mut transcriber = Transcriber {
        index,
        fault,
        hops,
        drop_audio,
        silence_threshold: session.silence_secs,
        timestamps: session.timestamps,
        manual: session.manual,
        caught_up: true,
        chunks: 0,
        speaking: false,
        speech_secs: 0.0,
        silence_secs: 0.0,
        since_partial: 0.0,
        utterance: None,
        first_loud: None,
    };
    if one_loop && transcriber.fault.is_none() {
        let handoff = event_loop::Handoff {
            socket,
            transcriber,
            state: Arc::clone(state),
            commit_latency: options.commit_latency,
        };
        // Refused only if the loop could not start: then this thread serves the session.
        match event_loop::hand_off(handoff, state) {
            Ok(()) => return Ok(()),
            Err(handoff) => {
                let handoff = *handoff;
                socket = handoff.socket;
                transcriber = handoff.transcriber;
            }
        }
    }
    loop {
        let message = match socket.read() {
            Ok(message) => message,
            Err(_) => return Ok(()),
        };
        let Message::Text(text) = message else {
            if let Message::Close(_) = message {
                // tungstenite queues the close reply; sending it completes the closing
                // handshake (the official SDK reports a close without one as an error).
                let _ = socket.flush();
                return Ok(());
            }
            continue;
        };
        match transcriber.hear(text.as_str(), Instant::now(), state) {
            Reply::Nothing => {}
            Reply::Send(value, partial) => {
                send(&mut socket, value)?;
                transcriber.sent_partial(partial);
            }
            Reply::Commit(words, speech_secs) => {
                std::thread::sleep(options.commit_latency);
                let (commit, timestamped) = transcriber.commit(&words, speech_secs);
                send(&mut socket, commit)?;
                transcriber.sent_commit(&words);
                if let Some(timestamped) = timestamped {
                    send(&mut socket, timestamped)?;
                }
            }
            Reply::Fail(value) => {
                send(&mut socket, value)?;
                let _ = socket.close(None);
                let _ = socket.flush();
                return Ok(());
            }
            Reply::Drop => return Ok(()),
        }
    }
}

/// One session's transcribing, whichever thread serves it: what the simulator answers to each
/// client message, from what it has heard so far.
struct Transcriber {
    index: usize,
    fault: Option<Fault>,
    hops: Option<Arc<HopClock>>,
    drop_audio: bool,
    /// The session's VAD silence (from the URL), and whether commits get timestamps.
    silence_threshold: f64,
    timestamps: bool,
    /// Only the client commits (`commit_strategy=manual`).
    manual: bool,
    /// The last partial had every word of the utterance (a `manual` session's catch-up sent).
    caught_up: bool,
    chunks: u32,
    speaking: bool,
    speech_secs: f64,
    silence_secs: f64,
    since_partial: f64,
    utterance: Option<Utterance>,
    /// The key of the chunk that started the utterance being heard, until its first partial is
    /// sent (the start of `partial_to_clear`).
    first_loud: Option<u64>,
}

/// A chunk's 20 ms frames (Twilio's, as the server gathered them), when it is whole frames.
fn frames(audio: &[u8]) -> std::slice::ChunksExact<'_, u8> {
    const FRAME: usize = crate::speech::ulaw::FRAME_BYTES;
    let whole = if audio.len().is_multiple_of(FRAME) {
        audio
    } else {
        &[]
    };
    whole.chunks_exact(FRAME)
}

/// What to do about a client message.
enum Reply {
    Nothing,
    /// Send this; when it carries a key, it is the utterance's first partial
    /// ([`Transcriber::sent_partial`]).
    Send(Value, Option<u64>),
    /// The utterance (its words, and how long it was spoken) is over: commit it after the
    /// service's processing time ([`Transcriber::commit`]).
    Commit(String, f64),
    /// Send this error, then close (an injected fault).
    Fail(Value),
    /// Drop the connection without a word (an injected fault).
    Drop,
}

impl Transcriber {
    /// Hears one client text message, received at `received`.
    fn hear(&mut self, text: &str, received: Instant, state: &Mutex<State>) -> Reply {
        let parsed = serde_json::from_str::<ClientMessage>(text);
        let is_audio = parsed.as_ref().is_ok_and(ClientMessage::is_audio);
        keep(state, self.index, text, is_audio, self.drop_audio);
        let message = match parsed {
            Ok(message) => message,
            Err(_) => {
                // Not JSON, or a field of an unexpected type: refused as the service would.
                let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                let kind = value["message_type"].as_str().unwrap_or("");
                return Reply::Send(refusal(kind), None);
            }
        };
        let payload = message.audio_base_64.as_ref().map_or("", |t| &t.0);
        let decoded = base64::engine::general_purpose::STANDARD.decode(payload);
        let Some(commit) = message.commit.filter(|_| is_audio) else {
            return Reply::Send(refusal(message.kind()), None);
        };
        if message.sample_rate != Some(8000) {
            return Reply::Send(refusal(message.kind()), None);
        }
        if commit && !self.manual {
            // Documented for `manual` sessions only: refused, as the service refuses what it
            // does not take (see the module docs).
            return Reply::Fail(json!({"message_type": "input_error",
                "error": "commit is only accepted with commit_strategy=manual"}));
        }
        let Ok(audio) = decoded else {
            return Reply::Send(
                json!({"message_type": "input_error", "error": "audio_base_64 is not base64"}),
                None,
            );
        };
        if let Some(hops) = &self.hops {
            // A chunk of several 20 ms frames (`STT_CHUNK_MS`): the frame that completed it is
            // the one the hop times (the ones before it waited for it on purpose).
            if let Some(last) = frames(&audio).last() {
                let key = frame_key(last);
                if sampled(key) {
                    hops.end(Hop::TwilioToStt, key, received);
                }
            }
        }
        self.chunks += 1;
        match &self.fault {
            Some(Fault::Error {
                message_type,
                after_chunks,
            }) if self.chunks >= *after_chunks => {
                return Reply::Fail(
                    json!({"message_type": message_type, "error": format!("simulated {message_type}")}),
                );
            }
            Some(Fault::Drop { after_chunks }) if self.chunks >= *after_chunks => {
                return Reply::Drop
            }
            _ => {}
        }

        // The service's voice detection works on the audio, not on how it was sent: 20 ms at a
        // time, however many frames a message carries. A commit is the message's reply (a
        // partial cannot follow it within one chunk: it needs more speech than a chunk holds).
        let mut reply = Reply::Nothing;
        let whole: &[u8] = &audio;
        let pieces: Vec<&[u8]> = if frames(whole).len() > 0 {
            frames(whole).collect()
        } else {
            vec![whole]
        };
        for piece in pieces {
            if piece.is_empty() {
                continue;
            }
            match self.hear_audio(piece, state) {
                Reply::Nothing => {}
                // A commit is the message's answer; the frames after it are still heard (the
                // next utterance may begin in them).
                commit @ Reply::Commit(..) => reply = commit,
                other => {
                    if matches!(reply, Reply::Nothing) {
                        reply = other;
                    }
                }
            }
        }
        if commit {
            // The client's commit: what was heard of the utterance, or nothing.
            self.speaking = false;
            self.caught_up = true;
            let words = self
                .utterance
                .take()
                .map(Utterance::committed)
                .unwrap_or_default();
            return Reply::Commit(words, self.speech_secs);
        }
        reply
    }

    /// Hears one piece of audio (a 20 ms frame): speech starts or goes on, or silence ends it.
    fn hear_audio(&mut self, audio: &[u8], state: &Mutex<State>) -> Reply {
        let secs = audio.len() as f64 / f64::from(voice::SAMPLE_RATE);
        if voice::rms(audio) > SPEECH_RMS {
            if !self.speaking {
                self.speaking = true;
                self.speech_secs = 0.0;
                self.since_partial = 0.0;
                self.caught_up = false;
                // The utterance's first loud frame, as the caller sent it.
                self.first_loud = Some(frame_key(audio));
                self.utterance.get_or_insert_with(|| {
                    lock(state)
                        .utterances
                        .pop_front()
                        .unwrap_or_else(|| Utterance {
                            words: "(inaudible)".to_string(),
                            commits: true,
                        })
                });
            }
            self.silence_secs = 0.0;
            self.speech_secs += secs;
            self.since_partial += secs;
            if self.since_partial >= PARTIAL_EVERY_SECS {
                self.since_partial = 0.0;
                if let Some(utterance) = &self.utterance {
                    // As much of the utterance as has been "heard": about 3 words a second.
                    let heard = ((self.speech_secs * 3.0).ceil() as usize).max(1);
                    let words = &utterance.words;
                    let partial: Vec<&str> = words.split_whitespace().take(heard).collect();
                    self.caught_up = partial.len() == words.split_whitespace().count();
                    return Reply::Send(
                        json!({"message_type": "partial_transcript", "text": partial.join(" ")}),
                        self.first_loud.take(),
                    );
                }
            }
        } else if self.speaking {
            self.silence_secs += secs;
            if self.manual {
                // No commit of its own: the words so far, once, when the caller pauses.
                if self.silence_secs >= CATCH_UP_SECS && !self.caught_up {
                    self.caught_up = true;
                    if let Some(utterance) = &self.utterance {
                        return Reply::Send(
                            json!({"message_type": "partial_transcript", "text": utterance.words}),
                            self.first_loud.take(),
                        );
                    }
                }
                return Reply::Nothing;
            }
            if self.silence_secs >= self.silence_threshold {
                self.speaking = false;
                if let Some(utterance) = self.utterance.take() {
                    return Reply::Commit(utterance.committed(), self.speech_secs);
                }
            }
        }
        Reply::Nothing
    }

    /// A partial was sent; `first_loud`, when it was the utterance's first, starts
    /// `partial_to_clear`.
    fn sent_partial(&self, first_loud: Option<u64>) {
        if let (Some(hops), Some(key)) = (&self.hops, first_loud) {
            hops.start(Hop::PartialToClear, key, Instant::now());
        }
    }

    /// What committing `words` sends: the transcript, then its timestamped twin when asked.
    fn commit(&self, words: &str, speech_secs: f64) -> (Value, Option<Value>) {
        (
            json!({"message_type": "committed_transcript", "text": words}),
            self.timestamps.then(|| with_timestamps(words, speech_secs)),
        )
    }

    /// The commit of `words` was sent: `transcript_to_llm` starts.
    fn sent_commit(&self, words: &str) {
        if let Some(hops) = &self.hops {
            hops.start(Hop::TranscriptToLlm, key_of(words.trim()), Instant::now());
        }
    }
}

/// The key the callers time a frame by: its payload as Twilio carries it (base64 of 160 bytes).
fn frame_key(frame: &[u8]) -> u64 {
    key_of(
        base64::engine::general_purpose::STANDARD
            .encode(frame)
            .as_str(),
    )
}

/// The `input_error` for a text message of type `kind` that is not a well-formed audio chunk.
fn refusal(kind: &str) -> Value {
    let error = if kind == "input_audio_chunk" {
        "input_audio_chunk needs commit and sample_rate (8000 for ulaw_8000)".to_string()
    } else {
        format!("Unexpected message type: {kind}")
    };
    json!({"message_type": "input_error", "error": error})
}

/// The timestamped twin of a commit: the same text, and each word spread evenly over the
/// `secs` the utterance took.
fn with_timestamps(text: &str, secs: f64) -> Value {
    let words: Vec<&str> = text.split_whitespace().collect();
    let each = secs / words.len().max(1) as f64;
    let words: Vec<Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({"text": w, "start": i as f64 * each, "end": (i + 1) as f64 * each,
                   "type": "word", "logprob": 0.0})
        })
        .collect();
    json!({"message_type": "committed_transcript_with_timestamps", "text": text,
           "language_code": "en", "words": words})
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::client::IntoClientRequest;
    use tungstenite::stream::MaybeTlsStream;

    type Client = tungstenite::WebSocket<MaybeTlsStream<std::net::TcpStream>>;

    fn connect(sim: &SttSim) -> Client {
        connect_with(sim, "commit_strategy=vad&vad_silence_threshold_secs=0.3")
    }

    /// The handshake request of a session whose URL ends with `query` (after the audio format).
    fn request_with(sim: &SttSim, query: &str) -> tungstenite::handshake::client::Request {
        let url = format!(
            "{}/v1/speech-to-text/realtime?audio_format=ulaw_8000&{query}",
            sim.base_url()
        );
        let mut request = url.into_client_request().expect("a request");
        let key = SttSimOptions::default().api_key;
        request
            .headers_mut()
            .insert("xi-api-key", key.parse().expect("a header value"));
        request
    }

    /// A session whose URL ends with `query` (after the audio format).
    fn connect_with(sim: &SttSim, query: &str) -> Client {
        let (socket, _) = tungstenite::connect(request_with(sim, query)).expect("connects");
        if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
            tcp.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout set");
        }
        socket
    }

    fn send(socket: &mut Client, value: Value) {
        socket.send(Message::text(value.to_string())).expect("sent");
    }

    /// The next JSON message from the simulator.
    fn next(socket: &mut Client) -> Value {
        loop {
            if let Message::Text(text) = socket.read().expect("a message") {
                return serde_json::from_str(text.as_str()).expect("JSON");
            }
        }
    }

    /// 20 ms frames (base64) of `text` spoken, then 400 ms of quiet.
    fn utterance(text: &str, pitch: f32) -> Vec<String> {
        let mut audio = voice::speak(text, pitch);
        audio.extend(std::iter::repeat_n(voice::ULAW_SILENCE, 400 * 8));
        audio
            .chunks(160)
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
            .collect()
    }

    fn loud(frame: &str) -> bool {
        let audio = base64::engine::general_purpose::STANDARD
            .decode(frame)
            .expect("base64");
        voice::rms(&audio) > SPEECH_RMS
    }

    #[test]
    fn each_utterance_starts_partial_to_clear_once_keyed_by_its_first_loud_chunk() {
        transcribes_two_utterances(false, Duration::ZERO);
    }

    /// Threads of this process named `sim-stt-loop`.
    fn loop_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("the process's threads")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "sim-stt-loop")
            .count()
    }

    #[test]
    fn on_one_loop_a_session_transcribes_and_commits_as_on_its_own_thread() {
        let (sim, socket) = transcribes_two_utterances(true, Duration::from_millis(30));
        assert_eq!(loop_threads(), 1, "the session was served by the loop");
        // The simulator gone and its last session closed, the loop ends.
        drop(sim);
        drop(socket);
        let deadline = Instant::now() + Duration::from_secs(5);
        while loop_threads() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(loop_threads(), 0, "the loop ended");
    }

    fn audio(frame: &str, commit: bool) -> Value {
        json!({"message_type": "input_audio_chunk", "audio_base_64": frame,
               "commit": commit, "sample_rate": 8000})
    }

    #[test]
    fn a_manual_session_commits_when_asked_after_a_partial_with_every_word() {
        let sim = SttSim::start(SttSimOptions::default()).expect("starts");
        let said = "one two three four five six";
        sim.push_utterances([said.to_string()]);
        let mut socket = connect_with(&sim, "commit_strategy=manual");
        let started = next(&mut socket);
        assert_eq!(started["config"]["commit_strategy"], "manual");
        for frame in utterance(said, 150.0) {
            send(&mut socket, audio(&frame, false));
        }
        // No commit of its own after the silence: partials only, the last with every word.
        let mut last = Value::Null;
        send(&mut socket, audio("", true));
        loop {
            let message = next(&mut socket);
            match message["message_type"].as_str() {
                Some("partial_transcript") => last = message,
                Some("committed_transcript") => {
                    assert_eq!(message["text"], said);
                    break;
                }
                other => panic!("unexpected {other:?}: {message}"),
            }
        }
        assert_eq!(
            last["text"], said,
            "the partial caught up before the commit"
        );
        // A commit with nothing heard since commits nothing.
        send(&mut socket, audio("", true));
        assert_eq!(next(&mut socket)["text"], "");
    }

    #[test]
    fn a_commit_in_a_vad_session_is_refused_and_the_session_closed() {
        let sim = SttSim::start(SttSimOptions::default()).expect("starts");
        let mut socket = connect(&sim);
        assert_eq!(next(&mut socket)["message_type"], "session_started");
        send(&mut socket, audio("", true));
        assert_eq!(next(&mut socket)["message_type"], "input_error");
        let after = socket.read();
        assert!(
            matches!(after, Ok(Message::Close(_))),
            "the session closes: {after:?}"
        );
        // An unknown strategy is refused at the handshake.
        let request = request_with(&sim, "commit_strategy=sometimes");
        assert!(tungstenite::connect(request).is_err());
    }

    /// Two utterances through a session: partials, then the commit of each (after
    /// `commit_latency`), `partial_to_clear` started once per utterance, audio not kept.
    fn transcribes_two_utterances(one_loop: bool, commit_latency: Duration) -> (SttSim, Client) {
        let sim = SttSim::start(SttSimOptions {
            commit_latency,
            ..SttSimOptions::default()
        })
        .expect("starts");
        sim.one_loop(one_loop);
        let clock = Arc::new(HopClock::new());
        sim.record_hops(Arc::clone(&clock));
        sim.keep_audio(false);
        let said = ["one two three four five", "six seven eight nine ten"];
        sim.push_utterances(said.map(String::from));
        let mut socket = connect(&sim);
        assert_eq!(next(&mut socket)["message_type"], "session_started");

        let mut first_loud = Vec::new();
        let mut later_loud = Vec::new();
        for (n, text) in said.iter().enumerate() {
            let frames = utterance(text, 140.0 + 40.0 * n as f32);
            let mut loud_frames = frames.iter().filter(|f| loud(f));
            first_loud.push(key_of(loud_frames.next().expect("speech").as_str()));
            later_loud.extend(loud_frames.map(|f| key_of(f.as_str())));
            for frame in &frames {
                send(
                    &mut socket,
                    json!({"message_type": "input_audio_chunk", "audio_base_64": frame,
                           "commit": false, "sample_rate": 8000}),
                );
            }
            let mut partials = 0;
            loop {
                let message = next(&mut socket);
                match message["message_type"].as_str() {
                    Some("partial_transcript") => partials += 1,
                    Some("committed_transcript") => {
                        assert_eq!(message["text"], *text);
                        break;
                    }
                    other => panic!("unexpected {other:?}: {message}"),
                }
            }
            assert!(partials >= 2, "{partials} partials");
        }
        // A message that is not audio is still refused, and kept.
        send(&mut socket, json!({"message_type": "session_config"}));
        assert_eq!(next(&mut socket)["message_type"], "input_error");

        // The callers' end, for every loud chunk: only each utterance's first was started, and
        // once (a key started twice would be ambiguous and not count).
        let at = Instant::now();
        for &key in first_loud.iter().chain(&later_loud) {
            clock.end(Hop::PartialToClear, key, at);
        }
        assert_eq!(clock.hops().get(Hop::PartialToClear).len(), 2);
        // Without audio kept, only the refused message was.
        let received = sim.received(0);
        assert_eq!(received, vec![json!({"message_type": "session_config"})]);
        (sim, socket)
    }

    #[test]
    fn a_cough_is_heard_as_words_in_partials_and_committed_as_nothing() {
        let sim = SttSim::start(SttSimOptions::default()).expect("starts");
        sim.push_cough("hey wait");
        sim.push_utterances(["after the cough".to_string()]);
        let mut socket = connect(&sim);
        assert_eq!(next(&mut socket)["message_type"], "session_started");
        let mut heard = Vec::new();
        for (text, pitch) in [("ahem ahem ahem", 300.0), ("after the cough", 150.0)] {
            for frame in utterance(text, pitch) {
                send(
                    &mut socket,
                    json!({"message_type": "input_audio_chunk", "audio_base_64": frame,
                           "commit": false, "sample_rate": 8000}),
                );
            }
            loop {
                let message = next(&mut socket);
                let text = message["text"].as_str().unwrap_or("").to_string();
                match message["message_type"].as_str() {
                    Some("partial_transcript") => heard.push(format!("partial:{text}")),
                    Some("committed_transcript") => {
                        heard.push(format!("commit:{text}"));
                        break;
                    }
                    other => panic!("unexpected {other:?}: {message}"),
                }
            }
        }
        let cough_end = heard
            .iter()
            .position(|h| h.starts_with("commit:"))
            .expect("a commit");
        assert!(
            heard[..cough_end].contains(&"partial:hey wait".to_string()),
            "{heard:?}"
        );
        assert_eq!(heard[cough_end], "commit:");
        assert_eq!(
            heard.last().map(String::as_str),
            Some("commit:after the cough")
        );
    }
}
