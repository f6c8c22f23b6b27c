//! The JSON text messages that carry μ-law audio as base64 (Twilio's `media`, ElevenLabs'
//! `input_audio_chunk`), fifty a second per call each way: built in one reused buffer
//! ([`AudioMessage`]: only the base64 changes from one message to the next, the JSON around it
//! is fixed for the socket's life), and read in place ([`JsonText`]).
//!
//! A message is handed out as [`Utf8Bytes`] split off the buffer; the WebSocket copies it into
//! its own write buffer and drops it, so when the next message is built the buffer is the only
//! owner of its allocation again and takes it back: building a message allocates nothing once
//! the buffer has grown to its size.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::BytesMut;
use serde::de::{Deserialize, Deserializer, Error, Visitor};
use tungstenite::protocol::frame::Utf8Bytes;

/// A JSON string, borrowed from the message unless it had escapes to undo (such as `\/`).
/// serde borrows a `Cow<str>` field only when it stands alone; inside an `Option` (a field
/// that may be absent) it would always be copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonText<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = JsonText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<JsonText<'de>, E> {
                Ok(JsonText(Cow::Borrowed(v)))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<JsonText<'de>, E> {
                Ok(JsonText(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: Error>(self, v: String) -> Result<JsonText<'de>, E> {
                Ok(JsonText(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Messages of one shape: `head`, the audio in base64, `tail`.
#[derive(Debug)]
pub struct AudioMessage {
    head: Box<str>,
    tail: &'static str,
    buf: BytesMut,
}

impl AudioMessage {
    /// Messages that are `head` + base64 + `tail`; `head` and `tail` must make the base64 a
    /// JSON string (they end and start with its quotes).
    pub fn new(head: String, tail: &'static str) -> AudioMessage {
        AudioMessage {
            head: head.into_boxed_str(),
            tail,
            buf: BytesMut::new(),
        }
    }

    /// The message carrying `ulaw`. `None` only if base64 could not be written where it was
    /// sized to fit, or the result were not UTF-8: neither happens (the encoder's contract),
    /// but a caller that gets one skips the audio rather than the process panicking.
    pub fn build(&mut self, ulaw: &[u8]) -> Option<Utf8Bytes> {
        let encoded = base64::encoded_len(ulaw.len(), true)?;
        let len = self.head.len() + encoded + self.tail.len();
        // Takes the whole allocation back when the last message built from it was dropped.
        self.buf.reserve(len);
        self.buf.extend_from_slice(self.head.as_bytes());
        let at = self.buf.len();
        self.buf.resize(at + encoded, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(ulaw, &mut self.buf[at..])
            .ok();
        if written != Some(encoded) {
            self.buf.clear();
            return None;
        }
        self.buf.extend_from_slice(self.tail.as_bytes());
        Utf8Bytes::try_from(self.buf.split().freeze()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio_of(message: &Utf8Bytes) -> Vec<u8> {
        let value: serde_json::Value = serde_json::from_str(message.as_str()).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(value["audio"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn each_message_carries_its_own_audio() {
        let mut messages = AudioMessage::new(r#"{"audio":""#.to_string(), r#""}"#);
        assert_eq!(
            messages.build(&[0, 1, 2, 3]).unwrap().as_str(),
            r#"{"audio":"AAECAw=="}"#
        );
        // A message still held when the next is built keeps its bytes (the next goes elsewhere).
        let held = messages.build(&[0xFF; 160]).unwrap();
        let next = messages.build(&[0x7F; 161]).unwrap();
        assert_eq!(audio_of(&held), vec![0xFF; 160]);
        assert_eq!(audio_of(&next), vec![0x7F; 161]);
        drop((held, next));
        assert_eq!(messages.build(&[]).unwrap().as_str(), r#"{"audio":""}"#);
    }
}
