//! The calls' record appends, made off the call threads: one named thread (`records-writer`)
//! for the process takes them from a bounded queue, in order, so a compaction (or another
//! process's `compact`) holding the records lock delays that thread, never a call's greeting or
//! frames.
//!
//! Nothing acknowledged is lost, and nothing is dropped silently:
//! - [`RecordWriter::create_if_absent`] (a call's first line, not acknowledged to anyone) never
//!   waits while there is room in the queue;
//! - [`RecordWriter::append_and_wait`] (a call's `completed` line) waits for the line to be on
//!   file (fsync'd, see the store's durability rule) before it returns, so a call closes its
//!   stream only after its verdict is written, as before — the only wait a call makes, at its
//!   end;
//! - when the queue is full (the disk has stalled for the time [`QUEUE_LINES`] lines take to
//!   arrive), the line is written on the caller's thread, as it was before this writer existed,
//!   and that is logged (`records.queue_full`): the call waits rather than losing its record.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::event::{Event, EventKind};
use super::{index, RecordStore, RecordsError};

/// Lines the queue holds. A call queues two (its first line and its `completed`), minutes
/// apart: a thousand calls of three minutes make about eleven a second, so 1,024 lines is a
/// minute and a half of a stalled disk or a long compaction before a call writes its own line.
/// A slot is a pointer and a tag (the event is boxed), so the queue costs 32 KiB.
pub const QUEUE_LINES: usize = 1024;

/// What the writer is asked to do.
enum Job {
    /// A call's first line, unless the call has a record already (the webhook wrote it).
    CreateIfAbsent(Box<Event>),
    /// Append, then say how it went.
    Append(Box<Event>, Sender<Result<(), String>>),
}

/// Where a line went.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the writer thread.
    Queued,
    /// The queue was full (or there is no writer thread): written on the caller's thread.
    WrittenHere,
}

/// The process's records writer. Dropping it closes the queue: the thread writes what is left,
/// then ends, and the drop waits for that.
pub struct RecordWriter {
    store: Arc<RecordStore>,
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl RecordWriter {
    /// Starts the writer thread for `store`, with a queue of `capacity` lines. If the thread
    /// cannot be started, lines are written on their callers' threads (logged once).
    pub fn start(store: Arc<RecordStore>, capacity: usize) -> RecordWriter {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(capacity.max(1));
        let writer_store = store.clone();
        let spawned = std::thread::Builder::new()
            .name("records-writer".into())
            .stack_size(256 * 1024)
            .spawn(move || write_lines(&writer_store, &rx));
        match spawned {
            Ok(thread) => RecordWriter {
                store,
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(err) => {
                log::error!(error:% = err; "records.writer_failed: lines are written by the calls");
                RecordWriter {
                    store,
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    pub fn store(&self) -> &RecordStore {
        &self.store
    }

    /// Lines waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    /// Writes `event` (a call's first line) unless its call already has a record; does not
    /// wait for it unless the queue is full.
    pub fn create_if_absent(&self, event: Event) -> Delivery {
        let job = Job::CreateIfAbsent(Box::new(event));
        match self.try_queue(job) {
            Ok(()) => Delivery::Queued,
            Err(Job::CreateIfAbsent(event)) => {
                create_if_absent(&self.store, &event);
                Delivery::WrittenHere
            }
            Err(Job::Append(..)) => Delivery::WrittenHere,
        }
    }

    /// Appends `event` and waits until it is on file, at most `wait` once queued (the disk is
    /// stalled then: the line is still written when it can be, and the wait is logged).
    pub fn append_and_wait(&self, event: Event, wait: Duration) -> Result<(), RecordsError> {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        match self.try_queue(Job::Append(Box::new(event), done_tx)) {
            Ok(()) => match done_rx.recv_timeout(wait) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(RecordsError::io(
                    self.store.path(),
                    std::io::Error::other(why),
                )),
                Err(_) => {
                    log::warn!(waitedMs = wait.as_millis() as u64; "records.append_slow: the line is still queued");
                    Ok(())
                }
            },
            Err(Job::Append(event, _)) => append(&self.store, &event),
            Err(Job::CreateIfAbsent(_)) => Ok(()),
        }
    }

    /// Tests: whether a first line would be queued now (`Err`: the queue is full).
    #[cfg(test)]
    pub(super) fn try_queue_for_test(&self, event: Event) -> Result<(), ()> {
        self.try_queue(Job::CreateIfAbsent(Box::new(event)))
            .map_err(|_| ())
    }

    /// Queues `job`; gives it back when the queue is full or there is no writer.
    fn try_queue(&self, job: Job) -> Result<(), Job> {
        let Some(tx) = &self.tx else {
            return Err(job);
        };
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => {
                log::warn!(queued = tx.len(); "records.queue_full: the line is written by its call");
                Err(job)
            }
            Err(TrySendError::Disconnected(job)) => Err(job),
        }
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: every queued line, in order, until the queue closes.
fn write_lines(store: &RecordStore, jobs: &Receiver<Job>) {
    for job in jobs.iter() {
        match job {
            Job::CreateIfAbsent(event) => create_if_absent(store, &event),
            Job::Append(event, done) => {
                let result = append(store, &event);
                if let Err(err) = &result {
                    log::error!(callSid = event.call_sid.as_str(), error:% = err; "records.append.failed");
                }
                // The call may have stopped waiting: the line is on file either way.
                let _ = done.send(result.map_err(|e| e.to_string()));
            }
        }
    }
}

/// A queued append: a call's outcome by the store's rule (never a second one; a refusal is
/// logged there and is not an error of the file), anything else as it is.
fn append(store: &RecordStore, event: &Event) -> Result<(), RecordsError> {
    match event.event {
        EventKind::Completed => store.complete(event).map(drop),
        _ => store.append(event),
    }
}

fn create_if_absent(store: &RecordStore, event: &Event) {
    match index::sid_key(&event.call_sid) {
        Some(key) if store.summary(&key).is_some() => return,
        Some(_) => {}
        None => {
            log::warn!(callSid = event.call_sid.as_str(); "call: not a Twilio call SID; no record kept");
            return;
        }
    }
    if let Err(err) = store.append(event) {
        log::error!(callSid = event.call_sid.as_str(), error:% = err; "records.createCallRecord.failed");
    }
}
