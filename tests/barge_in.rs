//! Barge-in end to end: a simulated caller talks over the answer through the real server and
//! the simulators. A backchannel ("uh-huh") sends no `clear`; "wait, stop" does and takes the
//! turn; a cough (partials, then an empty commit) clears the answer, which then resumes with
//! the sentence the caller did not hear.

use std::time::{Duration, Instant};

use cotrackpro_voice::sim::anthropic::Reply;
use cotrackpro_voice::sim::caller::{Heard, SimCaller};
use serde_json::json;

use crate::call::Rig;

const WAIT: Duration = Duration::from_secs(15);
const FIRST: &str = "The first thing to do is write down the date and the time it happened.";
const SECOND: &str = "The second thing is to note who was there and what each person said to you.";
const THIRD: &str = "Then keep any messages.";

/// The transcript of `call_sid` once the call is over: (role, text), in order.
fn transcript(rig: &Rig, call_sid: &str) -> Vec<(String, String)> {
    rig.record_after_end(call_sid)
        .transcript
        .entries()
        .into_iter()
        .map(|e| (e.role, e.text))
        .collect()
}

fn has_echo(log: &[(Instant, Heard)], name: &str) -> bool {
    log.iter().any(|(_, h)| *h == Heard::Echoed(name.into()))
}

fn clears(log: &[(Instant, Heard)]) -> usize {
    log.iter().filter(|(_, h)| *h == Heard::Clear).count()
}

/// The caller asks a question whose answer is FIRST SECOND THIRD, played in real time, and
/// waits until FIRST has been heard.
fn asked_and_first_sentence_heard(rig: &Rig) -> SimCaller {
    let caller = rig.greeted();
    caller.set_playback_speed(1);
    caller.say("How do I document this");
    assert!(
        caller.wait_for(WAIT, |log| has_echo(log, "1-0")),
        "the first sentence played: {:?}",
        caller.log()
    );
    caller
}

#[test]
fn uh_huh_during_an_answer_sends_no_clear_and_stays_in_the_transcript() {
    let rig = Rig::start(&[]);
    rig.sims
        .anthropic
        .push([Reply::Text(format!("{FIRST} {SECOND} {THIRD}"))]);
    rig.script(&["How do I document this", "uh-huh"]);
    let caller = asked_and_first_sentence_heard(&rig);
    caller.say("uh-huh");
    // The second sentence plays to its end in real time: long past the commit of "uh-huh".
    assert!(
        caller.wait_for(WAIT, |log| has_echo(log, "1-1")),
        "the second sentence played: {:?}",
        caller.log()
    );
    caller.set_playback_speed(25);
    assert!(caller.wait_for(WAIT, |log| has_echo(log, "1-2")));
    let call_sid = caller.call_sid().to_string();
    let log = caller.hang_up();
    assert_eq!(clears(&log), 0, "{log:?}");
    assert_eq!(rig.sims.anthropic.requests().len(), 1, "no new turn");
    let said = transcript(&rig, &call_sid);
    let at = |text: &str| said.iter().position(|(_, t)| t == text);
    let uh_huh = at("uh-huh").expect("the backchannel is in the transcript");
    assert_eq!(said[uh_huh].0, "user");
    // Said while the answer played: between its first and second sentences.
    assert!(
        at(FIRST) < Some(uh_huh) && Some(uh_huh) < at(SECOND),
        "{said:?}"
    );
    assert!(at(THIRD).is_some(), "{said:?}");
}

#[test]
fn wait_stop_during_an_answer_clears_it_and_takes_the_turn() {
    let rig = Rig::start(&[]);
    rig.sims.anthropic.push([
        Reply::Text(format!("{FIRST} {SECOND} {THIRD}")),
        Reply::Text("Of course, go ahead.".into()),
    ]);
    rig.script(&["How do I document this", "wait, stop"]);
    let caller = asked_and_first_sentence_heard(&rig);
    caller.say("wait, stop");
    assert!(
        caller.wait_for(WAIT, |log| clears(log) == 1),
        "the server cleared Twilio's buffer: {:?}",
        caller.log()
    );
    caller.set_playback_speed(25);
    assert!(
        caller.wait_for(WAIT, |log| log.iter().any(
            |(_, h)| matches!(h, Heard::Echoed(name) if name.starts_with("3-"))
        )),
        "the answer to the interruption played: {:?}",
        caller.log()
    );
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();
    let requests = rig.sims.anthropic.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1]["messages"].as_array().expect("messages");
    let n = messages.len();
    // The first sentence, and the words of the second heard before the clear, if any (the
    // whole words played: `heard_words`), then the interruption.
    let note = messages[n - 2]["content"][0]["text"].as_str().unwrap_or("");
    let between = note
        .strip_prefix(FIRST)
        .and_then(|rest| rest.strip_suffix(" [interrupted by the caller]"))
        .unwrap_or_else(|| panic!("{note}"));
    assert!(
        between.is_empty() || is_cut_off_part_of(between.trim(), SECOND),
        "{note}"
    );
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.barge_ins, 1);
    let said: Vec<String> = record
        .transcript
        .entries()
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert!(said.contains(&"wait, stop".to_string()), "{said:?}");
    assert!(!said.contains(&SECOND.to_string()), "{said:?}");
}

#[test]
fn a_cough_clears_the_answer_then_it_resumes_with_the_sentence_not_heard() {
    let rig = Rig::start(&[]);
    rig.sims.anthropic.push([
        Reply::Text(format!("{FIRST} {SECOND} {THIRD}")),
        Reply::Text("You're welcome.".into()),
    ]);
    rig.script(&["How do I document this"]);
    rig.sims.elevenlabs.stt().push_cough("hey wait");
    rig.script(&["Thank you"]);
    let caller = asked_and_first_sentence_heard(&rig);
    caller.say("ahem ahem ahem");
    assert!(
        caller.wait_for(WAIT, |log| clears(log) == 1),
        "the cough's partial cleared the answer: {:?}",
        caller.log()
    );
    caller.set_playback_speed(25);
    // Nothing is committed: the answer resumes (a phrase, then the second and third
    // sentences), in the same turn.
    assert!(
        caller.wait_for(WAIT, |log| has_echo(log, "1-5")),
        "the answer resumed: {:?}",
        caller.log()
    );
    caller.say("Thank you");
    assert!(
        caller.wait_for(WAIT, |log| log.iter().any(
            |(_, h)| matches!(h, Heard::Echoed(name) if name.starts_with("2-"))
        )),
        "the next answer played: {:?}",
        caller.log()
    );
    let call_sid = caller.call_sid().to_string();
    let log = caller.hang_up();
    assert_eq!(clears(&log), 1);

    // The model was asked once more, for "Thank you", with the whole answer in the history:
    // the caller heard all of it.
    let requests = rig.sims.anthropic.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1]["messages"].as_array().expect("messages");
    let n = messages.len();
    assert_eq!(
        messages[n - 2]["content"][0]["text"],
        json!(format!("{FIRST} {SECOND} {THIRD}"))
    );
    let said = transcript(&rig, &call_sid);
    // The words of the second sentence heard before the cough's clear (if any) are in the
    // transcript as heard, cut off; then the resume says it whole.
    let assistant: Vec<&str> = said
        .iter()
        .filter(|(role, _)| role == "assistant")
        .map(|(_, text)| text.as_str())
        .skip(1)
        .filter(|text| !is_cut_off_part_of(text, SECOND))
        .collect();
    assert_eq!(
        assistant,
        vec![FIRST, "As I was saying,", SECOND, THIRD, "You're welcome."]
    );
    let users: Vec<&str> = said
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, text)| text.as_str())
        .collect();
    assert_eq!(users, vec!["How do I document this", "Thank you"]);
}

/// Whether `text` is the first whole words of `sentence` marked as cut off ("Under the — [cut
/// off]"), as the transcript and the history keep a piece cleared mid-way.
fn is_cut_off_part_of(text: &str, sentence: &str) -> bool {
    text.strip_suffix(" — [cut off]").is_some_and(|words| {
        !words.is_empty() && sentence.starts_with(words) && sentence[words.len()..].starts_with(' ')
    })
}
