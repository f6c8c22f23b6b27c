//! A simulated Twilio REST API for calls: create (`POST …/Calls.json`) and update
//! (`POST …/Calls/{sid}.json`), checking basic auth and the form fields the way Twilio does and
//! answering with Twilio's JSON shapes and error codes. Created calls are recorded for tests.
//! (Dialling the media server as a simulated callee comes with the media stream.)

use std::io;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::json;

use super::http::{Responder, SimRequest, SimServer};
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

#[derive(Default)]
struct State {
    created: Vec<CreatedCall>,
    updates: Vec<(String, Vec<(String, String)>)>,
    /// Answer the next create with this HTTP status and Twilio code instead.
    fail_next: Option<(u16, u64, String)>,
}

pub struct TwilioSim {
    server: SimServer,
    state: Arc<Mutex<State>>,
}

impl TwilioSim {
    /// A simulator that accepts `account_sid` / `auth_token`.
    pub fn start(account_sid: &str, auth_token: &str) -> io::Result<TwilioSim> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (sid, token) = (account_sid.to_string(), auth_token.to_string());
        let server = SimServer::start("sim-twilio", move |req, res| {
            handle(req, res, &shared, &sid, &token)
        })?;
        Ok(TwilioSim { server, state })
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
    state: &Mutex<State>,
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
        let bytes = crate::ids::random_bytes::<16>();
        let sid = format!(
            "CA{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        lock(state).created.push(CreatedCall {
            sid: sid.clone(),
            form: form.clone(),
        });
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
    let Some(call_sid) = rest
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix(".json"))
        .filter(|sid| lock(state).created.iter().any(|c| c.sid == *sid))
    else {
        return twilio_error(res, 404, 20404, "The requested resource was not found");
    };
    lock(state)
        .updates
        .push((call_sid.to_string(), form.clone()));
    let status = match field("Status").as_deref() {
        Some("completed") | Some("canceled") => "completed",
        _ => "in-progress",
    };
    let body = json!({ "sid": call_sid, "status": status });
    res.send(
        200,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}
