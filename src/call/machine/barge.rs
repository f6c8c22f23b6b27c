//! Barge-in and resuming after a false interruption.
//!
//! The words rules (backchannel, echo, what interrupts) are in [`crate::call::barge_rules`].
//! What the machine does with them:
//! - A partial that interrupts while the assistant speaks sends `clear`. With
//!   `RESUME_AFTER_MS` at zero the turn is cut at once ([`Machine::interrupt`]). Otherwise the
//!   call is *paused*: the audio is cleared and the pieces cut off are kept (none of them was
//!   heard), the model's reply keeps streaming, and whatever the call would say meanwhile (the
//!   rest of the reply, a hold phrase) is kept, not spoken.
//! - A committed utterance during the pause that is not a backchannel is a real interruption:
//!   the turn is cut as for any barge-in (the history keeps what was heard, marked as
//!   interrupted) and the utterance starts the next turn. A committed backchannel ("mm-hmm")
//!   is kept in the transcript and changes nothing; an empty commit is ignored.
//! - The pause ends in a resume `RESUME_AFTER_MS` after the clear or after the last partial
//!   heard during the pause, whichever is later: a caller still talking is not talked over,
//!   and their words will commit first (the resume wait is longer than the speech-to-text's
//!   end-of-utterance silence). Loud audio alone (no words) does not hold it; keys pressed
//!   do, and their turn cuts the reply.
//! - Resuming says "As I was saying," when the first piece cut off was a sentence of the
//!   reply, then every piece cut off, from the first the caller did not hear in full, then
//!   what was kept during the pause, and the reply goes on. Text-to-speech already asked for
//!   the cut pieces still arrives and is dropped: cancelling it would cancel the model too.
//! - History and transcript stay true to what was heard: the transcript gets a piece when
//!   Twilio echoes its mark, and of a piece cut by the clear, the whole words played before it
//!   (`heard.rs`, marked "— [cut off]"); a resumed piece is said, and so written, again in
//!   full. The history keeps the whole reply only when it is heard to its end.

use std::sync::Arc;
use std::time::Instant;

use super::{Machine, Phase};
use crate::call::playback::{Kind, Piece};
use crate::personas::prompts::Phrase;

/// A reply cleared by a partial, waiting to be resumed or cut.
pub(super) struct Paused {
    /// When `clear` was sent, and the last partial heard since.
    cleared_at: Instant,
    last_partial: Option<Instant>,
    /// The pieces the clear cut off, oldest first: none was heard in full.
    cut: Vec<Piece>,
    /// What the call said during the pause, in order, to say on resuming.
    held: Vec<Held>,
}

/// A piece of speech kept during a pause.
pub(super) struct Held {
    kind: Kind,
    text: String,
    clip: Option<Arc<Vec<u8>>>,
}

impl Machine<'_> {
    /// A partial transcript while the call is talking: a barge-in when assistant audio plays
    /// and the words interrupt; during a pause it holds the resume back.
    pub(super) fn on_partial(&mut self, now: Instant, text: &str) {
        if let Some(paused) = self.paused.as_mut() {
            paused.last_partial = Some(now);
            return;
        }
        if !self.playback.is_speaking() {
            return;
        }
        let heard = self.heard.iter().map(|(_, text)| text.as_str());
        let spoken = heard.chain(self.playback.texts());
        let interrupts = self.listening.is_interruption(
            text,
            self.rules.calls.tuning.barge_in_min_chars,
            spoken,
        );
        if !interrupts {
            return;
        }
        log::info!(callSid = self.call_sid(), partialChars = text.chars().count(); "call.barge_in");
        self.barge_ins += 1;
        if self.rules.calls.tuning.resume_after.is_zero() {
            self.interrupt(now);
        } else {
            self.pause(now);
        }
    }

    /// Clears what plays and keeps it, and the live turn, for a resume.
    fn pause(&mut self, now: Instant) {
        let cut = self.clear_playback(now);
        self.paused = Some(Paused {
            cleared_at: now,
            last_partial: None,
            cut,
            held: Vec::new(),
        });
    }

    /// Whether the call is paused after a barge-in.
    pub(super) fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Keeps a piece of speech for the resume instead of saying it, while paused. Returns it
    /// back when the call is not paused.
    pub(super) fn hold_while_paused(
        &mut self,
        kind: Kind,
        text: &str,
        clip: Option<Arc<Vec<u8>>>,
    ) -> Option<(Kind, Option<Arc<Vec<u8>>>)> {
        match self.paused.as_mut() {
            Some(paused) => {
                paused.held.push(Held {
                    kind,
                    text: text.to_string(),
                    clip,
                });
                None
            }
            None => Some((kind, clip)),
        }
    }

    /// When a pause turns into a resume, unless words come first. Keys pressed meanwhile hold
    /// it: their turn (after `KEYPAD_GAP`) cuts the reply.
    pub(super) fn resume_due(&self) -> Option<Instant> {
        if self.keys_due.is_some() {
            return None;
        }
        let paused = self.paused.as_ref()?;
        let from = paused
            .last_partial
            .map_or(paused.cleared_at, |p| p.max(paused.cleared_at));
        let due = from + self.rules.calls.tuning.resume_after;
        // With the smart turn end the call itself commits the caller's words: words waiting
        // for their commit hold the resume until it is asked (its deadline wakes the call),
        // and a commit asked holds it until its transcript is back (words: the turn is cut;
        // nothing or a backchannel: the resume comes), or `RESUME_AFTER_MS` after it at most.
        match self.turn_end_pending() {
            Some(None) => None,
            Some(Some(asked)) => Some(due.max(asked + self.rules.calls.tuning.resume_after)),
            None => Some(due),
        }
    }

    /// Resumes when the pause has lasted its time.
    pub(super) fn check_resume(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Talking) || self.resume_due().is_none_or(|due| now < due) {
            return;
        }
        log::info!(callSid = self.call_sid(); "call.resumed: no words followed the barge-in");
        self.resume(now, true);
    }

    /// Ends the pause: what was cut and what was held is said again, after "As I was saying,"
    /// when `announce` and the first piece is the model's. (Also when the assistant ends or
    /// hands over the call during a pause: its last words are said, not dropped.)
    pub(super) fn resume(&mut self, now: Instant, announce: bool) {
        let Some(paused) = self.paused.take() else {
            return;
        };
        // A greeting that was cut is said again: the history's stays as it is.
        self.greeting_cut = None;
        if announce && paused.cut.first().is_some_and(|p| p.kind == Kind::Reply) {
            self.say_phrase(Phrase::Resume);
        }
        for piece in paused.cut {
            let clip = self.clip_of(&piece);
            self.say(piece.kind, &piece.text, clip);
        }
        for held in paused.held {
            self.say(held.kind, &held.text, held.clip);
        }
        self.maybe_finish_turn(now);
    }

    /// The pre-rendered audio of a greeting or fixed phrase cut off, to say it again.
    fn clip_of(&self, piece: &Piece) -> Option<Arc<Vec<u8>>> {
        let stream = self.stream.as_ref()?;
        match piece.kind {
            Kind::Reply => None,
            Kind::Greeting => self.rules.clips.greeting(&stream.voice, stream.role),
            Kind::Phrase => Phrase::ALL
                .into_iter()
                .find(|p| p.text() == piece.text)
                .and_then(|p| self.rules.clips.phrase(&stream.voice, p)),
        }
    }
}
