//! `POST /call/outbound`: an operator's system asks us to phone someone with a persona.
//!
//! In order: the Bearer key (there must be one configured — an open outbound API is a
//! toll-fraud bill waiting to happen, so it is refused even in development), then the
//! `Idempotency-Key` (a replay is answered before the rate limit, so retries cost nothing),
//! then the per-key rate limit, then the body, the number and the role, then Twilio.
//! `X-Idempotent-Replay` is on every keyed response: `false` first, `true` on replays.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::{Incoming, Reply};
use crate::app::App;
use crate::auth::{bearer_matches, AuthError};
use crate::idempotency::{validate_key, Begin, IdempotencyStore, StoredReply};
use crate::personas::Role;
use crate::rate_limit::RateDecision;
use crate::records::event::{CallStatus, Direction, Event, EventKind};
use crate::records::ttl_from;
use crate::twilio::rest::{CreateCall, TwilioError, TwilioRest};
use crate::{dialing, phone, timestamp};

/// Seconds Twilio lets the phone ring.
const RING_SECS: u32 = 30;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request's identity for idempotency: its JSON, canonical (object keys sorted), else its
/// bytes.
fn fingerprint(body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<Value>(body)
        .map_or_else(|_| body.to_vec(), |value| value.to_string().into_bytes());
    hex(&Sha1::digest(&canonical))
}

/// Forgets an in-flight key if the request ends without an answer to keep.
struct Ticket<'a> {
    store: &'a dyn IdempotencyStore,
    scope: String,
    key: String,
    done: bool,
}

impl Ticket<'_> {
    fn finish(mut self, reply: &Reply) {
        let keep = reply.status < 500 && reply.status != 429;
        let stored = keep.then(|| StoredReply {
            status: reply.status,
            body: reply.body_text().to_string(),
        });
        self.store
            .finish(&self.scope, &self.key, stored, timestamp::now_ms());
        self.done = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.store
                .finish(&self.scope, &self.key, None, timestamp::now_ms());
        }
    }
}

/// Releases a place among the outbound requests in flight.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn outbound(app: &App, req: &Incoming) -> Reply {
    // These requests wait on Twilio (or on an identical request): they may hold at most half
    // the HTTP workers, so Twilio's webhooks for live calls are always answered.
    let limit = (app.config.http.workers / 2).max(1);
    let in_flight = &app.outbound_in_flight;
    if in_flight.fetch_add(1, Ordering::SeqCst) >= limit {
        in_flight.fetch_sub(1, Ordering::SeqCst);
        return Reply::error_with_details(
            503,
            "Busy",
            "too many outbound requests in progress; retry shortly",
        )
        .with_header("Retry-After", "1");
    }
    let _place = Place(in_flight);
    let config = &app.config;
    let Some(api_key) = &config.outbound.api_key else {
        return Reply::error_with_details(
            503,
            "Outbound calling is not configured",
            "set OUTBOUND_API_KEY (at least 16 characters, e.g. openssl rand -hex 32)",
        );
    };
    let authorization = req.header("Authorization");
    if !bearer_matches(authorization, api_key.expose()) {
        return Reply::auth_refused(AuthError::Wrong);
    }
    let twilio = &config.twilio;
    let (Some(account_sid), Some(auth_token), Some(from)) = (
        twilio.account_sid.as_deref(),
        twilio.auth_token.as_ref(),
        twilio.phone_number.as_deref(),
    ) else {
        return Reply::error_with_details(
            503,
            "Outbound calling is not configured",
            "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER are required",
        );
    };
    // Keys are scoped to the API key that sent them (its hash: the key is not kept).
    let scope = hex(&Sha1::digest(api_key.expose().as_bytes()));

    let idempotency_key = req.header("Idempotency-Key").map(str::to_string);
    let mut ticket = None;
    if let Some(key) = &idempotency_key {
        if let Err(details) = validate_key(key) {
            return Reply::error_with_details(400, "Invalid Idempotency-Key", &details);
        }
        let Some(store) = app.idempotency.as_deref() else {
            return Reply::error_with_details(
                503,
                "Idempotency keys are unavailable",
                "the idempotency store could not be opened at start-up; see the log",
            );
        };
        let begin = store.begin(
            &scope,
            key,
            &fingerprint(&req.body),
            timestamp::now_ms(),
            config.outbound.idempotency_wait,
        );
        match begin {
            Begin::Replay(kept) => {
                log::info!(status = kept.status; "call.outbound.replayed");
                return Reply {
                    status: kept.status,
                    content_type: super::response::JSON,
                    body: kept.body.into_bytes(),
                    headers: Vec::new(),
                }
                .with_header("X-Idempotent-Replay", "true");
            }
            Begin::Conflict => {
                return Reply::error_with_details(
                    422,
                    "Idempotency-Key reused",
                    "this key was used for a different request; use a new key for a new call",
                )
                .with_header("X-Idempotent-Replay", "false")
            }
            Begin::InProgress => {
                return Reply::error_with_details(
                    409,
                    "Request in progress",
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                )
                .with_header("Retry-After", "2")
                .with_header("X-Idempotent-Replay", "false")
            }
            Begin::Proceed => {
                ticket = Some(Ticket {
                    store,
                    scope: scope.clone(),
                    key: key.clone(),
                    done: false,
                });
            }
        }
    }
    let keyed = |reply: Reply| {
        if idempotency_key.is_some() {
            reply.with_header("X-Idempotent-Replay", "false")
        } else {
            reply
        }
    };

    let now_secs = (timestamp::now_ms() / 1000) as u64;
    let decision = app.rate_limiter.check(
        "outbound",
        authorization.unwrap_or(""),
        config.outbound.rate_limits,
        now_secs,
    );
    if let RateDecision::Limited {
        window,
        retry_after_secs,
    } = decision
    {
        log::warn!("Outbound call rate-limited");
        // The ticket is dropped unkept: the retry after Retry-After does the work.
        return keyed(Reply::rate_limited(window, retry_after_secs));
    }

    let reply = place_call(app, req, account_sid, auth_token, from);
    if let Some(ticket) = ticket {
        ticket.finish(&reply);
    }
    keyed(reply)
}

fn place_call(
    app: &App,
    req: &Incoming,
    account_sid: &str,
    auth_token: &crate::config::Secret,
    from: &str,
) -> Reply {
    let config = &app.config;
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => return Reply::error(400, "The body must be a JSON object"),
        Err(err) => {
            return Reply::error_with_details(400, "The body is not JSON", &err.to_string())
        }
    };
    let to = match &body["to"] {
        Value::String(to) if !to.trim().is_empty() => to.clone(),
        Value::Null => return Reply::error(400, "Missing 'to' phone number"),
        Value::String(_) => return Reply::error(400, "Missing 'to' phone number"),
        _ => return Reply::error(400, "'to' must be a string"),
    };
    let (to, country) = match dialing::check(&to, &config.outbound.allowed_countries) {
        Ok(checked) => checked,
        Err(refusal) => {
            log::warn!(to = phone::mask(&to).as_str(), reason:? = refusal; "call.outbound.refused");
            return Reply::error_with_details(
                400,
                "Invalid destination phone number",
                &refusal.detail(&phone::mask(&to)),
            );
        }
    };
    let role = match &body["role"] {
        Value::Null => config.calls.default_role,
        Value::String(name) => match Role::parse(name) {
            Some(role) => role,
            None => {
                return Reply::error_with_details(
                    400,
                    "Unknown role",
                    &format!("role must be one of {}", Role::allowed_list()),
                )
            }
        },
        _ => return Reply::error(400, "'role' must be a string"),
    };

    let api = &config.domains.api;
    let call = CreateCall {
        to: to.clone(),
        from: from.to_string(),
        url: format!("https://{api}/call/incoming?role={}", role.as_str()),
        status_callback: Some(format!("https://{api}/call/status")),
        status_callback_events: ["initiated", "ringing", "answered", "completed"]
            .map(String::from)
            .to_vec(),
        timeout_secs: Some(RING_SECS),
        time_limit_secs: u32::try_from(config.calls.tuning.max_duration.as_secs()).ok(),
    };
    let client = TwilioRest::new(
        &config.twilio.api_base.to_string(),
        account_sid,
        auth_token.clone(),
    );
    let created = match client.create_call(&call) {
        Ok(created) => created,
        Err(err) => return twilio_failure(&err, &to),
    };

    let now = timestamp::now_ms();
    let event = Event {
        role: Some(role.as_str().to_string()),
        direction: Some(Direction::Outbound),
        caller_number: Some(phone::mask(&to)),
        started_at: Some(timestamp::format_ms(now)),
        status: Some(CallStatus::Active),
        twilio_status: Some(created.status.clone()),
        ..Event::new(
            EventKind::Created,
            &created.sid,
            &timestamp::format_ms(now),
            ttl_from(now, config.records.ttl_days),
        )
    };
    if let Err(err) = app.records.append_if_changed(&event) {
        // The call is placed; its record will be created by the incoming webhook.
        log::error!(callSid = created.sid.as_str(), error:% = err; "records.createCallRecord.failed");
    }
    log::info!(
        callSid = created.sid.as_str(),
        to = phone::mask(&to).as_str(),
        country = country,
        role = role.as_str();
        "call.outbound.placed"
    );
    Reply::json(
        200,
        &json!({
            "success": true,
            "callSid": created.sid,
            "to": to,
            "role": role.as_str(),
            "status": created.status,
        }),
    )
}

/// Twilio's refusal of the request is the client's problem (4xx, kept for replays); Twilio
/// refusing our credentials, being down or limiting us is ours (5xx, not kept).
fn twilio_failure(err: &TwilioError, to: &str) -> Reply {
    // Twilio's messages can quote the full number: the log gets the status and code only.
    match err {
        TwilioError::Api { status, code, .. } => {
            log::error!(to = phone::mask(to).as_str(), status = status, code = code; "call.outbound.twilio_failed")
        }
        other => {
            log::error!(to = phone::mask(to).as_str(), error:% = other; "call.outbound.twilio_failed")
        }
    }
    match err {
        TwilioError::Api {
            status: 401 | 403, ..
        } => Reply::error_with_details(
            502,
            "Failed to initiate call",
            "Twilio refused this server's credentials (TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN)",
        ),
        TwilioError::Api { status: 429, .. } => Reply::error_with_details(
            503,
            "Failed to initiate call",
            "Twilio is rate-limiting this account; retry later",
        )
        .with_header("Retry-After", "30"),
        TwilioError::Api {
            status: 400..=499,
            code,
            message,
            ..
        } => Reply::json(
            422,
            &json!({
                "error": "Twilio refused the call",
                "details": message,
                "twilioCode": code,
            }),
        ),
        TwilioError::Api { .. } | TwilioError::Transport(_) | TwilioError::Malformed(_) => {
            Reply::error_with_details(502, "Failed to initiate call", &err.to_string())
        }
    }
}
