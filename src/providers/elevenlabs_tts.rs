//! ElevenLabs text-to-speech over its multi-context WebSocket
//! (`/v1/text-to-speech/{voice_id}/multi-stream-input`): one socket per call, opened before the
//! greeting and kept for the whole call, `ulaw_8000` audio (Twilio's own format: no
//! transcoding), `xi-api-key` in a header.
//!
//! Each piece of speech (a sentence or a phrase) is a context of its own, named by the caller
//! of [`TtsSocket::speak`]: the context is opened with the voice settings, given the piece's
//! text with `flush: true` (generate now: the text is complete), and closed at once
//! (`close_context`). A flushed context still speaks all of its text after the close (the
//! AsyncAPI: "if it has already been set to flush it will continue flushing"), and its
//! `isFinal` then comes right after its last audio: that is how the end of a piece is known.
//! Replies carry the `contextId` they belong to; audio of a context the caller no longer wants
//! (barge-in) is the caller's to drop.
//!
//! The service holds at most [`MAX_CONTEXTS`] contexts per socket, a context counting until its
//! `isFinal`; a context idle for `inactivity_timeout` seconds is closed by the service. While
//! the call has nothing to say, [`TtsSocket::keep_alive`] (`{"text":""}`) keeps the socket.
//! [`TtsSocket::close`] sends `close_socket` at the call's end.
//!
//! The socket asks for `sync_alignment`: each chunk of audio then comes with the characters it
//! speaks and when each starts within the chunk ([`Alignment`]), so the call knows which words
//! a caller heard of a piece cut off mid-way. An alignment that is absent, null or not what
//! the service documents is no alignment; the audio is used all the same.
//!
//! After the handshake the socket is non-blocking: its owner waits on [`TtsSocket::fd`] with
//! [`crate::poll`] and reads everything buffered with [`TtsSocket::read_events`]. No read
//! wakes on a tick.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::Message;

use super::ws::{self, ConnectError, Socket};
use crate::config::{BaseUrl, Secret};

/// Seconds without a message after which the service closes a context (its default is 20, its
/// maximum 180). A call's reply arrives within seconds, so the default suits; it is sent
/// explicitly so the limit is ours, not an unstated default.
pub const DEFAULT_INACTIVITY_SECS: u32 = 20;

/// Contexts one socket may hold at once (the service refuses a sixth with
/// `max_active_conversations`, close code 1008).
pub const MAX_CONTEXTS: usize = 5;

/// What the socket needs to know.
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
    /// The socket closed, or a write to it failed.
    Closed(String),
    /// A message we cannot read, or a request we will not send.
    Protocol(String),
    /// A piece ended (`isFinal`) without a single byte of audio for text that was sent.
    NoAudio {
        chars: u64,
    },
}

impl std::fmt::Display for TtsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TtsError::Connect(err) => write!(f, "tts: {err}"),
            TtsError::Service { error, message } => {
                write!(f, "tts socket failed: {error}: {message}")
            }
            TtsError::Closed(why) => write!(f, "tts socket closed: {why}"),
            TtsError::Protocol(what) => write!(f, "tts protocol: {what}"),
            TtsError::NoAudio { chars } => {
                write!(f, "tts piece ended with no audio for {chars} characters")
            }
        }
    }
}

impl std::error::Error for TtsError {}

impl TtsError {
    /// The `kind` label of this failure in `/metrics`.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            TtsError::Connect(err) => err.metric_kind(),
            TtsError::Service { .. } => "service",
            TtsError::Closed(_) => "closed",
            TtsError::Protocol(_) => "protocol",
            TtsError::NoAudio { .. } => "no_audio",
        }
    }
}

/// What the socket produced, for one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsEvent {
    /// μ-law 8 kHz audio, ready for Twilio.
    Audio { context: String, audio: Vec<u8> },
    /// The context has spoken all of its text and is gone.
    Final { context: String },
    /// Which characters the next `Audio` of this context speaks, and when (it comes just
    /// before that audio).
    Alignment {
        context: String,
        alignment: Alignment,
    },
}

/// Characters one chunk of audio speaks, in order, each with when it starts and ends in
/// milliseconds from the start of that chunk's audio (the service's `alignment`: times are
/// relative to the chunk, not to the whole piece).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alignment {
    /// The characters, joined.
    pub text: String,
    /// One per character: where it ends in `text` (a byte offset) and its times.
    pub chars: Vec<AlignedChar>,
}

/// One character of an [`Alignment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlignedChar {
    /// The byte offset in [`Alignment::text`] just after this character.
    pub end: usize,
    pub start_ms: u32,
    pub end_ms: u32,
}

/// Characters one chunk's alignment may hold: a chunk is a fraction of a sentence; anything
/// bigger is not what the service sends and is taken as no alignment.
pub const MAX_ALIGNED_CHARS: usize = 4096;

impl Alignment {
    /// The alignment in a server message's `alignment` field, or `None` when it is absent,
    /// null or malformed: three lists of one length (`chars` of strings, `charStartTimesMs`
    /// and `charDurationsMs` — older docs `charsDurationsMs` — of non-negative numbers).
    pub fn of(value: &Value) -> Option<Alignment> {
        let chars = value.get("chars")?.as_array()?;
        let starts = value.get("charStartTimesMs")?.as_array()?;
        let durations = value
            .get("charDurationsMs")
            .or_else(|| value.get("charsDurationsMs"))?
            .as_array()?;
        if chars.is_empty()
            || chars.len() > MAX_ALIGNED_CHARS
            || starts.len() != chars.len()
            || durations.len() != chars.len()
        {
            return None;
        }
        let ms = |v: &Value| -> Option<u32> {
            let ms = v.as_f64().filter(|ms| ms.is_finite() && *ms >= 0.0)?;
            Some(ms.min(f64::from(u32::MAX)).round() as u32)
        };
        let mut alignment = Alignment {
            text: String::new(),
            chars: Vec::with_capacity(chars.len()),
        };
        for ((c, start), duration) in chars.iter().zip(starts).zip(durations) {
            alignment.text.push_str(c.as_str()?);
            let start_ms = ms(start)?;
            alignment.chars.push(AlignedChar {
                end: alignment.text.len(),
                start_ms,
                end_ms: start_ms.saturating_add(ms(duration)?),
            });
        }
        Some(alignment)
    }
}

/// The opening message of every context: the voice and the chunk schedule. The schedule
/// matters little (every piece is flushed) but is the original's: 50 characters.
fn context_opening(context: &str) -> Value {
    json!({
        "text": " ",
        "context_id": context,
        "voice_settings": {
            "stability": 0.5,
            "similarity_boost": 0.75,
            "style": 0.0,
            "use_speaker_boost": true,
            "speed": 1.0,
        },
        "generation_config": {"chunk_length_schedule": [50]},
    })
}

/// One call's text-to-speech socket.
pub struct TtsSocket {
    socket: Socket,
    /// A write returned WouldBlock: messages wait in tungstenite's (or rustls') buffer until
    /// [`TtsSocket::flush`] gets them out.
    unflushed: bool,
    /// The close frame arrived or was sent: the socket is done.
    closed: bool,
}

impl TtsSocket {
    /// The socket URL for `voice_id`.
    pub fn url(settings: &TtsSettings, voice_id: &str) -> String {
        format!(
            "{}/v1/text-to-speech/{voice_id}/multi-stream-input?model_id={}&output_format=ulaw_8000&inactivity_timeout={}&sync_alignment=true",
            settings.ws_base,
            settings.model_id,
            settings.inactivity_secs.clamp(1, 180)
        )
    }

    /// Opens the socket (blocking, bounded by the connect timeout), then makes it non-blocking.
    pub fn open(settings: &TtsSettings, voice_id: &str) -> Result<TtsSocket, TtsError> {
        if !crate::personas::is_valid_voice_id(voice_id) {
            return Err(TtsError::Protocol(format!(
                "{voice_id:?} is not a voice id"
            )));
        }
        let socket = ws::connect(
            &TtsSocket::url(settings, voice_id),
            &[("xi-api-key", settings.api_key.expose())],
            settings.connect_timeout,
        )
        .map_err(TtsError::Connect)?;
        ws::tcp_of(&socket)
            .ok_or_else(|| TtsError::Protocol("unexpected tls backend".into()))?
            .set_nonblocking(true)
            .map_err(|e| TtsError::Closed(format!("cannot make the socket non-blocking: {e}")))?;
        Ok(TtsSocket {
            socket,
            unflushed: false,
            closed: false,
        })
    }

    /// Speaks `text` as the new context `context`: opens it, sends the text with `flush`, and
    /// closes it, so its `isFinal` follows its last audio. Returns the characters sent (what
    /// ElevenLabs bills); 0 and nothing sent for blank text. Never blocks.
    pub fn speak(&mut self, context: &str, text: &str) -> Result<u64, TtsError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(0);
        }
        if context.is_empty() {
            return Err(TtsError::Protocol("a context needs an id".into()));
        }
        // The service wants every chunk of text to end with a space.
        let text = format!("{text} ");
        self.send(&context_opening(context))?;
        self.send(&json!({"text": text, "context_id": context, "flush": true}))?;
        self.send(&json!({"context_id": context, "close_context": true}))?;
        Ok(text.chars().count() as u64)
    }

    /// Closes `context` (what barge-in does to a context still open for text).
    pub fn close_context(&mut self, context: &str) -> Result<(), TtsError> {
        self.send(&json!({"context_id": context, "close_context": true}))
    }

    /// Resets the service's inactivity clock without opening a context.
    pub fn keep_alive(&mut self) -> Result<(), TtsError> {
        self.send(&json!({"text": ""}))
    }

    fn send(&mut self, message: &Value) -> Result<(), TtsError> {
        if self.closed {
            return Err(TtsError::Closed("the socket is closed".into()));
        }
        // What is queued goes out with the next flush.
        let sent = ws::left_queued(self.socket.send(Message::text(message.to_string())));
        self.unflushed |= self.check(sent)?;
        Ok(())
    }

    /// A failed write or flush ends the socket.
    fn check(&mut self, result: tungstenite::Result<bool>) -> Result<bool, TtsError> {
        result.map_err(|err| {
            self.closed = true;
            TtsError::Closed(err.to_string())
        })
    }

    /// The socket's descriptor, to wait on: readable when an event may be buffered, writable
    /// when [`TtsSocket::wants_write`] can make progress.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        ws::fd_of(&self.socket)
    }

    /// Whether messages wait to be written (wait for the socket to be writable, then
    /// [`TtsSocket::flush`]).
    pub fn wants_write(&self) -> bool {
        self.unflushed
    }

    /// Writes what waits, as far as the socket takes it now.
    pub fn flush(&mut self) -> Result<(), TtsError> {
        let flushed = ws::left_queued(self.socket.flush());
        self.unflushed = self.check(flushed)?;
        Ok(())
    }

    /// Reads every message already received, without blocking, into `events`. An error ends
    /// the socket: the service's error message, its close, or a broken connection (events
    /// read before it stay in `events`).
    pub fn read_events(&mut self, events: &mut Vec<TtsEvent>) -> Result<(), TtsError> {
        loop {
            let message = match self.socket.read() {
                Ok(message) => message,
                Err(err) if ws::is_timeout(&err) => return Ok(()),
                Err(err) => {
                    self.closed = true;
                    return Err(TtsError::Closed(err.to_string()));
                }
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    self.closed = true;
                    let why = frame.map_or_else(
                        || "no reason".to_string(),
                        |f| format!("{} {}", u16::from(f.code), f.reason),
                    );
                    return Err(TtsError::Closed(why));
                }
                // Pings are answered by tungstenite; binary frames are not part of this protocol.
                _ => continue,
            };
            events_of(text.as_str(), events)?;
        }
    }

    /// Waits until `deadline` for events (for a thread with nothing else to wait on: tests,
    /// one-off checks): returns once at least one is in `events`, or the deadline passed.
    pub fn wait_events(
        &mut self,
        events: &mut Vec<TtsEvent>,
        deadline: Instant,
    ) -> Result<(), TtsError> {
        loop {
            self.read_events(events)?;
            if !events.is_empty() {
                return Ok(());
            }
            let Some(fd) = self.fd() else {
                return Err(TtsError::Protocol("unexpected tls backend".into()));
            };
            let mut watch = [crate::poll::Watch::read_write(fd, self.unflushed)];
            let ready = crate::poll::wait(&mut watch, Some(deadline))
                .map_err(|e| TtsError::Closed(format!("waiting for the socket: {e}")))?;
            if ready == 0 {
                return Ok(());
            }
            if watch[0].writable() && self.unflushed {
                self.flush()?;
            }
        }
    }

    /// Ends the socket (the call's end): `close_socket`, then the close frame, without
    /// waiting for an answer.
    pub fn close(mut self) {
        if !self.closed {
            let _ = self.send(&json!({"close_socket": true}));
            let _ = self.socket.close(None);
            let _ = self.socket.flush();
        }
    }
}

/// The fields of a service message that mean something to us, each as any JSON (a field of
/// an unexpected type reads as absent). The rest — `normalizedAlignment` above all, as long
/// as `alignment` — is skipped without being built.
#[derive(serde::Deserialize)]
struct ServerMessage {
    #[serde(default)]
    error: Value,
    #[serde(default)]
    message: Value,
    #[serde(default)]
    audio: Value,
    #[serde(default, rename = "contextId")]
    context_id: Value,
    #[serde(default, rename = "context_id")]
    context_id_snake: Value,
    #[serde(default, rename = "isFinal")]
    is_final: Value,
    #[serde(default, rename = "is_final")]
    is_final_snake: Value,
    #[serde(default)]
    alignment: Value,
}

impl ServerMessage {
    fn from_any(value: Value) -> ServerMessage {
        let mut object = match value {
            Value::Object(object) => object,
            _ => serde_json::Map::new(),
        };
        let mut take = |key: &str| object.remove(key).unwrap_or(Value::Null);
        ServerMessage {
            error: take("error"),
            message: take("message"),
            audio: take("audio"),
            context_id: take("contextId"),
            context_id_snake: take("context_id"),
            is_final: take("isFinal"),
            is_final_snake: take("is_final"),
            alignment: take("alignment"),
        }
    }
}

/// What one text message from the service means, added to `events`: audio (after its
/// alignment, when it has one), the end of a context (after the audio, if a message carries
/// both), nothing we use (alignment without audio), or an error.
pub fn events_of(text: &str, events: &mut Vec<TtsEvent>) -> Result<(), TtsError> {
    let value = match serde_json::from_str::<ServerMessage>(text) {
        Ok(message) => message,
        // Not an object, or a key given twice: read as any JSON (the last of a repeated key
        // wins), meaning nothing where it is not an object.
        Err(_) => ServerMessage::from_any(
            serde_json::from_str(text)
                .map_err(|e| TtsError::Protocol(format!("message is not JSON: {e}")))?,
        ),
    };
    if !value.error.is_null() {
        let error = &value.error;
        return Err(TtsError::Service {
            error: error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_string),
            message: value.message.as_str().unwrap_or("").to_string(),
        });
    }
    // The AsyncAPI's messages say `contextId` and `isFinal`; its examples and a third-party
    // client say `context_id` and `is_final`: both are accepted.
    let context = || {
        value
            .context_id
            .as_str()
            .or(value.context_id_snake.as_str())
            .map(str::to_string)
    };
    if let Some(audio) = value.audio.as_str().filter(|a| !a.is_empty()) {
        let context =
            context().ok_or_else(|| TtsError::Protocol("audio without a contextId".to_string()))?;
        let audio = base64::engine::general_purpose::STANDARD
            .decode(audio)
            .map_err(|e| TtsError::Protocol(format!("audio is not base64: {e}")))?;
        // `alignment`, not `normalizedAlignment`: the words as sent, not as the service
        // spelled out numbers and abbreviations.
        if let Some(alignment) = Alignment::of(&value.alignment) {
            events.push(TtsEvent::Alignment {
                context: context.clone(),
                alignment,
            });
        }
        events.push(TtsEvent::Audio { context, audio });
    }
    let is_final = value.is_final.as_bool().or(value.is_final_snake.as_bool());
    if is_final == Some(true) {
        let context = context()
            .ok_or_else(|| TtsError::Protocol("isFinal without a contextId".to_string()))?;
        events.push(TtsEvent::Final { context });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_of(text: &str) -> Result<Vec<TtsEvent>, TtsError> {
        let mut events = Vec::new();
        events_of(text, &mut events).map(|()| events)
    }

    #[test]
    fn replies_are_read_in_either_spelling() {
        assert_eq!(
            event_of(r#"{"audio":"AAEC","contextId":"1-0","isFinal":false}"#),
            Ok(vec![TtsEvent::Audio {
                context: "1-0".into(),
                audio: vec![0, 1, 2]
            }])
        );
        assert_eq!(
            event_of(r#"{"is_final":true,"context_id":"1-0"}"#),
            Ok(vec![TtsEvent::Final {
                context: "1-0".into()
            }])
        );
        assert_eq!(
            event_of(r#"{"isFinal":true,"contextId":"2-1","audio":null}"#),
            Ok(vec![TtsEvent::Final {
                context: "2-1".into()
            }])
        );
        assert_eq!(
            event_of(r#"{"alignment":null,"contextId":"1-0"}"#),
            Ok(vec![])
        );
        // A last chunk that also ends its context: both, the audio first.
        assert_eq!(
            event_of(r#"{"audio":"AAEC","contextId":"3-0","isFinal":true}"#),
            Ok(vec![
                TtsEvent::Audio {
                    context: "3-0".into(),
                    audio: vec![0, 1, 2]
                },
                TtsEvent::Final {
                    context: "3-0".into()
                }
            ])
        );
    }

    #[test]
    fn an_alignment_comes_before_its_audio_in_either_duration_spelling() {
        let events = event_of(
            r#"{"audio":"AAEC","contextId":"1-0","alignment":{"chars":["H","i"," "],"charStartTimesMs":[0,70,140],"charDurationsMs":[70,70,30]},"normalizedAlignment":{"chars":["x"],"charStartTimesMs":[0],"charDurationsMs":[1]}}"#,
        )
        .unwrap();
        let TtsEvent::Alignment { context, alignment } = &events[0] else {
            panic!("an alignment first: {events:?}");
        };
        assert_eq!(context, "1-0");
        assert_eq!(alignment.text, "Hi ");
        assert_eq!(
            alignment.chars,
            vec![
                AlignedChar {
                    end: 1,
                    start_ms: 0,
                    end_ms: 70
                },
                AlignedChar {
                    end: 2,
                    start_ms: 70,
                    end_ms: 140
                },
                AlignedChar {
                    end: 3,
                    start_ms: 140,
                    end_ms: 170
                },
            ]
        );
        assert!(matches!(events[1], TtsEvent::Audio { .. }));
        assert_eq!(events.len(), 2);
        let older = event_of(
            r#"{"audio":"AAEC","contextId":"1-0","alignment":{"chars":["é"],"charStartTimesMs":[5.4],"charsDurationsMs":[10]}}"#,
        )
        .unwrap();
        assert!(matches!(
            &older[0],
            TtsEvent::Alignment { alignment, .. }
                if alignment.text == "é" && alignment.chars[0] == AlignedChar { end: 2, start_ms: 5, end_ms: 15 }
        ));
    }

    #[test]
    fn an_odd_alignment_is_no_alignment_and_the_audio_still_comes() {
        for odd in [
            "null",
            "{}",
            "[]",
            r#"{"chars":[],"charStartTimesMs":[],"charDurationsMs":[]}"#,
            r#"{"chars":["a","b"],"charStartTimesMs":[0],"charDurationsMs":[1,1]}"#,
            r#"{"chars":["a"],"charStartTimesMs":[-1],"charDurationsMs":[1]}"#,
            r#"{"chars":[1],"charStartTimesMs":[0],"charDurationsMs":[1]}"#,
            r#"{"chars":["a"],"charStartTimesMs":["0"],"charDurationsMs":[1]}"#,
            r#"{"chars":["a"],"charStartTimesMs":[0]}"#,
        ] {
            let message = format!(r#"{{"audio":"AAEC","contextId":"1-0","alignment":{odd}}}"#);
            assert_eq!(
                event_of(&message),
                Ok(vec![TtsEvent::Audio {
                    context: "1-0".into(),
                    audio: vec![0, 1, 2]
                }]),
                "{odd}"
            );
        }
        // Alignment without audio describes nothing.
        assert_eq!(
            event_of(
                r#"{"contextId":"1-0","alignment":{"chars":["a"],"charStartTimesMs":[0],"charDurationsMs":[1]}}"#
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn errors_and_nonsense_are_errors() {
        assert_eq!(
            event_of(
                r#"{"message":"Maximum simultaneous contexts","error":"max_active_conversations","code":1008}"#
            ),
            Err(TtsError::Service {
                error: "max_active_conversations".into(),
                message: "Maximum simultaneous contexts".into()
            })
        );
        assert!(matches!(event_of("not json"), Err(TtsError::Protocol(_))));
        assert!(matches!(
            event_of(r#"{"audio":"AAEC"}"#),
            Err(TtsError::Protocol(_))
        ));
        assert!(matches!(
            event_of(r#"{"audio":"!!","contextId":"x"}"#),
            Err(TtsError::Protocol(_))
        ));
    }
}
