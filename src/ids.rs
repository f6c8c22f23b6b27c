//! Identifiers that cross process boundaries: request ids on every HTTP response, Twilio call
//! SIDs. Each is checked before it touches a log line, a file or a URL.

use std::fmt;

/// The id echoed in `X-Request-Id`: the caller's own when it is sane (1–128 printable ASCII
/// characters), else 16 fresh lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    pub fn from_header(header: Option<&str>) -> RequestId {
        match header {
            Some(value)
                if (1..=128).contains(&value.len())
                    && value.bytes().all(|b| (0x20..=0x7e).contains(&b)) =>
            {
                RequestId(value.to_string())
            }
            _ => RequestId::generate(),
        }
    }

    pub fn generate() -> RequestId {
        let bytes = random_bytes::<8>();
        RequestId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Twilio call SID: `CA` and 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallSid(String);

impl CallSid {
    pub fn parse(text: &str) -> Option<CallSid> {
        crate::config::is_sid(text, "CA").then(|| CallSid(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallSid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `N` bytes from the kernel's random source (`getrandom(2)`). Used for identifiers, not keys:
/// if it fails (it never does on a VM), the clock and a counter, hashed with
/// std's randomly seeded hasher, still give unique values.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    let filled = getrandom::getrandom(&mut bytes).is_ok();
    if !filled {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        for chunk in bytes.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            let value = hasher.finish().to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_echoed() {
        assert_eq!(
            RequestId::from_header(Some("abc-123 x")).as_str(),
            "abc-123 x"
        );
        let max = "r".repeat(128);
        assert_eq!(RequestId::from_header(Some(&max)).as_str(), max);
    }

    #[test]
    fn insane_request_ids_are_replaced() {
        for bad in [Some(""), Some("bad\nid"), Some("é"), None] {
            let id = RequestId::from_header(bad);
            assert_eq!(id.as_str().len(), 16, "{bad:?}");
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_eq!(
            RequestId::from_header(Some(&"r".repeat(129)))
                .as_str()
                .len(),
            16
        );
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(RequestId::generate(), RequestId::generate());
    }

    #[test]
    fn call_sids() {
        assert!(CallSid::parse("CA0123456789abcdef0123456789abcdef").is_some());
        assert!(CallSid::parse("CA0123456789abcdef0123456789abcde").is_none());
        assert!(CallSid::parse("AC0123456789abcdef0123456789abcdef").is_none());
        assert!(CallSid::parse("CA0123456789abcdef0123456789abcdeg").is_none());
        assert!(CallSid::parse("CA../../../../../../../../../../etc").is_none());
    }
}
