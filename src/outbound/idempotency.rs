//! `Idempotency-Key` for the outbound-call API: a retried request never dials twice.
//!
//! - The first request with a key does the work; its response is kept for 24 hours when it is
//!   deterministic (2xx and 4xx; never a 5xx or a 429, which a retry may cure), and a repeat
//!   gets it back without touching Twilio.
//! - Two requests with the same key at once: the second waits for the first's answer (up to a
//!   few seconds), or gets 409.
//! - The same key with a different body is refused (422): a key names one request.
//! - Keys are scoped to the API key that sent them: two clients cannot collide or read each
//!   other's answers.
//! - Kept answers survive a restart: each is appended (and fsync'd) to a JSON-lines file next
//!   to the call records, which is rewritten without expired lines when the server starts.
//!
//! The trait is the seam for a shared backend when one VM is not enough.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long an answer is kept.
pub const KEEP_MS: i64 = 24 * 3600 * 1000;
/// The file, inside the records directory.
pub const FILE_NAME: &str = "idempotency.jsonl";

/// A kept answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    pub status: u16,
    /// The JSON body, as sent.
    pub body: String,
}

/// What to do with a request that carries a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// Do the work, then [`IdempotencyStore::finish`].
    Proceed,
    /// Answer with this, as before.
    Replay(StoredReply),
    /// The key was used for a different request.
    Conflict,
    /// The same request is still being worked on.
    InProgress,
}

pub trait IdempotencyStore: Send + Sync {
    /// Starts a request: `scope` is the API key's, `fingerprint` the request's. Waits up to
    /// `wait` for an identical request in progress.
    fn begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        wait: Duration,
    ) -> Begin;
    /// Ends a request that got [`Begin::Proceed`]: keeps `reply` if given, else forgets the key
    /// (so a retry does the work again).
    fn finish(&self, scope: &str, key: &str, reply: Option<StoredReply>, now_ms: i64);
}

/// Checks an `Idempotency-Key` header: 1–256 printable ASCII characters.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("Idempotency-Key is present but empty".into());
    }
    if key.len() > 256 {
        return Err("Idempotency-Key must be at most 256 characters".into());
    }
    if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err("Idempotency-Key must contain only printable ASCII".into());
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Entry {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        reply: StoredReply,
        expires_ms: i64,
    },
}

/// One line of the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    scope: String,
    key: String,
    fingerprint: String,
    status: u16,
    body: String,
    expires_ms: i64,
}

impl Line {
    fn new(
        scope: &str,
        key: &str,
        fingerprint: &str,
        reply: &StoredReply,
        expires_ms: i64,
    ) -> Line {
        Line {
            scope: scope.to_string(),
            key: key.to_string(),
            fingerprint: fingerprint.to_string(),
            status: reply.status,
            body: reply.body.clone(),
            expires_ms,
        }
    }
}

struct Inner {
    entries: HashMap<(String, String), Entry>,
    file: File,
    appended: usize,
}

/// The in-process store, persisted to a JSON-lines file.
pub struct FileIdempotencyStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl FileIdempotencyStore {
    /// Opens (or creates) `dir/idempotency.jsonl`, keeping the answers that have not expired
    /// and rewriting the file with only those. Unreadable lines (a torn last write) are
    /// skipped.
    pub fn open(dir: &Path, now_ms: i64) -> std::io::Result<FileIdempotencyStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let mut entries = HashMap::new();
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                let Ok(line) = serde_json::from_str::<Line>(&line) else {
                    continue;
                };
                if line.expires_ms > now_ms {
                    entries.insert(
                        (line.scope, line.key),
                        Entry::Done {
                            fingerprint: line.fingerprint,
                            reply: StoredReply {
                                status: line.status,
                                body: line.body,
                            },
                            expires_ms: line.expires_ms,
                        },
                    );
                }
            }
        }
        let file = rewrite(&path, &entries)?;
        Ok(FileIdempotencyStore {
            path,
            inner: Mutex::new(Inner {
                entries,
                file,
                appended: 0,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes the kept answers to a fresh file and puts it in place; returns it open for appends.
fn rewrite(path: &Path, entries: &HashMap<(String, String), Entry>) -> std::io::Result<File> {
    let temp = path.with_extension("jsonl.tmp");
    {
        let mut out = std::io::BufWriter::new(File::create(&temp)?);
        for ((scope, key), entry) in entries {
            if let Entry::Done {
                fingerprint,
                reply,
                expires_ms,
            } = entry
            {
                let line = Line::new(scope, key, fingerprint, reply, *expires_ms);
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        out.flush()?;
        out.get_ref().sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    OpenOptions::new().append(true).open(path)
}

impl IdempotencyStore for FileIdempotencyStore {
    fn begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        wait: Duration,
    ) -> Begin {
        let id = (scope.to_string(), key.to_string());
        let deadline = Instant::now() + wait;
        let mut inner = self.lock();
        loop {
            match inner.entries.get(&id) {
                Some(Entry::Done {
                    fingerprint: kept,
                    reply,
                    expires_ms,
                }) if *expires_ms > now_ms => {
                    return if kept == fingerprint {
                        Begin::Replay(reply.clone())
                    } else {
                        Begin::Conflict
                    };
                }
                Some(Entry::InFlight { fingerprint: other }) => {
                    if other != fingerprint {
                        return Begin::Conflict;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Begin::InProgress;
                    }
                    inner = self
                        .changed
                        .wait_timeout(inner, left)
                        .map_or_else(|p| p.into_inner().0, |(guard, _)| guard);
                }
                _ => {
                    inner.entries.insert(
                        id,
                        Entry::InFlight {
                            fingerprint: fingerprint.to_string(),
                        },
                    );
                    return Begin::Proceed;
                }
            }
        }
    }

    fn finish(&self, scope: &str, key: &str, reply: Option<StoredReply>, now_ms: i64) {
        let id = (scope.to_string(), key.to_string());
        let mut inner = self.lock();
        let fingerprint = match inner.entries.get(&id) {
            Some(Entry::InFlight { fingerprint }) => fingerprint.clone(),
            _ => String::new(),
        };
        match reply {
            Some(reply) => {
                let expires_ms = now_ms + KEEP_MS;
                let line = Line::new(scope, key, &fingerprint, &reply, expires_ms);
                let written = serde_json::to_string(&line)
                    .map_err(std::io::Error::other)
                    .and_then(|mut text| {
                        text.push('\n');
                        inner.file.write_all(text.as_bytes())?;
                        inner.file.sync_data()
                    });
                if let Err(err) = written {
                    // Kept in memory all the same: a retry before a restart is still safe.
                    log::error!(error:% = err, file:% = self.path.display(); "idempotency.persist_failed");
                }
                inner.appended += 1;
                inner.entries.insert(
                    id,
                    Entry::Done {
                        fingerprint,
                        reply,
                        expires_ms,
                    },
                );
            }
            None => {
                inner.entries.remove(&id);
            }
        }
        // Housekeeping: drop expired answers, and rewrite the file when it has grown.
        if inner.appended >= 10_000 {
            inner.entries.retain(|_, e| match e {
                Entry::Done { expires_ms, .. } => *expires_ms > now_ms,
                Entry::InFlight { .. } => true,
            });
            match rewrite(&self.path, &inner.entries) {
                Ok(file) => {
                    inner.file = file;
                    inner.appended = 0;
                }
                Err(err) => log::error!(error:% = err; "idempotency.rewrite_failed"),
            }
        }
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cotrackpro-idem-{name}-{}-{}",
            std::process::id(),
            crate::ids::RequestId::generate().as_str()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reply(status: u16) -> StoredReply {
        StoredReply {
            status,
            body: format!("{{\"status\":{status}}}"),
        }
    }

    const NO_WAIT: Duration = Duration::ZERO;

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("a").is_ok());
        assert!(validate_key(&"k".repeat(256)).is_ok());
        assert!(validate_key("with space ok").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(257)).is_err());
        assert!(validate_key("tab\there").is_err());
        assert!(validate_key("é").is_err());
    }

    #[test]
    fn a_kept_answer_is_replayed_and_survives_a_restart() {
        let dir = temp_dir("restart");
        let store = FileIdempotencyStore::open(&dir, 1000).unwrap();
        assert_eq!(store.begin("s", "k", "f", 1000, NO_WAIT), Begin::Proceed);
        store.finish("s", "k", Some(reply(200)), 1000);
        assert_eq!(
            store.begin("s", "k", "f", 2000, NO_WAIT),
            Begin::Replay(reply(200))
        );
        assert_eq!(
            store.begin("s", "k", "other", 2000, NO_WAIT),
            Begin::Conflict
        );
        assert_eq!(
            store.begin("t", "k", "f", 2000, NO_WAIT),
            Begin::Proceed,
            "scoped"
        );
        drop(store);
        let reopened = FileIdempotencyStore::open(&dir, 3000).unwrap();
        assert_eq!(
            reopened.begin("s", "k", "f", 3000, NO_WAIT),
            Begin::Replay(reply(200))
        );
        // After 24 hours it is gone, and the file forgets it at the next start.
        let later = 1000 + KEEP_MS + 1;
        assert_eq!(
            reopened.begin("s", "k", "f", later, NO_WAIT),
            Begin::Proceed
        );
        drop(reopened);
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 1);
        let _ = FileIdempotencyStore::open(&dir, later).unwrap();
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unkept_answer_lets_a_retry_do_the_work() {
        let dir = temp_dir("forget");
        let store = FileIdempotencyStore::open(&dir, 0).unwrap();
        assert_eq!(store.begin("s", "k", "f", 0, NO_WAIT), Begin::Proceed);
        assert_eq!(store.begin("s", "k", "f", 0, NO_WAIT), Begin::InProgress);
        store.finish("s", "k", None, 0);
        assert_eq!(store.begin("s", "k", "f", 0, NO_WAIT), Begin::Proceed);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_concurrent_twin_waits_for_the_first_answer() {
        let dir = temp_dir("twin");
        let store = Arc::new(FileIdempotencyStore::open(&dir, 0).unwrap());
        assert_eq!(store.begin("s", "k", "f", 0, NO_WAIT), Begin::Proceed);
        let twin = {
            let store = store.clone();
            std::thread::Builder::new()
                .name("idem-twin".into())
                .spawn(move || store.begin("s", "k", "f", 0, Duration::from_secs(5)))
                .unwrap()
        };
        std::thread::sleep(Duration::from_millis(50));
        store.finish("s", "k", Some(reply(201)), 0);
        assert_eq!(twin.join().unwrap(), Begin::Replay(reply(201)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = temp_dir("torn");
        let store = FileIdempotencyStore::open(&dir, 0).unwrap();
        store.begin("s", "k", "f", 0, NO_WAIT);
        store.finish("s", "k", Some(reply(200)), 0);
        drop(store);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.join(FILE_NAME))
            .unwrap();
        file.write_all(b"{\"scope\":\"s\",\"ke").unwrap();
        let store = FileIdempotencyStore::open(&dir, 1).unwrap();
        assert_eq!(
            store.begin("s", "k", "f", 1, NO_WAIT),
            Begin::Replay(reply(200))
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
