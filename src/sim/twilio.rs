//! A simulated Twilio REST API for calls: create (`POST …/Calls.json`) and update
//! (`POST …/Calls/{sid}.json`), checking basic auth and the form fields the way Twilio does and
//! answering with Twilio's JSON shapes and error codes. Created calls are recorded for tests.
//!
//! With [`TwilioSim::dial_into`], a created call is also carried out the way Twilio does it:
//! status callbacks to `StatusCallback` (signed), the TwiML fetched from `Url` (signed), and the
//! `<Connect><Stream>` it names opened against our media server by a simulated callee, who
//! listens to the greeting and hangs up. The URLs' host is the public domain, so the requests
//! go to the loopback addresses given instead, with the signatures over the public URLs.
//!
//! Answering-machine detection (`twilio::amd`): `MachineDetection` and
//! `MachineDetectionTimeout` are checked as Twilio checks them (error 21234). A carried-out
//! call that asked for it in the background (`AsyncAmd=true`) gets its result posted, signed,
//! to `AsyncAmdStatusCallback` after [`TwilioSim::set_amd_delay`]; the result is the one the
//! test chose for the dialled number ([`TwilioSim::answer_as`]), else `human`. A machine's
//! callee then stays on the line until our server hangs up; a person's hangs up after the
//! greeting, as without detection. Without `AsyncAmd` the result rides in the `Url` request's
//! `AnsweredBy`, as Twilio's synchronous detection does.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use super::caller::CallerLine;
use super::http::{Responder, SimRequest, SimServer};
use super::listener::Tls;
use crate::http::request::decode_form;

/// A call the simulator was asked to create, with every form field as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedCall {
    pub sid: String,
    pub form: Vec<(String, String)>,
}

impl CreatedCall {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn fields(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Where created calls are answered: our server on loopback.
#[derive(Clone, Debug)]
pub struct Callee {
    /// `http://127.0.0.1:PORT` of the webhooks (`HTTP_PORT`).
    pub http_base: String,
    /// The media-stream listener (`MEDIA_PORT`).
    pub media_addr: SocketAddr,
    /// How fast the callee's phone plays what it hears (1 is real time).
    pub playback_speed: usize,
}

/// What happened to a call the simulator carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnsweredCall {
    pub sid: String,
    /// The TwiML our server answered `Url` with.
    pub twiml: String,
    /// The `<Parameter>`s of its stream.
    pub parameters: Vec<(String, String)>,
    /// Whether the callee heard a piece of speech in full (the greeting).
    pub heard_greeting: bool,
    /// Status callbacks posted: (CallStatus, HTTP status our server answered).
    pub callbacks: Vec<(String, u16)>,
    /// What went wrong, if the call could not be carried out.
    pub error: Option<String>,
    /// The answering-machine result posted: (AnsweredBy, HTTP status our server answered; 0
    /// if none).
    pub amd_callback: Option<(String, u16)>,
    /// Whether our server closed the stream (a machine's callee waits for it).
    pub server_hung_up: bool,
}

#[derive(Default)]
struct State {
    created: Vec<CreatedCall>,
    updates: Vec<(String, Vec<(String, String)>)>,
    /// Answer the next create with this HTTP status and Twilio code instead.
    fail_next: Option<(u16, u64, String)>,
    callee: Option<Callee>,
    answered: Vec<AnsweredCall>,
    /// How long a create takes to answer (Twilio's API takes a few hundred ms).
    delay: Duration,
    /// Post each created call's `initiated` callback to this `http://127.0.0.1:PORT` before
    /// answering the create (see [`TwilioSim::callback_before_answering`]).
    callback_first: Option<String>,
    /// The callbacks posted that way: (call sid, HTTP status our server answered; 0 if none).
    early_callbacks: Vec<(String, u16)>,
    /// Who answers each dialled number, for calls with answering-machine detection.
    answers: Vec<(String, String)>,
    /// How long detection takes before its result is posted.
    amd_delay: Duration,
    /// Live Media Streams by CallSid: a call update that moves the call elsewhere ends its
    /// stream, as Twilio does.
    lines: Vec<(String, CallerLine)>,
    /// Answer the next call update with this HTTP status and Twilio code instead.
    fail_next_update: Option<(u16, u64, String)>,
}

pub struct TwilioSim {
    server: SimServer,
    state: Arc<Mutex<State>>,
}

impl TwilioSim {
    /// A simulator that accepts `account_sid` / `auth_token`.
    pub fn start(account_sid: &str, auth_token: &str) -> io::Result<TwilioSim> {
        TwilioSim::start_with_tls(account_sid, auth_token, None)
    }

    /// [`TwilioSim::start`], serving `https://localhost` when `tls` is given.
    pub fn start_with_tls(account_sid: &str, auth_token: &str, tls: Tls) -> io::Result<TwilioSim> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (sid, token) = (account_sid.to_string(), auth_token.to_string());
        let server = SimServer::start("sim-twilio", tls, move |req, res| {
            handle(req, res, &shared, &sid, &token)
        })?;
        Ok(TwilioSim { server, state })
    }

    /// Delays each new connection by the network round trip `rtt` (its handshake and its
    /// first response; see `listener::Listener::set_rtt`).
    pub fn set_rtt(&self, rtt: std::time::Duration) {
        self.server.set_rtt(rtt);
    }

    /// The base URL to set as `TWILIO_API_BASE`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn created(&self) -> Vec<CreatedCall> {
        lock(&self.state).created.clone()
    }

    /// Updates received: (call sid, form).
    pub fn updates(&self) -> Vec<(String, Vec<(String, String)>)> {
        lock(&self.state).updates.clone()
    }

    /// From now on, created calls are carried out against our server (see the module docs).
    pub fn dial_into(&self, callee: Callee) {
        lock(&self.state).callee = Some(callee);
    }

    /// The calls carried out so far (each once its callee has hung up).
    pub fn answered(&self) -> Vec<AnsweredCall> {
        lock(&self.state).answered.clone()
    }

    /// Makes every create take `delay` before it answers.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// From now on, each created call's `initiated` status callback (signed, to its
    /// `StatusCallback` URL on `http_base`) is posted before the create is answered, as
    /// Twilio sometimes does: our server hears of the call before its create returns.
    pub fn callback_before_answering(&self, http_base: &str) {
        lock(&self.state).callback_first = Some(http_base.to_string());
    }

    /// The callbacks posted before answering: (call sid, HTTP status our server answered).
    pub fn early_callbacks(&self) -> Vec<(String, u16)> {
        lock(&self.state).early_callbacks.clone()
    }

    /// Calls to `to` with answering-machine detection are answered by `answered_by` (one of
    /// Twilio's `AnsweredBy` values, e.g. `machine_end_beep`); other numbers by `human`.
    pub fn answer_as(&self, to: &str, answered_by: &str) {
        let mut state = lock(&self.state);
        state.answers.retain(|(number, _)| number != to);
        state
            .answers
            .push((to.to_string(), answered_by.to_string()));
    }

    /// How long after the stream opens the detection result is posted (Twilio's takes
    /// seconds: a machine's greeting and its beep).
    pub fn set_amd_delay(&self, delay: Duration) {
        lock(&self.state).amd_delay = delay;
    }

    /// Makes `call_sid` a live call of this simulator, its Media Stream played by the caller
    /// `line` belongs to: a call update may name it, and one that redirects or ends the call
    /// ends that stream (`stop`, then the close), as Twilio does.
    pub fn register_stream(&self, call_sid: &str, line: CallerLine) {
        lock(&self.state).lines.push((call_sid.to_string(), line));
    }

    /// Makes the next call update fail with `status` and Twilio error `code`.
    pub fn fail_next_update(&self, status: u16, code: u64, message: &str) {
        lock(&self.state).fail_next_update = Some((status, code, message.to_string()));
    }

    /// Makes the next create fail with `status` and Twilio error `code`.
    pub fn fail_next(&self, status: u16, code: u64, message: &str) {
        lock(&self.state).fail_next = Some((status, code, message.to_string()));
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn twilio_error(res: &mut Responder, status: u16, code: u64, message: &str) -> io::Result<()> {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    });
    res.send(
        status,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn handle(
    req: &SimRequest,
    res: &mut Responder,
    state: &Arc<Mutex<State>>,
    account_sid: &str,
    auth_token: &str,
) -> io::Result<()> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{account_sid}:{auth_token}"))
    );
    if req.header("Authorization") != Some(expected.as_str()) {
        return twilio_error(res, 401, 20003, "Authenticate");
    }
    let prefix = format!("/2010-04-01/Accounts/{account_sid}/Calls");
    let Some(rest) = req.path().strip_prefix(&prefix) else {
        return twilio_error(res, 404, 20404, "The requested resource was not found");
    };
    if req.method != "POST" {
        return twilio_error(res, 405, 20004, "Method not allowed");
    }
    let form = std::str::from_utf8(&req.body)
        .ok()
        .and_then(|text| decode_form(text).ok())
        .unwrap_or_default();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if rest == ".json" {
        let delay = lock(state).delay;
        std::thread::sleep(delay);
        if let Some((status, code, message)) = lock(state).fail_next.take() {
            return twilio_error(res, status, code, &message);
        }
        let e164 = |v: &Option<String>| v.as_deref().and_then(crate::phone::normalize).is_some();
        if !e164(&field("To")) {
            return twilio_error(res, 400, 21211, "Invalid 'To' Phone Number");
        }
        if !e164(&field("From")) {
            return twilio_error(res, 400, 21212, "Invalid 'From' Phone Number");
        }
        if field("Url").is_none() && field("Twiml").is_none() {
            return twilio_error(res, 400, 21205, "Url or Twiml parameter is required");
        }
        if let Some(refusal) = amd_refusal(&field) {
            return twilio_error(res, 400, 21234, &refusal);
        }
        let bytes = crate::ids::random_bytes::<16>();
        let sid = format!(
            "CA{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let (callee, callback_first) = {
            let mut state = lock(state);
            state.created.push(CreatedCall {
                sid: sid.clone(),
                form: form.clone(),
            });
            (state.callee.clone(), state.callback_first.clone())
        };
        if let (Some(http_base), Some(url)) = (callback_first, field("StatusCallback")) {
            let field = |name: &str| field(name).unwrap_or_default();
            let params = status_params(&sid, account_sid, &field, "initiated", 0);
            let code = post_signed(&sim_agent(), &url, &http_base, auth_token, &params)
                .map_or(0, |(code, _)| code);
            lock(state).early_callbacks.push((sid.clone(), code));
        }
        if let Some(callee) = callee {
            let shared = Arc::clone(state);
            let to = field("To").unwrap_or_default();
            let amd = {
                let state = lock(state);
                let answer = state
                    .answers
                    .iter()
                    .find(|(number, _)| *number == to)
                    .map_or("human".to_string(), |(_, a)| a.clone());
                (answer, state.amd_delay)
            };

            let (sid, account, token) =
                (sid.clone(), account_sid.to_string(), auth_token.to_string());
            let form = form.clone();
            let spawned = std::thread::Builder::new()
                .name("sim-twilio-callee".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    let answered = carry_out(&callee, &sid, &account, &token, &form, &amd);
                    lock(&shared).answered.push(answered);
                });
            if let Err(err) = spawned {
                log::warn!(error:% = err; "sim-twilio: cannot start the callee");
            }
        }
        let body = json!({
            "sid": sid,
            "account_sid": account_sid,
            "to": field("To"),
            "from": field("From"),
            "status": "queued",
            "direction": "outbound-api",
            "uri": format!("{prefix}/{sid}.json"),
        });
        return res.send(
            201,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
    }
    update_call(rest, &form, res, state)
}

/// TwiML a call update may carry (Twilio's documented limit for `Twiml`).
const MAX_TWIML_CHARS: usize = 4000;

/// `POST …/Calls/{sid}.json`: a call this simulator created or holds the stream of, moved to
/// new TwiML (`Twiml` or `Url`) or ended (`Status`). The update is recorded, answered with the
/// call's JSON, and the call's stream, if live, ends as Twilio ends it.
fn update_call(
    rest: &str,
    form: &[(String, String)],
    res: &mut Responder,
    state: &Arc<Mutex<State>>,
) -> io::Result<()> {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let known = |sid: &str| {
        let state = lock(state);
        state.created.iter().any(|c| c.sid == sid) || state.lines.iter().any(|(s, _)| s == sid)
    };
    let Some(call_sid) = rest
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix(".json"))
        .filter(|sid| known(sid))
    else {
        return twilio_error(res, 404, 20404, "The requested resource was not found");
    };
    let (twiml, url, status) = (field("Twiml"), field("Url"), field("Status"));
    // The validation codes are Twilio's generic "invalid parameter" family; the refusals are
    // what Twilio refuses (a 400 and nothing done).
    if let Some(status) = status.as_deref() {
        if status != "completed" && status != "canceled" {
            return twilio_error(res, 400, 20001, "Status must be completed or canceled");
        }
    }
    if let Some(twiml) = twiml.as_deref() {
        if twiml.chars().count() > MAX_TWIML_CHARS {
            return twilio_error(res, 400, 20001, "Twiml is longer than 4000 characters");
        }
        if !twiml.contains("<Response") {
            return twilio_error(res, 400, 20001, "Twiml is not a TwiML document");
        }
    }
    if let Some(url) = url.as_deref() {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return twilio_error(res, 400, 21205, "Url is not a valid URL");
        }
    }
    if twiml.is_some() && url.is_some() {
        // The official SDK's docs: "Twiml and url parameters are mutually exclusive".
        return twilio_error(res, 400, 20001, "Url and Twiml are mutually exclusive");
    }
    if twiml.is_none() && url.is_none() && status.is_none() {
        return twilio_error(res, 400, 20001, "Url, Twiml or Status is required");
    }
    if let Some((code_status, code, message)) = lock(state).fail_next_update.take() {
        return twilio_error(res, code_status, code, &message);
    }
    let line = {
        let mut state = lock(state);
        state.updates.push((call_sid.to_string(), form.to_vec()));
        state
            .lines
            .iter()
            .find(|(sid, _)| sid == call_sid)
            .map(|(_, line)| line.clone())
    };
    let answered = match status.as_deref() {
        Some("completed") | Some("canceled") => "completed",
        _ => "in-progress",
    };
    let body = json!({ "sid": call_sid, "status": answered });
    let sent = res.send(
        200,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    // The call leaves `<Connect><Stream>`: Twilio sends `stop` and closes the stream.
    if let Some(line) = line {
        line.end_stream();
    }
    sent
}

/// Why Twilio refuses the request's answering-machine parameters (error 21234), if it does:
/// `MachineDetection` other than `Enable` or `DetectMessageEnd`, or `MachineDetectionTimeout`
/// outside 3–59 seconds (Twilio's error page for 21234).
fn amd_refusal(field: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(value) = field("MachineDetection") {
        if !crate::twilio::amd::MACHINE_DETECTION_VALUES.contains(&value.as_str()) {
            return Some(format!(
                "Invalid Machine Detection configuration value: MachineDetection {value:?}"
            ));
        }
    }
    if let Some(value) = field("MachineDetectionTimeout") {
        if !value
            .parse::<u32>()
            .is_ok_and(|secs| (3..=59).contains(&secs))
        {
            return Some(format!(
                "Invalid Machine Detection configuration value: MachineDetectionTimeout {value:?}"
            ));
        }
    }
    None
}

/// `url` (a public URL of our server) as the same path and query on `base`.
fn on_loopback(url: &str, base: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    format!("{base}{path}")
}

/// The value of `name="…"` in one XML tag, unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = tag[start..].find('"')? + start;
    Some(
        tag[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// The stream URL and its parameters in `<Connect><Stream>` TwiML.
pub(crate) fn stream_of(twiml: &str) -> Option<(String, Vec<(String, String)>)> {
    let stream_tag = &twiml[twiml.find("<Stream")?..];
    let url = attribute(&stream_tag[..stream_tag.find('>')?], "url")?;
    let parameters = twiml
        .split("<Parameter")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            Some((attribute(tag, "name")?, attribute(tag, "value")?))
        })
        .collect();
    Some((url, parameters))
}

/// The client the simulator calls our server with.
fn sim_agent() -> ureq::Agent {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    crate::resolve::bounded(&agent)
}

/// The form of a status callback for call `sid` reporting `status`; `field` reads the create
/// request's fields.
fn status_params(
    sid: &str,
    account: &str,
    field: &dyn Fn(&str) -> String,
    status: &str,
    sequence: u64,
) -> Vec<(String, String)> {
    vec![
        ("CallSid".to_string(), sid.to_string()),
        ("AccountSid".to_string(), account.to_string()),
        ("From".to_string(), field("From")),
        ("To".to_string(), field("To")),
        ("Direction".to_string(), "outbound-api".to_string()),
        ("CallStatus".to_string(), status.to_string()),
        (
            "CallbackSource".to_string(),
            "call-progress-events".to_string(),
        ),
        ("SequenceNumber".to_string(), sequence.to_string()),
    ]
}

/// Posts a signed webhook to our server (on `http_base`) as Twilio would; returns the status
/// and body.
fn post_signed(
    agent: &ureq::Agent,
    public_url: &str,
    http_base: &str,
    token: &str,
    params: &[(String, String)],
) -> Result<(u16, String), String> {
    let signature = crate::twilio::signature::compute(token, public_url, params);
    let pairs: Vec<(&str, String)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let body = crate::twilio::rest::encode_form(&pairs);
    let response = agent
        .post(&on_loopback(public_url, http_base))
        .header("X-Twilio-Signature", &signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(body)
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, text))
}

/// Carries out one created call against our server (see the module docs); `amd` is who
/// answers if detection is asked, and how long it takes to say so.
fn carry_out(
    callee: &Callee,
    sid: &str,
    account: &str,
    token: &str,
    form: &[(String, String)],
    amd: &(String, Duration),
) -> AnsweredCall {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    let mut answered = AnsweredCall {
        sid: sid.to_string(),
        twiml: String::new(),
        parameters: Vec::new(),
        heard_greeting: false,
        callbacks: Vec::new(),
        error: None,
        amd_callback: None,
        server_hung_up: false,
    };
    let agent = sim_agent();
    // Detection asked, and who answers (the simulator's choice for the number).
    let detection = field("MachineDetection");
    let asynchronous = field("AsyncAmd") == "true";
    let (answered_by, amd_delay) = (amd.0.clone(), amd.1);
    let events: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "StatusCallbackEvent")
        .map(|(_, v)| v.clone())
        .collect();
    let status_url = field("StatusCallback");
    let mut sequence = 0u64;
    let started = std::time::Instant::now();
    let mut callback = |event: &str, status: &str, answered: &mut AnsweredCall| {
        if status_url.is_empty() || !events.iter().any(|e| e == event) {
            return;
        }
        let mut params = status_params(sid, account, &field, status, sequence);
        if status == "completed" {
            params.push((
                "CallDuration".to_string(),
                started.elapsed().as_secs().to_string(),
            ));
        }
        sequence += 1;
        let code = post_signed(&agent, &status_url, &callee.http_base, token, &params)
            .map_or(0, |(c, _)| c);
        answered.callbacks.push((status.to_string(), code));
    };
    callback("initiated", "initiated", &mut answered);
    callback("ringing", "ringing", &mut answered);
    let mut params = vec![
        ("CallSid".to_string(), sid.to_string()),
        ("AccountSid".to_string(), account.to_string()),
        ("From".to_string(), field("From")),
        ("To".to_string(), field("To")),
        ("Direction".to_string(), "outbound-api".to_string()),
        ("CallStatus".to_string(), "in-progress".to_string()),
    ];
    if !detection.is_empty() && !asynchronous {
        // Synchronous detection: the call waits for the result, which comes with the TwiML's
        // request.
        params.push(("AnsweredBy".to_string(), answered_by.clone()));
    }
    let twiml = match post_signed(&agent, &field("Url"), &callee.http_base, token, &params) {
        Ok((200, twiml)) => twiml,
        Ok((status, body)) => {
            answered.error = Some(format!("Url answered {status}: {body}"));
            return answered;
        }
        Err(err) => {
            answered.error = Some(format!("Url unreachable: {err}"));
            return answered;
        }
    };
    answered.twiml.clone_from(&twiml);
    let Some((stream_url, parameters)) = stream_of(&twiml) else {
        answered.error = Some("the TwiML has no <Connect><Stream>".into());
        return answered;
    };
    answered.parameters.clone_from(&parameters);
    callback("answered", "in-progress", &mut answered);
    let options = super::caller::CallerOptions {
        call_sid: sid.to_string(),
        parameters,
        signature: Some(crate::twilio::signature::compute(token, &stream_url, &[])),
        playback_speed: callee.playback_speed,
        ..super::caller::CallerOptions::default()
    };
    match super::caller::SimCaller::connect(callee.media_addr, options) {
        Ok(phone) => {
            let amd_url = field("AsyncAmdStatusCallback");
            if !detection.is_empty() && asynchronous && !amd_url.is_empty() {
                // Bounded: a test's delay is short; a mistaken long one ends in a minute.
                std::thread::sleep(amd_delay.min(Duration::from_secs(60)));
                let params = vec![
                    ("CallSid".to_string(), sid.to_string()),
                    ("AccountSid".to_string(), account.to_string()),
                    ("AnsweredBy".to_string(), answered_by.clone()),
                    (
                        "MachineDetectionDuration".to_string(),
                        amd_delay.as_millis().to_string(),
                    ),
                ];
                let code = post_signed(&agent, &amd_url, &callee.http_base, token, &params)
                    .map_or(0, |(c, _)| c);
                answered.amd_callback = Some((answered_by.clone(), code));
            }
            let machine = answered
                .amd_callback
                .as_ref()
                .and_then(|(a, _)| crate::twilio::amd::AnsweredBy::parse(a))
                .is_some_and(|a| a.is_machine() || a == crate::twilio::amd::AnsweredBy::Fax);
            if machine {
                // A machine records until the line goes dead: our server must hang up.
                answered.server_hung_up = phone.wait_closed(Duration::from_secs(60));
                answered.heard_greeting = phone.wait_for_echoes(1, Duration::ZERO);
            } else {
                answered.heard_greeting = phone.wait_for_echoes(1, Duration::from_secs(60));
                answered.server_hung_up = phone.is_closed();
            }
            phone.hang_up();
        }
        Err(err) => answered.error = Some(format!("the stream did not open: {err}")),
    }
    callback("completed", "completed", &mut answered);
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stream_and_its_parameters_from_twiml() {
        let twiml = crate::twilio::twiml::connect_stream(
            "wss://voice.example.com/call/stream",
            &[("role", "judge"), ("note", "a&b \"c\"")],
        );
        let (url, params) = stream_of(&twiml).expect("a stream");
        assert_eq!(url, "wss://voice.example.com/call/stream");
        assert_eq!(
            params,
            [
                ("role".to_string(), "judge".to_string()),
                ("note".to_string(), "a&b \"c\"".to_string())
            ]
        );
        assert_eq!(stream_of("<Response><Say>hi</Say></Response>"), None);
        assert_eq!(amd_refusal(&|_| None), None, "no detection asked");
        assert_eq!(
            on_loopback(
                "https://voice.example.com/call/incoming?role=judge",
                "http://127.0.0.1:9"
            ),
            "http://127.0.0.1:9/call/incoming?role=judge"
        );
    }

    #[test]
    fn answering_machine_parameters_are_checked_as_twilio_checks_them() {
        let form = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        for ok in [
            &[("MachineDetection", "DetectMessageEnd")][..],
            &[
                ("MachineDetection", "Enable"),
                ("MachineDetectionTimeout", "3"),
            ],
            &[("MachineDetectionTimeout", "59")],
        ] {
            assert_eq!(amd_refusal(&form(ok)), None, "{ok:?}");
        }
        for bad in [
            &[("MachineDetection", "detectmessageend")][..],
            &[("MachineDetection", "true")],
            &[("MachineDetectionTimeout", "2")],
            &[("MachineDetectionTimeout", "60")],
            &[("MachineDetectionTimeout", "ten")],
        ] {
            assert!(amd_refusal(&form(bad)).is_some(), "{bad:?}");
        }
    }
}
