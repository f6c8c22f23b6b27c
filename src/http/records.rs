//! The records API: `GET /records`, `GET|DELETE /records/{callSid}`,
//! `GET /records/by-role/{role}`, `GET /records/by-status/{status}` (lists take `limit`,
//! `cursor`, `startDate`, `endDate` and `q`, a CallSid or a number's last digits), and
//! `GET /records/summary` (totals and per-day figures over `startDate`..`endDate`). Bearer
//! `OUTBOUND_API_KEY` first (so unauthenticated floods cannot spend a real key's budget), then
//! the per-key rate limit, then validation before anything touches the store.

use serde_json::json;

use super::{Incoming, Reply};
use crate::app::App;
use crate::auth::BearerCheck;
use crate::http::summary::{summarize, CostBreakdown};
use crate::personas::Role;
use crate::rate_limit::RateDecision;
use crate::records::event::{CallRecord, CallStatus, Event, EventKind};
use crate::records::index::{sid_key, Filter, Search, Window};
use crate::records::ttl_from;
use crate::timestamp;

/// The most records one page may hold, whatever `limit` asks for.
pub const MAX_LIMIT: usize = 100;

/// Which records route was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordsRoute<'a> {
    List,
    ByRole(&'a str),
    ByStatus(&'a str),
    One(&'a str),
}

pub fn handle(app: &App, req: &Incoming, route: RecordsRoute<'_>) -> Reply {
    if let Some(refusal) = gate(app, req, "records") {
        return refusal;
    }
    let store = &app.records;
    let result = match route {
        RecordsRoute::List => list(app, req, Filter::All, 25),
        RecordsRoute::ByRole(name) => match Role::parse(name) {
            Some(role) => list(app, req, Filter::Role(role), 50),
            None => Ok(Reply::error_with_details(
                400,
                &format!("Unknown role: {name}"),
                &format!("expected one of {}", Role::allowed_list()),
            )),
        },
        RecordsRoute::ByStatus(name) => match CallStatus::parse(name) {
            Some(status) => list(app, req, Filter::Status(status), 50),
            None => Ok(Reply::error_with_details(
                400,
                &format!("Unknown status: {name}"),
                &format!(
                    "expected one of {}",
                    CallStatus::ALL.map(CallStatus::as_str).join(", ")
                ),
            )),
        },
        // `/records/summary` resolves as a SID-shaped path; no CallSid is spelled that way.
        RecordsRoute::One(SUMMARY) => match req.method.as_str() {
            "GET" => summary(app, req),
            _ => Ok(Reply::error(405, "Method not allowed").with_header("Allow", "GET")),
        },
        RecordsRoute::One(sid) => {
            let Some(key) = sid_key(sid) else {
                return Reply::error_with_details(
                    400,
                    "Invalid callSid",
                    "expected CA followed by 32 hex digits",
                );
            };
            match req.method.as_str() {
                "DELETE" => delete(app, sid, &key),
                _ => store.get(&key).map(|record| match record {
                    Some(record) => one_json(app, &record),
                    None => Reply::error(404, "Call record not found"),
                }),
            }
        }
    };
    result.unwrap_or_else(|err| {
        log::error!("records API: {err}");
        Reply::error(500, "Records are unavailable")
    })
}

/// The path segment of `GET /records/summary`.
const SUMMARY: &str = "summary";

/// A full record, plus its cost by component at the configured prices
/// (`costBreakdownUsd`, absent while the call has no cost summary).
fn one_json(app: &App, record: &CallRecord) -> Reply {
    let mut value = json!(record);
    if let (Some(object), Some(usage)) = (value.as_object_mut(), &record.cost_summary) {
        let breakdown = CostBreakdown::of(usage, &app.config.prices);
        object.insert("costBreakdownUsd".into(), json!(breakdown));
    }
    Reply::json(200, &value)
}

/// `GET /records/summary?startDate&endDate`: [`summarize`] over every live call that started
/// in the range (both optional), with the days of the range named for the chart.
fn summary(app: &App, req: &Incoming) -> Result<Reply, crate::records::RecordsError> {
    let window = match parse_window(req) {
        Ok(window) => window,
        Err(reply) => return Ok(reply),
    };
    let day = |ms: i64| ms.div_euclid(timestamp::MS_PER_DAY);
    let (first_day, last_day) = (window.from_ms.map(day), window.to_ms.map(day));
    let summary = app.records.read_window(window, |calls| {
        summarize(calls, first_day, last_day, &app.config.prices)
    })?;
    Ok(Reply::json(200, &json!(summary)))
}

/// Authentication, then the per-key rate limit of `namespace`; `Some` is the refusal to send.
pub fn gate(app: &App, req: &Incoming, namespace: &str) -> Option<Reply> {
    let config = &app.config;
    let authorization = req.header("Authorization");
    match crate::auth::check_access(
        authorization,
        config.outbound.api_key.as_ref(),
        config.outbound.read_api_key.as_ref(),
        crate::auth::Access::for_method(&req.method),
        config.app_env,
    ) {
        BearerCheck::Refused(err) => return Some(Reply::auth_refused(err)),
        BearerCheck::Allowed | BearerCheck::OpenInDevelopment => {}
    }
    let now_secs = (timestamp::now_ms() / 1000) as u64;
    let decision = app.rate_limiter.check(
        namespace,
        authorization.unwrap_or("anonymous"),
        config.records.rate_limits,
        now_secs,
    );
    let RateDecision::Limited {
        window,
        retry_after_secs,
    } = decision
    else {
        return None;
    };
    log::warn!(namespace = namespace; "/records rate-limited");
    Some(Reply::rate_limited(window, retry_after_secs))
}

fn list(
    app: &App,
    req: &Incoming,
    filter: Filter,
    default_limit: usize,
) -> Result<Reply, crate::records::RecordsError> {
    let limit = parse_limit(req.query_param("limit").as_deref(), default_limit);
    // An empty `cursor=` is "no cursor" (a client templating the last page's null); anything
    // else must be a cursor we handed out: a made-up one used to return page 1 silently.
    let cursor = req.query_param("cursor").filter(|c| !c.is_empty());
    if cursor
        .as_deref()
        .is_some_and(|c| !crate::records::is_valid_cursor(c))
    {
        return Ok(Reply::error_with_details(
            400,
            "Invalid cursor",
            "pass back the cursor of the previous page exactly as it was returned",
        ));
    }
    let window = match parse_window(req) {
        Ok(window) => window,
        Err(reply) => return Ok(reply),
    };
    let query = req.query_param("q").filter(|q| !q.trim().is_empty());
    let search = match query.as_deref().map(Search::parse) {
        None => None,
        Some(Some(search)) => Some(search),
        Some(None) => {
            return Ok(Reply::error_with_details(
                400,
                "Invalid q",
                "expected a CallSid (CA and 32 hex digits) or up to 4 last digits of a number",
            ))
        }
    };
    let page = app
        .records
        .search(filter, window, search.as_ref(), cursor.as_deref(), limit)?;
    Ok(Reply::json(
        200,
        &json!({ "records": page.records, "cursor": page.cursor }),
    ))
}

fn delete(
    app: &App,
    sid: &str,
    key: &crate::records::index::SidKey,
) -> Result<Reply, crate::records::RecordsError> {
    if app.records.summary(key).is_none() {
        return Ok(Reply::error(404, "Call record not found"));
    }
    let now = timestamp::now_ms();
    let event = Event::new(
        EventKind::Deleted,
        sid,
        &timestamp::format_ms(now),
        ttl_from(now, app.config.records.ttl_days),
    );
    app.records.append(&event)?;
    log::info!(callSid = sid; "Call record deleted");
    Ok(Reply::empty(204))
}

/// `startDate` and `endDate` (both optional, both included): a date (`2026-11-23`, the whole
/// day) or an RFC 3339 time.
fn parse_window(req: &Incoming) -> Result<Window, Reply> {
    let bound = |name: &str, end_of_day: bool| -> Result<Option<i64>, Reply> {
        let Some(text) = req.query_param(name) else {
            return Ok(None);
        };
        let ms = match timestamp::parse_date(&text) {
            Some(day) if end_of_day => Some((day + 1) * timestamp::MS_PER_DAY - 1),
            Some(day) => Some(day * timestamp::MS_PER_DAY),
            None => timestamp::parse_ms(&text),
        };
        ms.map(Some).ok_or_else(|| {
            Reply::error_with_details(
                400,
                &format!("Invalid {name}"),
                "expected a date (2026-11-23) or a time (2026-11-23T06:00:00Z)",
            )
        })
    };
    let window = Window {
        from_ms: bound("startDate", false)?,
        to_ms: bound("endDate", true)?,
    };
    check_window(&window)?;
    Ok(window)
}

/// A window that ends before it starts is a mistake to report, not an empty page to return.
fn check_window(window: &Window) -> Result<(), Reply> {
    match (window.from_ms, window.to_ms) {
        (Some(from), Some(to)) if from > to => Err(Reply::error_with_details(
            400,
            "startDate is after endDate",
            "startDate must be on or before endDate (both days are included)",
        )),
        _ => Ok(()),
    }
}

/// The original's `parseLimit`: leading digits count (`"25abc"` is 25); missing, zero or
/// unreadable gives the default; never more than [`MAX_LIMIT`].
pub fn parse_limit(raw: Option<&str>, default: usize) -> usize {
    let digits: String = raw
        .unwrap_or("")
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    match digits.parse::<usize>() {
        Ok(n) if n > 0 => n.min(MAX_LIMIT),
        _ => default.min(MAX_LIMIT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_may_be_one_day_but_not_reversed() {
        let window = |from_ms, to_ms| Window { from_ms, to_ms };
        assert!(check_window(&window(Some(5), Some(5))).is_ok());
        assert!(check_window(&window(Some(5), None)).is_ok());
        assert!(check_window(&window(None, Some(5))).is_ok());
        let reversed = check_window(&window(Some(6), Some(5))).unwrap_err();
        assert_eq!(reversed.status, 400);
        assert!(reversed.body_text().contains("startDate is after endDate"));
    }

    #[test]
    fn limits_follow_the_original() {
        assert_eq!(parse_limit(None, 25), 25);
        assert_eq!(parse_limit(Some("10"), 25), 10);
        assert_eq!(parse_limit(Some("25abc"), 50), 25);
        assert_eq!(parse_limit(Some("0"), 25), 25);
        assert_eq!(parse_limit(Some("-5"), 25), 25);
        assert_eq!(parse_limit(Some("1000"), 25), 100);
        assert_eq!(parse_limit(Some("99999999999999999999999"), 25), 25);
    }
}
