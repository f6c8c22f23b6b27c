//! Outbound calls being placed, each under a random nonce that rides in the `StatusCallback`
//! URL (`/call/status?placement=…`).
//!
//! Twilio can post the call's `initiated` callback before its create request has returned to
//! us, i.e. before the call has a record; the records refuse a status callback for a call with
//! no record. The nonce lets that callback make the record itself: Twilio signs the full URL,
//! query included, so a callback carrying a live nonce is one Twilio sent for a call we are
//! placing. Entries live only while the create request is in flight (the placing thread
//! removes its own), bounded in count and age in case one is never removed.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::personas::Role;

/// The `StatusCallback` URL's query parameter holding the nonce.
pub const QUERY_PARAMETER: &str = "placement";

/// Most placements held at once. Entries exist only while a create request is in flight, and
/// those hold at most half the HTTP workers: this is a ceiling far above real use.
pub const MAX_PENDING: usize = 256;

/// How long a placement stays usable: Twilio's create answers in well under a minute, and
/// its first callback comes within seconds of the call being created.
pub const MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// Hex digits of a nonce (128 random bits).
const NONCE_HEX_CHARS: usize = 32;

/// What a callback needs to write the record `place_call` would have written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub role: Role,
    /// The dialled number, masked (`phone::mask`): the record never holds the full number.
    pub masked_to: String,
}

struct Entry {
    nonce: String,
    registered_ms: i64,
    placement: Placement,
}

/// The placements in flight, oldest first. Pure: the caller gives the time and the nonce.
pub struct Placements {
    entries: VecDeque<Entry>,
    capacity: usize,
    max_age_ms: i64,
}

impl Placements {
    /// At most `capacity` placements, each usable for `max_age_ms`.
    pub fn new(capacity: usize, max_age_ms: i64) -> Placements {
        Placements {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            max_age_ms,
        }
    }

    /// Holds `placement` under `nonce` from `now_ms`. Expired entries go first; when still
    /// full, the oldest entry is dropped (its callback, if it ever comes first, is refused as
    /// before this registry existed) and returned so the caller can log it.
    pub fn insert(
        &mut self,
        nonce: String,
        placement: Placement,
        now_ms: i64,
    ) -> Option<Placement> {
        self.expire(now_ms);
        let evicted = if self.entries.len() >= self.capacity {
            self.entries.pop_front().map(|e| e.placement)
        } else {
            None
        };
        self.entries.push_back(Entry {
            nonce,
            registered_ms: now_ms,
            placement,
        });
        evicted
    }

    /// The placement under `nonce` if it is still live at `now_ms`.
    pub fn get(&mut self, nonce: &str, now_ms: i64) -> Option<Placement> {
        self.expire(now_ms);
        self.entries
            .iter()
            .find(|e| e.nonce == nonce)
            .map(|e| e.placement.clone())
    }

    /// Forgets `nonce` (its call has a record now, or was never created).
    pub fn remove(&mut self, nonce: &str) {
        self.entries.retain(|e| e.nonce != nonce);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now_ms: i64) {
        let max_age_ms = self.max_age_ms;
        // Entries are in registration order, so the expired ones are at the front.
        while self
            .entries
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.registered_ms) >= max_age_ms)
        {
            self.entries.pop_front();
        }
    }
}

/// A fresh nonce: 128 random bits as lowercase hex.
pub fn new_nonce() -> String {
    crate::ids::random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `text` has a nonce's shape (what a query parameter must be before a lookup).
pub fn is_nonce(text: &str) -> bool {
    text.len() == NONCE_HEX_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The process's placements, shared by the outbound pipeline (which registers and removes)
/// and the status callback (which reads and removes). Process-wide rather than a field of
/// `App` so the pipeline, which borrows only what it needs, can reach it; the nonces are
/// random, so servers sharing a process (tests) cannot see each other's entries.
pub fn shared() -> MutexGuard<'static, Placements> {
    static SHARED: OnceLock<Mutex<Placements>> = OnceLock::new();
    SHARED
        .get_or_init(|| Mutex::new(Placements::new(MAX_PENDING, MAX_AGE_MS)))
        .lock()
        // A panic elsewhere while holding the lock leaves a consistent queue.
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(n: usize) -> Placement {
        Placement {
            role: Role::Judge,
            masked_to: format!("+1***{n:04}"),
        }
    }

    #[test]
    fn a_placement_is_found_by_its_nonce_until_removed() {
        let mut pending = Placements::new(4, 1_000);
        assert_eq!(pending.insert("a".into(), placement(1), 0), None);
        assert_eq!(pending.insert("b".into(), placement(2), 0), None);
        assert_eq!(pending.get("a", 10), Some(placement(1)));
        assert_eq!(pending.get("c", 10), None);
        pending.remove("a");
        assert_eq!(pending.get("a", 10), None);
        assert_eq!(pending.get("b", 10), Some(placement(2)));
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_placement_expires_at_its_age_limit() {
        let mut pending = Placements::new(4, 1_000);
        pending.insert("old".into(), placement(1), 0);
        pending.insert("new".into(), placement(2), 500);
        assert_eq!(pending.get("old", 999), Some(placement(1)));
        assert_eq!(
            pending.get("old", 1_000),
            None,
            "expired at exactly the limit"
        );
        assert_eq!(pending.get("new", 1_000), Some(placement(2)));
        assert_eq!(
            pending.len(),
            1,
            "the expired entry is gone, not just hidden"
        );
        assert_eq!(pending.get("new", 1_500), None);
        assert!(pending.is_empty());
    }

    #[test]
    fn the_count_is_bounded_by_dropping_the_oldest() {
        let mut pending = Placements::new(3, 1_000);
        for n in 0..3 {
            assert_eq!(pending.insert(format!("n{n}"), placement(n), 0), None);
        }
        assert_eq!(
            pending.insert("n3".into(), placement(3), 1),
            Some(placement(0))
        );
        assert_eq!(pending.len(), 3);
        assert_eq!(pending.get("n0", 1), None);
        assert_eq!(pending.get("n3", 1), Some(placement(3)));
        // Expired entries make room before anything live is dropped.
        assert_eq!(pending.insert("n4".into(), placement(4), 1_000), None);
        assert_eq!(pending.len(), 2, "n1 and n2 expired; n3 and n4 remain");
        assert_eq!(pending.get("n3", 1_000), Some(placement(3)));
    }

    #[test]
    fn nonces_are_random_hex_of_one_shape() {
        let (a, b) = (new_nonce(), new_nonce());
        assert!(is_nonce(&a) && is_nonce(&b), "{a} {b}");
        assert_ne!(a, b);
        assert!(!is_nonce(""));
        assert!(!is_nonce(&a[1..]));
        assert!(!is_nonce(&"A".repeat(32)), "lowercase only");
        assert!(!is_nonce(&format!("{}%", &a[1..])));
    }
}
