//! Twilio request signatures (`X-Twilio-Signature`), pure computation and verification.
//!
//! Twilio signs `url + concat(sorted(name + value))` of the POST parameters with HMAC-SHA1
//! keyed by the account's auth token, base64-encoded. Like Twilio's own libraries we accept the
//! signature over the URL with its port removed or with the default port added (`:443` for
//! https, `:80` otherwise), because Twilio's side is inconsistent about explicit ports.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Why a request's signature was refused. `Display` is for the operator's log line and never
/// contains the auth token or the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No `X-Twilio-Signature` header.
    Missing,
    /// The header is not base64 of a 20-byte HMAC-SHA1.
    Malformed,
    /// Signed with a Twilio SharedKey algorithm we do not verify (named in
    /// `X-Twilio-Webhooks-Signature-Settings`).
    UnsupportedAlgorithm(String),
    /// Well-formed, but it matches none of the URLs we tried.
    Mismatch { tried: Vec<String> },
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Missing => f.write_str("missing X-Twilio-Signature header"),
            SignatureError::Malformed => {
                f.write_str("X-Twilio-Signature is not a base64 HMAC-SHA1")
            }
            SignatureError::UnsupportedAlgorithm(alg) => write!(
                f,
                "request is signed with {alg} (a Twilio SharedKey); only auth-token HMAC-SHA1 is verified"
            ),
            SignatureError::Mismatch { tried } => write!(
                f,
                "signature does not match the auth token for {} (wrong TWILIO_AUTH_TOKEN, or Twilio called another URL than the domain configured here)",
                tried.join(" or ")
            ),
        }
    }
}

/// The base64 signature Twilio would send for `url` and the POST `params`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    // Sorted by name, then by value, duplicates once: what Twilio's libraries do.
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Checks `signature` against each URL in `urls` (each also with and without its port) and
/// succeeds if one matches. The comparison is constant-time.
pub fn verify(
    auth_token: &str,
    signature: Option<&str>,
    urls: &[String],
    params: &[(String, String)],
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::Missing)?;
    let expected = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| SignatureError::Malformed)?;
    if expected.len() != 20 {
        return Err(SignatureError::Malformed);
    }
    let mut tried = Vec::new();
    for url in urls {
        for candidate in port_variants(url) {
            if mac(auth_token, &candidate, params)
                .verify_slice(&expected)
                .is_ok()
            {
                return Ok(());
            }
            if !tried.contains(&candidate) {
                tried.push(candidate);
            }
        }
    }
    Err(SignatureError::Mismatch { tried })
}

/// The signing algorithm a request declares in `X-Twilio-Webhooks-Signature-Settings`
/// (`key=…,algorithm=HMAC_SHA256`); no header means the auth-token HMAC-SHA1.
pub fn declared_algorithm(settings_header: Option<&str>) -> Option<String> {
    settings_header?.split(',').find_map(|part| {
        let (name, value) = part.split_once('=')?;
        (name.trim() == "algorithm" && !value.trim().is_empty()).then(|| value.trim().to_string())
    })
}

/// `url` without its port and with the scheme's default port, as Twilio's libraries try.
/// A URL without a port gives itself first.
pub fn port_variants(url: &str) -> [String; 2] {
    let Some((scheme, rest)) = url.split_once("://") else {
        return [url.to_string(), url.to_string()];
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let without = format!("{scheme}://{host}{tail}");
    let with = if host.len() == authority.len() {
        let port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        format!("{scheme}://{host}:{port}{tail}")
    } else {
        url.to_string()
    };
    [without, with]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // The worked example from Twilio's security documentation.
    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    fn doc_params() -> Vec<(String, String)> {
        params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn matches_twilios_documented_example() {
        assert_eq!(
            compute(TOKEN, URL, &doc_params()),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn parameter_order_does_not_matter_but_values_do() {
        let mut reversed = doc_params();
        reversed.reverse();
        assert_eq!(
            compute(TOKEN, URL, &reversed),
            compute(TOKEN, URL, &doc_params())
        );
        let mut changed = doc_params();
        changed[2].1 = "9999".into();
        assert_ne!(
            compute(TOKEN, URL, &changed),
            compute(TOKEN, URL, &doc_params())
        );
    }

    #[test]
    fn verify_accepts_the_right_signature_only() {
        let sig = compute(TOKEN, URL, &doc_params());
        let urls = vec![URL.to_string()];
        assert_eq!(verify(TOKEN, Some(&sig), &urls, &doc_params()), Ok(()));
        assert_eq!(
            verify(TOKEN, None, &urls, &doc_params()),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(TOKEN, Some("not base64!"), &urls, &doc_params()),
            Err(SignatureError::Malformed)
        );
        let err = verify("wrong", Some(&sig), &urls, &doc_params()).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }));
        let text = err.to_string();
        assert!(text.contains("https://mycompany.com/myapp.php?foo=1&bar=2"));
        assert!(!text.contains(TOKEN) && !text.contains(&sig));
    }

    #[test]
    fn explicit_default_port_is_tolerated_both_ways() {
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let sig = compute(TOKEN, with_port, &doc_params());
        assert_eq!(
            verify(TOKEN, Some(&sig), &[URL.to_string()], &doc_params()),
            Ok(())
        );
        let sig = compute(TOKEN, URL, &doc_params());
        assert_eq!(
            verify(TOKEN, Some(&sig), &[with_port.to_string()], &doc_params()),
            Ok(())
        );
    }

    #[test]
    fn port_variants_follow_twilios_libraries() {
        assert_eq!(
            port_variants("https://h.example/a?b=1"),
            [
                "https://h.example/a?b=1".to_string(),
                "https://h.example:443/a?b=1".to_string()
            ]
        );
        assert_eq!(
            port_variants("http://h.example"),
            [
                "http://h.example".to_string(),
                "http://h.example:80".to_string()
            ]
        );
        assert_eq!(
            port_variants("https://h.example:8443/a"),
            [
                "https://h.example/a".to_string(),
                "https://h.example:8443/a".to_string()
            ]
        );
    }

    #[test]
    fn declared_algorithm_is_read_from_the_settings_header() {
        assert_eq!(declared_algorithm(None), None);
        assert_eq!(
            declared_algorithm(Some("key=webhooks_sharedkey_1, algorithm=HMAC_SHA256")).as_deref(),
            Some("HMAC_SHA256")
        );
        assert_eq!(declared_algorithm(Some("key=abc")), None);
    }
}
