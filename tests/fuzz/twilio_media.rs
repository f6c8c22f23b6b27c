//! Twilio's Media Streams messages: any text, and any JSON built of the words Twilio uses, is
//! parsed or refused without a panic; each message Twilio sends reads back with the fields it
//! was written with, however its numbers are spelled; what we send Twilio parses back to
//! what we meant; and the stream token a `start` carries admits its own call once, and nothing
//! else ever.

use base64::Engine as _;
use cotrackpro_voice::twilio::media_messages::{
    clear, mark, parse, BadMessage, Inbound, MediaFrames, Received,
};
use cotrackpro_voice::twilio::stream_token::{StreamTokens, TokenError, TOKEN_TTL_SECS};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::{config, edits, mutate, text};

/// The keys and string values Twilio's messages are made of.
const WORDS: &[&str] = &[
    "event",
    "media",
    "payload",
    "timestamp",
    "track",
    "chunk",
    "start",
    "callSid",
    "streamSid",
    "accountSid",
    "customParameters",
    "mediaFormat",
    "encoding",
    "sampleRate",
    "channels",
    "mark",
    "name",
    "dtmf",
    "digit",
    "stop",
    "connected",
    "sequenceNumber",
    "audio/x-mulaw",
    "8000",
    "1",
    "-1",
    "",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![3 => proptest::sample::select(WORDS).prop_map(str::to_string), 1 => text(8)]
}

/// Any JSON value, its object keys and strings mostly Twilio's words.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::vec((word(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// An object whose `event` is one of Twilio's, with any other fields.
fn twilio_like() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(&["media", "start", "mark", "dtmf", "stop", "connected"][..]),
        proptest::collection::vec((word(), json_value()), 0..5),
    )
        .prop_map(|(event, fields)| {
            let mut object: Map<String, Value> = fields.into_iter().collect();
            object.insert("event".into(), event.into());
            Value::Object(object)
        })
}

/// A number as Twilio may spell it: a JSON number or a string of digits.
fn spelled(n: u64, as_string: bool) -> Value {
    if as_string {
        Value::from(n.to_string())
    } else {
        Value::from(n)
    }
}

/// What `parse` must make of a media message's timestamp.
fn timestamp_of(value: &Value) -> u64 {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn any_text_is_parsed_or_refused(raw in text(120), json in twilio_like(), cuts in edits(4)) {
        let _ = parse(&raw);
        let _ = parse(&mutate(&json.to_string(), &cuts));
    }

    #[test]
    fn twilio_shaped_json_reads_as_its_fields_say(message in twilio_like()) {
        let text = message.to_string();
        let parsed = parse(&text);
        let media = message.get("media");
        // serde reads a struct from a list too, field by field in order: Twilio never sends
        // one, so only the absence of a panic is asked of it.
        if media.is_some_and(Value::is_array) {
            return Ok(());
        }
        // The media fields are read whatever the event, so a wrong type there refuses any.
        let media_shape_bad = media.is_some_and(|m| match m {
            Value::Null => false,
            Value::Object(o) => {
                o.get("payload").is_some_and(|p| !p.is_string() && !p.is_null())
                    || o.get("timestamp").is_some_and(|t| t.is_object() || t.is_array())
            }
            _ => true,
        });
        if media_shape_bad {
            prop_assert!(matches!(parsed, Err(BadMessage::Shape(_))), "{:?}", parsed);
            return Ok(());
        }
        let string = |v: &Value| v.as_str().map(str::to_string);
        let start = &message["start"];
        match (message["event"].as_str().unwrap_or_default(), parsed) {
            ("media", Ok(Received::Media(got))) => {
                prop_assert_eq!(Some(got.payload.to_string()), string(&message["media"]["payload"]));
                prop_assert_eq!(got.timestamp_ms, timestamp_of(&message["media"]["timestamp"]));
            }
            ("media", Err(BadMessage::MissingField(_))) => {
                prop_assert!(!message["media"]["payload"].is_string());
            }
            ("mark", Ok(Received::Message(Inbound::Mark { name }))) => {
                prop_assert_eq!(Some(name), string(&message["mark"]["name"]));
            }
            ("mark", Err(BadMessage::MissingField(_))) => {
                prop_assert!(!message["mark"]["name"].is_string());
            }
            ("dtmf", Ok(Received::Message(Inbound::Dtmf { digit }))) => {
                prop_assert_eq!(Some(digit), string(&message["dtmf"]["digit"]));
            }
            ("dtmf", Err(BadMessage::MissingField(_))) => {
                prop_assert!(!message["dtmf"]["digit"].is_string());
            }
            ("start", Ok(Received::Message(Inbound::Start(got)))) => {
                prop_assert_eq!(Some(got.call_sid), string(&start["callSid"]));
                let stream_sid = string(&start["streamSid"]).or_else(|| string(&message["streamSid"]));
                prop_assert_eq!(Some(got.stream_sid), stream_sid);
            }
            ("start", Err(BadMessage::MissingField(_))) => {
                prop_assert!(
                    !start["callSid"].is_string()
                        || !(start["streamSid"].is_string() || message["streamSid"].is_string())
                );
            }
            ("stop", Ok(Received::Message(Inbound::Stop)))
            | ("connected", Ok(Received::Message(Inbound::Connected))) => {}
            (event, got) => prop_assert!(false, "{:?} read as {:?}", event, got),
        }
    }

    #[test]
    fn a_start_message_reads_back(
        call_sid in text(40),
        stream_sid in text(40),
        account_sid in text(40),
        params in proptest::collection::btree_map(text(10), text(30), 0..4),
        rate_as_string in any::<bool>(),
        sequence in any::<u64>(),
        sid_at_top in any::<bool>(),
    ) {
        let mut start = json!({
            "accountSid": account_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {
                "encoding": "audio/x-mulaw",
                "sampleRate": spelled(8000, rate_as_string),
                "channels": spelled(1, !rate_as_string),
            },
            "customParameters": params,
        });
        let mut message = json!({"event": "start", "sequenceNumber": sequence.to_string(), "start": {}});
        // Twilio puts streamSid both inside `start` and beside it; either one is enough.
        if sid_at_top {
            message["streamSid"] = stream_sid.clone().into();
        } else {
            start["streamSid"] = stream_sid.clone().into();
        }
        message["start"] = start;
        let Ok(Received::Message(Inbound::Start(got))) = parse(&message.to_string()) else {
            return Err(TestCaseError::fail(format!("not a start: {message}")));
        };
        prop_assert_eq!(&got.call_sid, &call_sid);
        prop_assert_eq!(&got.stream_sid, &stream_sid);
        prop_assert_eq!(&got.account_sid, &account_sid);
        prop_assert!(got.media_format_ok);
        let mut got_params = got.custom_parameters.clone();
        got_params.sort();
        prop_assert_eq!(got_params, params.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_media_message_reads_back(
        audio in proptest::collection::vec(any::<u8>(), 0..200),
        timestamp in any::<u64>(),
        as_string in any::<bool>(),
        slash_escaped in any::<bool>(),
    ) {
        let payload = base64::engine::general_purpose::STANDARD.encode(&audio);
        let mut text = json!({
            "event": "media",
            "sequenceNumber": "3",
            "media": {"track": "inbound", "chunk": "1", "timestamp": spelled(timestamp, as_string), "payload": payload},
            "streamSid": "MZ1",
        })
        .to_string();
        if slash_escaped {
            // Some JSON encoders write `/` as `\/`.
            text = text.replace('/', "\\/");
        }
        let Ok(Received::Media(media)) = parse(&text) else {
            return Err(TestCaseError::fail(format!("not media: {text}")));
        };
        prop_assert_eq!(media.payload.as_ref(), payload.as_str());
        prop_assert_eq!(media.timestamp_ms, timestamp);
    }

    #[test]
    fn what_we_send_parses_back(
        stream_sid in text(40),
        name in text(40),
        audio in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let frame = MediaFrames::new(&stream_sid)
            .frame(&audio)
            .ok_or_else(|| TestCaseError::fail("no frame"))?;
        let Ok(Received::Media(media)) = parse(frame.as_str()) else {
            return Err(TestCaseError::fail(format!("not media: {}", frame.as_str())));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(media.payload.as_bytes())
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(decoded, audio);
        let frame_json: Value = serde_json::from_str(frame.as_str())
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(frame_json["streamSid"].as_str(), Some(stream_sid.as_str()));

        let mark_text = mark(&stream_sid, &name);
        prop_assert_eq!(
            parse(&mark_text),
            Ok(Received::Message(Inbound::Mark { name: name.clone() }))
        );
        let cleared: Value = serde_json::from_str(&clear(&stream_sid))
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(cleared, json!({"event": "clear", "streamSid": stream_sid}));
    }
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn a_stream_token_admits_its_call_once_and_nothing_else(
        secret in any::<[u8; 32]>(),
        call_sid in "CA[0-9a-f]{32}",
        other_sid in "CA[0-9a-f]{32}",
        minted_at in 0i64..4_000_000_000,
        after_secs in 0..=TOKEN_TTL_SECS,
        cuts in edits(3),
        forged in text(60),
    ) {
        let tokens = StreamTokens::new(secret);
        let token = tokens.mint(&call_sid, minted_at);
        let now = minted_at + after_secs;
        if other_sid != call_sid {
            prop_assert_eq!(tokens.admit(Some(&token), &other_sid, now), Err(TokenError::Invalid));
        }
        prop_assert_eq!(
            tokens.admit(Some(&token), &call_sid, minted_at + TOKEN_TTL_SECS + 1),
            Err(TokenError::Expired)
        );
        prop_assert_eq!(tokens.admit(Some(&token), &call_sid, now), Ok(()));
        prop_assert_eq!(tokens.admit(Some(&token), &call_sid, now), Err(TokenError::Replayed));
        // Once used, no spelling of it and nothing made up opens a second stream.
        let edited = mutate(&token, &cuts);
        prop_assert!(tokens.admit(Some(&edited), &call_sid, now).is_err(), "{:?} admitted after {:?}", edited, token);
        prop_assert!(tokens.admit(Some(&forged), &call_sid, now).is_err());
    }
}
