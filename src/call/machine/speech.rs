//! The speaking side: pieces of speech queued, their audio sent to Twilio in whole 20 ms
//! frames with a mark after each piece, and the marks Twilio echoes back (what was heard).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ms_between, Action, Carry, Machine, TurnLatencyRecord};
use crate::call::playback::{Kind, Piece};
use crate::call::workers::{Speech, TtsOut};
use crate::personas::prompts::Phrase;
use crate::speech::ulaw::{self, FRAME_BYTES};
use crate::twilio::media_messages;

impl Machine<'_> {
    pub(super) fn on_mark(&mut self, now: Instant, name: &str) {
        // Marks come back in order: this one and every one before it are no longer awaited.
        if let Some(pos) = self.marks_due.iter().position(|(n, _)| n == name) {
            self.marks_due.drain(..=pos);
        }
        if let Some(piece) = self.playback.echoed(name) {
            self.spoken.played_through(now, piece.turn, piece.seq);
            self.note_transcript(now, "assistant", &piece.text);
            if piece.kind == Kind::Reply {
                self.heard.push((piece.turn, piece.text));
            }
        }
        self.maybe_finish_turn(now);
    }

    pub(super) fn on_tts(&mut self, now: Instant, turn: u64, seq: u32, out: TtsOut) {
        if let TtsOut::Done { chars } = &out {
            self.usage.add_tts_chars(*chars);
        }
        if turn != self.turn {
            return;
        }
        let Some(sid) = self.stream.as_ref().map(|s| s.stream_sid.clone()) else {
            return;
        };
        match out {
            TtsOut::Audio(audio) => {
                // A piece that is no longer playing (cut off by a `clear`) is not sent.
                if self.playback.piece_mut(turn, seq).is_none() {
                    return;
                }
                if let Some(live) = self.live.as_mut().filter(|l| l.id == turn) {
                    if live.latency.first_audio_ms.is_none() {
                        live.latency.first_audio_ms = Some(ms_between(live.speech_end, now));
                    }
                }
                // Whole 20 ms frames: what does not fill one waits for the next audio of the
                // piece (or is padded with silence at its end). The audio's own buffer goes to
                // the call thread; the carry keeps one buffer for the piece.
                if self.carry.piece != (turn, seq) {
                    self.carry = Carry {
                        piece: (turn, seq),
                        bytes: Vec::new(),
                    };
                }
                let received = audio.len();
                let mut audio = audio;
                if !self.carry.bytes.is_empty() {
                    self.carry.bytes.extend_from_slice(&audio);
                    std::mem::swap(&mut self.carry.bytes, &mut audio);
                    self.carry.bytes.clear();
                }
                let whole = audio.len() / FRAME_BYTES * FRAME_BYTES;
                self.carry.bytes.extend_from_slice(&audio[whole..]);
                audio.truncate(whole);
                self.spoken.audio(now, turn, seq, received, whole);
                self.note_audio_sent(now, whole);
                self.media(audio);
                if whole > 0 {
                    self.note_first_frame(now, turn);
                }
            }
            TtsOut::Done { .. } => {
                if self.carry.piece == (turn, seq) && !self.carry.bytes.is_empty() {
                    let mut last = std::mem::take(&mut self.carry.bytes);
                    last.resize(FRAME_BYTES, ulaw::ULAW_SILENCE);
                    self.spoken.audio(now, turn, seq, 0, FRAME_BYTES);
                    self.note_audio_sent(now, FRAME_BYTES);
                    self.media(last);
                    self.note_first_frame(now, turn);
                }
                if self.playback.piece_mut(turn, seq).is_some() {
                    self.spoken.done(turn, seq);
                }
                if let Some(name) = self.playback.end(turn, seq) {
                    self.twilio(media_messages::mark(&sid, &name));
                    self.await_echo(now, name);
                }
            }
            TtsOut::Alignment(alignment) => {
                if self.playback.piece_mut(turn, seq).is_some() {
                    self.spoken.aligned(turn, seq, alignment);
                }
            }
            TtsOut::Failed(err) => {
                log::error!(callSid = self.call_sid(), error:% = err; "tts.piece_failed");
                if self.playback.piece_mut(turn, seq).is_none() {
                    // Cut off by a barge-in's pause: nobody waits for it (a resume says its
                    // text again as a new piece).
                    return;
                }
                // Its mark is sent with no audio before it: it plays as nothing, and the
                // apology (pre-rendered when it can be) follows — unless what failed was a
                // fixed phrase itself (the apology included): no apology loop.
                let was_phrase = self
                    .playback
                    .piece_mut(turn, seq)
                    .is_some_and(|p| p.kind == Kind::Phrase);
                if let Some(name) = self.playback.end(turn, seq) {
                    self.twilio(media_messages::mark(&sid, &name));
                    self.await_echo(now, name);
                }
                let first_failure = !was_phrase
                    && self
                        .live
                        .as_mut()
                        .filter(|l| l.id == turn)
                        .is_none_or(|l| !std::mem::replace(&mut l.apologized, true));
                if first_failure {
                    self.say_phrase(Phrase::Apology);
                }
            }
        }
    }

    /// `ulaw_bytes` of audio went to Twilio at `now`: it plays after what is queued before it,
    /// in real time (8 bytes a millisecond).
    fn note_audio_sent(&mut self, now: Instant, ulaw_bytes: usize) {
        let from = self.played_by.map_or(now, |by| by.max(now));
        self.played_by = Some(from + Duration::from_micros(ulaw_bytes as u64 * 125));
    }

    /// A mark went out: its echo is due when the audio before it has played, plus
    /// `MARK_TIMEOUT_MS`.
    fn await_echo(&mut self, now: Instant, name: String) {
        let played = self.played_by.map_or(now, |by| by.max(now));
        self.marks_due
            .push_back((name, played + self.rules.calls.tuning.mark_timeout));
    }

    /// Marks whose echo is overdue at `now` are taken as played: their pieces leave the
    /// playback (so the turn ends and the reprompt clock runs) but not into the transcript,
    /// which keeps what Twilio confirmed. Logged once per call: the client is broken.
    pub(super) fn take_overdue_marks(&mut self, now: Instant) {
        while let Some((name, _)) = self.marks_due.front().filter(|(_, due)| now >= *due) {
            let name = name.clone();
            self.marks_due.pop_front();
            self.marks_overdue += 1;
            if self.marks_overdue == 1 {
                log::warn!(
                    callSid = self.call_sid(),
                    mark = name.as_str();
                    "twilio.marks.overdue: a mark never came back; taking its audio as played (a broken client)"
                );
            }
            let _ = self.playback.echoed(&name);
            self.maybe_finish_turn(now);
        }
    }

    /// Queues a piece of speech in the current turn: pre-rendered when a clip is given.
    /// While paused after a barge-in, it is kept for the resume instead (`barge.rs`).
    pub(super) fn say(&mut self, kind: Kind, text: &str, clip: Option<Arc<Vec<u8>>>) {
        let Some((kind, clip)) = self.hold_while_paused(kind, text, clip) else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let speech = match clip {
            Some(audio) => {
                self.usage.add_cached_chars(text.chars().count() as u64);
                Speech::Clip(audio)
            }
            None => Speech::Text(text.to_string()),
        };
        self.playback.begin(Piece {
            turn: self.turn,
            seq,
            kind,
            text: text.to_string(),
            marked: false,
        });
        self.actions.push(Action::Speak {
            turn: self.turn,
            seq,
            speech,
        });
    }

    pub(super) fn say_phrase(&mut self, phrase: Phrase) {
        let clip = self
            .stream
            .as_ref()
            .and_then(|s| self.rules.clips.phrase(&s.voice, phrase));
        self.say(Kind::Phrase, phrase.text(), clip);
    }

    pub(super) fn note_first_frame(&mut self, now: Instant, turn: u64) {
        let Some(live) = self.live.as_mut().filter(|l| l.id == turn) else {
            return;
        };
        if live.latency.first_frame_ms.is_some() {
            return;
        }
        live.latency.first_frame_ms = Some(ms_between(live.speech_end, now));
        if self.turn_latencies.len() < super::MAX_TURN_LATENCIES {
            self.turn_latencies.push(TurnLatencyRecord {
                turn: live.latency.turn,
                speech_end_to_commit_ms: live.latency.speech_end_to_commit_ms,
                first_token_ms: live.latency.first_token_ms,
                first_frame_ms: live.latency.first_frame_ms,
            });
        }
        self.actions.push(Action::Latency(live.latency.clone()));
    }
}
