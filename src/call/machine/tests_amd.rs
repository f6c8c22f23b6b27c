//! Answering-machine detection's rules (`amd.rs`), with made-up times.

use super::amd::VOICEMAIL_GRACE;
use super::tests::{ended, spoken, texts, twilio, Bench};
use super::*;
use crate::records::event::CallStatus;

fn answered(bench: &mut Bench, by: AnsweredBy) -> Vec<Action> {
    bench.step(Input::AnsweredBy(by))
}

fn new_turns(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::NewTurn(turn) => Some(*turn),
            _ => None,
        })
        .collect()
}

fn asks(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Ask { .. }))
        .count()
}

#[test]
fn a_machine_after_the_beep_cuts_the_greeting_hears_the_message_and_the_call_ends() {
    let mut bench = Bench::new();
    bench.start();
    // The greeting is playing (sent, not yet echoed) when the result comes.
    bench.play(0, 0, 1600);
    let message = bench.tuning().voicemail_message.clone();
    let actions = answered(bench.at(2_000), AnsweredBy::MachineEndBeep);
    assert_eq!(twilio(&actions), ["clear"], "the greeting is cut");
    assert_eq!(new_turns(&actions), [1]);
    assert_eq!(spoken(&actions), [(1, 0, message.clone())]);
    assert_eq!(ended(&actions), None, "not before the message has played");
    assert!(bench.machine.next_deadline() <= Some(bench.now + VOICEMAIL_GRACE));

    let actions = bench.at(2_100).play(1, 0, 3200);
    assert_eq!(
        twilio(&actions).last().map(String::as_str),
        Some("mark:1-0")
    );
    assert_eq!(ended(&actions), None);
    let actions = bench.at(2_500).echo(1, 0);
    assert_eq!(ended(&actions), Some(&End::Voicemail));
    let summary = bench.machine.summary(bench.now);
    assert_eq!(summary.end, End::Voicemail);
    assert_eq!(summary.end.status(), CallStatus::Completed);
    assert!(
        summary.transcript.iter().any(|e| e.text == message),
        "the transcript says the message was left"
    );
}

#[test]
fn every_kind_of_machine_gets_the_message() {
    for by in [
        AnsweredBy::MachineEndBeep,
        AnsweredBy::MachineEndSilence,
        AnsweredBy::MachineEndOther,
        AnsweredBy::MachineStart,
    ] {
        let mut bench = Bench::new();
        bench.greeted();
        let message = bench.tuning().voicemail_message.clone();
        let actions = answered(bench.at(5_000), by);
        assert_eq!(texts(&actions), [message], "{by}");
        assert_eq!(
            twilio(&actions),
            Vec::<String>::new(),
            "nothing played: no clear"
        );
        bench.play(1, 0, 320);
        assert_eq!(ended(&bench.echo(1, 0)), Some(&End::Voicemail), "{by}");
    }
}

#[test]
fn the_configured_message_is_said() {
    let mut bench = Bench::with(&[("VOICEMAIL_MESSAGE", "Please call us back. Goodbye.")]);
    bench.greeted();
    let actions = answered(&mut bench, AnsweredBy::MachineEndSilence);
    assert_eq!(texts(&actions), ["Please call us back. Goodbye."]);
}

#[test]
fn the_default_message_names_no_one_and_asks_for_a_call_back() {
    let bench = Bench::new();
    let message = &bench.tuning().voicemail_message;
    assert!(message.contains("call us back"), "{message}");
    assert!(message.contains("CoTrackPro"), "{message}");
}

#[test]
fn the_models_turn_in_flight_is_cancelled_on_a_machine() {
    let mut bench = Bench::new();
    bench.greeted();
    let actions = bench.at(3_000).say("Hello? Who is this?");
    assert_eq!(asks(&actions), 1);
    let turn = bench.machine.turn();
    let actions = answered(bench.at(3_500), AnsweredBy::MachineEndBeep);
    assert_eq!(
        new_turns(&actions),
        [turn + 1],
        "the turn's work is cancelled"
    );
    // What the model still sends for the old turn is dropped.
    let late = bench.llm(turn, LlmOut::Delta("Hi, this is your attorney. ".into()));
    assert!(spoken(&late).is_empty());
    let late = bench.reply_done(turn, "Hi, this is your attorney.");
    assert!(spoken(&late).is_empty());
    bench.play(turn + 1, 0, 320);
    assert_eq!(ended(&bench.echo(turn + 1, 0)), Some(&End::Voicemail));
}

#[test]
fn the_machines_own_sounds_neither_interrupt_the_message_nor_start_a_turn() {
    let mut bench = Bench::new();
    bench.greeted();
    answered(bench.at(4_000), AnsweredBy::MachineEndBeep);
    bench.play(1, 0, 8000);
    let actions = bench
        .at(4_200)
        .partial("please leave your message after the tone");
    assert!(
        twilio(&actions).is_empty(),
        "no clear: {:?}",
        twilio(&actions)
    );
    let actions = bench.say("please leave your message after the tone");
    assert_eq!(asks(&actions), 0);
    let actions = bench.step(Input::Twilio(Inbound::Dtmf { digit: "1".into() }));
    assert_eq!(asks(&actions), 0);
    assert_eq!(ended(&bench.echo(1, 0)), Some(&End::Voicemail));
}

#[test]
fn a_message_never_echoed_still_ends_the_call_in_time() {
    let mut bench = Bench::new();
    bench.greeted();
    answered(bench.at(1_000), AnsweredBy::MachineEndBeep);
    let asked_at = bench.now;
    bench.play(1, 0, 320);
    let mut end = None;
    for _ in 0..10 {
        if let Some(e) = ended(&bench.wait()) {
            end = Some(e.clone());
            break;
        }
    }
    assert_eq!(end, Some(End::Voicemail));
    assert!(bench.now <= asked_at + VOICEMAIL_GRACE);
}

#[test]
fn a_fax_ends_the_call_at_once() {
    let mut bench = Bench::new();
    bench.greeted();
    let actions = answered(bench.at(2_000), AnsweredBy::Fax);
    assert_eq!(ended(&actions), Some(&End::Fax));
    assert!(spoken(&actions).is_empty(), "nothing is said to a fax");
}

#[test]
fn a_person_or_no_decision_carries_on() {
    for by in [AnsweredBy::Human, AnsweredBy::Unknown] {
        let mut bench = Bench::new();
        bench.start();
        bench.play(0, 0, 1600);
        let actions = answered(bench.at(500), by);
        assert!(actions.is_empty(), "{by}: {actions:?}");
        assert!(bench.machine.is_speaking(), "{by}: the greeting goes on");
        bench.echo(0, 0);
        let actions = bench.at(3_000).say("Hi, yes, this is me.");
        assert_eq!(asks(&actions), 1, "{by}: the conversation goes on");
        assert_eq!(bench.machine.end(), None);
    }
}

#[test]
fn a_result_before_the_start_is_kept_for_it() {
    let mut bench = Bench::new();
    let actions = answered(&mut bench, AnsweredBy::MachineEndBeep);
    assert!(actions.is_empty());
    let message = bench.tuning().voicemail_message.clone();
    let actions = bench.at(100).start();
    assert!(actions.iter().any(|a| matches!(a, Action::Started(_))));
    assert_eq!(
        texts(&actions),
        [message],
        "the message instead of the greeting"
    );
    bench.play(1, 0, 320);
    assert_eq!(ended(&bench.echo(1, 0)), Some(&End::Voicemail));

    let mut bench = Bench::new();
    answered(&mut bench, AnsweredBy::Fax);
    assert_eq!(ended(&bench.start()), Some(&End::Fax));

    let mut bench = Bench::new();
    answered(&mut bench, AnsweredBy::Human);
    let actions = bench.start();
    assert_eq!(spoken(&actions).len(), 1, "the greeting, as always");
    assert_eq!(spoken(&actions)[0].0, 0);
}

#[test]
fn a_result_while_closing_changes_nothing() {
    let mut bench = Bench::new();
    bench.greeted();
    answered(&mut bench, AnsweredBy::MachineEndBeep);
    // A second result (a retried callback) neither repeats the message nor ends it as a fax.
    let actions = answered(&mut bench, AnsweredBy::Fax);
    assert!(actions.is_empty(), "{actions:?}");
    let actions = answered(&mut bench, AnsweredBy::MachineEndBeep);
    assert!(actions.is_empty(), "{actions:?}");
    bench.play(1, 0, 320);
    assert_eq!(ended(&bench.echo(1, 0)), Some(&End::Voicemail));
}
