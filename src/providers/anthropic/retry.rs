//! When and how long to wait before retrying a Messages request, as the official SDKs decide it
//! (see PROTOCOLS.md, "Anthropic", for the sources): the pure policy, kept apart from the socket
//! code so every rule has a unit test.
//!
//! - `x-should-retry: true|false` from the API wins; otherwise 408, 409, 429 and 5xx are retried.
//! - The wait is `retry-after-ms`, else `retry-after` in seconds, else `retry-after` as an HTTP
//!   date, honoured when it is above 0 and at most 60 s; otherwise exponential backoff from the
//!   first step, capped at 8 s, times a jitter factor in (0.75, 1].

use std::time::Duration;

/// The longest server-requested wait honoured; a longer one falls back to our own backoff.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The longest backoff step.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Whether an error status may be retried: the API's `x-should-retry` header first.
pub fn should_retry(status: u16, should_retry_header: Option<&str>) -> bool {
    match should_retry_header.map(str::trim) {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// The wait the server asks for, in seconds (possibly negative or huge), from
/// `retry-after-ms`, else `retry-after` as seconds, else `retry-after` as an HTTP date
/// (relative to `now_ms`, epoch milliseconds).
pub fn requested_wait_secs(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now_ms: i64,
) -> Option<f64> {
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(ms / 1000.0);
    }
    let retry_after = retry_after?.trim();
    if let Ok(secs) = retry_after.parse::<f64>() {
        return Some(secs);
    }
    let at_ms = parse_http_date(retry_after)?;
    Some((at_ms - now_ms) as f64 / 1000.0)
}

/// The requested wait when it is one to honour: finite, above 0 and at most 60 s.
pub fn honoured_wait(secs: Option<f64>) -> Option<Duration> {
    let secs = secs?;
    // Checked before converting: `inf`, NaN or 1e20 from a header must not panic.
    (secs.is_finite() && secs > 0.0 && secs <= MAX_RETRY_AFTER.as_secs_f64())
        .then(|| Duration::from_secs_f64(secs))
}

/// Our own wait before retry number `retries_taken + 1`: `first * 2^retries_taken`, at most
/// [`MAX_BACKOFF`], times `1 - 0.25 * unit` where `unit` is uniform in [0, 1).
pub fn backoff(first: Duration, retries_taken: u32, unit: f64) -> Duration {
    let step = first
        .checked_mul(2u32.saturating_pow(retries_taken.min(30)))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    step.mul_f64(1.0 - 0.25 * unit)
}

/// A uniform number in [0, 1) from the kernel's random source.
pub fn random_unit() -> f64 {
    let bits = u64::from_le_bytes(crate::ids::random_bytes::<8>()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// The IMF-fixdate of RFC 9110 (`Sun, 06 Nov 1994 08:49:37 GMT`).
const HTTP_DATE: &str = "%a, %d %b %Y %H:%M:%S GMT";

/// Parses an RFC 9110 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to epoch milliseconds;
/// `None` for anything else, an impossible date or a weekday that is not the date's among them.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let text = text.trim();
    // The fixed form only: two-digit day, four-digit year, a 24-hour clock.
    if text.len() != 29 || !text.is_ascii() {
        return None;
    }
    let parsed = jiff::fmt::strtime::parse(HTTP_DATE, text).ok()?;
    let datetime = parsed.to_datetime().ok()?;
    let weekday = parsed.weekday()?;
    if datetime.date().weekday() != weekday {
        return None;
    }
    let instant = datetime.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(instant.as_millisecond())
}

/// Epoch milliseconds as an IMF-fixdate (for the simulator's `retry-after` and tests).
pub fn format_http_date(ms: i64) -> String {
    let instant = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    instant.strftime(HTTP_DATE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_header_wins_then_the_sdk_status_list() {
        for status in [408, 409, 429, 500, 502, 503, 529] {
            assert!(should_retry(status, None), "{status}");
            assert!(!should_retry(status, Some("false")), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 422] {
            assert!(!should_retry(status, None), "{status}");
            assert!(should_retry(status, Some("true")), "{status}");
        }
        // Anything else in the header is ignored, as the SDK does.
        assert!(should_retry(429, Some("maybe")));
        assert!(!should_retry(400, Some("TRUE ish")));
    }

    #[test]
    fn http_dates_parse_as_rfc_7231_writes_them() {
        // RFC 7231 §7.1.1.1's own example.
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(
            format_http_date(784_111_777_000),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        let now = crate::timestamp::now_ms() / 1000 * 1000;
        assert_eq!(parse_http_date(&format_http_date(now)), Some(now));
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "",
            "120",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_requested_wait_reads_ms_then_seconds_then_a_date() {
        let now = 784_111_777_000;
        assert_eq!(requested_wait_secs(Some("250"), Some("9"), now), Some(0.25));
        assert_eq!(requested_wait_secs(Some("x"), Some("1.5"), now), Some(1.5));
        assert_eq!(
            requested_wait_secs(None, Some("Sun, 06 Nov 1994 08:49:40 GMT"), now),
            Some(3.0)
        );
        assert_eq!(requested_wait_secs(None, Some("soon"), now), None);
        assert_eq!(requested_wait_secs(None, None, now), None);
    }

    #[test]
    fn only_waits_above_zero_and_up_to_a_minute_are_honoured() {
        assert_eq!(honoured_wait(Some(2.0)), Some(Duration::from_secs(2)));
        assert_eq!(honoured_wait(Some(60.0)), Some(Duration::from_secs(60)));
        for odd in [0.0, -3.0, 60.5, f64::INFINITY, f64::NAN, 1e20] {
            assert_eq!(honoured_wait(Some(odd)), None, "{odd}");
        }
    }

    #[test]
    fn backoff_doubles_caps_at_eight_seconds_and_jitters_down_by_at_most_a_quarter() {
        let first = Duration::from_millis(500);
        assert_eq!(backoff(first, 0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(first, 1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(first, 2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(first, 5, 0.0), MAX_BACKOFF);
        assert_eq!(backoff(first, u32::MAX, 0.0), MAX_BACKOFF);
        assert_eq!(backoff(first, 0, 1.0), Duration::from_millis(375));
        assert_eq!(backoff(first, 0, f64::NAN), Duration::from_millis(500));
        // Real randomness stays within (0.75, 1] of the step and is not constant.
        let waits: Vec<Duration> = (0..64)
            .map(|_| backoff(Duration::from_secs(1), 0, random_unit()))
            .collect();
        for wait in &waits {
            assert!(
                *wait > Duration::from_millis(750) && *wait <= Duration::from_secs(1),
                "{wait:?}"
            );
        }
        assert!(waits.iter().any(|w| *w != waits[0]), "jittered");
    }
}
