//! Twilio Media Streams messages, both ways. Pure: parsing what Twilio sends (`connected`,
//! `start`, `media`, `mark`, `dtmf`, `stop`) and building what we send (`media`, `mark`,
//! `clear`). Twilio's examples carry `sequenceNumber`, `chunk` and `timestamp` as strings;
//! numbers are accepted too. Media payloads stay base64: they go to speech-to-text as they are.

use serde_json::{json, Value};

/// A message from Twilio, as far as the call needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    Connected,
    Start(StreamStart),
    /// 20 ms of the caller's μ-law audio, base64 as Twilio sent it.
    Media {
        payload: String,
        timestamp_ms: u64,
    },
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
    MissingField(&'static str),
    UnknownEvent(String),
}

impl std::fmt::Display for BadMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadMessage::NotJson(err) => write!(f, "not JSON: {err}"),
            BadMessage::MissingField(field) => write!(f, "missing {field}"),
            BadMessage::UnknownEvent(event) => write!(f, "unknown event {event:?}"),
        }
    }
}

/// Parses one text frame from Twilio.
pub fn parse(text: &str) -> Result<Inbound, BadMessage> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| BadMessage::NotJson(e.to_string()))?;
    let event = value["event"]
        .as_str()
        .ok_or(BadMessage::MissingField("event"))?;
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
        "media" => Ok(Inbound::Media {
            payload: string(&value["media"]["payload"], "media.payload")?,
            timestamp_ms: number(&value["media"]["timestamp"]).unwrap_or(0),
        }),
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

/// `{"event":"media","streamSid":…,"media":{"payload":…}}`: μ-law audio for the caller.
pub fn media(stream_sid: &str, payload_base64: &str) -> String {
    json!({"event": "media", "streamSid": stream_sid, "media": {"payload": payload_base64}})
        .to_string()
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

    // Shapes from Twilio's Media Streams documentation.
    #[test]
    fn parses_every_inbound_event() {
        assert_eq!(
            parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
            Ok(Inbound::Connected)
        );
        let start = parse(
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
            Ok(Inbound::Media {
                payload: "/////w==".into(),
                timestamp_ms: 5
            })
        );
        assert_eq!(
            parse(r#"{"event":"media","media":{"timestamp":20,"payload":"AA=="}}"#),
            Ok(Inbound::Media {
                payload: "AA==".into(),
                timestamp_ms: 20
            })
        );
        assert_eq!(
            parse(
                r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"s-3"}}"#
            ),
            Ok(Inbound::Mark { name: "s-3".into() })
        );
        assert_eq!(
            parse(
                r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#
            ),
            Ok(Inbound::Dtmf { digit: "1".into() })
        );
        assert_eq!(
            parse(
                r#"{"event":"stop","sequenceNumber":"6","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#
            ),
            Ok(Inbound::Stop)
        );
    }

    #[test]
    fn a_foreign_media_format_is_noticed() {
        let Ok(Inbound::Start(start)) = parse(
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
        let media: Value = serde_json::from_str(&media("MZ1", "AAEC")).unwrap();
        assert_eq!(
            media,
            json!({"event": "media", "streamSid": "MZ1", "media": {"payload": "AAEC"}})
        );
        let mark: Value = serde_json::from_str(&mark("MZ1", "s-1")).unwrap();
        assert_eq!(
            mark,
            json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": "s-1"}})
        );
        let clear: Value = serde_json::from_str(&clear("MZ1")).unwrap();
        assert_eq!(clear, json!({"event": "clear", "streamSid": "MZ1"}));
    }
}
