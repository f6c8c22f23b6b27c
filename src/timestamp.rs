//! UTC time as records and APIs write it: epoch milliseconds ⇄ RFC 3339 text
//! (`2026-11-24T06:00:00.000Z`), and civil dates (`2026-11-24`) for the daily rollup, through
//! `jiff` (already compiled in). Everything here is UTC: no time zone database is read.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::civil::Date;
use jiff::{Span, Timestamp};

pub const MS_PER_DAY: i64 = 86_400_000;

/// The day the day numbers count from.
const EPOCH: Date = jiff::civil::date(1970, 1, 1);

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `2026-11-24T06:00:00.000Z` (an instant outside years -9999..=9999 is written at that bound).
pub fn format_ms(ms: i64) -> String {
    let instant = Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    format!("{instant:.3}")
}

/// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fff…]` and `Z` or an offset, converted to UTC);
/// `None` for anything else, an impossible date or time among them.
pub fn parse_ms(text: &str) -> Option<i64> {
    // jiff also reads ISO 8601's shorter forms and bracketed annotations; the records and the
    // APIs take the full form only.
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) || text.contains('[')
    {
        return None;
    }
    text.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}

/// Parses `YYYY-MM-DD` into days since the epoch, refusing impossible dates.
pub fn parse_date(text: &str) -> Option<i64> {
    if text.len() != 10 || !text.is_ascii() {
        return None;
    }
    let date = Date::strptime("%Y-%m-%d", text).ok()?;
    Some(i64::from(EPOCH.until(date).ok()?.get_days()))
}

/// `YYYY-MM-DD` for days since the epoch (clamped to years -9999..=9999).
pub fn format_date(days: i64) -> String {
    let date = Span::new()
        .try_days(days)
        .ok()
        .and_then(|span| EPOCH.checked_add(span).ok())
        .unwrap_or(if days < 0 { Date::MIN } else { Date::MAX });
    date.strftime("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_500_000_123), "2026-11-24T06:00:00.123Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_common_variants() {
        for ms in [0, 1_795_500_000_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_ms(&format_ms(ms)), Some(ms));
        }
        assert_eq!(parse_ms("2026-11-24T06:40:00Z"), Some(1_795_502_400_000));
        assert_eq!(parse_ms("2026-11-24T06:40:00.1Z"), Some(1_795_502_400_100));
        assert_eq!(
            parse_ms("2026-11-24T07:40:00+01:00"),
            Some(1_795_502_400_000)
        );
        assert_eq!(
            parse_ms("2026-11-24T06:40:00.123456+00:00"),
            Some(1_795_502_400_123)
        );
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "2026-11-24",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T06:40:00",
            "2026-11-24T06:40:00.Z",
            "2026-11-24T06:4a:00Z",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2026-11-31"), None);
        assert_eq!(parse_date("26-11-24"), None);
        for days in [-1000, 0, 19_782, 20_416, 50_000] {
            assert_eq!(parse_date(&format_date(days)), Some(days));
        }
    }
}
