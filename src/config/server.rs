//! The server section: `APP_ENV`, the listeners (address, ports, HTTP limits), the public
//! domains Twilio reaches us on, and logging. Its values are [`Config`]'s top-level fields.

use std::net::IpAddr;
use std::time::Duration;

use log::LevelFilter;

use super::read::{Reader, Report, Whole};
use super::{Config, Domain};

const APP_ENV: &str = "APP_ENV";
const BIND_ADDR: &str = "BIND_ADDR";
// 0 asks the OS for a free port (tests); the chosen port is logged at start-up.
const HTTP_PORT: Whole = Whole {
    name: "HTTP_PORT",
    default: 8080,
    min: 0,
    max: 65535,
};
const MEDIA_PORT: Whole = Whole {
    name: "MEDIA_PORT",
    default: 8081,
    min: 0,
    max: 65535,
};
const HTTP_WORKERS: Whole = Whole {
    name: "HTTP_WORKERS",
    default: 8,
    min: 1,
    max: 256,
};
const HTTP_MAX_BODY_BYTES: Whole = Whole {
    name: "HTTP_MAX_BODY_BYTES",
    default: 64 * 1024,
    min: 1024,
    max: 10 * 1024 * 1024,
};
/// Open webhook connections at most; past it a connection is answered 503 and closed at once.
/// Each takes one descriptor: the unit's LimitNOFILE= counts them (src/config/limits.rs).
const HTTP_MAX_CONNECTIONS: Whole = Whole {
    name: "HTTP_MAX_CONNECTIONS",
    default: super::limits::DEFAULT_HTTP_MAX_CONNECTIONS as u64,
    min: 16,
    max: 65536,
};
/// The reverse proxies whose `X-Forwarded-For` the access log and the media port's flood
/// limits believe.
const TRUSTED_PROXY: &str = "TRUSTED_PROXY";
/// `TRUSTED_PROXY`'s default: the documented deployment's TLS proxy runs on this machine
/// (Caddy, with `BIND_ADDR=127.0.0.1`). Without it every media stream would come from one
/// source, the proxy, and share one source's flood limit.
const DEFAULT_TRUSTED_PROXIES: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
];
/// The `TRUSTED_PROXY` value that trusts no proxy (an empty value means unset: the default).
const NO_PROXY: &str = "none";
/// The fallback for both domains below.
const SERVER_DOMAIN: &str = "SERVER_DOMAIN";
const API_DOMAIN: &str = "API_DOMAIN";
const WS_DOMAIN: &str = "WS_DOMAIN";
const LOG_LEVEL: &str = "LOG_LEVEL";
const LOG_FORMAT: &str = "LOG_FORMAT";
/// Set by systemd for a service whose output goes to the journal.
const JOURNAL_STREAM: &str = "JOURNAL_STREAM";
/// Set by systemd for a `Type=notify` service: where `READY=1` and the rest go.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Set by systemd when the unit has `WatchdogSec=`: the interval, and the process it is for.
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
const WATCHDOG_PID: &str = "WATCHDOG_PID";

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

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub level: LevelFilter,
    pub format: LogFormat,
    /// False under systemd (`JOURNAL_STREAM` set): journald stamps every line itself.
    pub timestamps: bool,
    /// `JOURNAL_STREAM` (`device:inode` of the journal's socket): when it is stderr's, lines
    /// start with a `<N>` priority for journald.
    pub journal_stream: Option<String>,
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

/// The HTTP listener's limits.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub workers: usize,
    pub max_body_bytes: usize,
    /// `HTTP_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `TRUSTED_PROXY`: peers whose `X-Forwarded-For` names the client, for the access log
    /// and the media port alike (`http::forwarded_client`). Empty: the peer's own address is
    /// the client.
    pub trusted_proxies: Vec<IpAddr>,
}

/// What systemd asked of the process through its environment (none of it is configuration an
/// operator writes; `check-config` does not list it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemdEnv {
    /// `NOTIFY_SOCKET`: a path, or an abstract socket name starting with `@`.
    pub notify_socket: Option<String>,
    /// `WATCHDOG_USEC`, when set, above zero, and meant for this process (`WATCHDOG_PID`
    /// unset or ours).
    pub watchdog: Option<Duration>,
}

/// The server section as read, before its values move into [`Config`]'s top-level fields.
pub(super) struct Server {
    pub app_env: AppEnv,
    pub bind_addr: IpAddr,
    pub http_port: u16,
    pub media_port: u16,
    pub http: HttpLimits,
    /// `None` when no usable domain was given (the problem is already reported).
    pub domains: Option<Domains>,
    pub log: LogConfig,
    pub systemd: SystemdEnv,
}

impl Server {
    pub fn read(r: &mut Reader<'_>) -> Server {
        let app_env = r.parse(APP_ENV, AppEnv::Development, |v| match v {
            "development" => Ok(AppEnv::Development),
            "production" => Ok(AppEnv::Production),
            _ => Err("must be development or production".to_string()),
        });
        let bind_addr = r.parse(BIND_ADDR, IpAddr::from([127, 0, 0, 1]), |v| {
            v.parse()
                .map_err(|_| "must be an IP address such as 127.0.0.1 or 0.0.0.0".to_string())
        });
        // The ranges make these casts lossless.
        let http_port = r.whole(&HTTP_PORT) as u16;
        let media_port = r.whole(&MEDIA_PORT) as u16;
        if http_port == media_port && http_port != 0 {
            r.error(
                MEDIA_PORT.name,
                format!("must differ from {}", HTTP_PORT.name),
            );
        }
        let http = HttpLimits {
            workers: r.whole(&HTTP_WORKERS) as usize,
            max_body_bytes: r.whole(&HTTP_MAX_BODY_BYTES) as usize,
            max_connections: r.whole(&HTTP_MAX_CONNECTIONS) as usize,
            trusted_proxies: r.parse(
                TRUSTED_PROXY,
                DEFAULT_TRUSTED_PROXIES.to_vec(),
                parse_addresses,
            ),
        };
        let domains = read_domains(r);
        let log = LogConfig {
            level: r.parse(LOG_LEVEL, LevelFilter::Info, parse_level),
            format: r.parse(LOG_FORMAT, LogFormat::Text, |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("must be text or json".to_string()),
            }),
            timestamps: !r.is_set(JOURNAL_STREAM),
            journal_stream: r.raw(JOURNAL_STREAM).map(str::to_string),
        };
        let systemd = read_systemd(r, std::process::id());
        Server {
            app_env,
            bind_addr,
            http_port,
            media_port,
            http,
            domains,
            log,
            systemd,
        }
    }

    /// Reports the section from where it lives in `config`.
    pub fn report(config: &Config, out: &mut Report) {
        out.value(APP_ENV, config.app_env.as_str());
        out.value(BIND_ADDR, config.bind_addr);
        out.value(HTTP_PORT.name, config.http_port);
        out.value(MEDIA_PORT.name, config.media_port);
        out.value(HTTP_WORKERS.name, config.http.workers);
        out.value(HTTP_MAX_BODY_BYTES.name, config.http.max_body_bytes);
        out.value(HTTP_MAX_CONNECTIONS.name, config.http.max_connections);
        let proxies: Vec<String> = config
            .http
            .trusted_proxies
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        out.value(
            TRUSTED_PROXY,
            if proxies.is_empty() {
                format!("{NO_PROXY} (the peer address is the client)")
            } else {
                proxies.join(",")
            },
        );
        out.value(API_DOMAIN, &config.domains.api);
        out.value(WS_DOMAIN, &config.domains.ws);
        out.value(LOG_LEVEL, config.log.level.to_string().to_ascii_lowercase());
        out.value(LOG_FORMAT, config.log.format.as_str());
    }
}

/// systemd's variables. They come from systemd, not an operator, so a value that does not
/// parse is not a configuration error: the feature is off, as without the variable.
fn read_systemd(r: &mut Reader<'_>, our_pid: u32) -> SystemdEnv {
    let notify_socket = r.raw(NOTIFY_SOCKET).map(str::to_string);
    let for_us = r
        .raw(WATCHDOG_PID)
        .is_none_or(|pid| pid.trim().parse() == Ok(our_pid));
    let watchdog = r
        .raw(WATCHDOG_USEC)
        .and_then(|usec| usec.trim().parse::<u64>().ok())
        .filter(|&usec| usec > 0 && for_us)
        .map(Duration::from_micros);
    SystemdEnv {
        notify_socket,
        watchdog,
    }
}

fn read_domains(r: &mut Reader<'_>) -> Option<Domains> {
    let server = r.optional(SERVER_DOMAIN, Domain::parse);
    let api = r.optional(API_DOMAIN, Domain::parse);
    let ws = r.optional(WS_DOMAIN, Domain::parse);
    let api = api.or_else(|| server.clone());
    let ws = ws.or(server);
    for (key, value) in [(API_DOMAIN, &api), (WS_DOMAIN, &ws)] {
        if value.is_none() && !r.has_error(key) && !r.has_error(SERVER_DOMAIN) {
            r.error(
                key,
                format!("is required: set {SERVER_DOMAIN} (the public host name Twilio reaches, e.g. voice.example.com), or {key}"),
            );
        }
    }
    Some(Domains { api: api?, ws: ws? })
}

/// `TRUSTED_PROXY`: IP addresses, comma-separated (`127.0.0.1,::1`), or `none`. Addresses, not
/// names or ranges: the check runs on every request and must not resolve anything.
fn parse_addresses(v: &str) -> Result<Vec<IpAddr>, String> {
    if v.eq_ignore_ascii_case(NO_PROXY) {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse().map_err(|_| {
                format!(
                    "{a:?} is not an IP address (list addresses, comma-separated, or {NO_PROXY})"
                )
            })
        })
        .collect()
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
