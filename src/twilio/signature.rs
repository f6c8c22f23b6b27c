//! Twilio request signatures (`X-Twilio-Signature`), pure computation and verification.
//!
//! Twilio signs `url + concat(sorted(name + value))` of the POST parameters with an HMAC,
//! base64-encoded, in `X-Twilio-Signature`. By default the HMAC is SHA-1 keyed by the account's
//! auth token. A webhook signed under a Webhook Rule carries
//! `X-Twilio-Webhooks-Signature-Settings: key=<sharedKeyId>,algorithm=<HMAC_SHA1|HMAC_SHA256>`
//! and is keyed by that SharedKey's secret instead; the signed string is the same. Like Twilio's
//! own libraries we accept the signature over the URL with its port removed or with the default
//! port added (`:443` for https, `:80` otherwise), because Twilio's side is inconsistent about
//! explicit ports. The facts and their official source: `PROTOCOLS.md` ("Twilio webhook signatures").

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// The header that carries the signature, in both modes.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
/// The header a webhook signed with a Webhook Rules SharedKey carries.
pub const SETTINGS_HEADER: &str = "X-Twilio-Webhooks-Signature-Settings";

/// An HMAC Twilio signs with, by the name the settings header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha1,
    HmacSha256,
}

impl Algorithm {
    /// `HMAC_SHA1` or `HMAC_SHA256`, in any case (the official library upper-cases the name).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        if name.eq_ignore_ascii_case("HMAC_SHA1") {
            Some(Algorithm::HmacSha1)
        } else if name.eq_ignore_ascii_case("HMAC_SHA256") {
            Some(Algorithm::HmacSha256)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha1 => "HMAC_SHA1",
            Algorithm::HmacSha256 => "HMAC_SHA256",
        }
    }

    /// The length of its MAC in bytes.
    fn output_len(self) -> usize {
        match self {
            Algorithm::HmacSha1 => 20,
            Algorithm::HmacSha256 => 32,
        }
    }
}

/// What a non-blank `X-Twilio-Webhooks-Signature-Settings` header says: the SharedKey's id
/// (informative: we hold one key) and the algorithm named, `HMAC_SHA1` when none is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKeySettings {
    pub key_id: Option<String>,
    pub algorithm: String,
}

/// Parses the settings header as the official library does: comma-separated `name=value`
/// parts, the first `algorithm` with a non-empty value wins, `HMAC_SHA1` without one. A
/// missing or blank header means the auth-token signature (`None`).
pub fn shared_key_settings(header: Option<&str>) -> Option<SharedKeySettings> {
    let header = header.filter(|h| !h.trim().is_empty())?;
    let field = |wanted: &str| {
        header.split(',').find_map(|part| {
            let (name, value) = part.split_once('=')?;
            (name.trim() == wanted && !value.trim().is_empty()).then(|| value.trim().to_string())
        })
    };
    Some(SharedKeySettings {
        key_id: field("key"),
        algorithm: field("algorithm").unwrap_or_else(|| Algorithm::HmacSha1.name().to_string()),
    })
}

/// The configuration variable holding the auth token (named in log reasons, never its value).
const AUTH_TOKEN_VAR: &str = "TWILIO_AUTH_TOKEN";
/// The configuration variable holding the Webhook Rules SharedKey secret.
pub use crate::config::WEBHOOK_SHARED_KEY as SHARED_KEY_VAR;

/// Why a request's signature was refused. `Display` is for the operator's log line and never
/// contains a secret or the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No `X-Twilio-Signature` header.
    Missing,
    /// The header is not base64 of a MAC of the algorithm's length.
    Malformed(Algorithm),
    /// The settings header names an algorithm we do not know (as the official library, we
    /// refuse rather than guess).
    UnsupportedAlgorithm(String),
    /// Signed with a SharedKey, and none is configured.
    MissingSharedKey(SharedKeySettings),
    /// Well-formed, but it matches none of the URLs we tried with the key named.
    Mismatch {
        key: &'static str,
        algorithm: Algorithm,
        tried: Vec<String>,
    },
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Missing => write!(f, "missing {SIGNATURE_HEADER} header"),
            SignatureError::Malformed(alg) => write!(
                f,
                "{SIGNATURE_HEADER} is not a base64 {}",
                alg.name()
            ),
            SignatureError::UnsupportedAlgorithm(alg) => write!(
                f,
                "{SETTINGS_HEADER} names algorithm {alg:?}; only HMAC_SHA1 and HMAC_SHA256 are verified"
            ),
            SignatureError::MissingSharedKey(settings) => write!(
                f,
                "request is signed with a Twilio Webhook Rules SharedKey ({SETTINGS_HEADER}: key {}, {}) but {SHARED_KEY_VAR} is not set; set it to that SharedKey's secret",
                settings.key_id.as_deref().unwrap_or("not named"),
                settings.algorithm
            ),
            SignatureError::Mismatch { key, algorithm, tried } => write!(
                f,
                "{} signature does not match {key} for {} (wrong {key}, or Twilio called another URL than the domain configured here)",
                algorithm.name(),
                tried.join(" or ")
            ),
        }
    }
}

/// The base64 signature Twilio would send for `url` and the POST `params` with the auth token.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    compute_with(Algorithm::HmacSha1, auth_token, url, params)
}

/// The base64 signature Twilio would send for `url` and `params`, keyed by `key` (the auth token
/// or a SharedKey secret, as UTF-8 bytes) with `algorithm`.
pub fn compute_with(
    algorithm: Algorithm,
    key: &str,
    url: &str,
    params: &[(String, String)],
) -> String {
    let bytes = match algorithm {
        Algorithm::HmacSha1 => {
            signed::<Hmac<Sha1>>(key, url, params).map(|m| m.finalize().into_bytes().to_vec())
        }
        Algorithm::HmacSha256 => {
            signed::<Hmac<Sha256>>(key, url, params).map(|m| m.finalize().into_bytes().to_vec())
        }
    };
    // HMAC takes keys of any length (a long one is hashed), so `signed` never fails.
    base64::engine::general_purpose::STANDARD.encode(bytes.unwrap_or_default())
}

/// The MAC over `url` and the sorted parameters; `None` only if the HMAC refused the key, which
/// HMAC never does.
fn signed<M: Mac + KeyInit>(key: &str, url: &str, params: &[(String, String)]) -> Option<M> {
    let mut mac = <M as KeyInit>::new_from_slice(key.as_bytes()).ok()?;
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
    Some(mac)
}

/// Whether `expected` is the MAC of `url` and `params` (constant-time comparison).
fn matches(
    algorithm: Algorithm,
    key: &str,
    url: &str,
    params: &[(String, String)],
    expected: &[u8],
) -> bool {
    match algorithm {
        Algorithm::HmacSha1 => {
            signed::<Hmac<Sha1>>(key, url, params).is_some_and(|m| m.verify_slice(expected).is_ok())
        }
        Algorithm::HmacSha256 => signed::<Hmac<Sha256>>(key, url, params)
            .is_some_and(|m| m.verify_slice(expected).is_ok()),
    }
}

/// Checks an auth-token HMAC-SHA1 `signature` against each URL in `urls` (each also with and
/// without its port) and succeeds if one matches. The comparison is constant-time.
pub fn verify(
    auth_token: &str,
    signature: Option<&str>,
    urls: &[String],
    params: &[(String, String)],
) -> Result<(), SignatureError> {
    verify_keyed(
        Algorithm::HmacSha1,
        (AUTH_TOKEN_VAR, auth_token),
        signature,
        urls,
        params,
    )
}

fn verify_keyed(
    algorithm: Algorithm,
    (key_name, key): (&'static str, &str),
    signature: Option<&str>,
    urls: &[String],
    params: &[(String, String)],
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::Missing)?;
    let expected = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| SignatureError::Malformed(algorithm))?;
    if expected.len() != algorithm.output_len() {
        return Err(SignatureError::Malformed(algorithm));
    }
    let mut tried = Vec::new();
    for url in urls {
        for candidate in port_variants(url) {
            if matches(algorithm, key, &candidate, params, &expected) {
                return Ok(());
            }
            if !tried.contains(&candidate) {
                tried.push(candidate);
            }
        }
    }
    Err(SignatureError::Mismatch {
        key: key_name,
        algorithm,
        tried,
    })
}

/// The secrets a webhook may be signed with.
#[derive(Clone, Copy)]
pub struct WebhookKeys<'a> {
    pub auth_token: &'a str,
    pub shared_key: Option<&'a str>,
}

/// Verifies a webhook as Twilio's libraries do: without a (non-blank) settings header, the
/// auth-token HMAC-SHA1 of [`verify`]; with one, the algorithm it names keyed by the SharedKey.
/// An unknown algorithm or a missing SharedKey is refused.
pub fn verify_webhook(
    keys: WebhookKeys<'_>,
    settings_header: Option<&str>,
    signature: Option<&str>,
    urls: &[String],
    params: &[(String, String)],
) -> Result<(), SignatureError> {
    let Some(settings) = shared_key_settings(settings_header) else {
        return verify(keys.auth_token, signature, urls, params);
    };
    let Some(algorithm) = Algorithm::from_name(&settings.algorithm) else {
        return Err(SignatureError::UnsupportedAlgorithm(settings.algorithm));
    };
    let Some(shared_key) = keys.shared_key else {
        return Err(SignatureError::MissingSharedKey(settings));
    };
    verify_keyed(
        algorithm,
        (SHARED_KEY_VAR, shared_key),
        signature,
        urls,
        params,
    )
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
            Err(SignatureError::Malformed(Algorithm::HmacSha1))
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
    fn shared_key_settings_are_read_as_the_official_library_does() {
        assert_eq!(shared_key_settings(None), None);
        assert_eq!(shared_key_settings(Some("  ")), None);
        assert_eq!(
            shared_key_settings(Some("key=webhooks_sharedkey_1, algorithm=HMAC_SHA256")),
            Some(SharedKeySettings {
                key_id: Some("webhooks_sharedkey_1".into()),
                algorithm: "HMAC_SHA256".into()
            })
        );
        // No algorithm (or an empty one): HMAC_SHA1, still keyed by the SharedKey.
        assert_eq!(
            shared_key_settings(Some("key=abc,algorithm=")).map(|s| s.algorithm),
            Some("HMAC_SHA1".to_string())
        );
        // The first non-empty algorithm wins; the value is everything after the first `=`.
        assert_eq!(
            shared_key_settings(Some("algorithm=a=b,algorithm=HMAC_SHA1")).map(|s| s.algorithm),
            Some("a=b".to_string())
        );
        assert_eq!(
            Algorithm::from_name("hmac_sha256"),
            Some(Algorithm::HmacSha256)
        );
        assert_eq!(Algorithm::from_name("HMAC_SHA512"), None);
    }

    // Computed with twilio 9.13.0: RequestValidator("12345").compute_signature(URL, params,
    // "HMAC_SHA256") for Twilio's documented example.
    const DOC_SHA256: &str = "Rmm4Vzj+Ky7JGoWXMCsZDZuHDszLr9xvdbvitrDr4/M=";

    #[test]
    fn hmac_sha256_matches_the_official_library_on_the_documented_example() {
        assert_eq!(
            compute_with(Algorithm::HmacSha256, TOKEN, URL, &doc_params()),
            DOC_SHA256
        );
        assert_eq!(
            compute_with(Algorithm::HmacSha1, TOKEN, URL, &doc_params()),
            compute(TOKEN, URL, &doc_params())
        );
    }

    const SHARED: &str = "shared-key-secret";
    const SHA256_SETTINGS: &str = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256";

    fn keys(shared_key: Option<&str>) -> WebhookKeys<'_> {
        WebhookKeys {
            auth_token: TOKEN,
            shared_key,
        }
    }

    #[test]
    fn a_settings_header_switches_to_the_shared_key_and_its_algorithm() {
        let urls = vec![URL.to_string()];
        let p = doc_params();
        let sha256 = compute_with(Algorithm::HmacSha256, SHARED, URL, &p);
        let check = |settings: Option<&str>, sig: &str| {
            verify_webhook(keys(Some(SHARED)), settings, Some(sig), &urls, &p)
        };
        assert_eq!(check(Some(SHA256_SETTINGS), &sha256), Ok(()));
        // Same secret, SHA-1 named (explicitly or by default).
        let sha1 = compute_with(Algorithm::HmacSha1, SHARED, URL, &p);
        assert_eq!(check(Some("key=k,algorithm=HMAC_SHA1"), &sha1), Ok(()));
        assert_eq!(check(Some("key=k"), &sha1), Ok(()));
        // The auth token's signature does not pass once the header says SharedKey.
        let by_token = compute(TOKEN, URL, &p);
        assert!(matches!(
            check(Some("key=k,algorithm=HMAC_SHA1"), &by_token),
            Err(SignatureError::Mismatch {
                key: SHARED_KEY_VAR,
                ..
            })
        ));
        // A SHA-1 MAC where SHA-256 is named is malformed (wrong length).
        assert_eq!(
            check(Some(SHA256_SETTINGS), &sha1),
            Err(SignatureError::Malformed(Algorithm::HmacSha256))
        );
        // Without the header: the auth-token path, unchanged.
        assert_eq!(check(None, &by_token), Ok(()));
        assert!(check(None, &sha1).is_err());
        let err = check(Some("algorithm=HMAC_SHA512"), &sha256).unwrap_err();
        assert_eq!(
            err,
            SignatureError::UnsupportedAlgorithm("HMAC_SHA512".into())
        );
    }

    #[test]
    fn a_shared_key_signature_without_a_configured_key_is_refused_and_says_why() {
        let p = doc_params();
        let sig = compute_with(Algorithm::HmacSha256, SHARED, URL, &p);
        let err = verify_webhook(
            keys(None),
            Some(SHA256_SETTINGS),
            Some(&sig),
            &[URL.to_string()],
            &p,
        )
        .unwrap_err();
        assert!(matches!(err, SignatureError::MissingSharedKey(_)));
        let text = err.to_string();
        assert!(
            text.contains(SHARED_KEY_VAR)
                && text.contains("webhooks_sharedkey_1")
                && text.contains("HMAC_SHA256"),
            "{text}"
        );
        assert!(!text.contains(&sig));
    }

    #[test]
    fn a_mismatch_names_the_key_but_never_its_value() {
        let p = doc_params();
        let sig = compute_with(Algorithm::HmacSha256, "wrong", URL, &p);
        let err = verify_webhook(
            keys(Some(SHARED)),
            Some(SHA256_SETTINGS),
            Some(&sig),
            &[URL.to_string()],
            &p,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(SHARED_KEY_VAR) && text.contains("HMAC_SHA256") && text.contains(URL),
            "{text}"
        );
        assert!(!text.contains(SHARED) && !text.contains(&sig));
    }
}
