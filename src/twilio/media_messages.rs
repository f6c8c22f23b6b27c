//! Twilio Media Streams messages, both ways. Pure: parsing what Twilio sends (`connected`,
//! `start`, `media`, `mark`, `dtmf`, `stop`) and building what we send (`media`, `mark`,
//! `clear`). Twilio's examples carry `sequenceNumber`, `chunk` and `timestamp` as strings;
//! numbers are accepted too.
//!
//! Media is fifty messages a second per call, so it has its own path: parsed into borrowed
//! fields ([`Media`], the payload a slice of the message), and sent through [`MediaFrames`],
//! which builds each frame in one reused buffer. The other messages are a few per call.

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use tungstenite::protocol::frame::Utf8Bytes;

use crate::speech::audio_message::{AudioMessage, JsonText};

/// A message from Twilio: media, or one of the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Caller audio: it goes to speech-to-text, not to the call.
    Media(Media<'a>),
    Message(Inbound),
}

/// 20 ms of the caller's μ-law audio, base64 as Twilio sent it, borrowed from the message
/// (owned only if the JSON string had escapes to undo, such as `\/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media<'a> {
    pub payload: Cow<'a, str>,
    pub timestamp_ms: u64,
}

/// A message from Twilio other than media, as far as the call needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    Connected,
    Start(StreamStart),
    /// Audio queued before our mark of this name has played (or was cleared).
    Mark {
        name: String,
    },
    Dtmf {
        digit: String,
    },
    Stop,
}

/// The `start` message: which call, which stream, and our `<Parameter>`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStart {
    pub call_sid: String,
    pub stream_sid: String,
    pub account_sid: String,
    pub custom_parameters: Vec<(String, String)>,
    /// `audio/x-mulaw` at 8000 Hz, mono, is the only format this server speaks.
    pub media_format_ok: bool,
}

impl StreamStart {
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.custom_parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a message was not understood (counted and skipped by the call, never fatal alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadMessage {
    NotJson(String),
    /// JSON, but a field of the wrong type (a payload that is not a string).
    Shape(String),
    MissingField(&'static str),
    UnknownEvent(String),
}

impl std::fmt::Display for BadMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadMessage::NotJson(err) => write!(f, "not JSON: {err}"),
            BadMessage::Shape(err) => write!(f, "unexpected shape: {err}"),
            BadMessage::MissingField(field) => write!(f, "missing {field}"),
            BadMessage::UnknownEvent(event) => write!(f, "unknown event {event:?}"),
        }
    }
}

/// What the media path reads of any message: the event, and a `media` object's fields.
/// Everything else is skipped unread; nothing is allocated unless a string has escapes.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<JsonText<'a>>,
    #[serde(borrow)]
    media: Option<MediaBody<'a>>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow)]
    payload: Option<JsonText<'a>>,
    timestamp: Option<Number>,
}

/// A number Twilio may send as a string (`"8000"`) or as a number; anything else that is not
/// an object or a list reads as no number.
struct Number(Option<u64>);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number, or a string holding one")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
                Ok(Number(v.parse().ok()))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// Parses one text frame from Twilio. A media message allocates nothing: its payload is
/// borrowed from `text`.
pub fn parse(text: &str) -> Result<Received<'_>, BadMessage> {
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            BadMessage::Shape(e.to_string())
        } else {
            BadMessage::NotJson(e.to_string())
        }
    })?;
    let event = envelope.event.ok_or(BadMessage::MissingField("event"))?;
    if event.0 != "media" {
        return parse_message(text, &event.0).map(Received::Message);
    }
    let media = envelope
        .media
        .ok_or(BadMessage::MissingField("media.payload"))?;
    let payload = media
        .payload
        .ok_or(BadMessage::MissingField("media.payload"))?;
    Ok(Received::Media(Media {
        payload: payload.0,
        timestamp_ms: media.timestamp.and_then(|n| n.0).unwrap_or(0),
    }))
}

/// A message other than media (a few per call: read as a JSON value).
fn parse_message(text: &str, event: &str) -> Result<Inbound, BadMessage> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| BadMessage::NotJson(e.to_string()))?;
    let string = |v: &Value, field: &'static str| {
        v.as_str()
            .map(str::to_string)
            .ok_or(BadMessage::MissingField(field))
    };
    match event {
        "connected" => Ok(Inbound::Connected),
        "start" => {
            let start = &value["start"];
            let custom_parameters = start["customParameters"]
                .as_object()
                .map(|params| {
                    params
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let format = &start["mediaFormat"];
            let media_format_ok = format.is_null()
                || (format["encoding"] == "audio/x-mulaw"
                    && number(&format["sampleRate"]) == Some(8000)
                    && number(&format["channels"]).unwrap_or(1) == 1);
            Ok(Inbound::Start(StreamStart {
                call_sid: string(&start["callSid"], "start.callSid")?,
                stream_sid: string(&start["streamSid"], "start.streamSid")
                    .or_else(|_| string(&value["streamSid"], "streamSid"))?,
                account_sid: start["accountSid"].as_str().unwrap_or("").to_string(),
                custom_parameters,
                media_format_ok,
            }))
        }
        "mark" => Ok(Inbound::Mark {
            name: string(&value["mark"]["name"], "mark.name")?,
        }),
        "dtmf" => Ok(Inbound::Dtmf {
            digit: string(&value["dtmf"]["digit"], "dtmf.digit")?,
        }),
        "stop" => Ok(Inbound::Stop),
        other => Err(BadMessage::UnknownEvent(other.to_string())),
    }
}

/// A number Twilio may send as a string (`"8000"`) or as a number.
fn number(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// `{"event":"media","streamSid":…,"media":{"payload":…}}`, μ-law audio for the caller, for
/// one stream: each frame built in the same reused buffer (see [`AudioMessage`]).
#[derive(Debug)]
pub struct MediaFrames(AudioMessage);

impl MediaFrames {
    pub fn new(stream_sid: &str) -> MediaFrames {
        // Through serde_json, so the SID is a JSON string whatever it holds.
        let sid = Value::from(stream_sid);
        MediaFrames(AudioMessage::new(
            format!(r#"{{"event":"media","streamSid":{sid},"media":{{"payload":""#),
            r#""}}"#,
        ))
    }

    /// The `media` message carrying `ulaw` (one 20 ms frame: 160 bytes). `None` never happens
    /// in practice (see [`AudioMessage::build`]).
    pub fn frame(&mut self, ulaw: &[u8]) -> Option<Utf8Bytes> {
        self.0.build(ulaw)
    }
}

/// `{"event":"mark",…}`: Twilio echoes it when the audio before it has played.
pub fn mark(stream_sid: &str, name: &str) -> String {
    json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).to_string()
}

/// `{"event":"clear",…}`: drop the audio Twilio has buffered (barge-in).
pub fn clear(stream_sid: &str) -> String {
    json!({"event": "clear", "streamSid": stream_sid}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// A message other than media.
    fn message(text: &str) -> Result<Inbound, BadMessage> {
        match parse(text)? {
            Received::Message(inbound) => Ok(inbound),
            Received::Media(media) => panic!("media: {media:?}"),
        }
    }

    fn media_of(payload: &str, timestamp_ms: u64) -> Result<Received<'_>, BadMessage> {
        Ok(Received::Media(Media {
            payload: payload.into(),
            timestamp_ms,
        }))
    }

    // Shapes from Twilio's Media Streams documentation.
    #[test]
    fn parses_every_inbound_event() {
        assert_eq!(
            message(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
            Ok(Inbound::Connected)
        );
        let start = message(
            r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1",
                "tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},
                "customParameters":{"role":"attorney","direction":"inbound"}},"streamSid":"MZ1"}"#,
        )
        .unwrap();
        let Inbound::Start(start) = start else {
            panic!("not a start")
        };
        assert_eq!(
            (start.call_sid.as_str(), start.stream_sid.as_str()),
            ("CA1", "MZ1")
        );
        assert_eq!(start.parameter("role"), Some("attorney"));
        assert!(start.media_format_ok);
        assert_eq!(
            parse(
                r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"/////w=="},"streamSid":"MZ1"}"#
            ),
            media_of("/////w==", 5)
        );
        assert_eq!(
            parse(r#"{"event":"media","media":{"timestamp":20,"payload":"AA=="}}"#),
            media_of("AA==", 20)
        );
        assert_eq!(
            message(
                r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"s-3"}}"#
            ),
            Ok(Inbound::Mark { name: "s-3".into() })
        );
        assert_eq!(
            message(
                r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#
            ),
            Ok(Inbound::Dtmf { digit: "1".into() })
        );
        assert_eq!(
            message(
                r#"{"event":"stop","sequenceNumber":"6","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#
            ),
            Ok(Inbound::Stop)
        );
    }

    #[test]
    fn a_media_payload_is_borrowed_unless_it_has_escapes() {
        let text = r#"{"event":"media","media":{"payload":"AAEC/w=="}}"#;
        let Ok(Received::Media(media)) = parse(text) else {
            panic!("not media")
        };
        assert!(matches!(media.payload, Cow::Borrowed(_)));
        // A JSON encoder may write `/` as `\/`: the payload is then unescaped into its own string.
        let Ok(Received::Media(media)) =
            parse(r#"{"event":"media","media":{"payload":"AAEC\/w==","timestamp":-1}}"#)
        else {
            panic!("not media")
        };
        assert_eq!(
            (media.payload, media.timestamp_ms),
            (Cow::Owned("AAEC/w==".to_string()), 0)
        );
    }

    #[test]
    fn a_foreign_media_format_is_noticed() {
        let Ok(Inbound::Start(start)) = message(
            r#"{"event":"start","start":{"streamSid":"MZ1","callSid":"CA1","mediaFormat":{"encoding":"audio/l16","sampleRate":16000,"channels":1}}}"#,
        ) else {
            panic!("not a start")
        };
        assert!(!start.media_format_ok);
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        assert!(matches!(parse("{not json"), Err(BadMessage::NotJson(_))));
        assert_eq!(
            parse(r#"{"media":{}}"#),
            Err(BadMessage::MissingField("event"))
        );
        assert_eq!(
            parse(r#"{"event":"media","media":{}}"#),
            Err(BadMessage::MissingField("media.payload"))
        );
        assert_eq!(
            parse(r#"{"event":"media","media":{"payload":5}}"#).map(|_| ()),
            Err(BadMessage::Shape(
                "invalid type: integer `5`, expected a string at line 1 column 37".into()
            ))
        );
        assert_eq!(
            parse(r#"{"event":"start","start":{}}"#),
            Err(BadMessage::MissingField("start.callSid"))
        );
        assert_eq!(
            parse(r#"{"event":"party"}"#),
            Err(BadMessage::UnknownEvent("party".into()))
        );
    }

    #[test]
    fn outbound_messages_have_twilios_shapes() {
        let mut frames = MediaFrames::new("MZ1");
        for audio in [&[0u8, 1, 2][..], &[0xFF; 160][..]] {
            let media: Value = serde_json::from_str(frames.frame(audio).unwrap().as_str()).unwrap();
            let payload = base64::engine::general_purpose::STANDARD.encode(audio);
            assert_eq!(
                media,
                json!({"event": "media", "streamSid": "MZ1", "media": {"payload": payload}})
            );
        }
        let odd: Value =
            serde_json::from_str(MediaFrames::new("M\"Z").frame(&[]).unwrap().as_str()).unwrap();
        assert_eq!(odd["streamSid"], "M\"Z");
        let mark: Value = serde_json::from_str(&mark("MZ1", "s-1")).unwrap();
        assert_eq!(
            mark,
            json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": "s-1"}})
        );
        let clear: Value = serde_json::from_str(&clear("MZ1")).unwrap();
        assert_eq!(clear, json!({"event": "clear", "streamSid": "MZ1"}));
    }
}
