//! The `call-N-rx` thread: reads the Twilio socket, sends the call its messages, and the
//! caller's audio straight to speech-to-text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine as _;
use crossbeam_channel::Sender;
use tungstenite::{Message, WebSocket};

use super::end::End;
use super::socket::ReadHalf;
use super::workers::AudioFeed;
use super::Event;
use crate::speech::ulaw::{self, FRAME_BYTES};
use crate::twilio::media_messages::{self as twilio_messages, Inbound, Received};

/// Invalid messages from Twilio in a row, or in all, after which the call is ended.
const MAX_INVALID_IN_A_ROW: u32 = 50;
const MAX_INVALID: u32 = 500;

/// The reading half of the Twilio socket: messages to the call, caller audio to
/// speech-to-text, invalid messages counted (a flood ends the call).
pub(super) fn twilio_reader(
    mut socket: WebSocket<ReadHalf>,
    events: &Sender<Event>,
    audio: Option<&AudioFeed>,
    voiced_ms: &AtomicU64,
    started: Instant,
) {
    let mut reader = TwilioReader::new(events, audio, voiced_ms, started);
    loop {
        let message = match socket.read() {
            Ok(message) => message,
            Err(err) if crate::providers::ws::is_timeout(&err) => {
                reader.gone(End::TwilioSilent);
                break;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                reader.gone(End::TwilioClosed);
                break;
            }
            Err(err) => {
                reader.gone(End::TwilioLost(err.to_string()));
                break;
            }
        };
        if !reader.on_message(message) {
            break;
        }
    }
    if reader.dropped_audio > 0 {
        log::warn!(frames = reader.dropped_audio; "stt.audio.dropped while speech-to-text was not reading");
    }
}

/// What the reader does with each message from Twilio, apart from the socket (the tests that
/// count a frame's allocations drive it too). A media frame is decoded once, into a reused
/// buffer, for its loudness and for speech-to-text: it allocates nothing.
pub struct TwilioReader<'a> {
    events: &'a Sender<Event>,
    audio: Option<&'a AudioFeed>,
    /// The last loud frame, in milliseconds from `started` plus one (see `call::Call`).
    voiced_ms: &'a AtomicU64,
    started: Instant,
    decoded: Vec<u8>,
    dropped_audio: u64,
    invalid: u32,
    in_a_row: u32,
}

impl<'a> TwilioReader<'a> {
    pub fn new(
        events: &'a Sender<Event>,
        audio: Option<&'a AudioFeed>,
        voiced_ms: &'a AtomicU64,
        started: Instant,
    ) -> TwilioReader<'a> {
        TwilioReader {
            events,
            audio,
            voiced_ms,
            started,
            decoded: Vec::with_capacity(FRAME_BYTES * 2),
            dropped_audio: 0,
            invalid: 0,
            in_a_row: 0,
        }
    }

    /// Tells the call that the connection is over, and how.
    fn gone(&self, end: End) {
        let _ = self.events.send(Event::TwilioGone(end));
    }

    /// Handles one message; false when reading should stop (the call was told why).
    pub fn on_message(&mut self, message: Message) -> bool {
        let bad = match message {
            Message::Text(text) => match twilio_messages::parse(text.as_str()) {
                Ok(Received::Media(media)) => self.on_media(&media.payload),
                Ok(Received::Message(Inbound::Stop)) => {
                    let _ = self.events.send(Event::Twilio(Inbound::Stop));
                    return false;
                }
                Ok(Received::Message(other)) => {
                    if self.events.send(Event::Twilio(other)).is_err() {
                        return false;
                    }
                    None
                }
                Err(bad) => Some(bad.to_string()),
            },
            Message::Close(_) => {
                self.gone(End::TwilioClosed);
                return false;
            }
            // RFC 6455: a ping is answered with a pong carrying its payload. tungstenite's own
            // reply goes into this half's sink; the call thread, the only writer, sends it.
            Message::Ping(payload) => {
                if self.events.send(Event::Ping(payload.to_vec())).is_err() {
                    return false;
                }
                None
            }
            Message::Binary(_) => Some("binary frame".to_string()),
            Message::Pong(_) | Message::Frame(_) => None,
        };
        match bad {
            None => self.in_a_row = 0,
            Some(why) => {
                self.invalid += 1;
                self.in_a_row += 1;
                let invalid = self.invalid;
                if invalid <= 3 || invalid.is_power_of_two() {
                    log::warn!(reason = why.as_str(), count = invalid; "twilio.message.invalid (skipped)");
                }
                if self.in_a_row >= MAX_INVALID_IN_A_ROW || invalid >= MAX_INVALID {
                    self.gone(End::TwilioInvalid(invalid));
                    return false;
                }
            }
        }
        true
    }

    /// A media payload: its loudness noted, its audio fed to speech-to-text. `Some(why)` when
    /// it is not base64.
    fn on_media(&mut self, payload: &str) -> Option<String> {
        self.decoded.clear();
        if let Err(err) = base64::engine::general_purpose::STANDARD
            .decode_vec(payload.as_bytes(), &mut self.decoded)
        {
            return Some(format!("media payload is not base64: {err}"));
        }
        // Decoded once here: the call's silence timers and the STT worker's watchdog get the
        // verdict, speech-to-text the samples.
        let loud = ulaw::is_voice(&self.decoded);
        if loud {
            self.voiced_ms.store(
                self.started.elapsed().as_millis() as u64 + 1,
                Ordering::Relaxed,
            );
        }
        if self
            .audio
            .is_some_and(|feed| !feed.send(&self.decoded, loud))
        {
            self.dropped_audio += 1;
        }
        None
    }
}
