//! The smart end of the caller's turn (`TURN_END=smart`): the call, not the speech-to-text
//! service's silence detector, decides when the caller has finished, from the words of the
//! latest partial transcript and the silence after them.
//!
//! - Words that finish a sentence or ask a question ([`Ending::Complete`]: "…hearing?",
//!   "What happens next", "Can I bring my kids") end the turn after a short silence
//!   (`TURN_END_SHORT_MS`, about 300 ms): the caller is most likely done, and every
//!   millisecond more is a stressed caller waiting for an answer.
//! - Words that trail off ([`Ending::Trailing`]: "and then he…", "so", "um") wait longer
//!   (`TURN_END_LONG_MS`, about 1.5 s): the caller is thinking, and cutting in would make them
//!   repeat themselves.
//! - Anything else ([`Ending::Open`]) waits as long as the service's detector would have
//!   (`STT_VAD_SILENCE_SECS`, kept within the two).
//!
//! Silence is counted from the later of the last partial and the caller's last loud audio
//! ([`Input::Voice`](super::Input::Voice)), so a caller still talking is not cut off; loud
//! audio with no new words (a noisy line) holds it at most `TURN_END_LONG_MS`. When
//! the silence is long enough the machine asks for a manual commit ([`Action::Commit`]); the
//! service's `committed_transcript` then starts the turn as any utterance does. Without a
//! partial since the last commit there is nothing to commit, so a cough or the line's noise
//! asks for nothing. A commit that comes back empty starts no turn.

use std::time::{Duration, Instant};

use super::{Action, Machine, Phase};
use crate::call::workers::SttOut;
use crate::config::TurnEndMode;

/// How the words heard so far end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A finished sentence or a question: the caller has probably said their piece.
    Complete,
    /// A conjunction, a filler, a comma or an ellipsis: more is on its way.
    Trailing,
    /// Neither.
    Open,
}

/// Words after which a sentence goes on: conjunctions, fillers, and words that cannot end
/// one (articles, possessives).
const TRAILING_WORDS: &[&str] = &[
    "and", "or", "but", "so", "because", "cause", "cuz", "then", "if", "that", "um", "umm", "uh",
    "uhh", "er", "erm", "hmm", "like", "the", "a", "an", "my", "his", "their", "our", "your",
];

/// Words that open a question.
const QUESTION_WORDS: &[&str] = &[
    "what", "when", "where", "who", "whom", "whose", "why", "how", "which",
];

/// Auxiliaries that open a question when a subject follows ("can I", "do you", "is there").
const QUESTION_AUXILIARIES: &[&str] = &[
    "can", "could", "do", "does", "did", "is", "are", "was", "were", "will", "would", "should",
    "shall", "may", "might", "have", "has", "had", "am",
];
const SUBJECTS: &[&str] = &[
    "i", "you", "we", "he", "she", "it", "they", "there", "this", "that", "my", "the", "your",
    "someone", "anyone",
];

/// Words a caller opens with before the question itself ("so what happens", "okay, can I").
const OPENERS: &[&str] = &[
    "so", "and", "but", "okay", "ok", "well", "um", "uh", "oh", "then",
];

/// How `text` (a partial transcript) ends; see the module docs.
pub fn classify(text: &str) -> Ending {
    let text = text.trim();
    if text.ends_with('?') {
        return Ending::Complete;
    }
    if text.ends_with("...") || text.ends_with('…') || text.ends_with(',') {
        return Ending::Trailing;
    }
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let Some(last) = words.last() else {
        return Ending::Open;
    };
    if TRAILING_WORDS.contains(&last.as_str()) || last.ends_with('-') {
        return Ending::Trailing;
    }
    if text.ends_with(['.', '!']) {
        return Ending::Complete;
    }
    let body: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .skip_while(|w| OPENERS.contains(w))
        .collect();
    let question = match body.as_slice() {
        [first, ..] if QUESTION_WORDS.contains(first) => true,
        [first, second, ..] => QUESTION_AUXILIARIES.contains(first) && SUBJECTS.contains(second),
        _ => false,
    };
    if question {
        Ending::Complete
    } else {
        Ending::Open
    }
}

/// What the smart turn end keeps between inputs.
#[derive(Debug, Default)]
pub(super) struct TurnEnd {
    /// The latest partial since the last commit: how it ends and when it came.
    heard: Option<(Ending, Instant)>,
    /// When the last manual commit was asked for, until its transcript comes back.
    commit_asked: Option<Instant>,
    /// The commit was asked again: its first got no transcript within `TURN_END_LONG_MS` (lost
    /// with a speech-to-text session being replaced). Once only.
    commit_retried: bool,
}

impl Machine<'_> {
    fn smart_turn_end(&self) -> bool {
        self.rules.calls.tuning.turn_end == TurnEndMode::Smart
    }

    /// The silence that ends a turn after words ending so.
    fn turn_end_wait(&self, ending: Ending) -> Duration {
        let tuning = &self.rules.calls.tuning;
        match ending {
            Ending::Complete => tuning.turn_end_short,
            Ending::Trailing => tuning.turn_end_long,
            Ending::Open => Duration::from_secs_f64(tuning.vad_silence_secs)
                .clamp(tuning.turn_end_short, tuning.turn_end_long),
        }
    }

    /// Notes what speech-to-text reported, before the turn rules see it; false when the
    /// report is to be dropped (a commit with no words: the service's answer to a commit of
    /// silence, which must not start a turn).
    pub(super) fn turn_end_heard(&mut self, now: Instant, out: &SttOut) -> bool {
        match out {
            SttOut::Partial(text) if self.smart_turn_end() => {
                if let Some(asked) = self.turn_end.commit_asked {
                    // A late partial of the utterance just committed (the caller has not
                    // spoken since) must not ask for a second commit. Its transcript comes
                    // back within moments; a commit never answered holds nothing for long.
                    let late = now < asked + self.rules.calls.tuning.turn_end_long;
                    if late && self.last_voice.is_none_or(|voice| voice <= asked) {
                        return true;
                    }
                }
                self.turn_end.heard = Some((classify(text), now));
                true
            }
            SttOut::Partial(_) => true,
            SttOut::Committed(text) => {
                self.turn_end = TurnEnd::default();
                !text.trim().is_empty()
            }
            SttOut::Lost(_) => {
                self.turn_end = TurnEnd::default();
                true
            }
        }
    }

    /// Whether the caller's words are on their way to a turn (smart turn end only): `Some(None)`
    /// while they wait for their commit, `Some(Some(asked))` while the commit asked then is
    /// not answered; `None` when nothing is pending.
    pub(super) fn turn_end_pending(&self) -> Option<Option<Instant>> {
        if !self.smart_turn_end() {
            return None;
        }
        if self.turn_end.heard.is_some() {
            return Some(None);
        }
        self.turn_end.commit_asked.map(Some)
    }

    /// When the caller's turn ends unless they speak again, if words wait for it.
    pub(super) fn turn_end_due(&self) -> Option<Instant> {
        if !matches!(self.phase, Phase::Talking) {
            return None;
        }
        let Some((ending, at)) = self.turn_end.heard else {
            // A commit asked and never answered is asked once more.
            let asked = self
                .turn_end
                .commit_asked
                .filter(|_| !self.turn_end.commit_retried)?;
            return Some(asked + self.rules.calls.tuning.turn_end_long);
        };
        // Loud audio holds the count (a caller still talking), but only so far: on a line
        // with steady noise (a car, a television) and no new words, the turn still ends at
        // most `TURN_END_LONG_MS` after the words' last partial plus their own wait.
        let long = self.rules.calls.tuning.turn_end_long;
        let silent_since = self
            .last_voice
            .map_or(at, |voice| voice.clamp(at, at + long));
        Some(silent_since + self.turn_end_wait(ending))
    }

    /// Asks for the commit once the silence after the words is long enough.
    pub(super) fn check_turn_end(&mut self, now: Instant) {
        if self.turn_end_due().is_some_and(|due| now >= due) {
            match self.turn_end.heard.take() {
                Some((ending, _)) => {
                    self.turn_end.commit_retried = false;
                    log::debug!(callSid = self.call_sid(), ending:? = ending; "call.turn_end.commit");
                }
                None => {
                    self.turn_end.commit_retried = true;
                    log::warn!(callSid = self.call_sid(); "call.turn_end.commit_again: the last commit got no transcript");
                }
            }
            self.turn_end.commit_asked = Some(now);
            self.actions.push(Action::Commit);
        }
    }
}
