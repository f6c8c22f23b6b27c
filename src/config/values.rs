//! Validated value types the configuration is made of: secrets that never print, public domain
//! names, provider base URLs, and request budgets. Each parser returns a message written for
//! the operator.

use std::fmt;

/// A credential. `Debug` and `Display` print `[redacted]`; only [`Secret::expose`] reveals it,
/// so a secret cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A public host name with an optional port, as Twilio reaches us: `voice.example.com` or
/// `voice.example.com:8443`. Stored lower-case; never carries a scheme or a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain(String);

impl Domain {
    pub fn parse(text: &str) -> Result<Domain, String> {
        let text = text.trim();
        if text.contains("://") {
            return Err(format!(
                "{text:?} has a scheme; give only the host name, e.g. voice.example.com"
            ));
        }
        if text.contains('/') {
            return Err(format!("{text:?} has a path; give only the host name"));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        if let Some(port) = port {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("{text:?} has an invalid port"));
            }
        }
        if !is_valid_host(host) {
            return Err(format!(
                "{text:?} is not a host name (letters, digits, '-' and '.')"
            ));
        }
        Ok(Domain(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `host` (from a `Host` or `X-Forwarded-Host` header) names this domain.
    pub fn matches(&self, host: &str) -> bool {
        self.0.eq_ignore_ascii_case(host.trim())
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fixed-window request budget per API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// 0 turns the window off (only by an explicit `0`, never by a typo).
    pub per_minute: u32,
    pub per_hour: u32,
}

fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A provider base URL such as `https://api.anthropic.com` or `ws://127.0.0.1:9001`: a scheme
/// from an allowed set, a host, an optional port and an optional path prefix, never a query.
/// A trailing `/` is dropped so paths can be appended with `format!("{base}/v1/…")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

impl BaseUrl {
    pub fn parse(text: &str, schemes: &[&str]) -> Result<BaseUrl, String> {
        let text = text.trim();
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "{text:?} is not a URL; expected {}://host[:port][/path]",
                schemes.join(" or ")
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!(
                "{text:?} uses {scheme}://; expected {}",
                schemes.join(" or ")
            ));
        }
        if rest.contains('?') || rest.contains('#') {
            return Err(format!("{text:?} must not carry a query or fragment"));
        }
        if rest.contains('@') {
            return Err(format!(
                "{text:?} must not carry credentials; use the API key variables"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(idx) => (&rest[..idx], rest[idx..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("{text:?} has an invalid host or port"))?;
        Ok(BaseUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_string(),
        })
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether traffic to this URL is encrypted (`https`, `wss`).
    pub fn is_tls(&self) -> bool {
        matches!(self.scheme.as_str(), "https" | "wss")
    }

    /// Whether the host is this machine (a simulator or a test fake).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self.host == "[::1]"
            || self
                .host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        let end = rest.find(']')?;
        let host = &authority[..end + 2];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok().filter(|p| *p != 0)?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse().ok().filter(|p| *p != 0)?)),
        None => (authority, None),
    };
    is_valid_host(host).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("sk-live-123");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose(), "sk-live-123");
    }

    #[test]
    fn domains() {
        assert_eq!(
            Domain::parse("Voice.Example.com").unwrap().as_str(),
            "voice.example.com"
        );
        assert_eq!(
            Domain::parse("voice.example.com:8443").unwrap().as_str(),
            "voice.example.com:8443"
        );
        assert!(Domain::parse("https://voice.example.com")
            .unwrap_err()
            .contains("scheme"));
        assert!(Domain::parse("voice.example.com/call").is_err());
        assert!(Domain::parse("voice.example.com:0").is_err());
        assert!(Domain::parse("voice..example.com").is_err());
        assert!(Domain::parse("evil.com\"><x").is_err());
        assert!(Domain::parse("").is_err());
        assert!(Domain::parse("voice.example.com")
            .unwrap()
            .matches("VOICE.example.com"));
    }

    #[test]
    fn base_urls() {
        let url = BaseUrl::parse("https://api.anthropic.com/", &["https", "http"]).unwrap();
        assert_eq!(url.to_string(), "https://api.anthropic.com");
        assert!(url.is_tls());
        assert!(!url.is_loopback());

        let url = BaseUrl::parse("ws://127.0.0.1:9001/prefix/", &["ws", "wss"]).unwrap();
        assert_eq!(url.to_string(), "ws://127.0.0.1:9001/prefix");
        assert_eq!(url.port(), Some(9001));
        assert!(url.is_loopback());
        assert!(!url.is_tls());

        let url = BaseUrl::parse("http://[::1]:8080", &["http"]).unwrap();
        assert!(url.is_loopback());
        assert_eq!(url.to_string(), "http://[::1]:8080");

        assert!(BaseUrl::parse("api.anthropic.com", &["https"]).is_err());
        assert!(BaseUrl::parse("ftp://x.example", &["https"])
            .unwrap_err()
            .contains("ftp://"));
        assert!(BaseUrl::parse("https://x.example/?a=1", &["https"]).is_err());
        assert!(BaseUrl::parse("https://user:pw@x.example", &["https"]).is_err());
        assert!(BaseUrl::parse("https://x.example:99999", &["https"]).is_err());
        assert!(BaseUrl::parse("https://", &["https"]).is_err());
    }
}
