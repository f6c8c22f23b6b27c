//! The call's own controls: the assistant ending the call (`end_call`) and handing it to a
//! person (`transfer_call`, or the caller pressing `0` alone).
//!
//! Ending: the turn's sentences (the model's goodbye) play to their marks, then the call ends
//! as [`End::AssistantEnded`] and the call thread closes the stream. Our TwiML has nothing after
//! `<Connect><Stream>`, and Twilio's `<Connect>` documentation says that without an `action`
//! Twilio moves on to the next verb and, with none, ends the call: closing our side of the
//! stream hangs up. A model that ends the call without a word of goodbye gets a fixed one.
//!
//! Transferring: the turn's sentences play first (a key press cuts them, as any key does), then
//! the transfer phrase (`TRANSFER_PHRASE`); once it has played (its mark, or its deadline),
//! [`Action::Transfer`] asks Twilio, off the call thread, to redirect the live call to
//! `<Dial>` the role's number. Twilio then sends `stop` and closes the stream, and the call ends
//! as [`End::Transferred`] — whichever of Twilio's answer and its `stop` comes first. A failed
//! request is an apology and the call goes on; a caller who hangs up meanwhile ends it as
//! usual. While the call is being handed over, the caller's words and keys start no turn.

use std::time::{Duration, Instant};

use super::{Action, End, Machine, Phase, CLOSING_GRACE};
use crate::call::end::{EndedBy, MAX_REASON_CHARS};
use crate::call::playback::Kind;
use crate::personas::prompts::{self, Phrase};
use crate::providers::anthropic::Turn;
use crate::records::event::TransferRecord;
use crate::timestamp;

/// How long Twilio may take to answer the transfer request (the REST client gives up after
/// 15 s) before it is taken as failed.
pub const TRANSFER_ANSWER_WAIT: Duration = Duration::from_secs(20);
/// After Twilio accepted the transfer, how long its `stop` may take before we close our side
/// (the call is in `<Dial>` by then; closing the old stream does not end it).
pub const TRANSFER_STOP_WAIT: Duration = Duration::from_secs(10);
/// Transfers one call may try: a model or a caller asking again and again must not turn into a
/// stream of requests to Twilio.
pub const MAX_TRANSFERS_PER_CALL: usize = 3;

/// A transfer under way.
#[derive(Debug)]
pub(super) struct Transfer {
    number: String,
    by: EndedBy,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// The turn's speech and the transfer phrase play; Twilio is asked after them (at the
    /// latest at `by`).
    Announcing { by: Instant },
    /// Twilio is asked; `stopped` once its `stop` came (before its answer).
    Asked { by: Instant, stopped: bool },
    /// Twilio accepted; its `stop` is awaited until `by`.
    Accepted { by: Instant },
}

impl Transfer {
    /// When the machine must look at the transfer again.
    pub(super) fn deadline(&self) -> Instant {
        match self.stage {
            Stage::Announcing { by } | Stage::Asked { by, .. } | Stage::Accepted { by } => by,
        }
    }
}

/// The reason the model gave, fit for the record: one line, at most [`MAX_REASON_CHARS`].
pub fn bounded_reason(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    if line.is_empty() {
        return "no reason given".to_string();
    }
    line.chars().take(MAX_REASON_CHARS).collect()
}

impl Machine<'_> {
    /// The model called `end_call`: what it said this turn plays, then the call ends.
    pub(super) fn on_end_call(&mut self, now: Instant, reason: &str) {
        if !matches!(self.phase, Phase::Talking) {
            return;
        }
        let reason = bounded_reason(reason);
        log::info!(callSid = self.call_sid(), reason = reason.as_str(); "call.end_call");
        // Paused by a barge-in whose words have not come: the goodbye is said, not dropped.
        self.resume(now, false);
        if let Some(live) = self.live.as_mut() {
            let rest = live.sentences.finish();
            self.speak_sentences(now, rest.into_iter().collect());
        }
        if !self.playback.is_speaking() {
            // Never a silent hang-up.
            self.say(Kind::Phrase, prompts::ASSISTANT_GOODBYE, None);
        }
        self.phase = Phase::Closing {
            end: End::AssistantEnded(reason),
            by: now + CLOSING_GRACE,
        };
    }

    /// The model called `transfer_call`: its sentences play, then the transfer phrase.
    pub(super) fn on_transfer_tool(&mut self, now: Instant) {
        self.resume(now, false);
        if let Some(live) = self.live.as_mut() {
            let rest = live.sentences.finish();
            self.speak_sentences(now, rest.into_iter().collect());
        }
        if !self.start_transfer(now, EndedBy::Assistant) {
            log::warn!(callSid = self.call_sid(); "call.transfer.refused: no transfer for this call");
        }
    }

    /// The caller pressed `0` alone: a transfer where one is configured (then `true`);
    /// elsewhere it is an ordinary key.
    pub(super) fn transfer_on_zero(&mut self, now: Instant) -> bool {
        if self.transfer_number().is_none() || self.transfers.len() >= MAX_TRANSFERS_PER_CALL {
            return false;
        }
        // The caller's own turn: what plays is cut, as by any key.
        if self.playback.is_speaking() || self.live.is_some() || self.is_paused() {
            self.interrupt(now);
        } else {
            self.next_turn();
        }
        self.history.push(Turn::user(
            "(the caller pressed 0 to reach a person; the call is being transferred)",
        ));
        self.start_transfer(now, EndedBy::Caller)
    }

    /// The number this call may be transferred to, if any.
    fn transfer_number(&self) -> Option<String> {
        let role = self.stream.as_ref()?.role;
        self.rules
            .calls
            .transfer
            .number_for(role)
            .map(str::to_string)
    }

    /// Says the transfer phrase (after whatever plays) and waits for it; `false` when this
    /// call may not be transferred (no number for its role, or too many tries).
    fn start_transfer(&mut self, now: Instant, by: EndedBy) -> bool {
        if !matches!(self.phase, Phase::Talking) {
            return false;
        }
        let Some(number) = self.transfer_number() else {
            return false;
        };
        if self.transfers.len() >= MAX_TRANSFERS_PER_CALL {
            log::warn!(callSid = self.call_sid(); "call.transfer.refused: too many tries");
            self.say(Kind::Phrase, prompts::TRANSFER_FAILED, None);
            return true;
        }
        log::info!(callSid = self.call_sid(), by = by.as_str(); "call.transfer.announced");
        self.keys.clear();
        self.keys_due = None;
        let phrase = self.rules.calls.transfer.phrase.clone();
        self.say(Kind::Phrase, &phrase, None);
        self.phase = Phase::Transferring(Transfer {
            number,
            by,
            stage: Stage::Announcing {
                by: now + CLOSING_GRACE,
            },
        });
        true
    }

    /// The transfer's timers: ask Twilio once the phrase has played; give up waiting for
    /// Twilio's answer or its `stop`.
    pub(super) fn transfer_time(&mut self, now: Instant) {
        let Phase::Transferring(transfer) = &mut self.phase else {
            return;
        };
        match transfer.stage {
            Stage::Announcing { by } => {
                if self.playback.is_speaking() && now < by {
                    return;
                }
                transfer.stage = Stage::Asked {
                    by: now + TRANSFER_ANSWER_WAIT,
                    stopped: false,
                };
                let number = transfer.number.clone();
                let by = transfer.by;
                let call_sid = self.call_sid().to_string();
                log::info!(callSid = call_sid.as_str(); "call.transfer.requested");
                self.transfers.push(TransferRecord {
                    number: number.clone(),
                    requested_by: by.as_str().to_string(),
                    timestamp: timestamp::format_ms(self.wall_ms(now)),
                    outcome: "requested".to_string(),
                    error: None,
                });
                self.actions.push(Action::Transfer { call_sid, number });
            }
            Stage::Asked { by, .. } => {
                if now >= by {
                    self.on_transfer_done(now, Err("twilio did not answer in time".to_string()));
                }
            }
            Stage::Accepted { by } => {
                if now >= by {
                    self.finish_transferred();
                }
            }
        }
    }

    /// Twilio's answer to the transfer request.
    pub(super) fn on_transfer_done(&mut self, now: Instant, result: Result<(), String>) {
        let Phase::Transferring(transfer) = &mut self.phase else {
            // Too late (taken as failed already) or no transfer: nothing to do.
            return;
        };
        let Stage::Asked { stopped, .. } = transfer.stage else {
            return;
        };
        if let Some(record) = self.transfers.last_mut() {
            match &result {
                Ok(()) => record.outcome = "transferred".to_string(),
                Err(why) => {
                    record.outcome = "failed".to_string();
                    record.error = Some(why.chars().take(MAX_REASON_CHARS).collect());
                }
            }
        }
        match result {
            Ok(()) if stopped => self.finish_transferred(),
            Ok(()) => {
                transfer.stage = Stage::Accepted {
                    by: now + TRANSFER_STOP_WAIT,
                };
            }
            Err(_) if stopped => self.finish(End::CallerHungUp),
            Err(why) => {
                log::error!(callSid = self.call_sid(), error = why.as_str(); "call.transfer.failed");
                self.phase = Phase::Talking;
                // The turn that asked for the transfer is over (its words and the phrase were
                // said first): a later interruption must not take the note with it.
                self.live = None;
                self.history.push(Turn::user(
                    "(the transfer to a person failed; the caller heard an apology and the call goes on)",
                ));
                if self.stt_lost_in_transfer {
                    // Without speech-to-text the call cannot go on: a goodbye, not silence.
                    self.close_with(now, Phrase::GoodbyeTrouble, End::SpeechToTextLost);
                    return;
                }
                self.say(Kind::Phrase, prompts::TRANSFER_FAILED, None);
            }
        }
    }

    /// Twilio's `stop`: the caller hung up, or, once Twilio was asked to transfer, the stream
    /// ending because the call moved to `<Dial>`.
    pub(super) fn on_stop(&mut self) {
        if let Phase::Transferring(transfer) = &mut self.phase {
            match &mut transfer.stage {
                Stage::Asked { stopped, .. } => {
                    *stopped = true;
                    return;
                }
                Stage::Accepted { .. } => return self.finish_transferred(),
                Stage::Announcing { .. } => {}
            }
        }
        self.finish(End::CallerHungUp);
    }

    fn finish_transferred(&mut self) {
        if let Phase::Transferring(transfer) = &self.phase {
            let end = End::Transferred {
                number: transfer.number.clone(),
                by: transfer.by,
            };
            self.finish(end);
        }
    }
}
