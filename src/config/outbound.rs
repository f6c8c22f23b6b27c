//! The outbound section: the API key of `POST /call/outbound` (and of the records API and
//! `/metrics`), its rate limits, the countries it may dial, and how long an idempotent twin
//! waits.

use std::time::Duration;

use super::read::{Reader, Report, Whole};
use super::{AppEnv, RateLimits, Secret};

const API_KEY: &str = "OUTBOUND_API_KEY";
const RATE_LIMIT_PER_MIN: Whole = Whole {
    name: "OUTBOUND_RATE_LIMIT_PER_MIN",
    default: 30,
    min: 0,
    max: 100_000,
};
const RATE_LIMIT_PER_HOUR: Whole = Whole {
    name: "OUTBOUND_RATE_LIMIT_PER_HOUR",
    default: 500,
    min: 0,
    max: 1_000_000,
};
const ALLOWED_COUNTRY_CODES: &str = "OUTBOUND_ALLOWED_COUNTRY_CODES";
const IDEMPOTENCY_WAIT_MS: Whole = Whole {
    name: "OUTBOUND_IDEMPOTENCY_WAIT_MS",
    default: 15_000,
    min: 100,
    max: 60_000,
};
/// A shorter key can be guessed by trying.
const MIN_API_KEY_CHARS: usize = 16;

/// `OUTBOUND_ALLOWED_COUNTRY_CODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountryAllowList {
    /// `*`: any valid E.164 number.
    Any,
    /// ISO 3166 alpha-2 codes, upper-case.
    Only(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct OutboundConfig {
    pub api_key: Option<Secret>,
    pub rate_limits: RateLimits,
    pub allowed_countries: CountryAllowList,
    /// How long a request waits for an identical one in progress (same `Idempotency-Key`)
    /// before answering 409.
    pub idempotency_wait: Duration,
}

impl OutboundConfig {
    pub(super) fn read(r: &mut Reader<'_>, app_env: AppEnv) -> OutboundConfig {
        let outbound = OutboundConfig {
            api_key: r.secret(API_KEY),
            rate_limits: RateLimits {
                // The ranges make these casts lossless.
                per_minute: r.whole(&RATE_LIMIT_PER_MIN) as u32,
                per_hour: r.whole(&RATE_LIMIT_PER_HOUR) as u32,
            },
            allowed_countries: r.parse(
                ALLOWED_COUNTRY_CODES,
                CountryAllowList::Only(vec!["US".to_string(), "CA".to_string()]),
                parse_country_list,
            ),
            idempotency_wait: r.millis(&IDEMPOTENCY_WAIT_MS),
        };
        if let Some(key) = &outbound.api_key {
            if key.expose().len() < MIN_API_KEY_CHARS {
                r.error(
                    API_KEY,
                    format!("must be at least {MIN_API_KEY_CHARS} characters (generate one with: openssl rand -hex 32)"),
                );
            }
        } else if app_env == AppEnv::Production {
            r.warn(format!(
                "{API_KEY} is not set: the records API, /metrics and /call/outbound will answer 503"
            ));
        }
        outbound
    }

    pub(super) fn report(&self, out: &mut Report) {
        out.secret(API_KEY, &self.api_key);
        out.value(RATE_LIMIT_PER_MIN.name, self.rate_limits.per_minute);
        out.value(RATE_LIMIT_PER_HOUR.name, self.rate_limits.per_hour);
        let countries = match &self.allowed_countries {
            CountryAllowList::Any => "*".to_string(),
            CountryAllowList::Only(codes) => codes.join(","),
        };
        out.value(ALLOWED_COUNTRY_CODES, countries);
        out.millis(IDEMPOTENCY_WAIT_MS.name, self.idempotency_wait);
    }
}

fn parse_country_list(v: &str) -> Result<CountryAllowList, String> {
    if v == "*" {
        return Ok(CountryAllowList::Any);
    }
    let mut codes = Vec::new();
    for code in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "{code:?} is not a two-letter country code (e.g. US,CA), and * allows every country"
            ));
        }
        let code = code.to_ascii_uppercase();
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    if codes.is_empty() {
        return Err("lists no country; use e.g. US,CA (or * for every country)".to_string());
    }
    Ok(CountryAllowList::Only(codes))
}
