//! The outbound section: the API key of `POST /call/outbound` (which also reads the records
//! API and `/metrics`), the read-only key for the dashboard, records and `/metrics`, the rate
//! limits, the countries it may dial, and how long an idempotent twin waits.

use std::time::Duration;

use super::read::{Reader, Report, Whole};
use super::{AppEnv, RateLimits, Secret};

const API_KEY: &str = "OUTBOUND_API_KEY";
const READ_API_KEY: &str = "READ_API_KEY";
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
/// Whether calls placed ask Twilio for answering-machine detection when the request does not
/// say (`machineDetection` in the body).
const MACHINE_DETECTION: &str = "OUTBOUND_MACHINE_DETECTION";
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
    /// Places calls (`POST /call/outbound`), deletes records, and reads everything the read
    /// key reads.
    pub api_key: Option<Secret>,
    /// Reads only: the dashboard's data, `GET /records*` and `/metrics`.
    pub read_api_key: Option<Secret>,
    pub rate_limits: RateLimits,
    pub allowed_countries: CountryAllowList,
    /// How long a request waits for an identical one in progress (same `Idempotency-Key`)
    /// before answering 409.
    pub idempotency_wait: Duration,
    /// Ask for answering-machine detection on calls whose request does not say
    /// (`OUTBOUND_MACHINE_DETECTION=on|off`, default off).
    pub machine_detection: bool,
}

impl OutboundConfig {
    pub(super) fn read(r: &mut Reader<'_>, app_env: AppEnv) -> OutboundConfig {
        let outbound = OutboundConfig {
            api_key: r.secret(API_KEY),
            read_api_key: r.secret(READ_API_KEY),
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
            machine_detection: r.parse(MACHINE_DETECTION, false, |v| {
                match v.to_ascii_lowercase().as_str() {
                    "on" => Ok(true),
                    "off" => Ok(false),
                    _ => Err(format!("must be on or off, got {v:?}")),
                }
            }),
        };
        for (name, key) in [
            (API_KEY, &outbound.api_key),
            (READ_API_KEY, &outbound.read_api_key),
        ] {
            if key
                .as_ref()
                .is_some_and(|k| k.expose().len() < MIN_API_KEY_CHARS)
            {
                r.error(
                    name,
                    format!("must be at least {MIN_API_KEY_CHARS} characters (generate one with: openssl rand -hex 32)"),
                );
            }
        }
        if let (Some(calls), Some(read)) = (&outbound.api_key, &outbound.read_api_key) {
            if calls.expose() == read.expose() {
                r.error(
                    READ_API_KEY,
                    format!("must differ from {API_KEY}: a read-only key that places calls is not read-only"),
                );
            }
        }
        if outbound.api_key.is_none() && app_env == AppEnv::Production {
            let off = match outbound.read_api_key {
                Some(_) => "/call/outbound and DELETE /records",
                None => "the records API, /metrics and /call/outbound",
            };
            r.warn(format!("{API_KEY} is not set: {off} will answer 503"));
        }
        outbound
    }

    pub(super) fn report(&self, out: &mut Report) {
        out.secret(API_KEY, &self.api_key);
        out.secret(READ_API_KEY, &self.read_api_key);
        out.value(RATE_LIMIT_PER_MIN.name, self.rate_limits.per_minute);
        out.value(RATE_LIMIT_PER_HOUR.name, self.rate_limits.per_hour);
        let countries = match &self.allowed_countries {
            CountryAllowList::Any => "*".to_string(),
            CountryAllowList::Only(codes) => codes.join(","),
        };
        out.value(ALLOWED_COUNTRY_CODES, countries);
        out.millis(IDEMPOTENCY_WAIT_MS.name, self.idempotency_wait);
        out.value(
            MACHINE_DETECTION,
            if self.machine_detection { "on" } else { "off" },
        );
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
