//! The smart end of the caller's turn, end to end: a simulated caller against the real server
//! and the simulators (the STT simulator in a `manual` session, committed by the call).

use std::time::{Duration, Instant};

use cotrackpro_voice::sim::anthropic::Reply;
use cotrackpro_voice::sim::caller::{Heard, SimCaller};

use crate::call::Rig;

const WAIT: Duration = Duration::from_secs(15);

/// The caller says `text` and hears the answer (`echoes` pieces heard in all by then); returns
/// how long after the end of their speech the answer's first audio came.
fn wait_for_answer(caller: &SimCaller, text: &str, echoes: usize) -> Duration {
    let asked_at = Instant::now();
    caller.say(text);
    assert!(
        caller.wait_for_echoes(echoes, WAIT),
        "the answer to {text:?} played"
    );
    let done = caller
        .speech_done_at()
        .filter(|done| *done > asked_at)
        .expect("the caller finished speaking");
    let first_audio = caller
        .log()
        .iter()
        .find(|(at, heard)| *at > done && matches!(heard, Heard::Media(_)))
        .map(|(at, _)| *at)
        .expect("audio after the speech");
    first_audio - done
}

#[test]
fn a_question_ends_the_turn_sooner_than_a_trailing_phrase() {
    let rig = Rig::start(&[]);
    rig.sims.anthropic.push([
        Reply::Text("It is short and the judge asks questions.".into()),
        Reply::Text("Please tell me what he said next.".into()),
    ]);
    let question = "What happens at the hearing?";
    let trailing = "and then he said that";
    rig.script(&[question, trailing]);
    let caller = rig.greeted();

    let question_wait = wait_for_answer(&caller, question, 2);
    let trailing_wait = wait_for_answer(&caller, trailing, 3);
    assert!(
        question_wait < trailing_wait,
        "the question was answered after {question_wait:?}, the trailing phrase after \
         {trailing_wait:?}"
    );

    // Each utterance was committed once, by the call, and is one turn of the transcript.
    let commits = rig
        .sims
        .elevenlabs
        .stt()
        .received(0)
        .iter()
        .filter(|m| m["commit"] == true)
        .count();
    assert_eq!(commits, 2, "one manual commit per utterance");
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    let said: Vec<String> = record
        .transcript
        .entries()
        .into_iter()
        .filter(|e| e.role == "user")
        .map(|e| e.text)
        .collect();
    assert_eq!(said, [question, trailing]);
}

#[test]
fn with_turn_end_vad_the_service_commits_and_the_call_never_does() {
    let rig = Rig::start(&[("TURN_END", "vad")]);
    rig.sims
        .anthropic
        .push([Reply::Text("It is short.".into())]);
    let question = "What happens at the hearing?";
    rig.script(&[question]);
    let caller = rig.greeted();
    wait_for_answer(&caller, question, 2);
    let received = rig.sims.elevenlabs.stt().received(0);
    assert!(
        received.iter().all(|m| m["commit"] == false),
        "no manual commit in a vad session"
    );
    caller.hang_up();
}
