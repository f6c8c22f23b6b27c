//! Barge-in, backchannels, echo, and resuming after a false interruption (`barge.rs`), with
//! made-up times.

use super::tests::{asked, ended, spoken, texts, twilio, words, Bench};
use super::*;

/// A call greeted, asked a question, and speaking its first sentence ("One.", heard) while the
/// second ("Two.") is being sent and the third ("Three.") waits. Turn 1, pieces 0, 1, 2.
/// Commits come from the service's silence detector here (`TURN_END=vad`): the pause's own
/// timing; with the smart turn end, see the last tests.
fn speaking(extra: &[(&str, &str)]) -> Bench {
    let mut settings = vec![("TURN_END", "vad")];
    settings.extend_from_slice(extra);
    let mut bench = Bench::with(&settings);
    bench.greeted();
    bench.say("Tell me about the hearing");
    bench.llm(
        1,
        LlmOut::Delta("The hearing is short. The judge reads the file. Then you speak. ".into()),
    );
    bench.play(1, 0, 320);
    bench.echo(1, 0);
    bench.step(Input::Tts {
        turn: 1,
        seq: 1,
        out: TtsOut::Audio(vec![0xFF; 320]),
    });
    assert!(bench.machine.is_speaking());
    bench
}

fn transcript(bench: &mut Bench) -> Vec<(String, String)> {
    bench
        .machine
        .summary(bench.now)
        .transcript
        .into_iter()
        .map(|e| (e.role, e.text))
        .collect()
}

fn cleared(actions: &[Action]) -> bool {
    twilio(actions).iter().any(|m| m == "clear")
}

#[test]
fn backchannels_never_interrupt_in_the_call_language_or_from_the_setting() {
    let mut bench = speaking(&[]);
    for partial in ["uh-huh", "mm-hmm, yeah", "okay", "right right"] {
        assert!(!cleared(&bench.partial(partial)), "{partial}");
    }
    let actions = bench.say("Uh-huh.");
    assert!(twilio(&actions).is_empty());
    assert_eq!(asked(&actions), None);
    assert_eq!(bench.machine.turn(), 1);

    let mut spanish = speaking(&[
        ("STT_LANGUAGE_CODE", "es"),
        ("BACKCHANNEL_WORDS", "Órale, sale"),
    ]);
    for partial in [
        "sí, claro",
        "ajá",
        "vale vale",
        "mmm bueno",
        "órale",
        "sale pues",
    ] {
        assert!(!cleared(&spanish.partial(partial)), "{partial}");
    }
    let actions = spanish.say("Sí, ajá.");
    assert_eq!(asked(&actions), None);
    assert!(spanish.machine.is_speaking());
    assert!(transcript(&mut spanish).contains(&("user".into(), "Sí, ajá.".into())));
}

#[test]
fn one_content_word_waits_for_a_second_and_a_stop_word_interrupts_alone() {
    let mut bench = speaking(&[]);
    assert!(!cleared(&bench.partial("actually")));
    assert!(!cleared(&bench.partial("uh, actually")));
    assert!(cleared(&bench.partial("actually I")));

    let mut bench = speaking(&[]);
    assert!(cleared(&bench.partial("wait")));

    let mut spanish = speaking(&[("STT_LANGUAGE_CODE", "es")]);
    assert!(cleared(&spanish.partial("espera")));
}

#[test]
fn our_own_voice_heard_back_does_not_interrupt() {
    let mut bench = speaking(&[]);
    // From the piece playing, from the one queued after it, across the sentence already heard
    // and the one playing, and with a word misheard.
    for echo in [
        "the judge reads the file",
        "then you speak",
        "is short the judge reads",
        "the judge feeds the file",
    ] {
        assert!(!cleared(&bench.partial(echo)), "{echo}");
    }
    assert!(cleared(&bench.partial("the judge is my ex")));
}

#[test]
fn a_barge_in_pauses_the_reply_and_words_committed_then_cut_the_turn() {
    let mut bench = speaking(&[]);
    bench.at(5_000);
    let actions = bench.partial("wait, stop");
    assert_eq!(twilio(&actions), vec!["clear"]);
    // Paused, not cut: the model goes on, the turn is the same.
    assert!(!actions.iter().any(|a| matches!(a, Action::NewTurn(_))));
    assert_eq!(bench.machine.turn(), 1);
    assert!(!bench.machine.is_speaking());
    // What the model says meanwhile is kept, not spoken; the cut piece's late audio is dropped.
    assert!(spoken(&bench.llm(1, LlmOut::Delta("Bring a pen. ".into()))).is_empty());
    assert!(bench.play(1, 1, 640).is_empty());
    bench.at(5_900);
    let actions = bench.say("Wait, what file?");
    assert!(actions.iter().any(|a| matches!(a, Action::NewTurn(2))));
    let (turn, history) = asked(&actions).expect("the words start a turn");
    assert!(turn > 1);
    let n = history.len();
    assert_eq!(
        words(&history[n - 2]),
        "The hearing is short. [interrupted by the caller]"
    );
    assert_eq!(words(&history[n - 1]), "Wait, what file?");
    // Counted once, at the clear.
    assert_eq!(bench.machine.summary(bench.now).barge_ins, 1);
    // Nothing of the paused reply comes back.
    bench.at(20_000);
    assert!(spoken(&bench.step(Input::Deadline)).is_empty());
}

#[test]
fn silence_after_a_barge_in_resumes_with_the_first_sentence_not_heard() {
    let mut bench = speaking(&[]);
    bench.at(5_000);
    assert!(cleared(&bench.partial("hey wait")));
    let resume_at = bench.now + bench.tuning().resume_after;
    assert_eq!(bench.machine.next_deadline(), Some(resume_at));
    // The reply ends during the pause: its last words are kept; the turn is not over.
    bench.llm(1, LlmOut::Delta("Bring a pen.".into()));
    let reply = "The hearing is short. The judge reads the file. Then you speak. Bring a pen.";
    assert!(spoken(&bench.reply_done(1, reply)).is_empty());
    // A failure of a piece that was cut asks no apology.
    let failed = bench.step(Input::Tts {
        turn: 1,
        seq: 2,
        out: TtsOut::Failed(crate::providers::elevenlabs_tts::TtsError::Protocol(
            "gone".into(),
        )),
    });
    assert!(spoken(&failed).is_empty());

    let actions = bench.wait();
    assert_eq!(bench.now, resume_at);
    assert_eq!(
        texts(&actions),
        vec![
            "As I was saying,",
            "The judge reads the file.",
            "Then you speak.",
            "Bring a pen."
        ]
    );
    assert!(twilio(&actions).is_empty(), "no clear, no audio yet");
    // Played to the end: the history holds the reply as heard (all of it), the transcript
    // each piece once, as heard.
    for seq in 3..=6 {
        bench.play(1, seq, 160);
        bench.echo(1, seq);
    }
    assert!(!bench.machine.is_speaking());
    assert_eq!(
        words(bench.machine.history().last().expect("history")),
        reply
    );
    let said: Vec<String> = transcript(&mut bench)
        .into_iter()
        .filter(|(role, _)| role == "assistant")
        .map(|(_, text)| text)
        .skip(1)
        .collect();
    assert_eq!(
        said,
        vec![
            "The hearing is short.",
            "As I was saying,",
            "The judge reads the file.",
            "Then you speak.",
            "Bring a pen."
        ]
    );
}

#[test]
fn a_resumed_reply_cut_later_keeps_what_was_heard_before_and_after_the_pause() {
    let mut bench = speaking(&[]);
    assert!(cleared(&bench.partial("hold on")));
    let actions = bench.wait();
    assert_eq!(texts(&actions)[1], "The judge reads the file.");
    // The phrase and the resumed sentence are heard; the caller then speaks for real.
    for seq in 3..=4 {
        bench.play(1, seq, 160);
        bench.echo(1, seq);
    }
    let actions = bench.say("And what do I say?");
    let (_, history) = asked(&actions).expect("a new turn");
    let n = history.len();
    assert_eq!(
        words(&history[n - 2]),
        "The hearing is short. The judge reads the file. [interrupted by the caller]"
    );
}

#[test]
fn partials_during_the_pause_hold_the_resume_and_loud_noise_does_not() {
    let mut bench = speaking(&[]);
    bench.at(5_000);
    assert!(cleared(&bench.partial("hey wait")));
    bench.at(5_600);
    bench.step(Input::Voice(bench.now));
    bench.at(6_000);
    assert!(bench.partial("hey wait a").is_empty());
    let due = bench.now + bench.tuning().resume_after;
    assert_eq!(bench.machine.next_deadline(), Some(due));
    bench.at(7_000);
    bench.step(Input::Voice(bench.now));
    assert_eq!(bench.machine.next_deadline(), Some(due));
    let actions = bench.wait();
    assert_eq!(bench.now, due);
    assert_eq!(texts(&actions)[0], "As I was saying,");
}

#[test]
fn a_backchannel_or_an_empty_commit_during_the_pause_changes_nothing() {
    let mut bench = speaking(&[]);
    bench.at(5_000);
    assert!(cleared(&bench.partial("hey wait")));
    bench.at(5_800);
    for text in ["", "  ", "Mm-hmm."] {
        let actions = bench.say(text);
        assert_eq!(asked(&actions), None, "{text:?}");
        assert!(actions.is_empty(), "{text:?}");
    }
    let users: Vec<String> = transcript(&mut bench)
        .into_iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, text)| text)
        .collect();
    assert_eq!(users, vec!["Tell me about the hearing", "Mm-hmm."]);
    let actions = bench.wait();
    assert_eq!(texts(&actions)[0], "As I was saying,");
    assert_eq!(bench.machine.turn(), 1);
}

#[test]
fn with_resume_off_a_barge_in_cuts_the_turn_at_once() {
    let mut bench = speaking(&[("RESUME_AFTER_MS", "0")]);
    let actions = bench.partial("wait, stop");
    assert_eq!(twilio(&actions), vec!["clear"]);
    assert!(actions.iter().any(|a| matches!(a, Action::NewTurn(2))));
    assert_eq!(
        words(bench.machine.history().last().expect("history")),
        "The hearing is short. [interrupted by the caller]"
    );
}

#[test]
fn a_cut_greeting_resumes_without_saying_as_i_was_saying() {
    let mut bench = Bench::with(&[("TURN_END", "vad")]);
    bench.start();
    bench.play(0, 0, 320);
    assert!(cleared(&bench.partial("hello hello")));
    // No reprompt while paused: the next deadline is the resume.
    let actions = bench.wait();
    let greeting = texts(&actions);
    assert_eq!(greeting.len(), 1);
    assert!(
        greeting[0].contains("Welcome to CoTrack Pro"),
        "{greeting:?}"
    );
}

#[test]
fn keys_or_the_end_of_the_call_during_the_pause_drop_it() {
    let mut bench = speaking(&[]);
    assert!(cleared(&bench.partial("hey wait")));
    // Keys pressed during the pause: the caller is answering; their turn cuts the reply.
    bench.at(1_000);
    bench.step(Input::Twilio(Inbound::Dtmf { digit: "1".into() }));
    let actions = bench.wait();
    assert_eq!(
        bench.now,
        bench.t0 + KEYPAD_GAP + Duration::from_millis(1_000)
    );
    assert!(actions.iter().any(|a| matches!(a, Action::NewTurn(2))));
    assert!(asked(&actions).is_some());
    assert!(!texts(&actions).contains(&"As I was saying,".to_string()));

    let mut bench = speaking(&[("MAX_CALL_SECS", "60")]);
    assert!(cleared(&bench.partial("hey wait")));
    bench.at(60_000);
    let actions = bench.step(Input::Deadline);
    assert_eq!(
        texts(&actions),
        vec![crate::personas::prompts::Phrase::GoodbyeTimeUp.text()]
    );
}

fn commits(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Commit))
        .count()
}

#[test]
fn with_the_smart_turn_end_a_pause_waits_for_the_commit_of_the_words_that_made_it() {
    // A trailing barge-in ("wait and"): its commit is asked after the long silence, as late as
    // the resume would come; the resume waits for the commit's answer.
    let mut bench = speaking(&[("TURN_END", "smart"), ("RESUME_AFTER_MS", "1500")]);
    bench.at(5_000);
    assert!(cleared(&bench.partial("wait and")));
    let long = bench.tuning().turn_end_long;
    assert_eq!(bench.machine.next_deadline(), Some(bench.now + long));
    let actions = bench.wait();
    assert_eq!(commits(&actions), 1);
    assert!(spoken(&actions).is_empty(), "no resume before the answer");
    let asked_at = bench.now;
    // The caller's words come back: the turn is cut, the words start the next one.
    let actions = bench.step(Input::Stt(SttOut::Committed("wait and then what".into())));
    assert!(asked(&actions).is_some());
    assert!(!bench.machine.is_paused());
    assert_eq!(bench.now, asked_at);
}

#[test]
fn with_the_smart_turn_end_an_empty_commit_lets_the_resume_come() {
    let mut bench = speaking(&[("TURN_END", "smart"), ("RESUME_AFTER_MS", "1500")]);
    bench.at(5_000);
    let cleared_at = bench.now;
    assert!(cleared(&bench.partial("hey wait")));
    // "wait" is open: the commit comes after the detector's silence, before the resume's time.
    let actions = bench.wait();
    assert_eq!(commits(&actions), 1);
    let resume = bench.tuning().resume_after;
    assert!(bench.now < cleared_at + resume);
    // While the commit is unanswered the resume waits at most `RESUME_AFTER_MS` after it.
    assert_eq!(bench.machine.next_deadline(), Some(bench.now + resume));
    // The cough's commit is empty: the resume is due at its own time again.
    assert!(bench
        .step(Input::Stt(SttOut::Committed(String::new())))
        .is_empty());
    assert_eq!(bench.machine.next_deadline(), Some(cleared_at + resume));
    let actions = bench.wait();
    assert_eq!(bench.now, cleared_at + resume);
    assert_eq!(
        texts(&actions).first().map(String::as_str),
        Some("As I was saying,")
    );
}

#[test]
fn the_assistant_ending_the_call_during_a_pause_says_its_last_words_first() {
    let mut bench = speaking(&[]);
    assert!(cleared(&bench.partial("thank you")));
    assert!(bench.machine.is_paused());
    let actions = bench.llm(
        1,
        LlmOut::EndCall {
            reason: "the caller said goodbye".into(),
        },
    );
    let said = texts(&actions);
    assert!(!bench.machine.is_paused());
    assert!(!said.iter().any(|t| t == "As I was saying,"), "{said:?}");
    assert!(
        said.iter().any(|t| t == "The judge reads the file."),
        "the cut words are said again before the hang-up: {said:?}"
    );
    assert!(bench.machine.is_speaking());
    assert!(ended(&actions).is_none());
}

#[test]
fn our_own_words_committed_back_are_not_a_turn_but_a_short_answer_is() {
    let mut bench = speaking(&[]);
    // A speakerphone: the sentence playing comes back whole and is committed.
    let actions = bench.step(Input::Stt(SttOut::Committed(
        "the judge reads the file".into(),
    )));
    assert!(asked(&actions).is_none(), "{actions:?}");
    assert!(!cleared(&actions));
    assert!(bench.machine.is_speaking());
    // A short answer that repeats a word of ours is the caller's.
    let actions = bench.step(Input::Stt(SttOut::Committed("Then what?".into())));
    assert!(asked(&actions).is_some(), "{actions:?}");
}

#[test]
fn a_greeting_cut_for_good_is_in_the_history_as_heard_and_a_resumed_one_whole() {
    use crate::call::machine::heard::GREETING_UNHEARD;
    // Cut at once (resume off): the greeting was not heard to its end; with no timings of a
    // clip, nothing of it counts as heard.
    let mut bench = Bench::with(&[("TURN_END", "vad"), ("RESUME_AFTER_MS", "0")]);
    bench.start();
    bench.play(0, 0, 320);
    assert!(cleared(&bench.partial("hello, is anyone there")));
    let history = bench.machine.history();
    assert_eq!(words(&history[1]), GREETING_UNHEARD);

    // Paused, then resumed: the greeting is said again, and the history keeps it whole.
    let mut bench = Bench::with(&[("TURN_END", "vad")]);
    bench.start();
    bench.play(0, 0, 320);
    assert!(cleared(&bench.partial("hello hello")));
    bench.wait();
    assert!(words(&bench.machine.history()[1]).contains("Welcome to CoTrack Pro"));
    // A later real interruption of the resumed greeting is a cut again.
    bench.play(0, 1, 320);
    let actions = bench.say("I need help with a custody order");
    assert!(asked(&actions).is_some());
    assert_eq!(words(&bench.machine.history()[1]), GREETING_UNHEARD);
}
