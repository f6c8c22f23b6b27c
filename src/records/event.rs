//! What the records files hold: one [`Event`] per line, each a thing that happened to a call,
//! and [`CallRecord`], a call's current state folded from its events. Pure: no files here.
//!
//! Every event carries the call SID and its own `ttl`, so a record whose `created` event was
//! never written still expires (the original's blind upserts left such records forever).

use crate::personas::Role;
use crate::timestamp;
use crate::twilio::amd::AnsweredBy;
use crate::twilio::call_status::{twilio_progress, TWILIO_STATUSES};
use serde::{Deserialize, Serialize};

/// The role of a record whose `created` event has not been read (yet).
pub const UNKNOWN_ROLE: &str = "unknown";

/// The kinds of event, as the `event` field of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    /// The call was answered (inbound) or placed (outbound).
    Created,
    /// Twilio reported progress (status callback).
    Status,
    /// The call ended; carries the transcript and the cost summary.
    Completed,
    /// Deleted through the records API; the call is gone from then on.
    Deleted,
}

/// A call's state in the records, the original's four values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    Active,
    Completed,
    Failed,
    ForceReaped,
}

impl CallStatus {
    pub const ALL: [CallStatus; 4] = [
        CallStatus::Active,
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::ForceReaped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Active => "active",
            CallStatus::Completed => "completed",
            CallStatus::Failed => "failed",
            CallStatus::ForceReaped => "force-reaped",
        }
    }

    pub fn parse(text: &str) -> Option<CallStatus> {
        CallStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the call is over; a final status never changes again.
    pub fn is_final(self) -> bool {
        self != CallStatus::Active
    }

    /// Our status for a Twilio `CallStatus`, or `None` for a value Twilio does not send.
    pub fn from_twilio(twilio: &str) -> Option<CallStatus> {
        match twilio {
            "queued" | "initiated" | "ringing" | "in-progress" => Some(CallStatus::Active),
            "completed" => Some(CallStatus::Completed),
            "busy" | "failed" | "no-answer" | "canceled" => Some(CallStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// One line of what was said, as the caller heard it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptEntry {
    /// `user` or `assistant`.
    pub role: String,
    pub text: String,
    pub timestamp: String,
}

/// A call's transcript (a JSON array of [`TranscriptEntry`]) kept as the JSON text it was
/// written as: the index never looks inside it and compaction copies it, so neither pays for
/// parsing every line of every conversation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Transcript(Box<serde_json::value::RawValue>);

impl Transcript {
    pub fn from_entries(entries: &[TranscriptEntry]) -> Transcript {
        let raw =
            serde_json::value::to_raw_value(entries).unwrap_or_else(|_| Transcript::empty().0);
        Transcript(raw)
    }

    pub fn empty() -> Transcript {
        // "[]" is valid JSON, so this cannot fail; the default (null) keeps it panic-free anyway.
        Transcript(serde_json::value::RawValue::from_string("[]".to_string()).unwrap_or_default())
    }

    /// The entries, parsed (an unreadable transcript reads as none).
    pub fn entries(&self) -> Vec<TranscriptEntry> {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl PartialEq for Transcript {
    fn eq(&self, other: &Transcript) -> bool {
        self.0.get() == other.0.get()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallRecord {
    pub tool_name: String,
    pub duration_ms: u64,
    pub timestamp: String,
    pub success: bool,
}

/// How long one turn took to reach the caller, in milliseconds from the end of their speech
/// (the `turn.latency` log line's stages). A stage the turn never reached is absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TurnLatencyRecord {
    pub turn: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speech_end_to_commit_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_frame_ms: Option<u64>,
}

/// What a call cost (defined with the pricing, in [`crate::cost`]).
pub use crate::cost::CostSummary;

/// One line of a records file. Fields other than the first four are present only on the events
/// that carry them; absent ones are not written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event: EventKind,
    pub call_sid: String,
    /// When the event was written (RFC 3339 UTC).
    pub at: String,
    /// Epoch seconds after which the call may be dropped.
    pub ttl: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CallStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twilio_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Transcript>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_summary: Option<CostSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barge_ins: Option<u64>,
    /// Why the call ended, in words for the operator, when it did not end normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Each turn's latency, on a `completed` event (older lines have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_latencies: Option<Vec<TurnLatencyRecord>>,
    /// Who answered an outbound call, as Twilio's answering-machine detection said
    /// (`human`, `machine_end_beep`, `fax`, …: [`AnsweredBy`]); on a `status` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// Who ended the call (`caller`, `assistant`, `system`), on a `completed` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// The transfers to a person tried during the call, on a `completed` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfers: Option<Vec<TransferRecord>>,
}

/// One transfer to a person: where to, who asked, when, and how it went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRecord {
    /// The number dialled (ours, from `TRANSFER_NUMBERS`, not the caller's).
    pub number: String,
    /// `assistant` (its `transfer_call` tool) or `caller` (the `0` key).
    pub requested_by: String,
    /// When Twilio was asked (RFC 3339 UTC).
    pub timestamp: String,
    /// `transferred`, or `failed` with why.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// An event with only the fields every event has.
    /// The first line of a call: `created` at `now_ms`, active, with who and which way.
    /// `caller_number` is written as given: mask it first (`phone::mask`).
    ///
    /// ```
    /// use cotrackpro_voice::personas::Role;
    /// use cotrackpro_voice::records::event::{CallStatus, Direction, Event, EventKind};
    /// let event = Event::created("CA01", Role::Judge, Direction::Inbound, "+1555***4567", 0, 86_400);
    /// assert_eq!(event.event, EventKind::Created);
    /// assert_eq!(event.status, Some(CallStatus::Active));
    /// assert_eq!(event.started_at.as_deref(), Some("1970-01-01T00:00:00.000Z"));
    /// ```
    pub fn created(
        call_sid: &str,
        role: Role,
        direction: Direction,
        caller_number: &str,
        now_ms: i64,
        ttl: i64,
    ) -> Event {
        let now = timestamp::format_ms(now_ms);
        Event {
            role: Some(role.as_str().to_string()),
            direction: Some(direction),
            caller_number: Some(caller_number.to_string()),
            started_at: Some(now.clone()),
            status: Some(CallStatus::Active),
            ..Event::new(EventKind::Created, call_sid, &now, ttl)
        }
    }

    pub fn new(event: EventKind, call_sid: &str, at: &str, ttl: i64) -> Event {
        Event {
            event,
            call_sid: call_sid.to_string(),
            at: at.to_string(),
            ttl,
            role: None,
            direction: None,
            caller_number: None,
            started_at: None,
            status: None,
            twilio_status: None,
            sequence_number: None,
            ended_at: None,
            duration_secs: None,
            turn_count: None,
            transcript: None,
            tool_calls: None,
            cost_summary: None,
            barge_ins: None,
            end_reason: None,
            turn_latencies: None,
            answered_by: None,
            ended_by: None,
            transfers: None,
        }
    }
}

/// A call's current state: the records API's JSON shape (the original's `CallRecord`, plus
/// `twilioStatus` and `bargeIns`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub call_sid: String,
    pub role: String,
    pub direction: Direction,
    pub caller_number: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    pub status: CallStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twilio_status: Option<String>,
    pub turn_count: u64,
    pub transcript: Transcript,
    pub safety_events: Vec<serde_json::Value>,
    pub tool_calls: Vec<ToolCallRecord>,
    pub barge_ins: u64,
    pub ttl: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_summary: Option<CostSummary>,
    /// Why the call ended, when it did not end normally (not kept by the index's lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Each turn's latency (not kept by the index's lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turn_latencies: Vec<TurnLatencyRecord>,
    /// Who ended the call: `caller`, `assistant` or `system` (not kept by the index's lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// The transfers to a person tried (not kept by the index's lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfers: Vec<TransferRecord>,
    /// Set by a `deleted` event; such a record is never shown.
    #[serde(skip)]
    pub deleted: bool,
    /// The highest Twilio `SequenceNumber` applied (retried callbacks are not applied twice).
    #[serde(skip)]
    pub last_sequence: Option<u64>,
    /// Who answered an outbound call with answering-machine detection (Twilio's
    /// `AnsweredBy`); the first result is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

impl CallRecord {
    /// The empty state a call's first event is applied to.
    pub fn empty(call_sid: &str) -> CallRecord {
        CallRecord {
            call_sid: call_sid.to_string(),
            role: UNKNOWN_ROLE.to_string(),
            direction: Direction::Inbound,
            caller_number: "unknown".to_string(),
            started_at: String::new(),
            ended_at: None,
            duration_secs: None,
            status: CallStatus::Active,
            twilio_status: None,
            turn_count: 0,
            transcript: Transcript::empty(),
            safety_events: Vec::new(),
            tool_calls: Vec::new(),
            barge_ins: 0,
            ttl: 0,
            cost_summary: None,
            end_reason: None,
            turn_latencies: Vec::new(),
            ended_by: None,
            transfers: Vec::new(),
            deleted: false,
            last_sequence: None,
            answered_by: None,
        }
    }

    /// Applies one event (see [`fold`] for the rules).
    pub fn apply(&mut self, event: &Event) {
        fold(self, event);
    }

    /// Whether the record's time is up at `now_secs`.
    pub fn is_expired(&self, now_secs: i64) -> bool {
        self.ttl <= now_secs
    }

    /// The record as one line that folds back into exactly this state (what compaction
    /// writes for a call of several lines).
    pub fn into_event(self, at: &str) -> Event {
        Event {
            event: EventKind::Created,
            call_sid: self.call_sid,
            at: at.to_string(),
            ttl: self.ttl,
            role: Some(self.role),
            direction: Some(self.direction),
            caller_number: Some(self.caller_number),
            started_at: Some(self.started_at),
            status: Some(self.status),
            twilio_status: self.twilio_status,
            sequence_number: self.last_sequence,
            ended_at: self.ended_at,
            duration_secs: self.duration_secs,
            turn_count: Some(self.turn_count),
            transcript: Some(self.transcript),
            tool_calls: Some(self.tool_calls),
            cost_summary: self.cost_summary,
            barge_ins: Some(self.barge_ins),
            end_reason: self.end_reason,
            turn_latencies: (!self.turn_latencies.is_empty()).then_some(self.turn_latencies),
            answered_by: self.answered_by,
            ended_by: self.ended_by,
            transfers: (!self.transfers.is_empty()).then_some(self.transfers),
        }
    }
}

/// Why the store refuses an event: it never reopens a finished call, and never makes a record
/// for a call it does not know (the rules of [`refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A status callback for a CallSid with no record: not a call we answered or placed.
    UnknownCall,
    /// A status callback after Twilio's own final status for the call (a replay).
    TwilioFinished,
    /// A call's outcome (transcript, cost) for a call that has one on file already: a second
    /// stream of a finished call.
    OutcomeOnFile,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownCall => "status callback for a call with no record",
            Refusal::TwilioFinished => "status callback after Twilio's final status",
            Refusal::OutcomeOnFile => "the call's outcome is on file already",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the store refuses `event` for a call in `state` (`None`: no record). The rules:
/// - a status callback needs a record (the webhook answering the call, or the placing of an
///   outbound call, writes it first), and is refused once Twilio has reported a final status;
///   before that it is taken even when the call's own verdict is on file (Twilio's
///   `completed` follows the close of the stream and completes the record);
/// - a call's outcome is written once: a second stream with the same CallSid cannot rewrite
///   the transcript;
/// - `created` and `deleted` events are never refused (a repeated `created` changes nothing,
///   see [`fold`]).
pub fn refusal<S: CallState>(state: Option<&S>, event: &Event) -> Option<Refusal> {
    match (event.event, state) {
        (EventKind::Status, None) => Some(Refusal::UnknownCall),
        (EventKind::Status, Some(s)) if s.twilio_progress() >= twilio_progress("completed") => {
            Some(Refusal::TwilioFinished)
        }
        (EventKind::Completed, Some(s)) if s.has_outcome() => Some(Refusal::OutcomeOnFile),
        _ => None,
    }
}

/// Whether a stream may start for a call in `state`: not when the call is over (a final
/// status, from its own end or from Twilio, or its outcome on file).
pub fn may_stream<S: CallState>(state: Option<&S>) -> bool {
    state.is_none_or(|s| !s.is_deleted() && !s.status().is_final() && !s.has_outcome())
}

/// Longest caller ID a webhook's `From` may be for a record to take it. Twilio sends an E.164
/// number, `anonymous`, a `client:` identity or a SIP address, all far shorter.
pub const MAX_CALLER_ID_CHARS: usize = 64;

/// A Twilio `CallStatus` as a record keeps it: one of the statuses Twilio sends, else `None`
/// (the webhook's value is never copied into a record as it came).
///
/// ```
/// use cotrackpro_voice::records::event::known_twilio_status;
/// assert_eq!(known_twilio_status("ringing"), Some("ringing"));
/// assert_eq!(known_twilio_status("Ringing"), None);
/// ```
pub fn known_twilio_status(value: &str) -> Option<&'static str> {
    TWILIO_STATUSES
        .iter()
        .copied()
        .find(|status| *status == value)
}

/// A webhook's `From` as a record keeps it: masked (`phone::mask`), and `unknown` (masked)
/// when absent or not shaped like a caller ID Twilio sends — longer than
/// [`MAX_CALLER_ID_CHARS`], or with a character other than ASCII letters, digits and
/// `+ : @ . _ -`. So a record's caller is at most nine printable ASCII characters.
///
/// ```
/// use cotrackpro_voice::records::event::caller_number_from;
/// assert_eq!(caller_number_from(Some("+15551234567")), "+1***4567");
/// assert_eq!(caller_number_from(Some("+1555\n1234567")), "un***nown");
/// ```
pub fn caller_number_from(from: Option<&str>) -> String {
    let is_caller_id = |text: &&str| {
        !text.is_empty()
            && text.len() <= MAX_CALLER_ID_CHARS
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+:@._-".contains(&b))
    };
    crate::phone::mask(from.filter(is_caller_id).unwrap_or("unknown"))
}

/// Longest records line written. A call's own bounds keep far under it (its transcript is at
/// most 256 KiB of text); a line over it loses the end of its transcript, then its tool
/// calls, and says so ([`bounded_line`]).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// `event` as one line (without its newline) of at most `max` bytes: when it is longer, the
/// newest transcript entries are dropped until it fits and a last entry says how many were
/// kept; if it still does not fit, its tool calls go too. Also says whether it was cut.
pub fn bounded_line(event: &Event, max: usize) -> serde_json::Result<(Vec<u8>, bool)> {
    let line = serde_json::to_vec(event)?;
    if line.len() <= max {
        return Ok((line, false));
    }
    let mut event = event.clone();
    let entries = event
        .transcript
        .as_ref()
        .map(Transcript::entries)
        .unwrap_or_default();
    let with = |event: &mut Event, keep: usize| -> serde_json::Result<Vec<u8>> {
        if event.transcript.is_some() {
            let mut kept = entries[..keep].to_vec();
            kept.push(TranscriptEntry {
                role: "system".into(),
                text: format!(
                    "[transcript truncated: {keep} of {} entries kept]",
                    entries.len()
                ),
                timestamp: event.at.clone(),
            });
            event.transcript = Some(Transcript::from_entries(&kept));
        }
        serde_json::to_vec(event)
    };
    // The most entries that fit, by halving: a handful of serializations of a rare line.
    let (mut fits, mut over) = (0usize, entries.len() + 1);
    let mut best = with(&mut event, 0)?;
    while fits + 1 < over {
        let mid = (fits + over) / 2;
        let line = with(&mut event, mid)?;
        if line.len() <= max {
            (fits, best) = (mid, line);
        } else {
            over = mid;
        }
    }
    if best.len() > max {
        event.tool_calls = event.tool_calls.as_ref().map(|_| Vec::new());
        best = with(&mut event, 0)?;
    }
    Ok((best, true))
}

/// What a fold needs to read and change of a call's state. Implemented by the full
/// [`CallRecord`] and by the index's compact summary, so both follow the one set of rules in
/// [`fold`].
pub trait CallState {
    fn is_deleted(&self) -> bool;
    fn mark_deleted(&mut self);
    fn extend_ttl(&mut self, ttl: i64);
    /// Whether any event has been applied yet.
    fn has_started(&self) -> bool;
    /// Whether a `created` event has set the identity.
    fn has_identity(&self) -> bool;
    /// Takes role, direction, caller and start time from `event` (start: `started_at`, else
    /// the event's own time when `use_event_time`).
    fn set_identity(&mut self, event: &Event, use_event_time: bool);
    fn status(&self) -> CallStatus;
    fn set_status(&mut self, status: CallStatus);
    fn twilio_progress(&self) -> u8;
    /// Whether a call's outcome (its `completed` event, with the cost) has been applied.
    fn has_outcome(&self) -> bool;
    fn set_twilio_status(&mut self, twilio: &str);
    fn note_sequence(&mut self, sequence: u64);
    /// Takes what a `completed` event (or a status callback's duration) carries.
    fn set_outcome(&mut self, event: &Event);
}

/// Applies one event to a call's state. The rules: a deleted call stays deleted; identity
/// (role, direction, caller, start) comes from the first `created` event — a later one is a
/// retried webhook — and events arriving before it stand in with what they carry; a final
/// status is never changed; the Twilio status never moves backwards; the first answering-machine
/// result is kept (one that is not Twilio's is not); the record expires with its latest event.
pub fn fold(state: &mut impl CallState, event: &Event) {
    if state.is_deleted() {
        return;
    }
    state.extend_ttl(event.ttl);
    if event.event == EventKind::Deleted {
        state.mark_deleted();
        return;
    }
    let first_event = !state.has_started();
    if first_event || (event.event == EventKind::Created && !state.has_identity()) {
        state.set_identity(event, first_event);
    }
    if let Some(status) = event.status {
        if !state.status().is_final() {
            state.set_status(status);
        }
    }
    if let Some(twilio) = &event.twilio_status {
        if twilio_progress(twilio) > state.twilio_progress() {
            state.set_twilio_status(twilio);
        }
    }
    if let Some(sequence) = event.sequence_number {
        state.note_sequence(sequence);
    }
    state.set_outcome(event);
}

impl CallState for CallRecord {
    fn is_deleted(&self) -> bool {
        self.deleted
    }

    fn mark_deleted(&mut self) {
        self.deleted = true;
    }

    fn extend_ttl(&mut self, ttl: i64) {
        self.ttl = self.ttl.max(ttl);
    }

    fn has_started(&self) -> bool {
        !self.started_at.is_empty()
    }

    fn has_identity(&self) -> bool {
        self.role != UNKNOWN_ROLE
    }

    fn set_identity(&mut self, event: &Event, use_event_time: bool) {
        if let Some(role) = &event.role {
            self.role.clone_from(role);
        }
        if let Some(direction) = event.direction {
            self.direction = direction;
        }
        if let Some(caller) = &event.caller_number {
            self.caller_number.clone_from(caller);
        }
        match &event.started_at {
            Some(started) => self.started_at.clone_from(started),
            None if use_event_time => self.started_at.clone_from(&event.at),
            None => {}
        }
    }

    fn status(&self) -> CallStatus {
        self.status
    }

    fn set_status(&mut self, status: CallStatus) {
        self.status = status;
    }

    fn twilio_progress(&self) -> u8 {
        self.twilio_status.as_deref().map_or(0, twilio_progress)
    }

    fn has_outcome(&self) -> bool {
        self.cost_summary.is_some()
    }

    fn set_twilio_status(&mut self, twilio: &str) {
        self.twilio_status = Some(twilio.to_string());
    }

    fn note_sequence(&mut self, sequence: u64) {
        self.last_sequence = Some(self.last_sequence.map_or(sequence, |s| s.max(sequence)));
    }

    fn set_outcome(&mut self, event: &Event) {
        if let Some(ended) = &event.ended_at {
            self.ended_at.get_or_insert_with(|| ended.clone());
        }
        if let Some(secs) = event.duration_secs {
            self.duration_secs = Some(secs);
        }
        if let Some(turns) = event.turn_count {
            self.turn_count = turns;
        }
        if let Some(transcript) = &event.transcript {
            self.transcript.clone_from(transcript);
        }
        if let Some(tools) = &event.tool_calls {
            self.tool_calls.clone_from(tools);
        }
        if let Some(cost) = &event.cost_summary {
            self.cost_summary = Some(cost.clone());
        }
        if let Some(barge_ins) = event.barge_ins {
            self.barge_ins = barge_ins;
        }
        if let Some(reason) = &event.end_reason {
            self.end_reason = Some(reason.clone());
        }
        if let Some(latencies) = &event.turn_latencies {
            self.turn_latencies.clone_from(latencies);
        }
        if let Some(answered_by) = event.answered_by.as_deref().and_then(AnsweredBy::parse) {
            self.answered_by
                .get_or_insert_with(|| answered_by.as_str().to_string());
        }
        if let Some(by) = &event.ended_by {
            self.ended_by = Some(by.clone());
        }
        if let Some(transfers) = &event.transfers {
            self.transfers.clone_from(transfers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "CA0123456789abcdef0123456789abcdef";

    fn created() -> Event {
        Event {
            role: Some("attorney".into()),
            direction: Some(Direction::Outbound),
            caller_number: Some("+1***4567".into()),
            started_at: Some("2026-11-24T10:00:00.000Z".into()),
            status: Some(CallStatus::Active),
            ..Event::new(EventKind::Created, SID, "2026-11-24T10:00:00.000Z", 100)
        }
    }

    fn status(twilio: &str, seq: u64, ttl: i64) -> Event {
        Event {
            twilio_status: Some(twilio.into()),
            status: CallStatus::from_twilio(twilio),
            sequence_number: Some(seq),
            ..Event::new(EventKind::Status, SID, "2026-11-24T10:01:00.000Z", ttl)
        }
    }

    fn fold(events: &[Event]) -> CallRecord {
        let mut record = CallRecord::empty(SID);
        for event in events {
            record.apply(event);
        }
        record
    }

    #[test]
    fn created_sets_identity_and_starts_active() {
        let record = fold(&[created()]);
        assert_eq!(record.role, "attorney");
        assert_eq!(record.direction, Direction::Outbound);
        assert_eq!(record.caller_number, "+1***4567");
        assert_eq!(record.status, CallStatus::Active);
        assert_eq!(record.ttl, 100);
    }

    #[test]
    fn a_final_status_is_never_moved_back() {
        let record = fold(&[
            created(),
            status("completed", 3, 100),
            status("in-progress", 2, 100),
            status("ringing", 1, 100),
        ]);
        assert_eq!(record.status, CallStatus::Completed);
        assert_eq!(record.twilio_status.as_deref(), Some("completed"));
        assert_eq!(record.last_sequence, Some(3));
    }

    #[test]
    fn the_first_final_status_wins() {
        let reaped = Event {
            status: Some(CallStatus::ForceReaped),
            ..Event::new(EventKind::Completed, SID, "2026-11-24T12:00:00.000Z", 100)
        };
        let record = fold(&[created(), reaped, status("completed", 9, 100)]);
        assert_eq!(record.status, CallStatus::ForceReaped);
    }

    #[test]
    fn events_without_a_created_one_still_make_an_expiring_record() {
        let record = fold(&[status("ringing", 0, 500)]);
        assert_eq!(record.started_at, "2026-11-24T10:01:00.000Z");
        assert_eq!(record.role, "unknown");
        assert_eq!(record.ttl, 500);
        assert!(record.is_expired(500) && !record.is_expired(499));
    }

    #[test]
    fn a_retried_created_event_changes_nothing_but_a_late_first_one_sets_identity() {
        let mut retry = created();
        retry.started_at = Some("2026-11-24T10:00:09.000Z".into());
        retry.role = Some("judge".into());
        let record = fold(&[created(), retry]);
        assert_eq!(
            (record.role.as_str(), record.started_at.as_str()),
            ("attorney", "2026-11-24T10:00:00.000Z")
        );

        let record = fold(&[status("ringing", 0, 100), created()]);
        assert_eq!(record.role, "attorney");
        assert_eq!(record.started_at, "2026-11-24T10:00:00.000Z");
        assert_eq!(record.direction, Direction::Outbound);
    }

    #[test]
    fn deleted_is_final() {
        let deleted = Event::new(EventKind::Deleted, SID, "2026-11-24T11:00:00.000Z", 100);
        let record = fold(&[created(), deleted, status("completed", 4, 900)]);
        assert!(record.deleted);
        assert_eq!(record.status, CallStatus::Active);
    }

    #[test]
    fn twilio_statuses_map_onto_ours() {
        assert_eq!(
            CallStatus::from_twilio("in-progress"),
            Some(CallStatus::Active)
        );
        assert_eq!(
            CallStatus::from_twilio("no-answer"),
            Some(CallStatus::Failed)
        );
        assert_eq!(
            CallStatus::from_twilio("completed"),
            Some(CallStatus::Completed)
        );
        assert_eq!(CallStatus::from_twilio("exploded"), None);
    }

    #[test]
    fn compaction_line_folds_back_to_the_same_record() {
        let completed = Event {
            ended_at: Some("2026-11-24T10:05:00.000Z".into()),
            duration_secs: Some(300),
            turn_count: Some(4),
            status: Some(CallStatus::Completed),
            transcript: Some(Transcript::from_entries(&[TranscriptEntry {
                role: "user".into(),
                text: "hello".into(),
                timestamp: "2026-11-24T10:00:05.000Z".into(),
            }])),
            cost_summary: Some(CostSummary {
                claude_input_tokens: 10,
                estimated_cost_usd: 0.01,
                ..CostSummary::default()
            }),
            barge_ins: Some(1),
            turn_latencies: Some(vec![TurnLatencyRecord {
                turn: 1,
                speech_end_to_commit_ms: Some(150),
                first_token_ms: None,
                first_frame_ms: Some(820),
            }]),
            ..Event::new(EventKind::Completed, SID, "2026-11-24T10:05:00.000Z", 120)
        };
        let record = fold(&[created(), status("in-progress", 2, 100), completed]);
        assert_eq!(record.turn_latencies.len(), 1);
        let line =
            serde_json::to_string(&record.clone().into_event("2026-11-25T00:00:00.000Z")).unwrap();
        let again = fold(&[serde_json::from_str(&line).unwrap()]);
        assert_eq!(again, record);
    }

    #[test]
    fn only_twilios_own_statuses_reach_a_record() {
        for status in TWILIO_STATUSES {
            assert_eq!(known_twilio_status(status), Some(status));
        }
        for other in [
            "",
            "exploded",
            "Completed",
            "completed ",
            "ringing\n",
            &"q".repeat(10_000),
        ] {
            assert_eq!(known_twilio_status(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_caller_id_is_bounded_in_length_and_characters_then_masked() {
        assert_eq!(caller_number_from(Some("+15551234567")), "+1***4567");
        assert_eq!(caller_number_from(Some("client:alice")), "cl***lice");
        assert_eq!(caller_number_from(Some("sip:bob@example.com")), "si***.com");
        assert_eq!(caller_number_from(Some("anonymous")), "an***mous");
        let longest = format!("+{}", "1".repeat(MAX_CALLER_ID_CHARS - 1));
        assert_eq!(caller_number_from(Some(&longest)), "+1***1111");
        let unknown = "un***nown";
        for bad in [
            None,
            Some(""),
            Some("+1555123\u{202e}4567"),
            Some("+1555123<b>4567"),
            Some("+15551234567\r\nX"),
            Some("\"quoted\" 5551234567"),
            Some(format!("+{}", "1".repeat(MAX_CALLER_ID_CHARS)).as_str()),
        ] {
            assert_eq!(caller_number_from(bad), unknown, "{bad:?}");
        }
    }

    #[test]
    fn lines_omit_absent_fields() {
        let line = serde_json::to_string(&Event::new(EventKind::Deleted, SID, "t", 5)).unwrap();
        assert_eq!(
            line,
            format!(r#"{{"event":"deleted","callSid":"{SID}","at":"t","ttl":5}}"#)
        );
    }
}
