//! The store against real files in a temporary directory.

use std::sync::Arc;

use super::event::{CallStatus, CostSummary, Direction, Transcript, TranscriptEntry};
use super::writer::{Delivery, RecordWriter, QUEUE_LINES};
use super::*;
use crate::personas::Role;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "cotrackpro-records-{name}-{}-{}",
            std::process::id(),
            timestamp::now_ms()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sid(n: u32) -> String {
    format!("CA{n:032x}")
}

fn far_ttl() -> i64 {
    ttl_from(timestamp::now_ms(), 365.0)
}

fn created(n: u32, role: &str, started_ms: i64) -> Event {
    Event {
        role: Some(role.into()),
        direction: Some(Direction::Inbound),
        caller_number: Some("+1***4567".into()),
        started_at: Some(timestamp::format_ms(started_ms)),
        status: Some(CallStatus::Active),
        ..Event::new(
            EventKind::Created,
            &sid(n),
            &timestamp::format_ms(started_ms),
            far_ttl(),
        )
    }
}

fn completed(n: u32) -> Event {
    Event {
        status: Some(CallStatus::Completed),
        ended_at: Some(timestamp::format_ms(timestamp::now_ms())),
        duration_secs: Some(61),
        turn_count: Some(2),
        transcript: Some(Transcript::from_entries(&[TranscriptEntry {
            role: "user".into(),
            text: "I need to write down what happened on Friday.".into(),
            timestamp: timestamp::format_ms(timestamp::now_ms()),
        }])),
        cost_summary: Some(CostSummary {
            claude_input_tokens: 100,
            estimated_cost_usd: 0.0123,
            ..CostSummary::default()
        }),
        ..Event::new(EventKind::Completed, &sid(n), "t", far_ttl())
    }
}

fn key(n: u32) -> index::SidKey {
    index::sid_key(&sid(n)).unwrap()
}

#[test]
fn appended_events_are_read_back_and_survive_a_reopen() {
    let dir = TempDir::new("reopen");
    let (store, bad) = RecordStore::open(&dir.0).unwrap();
    assert!(bad.is_empty());
    store.append(&created(1, "judge", 1_000_000)).unwrap();
    store.append(&completed(1)).unwrap();
    let record = store.get(&key(1)).unwrap().unwrap();
    assert_eq!(record.role, "judge");
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.transcript.entries().len(), 1);
    drop(store);

    let (store, bad) = RecordStore::open(&dir.0).unwrap();
    assert!(bad.is_empty());
    assert_eq!(store.get(&key(1)).unwrap().unwrap(), record);
    let text = fs::read_to_string(dir.0.join(RECORDS_FILE)).unwrap();
    assert_eq!(text.lines().count(), 2, "one line per event");
}

#[test]
fn a_torn_last_line_is_reported_and_skipped_and_later_appends_are_whole() {
    let dir = TempDir::new("torn");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    store.append(&created(1, "parent", 1_000)).unwrap();
    store.append(&created(2, "parent", 2_000)).unwrap();
    drop(store);
    let path = dir.0.join(RECORDS_FILE);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(br#"{"event":"created","callSid":"CA000"#)
        .unwrap();
    drop(file);

    let (store, bad) = RecordStore::open(&dir.0).unwrap();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].line, Some(3));
    assert!(bad[0].reason.contains("torn"), "{}", bad[0].reason);
    assert!(bad[0].to_string().contains("calls.jsonl:3: skipped"));
    store.append(&created(3, "parent", 3_000)).unwrap();
    drop(store);

    let (store, bad) = RecordStore::open(&dir.0).unwrap();
    assert_eq!(bad.len(), 1, "only the torn fragment is bad: {bad:?}");
    for n in 1..=3 {
        assert!(store.get(&key(n)).unwrap().is_some(), "call {n}");
    }
}

#[test]
fn a_corrupt_middle_line_loses_nothing_around_it() {
    let dir = TempDir::new("corrupt");
    let path = dir.0.join(RECORDS_FILE);
    let good = |n| serde_json::to_string(&created(n, "gal", n as i64 * 1000)).unwrap();
    fs::write(
        &path,
        format!("{}\nthis is not json\n{}\n{{\"event\":\"created\",\"callSid\":\"nope\",\"at\":\"t\",\"ttl\":1}}\n{}\n", good(1), good(2), good(3)),
    )
    .unwrap();
    let (store, bad) = RecordStore::open(&dir.0).unwrap();
    assert_eq!(
        bad.iter().map(|b| b.line).collect::<Vec<_>>(),
        vec![Some(2), Some(4)]
    );
    assert!(bad[1].reason.contains("malformed callSid"));
    let page = store
        .list(Filter::All, Window::default(), None, 10)
        .unwrap();
    assert_eq!(page.records.len(), 3);
}

#[test]
fn lists_are_newest_first_paged_and_filtered() {
    let dir = TempDir::new("list");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    for n in 0..25u32 {
        let role = Role::ALL[n as usize % 3].as_str();
        store.append(&created(n, role, 1_000 * n as i64)).unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(Filter::All, Window::default(), cursor.as_deref(), 10)
            .unwrap();
        seen.extend(
            page.records
                .iter()
                .map(|r| r["callSid"].as_str().unwrap().to_string()),
        );
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25u32).rev().map(sid).collect();
    assert_eq!(seen, expected, "every record exactly once, newest first");

    let attorneys = store
        .list(Filter::Role(Role::Attorney), Window::default(), None, 100)
        .unwrap();
    assert_eq!(attorneys.records.len(), 8);
    assert!(attorneys.records.iter().all(|r| r["role"] == "attorney"));
    assert!(
        attorneys.records[0].get("transcript").is_none(),
        "lists carry summaries"
    );

    let garbage = store
        .list(Filter::All, Window::default(), Some("%%%not-a-cursor"), 5)
        .unwrap();
    assert_eq!(
        garbage.records[0]["callSid"],
        sid(24),
        "a bad cursor starts from the top"
    );
}

#[test]
fn compaction_folds_calls_and_drops_deleted_and_expired_ones() {
    let dir = TempDir::new("compact");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    store.append(&created(1, "judge", 1_000)).unwrap();
    store.append(&completed(1)).unwrap();
    store.append(&created(2, "judge", 2_000)).unwrap();
    store
        .append(&Event::new(EventKind::Deleted, &sid(2), "t", far_ttl()))
        .unwrap();
    let mut expired = created(3, "judge", 3_000);
    expired.ttl = timestamp::now_ms() / 1000 - 1;
    store.append(&expired).unwrap();
    let before = store.get(&key(1)).unwrap().unwrap();

    let report = store.compact().unwrap();
    assert_eq!(report.lines_before, 5);
    assert_eq!((report.calls_kept, report.calls_dropped), (1, 2));
    let text = fs::read_to_string(dir.0.join(RECORDS_FILE)).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(store.get(&key(1)).unwrap().unwrap(), before);
    assert!(store.get(&key(2)).unwrap().is_none());

    // Appends after compaction land in the new file and are indexed.
    store.append(&created(4, "cps", 4_000)).unwrap();
    drop(store);
    let (store, bad) = RecordStore::open(&dir.0).unwrap();
    assert!(bad.is_empty());
    assert_eq!(store.get(&key(1)).unwrap().unwrap(), before);
    assert!(store.get(&key(4)).unwrap().is_some());
}

#[test]
fn fractional_ttl_days_expire_on_time() {
    let now = timestamp::now_ms();
    assert_eq!(ttl_from(now, 0.5), now / 1000 + 43_200);
    let dir = TempDir::new("ttl");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    let mut short = created(1, "parent", now);
    short.ttl = ttl_from(now, 0.00001); // 0.864 s → 0 whole seconds: already due
    store.append(&short).unwrap();
    assert!(store.get(&key(1)).unwrap().is_none());
    assert_eq!(store.compact().unwrap().calls_kept, 0);
}

#[test]
fn a_compaction_by_another_store_is_noticed() {
    let dir = TempDir::new("external");
    let (server, _) = RecordStore::open(&dir.0).unwrap();
    server.append(&created(1, "parent", 1_000)).unwrap();
    server.append(&completed(1)).unwrap();
    let (operator, _) = RecordStore::open(&dir.0).unwrap();
    operator.compact().unwrap();
    // The server's handle points at the replaced file; it must reload, not write into it.
    server.append(&created(2, "parent", 2_000)).unwrap();
    assert!(server.get(&key(1)).unwrap().is_some());
    drop((server, operator));
    let (fresh, _) = RecordStore::open(&dir.0).unwrap();
    assert!(fresh.get(&key(1)).unwrap().is_some());
    assert!(
        fresh.get(&key(2)).unwrap().is_some(),
        "the append after compaction was not lost"
    );
}

#[test]
fn appends_from_many_threads_never_interleave() {
    let dir = TempDir::new("threads");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    let store = Arc::new(store);
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let store = store.clone();
            std::thread::Builder::new()
                .name(format!("append-{t}"))
                .spawn(move || {
                    for i in 0..100u32 {
                        let n = t * 1000 + i;
                        store.append(&created(n, "mediator", n as i64)).unwrap();
                        store.append(&completed(n)).unwrap();
                    }
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(store);
    let (store, bad) = RecordStore::open(&dir.0).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    let all = store.summaries();
    assert_eq!(all.len(), 800);
    assert!(all
        .iter()
        .all(|(_, s)| s.status == CallStatus::Completed && s.offsets.len() == 2));
}

#[test]
fn a_store_catches_up_on_lines_another_store_appended() {
    let dir = TempDir::new("catch-up");
    let (compactor, _) = RecordStore::open(&dir.0).unwrap();
    let (server, _) = RecordStore::open(&dir.0).unwrap();
    server.append(&created(1, "judge", 1_000)).unwrap();
    server.append(&completed(1)).unwrap();
    // The compactor opened before those lines were written; it must not drop them.
    assert!(compactor.get(&key(1)).unwrap().is_some(), "reads see them");
    assert_eq!(compactor.compact().unwrap().calls_kept, 1);
    let (fresh, _) = RecordStore::open(&dir.0).unwrap();
    assert_eq!(
        fresh.get(&key(1)).unwrap().unwrap().status,
        CallStatus::Completed
    );
}

#[test]
fn compaction_keeps_every_live_call_exactly_whatever_its_lines() {
    let dir = TempDir::new("mixed");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    for n in 0..60u32 {
        store
            .append(&created(
                n,
                Role::ALL[n as usize % 13].as_str(),
                n as i64 * 10,
            ))
            .unwrap();
        if n % 3 != 0 {
            store.append(&completed(n)).unwrap();
        }
        if n % 7 == 0 {
            store
                .append(&Event::new(EventKind::Deleted, &sid(n), "t", far_ttl()))
                .unwrap();
        }
    }
    let before: Vec<_> = (0..60u32).map(|n| store.get(&key(n)).unwrap()).collect();
    for round in 0..2 {
        let report = store.compact().unwrap();
        assert_eq!(
            report.calls_kept,
            before.iter().flatten().count(),
            "round {round}"
        );
        for n in 0..60u32 {
            assert_eq!(
                store.get(&key(n)).unwrap(),
                before[n as usize],
                "round {round}, call {n}"
            );
        }
    }
    let (fresh, bad) = RecordStore::open(&dir.0).unwrap();
    assert!(bad.is_empty());
    for n in 0..60u32 {
        assert_eq!(
            fresh.get(&key(n)).unwrap(),
            before[n as usize],
            "after reopening, call {n}"
        );
    }
    let lines = fs::read_to_string(dir.0.join(RECORDS_FILE))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, before.iter().flatten().count(), "one line per call");
}

// The records writer (`writer.rs`).

fn shared_store(dir: &TempDir) -> Arc<RecordStore> {
    Arc::new(RecordStore::open(&dir.0).unwrap().0)
}

fn first_line(n: u32) -> Event {
    let now = timestamp::now_ms();
    Event::created(
        &sid(n),
        Role::Parent,
        Direction::Inbound,
        "unknown",
        now,
        far_ttl(),
    )
}

/// Holds the records lock as a compaction (here or in another process) does.
fn hold_lock(store: &RecordStore) -> File {
    let lock = File::open(store.dir().join(LOCK_FILE)).unwrap();
    lock.lock().unwrap();
    lock
}

#[test]
fn a_full_queue_makes_the_caller_write_its_own_line_and_nothing_is_lost() {
    let dir = TempDir::new("writer-full");
    let store = shared_store(&dir);
    let writer = Arc::new(RecordWriter::start(store.clone(), 1));
    let lock = hold_lock(&store);
    // The writer takes the first line and waits for the lock with it.
    assert_eq!(writer.create_if_absent(first_line(1)), Delivery::Queued);
    let mut waited = 0;
    while writer.queued() > 0 {
        assert!(waited < 500, "the writer never took the line");
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    // The second fills the queue; a third would be given back to its caller, which then
    // writes it itself (waiting for the lock like the writer).
    assert_eq!(writer.create_if_absent(first_line(2)), Delivery::Queued);
    let refused = writer.try_queue_for_test(first_line(3));
    assert!(refused.is_err(), "the queue is full");
    let third = {
        let writer = writer.clone();
        std::thread::Builder::new()
            .name("test-records-caller".into())
            .spawn(move || writer.create_if_absent(first_line(3)))
            .unwrap()
    };
    drop(lock);
    third.join().unwrap();
    drop(Arc::into_inner(writer).expect("the only owner left"));
    for n in 1..=3 {
        assert!(store.summary(&key(n)).is_some(), "call {n} has its record");
    }
}

#[test]
fn a_waited_append_is_on_file_when_it_returns_and_a_first_line_is_written_once() {
    let dir = TempDir::new("writer-wait");
    let store = shared_store(&dir);
    let writer = RecordWriter::start(store.clone(), QUEUE_LINES);
    writer.create_if_absent(first_line(1));
    writer.create_if_absent(first_line(1));
    let done = Event {
        status: Some(CallStatus::Completed),
        ..Event::new(
            EventKind::Completed,
            &sid(1),
            &timestamp::format_ms(timestamp::now_ms()),
            far_ttl(),
        )
    };
    writer
        .append_and_wait(done, std::time::Duration::from_secs(10))
        .unwrap();
    let record = store.get(&key(1)).unwrap().expect("a record");
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.role, "parent");
    let lines = std::fs::read_to_string(store.path()).unwrap();
    assert_eq!(lines.lines().count(), 2, "one created line, one completed");
}

fn status_event(n: u32, twilio: &str, seq: u64) -> Event {
    Event {
        status: CallStatus::from_twilio(twilio),
        twilio_status: Some(twilio.into()),
        sequence_number: Some(seq),
        ..Event::new(EventKind::Status, &sid(n), "t", far_ttl())
    }
}

#[test]
fn a_status_callback_for_an_unknown_call_or_after_twilios_final_status_is_refused() {
    let dir = TempDir::new("refusals");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    // No record: nothing is written, no orphan appears.
    assert!(!store
        .append_if_changed(&status_event(1, "ringing", 0))
        .unwrap());
    assert!(store.summary(&key(1)).is_none());

    store.append(&created(2, "judge", 1_000)).unwrap();
    // Progress before the stream, then the call's own verdict, then Twilio's `completed`:
    // all taken (the last completes the record).
    assert!(store
        .append_if_changed(&status_event(2, "in-progress", 1))
        .unwrap());
    assert!(store.complete(&completed(2)).unwrap());
    let done = Event {
        duration_secs: Some(75),
        ..status_event(2, "completed", 2)
    };
    assert!(store.append_if_changed(&done).unwrap());
    // After Twilio's final status nothing more from a callback.
    let late = Event {
        duration_secs: Some(9_999),
        ..status_event(2, "failed", 3)
    };
    assert!(!store.append_if_changed(&late).unwrap());
    let record = store.get(&key(2)).unwrap().unwrap();
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.twilio_status.as_deref(), Some("completed"));
    assert_eq!(record.duration_secs, Some(75));
    let lines = std::fs::read_to_string(store.path()).unwrap();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    assert!(!lines.contains(&sid(1)));
}

#[test]
fn a_finished_call_is_never_reopened_by_a_second_stream() {
    let dir = TempDir::new("second-stream");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    store.append(&created(3, "parent", 1_000)).unwrap();
    assert!(store.may_stream(&sid(3)).unwrap(), "an active call");
    assert!(store.may_stream(&sid(4)).unwrap(), "a call with no record");
    assert!(store.complete(&completed(3)).unwrap());
    assert!(!store.may_stream(&sid(3)).unwrap());
    // A second outcome cannot replace the transcript.
    let mut second = completed(3);
    second.transcript = Some(Transcript::from_entries(&[]));
    second.status = Some(CallStatus::Failed);
    assert!(!store.complete(&second).unwrap());
    let record = store.get(&key(3)).unwrap().unwrap();
    assert_eq!(record.transcript.entries().len(), 1);
    assert_eq!(record.status, CallStatus::Completed);

    // A final status from Twilio alone closes the call to streams too.
    store.append(&created(5, "parent", 1_000)).unwrap();
    store
        .append_if_changed(&status_event(5, "no-answer", 1))
        .unwrap();
    assert!(!store.may_stream(&sid(5)).unwrap());
}

#[test]
fn a_line_over_the_limit_keeps_the_start_of_its_transcript_and_says_so() {
    use super::event::{bounded_line, MAX_LINE_BYTES};
    let entry = |i: usize| TranscriptEntry {
        role: "user".into(),
        text: format!("{i}: {}", "x".repeat(10_000)),
        timestamp: "t".into(),
    };
    let mut event = completed(6);
    event.transcript = Some(Transcript::from_entries(
        &(0..300).map(entry).collect::<Vec<_>>(),
    ));
    let (line, cut) = bounded_line(&event, MAX_LINE_BYTES).unwrap();
    assert!(cut);
    assert!(line.len() <= MAX_LINE_BYTES);
    let back: Event = serde_json::from_slice(&line).unwrap();
    let entries = back.transcript.unwrap().entries();
    let kept = entries.len() - 1;
    assert!(kept > 50, "{kept}");
    assert!(entries[0].text.starts_with("0: "));
    assert_eq!(
        entries.last().unwrap().text,
        format!("[transcript truncated: {kept} of 300 entries kept]")
    );
    // A small line is untouched. (One event for both sides: `completed` stamps the time.)
    let small = completed(6);
    let (line, cut) = bounded_line(&small, MAX_LINE_BYTES).unwrap();
    assert!(!cut);
    assert_eq!(line, serde_json::to_vec(&small).unwrap());

    // Through the store: the line on file is within the limit.
    let dir = TempDir::new("long-line");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    store.append(&created(6, "parent", 1_000)).unwrap();
    store.complete(&event).unwrap();
    let text = std::fs::read_to_string(store.path()).unwrap();
    assert!(text.lines().all(|l| l.len() <= MAX_LINE_BYTES));
    assert!(store.get(&key(6)).unwrap().is_some());
}

fn answered_by_event(n: u32, answered_by: &str) -> Event {
    Event {
        answered_by: Some(answered_by.into()),
        ..Event::new(EventKind::Status, &sid(n), "t", far_ttl())
    }
}

#[test]
fn who_answered_is_kept_once_in_the_record_and_its_summary_and_survives_compaction() {
    let dir = TempDir::new("answered-by");
    let (store, _) = RecordStore::open(&dir.0).unwrap();
    // No record: refused like any callback.
    assert!(!store
        .append_if_changed(&answered_by_event(1, "human"))
        .unwrap());
    store.append(&created(4, "attorney", 1_000)).unwrap();
    // Not one of Twilio's values: nothing changes, nothing is written.
    assert!(!store
        .append_if_changed(&answered_by_event(4, "robot"))
        .unwrap());
    assert!(store
        .append_if_changed(&answered_by_event(4, "machine_end_beep"))
        .unwrap());
    // A repeat, or a later different result, changes nothing: the first is kept.
    assert!(!store
        .append_if_changed(&answered_by_event(4, "machine_end_beep"))
        .unwrap());
    assert!(!store
        .append_if_changed(&answered_by_event(4, "human"))
        .unwrap());
    let record = store.get(&key(4)).unwrap().unwrap();
    assert_eq!(record.answered_by.as_deref(), Some("machine_end_beep"));
    let listed = store.summary(&key(4)).unwrap().to_list_json(&key(4));
    assert_eq!(listed["answeredBy"], "machine_end_beep");
    store.compact().unwrap();
    let (reopened, _) = RecordStore::open(&dir.0).unwrap();
    let record = reopened.get(&key(4)).unwrap().unwrap();
    assert_eq!(record.answered_by.as_deref(), Some("machine_end_beep"));
    let lines = std::fs::read_to_string(reopened.path()).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
}
