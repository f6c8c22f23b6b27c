//! The smart end of the caller's turn (`turn_end.rs`), with made-up times.

use super::tests::{asked, Bench};
use super::*;

fn commits(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Commit))
        .count()
}

/// A greeted call (greeting heard, nothing playing) at 1 s.
fn greeted(extra: &[(&str, &str)]) -> Bench {
    let mut bench = Bench::with(extra);
    bench.greeted();
    bench.at(1_000);
    bench
}

fn ms(bench: &Bench, at: Instant) -> u64 {
    at.duration_since(bench.t0).as_millis() as u64
}

#[test]
fn partials_are_classified_by_how_they_end() {
    for complete in [
        "What happens at the hearing?",
        "I need to move the hearing.",
        "Thank you!",
        "what happens at the hearing",
        "So how do I file it",
        "Can I bring my kids",
        "do you know the judge",
        "Okay, is there a fee",
    ] {
        assert_eq!(classify(complete), Ending::Complete, "{complete:?}");
    }
    for trailing in [
        "and then he said that",
        "and then he…",
        "I went to the court and",
        "so",
        "But because",
        "Um",
        "He told me, um",
        "I wanted to say...",
        "My ex, ",
        "What happens at the",
        "We picked up the",
    ] {
        assert_eq!(classify(trailing), Ending::Trailing, "{trailing:?}");
    }
    for open in [
        "I need help with my custody order",
        "the judge said no",
        "",
        "Can",
    ] {
        assert_eq!(classify(open), Ending::Open, "{open:?}");
    }
}

#[test]
fn a_question_ends_the_turn_after_the_short_silence() {
    let mut bench = greeted(&[]);
    assert!(bench.partial("What happens at the hearing?").is_empty());
    let due = bench.machine.next_deadline().expect("a deadline");
    assert_eq!(
        ms(&bench, due),
        1_300,
        "TURN_END_SHORT_MS after the partial"
    );
    let actions = bench.wait();
    assert_eq!(commits(&actions), 1, "{actions:?}");
    // The commit's transcript starts the turn as any utterance does.
    bench.at(1_350);
    let actions = bench.say("What happens at the hearing?");
    assert!(asked(&actions).is_some(), "{actions:?}");
}

#[test]
fn a_trailing_phrase_waits_the_long_silence_and_a_plain_one_the_vad_silence() {
    let mut bench = greeted(&[]);
    bench.partial("and then he said that");
    let due = bench.machine.next_deadline().expect("a deadline");
    assert_eq!(ms(&bench, due), 2_500, "TURN_END_LONG_MS after the partial");
    // Nothing happens before it.
    bench.at(2_499);
    assert_eq!(commits(&bench.step(Input::Deadline)), 0);
    assert_eq!(commits(&bench.wait()), 1);

    // Neither complete nor trailing: the service's own silence (STT_VAD_SILENCE_SECS, 0.8 s).
    bench.step(Input::Voice(bench.t0 + Duration::from_millis(3_900)));
    bench.at(4_000);
    bench.partial("I need help with my custody order");
    let due = bench.machine.next_deadline().expect("a deadline");
    assert_eq!(ms(&bench, due), 4_800);
}

#[test]
fn the_latest_partial_decides_and_the_settings_set_the_silences() {
    let mut bench = greeted(&[("TURN_END_SHORT_MS", "200"), ("TURN_END_LONG_MS", "2000")]);
    bench.partial("Can I bring my kids");
    assert_eq!(ms(&bench, bench.machine.next_deadline().unwrap()), 1_200);
    // The caller goes on: "…and": now the turn waits.
    bench.at(1_100);
    bench.partial("Can I bring my kids and");
    assert_eq!(ms(&bench, bench.machine.next_deadline().unwrap()), 3_100);
    bench.at(1_400);
    bench.partial("Can I bring my kids and my mother?");
    assert_eq!(ms(&bench, bench.machine.next_deadline().unwrap()), 1_600);
}

#[test]
fn a_caller_still_making_sound_is_not_cut_off() {
    let mut bench = greeted(&[]);
    bench.partial("What happens at the hearing?");
    // Loud audio after the partial (the next words, not yet transcribed) moves the silence's
    // start: at the partial's deadline nothing is committed.
    bench.at(1_300);
    bench.step(Input::Voice(bench.t0 + Duration::from_millis(1_250)));
    assert_eq!(commits(&bench.step(Input::Deadline)), 0);
    let due = bench.machine.next_deadline().expect("a deadline");
    assert_eq!(ms(&bench, due), 1_550);
    assert_eq!(commits(&bench.wait()), 1);
}

#[test]
fn noise_without_words_commits_nothing_and_one_utterance_is_committed_once() {
    let mut bench = greeted(&[]);
    // A cough: loud, never transcribed.
    bench.step(Input::Voice(bench.t0 + Duration::from_millis(900)));
    bench.at(5_000);
    assert_eq!(commits(&bench.step(Input::Deadline)), 0);

    bench.partial("I need to move the hearing.");
    assert_eq!(commits(&bench.wait()), 1);
    // A late partial of the same words (the caller silent since) asks for no second commit.
    bench.at(5_400);
    bench.partial("I need to move the hearing.");
    // Its transcript comes back (no second ask for it).
    bench.at(5_450);
    assert!(asked(&bench.say("I need to move the hearing.")).is_some());
    bench.at(9_000);
    assert_eq!(commits(&bench.step(Input::Deadline)), 0);
    // The caller speaks again: their new words are committed in their turn.
    bench.step(Input::Voice(bench.t0 + Duration::from_millis(9_100)));
    bench.at(9_200);
    bench.partial("Thank you.");
    assert_eq!(commits(&bench.wait()), 1);
}

#[test]
fn an_empty_commit_starts_no_turn() {
    let mut bench = greeted(&[]);
    bench.partial("What happens at the hearing?");
    bench.wait();
    bench.at(1_400);
    assert!(asked(&bench.say("What happens at the hearing?")).is_some());
    // A commit of silence after it (a second commit, a reconnect): words, or no turn.
    let turn = bench.machine.turn();
    let actions = bench.say("  ");
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(bench.machine.turn(), turn);
}

#[test]
fn with_turn_end_vad_the_service_alone_ends_turns() {
    let mut bench = greeted(&[("TURN_END", "vad")]);
    bench.partial("What happens at the hearing?");
    // Only the reprompt's clock is left (12 s after the partial).
    let due = bench.machine.next_deadline().expect("a deadline");
    assert_eq!(ms(&bench, due), 13_000);
    assert_eq!(commits(&bench.wait()), 0);
}

#[test]
fn steady_noise_holds_the_end_of_the_turn_only_so_far() {
    let mut bench = greeted(&[]);
    // An open utterance, then a noisy line: loud audio every 100 ms and no new words.
    assert!(bench
        .partial("I need help with my custody order")
        .is_empty());
    let words_at = bench.now;
    let long = bench.tuning().turn_end_long;
    let mut asked_at = None;
    for step in 1..=60u64 {
        bench.at(1_000 + step * 100);
        let noise = bench.now;
        bench.step(Input::Voice(noise));
        if commits(&bench.step(Input::Deadline)) > 0 {
            asked_at = Some(bench.now);
            break;
        }
    }
    let asked_at = asked_at.expect("the commit is asked despite the noise");
    let open_wait = Duration::from_secs_f64(bench.tuning().vad_silence_secs);
    assert!(asked_at <= words_at + long + open_wait + Duration::from_millis(100));
    assert!(
        asked_at >= words_at + long,
        "noise held it as long as it may"
    );
}

#[test]
fn a_commit_that_gets_no_transcript_is_asked_once_more() {
    let mut bench = greeted(&[]);
    bench.partial("What happens at the hearing?");
    assert_eq!(commits(&bench.wait()), 1);
    let first = bench.now;
    // No transcript comes back (the session was being replaced): asked again, once.
    let again = bench.wait();
    assert_eq!(commits(&again), 1);
    assert_eq!(bench.now, first + bench.tuning().turn_end_long);
    let later = bench.machine.next_deadline();
    assert!(
        later.is_none_or(|at| at > bench.now + bench.tuning().turn_end_long),
        "not a third time: {later:?}"
    );
}
