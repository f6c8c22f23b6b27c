//! Answering-machine detection on calls we place: what Twilio's result (`AnsweredBy`, posted
//! to `/call/amd` and handed to the live call) does to the call.
//!
//! - An answering machine (`machine_end_beep`, `machine_end_silence`, `machine_end_other`,
//!   and `machine_start`, which only comes if detection was asked without waiting for the
//!   greeting's end): whatever is playing is cut, the model's turn in flight is cancelled,
//!   the configured voicemail message is said, and once its mark comes back (at the latest
//!   after [`VOICEMAIL_GRACE`]) the call ends as [`End::Voicemail`]. Nothing the machine
//!   records meanwhile (its beep, noise) starts a turn or interrupts the message.
//! - A fax machine: the call ends at once as [`End::Fax`].
//! - A person, or no decision (`human`, `unknown`): the call goes on as any call.
//! - A result before the stream's `start` is kept and acted on at the start (a machine then
//!   hears the message instead of the greeting); one after the call began to close changes
//!   nothing.

use std::time::{Duration, Instant};

use super::{End, Machine, Phase};
use crate::call::playback::Kind;
use crate::twilio::amd::AnsweredBy;

/// How long the voicemail message may take to play before the call is closed anyway: the
/// message is at most 500 characters (about 30 s spoken), and a machine stops recording
/// after a minute or so.
pub const VOICEMAIL_GRACE: Duration = Duration::from_secs(60);

impl Machine<'_> {
    pub(super) fn on_answered_by(&mut self, now: Instant, answered_by: AnsweredBy) {
        match self.phase {
            Phase::Connecting => {
                log::info!(label = self.label.as_str(), answeredBy = answered_by.as_str(); "call.amd: result before the stream started; kept for its start");
                self.early_answer = Some(answered_by);
                return;
            }
            Phase::Talking => {}
            Phase::Closing { .. } | Phase::Transferring(_) | Phase::Ended(_) => {
                log::info!(callSid = self.call_sid(), answeredBy = answered_by.as_str(); "call.amd: result while the call is closing or being transferred; ignored");
                return;
            }
        }
        log::info!(callSid = self.call_sid(), answeredBy = answered_by.as_str(); "call.amd");
        if answered_by == AnsweredBy::Fax {
            self.finish(End::Fax);
        } else if answered_by.is_machine() {
            self.leave_voicemail(now);
        }
    }

    /// At the stream's start: acts on a result that came before it. Returns whether the
    /// greeting is to be left out (the call is closing or over).
    pub(super) fn answered_before_start(&mut self, now: Instant) -> bool {
        match self.early_answer.take() {
            Some(answered_by) => {
                self.on_answered_by(now, answered_by);
                !matches!(self.phase, Phase::Talking)
            }
            None => false,
        }
    }

    /// Cuts whatever plays and the turn in flight, says the voicemail message, and ends the
    /// call once it has played.
    fn leave_voicemail(&mut self, now: Instant) {
        // `interrupt` sends `clear` if anything plays and moves to a new turn, which cancels
        // the model's reply in flight and drops whatever it still sends.
        self.interrupt(now);
        self.keys.clear();
        self.keys_due = None;
        let message = self.rules.calls.tuning.voicemail_message.clone();
        self.say(Kind::Phrase, &message, None);
        self.phase = Phase::Closing {
            end: End::Voicemail,
            by: now + VOICEMAIL_GRACE,
        };
    }
}
