//! The words a caller heard of a sentence cut off: the text-to-speech simulator aligns its
//! audio when asked (and only then), and a caller who interrupts a long sentence a few seconds
//! in finds the words played so far, marked as cut off, in the next model request and the
//! record — not the rest of the sentence.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use cotrackpro_voice::providers::ws::{self, ConnectError};
use cotrackpro_voice::sim::anthropic::Reply;
use cotrackpro_voice::sim::caller::Heard;
use cotrackpro_voice::sim::elevenlabs_tts::{TtsSim, TtsSimOptions};
use cotrackpro_voice::sim::voice;

use crate::call::Rig;

const WAIT: Duration = Duration::from_secs(15);
const VOICE: &str = "EXAVITQu4vr4xnSDxMaL";
const CUT_OFF: &str = " — [cut off]";
const INTERRUPTED: &str = " [interrupted by the caller]";
/// About thirteen seconds of the simulated voice: long enough to be cut well inside.
const LONG: &str =
    "The first thing to do is to write down, as soon as you can, the date and the time it \
happened, who was there, what each person said and did, and anything that shows it, like \
messages or photos.";

/// A multi-context socket to the simulator with `query` after the format.
fn open(sim: &TtsSim, query: &str) -> Result<ws::Socket, ConnectError> {
    let key = TtsSimOptions::default().api_key;
    let url = format!(
        "{}/v1/text-to-speech/{VOICE}/multi-stream-input?model_id=eleven_flash_v2_5&output_format=ulaw_8000{query}",
        sim.base_url()
    );
    let socket = ws::connect(
        &url,
        &[("xi-api-key", key.as_str())],
        Duration::from_secs(5),
    )?;
    if let Some(tcp) = ws::tcp_of(&socket) {
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
    }
    Ok(socket)
}

/// Speaks `text` as one context; returns each audio message received until its `isFinal`.
fn speak(socket: &mut ws::Socket, text: &str) -> Vec<Value> {
    for message in [
        json!({"text": " ", "context_id": "c1"}),
        json!({"text": format!("{text} "), "context_id": "c1", "flush": true}),
        json!({"context_id": "c1", "close_context": true}),
    ] {
        socket
            .send(Message::text(message.to_string()))
            .expect("send");
    }
    let mut audio = Vec::new();
    loop {
        let Message::Text(text) = socket.read().expect("a reply within 5 s") else {
            continue;
        };
        let value: Value = serde_json::from_str(text.as_str()).expect("json");
        if value["isFinal"] == json!(true) {
            return audio;
        }
        audio.push(value);
    }
}

#[test]
fn the_simulated_voice_aligns_its_audio_only_when_asked() {
    let sim = TtsSim::start(TtsSimOptions {
        first_byte: Duration::from_millis(5),
        ..TtsSimOptions::default()
    })
    .expect("the simulator starts");
    let text = "Write down the date and the time.";

    let mut socket = open(&sim, "&sync_alignment=true").expect("connect");
    let messages = speak(&mut socket, text);
    assert!(messages.len() > 1, "several chunks: {}", messages.len());
    let mut chars = String::new();
    for message in &messages {
        let alignment = &message["alignment"];
        let audio_ms = base64_len(message["audio"].as_str().expect("audio")) as u64 / 8;
        let starts = alignment["charStartTimesMs"].as_array().expect("starts");
        let durations = alignment["charDurationsMs"].as_array().expect("durations");
        let these = alignment["chars"].as_array().expect("chars");
        assert_eq!(starts.len(), these.len());
        assert_eq!(durations.len(), these.len());
        // Every character starts within its own chunk's audio.
        for start in starts {
            assert!(
                start.as_u64().expect("a number") < audio_ms,
                "{start} in {audio_ms} ms"
            );
        }
        chars.extend(these.iter().filter_map(Value::as_str));
    }
    // Together the chunks align the text sent, and the audio is as long as its characters.
    assert_eq!(chars, format!("{text} "));
    let total: usize = messages
        .iter()
        .map(|m| base64_len(m["audio"].as_str().unwrap_or("")))
        .sum();
    assert_eq!(
        total as u64 / 8,
        chars.chars().count() as u64 * u64::from(voice::MS_PER_CHAR)
    );

    let mut socket = open(&sim, "").expect("connect");
    let messages = speak(&mut socket, text);
    assert!(!messages.is_empty());
    assert!(messages.iter().all(|m| m["alignment"].is_null()));

    // Not a boolean: refused at the handshake (the service documents a boolean).
    match open(&sim, "&sync_alignment=maybe") {
        Err(ConnectError::Refused { status, .. }) => assert_eq!(status, 422),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

/// Bytes of audio in a base64 string.
fn base64_len(b64: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_or(0, |audio| audio.len())
}

#[test]
fn an_interruption_mid_sentence_keeps_the_words_played_so_far_in_the_next_request() {
    let rig = Rig::start(&[]);
    rig.sims.anthropic.push([
        Reply::Text(LONG.into()),
        Reply::Text("Of course. What is your question?".into()),
    ]);
    let question = "How do I write it down";
    let interruption = "wait, stop, I have a question";
    rig.script(&[question, interruption]);
    let caller = rig.caller();
    assert!(caller.wait_for_echoes(1, WAIT), "the greeting played");
    // From here the phone plays in real time, as a caller hears it.
    caller.set_playback_speed(1);
    let asked = Instant::now();
    caller.say(question);
    assert!(
        caller.wait_for(WAIT, |log| log
            .iter()
            .any(|(at, h)| *at > asked && matches!(h, Heard::Media(_)))),
        "the answer began to play"
    );
    // A few seconds into the long sentence, the caller talks over it.
    std::thread::sleep(Duration::from_secs(3));
    caller.say(interruption);
    assert!(
        caller.wait_for(WAIT, |log| log.iter().any(|(_, h)| *h == Heard::Clear)),
        "the server cleared Twilio's buffer"
    );
    caller.set_playback_speed(25);
    assert!(
        caller.wait_for(WAIT, |log| log.iter().any(
            |(_, h)| matches!(h, Heard::Echoed(name) if name.starts_with("3-"))
        )),
        "the answer to the interruption played"
    );
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();

    // The next request holds the words heard, cut off, and then the interruption.
    let requests = rig.sims.anthropic.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1]["messages"].as_array().expect("messages");
    let note = &messages[messages.len() - 2];
    assert_eq!(note["role"], json!("assistant"));
    let note = note["content"][0]["text"].as_str().expect("text");
    let kept = note
        .strip_suffix(INTERRUPTED)
        .and_then(|n| n.strip_suffix(CUT_OFF))
        .unwrap_or_else(|| panic!("the words heard, cut off: {note:?}"));
    assert!(!kept.is_empty(), "some words were heard: {note:?}");
    assert!(kept.len() < LONG.len(), "not the whole sentence: {note:?}");
    assert!(LONG.starts_with(kept), "a prefix of the sentence: {kept:?}");
    assert!(
        LONG[kept.len()..].starts_with(' '),
        "cut back to a whole word: {kept:?}"
    );
    // Words of the unplayed rest are not in the request at all.
    assert!(!requests[1].to_string().contains("messages or photos"));
    let last = &messages[messages.len() - 1];
    assert_eq!(last["role"], json!("user"));

    // The record's transcript shows the same.
    let record = rig.record_after_end(&call_sid);
    let said: Vec<String> = record
        .transcript
        .entries()
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert!(said.contains(&format!("{kept}{CUT_OFF}")), "{said:?}");
    assert!(!said.contains(&LONG.to_string()), "{said:?}");
}
