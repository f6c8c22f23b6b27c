//! The turn rules: what the caller's words do (a new turn, a barge-in), what the model's
//! output does (sentences, the hold phrase, the end of a reply, an apology), and how a turn
//! is cut off so that the history keeps only what the caller heard.

use std::time::Instant;

use super::{ms_between, Action, AskError, End, Live, Machine, Phase};
use crate::call::barge_rules;
use crate::call::playback::{Kind, Piece};
use crate::call::workers::{LlmOut, Speech, SttOut};
use crate::metrics::TurnLatency;
use crate::personas::prompts::{self, Phrase};
use crate::providers::anthropic::{Block, Speaker, Turn};
use crate::records::event::ToolCallRecord;
use crate::speech::sentences::Sentences;
use crate::timestamp;
use crate::twilio::media_messages;

impl Machine<'_> {
    pub(super) fn on_stt(&mut self, now: Instant, out: SttOut) {
        if !self.turn_end_heard(now, &out) {
            return;
        }
        match out {
            SttOut::Partial(text) => {
                // Re-armed, not stopped: a partial that never becomes an utterance (a cough)
                // must not silence the reprompt for good.
                self.quiet_since = Some(now);
                self.caller_active_at = now;
                if !matches!(self.phase, Phase::Talking) {
                    return;
                }
                self.on_partial(now, &text);
            }
            SttOut::Committed(text) if text.trim().is_empty() => {
                // A cough or a breath the service committed as nothing: no words, no turn.
                log::debug!(callSid = self.call_sid(); "stt.commit.empty");
            }
            SttOut::Committed(text) => {
                self.quiet_since = None;
                self.caller_active_at = now;
                self.reprompts = 0;
                self.note_transcript(now, "user", &text);
                if matches!(
                    &self.phase,
                    Phase::Closing {
                        end: End::AssistantEnded(_),
                        ..
                    }
                ) && !barge_rules::is_farewell(&self.listening, &text)
                {
                    // The caller had more to say than goodbye ("wait, one more thing"): the
                    // assistant's hang-up is withdrawn and they are answered.
                    log::info!(callSid = self.call_sid(); "call.end_call.withdrawn: the caller spoke over the goodbye");
                    self.phase = Phase::Talking;
                }
                if !matches!(self.phase, Phase::Talking) {
                    return;
                }
                let speaking = self.playback.is_speaking() || self.is_paused();
                if speaking && self.listening.is_backchannel(&text) {
                    // "Mm-hmm" while the assistant speaks (or is paused by a barge-in): kept in
                    // the transcript, neither an interruption nor a turn.
                    log::info!(callSid = self.call_sid(); "call.backchannel");
                    return;
                }
                let heard = self.heard.iter().map(|(_, text)| text.as_str());
                if self.playback.is_speaking()
                    && barge_rules::is_committed_echo(&text, heard.chain(self.playback.texts()))
                {
                    // The assistant's own words came back through the line and were committed
                    // (a speakerphone): kept in the transcript, not a turn.
                    log::info!(callSid = self.call_sid(); "call.echo.committed");
                    return;
                }
                if self.playback.is_speaking() || self.live.is_some() || self.is_paused() {
                    // The caller spoke again before the answer finished: answer both together.
                    if self.playback.is_speaking() {
                        self.barge_ins += 1;
                    }
                    self.interrupt(now);
                }
                self.start_turn(now, &text);
            }
            SttOut::Lost(reason) => {
                log::error!(callSid = self.call_sid(), reason:% = reason; "stt.lost");
                match self.phase {
                    Phase::Connecting => self.finish(End::SpeechToTextUnavailable),
                    // Handed over, the call needs no ears; if the transfer fails, it ends then.
                    Phase::Transferring(_) => self.stt_lost_in_transfer = true,
                    _ => self.close_with(now, Phrase::GoodbyeTrouble, End::SpeechToTextLost),
                }
            }
        }
    }

    pub(super) fn on_llm(&mut self, now: Instant, turn: u64, out: LlmOut) {
        if let LlmOut::Done { usage, .. } = &out {
            self.usage += usage;
        }
        if let LlmOut::ToolFinished {
            name,
            ok,
            duration_ms,
        } = &out
        {
            self.tool_calls.push(ToolCallRecord {
                tool_name: name.clone(),
                duration_ms: *duration_ms,
                timestamp: timestamp::format_ms(self.wall_ms(now)),
                success: *ok,
            });
        }
        let Some(live) = self.live.as_mut().filter(|l| l.id == turn && !l.llm_done) else {
            return;
        };
        match out {
            LlmOut::Delta(text) => {
                if live.latency.first_token_ms.is_none() {
                    live.latency.first_token_ms = Some(ms_between(live.speech_end, now));
                }
                live.last_delta = now;
                let done = live.sentences.push(&text);
                self.speak_sentences(now, done);
            }
            LlmOut::ToolsStarted(names) => {
                let rest = live.sentences.finish();
                crate::logging::with_fields(
                    &[("tools", serde_json::json!(names))],
                    || log::info!(callSid = self.call_sid(); "call.tools"),
                );
                self.speak_sentences(now, rest.into_iter().collect());
                self.say_phrase(Phrase::Hold);
            }
            LlmOut::ToolFinished { .. } => {}
            LlmOut::EndCall { reason } => self.on_end_call(now, &reason),
            LlmOut::Transfer => self.on_transfer_tool(now),
            LlmOut::Done {
                new_turns, error, ..
            } => {
                let rest = live.sentences.finish();
                live.llm_done = true;
                live.history_start = self.history.len();
                let apologize = error.is_some() && !live.apologized;
                if apologize {
                    live.apologized = true;
                }
                self.history.extend(new_turns);
                self.speak_sentences(now, rest.into_iter().collect());
                if let Some(err) = error {
                    log::error!(callSid = self.call_sid(), error:% = err; "llm.failed");
                    // Never an orphan tool_use: a failed round's history must end cleanly.
                    if self.history.last().is_some_and(|t| {
                        t.speaker == Speaker::User
                            && t.blocks
                                .iter()
                                .any(|b| matches!(b, Block::ToolResult { .. }))
                    }) {
                        self.history
                            .push(Turn::assistant("[the reply failed after that step]"));
                    }
                    if apologize {
                        self.say_phrase(Phrase::Apology);
                    }
                }
                self.maybe_finish_turn(now);
            }
        }
    }

    pub(super) fn on_ask_failed(&mut self, turn: u64, why: &AskError) {
        log::error!(callSid = self.call_sid(), error:% = why; "llm.unavailable");
        let Some(live) = self.live.as_mut().filter(|l| l.id == turn && !l.llm_done) else {
            return;
        };
        live.llm_done = true;
        live.apologized = true;
        self.say_phrase(Phrase::Apology);
    }

    pub(super) fn speak_sentences(&mut self, now: Instant, sentences: Vec<String>) {
        for sentence in sentences {
            if let Some(live) = &mut self.live {
                if live.latency.first_sentence_ms.is_none() {
                    live.latency.first_sentence_ms = Some(ms_between(live.speech_end, now));
                }
            }
            self.say(Kind::Reply, &sentence, None);
        }
    }

    /// A turn is over when its reply is complete and has finished playing.
    pub(super) fn maybe_finish_turn(&mut self, now: Instant) {
        if self.playback.is_speaking() || self.is_paused() {
            return;
        }
        match &self.live {
            Some(live) if !live.llm_done => {}
            Some(_) => {
                self.live = None;
                self.quiet_since = Some(now);
            }
            None => {
                self.quiet_since.get_or_insert(now);
            }
        }
    }

    /// Sends `clear` when anything plays; keeps what was heard of the pieces it cut off and
    /// returns the rest, from the first piece not heard whole.
    pub(super) fn clear_playback(&mut self, now: Instant) -> Vec<Piece> {
        let mut cut = Vec::new();
        if self.playback.is_speaking() {
            if let Some(sid) = self.stream.as_ref().map(|s| s.stream_sid.clone()) {
                self.twilio(media_messages::clear(&sid));
            }
            cut = self.playback.clear();
            // What was heard of it goes to the transcript and the turn's heard text; a piece
            // heard whole needs no resume.
            let whole = self.keep_words_heard(now, &cut);
            cut.drain(..whole);
        }
        // Twilio drops what it buffered and echoes the cut marks at once.
        self.marks_due.clear();
        self.played_by = None;
        self.carry.bytes.clear();
        cut
    }

    /// Cuts off whatever is playing (or paused) and the live turn: `clear` to Twilio, the
    /// turn's work cancelled, and the history keeps only what the caller heard.
    pub(super) fn interrupt(&mut self, now: Instant) {
        self.paused = None;
        self.clear_playback(now);
        self.note_greeting_cut();
        if let Some(live) = self.live.take() {
            let heard: Vec<&str> = self
                .heard
                .iter()
                .filter(|(turn, _)| *turn == live.id)
                .map(|(_, text)| text.as_str())
                .collect();
            let note = (!heard.is_empty()).then(|| {
                // What the caller heard, and that they cut in: the model should not repeat it,
                // nor assume the rest was said.
                format!("{} [interrupted by the caller]", heard.join(" "))
            });
            if live.llm_done {
                self.history.truncate(live.history_start);
            }
            if let Some(text) = note {
                self.history.push(Turn::assistant(&text));
            }
        }
        self.next_turn();
        self.quiet_since = Some(now);
    }

    /// A greeting cut off for good: the history says what the caller heard of it, so the model
    /// knows the call's notice (it is transcribed) may not have been heard.
    fn note_greeting_cut(&mut self) {
        let Some(heard) = self.greeting_cut.take() else {
            return;
        };
        let greeting = self.stream.as_ref().map(|s| prompts::greeting(s.role));
        let Some(greeting) = greeting else {
            return;
        };
        let said = Turn::assistant(&greeting);
        if let Some(turn) = self.history.iter_mut().take(2).find(|t| **t == said) {
            *turn = Turn::assistant(&heard);
        }
    }

    /// Moves to a new turn number: the old turn's work stops, pieces are numbered from 0.
    pub(super) fn next_turn(&mut self) {
        self.turn += 1;
        self.next_seq = 0;
        self.heard.clear();
        self.actions.push(Action::NewTurn(self.turn));
    }

    pub(super) fn start_turn(&mut self, now: Instant, text: &str) {
        self.next_turn();
        self.caller_turns += 1;
        let keep = self.rules.history_keep;
        if self.history.len() > keep + 16 {
            let excess = self.history.len() - keep;
            self.history.drain(..excess);
        }
        self.history.push(Turn::user(text));
        let speech_end = self.last_voice.filter(|v| *v <= now).unwrap_or(now);
        self.live = Some(Live {
            id: self.turn,
            sentences: Sentences::new(),
            last_delta: now,
            llm_done: false,
            history_start: self.history.len(),
            apologized: false,
            speech_end,
            committed: now,
            latency: TurnLatency {
                call_sid: self.call_sid().to_string(),
                turn: self.caller_turns,
                said: text.to_string(),
                speech_end_to_commit_ms: Some(ms_between(speech_end, now)),
                ..TurnLatency::default()
            },
        });
        self.actions.push(Action::Speak {
            turn: self.turn,
            seq: u32::MAX,
            speech: Speech::Prewarm,
        });
        self.actions.push(Action::Ask {
            turn: self.turn,
            history: self.history.clone(),
        });
    }
}
