//! `POST /call/outbound`: runs the outbound pipeline ([`crate::outbound`]) and turns its
//! answer into the reply. `X-Idempotent-Replay` is on every keyed response that got as far as
//! the idempotency store: `false` first, `true` on replays.

use serde_json::json;

use super::response::JSON;
use super::{Incoming, Reply};
use crate::app::App;
use crate::auth::AuthError;
use crate::outbound::{Answer, BadRequest, Outbound, Request};
use crate::personas::Role;
use crate::twilio::rest::TwilioError;

pub fn outbound(app: &App, req: &Incoming) -> Reply {
    let pipeline = Outbound {
        config: &app.config,
        idempotency: app.idempotency.as_deref(),
        rate_limiter: &*app.rate_limiter,
        records: &app.records,
        in_flight: &app.outbound_in_flight,
    };
    let keyed = req.header("Idempotency-Key").is_some();
    let outcome = pipeline.handle(&Request {
        authorization: req.header("Authorization"),
        idempotency_key: req.header("Idempotency-Key"),
        body: &req.body,
    });
    let reply = reply_for(&outcome.answer);
    let replay_header = match &outcome.answer {
        Answer::Replay(_) => Some("true"),
        Answer::KeyReused | Answer::InProgress => Some("false"),
        Answer::RateLimited { .. }
        | Answer::BadRequest(_)
        | Answer::TwilioFailed(_)
        | Answer::Placed(_) => keyed.then_some("false"),
        _ => None,
    };
    outcome.settle(reply.status, reply.body_text());
    match replay_header {
        Some(value) => reply.with_header("X-Idempotent-Replay", value),
        None => reply,
    }
}

fn reply_for(answer: &Answer) -> Reply {
    match answer {
        Answer::Busy => Reply::error_with_details(
            503,
            "Busy",
            "too many outbound requests in progress; retry shortly",
        )
        .with_header("Retry-After", "1"),
        Answer::KeyNotConfigured => Reply::error_with_details(
            503,
            "Outbound calling is not configured",
            "set OUTBOUND_API_KEY (at least 16 characters, e.g. openssl rand -hex 32)",
        ),
        Answer::Unauthorized => Reply::auth_refused(AuthError::Wrong),
        Answer::TwilioNotConfigured => Reply::error_with_details(
            503,
            "Outbound calling is not configured",
            "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER are required",
        ),
        Answer::InvalidIdempotencyKey(details) => {
            Reply::error_with_details(400, "Invalid Idempotency-Key", details)
        }
        Answer::IdempotencyUnavailable => Reply::error_with_details(
            503,
            "Idempotency keys are unavailable",
            "the idempotency store could not be opened at start-up; see the log",
        ),
        Answer::Replay(kept) => Reply {
            status: kept.status,
            content_type: JSON,
            body: kept.body.clone().into_bytes(),
            headers: Vec::new(),
        },
        Answer::KeyReused => Reply::error_with_details(
            422,
            "Idempotency-Key reused",
            "this key was used for a different request; use a new key for a new call",
        ),
        Answer::InProgress => Reply::error_with_details(
            409,
            "Request in progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )
        .with_header("Retry-After", "2"),
        Answer::RateLimited {
            window,
            retry_after_secs,
        } => Reply::rate_limited(*window, *retry_after_secs),
        Answer::BadRequest(bad) => bad_request(bad),
        Answer::TwilioFailed(err) => twilio_failure(err),
        Answer::Placed(placed) => Reply::json(
            200,
            &json!({
                "success": true,
                "callSid": placed.call_sid,
                "to": placed.to,
                "role": placed.role.as_str(),
                "status": placed.status,
                "machineDetection": placed.machine_detection,
            }),
        ),
    }
}

fn bad_request(bad: &BadRequest) -> Reply {
    match bad {
        BadRequest::NotAnObject => Reply::error(400, "The body must be a JSON object"),
        BadRequest::NotJson(err) => Reply::error_with_details(400, "The body is not JSON", err),
        BadRequest::MissingTo => Reply::error(400, "Missing 'to' phone number"),
        BadRequest::ToNotAString => Reply::error(400, "'to' must be a string"),
        BadRequest::InvalidNumber(detail) => {
            Reply::error_with_details(400, "Invalid destination phone number", detail)
        }
        BadRequest::UnknownRole => Reply::error_with_details(
            400,
            "Unknown role",
            &format!("role must be one of {}", Role::allowed_list()),
        ),
        BadRequest::RoleNotAString => Reply::error(400, "'role' must be a string"),
        BadRequest::MachineDetectionNotABool => {
            Reply::error(400, "'machineDetection' must be true or false")
        }
    }
}

/// Twilio's refusal of the request is the client's problem (4xx, kept for replays); Twilio
/// refusing our credentials, being down or limiting us is ours (5xx, not kept).
fn twilio_failure(err: &TwilioError) -> Reply {
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
