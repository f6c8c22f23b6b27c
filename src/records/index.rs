//! The in-memory index of the records file: per call a compact [`Summary`] (what lists show)
//! and the byte offsets of its lines (what a full read needs), plus newest-first orderings for
//! all calls, per role and per status. Rebuilt at start-up; kept up to date on every append.
//!
//! Budget: a summary, its map slot and its three ordering keys stay around 300 bytes, so a
//! million calls fit in well under 400 MB (the benchmark in README measures it).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::event::{
    fold, CallRecord, CallState, CallStatus, CostSummary, Direction, Event, Transcript,
    UNKNOWN_ROLE,
};
use crate::personas::Role;
use crate::timestamp;
use crate::twilio::amd::AnsweredBy;
use crate::twilio::call_status::{twilio_progress, TWILIO_STATUSES};

/// A call SID in 16 bytes (`CA` + 32 hex digits, the hex decoded).
pub type SidKey = [u8; 16];

pub fn sid_key(sid: &str) -> Option<SidKey> {
    if !crate::config::is_sid(sid, "CA") {
        return None;
    }
    let hex = &sid.as_bytes()[2..];
    let mut key = [0u8; 16];
    for (idx, pair) in hex.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        key[idx] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(key)
}

pub fn sid_string(key: &SidKey) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut sid = String::with_capacity(34);
    sid.push_str("CA");
    for b in key {
        sid.push(HEX[(b >> 4) as usize] as char);
        sid.push(HEX[(b & 15) as usize] as char);
    }
    sid
}

/// "Absent" for the index's compact integer fields.
const NONE_U32: u32 = u32::MAX;
const NONE_MS: i64 = i64::MIN;

/// A masked caller number without a heap allocation when it is short (it nearly always is).
#[derive(Clone, Debug)]
pub enum ShortText {
    Inline { len: u8, bytes: [u8; 22] },
    Heap(Box<str>),
}

impl ShortText {
    fn new(text: &str) -> ShortText {
        if text.len() <= 22 {
            let mut bytes = [0u8; 22];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            ShortText::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            ShortText::Heap(text.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Built from a &str cut at its own length, so always UTF-8.
            ShortText::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or("")
            }
            ShortText::Heap(text) => text,
        }
    }
}

/// A cost summary in 40 bytes (per-call token counts fit in 32 bits).
#[derive(Clone, Copy, Debug, Default)]
pub struct CompactCost {
    pub claude_input_tokens: u32,
    pub claude_output_tokens: u32,
    pub claude_cache_creation_tokens: u32,
    pub claude_cache_read_tokens: u32,
    pub tts_chars: u32,
    pub tts_chars_cached: u32,
    pub stt_secs: f64,
    pub estimated_cost_usd: f64,
}

fn clamp_u32(n: u64) -> u32 {
    n.min(u32::MAX as u64 - 1) as u32
}

impl CompactCost {
    fn new(cost: &CostSummary) -> CompactCost {
        CompactCost {
            claude_input_tokens: clamp_u32(cost.claude_input_tokens),
            claude_output_tokens: clamp_u32(cost.claude_output_tokens),
            claude_cache_creation_tokens: clamp_u32(cost.claude_cache_creation_tokens),
            claude_cache_read_tokens: clamp_u32(cost.claude_cache_read_tokens),
            tts_chars: clamp_u32(cost.tts_chars),
            tts_chars_cached: clamp_u32(cost.tts_chars_cached),
            stt_secs: cost.stt_secs,
            estimated_cost_usd: cost.estimated_cost_usd,
        }
    }

    pub fn to_summary(self) -> CostSummary {
        CostSummary {
            claude_input_tokens: self.claude_input_tokens.into(),
            claude_output_tokens: self.claude_output_tokens.into(),
            claude_cache_creation_tokens: self.claude_cache_creation_tokens.into(),
            claude_cache_read_tokens: self.claude_cache_read_tokens.into(),
            tts_chars: self.tts_chars.into(),
            tts_chars_cached: self.tts_chars_cached.into(),
            stt_secs: self.stt_secs,
            estimated_cost_usd: self.estimated_cost_usd,
        }
    }
}

/// What the index keeps of a call: everything a list shows, nothing of the transcript, in
/// compact form (integers with sentinels instead of options, no strings on the heap).
#[derive(Clone, Debug)]
pub struct Summary {
    pub started_at_ms: i64,
    ended_at_ms: i64,
    pub ttl: i64,
    duration_secs: u32,
    turn_count: u32,
    barge_ins: u32,
    pub tool_call_count: u32,
    last_sequence: u32,
    /// `None`: a role name that is not one of ours (shown as "unknown").
    pub role: Option<Role>,
    pub status: CallStatus,
    pub direction: Direction,
    /// 1-based index into Twilio's statuses; 0 = none reported.
    twilio_status: u8,
    pub deleted: bool,
    has_started: bool,
    has_identity: bool,
    has_cost: bool,
    caller_number: ShortText,
    cost: CompactCost,
    /// Each turn's milliseconds from the end of the caller's speech to the first audio frame
    /// sent back (turns that never reached one are left out), for the per-day p95.
    first_frame_ms: Box<[u32]>,
    /// Byte offsets of this call's lines in the records file, in file order.
    pub offsets: Box<[u64]>,
    /// 1-based index into [`AnsweredBy::ALL`]; 0 = no answering-machine result.
    answered_by: u8,
}

impl Default for Summary {
    fn default() -> Summary {
        Summary {
            started_at_ms: 0,
            ended_at_ms: NONE_MS,
            ttl: 0,
            duration_secs: NONE_U32,
            turn_count: 0,
            barge_ins: 0,
            tool_call_count: 0,
            last_sequence: NONE_U32,
            role: None,
            status: CallStatus::Active,
            direction: Direction::Inbound,
            twilio_status: 0,
            deleted: false,
            has_started: false,
            has_identity: false,
            has_cost: false,
            caller_number: ShortText::new("unknown"),
            cost: CompactCost::default(),
            first_frame_ms: Box::new([]),
            offsets: Box::new([]),
            answered_by: 0,
        }
    }
}

impl CallState for Summary {
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
        self.has_started
    }

    fn has_identity(&self) -> bool {
        self.has_identity
    }

    fn set_identity(&mut self, event: &Event, use_event_time: bool) {
        self.has_started = true;
        if let Some(role) = &event.role {
            self.role = Role::parse(role);
            self.has_identity |= role != UNKNOWN_ROLE;
        }
        if let Some(direction) = event.direction {
            self.direction = direction;
        }
        if let Some(caller) = &event.caller_number {
            self.caller_number = ShortText::new(caller);
        }
        let started = match &event.started_at {
            Some(started) => Some(started),
            None if use_event_time => Some(&event.at),
            None => None,
        };
        if let Some(started) = started {
            self.started_at_ms = timestamp::parse_ms(started).unwrap_or(0);
        }
    }

    fn status(&self) -> CallStatus {
        self.status
    }

    fn set_status(&mut self, status: CallStatus) {
        self.status = status;
    }

    fn twilio_progress(&self) -> u8 {
        self.twilio_status
            .checked_sub(1)
            .map_or(0, |i| twilio_progress(TWILIO_STATUSES[i as usize]))
    }

    fn has_outcome(&self) -> bool {
        self.has_cost
    }

    fn set_twilio_status(&mut self, twilio: &str) {
        self.twilio_status = TWILIO_STATUSES
            .iter()
            .position(|t| *t == twilio)
            .map_or(0, |i| i as u8 + 1);
    }

    fn note_sequence(&mut self, sequence: u64) {
        let sequence = clamp_u32(sequence);
        if self.last_sequence == NONE_U32 || sequence > self.last_sequence {
            self.last_sequence = sequence;
        }
    }

    fn set_outcome(&mut self, event: &Event) {
        if let Some(ended) = &event.ended_at {
            if self.ended_at_ms == NONE_MS {
                self.ended_at_ms = timestamp::parse_ms(ended).unwrap_or(NONE_MS);
            }
        }
        if let Some(secs) = event.duration_secs {
            self.duration_secs = clamp_u32(secs);
        }
        if let Some(turns) = event.turn_count {
            self.turn_count = clamp_u32(turns);
        }
        if let Some(tools) = &event.tool_calls {
            self.tool_call_count = clamp_u32(tools.len() as u64);
        }
        if let Some(cost) = &event.cost_summary {
            self.cost = CompactCost::new(cost);
            self.has_cost = true;
        }
        if let Some(barge_ins) = event.barge_ins {
            self.barge_ins = clamp_u32(barge_ins);
        }
        if let Some(latencies) = &event.turn_latencies {
            self.first_frame_ms = latencies
                .iter()
                .filter_map(|l| l.first_frame_ms.map(clamp_u32))
                .collect();
        }
        if self.answered_by == 0 {
            if let Some(at) = event
                .answered_by
                .as_deref()
                .and_then(AnsweredBy::parse)
                .and_then(|a| AnsweredBy::ALL.iter().position(|b| *b == a))
            {
                self.answered_by = at as u8 + 1;
            }
        }
    }
}

impl Summary {
    pub fn duration_secs(&self) -> Option<u64> {
        (self.duration_secs != NONE_U32).then_some(self.duration_secs.into())
    }

    pub fn turn_count(&self) -> u64 {
        self.turn_count.into()
    }

    pub fn cost(&self) -> Option<CostSummary> {
        self.has_cost.then(|| self.cost.to_summary())
    }

    /// The caller as recorded (masked, e.g. `+1***0123`).
    pub fn caller_number(&self) -> &str {
        self.caller_number.as_str()
    }

    /// Each turn's milliseconds to its first audio frame, as recorded.
    pub fn first_frame_ms(&self) -> &[u32] {
        &self.first_frame_ms
    }

    /// The record this summary stands for, without transcript and tool calls.
    pub fn to_record(&self, key: &SidKey) -> CallRecord {
        CallRecord {
            call_sid: sid_string(key),
            role: self.role.map_or(UNKNOWN_ROLE, Role::as_str).to_string(),
            direction: self.direction,
            caller_number: self.caller_number.as_str().to_string(),
            started_at: timestamp::format_ms(self.started_at_ms),
            ended_at: (self.ended_at_ms != NONE_MS).then(|| timestamp::format_ms(self.ended_at_ms)),
            duration_secs: self.duration_secs(),
            status: self.status,
            twilio_status: self
                .twilio_status
                .checked_sub(1)
                .map(|i| TWILIO_STATUSES[i as usize].to_string()),
            turn_count: self.turn_count(),
            transcript: Transcript::empty(),
            safety_events: Vec::new(),
            tool_calls: Vec::new(),
            barge_ins: self.barge_ins.into(),
            ttl: self.ttl,
            cost_summary: self.cost(),
            end_reason: None,
            turn_latencies: Vec::new(),
            ended_by: None,
            transfers: Vec::new(),
            deleted: self.deleted,
            last_sequence: (self.last_sequence != NONE_U32).then_some(self.last_sequence.into()),
            answered_by: self
                .answered_by
                .checked_sub(1)
                .and_then(|i| AnsweredBy::ALL.get(i as usize))
                .map(|a| a.as_str().to_string()),
        }
    }

    /// The list-item JSON: the record's fields without transcript, safety events and tool
    /// calls (a full read gives those), plus `toolCallCount`.
    pub fn to_list_json(&self, key: &SidKey) -> Value {
        let mut value = serde_json::to_value(self.to_record(key)).unwrap_or(Value::Null);
        if let Some(object) = value.as_object_mut() {
            object.remove("transcript");
            object.remove("safetyEvents");
            object.remove("toolCalls");
            object.insert("toolCallCount".into(), json!(self.tool_call_count));
        }
        value
    }
}

/// A slot number in the index (u32 keeps the orderings' keys small).
pub type Slot = u32;

/// Newest first: start time descending, then slot.
type SlotOrder = (Reverse<i64>, Slot);

/// A position in a listing, stable across index changes: start time and SID.
pub type OrderKey = (Reverse<i64>, SidKey);

/// All calls in the current records file.
#[derive(Debug, Default)]
pub struct Index {
    slots: Vec<(SidKey, Summary)>,
    /// Slots of calls compaction dropped, reused for new calls.
    free: Vec<Slot>,
    by_sid: HashMap<SidKey, Slot>,
    by_time: BTreeSet<SlotOrder>,
    by_role: HashMap<Option<Role>, BTreeSet<SlotOrder>>,
    by_status: HashMap<CallStatus, BTreeSet<SlotOrder>>,
}

/// Which calls a listing walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    Role(Role),
    Status(CallStatus),
}

/// Start times a listing is limited to, in epoch milliseconds, both ends included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl Window {
    /// Whether a call that started at `started_at_ms` is within the window.
    pub fn contains(&self, started_at_ms: i64) -> bool {
        self.from_ms.is_none_or(|from| started_at_ms >= from)
            && self.to_ms.is_none_or(|to| started_at_ms <= to)
    }
}

/// What the dashboard's search box finds: one call by its SID, or the calls whose caller's
/// visible last digits (numbers are kept masked, `+1***0123`) end with the digits given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Search {
    Sid(SidKey),
    LastDigits(String),
}

impl Search {
    /// `None` for text that is neither a CallSid nor 1 to 4 digits (all a masked number
    /// shows).
    ///
    /// ```
    /// use cotrackpro_voice::records::index::Search;
    /// assert_eq!(Search::parse("0123"), Some(Search::LastDigits("0123".into())));
    /// assert!(Search::parse("CA0123456789abcdef0123456789abcdef").is_some());
    /// assert_eq!(Search::parse("12345"), None);
    /// assert_eq!(Search::parse("+1***"), None);
    /// ```
    pub fn parse(text: &str) -> Option<Search> {
        let text = text.trim();
        if let Some(key) = sid_key(text) {
            return Some(Search::Sid(key));
        }
        let digits =
            (1..=VISIBLE_DIGITS).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| Search::LastDigits(text.to_string()))
    }

    /// Whether the call `key` with `summary` is one the search finds.
    pub fn finds(&self, key: &SidKey, summary: &Summary) -> bool {
        match self {
            Search::Sid(sid) => sid == key,
            Search::LastDigits(digits) => {
                let caller = summary.caller_number();
                let visible = caller.rsplit('*').next().unwrap_or(caller);
                visible.len() < caller.len() && visible.ends_with(digits.as_str())
            }
        }
    }
}

/// How many digits a masked number shows at its end (`phone::mask`).
pub const VISIBLE_DIGITS: usize = 4;

impl Index {
    /// Applies `event`, written at byte `offset`. Returns `false` (and changes nothing) when
    /// the event's call SID is malformed.
    pub fn apply(&mut self, event: &Event, offset: u64) -> bool {
        let Some(key) = sid_key(&event.call_sid) else {
            return false;
        };
        let slot = match self.by_sid.get(&key) {
            Some(&slot) => {
                self.unlink(slot);
                slot
            }
            None => {
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = (key, Summary::default());
                        slot
                    }
                    None => {
                        self.slots.push((key, Summary::default()));
                        (self.slots.len() - 1) as Slot
                    }
                };
                self.by_sid.insert(key, slot);
                slot
            }
        };
        let summary = &mut self.slots[slot as usize].1;
        fold(summary, event);
        let mut offsets = std::mem::take(&mut summary.offsets).into_vec();
        offsets.push(offset);
        summary.offsets = offsets.into_boxed_slice();
        self.link(slot);
        true
    }

    fn link(&mut self, slot: Slot) {
        let summary = &self.slots[slot as usize].1;
        if summary.deleted {
            return;
        }
        let order = (Reverse(summary.started_at_ms), slot);
        self.by_time.insert(order);
        self.by_role.entry(summary.role).or_default().insert(order);
        self.by_status
            .entry(summary.status)
            .or_default()
            .insert(order);
    }

    fn unlink(&mut self, slot: Slot) {
        let summary = &self.slots[slot as usize].1;
        let order = (Reverse(summary.started_at_ms), slot);
        self.by_time.remove(&order);
        if let Some(set) = self.by_role.get_mut(&summary.role) {
            set.remove(&order);
        }
        if let Some(set) = self.by_status.get_mut(&summary.status) {
            set.remove(&order);
        }
    }

    pub fn get(&self, key: &SidKey) -> Option<&Summary> {
        self.by_sid
            .get(key)
            .map(|&slot| &self.slots[slot as usize].1)
    }

    /// Calls that are neither deleted nor expired at `now_secs`.
    pub fn live(&self, now_secs: i64) -> impl Iterator<Item = (&SidKey, &Summary)> {
        self.slots
            .iter()
            .filter(move |(_, s)| !s.deleted && s.ttl > now_secs && !s.offsets.is_empty())
            .map(|(k, s)| (k, s))
    }

    /// Like [`Index::live`], with each call's slot number.
    pub fn live_slots(&self, now_secs: i64) -> Vec<(Slot, &SidKey, &Summary)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| !s.deleted && s.ttl > now_secs && !s.offsets.is_empty())
            .map(|(slot, (k, s))| (slot as Slot, k, s))
            .collect()
    }

    /// Number of slots (for per-slot tables).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Number of calls known (deleted and expired included, until compaction).
    pub fn len(&self) -> usize {
        self.by_sid.len()
    }

    /// Lines of the file the index accounts for (every call's offsets).
    pub fn line_count(&self) -> usize {
        self.slots.iter().map(|(_, s)| s.offsets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sid.is_empty()
    }

    /// Up to `limit` live calls newest first, after `after` (the previous page's last key).
    /// Returns them and, when more may follow, the key to continue after.
    pub fn list(
        &self,
        filter: Filter,
        window: Window,
        after: Option<OrderKey>,
        limit: usize,
        now_secs: i64,
    ) -> (Vec<(SidKey, &Summary)>, Option<OrderKey>) {
        self.list_matching(filter, window, after, limit, now_secs, |_, _| true)
    }

    /// [`Index::list`] of only the calls `matches` keeps (a search); the cursor still walks
    /// the same order, so pages of a search follow on from each other.
    pub fn list_matching(
        &self,
        filter: Filter,
        window: Window,
        after: Option<OrderKey>,
        limit: usize,
        now_secs: i64,
        matches: impl Fn(&SidKey, &Summary) -> bool,
    ) -> (Vec<(SidKey, &Summary)>, Option<OrderKey>) {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let empty = BTreeSet::new();
        let set = match filter {
            Filter::All => &self.by_time,
            Filter::Role(role) => self.by_role.get(&Some(role)).unwrap_or(&empty),
            Filter::Status(status) => self.by_status.get(&status).unwrap_or(&empty),
        };
        // Resume after the cursor's call (if that call is gone, after its start time), and not
        // before the window's end; whichever comes later in newest-first order.
        let cursor = after.map(|(time, key)| match self.by_sid.get(&key) {
            Some(&slot) => Excluded((time, slot)),
            None => Excluded((time, Slot::MAX)),
        });
        let window_end = window.to_ms.map(|to| Included((Reverse(to), 0)));
        let start = match (cursor, window_end) {
            (Some(Excluded(c)), Some(Included(w))) if w > c => Included(w),
            (Some(c), _) => c,
            (None, Some(w)) => w,
            (None, None) => Unbounded,
        };
        let mut page = Vec::new();
        let mut last = None;
        for order in set.range((start, Unbounded)) {
            if window.from_ms.is_some_and(|from| order.0 .0 < from) {
                break; // everything after is older still
            }
            let (key, summary) = &self.slots[order.1 as usize];
            if summary.ttl <= now_secs || !matches(key, summary) {
                continue;
            }
            if page.len() == limit {
                return (page, last);
            }
            last = Some((order.0, *key));
            page.push((*key, summary));
        }
        (page, None)
    }

    /// Keeps only the calls compaction kept, each now one line at its new offset (indexed by
    /// slot; `None`: dropped); the slots of the others are freed for reuse.
    pub fn replace_after_compaction(&mut self, new_offsets: &[Option<u64>]) {
        for slot in 0..self.slots.len() as Slot {
            let (key, summary) = &mut self.slots[slot as usize];
            if summary.offsets.is_empty() {
                continue; // already free
            }
            if let Some(Some(offset)) = new_offsets.get(slot as usize) {
                summary.offsets = Box::new([*offset]);
                continue;
            }
            let key = *key;
            self.unlink(slot);
            self.by_sid.remove(&key);
            self.slots[slot as usize].1 = Summary::default();
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::event::EventKind;

    fn sid(n: u32) -> String {
        format!("CA{n:032x}")
    }

    fn created(n: u32, role: &str, started_ms: i64) -> Event {
        Event {
            role: Some(role.into()),
            started_at: Some(timestamp::format_ms(started_ms)),
            caller_number: Some("+1***4567".into()),
            status: Some(CallStatus::Active),
            ..Event::new(EventKind::Created, &sid(n), "t", 1000)
        }
    }

    #[test]
    fn sid_keys_round_trip_and_refuse_bad_sids() {
        let s = "CA0123456789abcdef0123456789abcdef";
        assert_eq!(sid_string(&sid_key(s).unwrap()), s);
        assert_eq!(
            sid_key("CA0123456789ABCDEF0123456789ABCDEF").map(|k| sid_string(&k)),
            Some(s.to_string())
        );
        assert!(sid_key("CAxyz").is_none());
    }

    #[test]
    fn lists_newest_first_with_filters_and_pages() {
        let mut index = Index::default();
        for n in 0..10u32 {
            let role = if n % 2 == 0 { "parent" } else { "judge" };
            assert!(index.apply(&created(n, role, 1_000 + n as i64), n as u64 * 100));
        }
        let (page, next) = index.list(Filter::All, Window::default(), None, 4, 0);
        let got: Vec<String> = page.iter().map(|(k, _)| sid_string(k)).collect();
        assert_eq!(got, vec![sid(9), sid(8), sid(7), sid(6)]);
        let (page2, _) = index.list(Filter::All, Window::default(), next, 4, 0);
        assert_eq!(sid_string(&page2[0].0), sid(5));

        let (judges, next) = index.list(Filter::Role(Role::Judge), Window::default(), None, 10, 0);
        assert_eq!(judges.len(), 5);
        assert!(next.is_none());
        assert!(judges.iter().all(|(_, s)| s.role == Some(Role::Judge)));
    }

    #[test]
    fn a_window_limits_start_times_and_works_with_pages() {
        let mut index = Index::default();
        for n in 0..10u32 {
            index.apply(&created(n, "parent", 1_000 + n as i64), n as u64);
        }
        let window = Window {
            from_ms: Some(1_002),
            to_ms: Some(1_007),
        };
        let (page, next) = index.list(Filter::All, window, None, 4, 0);
        let got: Vec<String> = page.iter().map(|(k, _)| sid_string(k)).collect();
        assert_eq!(got, vec![sid(7), sid(6), sid(5), sid(4)]);
        let (page, next) = index.list(Filter::All, window, next, 4, 0);
        let got: Vec<String> = page.iter().map(|(k, _)| sid_string(k)).collect();
        assert_eq!(got, vec![sid(3), sid(2)]);
        assert!(next.is_none());
        let only_from = Window {
            from_ms: Some(1_008),
            to_ms: None,
        };
        assert_eq!(index.list(Filter::All, only_from, None, 10, 0).0.len(), 2);
        let only_to = Window {
            from_ms: None,
            to_ms: Some(1_000),
        };
        assert_eq!(index.list(Filter::All, only_to, None, 10, 0).0.len(), 1);
    }

    #[test]
    fn status_changes_move_calls_between_status_lists() {
        let mut index = Index::default();
        index.apply(&created(1, "parent", 5), 0);
        let done = Event {
            status: Some(CallStatus::Completed),
            ..Event::new(EventKind::Completed, &sid(1), "t", 1000)
        };
        index.apply(&done, 50);
        assert!(index
            .list(
                Filter::Status(CallStatus::Active),
                Window::default(),
                None,
                10,
                0
            )
            .0
            .is_empty());
        let (completed, _) = index.list(
            Filter::Status(CallStatus::Completed),
            Window::default(),
            None,
            10,
            0,
        );
        assert_eq!(&*completed[0].1.offsets, &[0, 50]);
    }

    #[test]
    fn deleted_and_expired_calls_are_not_listed() {
        let mut index = Index::default();
        index.apply(&created(1, "parent", 5), 0);
        index.apply(&created(2, "parent", 6), 10);
        index.apply(&Event::new(EventKind::Deleted, &sid(1), "t", 1000), 20);
        let (page, _) = index.list(Filter::All, Window::default(), None, 10, 0);
        assert_eq!(page.len(), 1);
        assert!(
            index
                .list(Filter::All, Window::default(), None, 10, 1000)
                .0
                .is_empty(),
            "expired at ttl"
        );
        assert_eq!(index.live(0).count(), 1);
    }

    #[test]
    fn a_search_finds_a_sid_or_the_visible_last_digits() {
        let mut index = Index::default();
        for (n, caller) in [
            (1, "+1***0123"),
            (2, "+4***9123"),
            (3, "un***nown"),
            (4, "***"),
        ] {
            let mut event = created(n, "parent", 10 + n as i64);
            event.caller_number = Some(caller.into());
            index.apply(&event, n as u64);
        }
        let found = |search: &Search| -> Vec<String> {
            let (page, _) = index.list_matching(
                Filter::All,
                Window::default(),
                None,
                10,
                0,
                |key, summary| search.finds(key, summary),
            );
            page.iter().map(|(k, _)| sid_string(k)).collect()
        };
        assert_eq!(found(&Search::LastDigits("123".into())), [sid(2), sid(1)]);
        assert_eq!(found(&Search::LastDigits("0123".into())), [sid(1)]);
        // The hidden digits are not searched: "+1" is the country code, not the number's end.
        assert!(found(&Search::LastDigits("1".into())).is_empty());
        let by_sid = Search::parse(&sid(3)).unwrap();
        assert_eq!(found(&by_sid), [sid(3)]);
        assert_eq!(
            Search::parse(" 0123 "),
            Some(Search::LastDigits("0123".into()))
        );
        assert_eq!(Search::parse("nown"), None);
        assert_eq!(Search::parse(""), None);
    }

    #[test]
    fn malformed_sids_are_refused() {
        let mut index = Index::default();
        let mut event = created(1, "parent", 5);
        event.call_sid = "not-a-sid".into();
        assert!(!index.apply(&event, 0));
        assert!(index.is_empty());
    }
}
