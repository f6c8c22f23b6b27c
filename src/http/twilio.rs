//! Twilio's webhooks: `POST /call/incoming` (answer a call with TwiML that opens the media
//! stream), `POST /call/status` (call progress callbacks) and `POST /call/amd` (who answered a
//! call we placed), all behind the signature gate.

use super::wire::{log_value, LOG_VALUE_CHARS};
use super::{Incoming, Reply};
use crate::app::App;
use crate::calls::{Delivery, Notice};
use crate::config::Config;
use crate::ids::CallSid;
use crate::outbound::placements;
use crate::personas::Role;
use crate::records::event::{
    caller_number_from, known_twilio_status, CallStatus, Direction, Event, EventKind,
};
use crate::records::ttl_from;
use crate::twilio::amd::AnsweredBy;
use crate::twilio::call_status::TWILIO_STATUSES;
use crate::twilio::{signature, stream_token, stream_url, twiml};
use crate::{phone, timestamp};

/// `POST /call/incoming`: TwiML connecting the call to `wss://{WS_DOMAIN}/call/stream`. The
/// persona comes from the dialled number's override, else `?role=`, else the default role; a
/// caller never hears an error because of a bad role.
pub fn incoming(app: &App, req: &Incoming) -> Reply {
    let params = match signed_params(&app.config, req) {
        Ok(params) => params,
        Err(reply) => return reply,
    };
    if app.draining.load(std::sync::atomic::Ordering::SeqCst) {
        // The media port takes no new stream: Twilio tries the number's fallback URL instead.
        log::warn!(
            "Incoming call refused: the server is draining (503; Twilio uses the fallback URL)"
        );
        return Reply::error(503, "the server is shutting down").with_header("Retry-After", "30");
    }
    let config = &app.config;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let number_override = param("To")
        .and_then(phone::normalize)
        .and_then(|to| config.calls.number_overrides.get(&to));
    let requested = req.query_param("role");
    let role = match (number_override.and_then(|o| o.role), requested.as_deref()) {
        (Some(role), _) => role,
        (None, None) => config.calls.default_role,
        (None, Some(name)) => Role::parse(name).unwrap_or_else(|| {
            log::warn!(
                requested = log_value(name, 32).as_str(),
                fallback = config.calls.default_role.as_str();
                "Unknown role requested; using the default persona"
            );
            config.calls.default_role
        }),
    };

    log::info!(
        callSid = log_value(param("CallSid").unwrap_or("unknown"), 40).as_str(),
        from = phone::mask(param("From").unwrap_or("unknown")).as_str(),
        role = role.as_str();
        "Incoming call"
    );

    // Twilio fetches this TwiML for calls we place too; its Direction says which it is.
    let direction = match param("Direction") {
        Some(d) if d.starts_with("outbound") => Direction::Outbound,
        _ => Direction::Inbound,
    };
    if let Some(call_sid) = param("CallSid").and_then(CallSid::parse) {
        let now = timestamp::now_ms();
        let event = Event {
            twilio_status: twilio_status(param("CallStatus"), &call_sid).map(str::to_string),
            ..Event::created(
                call_sid.as_str(),
                role,
                direction,
                &caller_number_from(param("From")),
                now,
                ttl_from(now, config.records.ttl_days),
            )
        };
        // The caller still gets their call if the record cannot be written.
        if let Err(err) = app.records.append_if_changed(&event) {
            log::error!(callSid:% = call_sid, error:% = err; "records.createCallRecord.failed");
        }
    }

    let stream_url = stream_url(&config.domains.ws);
    let mut stream_params = vec![("role", role.as_str()), ("direction", direction.as_str())];
    // The stream must bring this back in `start` for this CallSid (see twilio::stream_token);
    // a request without a CallSid is not a call, and its stream will be refused.
    let token = param("CallSid").and_then(CallSid::parse).map(|sid| {
        app.stream_tokens
            .mint(sid.as_str(), timestamp::now_ms() / 1000)
    });
    if let Some(token) = &token {
        stream_params.push((stream_token::PARAMETER, token));
    }
    if let Some(voice) = number_override.and_then(|o| o.voice_id.as_deref()) {
        stream_params.push(("voiceId", voice));
    }
    Reply::xml(twiml::connect_stream(&stream_url, &stream_params))
}

/// `POST /call/status`: checks Twilio's status callback and records it (a retried or stale
/// callback changes nothing), then answers 204.
pub fn status(app: &App, req: &Incoming) -> Reply {
    let (params, call_sid) = match signed_call(&app.config, req) {
        Ok(signed) => signed,
        Err(reply) => return reply,
    };
    let param = |name: &str| form_value(&params, name);
    let Some(call_status) = twilio_status(param("CallStatus"), &call_sid) else {
        return Reply::error_with_details(
            400,
            "Missing or unknown CallStatus",
            &format!("expected one of {}", TWILIO_STATUSES.join(", ")),
        );
    };
    let duration_secs = match param("CallDuration").map(str::parse::<u64>) {
        None => None,
        Some(Ok(secs)) => Some(secs),
        Some(Err(_)) => return Reply::error(400, "CallDuration is not a whole number of seconds"),
    };
    let now = timestamp::now_ms();
    if let Some(nonce) = req
        .query_param(placements::QUERY_PARAMETER)
        .filter(|n| placements::is_nonce(n))
    {
        record_placement(app, &call_sid, &nonce, now);
    }
    let status = CallStatus::from_twilio(call_status);
    let event = Event {
        status,
        twilio_status: Some(call_status.to_string()),
        sequence_number: param("SequenceNumber").and_then(|s| s.parse().ok()),
        duration_secs,
        ended_at: status
            .filter(|s| s.is_final())
            .map(|_| timestamp::format_ms(now)),
        ..Event::new(
            EventKind::Status,
            call_sid.as_str(),
            &timestamp::format_ms(now),
            ttl_from(now, app.config.records.ttl_days),
        )
    };
    let recorded = match app.records.append_if_changed(&event) {
        Ok(recorded) => recorded,
        Err(err) => {
            log::error!(callSid:% = call_sid, error:% = err; "records.updateCallStatus.failed");
            return Reply::error(500, "Could not record the status");
        }
    };
    log::info!(
        callSid:% = call_sid,
        callStatus = call_status,
        callDuration = duration_secs,
        sequenceNumber = param("SequenceNumber").and_then(|n| n.parse::<u64>().ok()),
        recorded = recorded;
        "Call status update"
    );
    Reply::empty(204)
}

/// `POST /call/amd`: Twilio's answering-machine detection result for a call we placed
/// (`AsyncAmdStatusCallback`; fields in `twilio::amd`). Checked like every webhook; the record
/// keeps `answeredBy` and the live call is told without waiting (a call whose stream has not
/// started yet gets it when it starts: `calls::CallRegistry::notify`). Answers 204 at once.
pub fn amd(app: &App, req: &Incoming) -> Reply {
    let (params, call_sid) = match signed_call(&app.config, req) {
        Ok(signed) => signed,
        Err(reply) => return reply,
    };
    let param = |name: &str| form_value(&params, name);
    let Some(answered_by) = param("AnsweredBy").and_then(AnsweredBy::parse) else {
        log::warn!(
            callSid:% = call_sid,
            answeredBy = log_value(param("AnsweredBy").unwrap_or(""), 24).as_str();
            "Unknown AnsweredBy refused"
        );
        let values: Vec<&str> = AnsweredBy::ALL.iter().map(|a| a.as_str()).collect();
        return Reply::error_with_details(
            400,
            "Missing or unknown AnsweredBy",
            &format!("expected one of {}", values.join(", ")),
        );
    };
    let now = timestamp::now_ms();
    let event = Event {
        answered_by: Some(answered_by.as_str().to_string()),
        ..Event::new(
            EventKind::Status,
            call_sid.as_str(),
            &timestamp::format_ms(now),
            ttl_from(now, app.config.records.ttl_days),
        )
    };
    let notice = Notice::AnsweredBy(answered_by);
    // A call with no record is not one we placed: it is not told either.
    let recorded = match app.records.append_if_changed(&event) {
        Ok(recorded) => recorded,
        Err(err) => {
            log::error!(callSid:% = call_sid, error:% = err; "records.updateAnsweredBy.failed");
            // The signature says Twilio sent it for this call: a live call still leaves its
            // message (or hangs up on a fax) though the record could not say so.
            app.calls.notify(call_sid.as_str(), notice);
            return Reply::error(500, "Could not record the result");
        }
    };
    let delivery = if recorded {
        app.calls.notify(call_sid.as_str(), notice)
    } else {
        // A repeat (the call was told the first time), or a call we do not know.
        Delivery::Refused
    };
    log::info!(
        callSid:% = call_sid,
        answeredBy = answered_by.as_str(),
        detectionMs = param("MachineDetectionDuration").and_then(|n| n.parse::<u64>().ok()),
        recorded = recorded,
        delivery:? = delivery;
        "Answering machine detection"
    );
    Reply::empty(204)
}

/// The webhook's `CallStatus` if it is one Twilio sends; another value is logged (bounded)
/// and goes no further.
fn twilio_status(value: Option<&str>, call_sid: &CallSid) -> Option<&'static str> {
    let value = value?;
    let known = known_twilio_status(value);
    if known.is_none() {
        log::warn!(
            callSid:% = call_sid,
            callStatus = log_value(value, 20).as_str();
            "Unknown CallStatus ignored"
        );
    }
    known
}

/// A status callback for a call we are placing can beat Twilio's answer to our create
/// request, and so the record `place_call` writes. While the placement named by the callback
/// URL's nonce is live (the URL is signed), the callback writes that record itself, the same
/// one: outbound, the persona, the masked number. A record already there is left as it is.
fn record_placement(app: &App, call_sid: &CallSid, nonce: &str, now_ms: i64) {
    let Some(placement) = placements::shared().get(nonce, now_ms) else {
        return;
    };
    let event = Event::created(
        call_sid.as_str(),
        placement.role,
        Direction::Outbound,
        &placement.masked_to,
        now_ms,
        ttl_from(now_ms, app.config.records.ttl_days),
    );
    match app.records.append_if_changed(&event) {
        Ok(written) => {
            // The call has its record: the nonce has done its work.
            placements::shared().remove(nonce);
            if written {
                log::info!(
                    callSid:% = call_sid,
                    to = placement.masked_to.as_str();
                    "call.outbound.recorded_by_status_callback"
                );
            }
        }
        Err(err) => {
            log::error!(callSid:% = call_sid, error:% = err; "records.createCallRecord.failed")
        }
    }
}

/// A signed Twilio callback about one call: its form fields and its `CallSid` (a missing or
/// malformed one is a 400).
fn signed_call(config: &Config, req: &Incoming) -> Result<(Vec<(String, String)>, CallSid), Reply> {
    let params = signed_params(config, req)?;
    match form_value(&params, "CallSid").and_then(CallSid::parse) {
        Some(call_sid) => Ok((params, call_sid)),
        None => Err(Reply::error(400, "Missing or malformed CallSid")),
    }
}

/// The first value of `name` in a form.
fn form_value<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The form parameters of a Twilio webhook, after checking its signature when that is on.
fn signed_params(config: &Config, req: &Incoming) -> Result<Vec<(String, String)>, Reply> {
    let params = req.form()?;
    if !config.twilio.validate_signature {
        return Ok(params);
    }
    let Some(token) = &config.twilio.auth_token else {
        // Config validation makes this unreachable; refuse rather than let a request through.
        log::error!("signature validation is on but TWILIO_AUTH_TOKEN is missing");
        return Err(Reply::error(500, "Server misconfigured"));
    };
    let keys = signature::WebhookKeys {
        auth_token: token.expose(),
        shared_key: config
            .twilio
            .webhook_shared_key
            .as_ref()
            .map(|k| k.expose()),
    };
    let result = signature::verify_webhook(
        keys,
        req.header(signature::SETTINGS_HEADER),
        req.header(signature::SIGNATURE_HEADER),
        &signed_url_candidates(config, req),
        &params,
    );
    result.map(|()| params).map_err(|err| {
        log::warn!(
            path = log_value(&req.path, LOG_VALUE_CHARS).as_str(),
            // The reason quotes what the client sent (the settings header, the URLs tried).
            reason = log_value(&err.to_string(), 4 * LOG_VALUE_CHARS).as_str();
            "Invalid Twilio signature"
        );
        Reply::error(403, "Forbidden")
    })
}

/// The URLs Twilio may have signed for this request. Twilio signs the public URL it called,
/// which a TLS proxy hides from us: the host is taken from `X-Forwarded-Host` or `Host` only
/// when it is one of our configured domains (a request signed for somebody else's host must
/// not verify here), else the configured `API_DOMAIN`; the scheme is https unless the proxy
/// says the request came in over plain http. Path and query are used exactly as received.
pub fn signed_url_candidates(config: &Config, req: &Incoming) -> Vec<String> {
    let first_value = |name: &str| {
        req.header(name)
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let mut hosts: Vec<String> = Vec::new();
    for host in [first_value("X-Forwarded-Host"), first_value("Host")]
        .into_iter()
        .flatten()
    {
        let host = host.to_ascii_lowercase();
        if config.domains.is_ours(&host) && !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let api = config.domains.api.to_string();
    if !hosts.contains(&api) {
        hosts.push(api);
    }
    let mut schemes = vec!["https"];
    if first_value("X-Forwarded-Proto").is_some_and(|p| p.eq_ignore_ascii_case("http")) {
        schemes.push("http");
    }
    let path = req.path_and_query();
    let mut urls = Vec::new();
    for scheme in schemes {
        for host in &hosts {
            urls.push(format!("{scheme}://{host}{path}"));
        }
    }
    urls
}
