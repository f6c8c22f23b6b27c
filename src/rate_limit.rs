//! Fixed-window request budgets per API key, per minute and per hour, behind a small trait so a
//! shared backend can replace the in-process default when one VM is not enough.
//!
//! Windows are aligned to the epoch (minute `now / 60`, hour `now / 3600`), as in the original:
//! a burst at a window boundary can reach twice the per-minute budget, which it accepted
//! (ADR-005). Only allowed requests are counted, so a client that keeps hammering after a 429
//! is not locked out longer than the window.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::config::RateLimits;
use crate::http::Reply;

/// Which window ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Minute,
    Hour,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited {
        window: Window,
        retry_after_secs: u64,
    },
}

impl Decision {
    /// The 429 the original answered with, `Retry-After` and `retryAfterSeconds` included.
    pub fn into_reply(self) -> Option<Reply> {
        match self {
            Decision::Allowed => None,
            Decision::Limited {
                window,
                retry_after_secs,
            } => Some(
                Reply::json(
                    429,
                    &serde_json::json!({
                        "error": "Too many requests",
                        "details": format!("Rate limit exceeded ({} window)", window.as_str()),
                        "retryAfterSeconds": retry_after_secs,
                    }),
                )
                .with_header("Retry-After", retry_after_secs.to_string()),
            ),
        }
    }
}

/// Counts requests per (namespace, client) and decides whether one more is allowed.
pub trait RateLimiter: Send + Sync {
    fn check(&self, namespace: &str, client: &str, limits: RateLimits, now_secs: u64) -> Decision;
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    minute: u64,
    minute_count: u32,
    hour: u64,
    hour_count: u32,
}

/// The in-process limiter. Keys are hashed, so API keys are not kept in its table.
#[derive(Debug, Default)]
pub struct InMemoryRateLimiter {
    counts: Mutex<HashMap<u64, Counts>>,
}

impl RateLimiter for InMemoryRateLimiter {
    fn check(&self, namespace: &str, client: &str, limits: RateLimits, now_secs: u64) -> Decision {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (namespace, client).hash(&mut hasher);
        let key = hasher.finish();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // Forget clients whose hour is over (bounded memory without a sweeper thread).
        if counts.len() > 10_000 {
            counts.retain(|_, c| c.hour == now_secs / 3600);
        }
        let entry = counts.entry(key).or_default();
        let (minute, hour) = (now_secs / 60, now_secs / 3600);
        if entry.minute != minute {
            entry.minute = minute;
            entry.minute_count = 0;
        }
        if entry.hour != hour {
            entry.hour = hour;
            entry.hour_count = 0;
        }
        if limits.per_minute > 0 && entry.minute_count >= limits.per_minute {
            return Decision::Limited {
                window: Window::Minute,
                retry_after_secs: ((minute + 1) * 60 - now_secs).max(1),
            };
        }
        if limits.per_hour > 0 && entry.hour_count >= limits.per_hour {
            return Decision::Limited {
                window: Window::Hour,
                retry_after_secs: ((hour + 1) * 3600 - now_secs).max(1),
            };
        }
        entry.minute_count += 1;
        entry.hour_count += 1;
        Decision::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RateLimits = RateLimits {
        per_minute: 3,
        per_hour: 5,
    };

    #[test]
    fn the_minute_window_allows_its_budget_then_refuses_until_it_rolls() {
        let limiter = InMemoryRateLimiter::default();
        let t = 120 * 60 + 10; // 10 s into a minute
        for _ in 0..3 {
            assert_eq!(limiter.check("records", "k", LIMITS, t), Decision::Allowed);
        }
        assert_eq!(
            limiter.check("records", "k", LIMITS, t),
            Decision::Limited {
                window: Window::Minute,
                retry_after_secs: 50
            }
        );
        assert_eq!(
            limiter.check("records", "k", LIMITS, t + 50),
            Decision::Allowed
        );
    }

    #[test]
    fn the_hour_window_holds_across_minutes() {
        let limiter = InMemoryRateLimiter::default();
        let hour_start = 3600 * 10;
        for i in 0..5 {
            assert_eq!(
                limiter.check("o", "k", LIMITS, hour_start + i * 60),
                Decision::Allowed
            );
        }
        let later = hour_start + 600;
        assert_eq!(
            limiter.check("o", "k", LIMITS, later),
            Decision::Limited {
                window: Window::Hour,
                retry_after_secs: 3000
            }
        );
        assert_eq!(
            limiter.check("o", "k", LIMITS, hour_start + 3600),
            Decision::Allowed
        );
    }

    #[test]
    fn namespaces_and_clients_are_separate_and_zero_means_off() {
        let limiter = InMemoryRateLimiter::default();
        let one = RateLimits {
            per_minute: 1,
            per_hour: 0,
        };
        assert_eq!(limiter.check("a", "k", one, 0), Decision::Allowed);
        assert_eq!(limiter.check("b", "k", one, 0), Decision::Allowed);
        assert_eq!(limiter.check("a", "j", one, 0), Decision::Allowed);
        assert!(matches!(
            limiter.check("a", "k", one, 0),
            Decision::Limited { .. }
        ));
        let off = RateLimits {
            per_minute: 0,
            per_hour: 0,
        };
        for _ in 0..1000 {
            assert_eq!(limiter.check("c", "k", off, 0), Decision::Allowed);
        }
    }

    #[test]
    fn the_429_says_when_to_come_back() {
        let reply = Decision::Limited {
            window: Window::Hour,
            retry_after_secs: 42,
        }
        .into_reply()
        .unwrap();
        assert_eq!(reply.status, 429);
        assert!(reply.headers.contains(&("Retry-After", "42".to_string())));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["retryAfterSeconds"], 42);
        assert_eq!(body["details"], "Rate limit exceeded (hour window)");
    }
}
