//! Call records as a JSON-lines file, `RECORDS_DIR/calls.jsonl`: one line per event of a call
//! (created, status change, completed with its cost summary, deleted), so `tail -f | jq` shows
//! a call as it happens. The records API answers from an in-memory [`index::Index`] rebuilt
//! at start-up.
//!
//! **Durability rule.** Every event is one `write(2)` of a whole line, made under an exclusive
//! lock on `calls.lock`, so lines from many threads and processes never interleave and a
//! crash of this process loses nothing already written. `completed` and `deleted` events are
//! also fsync'd before the append returns: they carry what cannot be rebuilt (the transcript and
//! the cost of a call, and a person's request to delete it). `created` and `status` events are
//! not: a power loss may lose the last of them, and Twilio's next callback restates a status.
//!
//! **Torn lines.** A line cut short by a crash (or a hand edit gone wrong) is reported with its
//! file and line number and skipped; nothing before or after it is lost. A file that does not
//! end in a newline gets one before the next append, so the torn fragment stays alone.
//!
//! **Compaction** ([`RecordStore::compact`], `cotrackpro-voice compact`) rewrites the file with
//! one line per live call, dropping deleted and expired ones: a temporary file is written,
//! fsync'd and renamed over the old one, and the directory fsync'd. It holds the same lock as
//! appends for its whole run, so an append waits and then lands in the new file. Before it reads
//! or writes, a store brings its index up to date with the file: it reloads the index when
//! another process replaced the file, and reads the lines other processes appended since (so a
//! `compact` process started before the server's last appends still keeps them).
//!
//! **Calls never write the file themselves**: their lines go through the process's
//! [`writer::RecordWriter`] (one `records-writer` thread, a bounded queue), so a compaction
//! holding the lock delays that thread, not a call's greeting; a call waits only at its end,
//! for its `completed` line to be on file.

mod compaction;
pub mod event;
pub mod index;
pub mod writer;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;

use event::{CallRecord, Event, EventKind};
use index::{Filter, Index, OrderKey, SidKey, Summary, Window};

use crate::timestamp;

pub const RECORDS_FILE: &str = "calls.jsonl";
const LOCK_FILE: &str = "calls.lock";

/// A records operation that failed. `Display` names the file.
#[derive(Debug)]
pub enum RecordsError {
    Io { path: PathBuf, source: io::Error },
}

impl RecordsError {
    fn io(path: &Path, source: io::Error) -> RecordsError {
        RecordsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for RecordsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordsError::Io { path, source } => {
                write!(f, "records file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for RecordsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecordsError::Io { source, .. } => Some(source),
        }
    }
}

/// A line that could not be read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub path: PathBuf,
    /// 1-based line number, when the file was read from its start (at start-up); lines read
    /// later (appended by another process) are placed by `offset`.
    pub line: Option<usize>,
    /// Byte offset of the line in the file.
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{line}: skipped: {}",
                self.path.display(),
                self.reason
            ),
            None => write!(
                f,
                "{} (byte {}): skipped: {}",
                self.path.display(),
                self.offset,
                self.reason
            ),
        }
    }
}

/// What compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub lines_before: usize,
    pub calls_kept: usize,
    pub calls_dropped: usize,
    pub bad_lines: usize,
}

struct Inner {
    file: File,
    /// (device, inode) of `file`, to notice a replacement by another process.
    identity: (u64, u64),
    /// Bytes of the file the index has read; lines past it were appended by another process.
    indexed_len: u64,
    index: Index,
}

/// The records store of one directory. Cheap to share behind an `Arc`; every method is safe
/// from many threads.
pub struct RecordStore {
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    inner: Mutex<Inner>,
}

/// A page of a listing.
pub struct Page {
    pub records: Vec<serde_json::Value>,
    pub cursor: Option<String>,
}

impl RecordStore {
    /// Opens (creating if needed) the store in `dir` and rebuilds the index. Lines that cannot
    /// be read are logged and returned.
    pub fn open(dir: &Path) -> Result<(RecordStore, Vec<BadLine>), RecordsError> {
        fs::create_dir_all(dir).map_err(|e| RecordsError::io(dir, e))?;
        let path = dir.join(RECORDS_FILE);
        let lock_path = dir.join(LOCK_FILE);
        let lock = open_lock(&lock_path)?;
        lock.lock().map_err(|e| RecordsError::io(&lock_path, e))?;
        let (inner, bad) = load(&path)?;
        drop(lock);
        let store = RecordStore {
            dir: dir.to_path_buf(),
            path,
            lock_path,
            inner: Mutex::new(inner),
        };
        Ok((store, bad))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `event` (see the module's durability rule) and applies it to the index.
    pub fn append(&self, event: &Event) -> Result<(), RecordsError> {
        let mut inner = self.lock_inner();
        self.write_event(&mut inner, event)
    }

    /// Appends `event` unless it would change nothing (a retried webhook or a callback that
    /// arrives after a later one) or the store refuses it ([`event::refusal`]: a status
    /// callback for a call with no record or after Twilio's final status; refusals are
    /// logged). Returns whether a line was written.
    pub fn append_if_changed(&self, event: &Event) -> Result<bool, RecordsError> {
        let mut inner = self.lock_inner();
        self.refresh(&mut inner, false)?;
        if self.refuses(&inner, event) {
            return Ok(false);
        }
        if let Some(key) = index::sid_key(&event.call_sid) {
            if let Some(summary) = inner.index.get(&key) {
                let before = summary.to_record(&key);
                let mut after = before.clone();
                after.apply(event);
                // A later expiry or sequence number alone is not news.
                after.ttl = before.ttl;
                after.last_sequence = before.last_sequence;
                if after == before && event.transcript.is_none() && event.tool_calls.is_none() {
                    return Ok(false);
                }
            }
        }
        self.write_event(&mut inner, event)?;
        Ok(true)
    }

    /// Appends a call's outcome (its `completed` event) unless one is on file already: a
    /// finished call is never reopened (logged). Returns whether a line was written.
    pub fn complete(&self, event: &Event) -> Result<bool, RecordsError> {
        let mut inner = self.lock_inner();
        self.refresh(&mut inner, false)?;
        if self.refuses(&inner, event) {
            return Ok(false);
        }
        self.write_event(&mut inner, event)?;
        Ok(true)
    }

    /// Whether a stream may start for `call_sid`: not for a call that is over (a final
    /// status, or its outcome on file). A call with no record may (its token says we
    /// answered it; see `call::Call::admit`).
    pub fn may_stream(&self, call_sid: &str) -> Result<bool, RecordsError> {
        let mut inner = self.lock_inner();
        self.refresh(&mut inner, false)?;
        let state = index::sid_key(call_sid).and_then(|key| inner.index.get(&key));
        Ok(event::may_stream(state))
    }

    /// Applies the store's refusal rules to `event` (logging a refusal).
    fn refuses(&self, inner: &Inner, event: &Event) -> bool {
        let state = index::sid_key(&event.call_sid).and_then(|key| inner.index.get(&key));
        let Some(why) = event::refusal(state, event) else {
            return false;
        };
        // The kind as it is written in the records file (`statusUpdate`, …).
        let kind = serde_json::to_value(event.event).unwrap_or_default();
        log::warn!(
            callSid = event.call_sid.as_str(),
            event = kind.as_str().unwrap_or("?"),
            twilioStatus = event.twilio_status.as_deref().unwrap_or(""),
            reason = why.as_str();
            "records.refused: no record changed"
        );
        true
    }

    fn write_event(&self, inner: &mut Inner, event: &Event) -> Result<(), RecordsError> {
        let (mut line, cut) = event::bounded_line(event, event::MAX_LINE_BYTES)
            .map_err(|e| RecordsError::io(&self.path, e.into()))?;
        if cut {
            log::warn!(callSid = event.call_sid.as_str(), bytes = line.len(); "records.line_truncated: over the line limit; the end of the transcript was cut");
        }
        line.push(b'\n');
        let durable = matches!(event.event, EventKind::Completed | EventKind::Deleted);
        let lock = self.cross_process_lock()?;
        self.refresh(inner, true)?;
        let offset = inner.indexed_len;
        inner
            .file
            .write_all(&line)
            .map_err(|e| RecordsError::io(&self.path, e))?;
        if durable {
            inner
                .file
                .sync_data()
                .map_err(|e| RecordsError::io(&self.path, e))?;
        }
        drop(lock);
        inner.index.apply(event, offset);
        inner.indexed_len = offset + line.len() as u64;
        Ok(())
    }

    /// The full record of a live call (transcript included), read from the file.
    pub fn get(&self, key: &SidKey) -> Result<Option<CallRecord>, RecordsError> {
        let mut inner = self.lock_inner();
        self.refresh(&mut inner, false)?;
        let now_secs = timestamp::now_ms() / 1000;
        let Some(summary) = inner
            .index
            .get(key)
            .filter(|s| !s.deleted && s.ttl > now_secs)
        else {
            return Ok(None);
        };
        let mut record = CallRecord::empty(&index::sid_string(key));
        for &offset in &summary.offsets {
            let line =
                read_line_at(&inner.file, offset).map_err(|e| RecordsError::io(&self.path, e))?;
            match serde_json::from_slice::<Event>(&line) {
                Ok(event) => record.apply(&event),
                Err(err) => {
                    log::warn!(offset = offset; "records line changed under the index: {err}")
                }
            }
        }
        Ok(Some(record))
    }

    /// The summary of a live call from the index (no file read).
    pub fn summary(&self, key: &SidKey) -> Option<Summary> {
        let inner = self.lock_inner();
        let now_secs = timestamp::now_ms() / 1000;
        inner
            .index
            .get(key)
            .filter(|s| !s.deleted && s.ttl > now_secs)
            .cloned()
    }

    /// A page of live calls, newest first. `cursor` is a previous page's; an undecodable one
    /// starts from the top.
    pub fn list(
        &self,
        filter: Filter,
        window: Window,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, RecordsError> {
        self.search(filter, window, None, cursor, limit)
    }

    /// [`RecordStore::list`] of the calls `search` finds (see [`index::Search`]); `None`:
    /// every call.
    pub fn search(
        &self,
        filter: Filter,
        window: Window,
        search: Option<&index::Search>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, RecordsError> {
        let mut inner = self.lock_inner();
        self.refresh(&mut inner, false)?;
        let after = cursor.and_then(decode_cursor);
        let now_secs = timestamp::now_ms() / 1000;
        let (page, next) =
            inner
                .index
                .list_matching(filter, window, after, limit, now_secs, |key, summary| {
                    search.is_none_or(|s| s.finds(key, summary))
                });
        Ok(Page {
            records: page.iter().map(|(key, s)| s.to_list_json(key)).collect(),
            cursor: next.map(|key| encode_cursor(&key)),
        })
    }

    /// `read` of every live call that started within `window`, up to date with the file (for
    /// the records summary). Appends wait while it runs: keep it to arithmetic.
    pub fn read_window<R>(
        &self,
        window: Window,
        read: impl FnOnce(&[&Summary]) -> R,
    ) -> Result<R, RecordsError> {
        let mut inner = self.lock_inner();
        self.refresh(&mut inner, false)?;
        let now_secs = timestamp::now_ms() / 1000;
        let calls: Vec<&Summary> = inner
            .index
            .live(now_secs)
            .filter(|(_, s)| window.contains(s.started_at_ms))
            .map(|(_, s)| s)
            .collect();
        Ok(read(&calls))
    }

    /// Every live call's summary (for rollups and totals).
    pub fn summaries(&self) -> Vec<(SidKey, Summary)> {
        let inner = self.lock_inner();
        let now_secs = timestamp::now_ms() / 1000;
        inner
            .index
            .live(now_secs)
            .map(|(k, s)| (*k, s.clone()))
            .collect()
    }

    /// Rewrites the file with one line per live call (see the module docs).
    pub fn compact(&self) -> Result<CompactionReport, RecordsError> {
        let mut inner = self.lock_inner();
        let lock = self.cross_process_lock()?;
        self.refresh(&mut inner, true)?;
        let now_secs = timestamp::now_ms() / 1000;
        let lines_before = inner.index.line_count();
        let known = inner.index.len();
        let (report, new_offsets) =
            compaction::write_compacted(&self.path, &inner.index, inner.indexed_len, now_secs)?;
        let (file, identity, len) = open_append(&self.path)?;
        inner.file = file;
        inner.identity = identity;
        inner.indexed_len = len;
        inner.index.replace_after_compaction(&new_offsets);
        drop(lock);
        Ok(CompactionReport {
            lines_before,
            calls_dropped: known - report.calls_kept,
            ..report
        })
    }

    fn lock_inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (the index is updated after the
        // write), so a poisoned lock is recovered.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cross_process_lock(&self) -> Result<File, RecordsError> {
        let lock = open_lock(&self.lock_path)?;
        lock.lock()
            .map_err(|e| RecordsError::io(&self.lock_path, e))?;
        Ok(lock)
    }

    /// Brings the index up to date with the file: reloads it if another process replaced the
    /// file (compaction), and reads lines other processes appended since. `locked`: the caller
    /// holds the cross-process lock, so a line without its newline is torn (a writer died), not
    /// still being written.
    fn refresh(&self, inner: &mut Inner, locked: bool) -> Result<(), RecordsError> {
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                log::warn!(path:% = self.path.display(); "records file disappeared; starting a new one");
                let (fresh, _) = load(&self.path)?;
                *inner = fresh;
                return Ok(());
            }
            Err(err) => return Err(RecordsError::io(&self.path, err)),
        };
        if (meta.dev(), meta.ino()) != inner.identity {
            log::info!(path:% = self.path.display(); "records file was replaced (compacted elsewhere); reloading the index");
            let (fresh, bad) = load(&self.path)?;
            for line in &bad {
                log::warn!("{line}");
            }
            *inner = fresh;
            return Ok(());
        }
        if meta.len() > inner.indexed_len {
            let (consumed, bad) =
                read_lines(&self.path, inner.indexed_len, false, &mut inner.index)?;
            for line in &bad {
                log::warn!("{line}");
            }
            inner.indexed_len = consumed;
            if locked && consumed < meta.len() {
                // A writer died mid-line: end the fragment so our line stays whole.
                log::warn!(path:% = self.path.display(), offset = consumed; "records file ends in a torn line; closing it");
                inner
                    .file
                    .write_all(b"\n")
                    .map_err(|e| RecordsError::io(&self.path, e))?;
                inner.indexed_len = meta.len() + 1;
            }
        }
        Ok(())
    }
}

/// Reads `path` into a fresh index and opens it for appending. The caller holds the lock.
fn load(path: &Path) -> Result<(Inner, Vec<BadLine>), RecordsError> {
    let mut index = Index::default();
    // Read first: opening for append ends a torn last line, which would hide that it was torn.
    let bad = if path.exists() {
        read_lines(path, 0, true, &mut index)?.1
    } else {
        Vec::new()
    };
    let (file, identity, len) = open_append(path)?;
    Ok((
        Inner {
            file,
            identity,
            indexed_len: len,
            index,
        },
        bad,
    ))
}

fn open_lock(path: &Path) -> Result<File, RecordsError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| RecordsError::io(path, e))
}

/// Opens `path` for appending (creating it), ending a torn last line with a newline first.
/// Returns the file, its identity and its length.
fn open_append(path: &Path) -> Result<(File, (u64, u64), u64), RecordsError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| RecordsError::io(path, e))?;
    let meta = file.metadata().map_err(|e| RecordsError::io(path, e))?;
    let mut len = meta.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1)
            .map_err(|e| RecordsError::io(path, e))?;
        if last[0] != b'\n' {
            file.write_all(b"\n")
                .map_err(|e| RecordsError::io(path, e))?;
            len += 1;
        }
    }
    Ok((file, (meta.dev(), meta.ino()), len))
}

/// Reads the whole lines of `path` from byte `from` into `index`. Returns the offset after
/// the last whole line and the lines that could not be read. A last line without its newline
/// is left unread (it is torn, or still being written by another process) unless `at_load`
/// (the whole file read when the store opens, under the lock), where it is reported as torn.
/// (Not `from == 0`: a store opened on an empty file reads another process's first line from
/// 0 too, and must not take the line it is still writing for a torn one.)
fn read_lines(
    path: &Path,
    from: u64,
    at_load: bool,
    index: &mut Index,
) -> Result<(u64, Vec<BadLine>), RecordsError> {
    let mut file = File::open(path).map_err(|e| RecordsError::io(path, e))?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(from)).map_err(|e| RecordsError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut bad = Vec::new();
    let mut buf = Vec::new();
    let mut offset = from;
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| RecordsError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let torn = buf.last() != Some(&b'\n');
        if torn && !at_load {
            break;
        }
        let line_offset = offset;
        offset += n as u64;
        let content = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if content.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reason = match serde_json::from_slice::<Event>(content) {
            Ok(event) if index.apply(&event, line_offset) => continue,
            Ok(event) => format!("malformed callSid {:?}", event.call_sid),
            Err(err) if torn => format!("torn last line ({err})"),
            Err(err) => err.to_string(),
        };
        bad.push(BadLine {
            path: path.to_path_buf(),
            line: at_load.then_some(line_no),
            offset: line_offset,
            reason,
        });
    }
    Ok((offset, bad))
}

/// Reads the line starting at `offset`.
fn read_line_at(file: &File, offset: u64) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut pos = offset;
    loop {
        let n = file.read_at(&mut chunk, pos)?;
        if n == 0 {
            return Ok(line);
        }
        if let Some(end) = chunk[..n].iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            return Ok(line);
        }
        line.extend_from_slice(&chunk[..n]);
        pos += n as u64;
    }
}

fn encode_cursor(key: &OrderKey) -> String {
    let text = format!("{}:{}", key.0 .0, index::sid_string(&key.1));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Whether `cursor` is one [`RecordStore::list`] could have handed out (the records API
/// refuses any other with 400 instead of starting from the top).
pub fn is_valid_cursor(cursor: &str) -> bool {
    decode_cursor(cursor).is_some()
}

fn decode_cursor(cursor: &str) -> Option<OrderKey> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (ms, sid) = text.split_once(':')?;
    Some((std::cmp::Reverse(ms.parse().ok()?), index::sid_key(sid)?))
}

/// A `ttl` (epoch seconds) `ttl_days` after `now_ms`.
pub fn ttl_from(now_ms: i64, ttl_days: f64) -> i64 {
    now_ms / 1000 + (ttl_days * 86_400.0).floor() as i64
}

#[cfg(test)]
mod tests;
