//! The server's configuration, read once from the environment (and an optional env file) into a
//! typed [`Config`] that is passed down by reference. Nothing reads `std::env` after this.
//!
//! Every variable is validated up front with its allowed range, and every problem is collected,
//! so an operator sees all of them in one run of `cotrackpro-voice check-config`. In production
//! the safe choices are forced (see [`AppEnv::Production`]).
//!
//! Each section (`server`, `twilio`, `elevenlabs`, `anthropic`, `mcp`, `tls`, `outbound`, `records`,
//! `calls`, `prices`) names its variables once, with their defaults and ranges, and both reads
//! and reports them; this module composes the sections and holds the rules that span them.

mod anthropic;
mod calls;
mod elevenlabs;
mod env;
mod env_file;
pub mod limits;
mod mcp;
mod outbound;
mod prices;
mod read;
mod records;
mod server;
mod tls;
mod transfer;
mod twilio;
mod values;

use std::fmt;
use std::net::IpAddr;

pub use anthropic::AnthropicConfig;
pub use calls::{
    default_max_concurrent, CallTuning, CallsConfig, NumberOverride, TurnEndMode, CALLS_PER_CORE,
};
pub use elevenlabs::ElevenLabsConfig;
pub use env::Env;
pub use env_file::EnvFileError;
pub use mcp::McpConfig;
pub use outbound::{CountryAllowList, OutboundConfig};
pub use prices::{Prices, DEFAULT_PRICES};
pub use records::RecordsConfig;
pub use server::{AppEnv, Domains, HttpLimits, LogConfig, LogFormat, SystemdEnv};
pub use tls::ProviderTlsConfig;
pub use transfer::{TransferConfig, DEFAULT_TRANSFER_PHRASE};
pub use twilio::{is_sid, TwilioConfig, WEBHOOK_SHARED_KEY};
pub use values::{BaseUrl, Domain, RateLimits, Secret};

use read::{Reader, Report};
use server::Server;

/// One problem with one variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything the server needs to know, validated. Built by [`Config::from_env`].
#[derive(Clone, Debug)]
pub struct Config {
    pub app_env: AppEnv,
    pub bind_addr: IpAddr,
    pub http_port: u16,
    pub media_port: u16,
    pub http: HttpLimits,
    pub domains: Domains,
    pub log: LogConfig,
    pub twilio: TwilioConfig,
    pub elevenlabs: ElevenLabsConfig,
    pub anthropic: AnthropicConfig,
    pub mcp: McpConfig,
    pub provider_tls: ProviderTlsConfig,
    pub outbound: OutboundConfig,
    pub records: RecordsConfig,
    pub cron_secret: Option<Secret>,
    pub calls: CallsConfig,
    pub prices: Prices,
    /// What systemd asked for (`NOTIFY_SOCKET`, `WATCHDOG_USEC`); not listed by `check-config`.
    pub systemd: SystemdEnv,
    /// Things that are allowed but probably not what the operator meant.
    pub warnings: Vec<String>,
}

/// Variables the original read that mean nothing on one VM, with what to do instead.
const NOT_CARRIED_OVER: &[(&str, &str)] = &[
    ("NODE_ENV", "use APP_ENV=development|production"),
    (
        "PORT",
        "use HTTP_PORT (webhooks) and MEDIA_PORT (media stream)",
    ),
    (
        "DYNAMO_ENABLED",
        "records are JSON-lines files under RECORDS_DIR",
    ),
    (
        "DYNAMO_TABLE_NAME",
        "records are JSON-lines files under RECORDS_DIR",
    ),
    (
        "DYNAMO_MAX_RETRIES",
        "records are JSON-lines files under RECORDS_DIR",
    ),
    ("AWS_REGION", "nothing here talks to AWS"),
    (
        "KV_BACKEND",
        "rate limits and idempotency keys are kept in-process",
    ),
    (
        "KV_URL",
        "rate limits and idempotency keys are kept in-process",
    ),
    (
        "KV_TOKEN",
        "rate limits and idempotency keys are kept in-process",
    ),
    ("DASHBOARD_API_KEY", "the dashboard uses OUTBOUND_API_KEY"),
];

impl Config {
    /// Validates `env` into a configuration, or returns every problem found.
    pub fn from_env(env: &Env) -> Result<Config, Vec<ConfigError>> {
        let mut r = Reader::new(env);
        let config = Config::read(&mut r);
        let (errors, warnings) = r.finish();
        match config {
            Some(config) if errors.is_empty() => Ok(Config { warnings, ..config }),
            _ => Err(errors),
        }
    }

    /// Reads every section in the order `check-config` lists them, then applies the rules that
    /// span sections. `None` when there is no usable domain (that problem is in `r`).
    fn read(r: &mut Reader<'_>) -> Option<Config> {
        let server = Server::read(r);
        let app_env = server.app_env;
        let twilio = TwilioConfig::read(r, app_env);
        let elevenlabs = ElevenLabsConfig::read(r);
        let anthropic = AnthropicConfig::read(r);
        let mcp = McpConfig::read(r);
        let provider_tls = ProviderTlsConfig::read(r);
        let outbound = OutboundConfig::read(r, app_env);
        let records = RecordsConfig::read(r);
        let cron_secret = records::read_cron_secret(r, app_env);
        let calls = CallsConfig::read(r);
        let prices = Prices::read(r);

        if app_env == AppEnv::Production {
            let missing = [
                twilio.missing_for_production(),
                elevenlabs.missing_for_production(),
                anthropic.missing_for_production(),
            ];
            for key in missing.concat() {
                if !r.has_error(key) {
                    r.error(key, "is required in production");
                }
            }
            let provider_urls = [
                twilio.provider_urls(),
                elevenlabs.provider_urls(),
                anthropic.provider_urls(),
                mcp.provider_urls(),
            ];
            for (key, url) in provider_urls.concat() {
                if !url.is_tls() && !url.is_loopback() {
                    r.error(
                        key,
                        format!("{url} is not encrypted; production needs https:// or wss:// (plain text is allowed only to this machine)"),
                    );
                }
            }
        }

        for (key, advice) in NOT_CARRIED_OVER {
            if r.is_set(key) {
                r.warn(format!("{key} is ignored here: {advice}"));
            }
        }

        Some(Config {
            app_env,
            bind_addr: server.bind_addr,
            http_port: server.http_port,
            media_port: server.media_port,
            http: server.http,
            domains: server.domains?,
            log: server.log,
            twilio,
            elevenlabs,
            anthropic,
            mcp,
            provider_tls,
            outbound,
            records,
            cron_secret,
            calls,
            prices,
            systemd: server.systemd,
            warnings: Vec::new(),
        })
    }

    /// The effective configuration as `(variable, value)` rows for `check-config`, secrets
    /// shown only as set or not set.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        let mut out = Report::default();
        Server::report(self, &mut out);
        self.twilio.report(&mut out);
        self.elevenlabs.report(&mut out);
        self.anthropic.report(&mut out);
        self.mcp.report(&mut out);
        self.provider_tls.report(&mut out);
        self.outbound.report(&mut out);
        self.records.report(&mut out);
        records::report_cron_secret(&self.cron_secret, &mut out);
        self.calls.report(&mut out);
        self.prices.report(&mut out);
        out.into_rows()
    }
}

#[cfg(test)]
mod tests;
