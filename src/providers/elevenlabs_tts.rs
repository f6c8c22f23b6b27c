//! ElevenLabs text-to-speech over its `stream-input` WebSocket, one socket per assistant
//! response, `ulaw_8000` audio (Twilio's own format: no transcoding), `xi-api-key` in a header.
//!
//! The original's trap: `{"text":""}` is end-of-sequence — the service generates what is left,
//! sends `isFinal` and closes — and it kept sending later replies into that closed socket, so
//! every reply after the first was lost. Here a stream is opened per response and refuses text
//! after [`TtsStream::end_input`]. Each sentence is sent with `flush: true`: it is complete, and
//! waiting for the chunk schedule would only add silence. [`TtsStream::abandon`] drops a stream
//! mid-sentence (barge-in) without waiting for it.
//!
//! Reads block until the next message or a deadline the caller gives
//! ([`TtsStream::next_event`]): no read wakes up on a tick. Another thread can end a blocked
//! read at once through [`TtsStream::interrupt_handle`].

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::Message;

use super::ws::{self, ConnectError, Socket};
use crate::config::{BaseUrl, Secret};

/// Seconds without text after which the service closes the socket (its default is 20, its
/// maximum 180). A call's reply arrives within seconds, so the default suits; it is sent
/// explicitly so the limit is ours, not an unstated default.
pub const DEFAULT_INACTIVITY_SECS: u32 = 20;

/// What a stream needs to know.
#[derive(Clone, Debug)]
pub struct TtsSettings {
    pub ws_base: BaseUrl,
    pub api_key: Secret,
    pub model_id: String,
    pub connect_timeout: Duration,
    /// The service's `inactivity_timeout`, 1–180 seconds.
    pub inactivity_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsError {
    Connect(ConnectError),
    /// The service reported an error (e.g. `input_timeout_exceeded`) — the socket is done.
    Service {
        error: String,
        message: String,
    },
    /// The socket closed before `isFinal`.
    Closed(String),
    /// Text after end of input, or a message we cannot read.
    Protocol(String),
    /// The stream ended (`isFinal`) without a single byte of audio for text that was sent.
    NoAudio {
        chars: u64,
    },
}

impl std::fmt::Display for TtsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TtsError::Connect(err) => write!(f, "tts: {err}"),
            TtsError::Service { error, message } => {
                write!(f, "tts stream failed: {error}: {message}")
            }
            TtsError::Closed(why) => write!(f, "tts stream closed early: {why}"),
            TtsError::Protocol(what) => write!(f, "tts protocol: {what}"),
            TtsError::NoAudio { chars } => {
                write!(f, "tts stream ended with no audio for {chars} characters")
            }
        }
    }
}

impl std::error::Error for TtsError {}

/// What a stream produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsEvent {
    /// μ-law 8 kHz audio, ready for Twilio.
    Audio(Vec<u8>),
    /// All text sent has been spoken.
    Final,
}

/// One response's speech.
pub struct TtsStream {
    socket: Socket,
    chars_sent: u64,
    input_ended: bool,
    finished: bool,
}

impl TtsStream {
    /// The socket URL for `voice_id`.
    pub fn url(settings: &TtsSettings, voice_id: &str) -> String {
        format!(
            "{}/v1/text-to-speech/{voice_id}/stream-input?model_id={}&output_format=ulaw_8000&inactivity_timeout={}",
            settings.ws_base,
            settings.model_id,
            settings.inactivity_secs.clamp(1, 180)
        )
    }

    /// Opens a stream and sends the opening message (voice settings, chunk schedule).
    pub fn open(settings: &TtsSettings, voice_id: &str) -> Result<TtsStream, TtsError> {
        if !crate::personas::is_valid_voice_id(voice_id) {
            return Err(TtsError::Protocol(format!(
                "{voice_id:?} is not a voice id"
            )));
        }
        let mut socket = ws::connect(
            &TtsStream::url(settings, voice_id),
            &[("xi-api-key", settings.api_key.expose())],
            settings.connect_timeout,
        )
        .map_err(TtsError::Connect)?;
        let opening = json!({
            "text": " ",
            "voice_settings": {
                "stability": 0.5,
                "similarity_boost": 0.75,
                "style": 0.0,
                "use_speaker_boost": true,
                "speed": 1.0,
            },
            // The original's schedule: start generating after 50 characters.
            "generation_config": {"chunk_length_schedule": [50]},
        });
        socket
            .send(Message::text(opening.to_string()))
            .map_err(|e| TtsError::Closed(e.to_string()))?;
        Ok(TtsStream {
            socket,
            chars_sent: 0,
            input_ended: false,
            finished: false,
        })
    }

    /// Sends one complete sentence and asks for its audio now.
    pub fn send_sentence(&mut self, sentence: &str) -> Result<(), TtsError> {
        if self.input_ended {
            return Err(TtsError::Protocol("text after the end of input".into()));
        }
        let mut text = sentence.trim().to_string();
        if text.is_empty() {
            return Ok(());
        }
        // The service wants every chunk to end with a space.
        text.push(' ');
        self.chars_sent += text.chars().count() as u64;
        let message = json!({"text": text, "flush": true});
        self.socket
            .send(Message::text(message.to_string()))
            .map_err(|e| TtsError::Closed(e.to_string()))
    }

    /// Ends the input: the service speaks what is left, sends `isFinal`, and closes.
    pub fn end_input(&mut self) -> Result<(), TtsError> {
        if self.input_ended {
            return Ok(());
        }
        self.input_ended = true;
        self.socket
            .send(Message::text(json!({"text": ""}).to_string()))
            .map_err(|e| TtsError::Closed(e.to_string()))
    }

    /// The next audio or the end; waits until `deadline` at most. `None` when the deadline
    /// passed first, or when a message carried neither audio nor the end (ask again).
    pub fn next_event(&mut self, deadline: Instant) -> Result<Option<TtsEvent>, TtsError> {
        if self.finished {
            return Ok(Some(TtsEvent::Final));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        // The read waits for the deadline, not a tick. (A message already buffered by rustls
        // or tungstenite is returned without touching the socket.)
        ws::tcp_of(&self.socket)
            .ok_or_else(|| TtsError::Protocol("unexpected tls backend".into()))?
            .set_read_timeout(Some(left))
            .map_err(|e| TtsError::Closed(e.to_string()))?;
        let message = match self.socket.read() {
            Ok(message) => message,
            Err(err) if ws::is_timeout(&err) => return Ok(None),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)
                if self.input_ended =>
            {
                self.finished = true;
                return Ok(Some(TtsEvent::Final));
            }
            Err(err) => return Err(TtsError::Closed(err.to_string())),
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                if self.input_ended {
                    self.finished = true;
                    return Ok(Some(TtsEvent::Final));
                }
                let why = frame.map_or_else(
                    || "no reason".to_string(),
                    |f| format!("{} {}", u16::from(f.code), f.reason),
                );
                return Err(TtsError::Closed(why));
            }
            // Pings are answered by tungstenite; binary frames are not part of this protocol.
            _ => return Ok(None),
        };
        let value: Value = serde_json::from_str(text.as_str())
            .map_err(|e| TtsError::Protocol(format!("message is not JSON: {e}")))?;
        if let Some(error) = value.get("error") {
            return Err(TtsError::Service {
                error: error
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_string),
                message: value["message"].as_str().unwrap_or("").to_string(),
            });
        }
        if let Some(audio) = value["audio"].as_str().filter(|a| !a.is_empty()) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(audio)
                .map_err(|e| TtsError::Protocol(format!("audio is not base64: {e}")))?;
            return Ok(Some(TtsEvent::Audio(bytes)));
        }
        // The spec says isFinal; some servers and clients say is_final.
        let is_final = value["isFinal"].as_bool().or(value["is_final"].as_bool());
        if is_final == Some(true) {
            self.finished = true;
            return Ok(Some(TtsEvent::Final));
        }
        Ok(None)
    }

    /// A handle another thread can use to end this stream's blocked read at once (the end of
    /// the call): the read then fails with [`TtsError::Closed`].
    pub fn interrupt_handle(&self) -> Result<ws::Interrupt, TtsError> {
        ws::Interrupt::of(&self.socket).map_err(|e| TtsError::Closed(e.to_string()))
    }

    /// Characters sent for speech (what ElevenLabs bills).
    pub fn chars_sent(&self) -> u64 {
        self.chars_sent
    }

    /// Drops the stream now (barge-in): a close frame is sent without waiting for an answer,
    /// and the socket is closed when this returns.
    pub fn abandon(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}
