//! The outbound-call pipeline behind `POST /call/outbound`: an operator's system asks us to
//! phone someone with a persona.
//!
//! In order: the Bearer key (there must be one configured — an open outbound API is a
//! toll-fraud bill waiting to happen, so it is refused even in development), then the
//! `Idempotency-Key` (a replay is answered before the rate limit, so retries cost nothing),
//! then the per-key rate limit, then the body, the number and the role, then Twilio.
//!
//! [`Outbound::handle`] answers with an [`Answer`], plain data; `http::outbound` turns it into
//! the reply and hands that back to the pending idempotency ticket ([`Outcome::settle`]), so
//! this module knows nothing of HTTP types. Also here: strict E.164 and the country of a number
//! (`dialing.rs`) and the persisted `Idempotency-Key` answers (`idempotency.rs`).

pub mod dialing;
pub mod idempotency;
pub mod placements;

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::auth::bearer_matches;
use crate::config::{Config, Secret};
use crate::personas::Role;
use crate::phone;
use crate::rate_limit::{RateDecision, RateLimiter, Window};
use crate::records::event::{Direction, Event};
use crate::records::{ttl_from, RecordStore};
use crate::timestamp;
use crate::twilio::rest::{CreateCall, TwilioError, TwilioRest};
use idempotency::{validate_key, Begin, IdempotencyStore, StoredReply};
use placements::Placement;

/// Seconds Twilio lets the phone ring.
const RING_SECS: u32 = 30;

/// What the pipeline works with: the process's shared pieces, borrowed.
pub struct Outbound<'a> {
    pub config: &'a Config,
    /// `None` when the store could not be opened at start-up: keyed requests are refused.
    pub idempotency: Option<&'a dyn IdempotencyStore>,
    pub rate_limiter: &'a dyn RateLimiter,
    pub records: &'a RecordStore,
    /// Requests in the pipeline now (they may hold at most half the HTTP workers).
    pub in_flight: &'a AtomicUsize,
}

/// The parts of the request the pipeline reads.
pub struct Request<'a> {
    pub authorization: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub body: &'a [u8],
}

/// The pipeline's verdict, one variant per distinct answer.
#[derive(Debug)]
pub enum Answer {
    /// Too many outbound requests in flight.
    Busy,
    /// `OUTBOUND_API_KEY` is not set.
    KeyNotConfigured,
    /// The Bearer key is missing or wrong.
    Unauthorized,
    /// The Twilio account, token or phone number is not set.
    TwilioNotConfigured,
    /// The `Idempotency-Key` header is malformed; why.
    InvalidIdempotencyKey(String),
    /// A key was sent but the store is unavailable.
    IdempotencyUnavailable,
    /// The kept answer to an earlier request with this key.
    Replay(StoredReply),
    /// The key was used for a different request.
    KeyReused,
    /// A request with this key is still being handled.
    InProgress,
    RateLimited {
        window: Window,
        retry_after_secs: u64,
    },
    BadRequest(BadRequest),
    /// Twilio did not create the call.
    TwilioFailed(TwilioError),
    Placed(Placed),
}

/// What is wrong with the request's body.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    NotAnObject,
    /// Not JSON; the parser's message.
    NotJson(String),
    MissingTo,
    ToNotAString,
    /// Not a number we dial; the explanation (number masked).
    InvalidNumber(String),
    UnknownRole,
    RoleNotAString,
    /// `machineDetection` is there but not `true` or `false`.
    MachineDetectionNotABool,
}

/// A call Twilio created.
#[derive(Debug, PartialEq, Eq)]
pub struct Placed {
    pub call_sid: String,
    /// The E.164 number dialled.
    pub to: String,
    pub role: Role,
    /// Twilio's status of the new call (`queued`, …).
    pub status: String,
    /// Whether Twilio was asked for answering-machine detection.
    pub machine_detection: bool,
}

/// An answer, and what waits for it: the idempotency ticket to settle with the reply sent
/// (forgotten if dropped unsettled) and the place in flight (freed on drop).
pub struct Outcome<'a> {
    pub answer: Answer,
    ticket: Option<Ticket<'a>>,
    _place: Option<Place<'a>>,
}

impl Outcome<'_> {
    /// Keeps `status` and `body` as the answer to replay for this request's key, unless the
    /// failure was ours or temporary (5xx, 429): then the key is forgotten and a retry works.
    pub fn settle(mut self, status: u16, body: &str) {
        if let Some(ticket) = self.ticket.take() {
            ticket.finish(status, body);
        }
    }
}

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
    fn finish(mut self, status: u16, body: &str) {
        let keep = status < 500 && status != 429;
        let stored = keep.then(|| StoredReply {
            status,
            body: body.to_string(),
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

impl<'a> Outbound<'a> {
    /// Runs the pipeline for one request.
    pub fn handle(&self, req: &Request<'_>) -> Outcome<'a> {
        let done = |answer| Outcome {
            answer,
            ticket: None,
            _place: None,
        };
        // These requests wait on Twilio (or on an identical request): they may hold at most
        // half the HTTP workers, so Twilio's webhooks for live calls are always answered.
        let limit = (self.config.http.workers / 2).max(1);
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= limit {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return done(Answer::Busy);
        }
        let place = Place(self.in_flight);
        let config = self.config;
        let Some(api_key) = &config.outbound.api_key else {
            return done(Answer::KeyNotConfigured);
        };
        if !bearer_matches(req.authorization, api_key.expose()) {
            return done(Answer::Unauthorized);
        }
        let twilio = &config.twilio;
        let (Some(account_sid), Some(auth_token), Some(from)) = (
            twilio.account_sid.as_deref(),
            twilio.auth_token.as_ref(),
            twilio.phone_number.as_deref(),
        ) else {
            return done(Answer::TwilioNotConfigured);
        };
        // Keys are scoped to the API key that sent them (its hash: the key is not kept).
        let scope = hex(&Sha1::digest(api_key.expose().as_bytes()));

        let mut ticket = None;
        if let Some(key) = req.idempotency_key {
            if let Err(details) = validate_key(key) {
                return done(Answer::InvalidIdempotencyKey(details));
            }
            let Some(store) = self.idempotency else {
                return done(Answer::IdempotencyUnavailable);
            };
            let begin = store.begin(
                &scope,
                key,
                &fingerprint(req.body),
                timestamp::now_ms(),
                config.outbound.idempotency_wait,
            );
            match begin {
                Begin::Replay(kept) => {
                    log::info!(status = kept.status; "call.outbound.replayed");
                    return done(Answer::Replay(kept));
                }
                Begin::Conflict => return done(Answer::KeyReused),
                Begin::InProgress => return done(Answer::InProgress),
                Begin::Proceed => {
                    ticket = Some(Ticket {
                        store,
                        scope: scope.clone(),
                        key: key.to_string(),
                        done: false,
                    });
                }
            }
        }

        let now_secs = (timestamp::now_ms() / 1000) as u64;
        let decision = self.rate_limiter.check(
            "outbound",
            req.authorization.unwrap_or(""),
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
            return done(Answer::RateLimited {
                window,
                retry_after_secs,
            });
        }

        let answer = match self.place_call(req.body, account_sid, auth_token, from) {
            Ok(placed) => Answer::Placed(placed),
            Err(answer) => answer,
        };
        Outcome {
            answer,
            ticket,
            _place: Some(place),
        }
    }

    fn place_call(
        &self,
        body: &[u8],
        account_sid: &str,
        auth_token: &Secret,
        from: &str,
    ) -> Result<Placed, Answer> {
        let config = self.config;
        let bad = |why| Err(Answer::BadRequest(why));
        let body: Value = match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) => return bad(BadRequest::NotAnObject),
            Err(err) => return bad(BadRequest::NotJson(err.to_string())),
        };
        let to = match &body["to"] {
            Value::String(to) if !to.trim().is_empty() => to.clone(),
            Value::Null | Value::String(_) => return bad(BadRequest::MissingTo),
            _ => return bad(BadRequest::ToNotAString),
        };
        let (to, country) = match dialing::check(&to, &config.outbound.allowed_countries) {
            Ok(checked) => checked,
            Err(refusal) => {
                let detail = refusal.detail(&phone::mask(&to));
                log::warn!(to = phone::mask(&to).as_str(), reason = detail.as_str(); "call.outbound.refused");
                return bad(BadRequest::InvalidNumber(detail));
            }
        };
        let role = match &body["role"] {
            Value::Null => config.calls.default_role,
            Value::String(name) => match Role::parse(name) {
                Some(role) => role,
                None => return bad(BadRequest::UnknownRole),
            },
            _ => return bad(BadRequest::RoleNotAString),
        };
        // Per request, else the server's default (`OUTBOUND_MACHINE_DETECTION`).
        let machine_detection = match &body["machineDetection"] {
            Value::Null => config.outbound.machine_detection,
            Value::Bool(on) => *on,
            _ => return bad(BadRequest::MachineDetectionNotABool),
        };

        // Twilio may post the call's first status callback before `create_call` returns:
        // the nonce in its URL lets that callback write the record (see `placements`).
        let nonce = placements::new_nonce();
        let placement = Placement {
            role,
            masked_to: phone::mask(&to),
        };
        if let Some(dropped) =
            placements::shared().insert(nonce.clone(), placement, timestamp::now_ms())
        {
            log::warn!(to = dropped.masked_to.as_str(); "call.outbound.placement_dropped");
        }
        let api = &config.domains.api;
        let call = CreateCall {
            to: to.clone(),
            from: from.to_string(),
            url: format!("https://{api}/call/incoming?role={}", role.as_str()),
            status_callback: Some(format!(
                "https://{api}/call/status?{}={nonce}",
                placements::QUERY_PARAMETER
            )),
            status_callback_events: ["initiated", "ringing", "answered", "completed"]
                .map(String::from)
                .to_vec(),
            timeout_secs: Some(RING_SECS),
            time_limit_secs: u32::try_from(config.calls.tuning.max_duration.as_secs()).ok(),
            // Twilio signs its post to this URL like every webhook; the call's record exists
            // by then (the result comes after the call is answered).
            amd_callback: machine_detection.then(|| format!("https://{api}/call/amd")),
        };
        let client = TwilioRest::new(
            &config.twilio.api_base.to_string(),
            account_sid,
            auth_token.clone(),
        );
        let created = match client.create_call(&call) {
            Ok(created) => created,
            Err(err) => {
                crate::metrics::EVENTS.provider_error("twilio", err.metric_kind());
                placements::shared().remove(&nonce);
                log_twilio_failure(&err, &to);
                return Err(Answer::TwilioFailed(err));
            }
        };

        let now = timestamp::now_ms();
        let event = Event {
            twilio_status: Some(created.status.clone()),
            ..Event::created(
                &created.sid,
                role,
                Direction::Outbound,
                &phone::mask(&to),
                now,
                ttl_from(now, config.records.ttl_days),
            )
        };
        // When a callback got here first and wrote the record, this changes nothing: the
        // record's identity is kept and its Twilio status never moves back.
        match self.records.append_if_changed(&event) {
            Ok(_) => placements::shared().remove(&nonce),
            // The call is placed; its record will be created by its first status callback
            // (the nonce stays until it expires) or the incoming webhook.
            Err(err) => {
                log::error!(callSid = created.sid.as_str(), error:% = err; "records.createCallRecord.failed")
            }
        }
        log::info!(
            callSid = created.sid.as_str(),
            to = phone::mask(&to).as_str(),
            country = country,
            role = role.as_str(),
            machineDetection = machine_detection;
            "call.outbound.placed"
        );
        Ok(Placed {
            call_sid: created.sid,
            to,
            role,
            status: created.status,
            machine_detection,
        })
    }
}

/// Twilio's messages can quote the full number: the log gets the status and code only.
fn log_twilio_failure(err: &TwilioError, to: &str) {
    match err {
        TwilioError::Api { status, code, .. } => {
            log::error!(to = phone::mask(to).as_str(), status = status, code = code; "call.outbound.twilio_failed")
        }
        other => {
            log::error!(to = phone::mask(to).as_str(), error:% = other; "call.outbound.twilio_failed")
        }
    }
}
