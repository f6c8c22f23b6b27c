//! Twilio's REST API for calls: create one (`POST /2010-04-01/Accounts/{sid}/Calls.json`) and
//! update one (hang up, redirect), with HTTP basic auth and form fields as Twilio documents
//! them. Twilio's error JSON (`code`, `message`, `more_info`, `status`) becomes
//! [`TwilioError::Api`], so a caller can tell "Twilio refused" (4xx) from "we failed" (5xx).

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use super::amd;
use crate::config::Secret;

/// Largest response body read.
const MAX_BODY: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum TwilioError {
    /// Twilio answered with an error.
    Api {
        status: u16,
        /// Twilio's error code (e.g. 21211 invalid To number); 0 when none was sent.
        code: u64,
        message: String,
        more_info: Option<String>,
    },
    /// Twilio could not be reached (or timed out).
    Transport(String),
    /// Twilio's answer was not what it documents.
    Malformed(String),
}

impl TwilioError {
    /// Whether Twilio refused the request itself (4xx), as opposed to failing.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            TwilioError::Api {
                status: 400..=499,
                ..
            }
        )
    }
}

impl std::fmt::Display for TwilioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TwilioError::Api {
                status,
                code,
                message,
                ..
            } => write!(f, "twilio answered {status} (error {code}): {message}"),
            TwilioError::Transport(what) => write!(f, "cannot reach twilio: {what}"),
            TwilioError::Malformed(what) => write!(f, "twilio's answer not understood: {what}"),
        }
    }
}

impl std::error::Error for TwilioError {}

impl TwilioError {
    /// The `kind` label of this failure in `/metrics`.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            TwilioError::Api { .. } => "api",
            TwilioError::Transport(_) => "transport",
            TwilioError::Malformed(_) => "malformed",
        }
    }
}

/// An outbound call to place.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateCall {
    pub to: String,
    pub from: String,
    /// Where Twilio fetches the call's TwiML.
    pub url: String,
    pub status_callback: Option<String>,
    /// `initiated`, `ringing`, `answered`, `completed`.
    pub status_callback_events: Vec<String>,
    /// Seconds to let it ring.
    pub timeout_secs: Option<u32>,
    /// Longest the call may last, in seconds.
    pub time_limit_secs: Option<u32>,
    /// Answering-machine detection in the background (`DetectMessageEnd`, `AsyncAmd`), its
    /// result posted to this URL (see [`super::amd`]); `None`: no detection.
    pub amd_callback: Option<String>,
}

/// What Twilio says about a call it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCreated {
    pub sid: String,
    pub status: String,
}

/// A change to a live call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallUpdate {
    /// End the call now.
    HangUp,
    /// Fetch new TwiML from this URL.
    Redirect(String),
    /// Run this TwiML now (e.g. `<Dial>` a person): Twilio leaves what the call was doing,
    /// ending its Media Stream.
    Twiml(String),
}

#[derive(Clone)]
pub struct TwilioRest {
    agent: ureq::Agent,
    base: String,
    account_sid: String,
    auth_token: Secret,
}

impl TwilioRest {
    pub fn new(base_url: &str, account_sid: &str, auth_token: Secret) -> TwilioRest {
        let agent = crate::resolve::provider_agent(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(5)))
                .timeout_global(Some(Duration::from_secs(15))),
        );
        TwilioRest {
            agent,
            base: base_url.trim_end_matches('/').to_string(),
            account_sid: account_sid.to_string(),
            auth_token,
        }
    }

    pub fn create_call(&self, call: &CreateCall) -> Result<CallCreated, TwilioError> {
        let mut form = vec![
            ("To", call.to.clone()),
            ("From", call.from.clone()),
            ("Url", call.url.clone()),
            ("Method", "POST".to_string()),
        ];
        if let Some(callback) = &call.status_callback {
            form.push(("StatusCallback", callback.clone()));
            form.push(("StatusCallbackMethod", "POST".to_string()));
            for event in &call.status_callback_events {
                form.push(("StatusCallbackEvent", event.clone()));
            }
        }
        if let Some(secs) = call.timeout_secs {
            form.push(("Timeout", secs.to_string()));
        }
        if let Some(secs) = call.time_limit_secs {
            form.push(("TimeLimit", secs.to_string()));
        }
        if let Some(callback) = &call.amd_callback {
            form.push((amd::MACHINE_DETECTION, amd::DETECT_MESSAGE_END.to_string()));
            form.push(("AsyncAmd", "true".to_string()));
            form.push(("AsyncAmdStatusCallback", callback.clone()));
            form.push(("AsyncAmdStatusCallbackMethod", "POST".to_string()));
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls.json",
            self.base, self.account_sid
        );
        let body = self.post(&url, &form)?;
        let field = |name: &str| body[name].as_str().map(str::to_string);
        match (field("sid"), field("status")) {
            (Some(sid), Some(status)) if crate::config::is_sid(&sid, "CA") => {
                Ok(CallCreated { sid, status })
            }
            _ => Err(TwilioError::Malformed(format!(
                "create-call answer without a call sid: {body}"
            ))),
        }
    }

    pub fn update_call(&self, call_sid: &str, update: &CallUpdate) -> Result<(), TwilioError> {
        if !crate::config::is_sid(call_sid, "CA") {
            return Err(TwilioError::Malformed(format!(
                "{call_sid:?} is not a call sid"
            )));
        }
        let form = match update {
            CallUpdate::HangUp => vec![("Status", "completed".to_string())],
            CallUpdate::Redirect(url) => {
                vec![("Url", url.clone()), ("Method", "POST".to_string())]
            }
            CallUpdate::Twiml(twiml) => vec![("Twiml", twiml.clone())],
        };
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls/{call_sid}.json",
            self.base, self.account_sid
        );
        self.post(&url, &form).map(|_| ())
    }

    fn post(&self, url: &str, form: &[(&str, String)]) -> Result<Value, TwilioError> {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.account_sid,
            self.auth_token.expose()
        ));
        let response = self
            .agent
            .post(url)
            .header("Authorization", &format!("Basic {credentials}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .send(encode_form(form).as_bytes())
            .map_err(|err| TwilioError::Transport(err.to_string()))?;
        let status = response.status().as_u16();
        let mut text = String::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_BODY)
            .read_to_string(&mut text)
            .map_err(|err| TwilioError::Transport(err.to_string()))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(TwilioError::Api {
            status,
            code: body["code"].as_u64().unwrap_or(0),
            message: body["message"]
                .as_str()
                .map_or_else(|| text.trim().chars().take(300).collect(), str::to_string),
            more_info: body["more_info"].as_str().map(str::to_string),
        })
    }
}

/// `application/x-www-form-urlencoded`, names in the given order (repeats kept).
pub fn encode_form(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Everything but `A-Z a-z 0-9 - _ . ~` is escaped (a space as `%20`, which form decoders read as
/// a space like `+`).
fn encode_component(text: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::decode_form; // test only: our decoder is the oracle

    #[test]
    fn forms_round_trip_through_our_decoder() {
        let pairs = vec![
            ("To", "+15551234567".to_string()),
            (
                "Url",
                "https://voice.example.com/call/incoming?role=attorney&x=1".to_string(),
            ),
            ("StatusCallbackEvent", "initiated".to_string()),
            ("StatusCallbackEvent", "ringing".to_string()),
            ("Note", "two words & ünïcode".to_string()),
        ];
        let encoded = encode_form(&pairs);
        assert!(encoded.starts_with("To=%2B15551234567&Url=https%3A%2F%2Fvoice"));
        let decoded = decode_form(&encoded).unwrap();
        let expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn client_errors_are_told_apart() {
        let refused = TwilioError::Api {
            status: 400,
            code: 21211,
            message: "x".into(),
            more_info: None,
        };
        let failed = TwilioError::Api {
            status: 503,
            code: 0,
            message: "x".into(),
            more_info: None,
        };
        assert!(refused.is_client_error());
        assert!(!failed.is_client_error());
        assert!(!TwilioError::Transport("x".into()).is_client_error());
    }
}
