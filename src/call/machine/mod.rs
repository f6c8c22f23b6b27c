//! The call machine: every decision of a call, as a pure function of its state, an input and
//! the time.
//!
//! [`Machine::step`] takes `(now, input)` and returns [`Action`]s for the call thread to carry
//! out; [`Machine::next_deadline`] tells the thread how long it may sleep before the machine
//! must look at the time again. The machine reads no clock, owns no socket, channel or thread,
//! touches no file and knows no provider client, so every rule below is unit-tested in
//! microseconds with made-up times (see the tests at the end). It logs through the `log`
//! facade; nothing it decides depends on that.
//!
//! The rules:
//! - The greeting plays when the stream starts; each committed utterance starts a turn: the
//!   model is asked, its text is cut into sentences, each sentence is spoken as a piece.
//! - What the caller heard is what Twilio echoed a mark for ([`Playback`]): the transcript,
//!   the history after a barge-in and the end of a turn all follow the marks. Of a piece cut
//!   off mid-way, the whole words played so far are kept, marked as cut off (`heard.rs`).
//! - Barge-in: a partial that interrupts (two content words or a stop word, not our own echo:
//!   [`crate::call::barge_rules`]) while we speak sends `clear` and pauses the reply; words
//!   committed then cut the turn and keep only what was heard in the history, silence resumes
//!   it from the first piece not heard whole (`barge.rs`). Nothing of a cancelled turn is sent
//!   to Twilio afterwards.
//! - Timers are deadlines: the start of the stream, the idle reap, the maximum duration and
//!   its goodbye, the reply that never ends, the sentence idle flush, reprompts after silence
//!   and the goodbye after the last one, the closing phrase's grace, a failed write.
//! - An apology is said once per turn, never for a failed phrase (no apology loop).
//! - A mark not echoed by [`CallTuning::mark_timeout`] after its audio should have finished
//!   playing is taken as played (the piece leaves the playback, not the transcript): a client
//!   that never echoes marks gets its reprompts and goodbye, and is logged once as broken.
//! - Answering-machine detection on a call we placed (`amd.rs`): a machine gets the voicemail
//!   message and the call ends; a fax ends it at once; a person carries on.
//! - What the caller sends is bounded: a key press is one of `0-9*#ABCD`, at most
//!   [`MAX_DTMF_PER_CALL`] are kept, and the transcript keeps at most
//!   [`MAX_TRANSCRIPT_BYTES`] of text (each entry at most [`MAX_ENTRY_BYTES`]), its truncation
//!   marked in it.
//! - The caller's turn ends when the words of the latest partial and the silence after them
//!   say so (`turn_end.rs`), or when the service's voice detector commits (`TURN_END=vad`).
//!
//! [`CallTuning::mark_timeout`]: crate::config::CallTuning::mark_timeout

use std::time::{Duration, Instant};

use super::barge_rules::Listening;
use super::clips::Clips;
use super::end::End;
use super::playback::{Kind, Playback};
use super::workers::{LlmOut, Speech, SttOut, TtsOut};
use crate::config::CallsConfig;
use crate::cost::CallUsage;
use crate::metrics::TurnLatency;
use crate::personas::prompts::{self, Phrase};
use crate::personas::{self, Role};
use crate::providers::anthropic::request::CALL_CONNECTED;
use crate::providers::anthropic::Turn;
use crate::records::event::{
    Direction, ToolCallRecord, TranscriptEntry, TransferRecord, TurnLatencyRecord,
};
use crate::speech::sentences::Sentences;
use crate::timestamp;
use crate::twilio::amd::AnsweredBy;
use crate::twilio::media_messages::{Inbound, StreamStart};

/// How long Twilio may take to send `start` after the stream opens (it sends it at once).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the goodbye may take to play before the call is closed anyway.
pub const CLOSING_GRACE: Duration = Duration::from_secs(20);
/// After a failed write, how long the reader has to say how the call ended (a caller who hangs
/// up closes the socket right after `stop`, which may still be on its way) before the failure
/// ends the call as a lost connection.
pub const WRITE_FAILURE_GRACE: Duration = Duration::from_millis(500);
/// Loud caller audio holds the silence timer this long after it (breath, noise between words).
pub const VOICE_HOLD: Duration = Duration::from_secs(1);
/// Key presses a call keeps (logged and in the transcript); more are dropped and counted. A
/// caller navigating by keypad presses a few dozen; 2,000 `dtmf` messages are a flood.
pub const MAX_DTMF_PER_CALL: u32 = 100;
/// Turns whose latencies the record keeps (a call of an hour has a few hundred).
pub const MAX_TURN_LATENCIES: usize = 500;
/// Keys pressed within this of each other are one entry: after the last, the model hears them
/// together as a turn ("the caller pressed 1 2 on the keypad").
pub const KEYPAD_GAP: Duration = Duration::from_millis(1500);
/// Text the transcript keeps: about four hours of talk. Past it one entry says it was cut.
pub const MAX_TRANSCRIPT_BYTES: usize = 256 * 1024;
/// Text one transcript entry keeps (an utterance of several minutes); longer is cut, marked.
pub const MAX_ENTRY_BYTES: usize = 4 * 1024;
/// What marks the end of a cut entry, and the entry that says the transcript was cut.
pub const TRUNCATED: &str = " [truncated]";
pub const TRANSCRIPT_TRUNCATED: &str = "[transcript truncated: later entries were not kept]";

/// Whether `digit` is one key press Twilio can report: `0`–`9`, `*`, `#`, `A`–`D`.
pub fn is_dtmf_digit(digit: &str) -> bool {
    matches!(digit.as_bytes(), [b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D'])
}

/// Something that happened, for the machine to decide on.
#[derive(Debug)]
pub enum Input {
    /// A message from Twilio (media goes straight to speech-to-text, not here).
    Twilio(Inbound),
    /// A WebSocket ping from Twilio or a proxy in front of us, with its payload.
    Ping(Vec<u8>),
    /// The Twilio connection ended or must be ended (seen by the reader).
    TwilioGone(End),
    Stt(SttOut),
    Llm {
        turn: u64,
        out: LlmOut,
    },
    Tts {
        turn: u64,
        seq: u32,
        out: TtsOut,
    },
    /// The caller's audio was loud (speech or noise) at this moment, as the reader last saw.
    /// The call thread gives it before the input it woke for; it decides nothing by itself.
    Voice(Instant),
    /// The time of [`Machine::next_deadline`] came.
    Deadline,
    /// The server is shutting down and its drain is over.
    Shutdown,
    /// A write to Twilio failed.
    WriteFailed,
    /// A piece of speech could not be queued (no text-to-speech, or its queue is full).
    SpeechDropped {
        turn: u64,
        seq: u32,
    },
    /// The model could not be asked.
    AskFailed {
        turn: u64,
        why: AskError,
    },
    /// Twilio's answering-machine detection said who took the call (see `amd.rs`).
    AnsweredBy(AnsweredBy),
    /// Twilio answered the request to transfer the call (see [`Action::Transfer`]): the call
    /// was redirected, or why not.
    TransferDone(Result<(), String>),
}

/// Why the model could not be asked for a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AskError {
    /// `ANTHROPIC_API_KEY` is not set.
    NotConfigured,
    /// The model worker has a full queue (it is stuck) or is gone.
    WorkerUnavailable,
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AskError::NotConfigured => "the model is not configured (ANTHROPIC_API_KEY)",
            AskError::WorkerUnavailable => "the model worker is not taking work",
        })
    }
}

/// Something for the call thread to do, in order.
#[derive(Debug)]
pub enum Action {
    /// Send this text message to Twilio (mark, clear).
    Twilio(String),
    /// Send this μ-law audio to Twilio: whole 20 ms frames, one `media` message each.
    Media(Vec<u8>),
    /// Answer a ping (RFC 6455: a pong with the same payload).
    Pong(Vec<u8>),
    /// The stream started: open the call's record, start its workers for this persona.
    Started(Stream),
    /// Work of turns before this one is cancelled; new work carries this turn.
    NewTurn(u64),
    /// Queue a piece of speech (a `Prewarm` has no piece: it only makes sure the socket is open).
    Speak { turn: u64, seq: u32, speech: Speech },
    /// Ask the model for the turn's reply to this conversation.
    Ask { turn: u64, history: Vec<Turn> },
    /// A turn reached its first audio frame: its latencies are complete.
    Latency(TurnLatency),
    /// The call is over.
    End(End),
    /// Commit what speech-to-text heard since the last commit: the caller's turn is over
    /// (the smart turn end, `turn_end.rs`).
    Commit,
    /// Ask Twilio to redirect the live call to `<Dial>` this number, off the call thread; the
    /// answer comes back as [`Input::TransferDone`].
    Transfer { call_sid: String, number: String },
}

/// Who is on the line, from Twilio's `start` and our own `<Parameter>`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub call_sid: String,
    pub stream_sid: String,
    pub role: Role,
    pub voice: String,
    pub direction: Direction,
}

/// The call's settings, fixed for its life.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub calls: &'a CallsConfig,
    pub clips: &'a Clips,
    /// The longest a reply may take to end (every model round and tool call at their
    /// timeouts, and a margin) before the turn is closed with an apology.
    pub reply_deadline: Duration,
    /// History kept: the request builder sends a window of it; twice that is kept.
    pub history_keep: usize,
}

/// Where the call is. The stream (who is on the line) is known from `Talking` on.
enum Phase {
    /// The WebSocket is open; Twilio's `start` is awaited.
    Connecting,
    Talking,
    /// A goodbye is playing; then the call ends with `end` (at the latest at `by`).
    Closing {
        end: End,
        by: Instant,
    },
    Ended(End),
    /// The call is being handed to a person (see `control.rs`): no new turns meanwhile.
    Transferring(control::Transfer),
}

/// A turn being answered.
struct Live {
    id: u64,
    sentences: Sentences,
    last_delta: Instant,
    llm_done: bool,
    /// The history's length before this turn's reply went in.
    history_start: usize,
    apologized: bool,
    speech_end: Instant,
    committed: Instant,
    latency: TurnLatency,
}

/// What the call did, for its record and its cost line.
#[derive(Debug)]
pub struct Summary {
    pub call_sid: String,
    /// Whether the stream ever started (a call without one has no record).
    pub started: bool,
    pub end: End,
    pub duration: Duration,
    pub caller_turns: u64,
    pub barge_ins: u64,
    pub transcript: Vec<TranscriptEntry>,
    pub tool_calls: Vec<ToolCallRecord>,
    pub usage: CallUsage,
    /// Key presses dropped: not a key, or over [`MAX_DTMF_PER_CALL`].
    pub dtmf_dropped: u64,
    /// Marks taken as played because they never came back.
    pub marks_overdue: u64,
    /// Each answered turn's latencies, for the record (at most [`MAX_TURN_LATENCIES`]).
    pub turn_latencies: Vec<TurnLatencyRecord>,
    /// The transfers to a person tried.
    pub transfers: Vec<TransferRecord>,
}

pub struct Machine<'a> {
    rules: Rules<'a>,
    started: Instant,
    started_wall_ms: i64,
    /// The call's name in logs before Twilio tells its SID.
    label: String,
    phase: Phase,
    /// Who is on the line: set by `start`, so present in every phase after `Connecting`
    /// (except a call that ended before it started).
    stream: Option<Stream>,

    turn: u64,
    next_seq: u32,
    live: Option<Live>,
    playback: Playback,
    /// Audio of the piece being sent that does not yet fill a frame.
    carry: Carry,
    /// Reply sentences the caller heard, with their turn.
    heard: Vec<(u64, String)>,

    history: Vec<Turn>,
    transcript: Vec<TranscriptEntry>,
    /// Text in the transcript, against [`MAX_TRANSCRIPT_BYTES`].
    transcript_bytes: usize,
    transcript_cut: bool,
    tool_calls: Vec<ToolCallRecord>,
    usage: CallUsage,
    caller_turns: u64,
    barge_ins: u64,
    dtmf_kept: u32,
    dtmf_dropped: u64,
    /// Keys pressed and not yet told to the model, and when they will be.
    keys: String,
    keys_due: Option<Instant>,

    /// When the audio sent so far should have finished playing (Twilio plays in real time,
    /// in order); `None` when nothing is playing as far as we know.
    played_by: Option<Instant>,
    /// Marks sent and not yet echoed, oldest first, each with when it is overdue.
    marks_due: std::collections::VecDeque<(String, Instant)>,
    marks_overdue: u64,
    turn_latencies: Vec<TurnLatencyRecord>,

    /// Since when nobody has spoken (the reprompt's clock); `None` while a turn is answered.
    quiet_since: Option<Instant>,
    reprompts: u32,
    /// The caller's last sign of life (speech, a key): the idle reap's clock.
    caller_active_at: Instant,
    last_voice: Option<Instant>,
    write_failed_at: Option<Instant>,

    actions: Vec<Action>,
    /// Answering-machine detection's result that came before the stream's `start`.
    early_answer: Option<AnsweredBy>,
    /// Speech-to-text was lost while the call was being transferred: should the transfer
    /// fail, the call cannot go on.
    stt_lost_in_transfer: bool,
    /// What the caller heard of the greeting, when a clear cut it off: the history's greeting
    /// becomes this if the cut stands (not if the greeting resumes).
    greeting_cut: Option<String>,
    /// Where each piece's audio is in Twilio's playback, and its alignment: the words heard
    /// of a piece cut off (`heard.rs`).
    spoken: heard::Spoken,
    /// The call language's backchannel words (`barge_rules`).
    listening: Listening,
    /// A reply cleared by a barge-in, until it is resumed or cut (`barge.rs`).
    paused: Option<barge::Paused>,
    /// The smart end of the caller's turn: the words waiting for their commit.
    turn_end: turn_end::TurnEnd,
    /// The transfers to a person tried, for the record.
    transfers: Vec<TransferRecord>,
}

#[derive(Default)]
struct Carry {
    piece: (u64, u32),
    bytes: Vec<u8>,
}

impl<'a> Machine<'a> {
    /// A call whose WebSocket opened at `now` (wall clock `now_wall_ms`, for the transcript's
    /// timestamps); `label` names it in logs until its SID is known.
    pub fn new(rules: Rules<'a>, now: Instant, now_wall_ms: i64, label: String) -> Machine<'a> {
        Machine {
            rules,
            started: now,
            started_wall_ms: now_wall_ms,
            label,
            phase: Phase::Connecting,
            stream: None,
            turn: 0,
            next_seq: 0,
            live: None,
            playback: Playback::default(),
            carry: Carry::default(),
            heard: Vec::new(),
            history: Vec::new(),
            transcript: Vec::new(),
            transcript_bytes: 0,
            transcript_cut: false,
            tool_calls: Vec::new(),
            usage: CallUsage::default(),
            caller_turns: 0,
            barge_ins: 0,
            dtmf_kept: 0,
            dtmf_dropped: 0,
            keys: String::new(),
            keys_due: None,
            played_by: None,
            marks_due: std::collections::VecDeque::new(),
            marks_overdue: 0,
            turn_latencies: Vec::new(),
            quiet_since: None,
            reprompts: 0,
            caller_active_at: now,
            last_voice: None,
            write_failed_at: None,
            actions: Vec::new(),
            early_answer: None,
            stt_lost_in_transfer: false,
            greeting_cut: None,
            spoken: heard::Spoken::default(),
            listening: Listening::for_language(
                &rules.calls.tuning.stt_language,
                &rules.calls.tuning.backchannel_words,
            ),
            paused: None,
            turn_end: turn_end::TurnEnd::default(),
            transfers: Vec::new(),
        }
    }

    /// Decides what `input` at `now` means; returns what to do, in order.
    pub fn step(&mut self, now: Instant, input: Input) -> Vec<Action> {
        if self.end().is_some() {
            return Vec::new();
        }
        if let Input::Voice(at) = input {
            // Knowledge, not an event: no timer is looked at before the input that comes with
            // it (a partial, a deadline) is.
            self.last_voice = Some(self.last_voice.map_or(at, |last| last.max(at)));
            return Vec::new();
        }
        match input {
            Input::Twilio(inbound) => self.on_twilio(now, inbound),
            Input::Ping(payload) => self.actions.push(Action::Pong(payload)),
            Input::TwilioGone(end) => self.finish(end),
            Input::Stt(out) => self.on_stt(now, out),
            Input::Llm { turn, out } => self.on_llm(now, turn, out),
            Input::Tts { turn, seq, out } => self.on_tts(now, turn, seq, out),
            Input::Voice(_) => {}
            Input::Deadline => {}
            Input::Shutdown => self.finish(End::ServerShutdown),
            Input::WriteFailed => {
                self.write_failed_at.get_or_insert(now);
            }
            Input::SpeechDropped { turn, seq } => {
                // The call thread logged why.
                self.playback.forget(turn, seq);
                self.maybe_finish_turn(now);
            }
            Input::AskFailed { turn, why } => self.on_ask_failed(turn, &why),
            Input::AnsweredBy(answered_by) => self.on_answered_by(now, answered_by),
            Input::TransferDone(result) => self.on_transfer_done(now, result),
        }
        self.check_time(now);
        std::mem::take(&mut self.actions)
    }

    /// When the machine must next look at the time, whatever else happens; `None` when only
    /// an input can change anything.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Phase::Ended(_) = self.phase {
            return None;
        }
        if let Some(failed) = self.write_failed_at {
            at(failed + WRITE_FAILURE_GRACE);
        }
        at(self.caller_active_at + self.rules.calls.tuning.idle_reap);
        if let Some((_, due)) = self.marks_due.front() {
            at(*due);
        }
        match &self.phase {
            Phase::Ended(_) => {}
            Phase::Closing { by, .. } => at(*by),
            Phase::Transferring(transfer) => at(transfer.deadline()),
            Phase::Connecting => at(self.started + START_TIMEOUT),
            Phase::Talking => {
                let tuning = &self.rules.calls.tuning;
                at(self.started + tuning.max_duration);
                if let Some(due) = self.keys_due {
                    at(due);
                }
                if let Some(live) = self.live.as_ref().filter(|l| !l.llm_done) {
                    at(live.committed + self.rules.reply_deadline);
                    if live.sentences.has_pending() {
                        at(live.last_delta + tuning.sentence_idle_flush);
                    }
                }
                if let Some(quiet) = self.reprompt_clock() {
                    at(quiet + tuning.reprompt_after);
                }
                if let Some(due) = self.resume_due() {
                    at(due);
                }
                if let Some(due) = self.turn_end_due() {
                    at(due);
                }
            }
        }
        next
    }

    /// How the call ended, once it has.
    pub fn end(&self) -> Option<&End> {
        match &self.phase {
            Phase::Ended(end) => Some(end),
            _ => None,
        }
    }

    /// The call's SID, or its label before `start`.
    pub fn call_sid(&self) -> &str {
        self.stream.as_ref().map_or(&self.label, |s| &s.call_sid)
    }

    /// The stream, once it started.
    pub fn stream(&self) -> Option<&Stream> {
        self.stream.as_ref()
    }

    /// The conversation so far (what the model is sent).
    pub fn history(&self) -> &[Turn] {
        &self.history
    }

    /// Whether assistant audio is playing or on its way.
    pub fn is_speaking(&self) -> bool {
        self.playback.is_speaking()
    }

    /// The current turn number (work of older turns is dropped).
    pub fn turn(&self) -> u64 {
        self.turn
    }

    /// What the call did, taken when it is over (or at `now` if it must be cut short).
    pub fn summary(&mut self, now: Instant) -> Summary {
        let end = self.end().cloned().unwrap_or(End::Internal);
        Summary {
            call_sid: self.call_sid().to_string(),
            started: self.stream.is_some(),
            end,
            duration: now.saturating_duration_since(self.started),
            caller_turns: self.caller_turns,
            barge_ins: self.barge_ins,
            transcript: std::mem::take(&mut self.transcript),
            tool_calls: std::mem::take(&mut self.tool_calls),
            usage: self.usage.clone(),
            dtmf_dropped: self.dtmf_dropped,
            marks_overdue: self.marks_overdue,
            turn_latencies: self.turn_latencies.clone(),
            transfers: self.transfers.clone(),
        }
    }

    // ---- inputs ----

    fn on_twilio(&mut self, now: Instant, inbound: Inbound) {
        match inbound {
            Inbound::Connected => log::debug!("twilio.connected"),
            Inbound::Start(start) => self.on_start(now, start),
            Inbound::Mark { name } => self.on_mark(now, &name),
            Inbound::Dtmf { digit } => self.on_dtmf(now, &digit),
            Inbound::Stop => self.on_stop(),
        }
    }

    /// A key press: kept when it is one key and the call has not pressed too many; otherwise
    /// dropped, counted, and logged (the first few times, by length only: it is not a key).
    fn on_dtmf(&mut self, now: Instant, digit: &str) {
        if !is_dtmf_digit(digit) {
            self.dtmf_dropped += 1;
            if self.dtmf_dropped <= 3 {
                log::warn!(callSid = self.call_sid(), chars = digit.chars().count(); "call.dtmf.refused: not a key");
            }
            return;
        }
        if self.dtmf_kept >= MAX_DTMF_PER_CALL {
            self.dtmf_dropped += 1;
            if self.dtmf_kept == MAX_DTMF_PER_CALL {
                // Once: the counter goes past the limit and says no more.
                self.dtmf_kept += 1;
                log::warn!(callSid = self.call_sid(), limit = MAX_DTMF_PER_CALL; "call.dtmf.refused: too many key presses; the rest are dropped");
            }
            return;
        }
        self.dtmf_kept += 1;
        log::info!(callSid = self.call_sid(), digit = digit; "call.dtmf");
        self.caller_active_at = now;
        self.note_transcript(now, "user", &format!("[keypad: {digit}]"));
        if matches!(self.phase, Phase::Talking) {
            self.keys.push_str(digit);
            self.keys_due = Some(now + KEYPAD_GAP);
        }
    }

    /// The keys pressed, once [`KEYPAD_GAP`] has passed after the last: a turn of their own,
    /// like words said (the record already has each key).
    fn take_keys(&mut self, now: Instant) {
        if self.keys_due.is_none_or(|due| now < due) {
            return;
        }
        self.keys_due = None;
        let keys: Vec<String> = std::mem::take(&mut self.keys)
            .chars()
            .map(String::from)
            .collect();
        if keys.is_empty() {
            return;
        }
        // `0` pressed alone asks for a person where a transfer is configured (`control.rs`).
        if keys == ["0"] && self.transfer_on_zero(now) {
            return;
        }
        let text = format!("(the caller pressed {} on the keypad)", keys.join(" "));
        if self.playback.is_speaking() || self.live.is_some() || self.is_paused() {
            self.interrupt(now);
        }
        self.start_turn(now, &text);
    }

    fn on_start(&mut self, now: Instant, start: StreamStart) {
        if !matches!(self.phase, Phase::Connecting) {
            log::warn!(callSid = self.call_sid(); "twilio.start repeated; ignored");
            return;
        }
        if !start.media_format_ok {
            log::error!(callSid = start.call_sid.as_str(); "call.refused: media format is not 8 kHz mono μ-law");
            self.finish(End::UnsupportedMedia);
            return;
        }
        let calls = self.rules.calls;
        // The role arrived through our own TwiML, but the stream is a network input: check it.
        let role = match start.parameter("role") {
            Some(name) => Role::parse(name).unwrap_or_else(|| {
                log::warn!(requested = name; "call.start: unknown role; using the default persona");
                calls.default_role
            }),
            None => calls.default_role,
        };
        let voice = start
            .parameter("voiceId")
            .filter(|v| personas::is_valid_voice_id(v))
            .map_or_else(|| calls.voice_for(role).to_string(), str::to_string);
        let direction = match start.parameter("direction") {
            Some("outbound") => Direction::Outbound,
            _ => Direction::Inbound,
        };
        let stream = Stream {
            call_sid: start.call_sid,
            stream_sid: start.stream_sid,
            role,
            voice,
            direction,
        };
        self.stream = Some(stream.clone());
        self.phase = Phase::Talking;
        self.actions.push(Action::Started(stream.clone()));
        if self.answered_before_start(now) {
            return;
        }

        let greeting = prompts::greeting(role);
        self.history.push(Turn::user(CALL_CONNECTED));
        self.history.push(Turn::assistant(&greeting));
        let clip = self.rules.clips.greeting(&stream.voice, role);
        self.say(Kind::Greeting, &greeting, clip);
    }

    // ---- time ----

    /// Acts on every deadline that has come by `now`.
    fn check_time(&mut self, now: Instant) {
        if self.end().is_some() {
            return;
        }
        if self
            .write_failed_at
            .is_some_and(|at| now >= at + WRITE_FAILURE_GRACE)
        {
            log::warn!(callSid = self.call_sid(); "twilio.send_failed: connection lost");
            self.finish(End::TwilioWriteFailed);
            return;
        }
        self.take_overdue_marks(now);
        let tuning = &self.rules.calls.tuning;
        if now >= self.caller_active_at + tuning.idle_reap {
            log::warn!(callSid = self.call_sid(); "call.reaped: no sign of the caller");
            self.finish(End::Idle);
            return;
        }
        match &self.phase {
            Phase::Ended(_) | Phase::Talking => {}
            Phase::Closing { end, by } => {
                if !self.playback.is_speaking() || now >= *by {
                    let end = end.clone();
                    self.finish(end);
                }
                return;
            }
            Phase::Transferring(_) => {
                self.transfer_time(now);
                return;
            }
            Phase::Connecting => {
                if now >= self.started + START_TIMEOUT {
                    self.finish(End::NoStart);
                }
                return;
            }
        }
        if now >= self.started + tuning.max_duration {
            self.close_with(now, Phrase::GoodbyeTimeUp, End::MaxDuration);
            return;
        }
        self.take_keys(now);
        self.check_resume(now);
        self.check_turn_end(now);
        let tuning = &self.rules.calls.tuning;
        // A reply that never ends (a worker that died) must not leave the call stuck.
        let reply_deadline = self.rules.reply_deadline;
        if let Some(live) = self
            .live
            .as_mut()
            .filter(|l| !l.llm_done && now >= l.committed + reply_deadline)
        {
            // Whatever the worker still sends for this turn is ignored (see `on_llm`).
            live.llm_done = true;
            let apologized = std::mem::replace(&mut live.apologized, true);
            log::error!(callSid = self.call_sid(); "llm.no_answer: the reply never ended; the turn is closed");
            if !apologized {
                self.say_phrase(Phrase::Apology);
            }
            self.maybe_finish_turn(now);
        }
        let idle_flush = tuning.sentence_idle_flush;
        if let Some(live) = self.live.as_mut().filter(|l| {
            !l.llm_done && l.sentences.has_pending() && now >= l.last_delta + idle_flush
        }) {
            let rest = live.sentences.finish();
            self.speak_sentences(now, rest.into_iter().collect());
        }
        if let Some(quiet) = self.reprompt_clock() {
            if now >= quiet + tuning.reprompt_after {
                if self.reprompts < tuning.max_reprompts {
                    self.reprompts += 1;
                    self.quiet_since = None;
                    self.say_phrase(Phrase::Reprompt);
                } else {
                    self.close_with(now, Phrase::GoodbyeSilence, End::CallerSilent);
                }
            }
        }
    }

    /// Since when the line has been quiet, when a reprompt is due after a silence: nobody is
    /// answering, nothing is playing. Loud audio holds it (a caller making noise is there).
    fn reprompt_clock(&self) -> Option<Instant> {
        // Keys waiting for their turn are the caller answering.
        if self.live.is_some()
            || self.playback.is_speaking()
            || self.keys_due.is_some()
            || self.is_paused()
        {
            return None;
        }
        let quiet = self.quiet_since?;
        Some(match self.last_voice {
            Some(voice) => quiet.max(voice + VOICE_HOLD),
            None => quiet,
        })
    }

    // ---- actions ----

    fn finish(&mut self, end: End) {
        if self.end().is_none() {
            self.phase = Phase::Ended(end.clone());
            self.actions.push(Action::End(end));
        }
    }

    fn twilio(&mut self, text: String) {
        if self.write_failed_at.is_some() || self.end().is_some() {
            return;
        }
        self.actions.push(Action::Twilio(text));
    }

    fn media(&mut self, ulaw: Vec<u8>) {
        if self.write_failed_at.is_some() || self.end().is_some() || ulaw.is_empty() {
            return;
        }
        self.actions.push(Action::Media(ulaw));
    }

    fn wall_ms(&self, now: Instant) -> i64 {
        self.started_wall_ms + ms_between(self.started, now) as i64
    }

    /// Adds to the transcript within its bounds (see the module docs): an entry over
    /// [`MAX_ENTRY_BYTES`] is cut and marked; past [`MAX_TRANSCRIPT_BYTES`] one entry says the
    /// rest was not kept, and nothing more is added.
    fn note_transcript(&mut self, now: Instant, role: &str, text: &str) {
        if self.transcript_cut {
            return;
        }
        let timestamp = timestamp::format_ms(self.wall_ms(now));
        let text = truncate_marked(text, MAX_ENTRY_BYTES);
        if self.transcript_bytes + text.len() > MAX_TRANSCRIPT_BYTES {
            self.transcript_cut = true;
            log::warn!(callSid = self.call_sid(), bytes = self.transcript_bytes; "call.transcript.truncated");
            self.transcript.push(TranscriptEntry {
                role: "system".to_string(),
                text: TRANSCRIPT_TRUNCATED.to_string(),
                timestamp,
            });
            return;
        }
        self.transcript_bytes += text.len();
        self.transcript.push(TranscriptEntry {
            role: role.to_string(),
            text,
            timestamp,
        });
    }

    /// Says `phrase`, then ends the call with `end` once it has played.
    fn close_with(&mut self, now: Instant, phrase: Phrase, end: End) {
        match self.phase {
            Phase::Talking => {}
            Phase::Connecting => return self.finish(end),
            Phase::Closing { .. } | Phase::Ended(_) | Phase::Transferring(_) => return,
        }
        log::info!(callSid = self.call_sid(), reason:% = end; "call.closing");
        if self.live.is_some() || self.playback.is_speaking() || self.is_paused() {
            self.interrupt(now);
        }
        self.say_phrase(phrase);
        self.phase = Phase::Closing {
            end,
            by: now + CLOSING_GRACE,
        };
    }
}

/// `text` cut to at most `max` bytes (on a character boundary) with [`TRUNCATED`] at its end
/// when it was longer.
pub fn truncate_marked(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{TRUNCATED}", &text[..cut])
}

fn ms_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}

mod amd;
mod barge;
mod control;
mod heard;
mod speech;
mod turn_end;
mod turns;

pub use turn_end::{classify, Ending};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_amd;
#[cfg(test)]
mod tests_barge;
#[cfg(test)]
mod tests_control;
#[cfg(test)]
mod tests_heard;
#[cfg(test)]
mod tests_turn_end;
