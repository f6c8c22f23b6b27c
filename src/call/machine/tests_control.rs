//! The call's own controls (`control.rs`), one rule each, with made-up times: the assistant
//! ending the call, and the transfer to a person by the model or by the caller's `0`.

use super::control::{bounded_reason, TRANSFER_ANSWER_WAIT, TRANSFER_STOP_WAIT};
use super::tests::{asked, ended, texts, Bench, SID};
use super::*;
use crate::call::end::EndedBy;
use crate::config::DEFAULT_TRANSFER_PHRASE;
use crate::providers::anthropic::stream::Usage;
use crate::records::event::CallStatus;

const NUMBERS: &str = r#"{"attorney":"+15551234567","default":"+15557654321"}"#;

fn with_transfer() -> Bench {
    Bench::with(&[("TRANSFER_NUMBERS", NUMBERS)])
}

fn transfers(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transfer { call_sid, number } => Some((call_sid.clone(), number.clone())),
            _ => None,
        })
        .collect()
}

fn key(bench: &mut Bench, digit: &str) -> Vec<Action> {
    bench.step(Input::Twilio(Inbound::Dtmf {
        digit: digit.into(),
    }))
}

fn stop(bench: &mut Bench) -> Vec<Action> {
    bench.step(Input::Twilio(Inbound::Stop))
}

fn done(bench: &mut Bench, turn: u64) -> Vec<Action> {
    bench.llm(
        turn,
        LlmOut::Done {
            new_turns: Vec::new(),
            usage: Usage::default(),
            error: None,
        },
    )
}

/// The model answers turn 1 with `text`, then asks for a transfer; the actions of both.
fn model_transfers(bench: &mut Bench, text: &str) -> Vec<Action> {
    bench.say("Can I talk to a real person please");
    let mut actions = bench.llm(1, LlmOut::Delta(text.into()));
    actions.extend(bench.llm(1, LlmOut::Transfer));
    actions.extend(done(bench, 1));
    actions
}

/// A transfer the model asked for, announced and played: Twilio is being asked.
fn transfer_asked(bench: &mut Bench) -> Vec<Action> {
    bench.greeted();
    model_transfers(bench, "Of course, one moment.");
    bench.play(1, 0, 320);
    bench.echo(1, 0);
    bench.play(1, 1, 320);
    bench.echo(1, 1)
}

#[test]
fn end_call_lets_the_goodbye_play_then_ends_after_its_mark() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("That's all, thank you, bye");
    let said = bench.llm(1, LlmOut::Delta("Take care of yourself. Goodbye.".into()));
    let mut all = said;
    let closing = bench.llm(
        1,
        LlmOut::EndCall {
            reason: "the caller said goodbye".into(),
        },
    );
    assert_eq!(ended(&closing), None, "the goodbye has not played yet");
    all.extend(closing);
    all.extend(done(&mut bench, 1));
    assert_eq!(
        texts(&all),
        ["Take care of yourself.", "Goodbye."],
        "the model's own goodbye, and no fixed one"
    );
    // A goodbye said back starts no turn: the call is closing.
    assert!(asked(&bench.say("Thank you, bye!")).is_none());
    bench.play(1, 0, 320);
    assert_eq!(
        ended(&bench.echo(1, 0)),
        None,
        "one sentence is still to play"
    );
    bench.play(1, 1, 320);
    let last = bench.echo(1, 1);
    assert_eq!(
        ended(&last),
        Some(&End::AssistantEnded("the caller said goodbye".into()))
    );
    let summary = bench.machine.summary(bench.now);
    assert_eq!(summary.end.ended_by(), EndedBy::Assistant);
    assert_eq!(summary.end.status(), CallStatus::Completed);
}

#[test]
fn end_call_without_a_word_says_a_goodbye_first_and_the_reason_is_bounded() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("bye");
    let actions = bench.llm(
        1,
        LlmOut::EndCall {
            reason: format!("line one\nline two {}", "x".repeat(500)),
        },
    );
    assert_eq!(texts(&actions), [prompts::ASSISTANT_GOODBYE]);
    bench.play(1, 0, 320);
    let Some(End::AssistantEnded(reason)) = ended(&bench.echo(1, 0)).cloned() else {
        panic!("the call did not end");
    };
    assert!(reason.starts_with("line one line two x"), "{reason}");
    assert_eq!(reason.chars().count(), crate::call::end::MAX_REASON_CHARS);
    assert_eq!(bounded_reason(" \n "), "no reason given");
}

#[test]
fn a_goodbye_whose_mark_never_comes_still_ends_the_call() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("bye");
    bench.llm(1, LlmOut::Delta("Goodbye.".into()));
    bench.llm(
        1,
        LlmOut::EndCall {
            reason: "bye".into(),
        },
    );
    bench.play(1, 0, 320);
    // No echo: the mark's deadline takes it as played, and the call ends then.
    let mut end = None;
    for _ in 0..4 {
        let actions = bench.wait();
        if let Some(found) = ended(&actions) {
            end = Some(found.clone());
            break;
        }
    }
    assert_eq!(end, Some(End::AssistantEnded("bye".into())));
}

#[test]
fn the_transfer_tool_plays_the_turns_words_then_the_phrase_then_asks_twilio() {
    let mut bench = with_transfer();
    bench.greeted();
    let actions = model_transfers(&mut bench, "Of course, one moment.");
    assert_eq!(
        texts(&actions),
        ["Of course, one moment.", DEFAULT_TRANSFER_PHRASE]
    );
    assert!(
        transfers(&actions).is_empty(),
        "nothing is asked before the phrase plays"
    );
    bench.play(1, 0, 320);
    assert!(transfers(&bench.echo(1, 0)).is_empty());
    // The caller's words while the phrase plays start no turn.
    assert!(asked(&bench.say("hello?")).is_none());
    bench.play(1, 1, 320);
    let asked_twilio = bench.echo(1, 1);
    assert_eq!(
        transfers(&asked_twilio),
        [(SID.to_string(), "+15551234567".to_string())],
        "the attorney's own number"
    );
    assert_eq!(ended(&bench.step(Input::TransferDone(Ok(())))), None);
    let end = stop(&mut bench);
    assert_eq!(
        ended(&end),
        Some(&End::Transferred {
            number: "+15551234567".into(),
            by: EndedBy::Assistant
        })
    );
    let summary = bench.machine.summary(bench.now);
    assert_eq!(summary.transfers.len(), 1);
    assert_eq!(summary.transfers[0].outcome, "transferred");
    assert_eq!(summary.transfers[0].requested_by, "assistant");
    assert_eq!(summary.transfers[0].number, "+15551234567");
}

#[test]
fn twilios_stop_before_its_answer_waits_for_the_answer() {
    let mut bench = with_transfer();
    transfer_asked(&mut bench);
    assert_eq!(ended(&stop(&mut bench)), None, "the answer decides");
    let end = bench.step(Input::TransferDone(Ok(())));
    assert!(matches!(ended(&end), Some(End::Transferred { .. })));
}

#[test]
fn a_failed_transfer_apologises_and_the_call_goes_on() {
    let mut bench = with_transfer();
    transfer_asked(&mut bench);
    let failed = bench.step(Input::TransferDone(Err(
        "twilio answered 500 (error 20500): Internal".into(),
    )));
    assert_eq!(ended(&failed), None);
    assert_eq!(texts(&failed), [prompts::TRANSFER_FAILED]);
    let history = bench.machine.history();
    assert!(
        history
            .last()
            .is_some_and(|t| super::tests::words(t).contains("transfer to a person failed")),
        "the model is told"
    );
    bench.play(1, 2, 320);
    bench.echo(1, 2);
    let next = bench.say("Okay, then help me write it down");
    assert!(asked(&next).is_some(), "the call goes on");
    let summary = bench.machine.summary(bench.now);
    assert_eq!(summary.transfers[0].outcome, "failed");
    assert!(summary.transfers[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("500")));
}

#[test]
fn twilio_not_answering_is_a_failed_transfer_and_an_accepted_one_ends_without_its_stop() {
    let mut bench = with_transfer();
    transfer_asked(&mut bench);
    let asked_at = bench.now;
    let late = bench.wait();
    assert_eq!(bench.now, asked_at + TRANSFER_ANSWER_WAIT);
    assert_eq!(texts(&late), [prompts::TRANSFER_FAILED]);
    // Its answer, if it ever comes, changes nothing now.
    assert_eq!(ended(&bench.step(Input::TransferDone(Ok(())))), None);

    let mut bench = with_transfer();
    transfer_asked(&mut bench);
    bench.step(Input::TransferDone(Ok(())));
    let accepted_at = bench.now;
    let end = bench.wait();
    assert_eq!(bench.now, accepted_at + TRANSFER_STOP_WAIT);
    assert!(matches!(ended(&end), Some(End::Transferred { .. })));
}

#[test]
fn a_caller_who_hangs_up_during_a_transfer_hung_up() {
    let mut bench = with_transfer();
    bench.greeted();
    model_transfers(&mut bench, "Of course.");
    assert_eq!(ended(&stop(&mut bench)), Some(&End::CallerHungUp));

    let mut bench = with_transfer();
    transfer_asked(&mut bench);
    stop(&mut bench);
    let end = bench.step(Input::TransferDone(Err("refused".into())));
    assert_eq!(ended(&end), Some(&End::CallerHungUp));
}

#[test]
fn zero_pressed_alone_transfers_where_a_number_is_configured() {
    let mut bench = with_transfer();
    bench.greeted();
    key(&mut bench, "0");
    let due = bench.wait();
    assert!(asked(&due).is_none(), "the model is not asked");
    assert_eq!(texts(&due), [DEFAULT_TRANSFER_PHRASE]);
    let turn = bench.machine.turn();
    bench.play(turn, 0, 320);
    let asked_twilio = bench.echo(turn, 0);
    assert_eq!(
        transfers(&asked_twilio),
        [(SID.to_string(), "+15551234567".to_string())]
    );
    stop(&mut bench);
    let end = bench.step(Input::TransferDone(Ok(())));
    assert_eq!(
        ended(&end),
        Some(&End::Transferred {
            number: "+15551234567".into(),
            by: EndedBy::Caller
        })
    );
    let summary = bench.machine.summary(bench.now);
    assert_eq!(summary.transfers[0].requested_by, "caller");
    assert!(summary.transcript.iter().any(|e| e.text == "[keypad: 0]"));
}

#[test]
fn zero_cuts_what_plays_but_zero_with_other_keys_is_an_ordinary_turn() {
    let mut bench = with_transfer();
    bench.greeted();
    bench.say("Tell me about custody logs");
    bench.llm(1, LlmOut::Delta("A log is a record. ".into()));
    bench.play(1, 0, 3200);
    key(&mut bench, "0");
    let due = bench.wait();
    assert!(
        super::tests::twilio(&due).contains(&"clear".to_string()),
        "the answer is cut for the caller who asked for a person"
    );
    assert_eq!(texts(&due), [DEFAULT_TRANSFER_PHRASE]);

    let mut bench = with_transfer();
    bench.greeted();
    key(&mut bench, "0");
    key(&mut bench, "1");
    let due = bench.wait();
    assert!(texts(&due).is_empty());
    let (_, history) = asked(&due).expect("an ordinary keys turn");
    assert!(super::tests::words(history.last().expect("a turn")).contains("pressed 0 1"));
}

#[test]
fn without_a_number_there_is_no_transfer_and_zero_is_an_ordinary_key() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("Can I talk to a person");
    let actions = bench.llm(1, LlmOut::Transfer);
    assert!(
        texts(&actions).is_empty(),
        "no phrase: {:?}",
        texts(&actions)
    );
    done(&mut bench, 1);
    key(&mut bench, "0");
    let due = bench.wait();
    let (_, history) = asked(&due).expect("the key is a turn for the model");
    assert!(super::tests::words(history.last().expect("a turn")).contains("pressed 0"));
    assert!(transfers(&due).is_empty());
}

#[test]
fn a_call_tries_at_most_three_transfers() {
    let mut bench = with_transfer();
    bench.greeted();
    for _ in 0..control::MAX_TRANSFERS_PER_CALL {
        key(&mut bench, "0");
        bench.wait();
        let turn = bench.machine.turn();
        bench.play(turn, 0, 320);
        assert_eq!(transfers(&bench.echo(turn, 0)).len(), 1);
        bench.step(Input::TransferDone(Err("busy".into())));
        bench.play(turn, 1, 320);
        bench.echo(turn, 1);
    }
    key(&mut bench, "0");
    let due = bench.wait();
    assert!(asked(&due).is_some(), "an ordinary key now");
    assert_eq!(bench.machine.summary(bench.now).transfers.len(), 3);
}

#[test]
fn a_caller_with_more_to_say_than_goodbye_withdraws_the_hang_up() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("I think that is everything");
    bench.llm(1, LlmOut::Delta("Take care of yourself. Goodbye.".into()));
    bench.llm(
        1,
        LlmOut::EndCall {
            reason: "the caller was done".into(),
        },
    );
    done(&mut bench, 1);
    bench.play(1, 0, 320);
    // Over the goodbye: words that are not leave-taking are answered, and nothing ends.
    let actions = bench.say("Wait, one more question about Friday");
    assert!(twilio_clear(&actions), "the goodbye is cut: {actions:?}");
    let (turn, history) = asked(&actions).expect("the caller is answered");
    assert!(turn > 1);
    assert!(history
        .last()
        .is_some_and(|t| t.speaker == crate::providers::anthropic::Speaker::User));
    assert_eq!(ended(&actions), None);
    // The old goodbye's mark ends nothing now.
    assert_eq!(ended(&bench.echo(1, 0)), None);
    assert!(bench.machine.end().is_none());
}

fn twilio_clear(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Twilio(text) if text.contains("\"clear\"")))
}

#[test]
fn a_failed_transfer_after_speech_to_text_was_lost_says_goodbye_instead_of_going_on_deaf() {
    let mut bench = with_transfer();
    transfer_asked(&mut bench);
    // Lost while handed over: nothing yet (the call may never need it again).
    let lost = bench.step(Input::Stt(SttOut::Lost(
        crate::call::workers::SttLost::NoResources("gone".into()),
    )));
    assert_eq!(ended(&lost), None);
    assert!(texts(&lost).is_empty());
    let failed = bench.step(Input::TransferDone(Err("twilio answered 500".into())));
    assert_eq!(texts(&failed), [Phrase::GoodbyeTrouble.text()]);
    assert_ne!(texts(&failed), [prompts::TRANSFER_FAILED]);
    let play = bench.play(1, 2, 320);
    assert_eq!(ended(&play), None);
    let last = bench.echo(1, 2);
    assert_eq!(ended(&last), Some(&End::SpeechToTextLost));
}
