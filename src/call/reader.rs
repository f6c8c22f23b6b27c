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
use crate::twilio::media_messages::{self as twilio_messages, Inbound};

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
    let mut invalid = 0u32;
    let mut in_a_row = 0u32;
    let mut dropped_audio = 0u64;
    let mut decoded = Vec::with_capacity(FRAME_BYTES * 2);
    let gone = |end: End| {
        let _ = events.send(Event::TwilioGone(end));
    };
    loop {
        let message = match socket.read() {
            Ok(message) => message,
            Err(err) if crate::providers::ws::is_timeout(&err) => {
                gone(End::TwilioSilent);
                break;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                gone(End::TwilioClosed);
                break;
            }
            Err(err) => {
                gone(End::TwilioLost(err.to_string()));
                break;
            }
        };
        let bad = match message {
            Message::Text(text) => match twilio_messages::parse(text.as_str()) {
                Ok(Inbound::Media { payload, .. }) => {
                    decoded.clear();
                    match base64::engine::general_purpose::STANDARD
                        .decode_vec(payload.as_bytes(), &mut decoded)
                    {
                        Ok(()) => {
                            // Decoded once here: the STT worker's watchdog gets the verdict.
                            let loud = ulaw::is_voice(&decoded);
                            if loud {
                                voiced_ms.store(
                                    started.elapsed().as_millis() as u64 + 1,
                                    Ordering::Relaxed,
                                );
                            }
                            if audio.is_some_and(|feed| !feed.send(payload, loud)) {
                                dropped_audio += 1;
                            }
                            None
                        }
                        Err(err) => Some(format!("media payload is not base64: {err}")),
                    }
                }
                Ok(Inbound::Stop) => {
                    let _ = events.send(Event::Twilio(Inbound::Stop));
                    break;
                }
                Ok(other) => {
                    if events.send(Event::Twilio(other)).is_err() {
                        break;
                    }
                    None
                }
                Err(bad) => Some(bad.to_string()),
            },
            Message::Close(_) => {
                gone(End::TwilioClosed);
                break;
            }
            // RFC 6455: a ping is answered with a pong carrying its payload. tungstenite's own
            // reply goes into this half's sink; the call thread, the only writer, sends it.
            Message::Ping(payload) => {
                if events.send(Event::Ping(payload.to_vec())).is_err() {
                    break;
                }
                None
            }
            Message::Binary(_) => Some("binary frame".to_string()),
            Message::Pong(_) | Message::Frame(_) => None,
        };
        match bad {
            None => in_a_row = 0,
            Some(why) => {
                invalid += 1;
                in_a_row += 1;
                if invalid <= 3 || invalid.is_power_of_two() {
                    log::warn!(reason = why.as_str(), count = invalid; "twilio.message.invalid (skipped)");
                }
                if in_a_row >= MAX_INVALID_IN_A_ROW || invalid >= MAX_INVALID {
                    gone(End::TwilioInvalid(invalid));
                    break;
                }
            }
        }
    }
    if dropped_audio > 0 {
        log::warn!(frames = dropped_audio; "stt.audio.dropped while speech-to-text was not reading");
    }
}
