//! Fixed-window request budgets per API key, per minute and per hour, behind a small trait so a
//! shared backend can replace the in-process default when one VM is not enough.
//!
//! Windows are aligned to the epoch (minute `now / 60`, hour `now / 3600`), as in the original:
//! a burst at a window boundary can reach twice the per-minute budget, which it accepted
//! (ADR-005). Only allowed requests are counted, so a client that keeps hammering after a 429
//! is not locked out longer than the window. The 429 for a refusal is built by `http`
//! (`Reply::rate_limited`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::config::RateLimits;

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

/// Whether one more request fits the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    Limited {
        window: Window,
        retry_after_secs: u64,
    },
}

/// Counts requests per (namespace, client) and decides whether one more is allowed.
pub trait RateLimiter: Send + Sync {
    fn check(
        &self,
        namespace: &str,
        client: &str,
        limits: RateLimits,
        now_secs: u64,
    ) -> RateDecision;
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
    fn check(
        &self,
        namespace: &str,
        client: &str,
        limits: RateLimits,
        now_secs: u64,
    ) -> RateDecision {
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
            return RateDecision::Limited {
                window: Window::Minute,
                retry_after_secs: ((minute + 1) * 60 - now_secs).max(1),
            };
        }
        if limits.per_hour > 0 && entry.hour_count >= limits.per_hour {
            return RateDecision::Limited {
                window: Window::Hour,
                retry_after_secs: ((hour + 1) * 3600 - now_secs).max(1),
            };
        }
        entry.minute_count += 1;
        entry.hour_count += 1;
        RateDecision::Allowed
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
            assert_eq!(
                limiter.check("records", "k", LIMITS, t),
                RateDecision::Allowed
            );
        }
        assert_eq!(
            limiter.check("records", "k", LIMITS, t),
            RateDecision::Limited {
                window: Window::Minute,
                retry_after_secs: 50
            }
        );
        assert_eq!(
            limiter.check("records", "k", LIMITS, t + 50),
            RateDecision::Allowed
        );
    }

    #[test]
    fn the_hour_window_holds_across_minutes() {
        let limiter = InMemoryRateLimiter::default();
        let hour_start = 3600 * 10;
        for i in 0..5 {
            assert_eq!(
                limiter.check("o", "k", LIMITS, hour_start + i * 60),
                RateDecision::Allowed
            );
        }
        let later = hour_start + 600;
        assert_eq!(
            limiter.check("o", "k", LIMITS, later),
            RateDecision::Limited {
                window: Window::Hour,
                retry_after_secs: 3000
            }
        );
        assert_eq!(
            limiter.check("o", "k", LIMITS, hour_start + 3600),
            RateDecision::Allowed
        );
    }

    #[test]
    fn namespaces_and_clients_are_separate_and_zero_means_off() {
        let limiter = InMemoryRateLimiter::default();
        let one = RateLimits {
            per_minute: 1,
            per_hour: 0,
        };
        assert_eq!(limiter.check("a", "k", one, 0), RateDecision::Allowed);
        assert_eq!(limiter.check("b", "k", one, 0), RateDecision::Allowed);
        assert_eq!(limiter.check("a", "j", one, 0), RateDecision::Allowed);
        assert!(matches!(
            limiter.check("a", "k", one, 0),
            RateDecision::Limited { .. }
        ));
        let off = RateLimits {
            per_minute: 0,
            per_hour: 0,
        };
        for _ in 0..1000 {
            assert_eq!(limiter.check("c", "k", off, 0), RateDecision::Allowed);
        }
    }
}
