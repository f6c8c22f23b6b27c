//! The server's configuration, read once from the environment (and an optional env file) into a
//! typed [`Config`] that is passed down by reference. Nothing reads `std::env` after this.
//!
//! Every variable is validated up front with its allowed range, and every problem is collected,
//! so an operator sees all of them in one run of `cotrackpro-voice check-config`. In production
//! the safe choices are forced (see [`AppEnv::Production`]).

mod env_file;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use crate::personas::{is_valid_voice_id, Role};
use crate::phone;

pub use env_file::EnvFileError;
pub use values::{BaseUrl, Domain, Secret};

/// The raw variables the configuration is built from: the env file's, overridden by the process
/// environment's (so `LOG_LEVEL=debug cotrackpro-voice serve --env-file …` does what it says).
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process environment, plus `env_file` underneath it when one is named.
    pub fn load(env_file: Option<&Path>) -> Result<Env, Vec<ConfigError>> {
        let mut env = Env::default();
        if let Some(path) = env_file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                vec![ConfigError::new(
                    "--env-file",
                    format!("cannot read {}: {err}", path.display()),
                )]
            })?;
            let pairs = env_file::parse(&text).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|err| ConfigError::new("--env-file", format!("{}: {err}", path.display())))
                    .collect::<Vec<_>>()
            })?;
            env.vars.extend(pairs);
        }
        // Variables whose value is not UTF-8 cannot be ours; they are skipped, not fatal.
        env.vars.extend(
            std::env::vars_os().filter_map(|(key, value)| {
                Some((key.into_string().ok()?, value.into_string().ok()?))
            }),
        );
        Ok(env)
    }

    /// An environment made of exactly these pairs (tests, embedding).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Sets one variable (tests, and the `demo` command wiring simulators in).
    pub fn set(&mut self, key: &str, value: &str) {
        self.vars.insert(key.to_string(), value.to_string());
    }

    /// The value of `key`; an empty value counts as unset, as in the original.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }
}

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

/// `APP_ENV`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    /// Twilio signatures are always checked, provider URLs must be TLS (or loopback), and the
    /// records and outbound APIs refuse to run without `OUTBOUND_API_KEY`.
    Production,
}

impl AppEnv {
    pub fn as_str(self) -> &'static str {
        match self {
            AppEnv::Development => "development",
            AppEnv::Production => "production",
        }
    }
}

/// `LOG_FORMAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, for journald and log shippers.
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub level: LevelFilter,
    pub format: LogFormat,
    /// False under systemd (`JOURNAL_STREAM` set): journald stamps every line itself.
    pub timestamps: bool,
}

/// The public names Twilio uses to reach us.
#[derive(Clone, Debug)]
pub struct Domains {
    /// Where webhooks arrive (`API_DOMAIN`, else `SERVER_DOMAIN`): signed URLs are rebuilt on it.
    pub api: Domain,
    /// Where the media stream connects (`WS_DOMAIN`, else `SERVER_DOMAIN`).
    pub ws: Domain,
}

impl Domains {
    /// Whether a `Host`/`X-Forwarded-Host` value names one of our configured domains.
    pub fn is_ours(&self, host: &str) -> bool {
        self.api.matches(host) || self.ws.matches(host)
    }
}

#[derive(Clone, Debug)]
pub struct TwilioConfig {
    pub account_sid: Option<String>,
    pub auth_token: Option<Secret>,
    pub phone_number: Option<String>,
    pub api_base: BaseUrl,
    pub validate_signature: bool,
}

#[derive(Clone, Debug)]
pub struct ElevenLabsConfig {
    pub api_key: Option<Secret>,
    pub model_id: String,
    pub api_base: BaseUrl,
    pub ws_base: BaseUrl,
    pub connect_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct AnthropicConfig {
    pub api_key: Option<Secret>,
    pub model: String,
    pub base_url: BaseUrl,
    /// Cap on a whole response.
    pub stream_timeout: Duration,
    /// Longest wait for the first words of a response, and for any read of the stream.
    pub first_token_timeout: Duration,
    pub max_tokens: u32,
    pub max_history_messages: usize,
}

#[derive(Clone, Debug)]
pub struct McpConfig {
    /// `None`: no tools server; the persona answers without tools.
    pub url: Option<BaseUrl>,
    pub token: Option<Secret>,
    pub timeout: Duration,
}

/// `OUTBOUND_ALLOWED_COUNTRY_CODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountryAllowList {
    /// `*`: any valid E.164 number.
    Any,
    /// ISO 3166 alpha-2 codes, upper-case.
    Only(Vec<String>),
}

/// A fixed-window request budget per API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// 0 turns the window off (only by an explicit `0`, never by a typo).
    pub per_minute: u32,
    pub per_hour: u32,
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

#[derive(Clone, Debug)]
pub struct RecordsConfig {
    pub dir: PathBuf,
    /// Days a record is kept; fractions allowed (for testing expiry).
    pub ttl_days: f64,
    pub rate_limits: RateLimits,
}

/// Per-number persona overrides (`INBOUND_PHONE_VOICE_MAP`), keyed by the dialled `To` number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberOverride {
    pub role: Option<Role>,
    pub voice_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CallsConfig {
    pub max_concurrent: usize,
    /// The persona used when `?role=` is missing or unknown.
    pub default_role: Role,
    /// Voice per role: the defaults with `VOICE_MAP` applied.
    pub voices: BTreeMap<Role, String>,
    pub number_overrides: BTreeMap<String, NumberOverride>,
    pub tuning: CallTuning,
}

/// How a live call behaves: barge-in, silence, limits. Every value is validated at start-up.
#[derive(Clone, Debug, PartialEq)]
pub struct CallTuning {
    /// A partial transcript longer than this many characters, while assistant audio plays,
    /// interrupts it (the original's rule: more than 3).
    pub barge_in_min_chars: usize,
    /// Caller silence after the assistant finished before "are you still there?".
    pub reprompt_after: Duration,
    /// Reprompts without an answer before a polite hang-up.
    pub max_reprompts: u32,
    /// The longest call; then a closing phrase and hang-up (the original's 2 hours).
    pub max_duration: Duration,
    /// No message from Twilio for this long means the connection is dead (it sends a media
    /// frame every 20 ms for the whole call).
    pub media_read_timeout: Duration,
    /// Tool rounds one reply may take before the model must answer in words.
    pub max_tool_rounds: u32,
    /// Speech-to-text: the silence that ends the caller's utterance, and the language.
    pub vad_silence_secs: f64,
    pub stt_language: String,
    /// Speech-to-text reconnects within one call before it is given up as lost.
    pub stt_reconnects: u32,
    /// Buffered text spoken anyway when the model pauses this long mid-sentence.
    pub sentence_idle_flush: Duration,
    /// Pre-rendered phrases (`generate-audio`); missing ones are spoken live.
    pub audio_dir: PathBuf,
    /// How long a shutdown waits for live calls to end.
    pub shutdown_drain: Duration,
    /// A call with no sign of the caller (speech, keys) this long is ended as `force-reaped`
    /// (the original's 15-minute reap; the reprompts normally end such a call long before).
    pub idle_reap: Duration,
}

impl CallsConfig {
    pub fn voice_for(&self, role: Role) -> &str {
        self.voices
            .get(&role)
            .map_or(role.default_voice_id(), String::as_str)
    }
}

/// Provider prices for cost estimates, in USD (env-overridable as prices change).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    pub claude_input_per_mtok: f64,
    pub claude_output_per_mtok: f64,
    pub claude_cache_write_per_mtok: f64,
    pub claude_cache_read_per_mtok: f64,
    pub tts_per_1k_chars: f64,
    pub stt_per_min: f64,
}

/// The prices the estimates use unless the environment says otherwise (the original's: Claude
/// Sonnet and ElevenLabs Flash v2.5 list prices).
pub const DEFAULT_PRICES: Prices = Prices {
    claude_input_per_mtok: 3.00,
    claude_output_per_mtok: 15.00,
    claude_cache_write_per_mtok: 3.75,
    claude_cache_read_per_mtok: 0.30,
    tts_per_1k_chars: 0.10,
    stt_per_min: 0.008,
};

/// The HTTP listener's limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub workers: usize,
    pub max_body_bytes: usize,
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
    pub outbound: OutboundConfig,
    pub records: RecordsConfig,
    pub cron_secret: Option<Secret>,
    pub calls: CallsConfig,
    pub prices: Prices,
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
        let mut r = Reader {
            env,
            errors: Vec::new(),
        };
        let mut warnings = Vec::new();

        let app_env = r.parse("APP_ENV", AppEnv::Development, |v| match v {
            "development" => Ok(AppEnv::Development),
            "production" => Ok(AppEnv::Production),
            _ => Err("must be development or production".to_string()),
        });
        let production = app_env == AppEnv::Production;

        let bind_addr = r.parse("BIND_ADDR", IpAddr::from([127, 0, 0, 1]), |v| {
            v.parse()
                .map_err(|_| "must be an IP address such as 127.0.0.1 or 0.0.0.0".to_string())
        });
        // 0 asks the OS for a free port (tests); the chosen port is logged at start-up.
        let http_port = r.whole("HTTP_PORT", 8080, 0, 65535) as u16;
        let media_port = r.whole("MEDIA_PORT", 8081, 0, 65535) as u16;
        if http_port == media_port && http_port != 0 {
            r.error("MEDIA_PORT", "must differ from HTTP_PORT");
        }
        let http = HttpLimits {
            workers: r.whole("HTTP_WORKERS", 8, 1, 256) as usize,
            max_body_bytes: r.whole("HTTP_MAX_BODY_BYTES", 64 * 1024, 1024, 10 * 1024 * 1024)
                as usize,
        };

        let domains = read_domains(&mut r);

        let log = LogConfig {
            level: r.parse("LOG_LEVEL", LevelFilter::Info, parse_level),
            format: r.parse("LOG_FORMAT", LogFormat::Text, |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("must be text or json".to_string()),
            }),
            timestamps: env.get("JOURNAL_STREAM").is_none(),
        };

        let (validate_flag, validate_set) = r.flag("VALIDATE_TWILIO_SIGNATURE", false);
        if production && validate_set && !validate_flag {
            warnings.push(
                "VALIDATE_TWILIO_SIGNATURE=false is ignored in production: signatures are always checked"
                    .to_string(),
            );
        }
        let twilio = TwilioConfig {
            account_sid: r.optional("TWILIO_ACCOUNT_SID", |v| {
                if is_sid(v, "AC") {
                    Ok(v.to_string())
                } else {
                    Err("must be AC followed by 32 hex digits".to_string())
                }
            }),
            auth_token: r.secret("TWILIO_AUTH_TOKEN"),
            phone_number: r.optional("TWILIO_PHONE_NUMBER", |v| {
                phone::normalize(v)
                    .ok_or_else(|| "must be an E.164 number such as +15551234567".to_string())
            }),
            api_base: r.url(
                "TWILIO_API_BASE",
                "https://api.twilio.com",
                &["https", "http"],
            ),
            validate_signature: validate_flag || production,
        };
        if twilio.validate_signature && twilio.auth_token.is_none() {
            r.error(
                "TWILIO_AUTH_TOKEN",
                "is required to check Twilio signatures (VALIDATE_TWILIO_SIGNATURE is on)",
            );
        }

        let elevenlabs = ElevenLabsConfig {
            api_key: r.secret("ELEVENLABS_API_KEY"),
            model_id: r.string("ELEVENLABS_MODEL_ID", "eleven_flash_v2_5"),
            api_base: r.url(
                "ELEVENLABS_API_BASE",
                "https://api.elevenlabs.io",
                &["https", "http"],
            ),
            ws_base: r.url(
                "ELEVENLABS_WS_BASE",
                "wss://api.elevenlabs.io",
                &["wss", "ws"],
            ),
            connect_timeout: r.millis("ELEVENLABS_CONNECT_TIMEOUT_MS", 10_000, 100, 60_000),
        };

        let anthropic = AnthropicConfig {
            api_key: r.secret("ANTHROPIC_API_KEY"),
            model: r.string("ANTHROPIC_MODEL", "claude-sonnet-4-5"),
            base_url: r.url(
                "ANTHROPIC_BASE_URL",
                "https://api.anthropic.com",
                &["https", "http"],
            ),
            stream_timeout: r.millis("ANTHROPIC_STREAM_TIMEOUT_MS", 45_000, 1_000, 600_000),
            first_token_timeout: r.millis("ANTHROPIC_FIRST_TOKEN_TIMEOUT_MS", 10_000, 200, 120_000),
            max_tokens: r.whole("ANTHROPIC_MAX_TOKENS", 512, 16, 8192) as u32,
            max_history_messages: r.whole("ANTHROPIC_MAX_HISTORY_MESSAGES", 40, 2, 400) as usize,
        };

        let mcp = McpConfig {
            url: r.optional("COTRACKPRO_MCP_URL", |v| {
                BaseUrl::parse(v, &["https", "http"])
            }),
            token: r.secret("COTRACKPRO_MCP_TOKEN"),
            timeout: r.millis("MCP_TOOL_TIMEOUT_MS", 10_000, 100, 120_000),
        };

        let outbound = OutboundConfig {
            api_key: r.secret("OUTBOUND_API_KEY"),
            rate_limits: RateLimits {
                per_minute: r.whole("OUTBOUND_RATE_LIMIT_PER_MIN", 30, 0, 100_000) as u32,
                per_hour: r.whole("OUTBOUND_RATE_LIMIT_PER_HOUR", 500, 0, 1_000_000) as u32,
            },
            allowed_countries: r.parse(
                "OUTBOUND_ALLOWED_COUNTRY_CODES",
                CountryAllowList::Only(vec!["US".to_string(), "CA".to_string()]),
                parse_country_list,
            ),
            idempotency_wait: r.millis("OUTBOUND_IDEMPOTENCY_WAIT_MS", 15_000, 100, 60_000),
        };
        if let Some(key) = &outbound.api_key {
            if key.expose().len() < 16 {
                r.error(
                    "OUTBOUND_API_KEY",
                    "must be at least 16 characters (generate one with: openssl rand -hex 32)",
                );
            }
        } else if production {
            warnings.push(
                "OUTBOUND_API_KEY is not set: the records API, /metrics and /call/outbound will answer 503"
                    .to_string(),
            );
        }

        let default_records_dir = env
            .get("STATE_DIRECTORY")
            .and_then(|dirs| dirs.split(':').next())
            .unwrap_or("./data");
        let records = RecordsConfig {
            dir: PathBuf::from(r.string("RECORDS_DIR", default_records_dir)),
            ttl_days: r.float("RECORDS_TTL_DAYS", 365.0, 0.0001, 36_500.0),
            rate_limits: RateLimits {
                per_minute: r.whole("RECORDS_RATE_LIMIT_PER_MIN", 120, 0, 100_000) as u32,
                per_hour: r.whole("RECORDS_RATE_LIMIT_PER_HOUR", 2000, 0, 1_000_000) as u32,
            },
        };

        let cron_secret = r.secret("CRON_SECRET");
        if production && cron_secret.is_none() {
            warnings.push(
                "CRON_SECRET is not set: GET /api/cron/cost-rollup will answer 503 in production (the systemd timer does not need it)"
                    .to_string(),
            );
        }

        let calls = CallsConfig {
            max_concurrent: read_max_concurrent(&mut r),
            default_role: r.parse("DEFAULT_ROLE", Role::Parent, |v| {
                Role::parse(v).ok_or_else(|| format!("must be one of {}", Role::allowed_list()))
            }),
            voices: r.parse("VOICE_MAP", BTreeMap::new(), parse_voice_map),
            number_overrides: r.parse(
                "INBOUND_PHONE_VOICE_MAP",
                BTreeMap::new(),
                parse_number_overrides,
            ),
            tuning: CallTuning {
                barge_in_min_chars: r.whole("BARGE_IN_MIN_CHARS", 3, 0, 200) as usize,
                reprompt_after: r.millis("REPROMPT_AFTER_MS", 12_000, 1_000, 600_000),
                max_reprompts: r.whole("MAX_REPROMPTS", 2, 0, 20) as u32,
                max_duration: Duration::from_secs(r.whole("MAX_CALL_SECS", 7200, 1, 86_400)),
                media_read_timeout: r.millis("MEDIA_READ_TIMEOUT_MS", 5_000, 500, 120_000),
                max_tool_rounds: r.whole("MAX_TOOL_ROUNDS", 3, 0, 10) as u32,
                vad_silence_secs: r.float("STT_VAD_SILENCE_SECS", 0.8, 0.3, 3.0),
                stt_language: r.parse("STT_LANGUAGE_CODE", "en".to_string(), |v| {
                    let ok = (2..=8).contains(&v.len())
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                    if ok {
                        Ok(v.to_string())
                    } else {
                        Err(format!(
                            "must be a language code such as en or es, got {v:?}"
                        ))
                    }
                }),
                stt_reconnects: r.whole("STT_MAX_RECONNECTS", 3, 0, 20) as u32,
                sentence_idle_flush: r.millis("SENTENCE_IDLE_FLUSH_MS", 500, 50, 10_000),
                // Under systemd next to the records (the sandbox's one writable place, where
                // `generate-audio --env-file …` run by the operator can put it), else ./audio.
                audio_dir: PathBuf::from(
                    r.string(
                        "AUDIO_DIR",
                        &env.get("STATE_DIRECTORY")
                            .and_then(|dirs| dirs.split(':').next())
                            .map_or_else(|| "audio".to_string(), |d| format!("{d}/audio")),
                    ),
                ),
                shutdown_drain: Duration::from_secs(r.whole("SHUTDOWN_DRAIN_SECS", 30, 0, 3600)),
                idle_reap: Duration::from_secs(r.whole("IDLE_REAP_SECS", 900, 1, 86_400)),
            },
        };

        let d = DEFAULT_PRICES;
        let prices = Prices {
            claude_input_per_mtok: r.float(
                "CLAUDE_INPUT_PRICE_PER_MTOK",
                d.claude_input_per_mtok,
                0.0,
                1000.0,
            ),
            claude_output_per_mtok: r.float(
                "CLAUDE_OUTPUT_PRICE_PER_MTOK",
                d.claude_output_per_mtok,
                0.0,
                1000.0,
            ),
            claude_cache_write_per_mtok: r.float(
                "CLAUDE_CACHE_WRITE_PRICE_PER_MTOK",
                d.claude_cache_write_per_mtok,
                0.0,
                1000.0,
            ),
            claude_cache_read_per_mtok: r.float(
                "CLAUDE_CACHE_READ_PRICE_PER_MTOK",
                d.claude_cache_read_per_mtok,
                0.0,
                1000.0,
            ),
            tts_per_1k_chars: r.float(
                "ELEVENLABS_TTS_PRICE_PER_1K_CHARS",
                d.tts_per_1k_chars,
                0.0,
                100.0,
            ),
            stt_per_min: r.float("ELEVENLABS_STT_PRICE_PER_MIN", d.stt_per_min, 0.0, 100.0),
        };

        if production {
            for (key, missing) in [
                ("TWILIO_ACCOUNT_SID", twilio.account_sid.is_none()),
                ("TWILIO_PHONE_NUMBER", twilio.phone_number.is_none()),
                ("ELEVENLABS_API_KEY", elevenlabs.api_key.is_none()),
                ("ANTHROPIC_API_KEY", anthropic.api_key.is_none()),
            ] {
                if missing && !r.has_error(key) {
                    r.error(key, "is required in production");
                }
            }
            let provider_urls = [
                ("TWILIO_API_BASE", &twilio.api_base),
                ("ELEVENLABS_API_BASE", &elevenlabs.api_base),
                ("ELEVENLABS_WS_BASE", &elevenlabs.ws_base),
                ("ANTHROPIC_BASE_URL", &anthropic.base_url),
            ];
            let mcp_url = mcp.url.as_ref().map(|url| ("COTRACKPRO_MCP_URL", url));
            for (key, url) in provider_urls.into_iter().chain(mcp_url) {
                if !url.is_tls() && !url.is_loopback() {
                    r.error(
                        key,
                        format!("{url} is not encrypted; production needs https:// or wss:// (plain text is allowed only to this machine)"),
                    );
                }
            }
        }

        for (key, advice) in NOT_CARRIED_OVER {
            if env.get(key).is_some() {
                warnings.push(format!("{key} is ignored here: {advice}"));
            }
        }

        let (Some(domains), true) = (domains, r.errors.is_empty()) else {
            return Err(r.errors);
        };
        Ok(Config {
            app_env,
            bind_addr,
            http_port,
            media_port,
            http,
            domains,
            log,
            twilio,
            elevenlabs,
            anthropic,
            mcp,
            outbound,
            records,
            cron_secret,
            calls,
            prices,
            warnings,
        })
    }

    /// The effective configuration as `(variable, value)` rows for `check-config`, secrets
    /// shown only as set or not set.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        fn secret(value: &Option<Secret>) -> String {
            match value {
                Some(_) => "[set, redacted]".to_string(),
                None => "[not set]".to_string(),
            }
        }
        fn opt(value: Option<&str>) -> String {
            value.map_or_else(|| "[not set]".to_string(), str::to_string)
        }
        fn ms(value: Duration) -> String {
            value.as_millis().to_string()
        }
        let countries = match &self.outbound.allowed_countries {
            CountryAllowList::Any => "*".to_string(),
            CountryAllowList::Only(codes) => codes.join(","),
        };
        let voices = self
            .calls
            .voices
            .iter()
            .map(|(role, voice)| format!("{role}={voice}"))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            ("APP_ENV", self.app_env.as_str().to_string()),
            ("BIND_ADDR", self.bind_addr.to_string()),
            ("HTTP_PORT", self.http_port.to_string()),
            ("MEDIA_PORT", self.media_port.to_string()),
            ("HTTP_WORKERS", self.http.workers.to_string()),
            ("HTTP_MAX_BODY_BYTES", self.http.max_body_bytes.to_string()),
            ("API_DOMAIN", self.domains.api.to_string()),
            ("WS_DOMAIN", self.domains.ws.to_string()),
            ("LOG_LEVEL", self.log.level.to_string().to_ascii_lowercase()),
            (
                "LOG_FORMAT",
                match self.log.format {
                    LogFormat::Text => "text".to_string(),
                    LogFormat::Json => "json".to_string(),
                },
            ),
            (
                "TWILIO_ACCOUNT_SID",
                opt(self.twilio.account_sid.as_deref()),
            ),
            ("TWILIO_AUTH_TOKEN", secret(&self.twilio.auth_token)),
            (
                "TWILIO_PHONE_NUMBER",
                opt(self.twilio.phone_number.as_deref()),
            ),
            ("TWILIO_API_BASE", self.twilio.api_base.to_string()),
            (
                "VALIDATE_TWILIO_SIGNATURE",
                self.twilio.validate_signature.to_string(),
            ),
            ("ELEVENLABS_API_KEY", secret(&self.elevenlabs.api_key)),
            ("ELEVENLABS_MODEL_ID", self.elevenlabs.model_id.clone()),
            ("ELEVENLABS_API_BASE", self.elevenlabs.api_base.to_string()),
            ("ELEVENLABS_WS_BASE", self.elevenlabs.ws_base.to_string()),
            (
                "ELEVENLABS_CONNECT_TIMEOUT_MS",
                ms(self.elevenlabs.connect_timeout),
            ),
            ("ANTHROPIC_API_KEY", secret(&self.anthropic.api_key)),
            ("ANTHROPIC_MODEL", self.anthropic.model.clone()),
            ("ANTHROPIC_BASE_URL", self.anthropic.base_url.to_string()),
            (
                "ANTHROPIC_STREAM_TIMEOUT_MS",
                ms(self.anthropic.stream_timeout),
            ),
            (
                "ANTHROPIC_FIRST_TOKEN_TIMEOUT_MS",
                ms(self.anthropic.first_token_timeout),
            ),
            (
                "ANTHROPIC_MAX_TOKENS",
                self.anthropic.max_tokens.to_string(),
            ),
            (
                "ANTHROPIC_MAX_HISTORY_MESSAGES",
                self.anthropic.max_history_messages.to_string(),
            ),
            (
                "COTRACKPRO_MCP_URL",
                self.mcp
                    .url
                    .as_ref()
                    .map_or_else(|| "[not set: no tools]".to_string(), ToString::to_string),
            ),
            ("COTRACKPRO_MCP_TOKEN", secret(&self.mcp.token)),
            ("MCP_TOOL_TIMEOUT_MS", ms(self.mcp.timeout)),
            ("OUTBOUND_API_KEY", secret(&self.outbound.api_key)),
            (
                "OUTBOUND_RATE_LIMIT_PER_MIN",
                self.outbound.rate_limits.per_minute.to_string(),
            ),
            (
                "OUTBOUND_RATE_LIMIT_PER_HOUR",
                self.outbound.rate_limits.per_hour.to_string(),
            ),
            ("OUTBOUND_ALLOWED_COUNTRY_CODES", countries),
            (
                "OUTBOUND_IDEMPOTENCY_WAIT_MS",
                ms(self.outbound.idempotency_wait),
            ),
            ("RECORDS_DIR", self.records.dir.display().to_string()),
            ("RECORDS_TTL_DAYS", self.records.ttl_days.to_string()),
            (
                "RECORDS_RATE_LIMIT_PER_MIN",
                self.records.rate_limits.per_minute.to_string(),
            ),
            (
                "RECORDS_RATE_LIMIT_PER_HOUR",
                self.records.rate_limits.per_hour.to_string(),
            ),
            ("CRON_SECRET", secret(&self.cron_secret)),
            (
                "MAX_CONCURRENT_CALLS",
                self.calls.max_concurrent.to_string(),
            ),
            ("DEFAULT_ROLE", self.calls.default_role.to_string()),
            (
                "BARGE_IN_MIN_CHARS",
                self.calls.tuning.barge_in_min_chars.to_string(),
            ),
            ("REPROMPT_AFTER_MS", ms(self.calls.tuning.reprompt_after)),
            ("MAX_REPROMPTS", self.calls.tuning.max_reprompts.to_string()),
            (
                "MAX_CALL_SECS",
                self.calls.tuning.max_duration.as_secs().to_string(),
            ),
            (
                "MEDIA_READ_TIMEOUT_MS",
                ms(self.calls.tuning.media_read_timeout),
            ),
            (
                "MAX_TOOL_ROUNDS",
                self.calls.tuning.max_tool_rounds.to_string(),
            ),
            (
                "STT_VAD_SILENCE_SECS",
                self.calls.tuning.vad_silence_secs.to_string(),
            ),
            ("STT_LANGUAGE_CODE", self.calls.tuning.stt_language.clone()),
            (
                "STT_MAX_RECONNECTS",
                self.calls.tuning.stt_reconnects.to_string(),
            ),
            (
                "SENTENCE_IDLE_FLUSH_MS",
                ms(self.calls.tuning.sentence_idle_flush),
            ),
            (
                "AUDIO_DIR",
                self.calls.tuning.audio_dir.display().to_string(),
            ),
            (
                "SHUTDOWN_DRAIN_SECS",
                self.calls.tuning.shutdown_drain.as_secs().to_string(),
            ),
            (
                "IDLE_REAP_SECS",
                self.calls.tuning.idle_reap.as_secs().to_string(),
            ),
            ("VOICE_MAP", voices),
            (
                "INBOUND_PHONE_VOICE_MAP",
                format!("{} number(s)", self.calls.number_overrides.len()),
            ),
            (
                "CLAUDE_INPUT_PRICE_PER_MTOK",
                self.prices.claude_input_per_mtok.to_string(),
            ),
            (
                "CLAUDE_OUTPUT_PRICE_PER_MTOK",
                self.prices.claude_output_per_mtok.to_string(),
            ),
            (
                "CLAUDE_CACHE_WRITE_PRICE_PER_MTOK",
                self.prices.claude_cache_write_per_mtok.to_string(),
            ),
            (
                "CLAUDE_CACHE_READ_PRICE_PER_MTOK",
                self.prices.claude_cache_read_per_mtok.to_string(),
            ),
            (
                "ELEVENLABS_TTS_PRICE_PER_1K_CHARS",
                self.prices.tts_per_1k_chars.to_string(),
            ),
            (
                "ELEVENLABS_STT_PRICE_PER_MIN",
                self.prices.stt_per_min.to_string(),
            ),
        ]
    }
}

/// Collects errors while reading; every getter returns a usable placeholder on error so that
/// reading goes on and all problems are reported together.
struct Reader<'a> {
    env: &'a Env,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(key, message));
    }

    fn has_error(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key == key)
    }

    fn parse<T>(&mut self, key: &str, default: T, f: impl FnOnce(&str) -> Result<T, String>) -> T {
        match self.env.get(key) {
            None => default,
            Some(raw) => match f(raw.trim()) {
                Ok(value) => value,
                Err(message) => {
                    self.error(key, message);
                    default
                }
            },
        }
    }

    fn optional<T>(&mut self, key: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let raw = self.env.get(key)?.trim();
        match f(raw) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    fn string(&mut self, key: &str, default: &str) -> String {
        self.env.get(key).unwrap_or(default).trim().to_string()
    }

    fn secret(&mut self, key: &str) -> Option<Secret> {
        // Secrets are taken as written (no trimming inside), but surrounding whitespace from a
        // copy-paste is never part of a key.
        self.env.get(key).map(|v| Secret::new(v.trim()))
    }

    fn whole(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        self.parse(key, default, |v| match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "must be a whole number from {min} to {max}, got {v:?}"
            )),
        })
    }

    fn millis(&mut self, key: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.whole(key, default, min, max))
    }

    fn float(&mut self, key: &str, default: f64, min: f64, max: f64) -> f64 {
        self.parse(key, default, |v| match v.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= min && n <= max => Ok(n),
            _ => Err(format!("must be a number from {min} to {max}, got {v:?}")),
        })
    }

    /// A boolean and whether it was set explicitly.
    fn flag(&mut self, key: &str, default: bool) -> (bool, bool) {
        let set = self.env.get(key).is_some();
        let value = self.parse(key, default, |v| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("must be true or false, got {v:?}")),
        });
        (value, set)
    }

    fn url(&mut self, key: &str, default: &str, schemes: &[&str]) -> BaseUrl {
        let fallback = BaseUrl::parse(default, schemes).expect("built-in default URLs are valid");
        self.parse(key, fallback, |v| BaseUrl::parse(v, schemes))
    }
}

fn read_domains(r: &mut Reader<'_>) -> Option<Domains> {
    let server = r.optional("SERVER_DOMAIN", Domain::parse);
    let api = r.optional("API_DOMAIN", Domain::parse);
    let ws = r.optional("WS_DOMAIN", Domain::parse);
    let api = api.or_else(|| server.clone());
    let ws = ws.or(server);
    for (key, value) in [("API_DOMAIN", &api), ("WS_DOMAIN", &ws)] {
        if value.is_none() && !r.has_error(key) && !r.has_error("SERVER_DOMAIN") {
            r.error(
                key,
                format!("is required: set SERVER_DOMAIN (the public host name Twilio reaches, e.g. voice.example.com), or {key}"),
            );
        }
    }
    Some(Domains { api: api?, ws: ws? })
}

fn read_max_concurrent(r: &mut Reader<'_>) -> usize {
    // MAX_CONCURRENT_SESSIONS is the original's name; both are accepted.
    let new = r.env.get("MAX_CONCURRENT_CALLS").is_some();
    let old = r.env.get("MAX_CONCURRENT_SESSIONS").is_some();
    let calls = r.whole("MAX_CONCURRENT_CALLS", 200, 1, 10_000) as usize;
    let sessions = r.whole("MAX_CONCURRENT_SESSIONS", 200, 1, 10_000) as usize;
    match (new, old) {
        (true, true) if calls != sessions => {
            r.error(
                "MAX_CONCURRENT_CALLS",
                "and MAX_CONCURRENT_SESSIONS disagree; set only MAX_CONCURRENT_CALLS",
            );
            calls
        }
        (false, true) => sessions,
        _ => calls,
    }
}

fn parse_level(v: &str) -> Result<LevelFilter, String> {
    match v.to_ascii_lowercase().as_str() {
        "trace" => Ok(LevelFilter::Trace),
        "debug" => Ok(LevelFilter::Debug),
        "info" => Ok(LevelFilter::Info),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "error" | "fatal" => Ok(LevelFilter::Error),
        "off" | "silent" => Ok(LevelFilter::Off),
        _ => Err(format!(
            "must be one of trace, debug, info, warn, error, off; got {v:?}"
        )),
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

fn parse_voice_map(v: &str) -> Result<BTreeMap<Role, String>, String> {
    let map: BTreeMap<String, String> = serde_json::from_str(v).map_err(|err| {
        format!("must be a JSON object of role to voice id, e.g. {{\"parent\":\"EXAVITQu4vr4xnSDxMaL\"}}: {err}")
    })?;
    let mut voices = BTreeMap::new();
    let mut problems = Vec::new();
    for (role_name, voice) in map {
        match Role::parse(&role_name) {
            None => problems.push(format!("unknown role {role_name:?}")),
            Some(_) if !is_valid_voice_id(&voice) => problems.push(format!(
                "voice id {voice:?} for {role_name} is not 16-32 letters and digits"
            )),
            Some(role) => {
                voices.insert(role, voice);
            }
        }
    }
    if problems.is_empty() {
        Ok(voices)
    } else {
        Err(format!(
            "{} (roles: {})",
            problems.join("; "),
            Role::allowed_list()
        ))
    }
}

fn parse_number_overrides(v: &str) -> Result<BTreeMap<String, NumberOverride>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Entry {
        role: Option<String>,
        voice_id: Option<String>,
    }
    let map: BTreeMap<String, Entry> = serde_json::from_str(v).map_err(|err| {
        format!("must be a JSON object like {{\"+15551234567\":{{\"role\":\"attorney\",\"voiceId\":\"…\"}}}}: {err}")
    })?;
    let mut overrides = BTreeMap::new();
    let mut problems = Vec::new();
    for (number, entry) in map {
        let Some(normalized) = phone::normalize(&number) else {
            problems.push(format!("{number:?} is not an E.164 number"));
            continue;
        };
        let role = match entry.role.as_deref().map(Role::parse) {
            Some(None) => {
                problems.push(format!("{number}: unknown role"));
                continue;
            }
            Some(role) => role,
            None => None,
        };
        if let Some(voice) = &entry.voice_id {
            if !is_valid_voice_id(voice) {
                problems.push(format!(
                    "{number}: voice id is not 16-32 letters and digits"
                ));
                continue;
            }
        }
        if role.is_none() && entry.voice_id.is_none() {
            problems.push(format!("{number}: give a role, a voiceId or both"));
            continue;
        }
        let value = NumberOverride {
            role,
            voice_id: entry.voice_id,
        };
        if overrides.insert(normalized.clone(), value).is_some() {
            problems.push(format!("{normalized} is listed twice"));
        }
    }
    if problems.is_empty() {
        Ok(overrides)
    } else {
        Err(problems.join("; "))
    }
}

/// Whether `text` is a Twilio SID: a two-letter prefix and 32 hex digits.
pub fn is_sid(text: &str, prefix: &str) -> bool {
    text.len() == 34 && text.starts_with(prefix) && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests;
