//! ElevenLabs realtime speech-to-text (Scribe v2 realtime) over its WebSocket.
//!
//! The session is configured by the URL's query string only — μ-law 8 kHz, the language, and
//! how utterances are committed. (The original sent a `session_config` message, which the
//! service rejects with `input_error`; the session kept its defaults and never transcribed a
//! word.) The caller's audio goes out in chunks of `STT_CHUNK_MS`, each encoded once into a
//! message built in a reused buffer ([`AudioMessage`]). Every message type containing `error`,
//! and each documented error type, is an error; an unknown type is logged once per session and
//! ignored.
//!
//! Commits ([`CommitStrategy`]), as far as the service documents them (the realtime
//! endpoint's AsyncAPI description, as summarised in PROTOCOLS.md; the official Python SDK
//! `elevenlabs` 2.78, `realtime/connection.py` and `realtime/scribe.py`; elevenlabs-js's
//! typed connect options; ElevenLabs' guide "Transcripts and commit strategies"):
//! - `commit_strategy` is `manual` (the default) or `vad`. With `vad` the service commits
//!   after `vad_silence_threshold_secs` (0.3–3.0, default 1.5) of silence; `vad_threshold`
//!   (0.1–0.9), `min_speech_duration_ms` and `min_silence_duration_ms` (50–2000) tune it.
//! - A manual commit is an `input_audio_chunk` with empty audio and `"commit": true` (with
//!   `sample_rate`, which the schema requires). The SDKs say it is "only needed" with
//!   `manual`; nothing published says whether the service accepts, ignores or refuses it in
//!   a `vad` session. So this client never mixes them: `manual` sessions are committed only by
//!   hand, `vad` sessions only by the service. (The simulator refuses a commit in a `vad`
//!   session, so a client that mixes them fails its tests rather than a live call.)
//! - A `manual` session that is never committed is committed by the service itself after
//!   about 90 s (that guide); the smart turn end commits long before.
//! - `commit_throttled` is a documented error type whose rule (how often one may commit) is
//!   not published; it is handled like the other errors (the session is replaced). The call
//!   commits at most once per utterance, after at least `TURN_END_SHORT_MS` of silence.
//!
//! The socket is non-blocking after the handshake: its owner waits for it with
//! [`crate::poll`] ([`SttStream::fd`], [`SttStream::wants_write`]) together with whatever else
//! it waits for, sends audio without ever blocking ([`SttStream::send_audio`]) and reads every
//! buffered event when the socket is readable ([`SttStream::try_next_event`]).

use std::collections::BTreeSet;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Message;

use super::ws::{self, ConnectError, Socket};
use crate::config::{BaseUrl, Secret};
use crate::speech::audio_message::AudioMessage;

/// The error message types the service documents (besides any type containing "error").
const ERROR_TYPES: &[&str] = &[
    "auth_error",
    "quota_exceeded",
    "commit_throttled",
    "transcriber_error",
    "unaccepted_terms",
    "rate_limited",
    "input_error",
    "queue_overflow",
    "resource_exhausted",
    "session_time_limit_exceeded",
    "chunk_size_exceeded",
    "insufficient_audio_activity",
    "invalid_request",
];

/// Audio forwarded without a single committed transcript after which a session is suspicious
/// (the original's lesson: a misconfigured session stays silent, it does not fail).
pub const SILENT_SESSION_WARNING_SECS: f64 = 10.0;

#[derive(Clone, Debug)]
pub struct SttSettings {
    pub ws_base: BaseUrl,
    pub api_key: Secret,
    pub model_id: String,
    pub language_code: String,
    /// Silence that ends an utterance, 0.3–3.0 s.
    pub vad_silence_secs: f64,
    pub connect_timeout: Duration,
    /// The caller speaks and the service says nothing at all for this long: the session is
    /// taken for dead and replaced (`STT_SILENT_SERVICE_SECS`).
    pub silent_service_limit: Duration,
    /// The caller's audio goes in chunks this long, whole 20 ms frames (`STT_CHUNK_MS`).
    pub chunk: Duration,
    /// Who commits utterances: the service's voice detector, or the client by hand.
    pub commit: CommitStrategy,
}

/// How a session's utterances are committed (the URL's `commit_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStrategy {
    /// The service commits after `vad_silence_secs` of silence; the client never commits.
    Vad,
    /// Only the client commits ([`SttStream::commit`]).
    Manual,
}

/// A manual commit: empty audio, `commit` true (the schema requires `sample_rate` too).
const COMMIT_MESSAGE: &str =
    r#"{"message_type":"input_audio_chunk","audio_base_64":"","commit":true,"sample_rate":8000}"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttError {
    Connect(ConnectError),
    /// The service reported an error (`quota_exceeded`, `input_error`, …).
    Service {
        kind: String,
        message: String,
    },
    /// The socket closed.
    Closed(String),
    Protocol(String),
    /// The caller spoke and the service sent nothing at all for this long.
    Unresponsive(Duration),
}

impl std::fmt::Display for SttError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SttError::Connect(err) => write!(f, "stt: {err}"),
            SttError::Service { kind, message } => {
                write!(f, "stt websocket closed by elevenlabs: {kind}: {message}")
            }
            SttError::Closed(why) => write!(f, "stt websocket closed: {why}"),
            SttError::Protocol(what) => write!(f, "stt protocol: {what}"),
            SttError::Unresponsive(after) => write!(
                f,
                "stt service said nothing for {:.1} s while the caller spoke",
                after.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for SttError {}

impl SttError {
    /// The `kind` label of this failure in `/metrics`.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            SttError::Connect(err) => err.metric_kind(),
            SttError::Service { .. } => "service",
            SttError::Closed(_) => "closed",
            SttError::Protocol(_) => "protocol",
            SttError::Unresponsive(_) => "unresponsive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttEvent {
    SessionStarted(String),
    /// What the caller is saying so far (barge-in listens to these).
    Partial(String),
    /// A finished utterance: the turn's input.
    Committed(String),
}

/// What a session did, reported when it ends (for cost and diagnosis).
#[derive(Debug, Clone, PartialEq)]
pub struct SttSummary {
    /// Seconds of audio forwarded (what ElevenLabs bills).
    pub audio_secs: f64,
    pub partials: u64,
    pub committed: u64,
    pub unknown_types: Vec<String>,
}

impl SttSummary {
    /// A long session that produced no transcript: the audio format or session config is off.
    pub fn looks_silent(&self) -> bool {
        self.committed == 0 && self.audio_secs >= SILENT_SESSION_WARNING_SECS
    }
}

pub struct SttStream {
    socket: Socket,
    /// A write returned WouldBlock: frames wait in tungstenite's (or rustls') buffer until
    /// [`SttStream::flush`] gets them out.
    unflushed: bool,
    audio_bytes: u64,
    partials: u64,
    committed: u64,
    unknown_types: BTreeSet<String>,
    /// The kind of the last commit message (`committed_transcript` or
    /// `committed_transcript_with_timestamps`) whose twin has not arrived yet.
    unpaired_commit: Option<&'static str>,
    /// Messages of any kind received (the liveness watchdog's evidence).
    messages: u64,
    /// The `input_audio_chunk` messages, built in one reused buffer.
    chunks: AudioMessage,
}

const COMMITTED: &str = "committed_transcript";
const COMMITTED_WITH_TIMESTAMPS: &str = "committed_transcript_with_timestamps";

impl SttStream {
    pub fn url(settings: &SttSettings) -> String {
        let base = format!(
            "{}/v1/speech-to-text/realtime?model_id={}&audio_format=ulaw_8000&language_code={}",
            settings.ws_base, settings.model_id, settings.language_code,
        );
        match settings.commit {
            CommitStrategy::Vad => format!(
                "{base}&commit_strategy=vad&vad_silence_threshold_secs={:.1}",
                settings.vad_silence_secs.clamp(0.3, 3.0)
            ),
            CommitStrategy::Manual => format!("{base}&commit_strategy=manual"),
        }
    }

    pub fn open(settings: &SttSettings) -> Result<SttStream, SttError> {
        let socket = ws::connect(
            &SttStream::url(settings),
            &[("xi-api-key", settings.api_key.expose())],
            settings.connect_timeout,
        )
        .map_err(SttError::Connect)?;
        ws::tcp_of(&socket)
            .ok_or_else(|| SttError::Protocol("unexpected tls backend".into()))?
            .set_nonblocking(true)
            .map_err(|e| SttError::Closed(format!("cannot make the socket non-blocking: {e}")))?;
        Ok(SttStream {
            socket,
            unflushed: false,
            audio_bytes: 0,
            partials: 0,
            committed: 0,
            unknown_types: BTreeSet::new(),
            unpaired_commit: None,
            messages: 0,
            chunks: AudioMessage::new(
                r#"{"message_type":"input_audio_chunk","audio_base_64":""#.to_string(),
                r#"","commit":false,"sample_rate":8000}"#,
            ),
        })
    }

    /// Opens a session, trying up to `attempts` times with a doubling pause from `backoff`. A
    /// refused key is not retried. `pause(d)` waits out one pause; it returns false to give up
    /// (the call ended meanwhile), so the caller decides what ends a pause early — a plain
    /// `|d| { std::thread::sleep(d); true }` when nothing does.
    pub fn open_retrying(
        settings: &SttSettings,
        attempts: u32,
        backoff: Duration,
        mut pause: impl FnMut(Duration) -> bool,
    ) -> Result<SttStream, SttError> {
        let mut wait = backoff;
        let mut last = SttError::Closed("never tried".into());
        for attempt in 1..=attempts.max(1) {
            match SttStream::open(settings) {
                Ok(stream) => return Ok(stream),
                Err(
                    err @ SttError::Connect(ConnectError::Refused {
                        status: 401 | 403, ..
                    }),
                ) => return Err(err),
                Err(err) => {
                    log::warn!(attempt = attempt, error:% = err; "stt.connect.retry");
                    last = err;
                }
            }
            if attempt < attempts {
                if !pause(wait) {
                    return Err(last);
                }
                wait *= 2;
            }
        }
        Err(last)
    }

    /// The socket's descriptor, to wait on: readable when an event may be buffered, writable
    /// when [`SttStream::wants_write`] can make progress.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        ws::fd_of(&self.socket)
    }

    /// Whether frames wait to be written (wait for the socket to be writable, then
    /// [`SttStream::flush`]).
    pub fn wants_write(&self) -> bool {
        self.unflushed
    }

    /// Writes what waits, as far as the socket takes it now.
    pub fn flush(&mut self) -> Result<(), SttError> {
        self.unflushed = ws::left_queued(self.socket.flush())
            .map_err(|err| SttError::Closed(err.to_string()))?;
        Ok(())
    }

    /// Forwards one chunk of the caller's μ-law, as an `input_audio_chunk` built in the
    /// session's reused buffer (base64-encoded once, here). Never blocks: what the socket does
    /// not take now stays queued (see [`SttStream::wants_write`]), up to the socket's
    /// write-buffer limit, past which this fails.
    pub fn send_audio(&mut self, ulaw: &[u8]) -> Result<(), SttError> {
        let Some(text) = self.chunks.build(ulaw) else {
            return Err(SttError::Protocol(
                "audio could not be base64-encoded".into(),
            ));
        };
        // What is queued goes out with the next flush.
        self.unflushed |= ws::left_queued(self.socket.send(Message::Text(text)))
            .map_err(|err| SttError::Closed(err.to_string()))?;
        self.audio_bytes += ulaw.len() as u64;
        Ok(())
    }

    /// Commits what the service heard since the last commit (a `manual` session's end of an
    /// utterance): its `committed_transcript` follows. Never blocks, like
    /// [`SttStream::send_audio`].
    pub fn commit(&mut self) -> Result<(), SttError> {
        self.unflushed |= ws::left_queued(self.socket.send(Message::text(COMMIT_MESSAGE)))
            .map_err(|err| SttError::Closed(err.to_string()))?;
        Ok(())
    }

    /// The next transcript event already received, without blocking; `None` when nothing more
    /// is buffered (in the socket, rustls or tungstenite): wait for the socket to be readable
    /// before asking again. Messages that carry no event are skipped.
    pub fn try_next_event(&mut self) -> Result<Option<SttEvent>, SttError> {
        loop {
            let message = match self.socket.read() {
                Ok(message) => message,
                Err(err) if ws::is_timeout(&err) => return Ok(None),
                Err(err) => return Err(SttError::Closed(err.to_string())),
            };
            if let Some(event) = self.event_of(message)? {
                return Ok(Some(event));
            }
        }
    }

    /// Waits until `deadline` for the next transcript event (for a thread with nothing else
    /// to wait for: tests, one-off checks); `None` when the deadline passed first.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Option<SttEvent>, SttError> {
        loop {
            if let Some(event) = self.try_next_event()? {
                return Ok(Some(event));
            }
            let Some(fd) = self.fd() else {
                return Err(SttError::Protocol("unexpected tls backend".into()));
            };
            let mut watch = [crate::poll::Watch::read_write(fd, self.unflushed)];
            let ready = crate::poll::wait(&mut watch, Some(deadline))
                .map_err(|e| SttError::Closed(format!("waiting for the socket: {e}")))?;
            if ready == 0 {
                return Ok(None);
            }
            if watch[0].writable() && self.unflushed {
                self.flush()?;
            }
        }
    }

    /// Messages of any kind received so far, whether they carried an event or not (pings,
    /// unknown types and skipped twins too): what proves the service is alive.
    pub fn messages_heard(&self) -> u64 {
        self.messages
    }

    /// The event a message carries, if any.
    fn event_of(&mut self, message: Message) -> Result<Option<SttEvent>, SttError> {
        self.messages += 1;
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                return Err(SttError::Closed(frame.map_or_else(
                    || "no reason".to_string(),
                    |f| format!("{} {}", u16::from(f.code), f.reason),
                )))
            }
            _ => return Ok(None),
        };
        let value: Value = serde_json::from_str(text.as_str())
            .map_err(|e| SttError::Protocol(format!("message is not JSON: {e}")))?;
        let kind = value["message_type"].as_str().unwrap_or("(absent)");
        let words = || value["text"].as_str().unwrap_or("").trim().to_string();
        match kind {
            "session_started" => Ok(Some(SttEvent::SessionStarted(
                value["session_id"].as_str().unwrap_or("").to_string(),
            ))),
            "partial_transcript" => {
                let text = words();
                if text.is_empty() {
                    return Ok(None);
                }
                self.partials += 1;
                Ok(Some(SttEvent::Partial(text)))
            }
            COMMITTED | COMMITTED_WITH_TIMESTAMPS => {
                // With timestamps on, the service sends both for one segment, the timestamped
                // one after the plain one: one utterance, one commit. The second of a pair (in
                // either order) is its twin, whatever its text; a commit of the same kind as the
                // one before starts a new pair (a service sending only one of the two).
                let (this, twin) = if kind == COMMITTED {
                    (COMMITTED, COMMITTED_WITH_TIMESTAMPS)
                } else {
                    (COMMITTED_WITH_TIMESTAMPS, COMMITTED)
                };
                if self.unpaired_commit == Some(twin) {
                    self.unpaired_commit = None;
                    log::debug!(messageType = kind; "stt.commit.twin_skipped");
                    return Ok(None);
                }
                self.unpaired_commit = Some(this);
                let text = words();
                if text.is_empty() {
                    return Ok(None);
                }
                self.committed += 1;
                Ok(Some(SttEvent::Committed(text)))
            }
            kind if kind.contains("error") || ERROR_TYPES.contains(&kind) => {
                Err(SttError::Service {
                    kind: kind.to_string(),
                    message: value["error"]
                        .as_str()
                        .or(value["message"].as_str())
                        .unwrap_or("")
                        .to_string(),
                })
            }
            kind => {
                // final_transcript*, committed_transcript_entities and types added later.
                if self.unknown_types.insert(kind.to_string()) {
                    log::warn!(messageType = kind; "stt.message.unknown_type");
                }
                Ok(None)
            }
        }
    }

    /// Ends the session and says what it did; warns about a long session with no transcript.
    pub fn close(mut self) -> SttSummary {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
        let summary = SttSummary {
            audio_secs: self.audio_bytes as f64 / 8000.0,
            partials: self.partials,
            committed: self.committed,
            unknown_types: self.unknown_types.into_iter().collect(),
        };
        if summary.looks_silent() {
            log::warn!(
                audioSecs = summary.audio_secs,
                partials = summary.partials;
                "STT produced NO committed transcripts despite receiving audio ({})",
                if summary.partials > 0 {
                    "partials arrived: suspect the VAD or commit settings"
                } else {
                    "nothing arrived: suspect the audio format or session settings"
                }
            );
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(commit: CommitStrategy) -> SttSettings {
        SttSettings {
            ws_base: BaseUrl::parse("wss://api.elevenlabs.io", &["wss"]).expect("a URL"),
            api_key: Secret::new("key"),
            model_id: "scribe_v2_realtime".into(),
            language_code: "en".into(),
            vad_silence_secs: 0.8,
            connect_timeout: Duration::from_secs(5),
            silent_service_limit: Duration::from_secs(20),
            chunk: Duration::from_millis(100),
            commit,
        }
    }

    #[test]
    fn the_url_asks_for_one_commit_strategy_and_only_its_parameters() {
        let base = "wss://api.elevenlabs.io/v1/speech-to-text/realtime?model_id=scribe_v2_realtime\
                    &audio_format=ulaw_8000&language_code=en";
        assert_eq!(
            SttStream::url(&settings(CommitStrategy::Vad)),
            format!("{base}&commit_strategy=vad&vad_silence_threshold_secs=0.8")
        );
        assert_eq!(
            SttStream::url(&settings(CommitStrategy::Manual)),
            format!("{base}&commit_strategy=manual")
        );
        // The commit is the documented message: empty audio, commit and sample rate set.
        let commit: Value = serde_json::from_str(COMMIT_MESSAGE).expect("JSON");
        assert_eq!(
            commit,
            serde_json::json!({"message_type": "input_audio_chunk", "audio_base_64": "",
                               "commit": true, "sample_rate": 8000})
        );
    }
}
