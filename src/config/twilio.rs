//! The Twilio section: the account, the auth token that signs webhooks, our number, the REST
//! base URL, whether signatures are checked (always, in production), and the Webhook Rules
//! SharedKey that signs webhooks carrying `X-Twilio-Webhooks-Signature-Settings`.

use crate::phone;

use super::read::{Reader, Report, Url, HTTP_SCHEMES};
use super::{AppEnv, BaseUrl, Secret};

const ACCOUNT_SID: &str = "TWILIO_ACCOUNT_SID";
const AUTH_TOKEN: &str = "TWILIO_AUTH_TOKEN";
const PHONE_NUMBER: &str = "TWILIO_PHONE_NUMBER";
const API_BASE: Url = Url {
    name: "TWILIO_API_BASE",
    default: "https://api.twilio.com",
    schemes: HTTP_SCHEMES,
};
const VALIDATE_SIGNATURE: &str = "VALIDATE_TWILIO_SIGNATURE";
/// The Webhook Rules SharedKey's secret (named in the signature gate's log reasons).
pub const WEBHOOK_SHARED_KEY: &str = "TWILIO_WEBHOOK_SHARED_KEY";

#[derive(Clone, Debug)]
pub struct TwilioConfig {
    pub account_sid: Option<String>,
    pub auth_token: Option<Secret>,
    pub phone_number: Option<String>,
    pub api_base: BaseUrl,
    pub validate_signature: bool,
    /// The secret of the Webhook Rules SharedKey; without it, a webhook that says it is signed
    /// with one is refused.
    pub webhook_shared_key: Option<Secret>,
}

impl TwilioConfig {
    pub(super) fn read(r: &mut Reader<'_>, app_env: AppEnv) -> TwilioConfig {
        let production = app_env == AppEnv::Production;
        let (validate_flag, validate_set) = r.flag(VALIDATE_SIGNATURE, false);
        if production && validate_set && !validate_flag {
            r.warn(format!(
                "{VALIDATE_SIGNATURE}=false is ignored in production: signatures are always checked"
            ));
        }
        let twilio = TwilioConfig {
            account_sid: r.optional(ACCOUNT_SID, |v| {
                if is_sid(v, "AC") {
                    Ok(v.to_string())
                } else {
                    Err("must be AC followed by 32 hex digits".to_string())
                }
            }),
            auth_token: r.secret(AUTH_TOKEN),
            phone_number: r.optional(PHONE_NUMBER, |v| {
                phone::normalize(v)
                    .ok_or_else(|| "must be an E.164 number such as +15551234567".to_string())
            }),
            api_base: r.url(&API_BASE),
            validate_signature: validate_flag || production,
            webhook_shared_key: r.secret(WEBHOOK_SHARED_KEY),
        };
        if twilio.validate_signature && twilio.auth_token.is_none() {
            r.error(
                AUTH_TOKEN,
                format!("is required to check Twilio signatures ({VALIDATE_SIGNATURE} is on)"),
            );
        }
        if !twilio.validate_signature && twilio.webhook_shared_key.is_some() {
            r.warn(format!(
                "{WEBHOOK_SHARED_KEY} is set but {VALIDATE_SIGNATURE} is off: no signature is checked"
            ));
        }
        twilio
    }

    pub(super) fn report(&self, out: &mut Report) {
        out.optional(ACCOUNT_SID, self.account_sid.as_deref());
        out.secret(AUTH_TOKEN, &self.auth_token);
        out.optional(PHONE_NUMBER, self.phone_number.as_deref());
        out.value(API_BASE.name, &self.api_base);
        out.value(VALIDATE_SIGNATURE, self.validate_signature);
        out.secret(WEBHOOK_SHARED_KEY, &self.webhook_shared_key);
    }

    /// The variables production needs that are not set.
    pub(super) fn missing_for_production(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.account_sid.is_none() {
            missing.push(ACCOUNT_SID);
        }
        if self.phone_number.is_none() {
            missing.push(PHONE_NUMBER);
        }
        missing
    }

    pub(super) fn provider_urls(&self) -> Vec<(&'static str, &BaseUrl)> {
        vec![(API_BASE.name, &self.api_base)]
    }
}

/// Whether `text` is a Twilio SID: a two-letter prefix and 32 hex digits.
pub fn is_sid(text: &str, prefix: &str) -> bool {
    text.len() == 34 && text.starts_with(prefix) && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}
