//! Compaction's writing half: one line per live call into a temporary file, by a few threads
//! sharing it, then an atomic rename over the records file. [`super::RecordStore::compact`]
//! holds the lock and swaps the index; this only writes.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::event::{CallRecord, Event};
use super::index::{self, Index, SidKey, Summary};
use super::{CompactionReport, RecordsError};
use crate::timestamp;

/// Threads compaction folds calls on (each takes every n-th call).
const COMPACTION_WORKERS: usize = 2;

/// Bytes a compaction thread gathers before writing them at a region it reserves.
const CHUNK_BYTES: usize = 1 << 20;

/// Writes one line per live call into a temporary file, then renames it over `path`.
/// Returns the report and each kept call's new offset, indexed by slot.
///
/// The live calls are shared out between [`COMPACTION_WORKERS`] threads. Each reads the file
/// once from the start (cheap: it is in the page cache) but parses only its own calls' lines,
/// matched by offset: a call of one line is copied as it is, a call of several is folded as
/// its lines go by and written at its last one. A thread gathers lines in a chunk and writes it
/// at a region of the temporary file it reserves with an atomic counter, so the threads share
/// one file without waiting for each other. Only calls whose lines are still ahead are held in
/// memory, never the file.
pub(super) fn write_compacted(
    path: &Path,
    index: &Index,
    indexed_len: u64,
    now_secs: i64,
) -> Result<(CompactionReport, Vec<Option<u64>>), RecordsError> {
    let live = index.live_slots(now_secs);
    let mut plan: Vec<(u64, u32)> = Vec::with_capacity(live.len() * 3);
    for (idx, (_, _, summary)) in live.iter().enumerate() {
        plan.extend(summary.offsets.iter().map(|&offset| (offset, idx as u32)));
    }
    plan.sort_unstable();
    let at = timestamp::format_ms(timestamp::now_ms());
    let tmp_path = path.with_extension("jsonl.tmp");
    let tmp = File::create(&tmp_path).map_err(|e| RecordsError::io(&tmp_path, e))?;
    let reserved = std::sync::atomic::AtomicU64::new(0);

    let parts: Vec<io::Result<CompactedPart>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..COMPACTION_WORKERS)
            .map(|part| {
                let job = PartJob {
                    source: path,
                    indexed_len,
                    live: &live,
                    plan: &plan,
                    part,
                    at: &at,
                    out: &tmp,
                    reserved: &reserved,
                };
                std::thread::Builder::new()
                    .name(format!("compact-{part}"))
                    .spawn_scoped(scope, move || compact_part(&job))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a compaction thread panicked"))),
                Err(err) => Err(err),
            })
            .collect()
    });

    let mut report = CompactionReport::default();
    let mut new_offsets = vec![None; index.slot_count()];
    for result in parts {
        let done = result.map_err(|e| RecordsError::io(&tmp_path, e))?;
        report.bad_lines += done.bad_lines;
        for (slot, offset) in done.offsets {
            new_offsets[slot as usize] = Some(offset);
            report.calls_kept += 1;
        }
    }
    if report.calls_kept != live.len() {
        // Never replace the file with one that lacks a live call.
        return Err(RecordsError::io(
            &tmp_path,
            io::Error::other(format!(
                "compaction wrote {} of {} calls; the records file was left as it was",
                report.calls_kept,
                live.len()
            )),
        ));
    }
    tmp.sync_all().map_err(|e| RecordsError::io(&tmp_path, e))?;
    drop(tmp);
    fs::rename(&tmp_path, path).map_err(|e| RecordsError::io(path, e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| RecordsError::io(dir, e))?;
    }
    Ok((report, new_offsets))
}

/// One compaction thread's share of the work.
struct PartJob<'a> {
    source: &'a Path,
    indexed_len: u64,
    live: &'a [(index::Slot, &'a SidKey, &'a Summary)],
    /// Every live call's line offsets, sorted: (offset, index into `live`).
    plan: &'a [(u64, u32)],
    part: usize,
    at: &'a str,
    out: &'a File,
    /// End of the regions of `out` reserved so far.
    reserved: &'a std::sync::atomic::AtomicU64,
}

/// What a compaction thread wrote: each call's slot and new offset.
struct CompactedPart {
    offsets: Vec<(index::Slot, u64)>,
    bad_lines: usize,
}

/// Lines gathered for one write, with where each starts in the chunk.
struct Chunk {
    bytes: Vec<u8>,
    lines: Vec<(index::Slot, usize)>,
}

impl Chunk {
    /// Writes the chunk at a freshly reserved region and records its lines' offsets.
    fn flush(&mut self, job: &PartJob<'_>, done: &mut CompactedPart) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let base = job
            .reserved
            .fetch_add(self.bytes.len() as u64, std::sync::atomic::Ordering::SeqCst);
        job.out.write_all_at(&self.bytes, base)?;
        done.offsets.extend(
            self.lines
                .drain(..)
                .map(|(slot, at)| (slot, base + at as u64)),
        );
        self.bytes.clear();
        Ok(())
    }
}

fn compact_part(job: &PartJob<'_>) -> io::Result<CompactedPart> {
    let mine = |idx: u32| idx as usize % COMPACTION_WORKERS == job.part;
    let source = File::open(job.source)?;
    let mut reader = BufReader::with_capacity(1 << 20, io::Read::take(source, job.indexed_len));
    let mut pending: std::collections::HashMap<u32, (CallRecord, usize)> =
        std::collections::HashMap::new();
    let mut done = CompactedPart {
        offsets: Vec::new(),
        bad_lines: 0,
    };
    let mut chunk = Chunk {
        bytes: Vec::with_capacity(CHUNK_BYTES + 4096),
        lines: Vec::new(),
    };
    let mut offset = 0u64;
    let mut buf = Vec::new();
    let mut plan = job.plan.iter().filter(|(_, idx)| mine(*idx)).peekable();
    while let Some(&&(wanted, idx)) = plan.peek() {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the records file is shorter than its index",
            ));
        }
        let line_offset = offset;
        offset += n as u64;
        if line_offset != wanted {
            continue; // another thread's call, or a line no live call needs
        }
        plan.next();
        let (slot, key, summary) = job.live[idx as usize];
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let folded;
        let line: &[u8] = if summary.offsets.len() == 1 {
            line
        } else {
            let entry = pending
                .entry(idx)
                .or_insert_with(|| (CallRecord::empty(&index::sid_string(key)), 0));
            match serde_json::from_slice::<Event>(line) {
                Ok(event) => entry.0.apply(&event),
                Err(_) => done.bad_lines += 1,
            }
            entry.1 += 1;
            if entry.1 < summary.offsets.len() {
                continue;
            }
            let Some((record, _)) = pending.remove(&idx) else {
                continue;
            };
            folded = serde_json::to_vec(&record.into_event(job.at)).map_err(io::Error::other)?;
            &folded
        };
        chunk.lines.push((slot, chunk.bytes.len()));
        chunk.bytes.extend_from_slice(line);
        chunk.bytes.push(b'\n');
        if chunk.bytes.len() >= CHUNK_BYTES {
            chunk.flush(job, &mut done)?;
        }
    }
    chunk.flush(job, &mut done)?;
    Ok(done)
}
