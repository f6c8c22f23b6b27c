//! The in-memory index of the records file: per call a compact [`Summary`] (what lists show)
//! and the byte offsets of its lines (what a full read needs), plus newest-first orderings for
//! all calls, per role and per status. Rebuilt at start-up; kept up to date on every append.
//!
//! Budget: a summary, its map slot and its three ordering keys stay around 300 bytes, so a
//! million calls fit in well under 400 MB (the benchmark in README measures it).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::event::{CallRecord, CallStatus, CostSummary, Direction, Event, UNKNOWN_ROLE};
use crate::personas::Role;
use crate::timestamp;

/// A call SID in 16 bytes (`CA` + 32 hex digits, the hex decoded).
pub type SidKey = [u8; 16];

/// Newest first: by start time descending, then by SID.
pub type OrderKey = (Reverse<i64>, SidKey);

const TWILIO_STATUSES: [&str; 9] = [
    "queued",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "failed",
    "no-answer",
    "canceled",
];

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
    let mut sid = String::with_capacity(34);
    sid.push_str("CA");
    for b in key {
        sid.push_str(&format!("{b:02x}"));
    }
    sid
}

/// What the index keeps of a call: everything a list shows, nothing of the transcript.
#[derive(Clone, Debug)]
pub struct Summary {
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub ttl: i64,
    pub duration_secs: Option<u64>,
    pub turn_count: u64,
    pub barge_ins: u64,
    pub tool_call_count: u32,
    pub last_sequence: Option<u64>,
    /// `None`: a role name that is not one of ours (kept as "unknown").
    pub role: Option<Role>,
    pub status: CallStatus,
    pub direction: Direction,
    /// 1-based index into Twilio's statuses; 0 = none reported.
    pub twilio_status: u8,
    pub deleted: bool,
    pub caller_number: Box<str>,
    pub cost: Option<Box<CostSummary>>,
    /// Byte offsets of this call's lines in the records file, in file order.
    pub offsets: Vec<u64>,
}

impl Summary {
    fn from_record(record: &CallRecord, tool_call_count: u32, offsets: Vec<u64>) -> Summary {
        Summary {
            started_at_ms: timestamp::parse_ms(&record.started_at).unwrap_or(0),
            ended_at_ms: record.ended_at.as_deref().and_then(timestamp::parse_ms),
            ttl: record.ttl,
            duration_secs: record.duration_secs,
            turn_count: record.turn_count,
            barge_ins: record.barge_ins,
            tool_call_count,
            last_sequence: record.last_sequence,
            role: Role::parse(&record.role),
            status: record.status,
            direction: record.direction,
            twilio_status: record
                .twilio_status
                .as_deref()
                .and_then(|s| TWILIO_STATUSES.iter().position(|t| *t == s))
                .map_or(0, |i| i as u8 + 1),
            deleted: record.deleted,
            caller_number: record.caller_number.clone().into_boxed_str(),
            cost: record.cost_summary.clone().map(Box::new),
            offsets,
        }
    }

    /// The record this summary stands for, without transcript and tool calls.
    pub fn to_record(&self, key: &SidKey) -> CallRecord {
        CallRecord {
            call_sid: sid_string(key),
            role: self.role.map_or(UNKNOWN_ROLE, Role::as_str).to_string(),
            direction: self.direction,
            caller_number: self.caller_number.to_string(),
            started_at: timestamp::format_ms(self.started_at_ms),
            ended_at: self.ended_at_ms.map(timestamp::format_ms),
            duration_secs: self.duration_secs,
            status: self.status,
            twilio_status: self
                .twilio_status
                .checked_sub(1)
                .map(|i| TWILIO_STATUSES[i as usize].to_string()),
            turn_count: self.turn_count,
            transcript: Vec::new(),
            safety_events: Vec::new(),
            tool_calls: Vec::new(),
            barge_ins: self.barge_ins,
            ttl: self.ttl,
            cost_summary: self.cost.as_deref().cloned(),
            deleted: self.deleted,
            last_sequence: self.last_sequence,
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

    fn order_key(&self, key: &SidKey) -> OrderKey {
        (Reverse(self.started_at_ms), *key)
    }
}

/// All calls in the current records file.
#[derive(Debug, Default)]
pub struct Index {
    calls: HashMap<SidKey, Summary>,
    by_time: BTreeSet<OrderKey>,
    by_role: HashMap<Option<Role>, BTreeSet<OrderKey>>,
    by_status: HashMap<CallStatus, BTreeSet<OrderKey>>,
}

/// Which calls a listing walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    Role(Role),
    Status(CallStatus),
}

impl Index {
    /// Applies `event`, written at byte `offset`. Returns `false` (and changes nothing) when
    /// the event's call SID is malformed.
    pub fn apply(&mut self, event: &Event, offset: u64) -> bool {
        let Some(key) = sid_key(&event.call_sid) else {
            return false;
        };
        let (mut record, tool_calls, mut offsets) = match self.calls.get(&key) {
            Some(_) => {
                self.unlink(&key);
                let summary = &self.calls[&key];
                (
                    summary.to_record(&key),
                    summary.tool_call_count,
                    summary.offsets.clone(),
                )
            }
            None => (CallRecord::empty(&event.call_sid), 0, Vec::new()),
        };
        record.apply(event);
        let tool_calls = event
            .tool_calls
            .as_ref()
            .map_or(tool_calls, |t| t.len() as u32);
        offsets.push(offset);
        let summary = Summary::from_record(&record, tool_calls, offsets);
        self.link(&key, &summary);
        self.calls.insert(key, summary);
        true
    }

    fn link(&mut self, key: &SidKey, summary: &Summary) {
        if summary.deleted {
            return;
        }
        let order = summary.order_key(key);
        self.by_time.insert(order);
        self.by_role.entry(summary.role).or_default().insert(order);
        self.by_status
            .entry(summary.status)
            .or_default()
            .insert(order);
    }

    fn unlink(&mut self, key: &SidKey) {
        let Some(summary) = self.calls.get(key) else {
            return;
        };
        let order = summary.order_key(key);
        self.by_time.remove(&order);
        if let Some(set) = self.by_role.get_mut(&summary.role) {
            set.remove(&order);
        }
        if let Some(set) = self.by_status.get_mut(&summary.status) {
            set.remove(&order);
        }
    }

    pub fn get(&self, key: &SidKey) -> Option<&Summary> {
        self.calls.get(key)
    }

    /// Calls that are neither deleted nor expired at `now_secs`.
    pub fn live(&self, now_secs: i64) -> impl Iterator<Item = (&SidKey, &Summary)> {
        self.calls
            .iter()
            .filter(move |(_, s)| !s.deleted && s.ttl > now_secs)
    }

    /// Number of calls known (deleted and expired included, until compaction).
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Lines of the file the index accounts for (every call's offsets).
    pub fn line_count(&self) -> usize {
        self.calls.values().map(|s| s.offsets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Up to `limit` live calls newest first, after `after` (the previous page's last key).
    /// Returns them and, when more may follow, the key to continue after.
    pub fn list(
        &self,
        filter: Filter,
        after: Option<OrderKey>,
        limit: usize,
        now_secs: i64,
    ) -> (Vec<(SidKey, &Summary)>, Option<OrderKey>) {
        let empty = BTreeSet::new();
        let set = match filter {
            Filter::All => &self.by_time,
            Filter::Role(role) => self.by_role.get(&Some(role)).unwrap_or(&empty),
            Filter::Status(status) => self.by_status.get(&status).unwrap_or(&empty),
        };
        let range = match after {
            Some(after) => {
                set.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => set.range(..),
        };
        let mut page = Vec::new();
        let mut last = None;
        for order in range {
            let Some(summary) = self.calls.get(&order.1) else {
                continue;
            };
            if summary.ttl <= now_secs {
                continue;
            }
            if page.len() == limit {
                return (page, last);
            }
            last = Some(*order);
            page.push((order.1, summary));
        }
        (page, None)
    }

    /// Replaces every call's offsets (after compaction rewrote the file).
    pub fn set_offsets(&mut self, key: &SidKey, offsets: Vec<u64>) {
        if let Some(summary) = self.calls.get_mut(key) {
            summary.offsets = offsets;
        }
    }

    /// Forgets calls that compaction dropped.
    pub fn retain(&mut self, keep: impl Fn(&SidKey, &Summary) -> bool) {
        let dropped: Vec<SidKey> = self
            .calls
            .iter()
            .filter(|(k, s)| !keep(k, s))
            .map(|(k, _)| *k)
            .collect();
        for key in dropped {
            self.unlink(&key);
            self.calls.remove(&key);
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
        let (page, next) = index.list(Filter::All, None, 4, 0);
        let got: Vec<String> = page.iter().map(|(k, _)| sid_string(k)).collect();
        assert_eq!(got, vec![sid(9), sid(8), sid(7), sid(6)]);
        let (page2, _) = index.list(Filter::All, next, 4, 0);
        assert_eq!(sid_string(&page2[0].0), sid(5));

        let (judges, next) = index.list(Filter::Role(Role::Judge), None, 10, 0);
        assert_eq!(judges.len(), 5);
        assert!(next.is_none());
        assert!(judges.iter().all(|(_, s)| s.role == Some(Role::Judge)));
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
            .list(Filter::Status(CallStatus::Active), None, 10, 0)
            .0
            .is_empty());
        let (completed, _) = index.list(Filter::Status(CallStatus::Completed), None, 10, 0);
        assert_eq!(completed[0].1.offsets, vec![0, 50]);
    }

    #[test]
    fn deleted_and_expired_calls_are_not_listed() {
        let mut index = Index::default();
        index.apply(&created(1, "parent", 5), 0);
        index.apply(&created(2, "parent", 6), 10);
        index.apply(&Event::new(EventKind::Deleted, &sid(1), "t", 1000), 20);
        let (page, _) = index.list(Filter::All, None, 10, 0);
        assert_eq!(page.len(), 1);
        assert!(
            index.list(Filter::All, None, 10, 1000).0.is_empty(),
            "expired at ttl"
        );
        assert_eq!(index.live(0).count(), 1);
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
