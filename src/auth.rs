//! Bearer-token checks for the operator APIs (records, outbound, the cron trigger): a positive,
//! constant-time match against the configured key, or a refusal that says why.

use crate::config::{AppEnv, Secret};
use crate::http::Reply;

/// The outcome of checking an `Authorization` header against a configured key.
#[derive(Debug, PartialEq, Eq)]
pub enum BearerCheck {
    /// The header carries the key.
    Allowed,
    /// No key is configured and this is development: open, as the original was.
    OpenInDevelopment,
    /// Refused; the reply to send.
    Refused(Reply),
}

/// Checks `authorization` against `key`. With no key configured, production refuses to run
/// the API at all (503) and development lets requests through.
pub fn check_bearer(
    authorization: Option<&str>,
    key: Option<&Secret>,
    app_env: AppEnv,
    key_name: &str,
) -> BearerCheck {
    let Some(key) = key else {
        return match app_env {
            AppEnv::Development => BearerCheck::OpenInDevelopment,
            AppEnv::Production => BearerCheck::Refused(Reply::error_with_details(
                503,
                "Server misconfigured",
                &format!("{key_name} is required in production"),
            )),
        };
    };
    if bearer_matches(authorization, key.expose()) {
        BearerCheck::Allowed
    } else {
        BearerCheck::Refused(
            Reply::error(401, "Unauthorized").with_header("WWW-Authenticate", "Bearer"),
        )
    }
}

/// Whether `header` is exactly `Bearer <expected>`. The comparison takes the same time
/// wherever the first difference is (only the length can be learned from timing).
pub fn bearer_matches(header: Option<&str>, expected: &str) -> bool {
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    constant_time_eq(token.as_bytes(), expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_matches() {
        let key = "k3y-0123456789abcdef";
        assert!(bearer_matches(Some("Bearer k3y-0123456789abcdef"), key));
        for bad in [
            None,
            Some(""),
            Some("k3y-0123456789abcdef"),
            Some("bearer k3y-0123456789abcdef"),
            Some("Bearer  k3y-0123456789abcdef"),
            Some("Bearer k3y-0123456789abcdeF"),
            Some("Bearer k3y-0123456789abcde"),
            Some("Bearer k3y-0123456789abcdef "),
        ] {
            assert!(!bearer_matches(bad, key), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_key_is_open_only_in_development() {
        assert_eq!(
            check_bearer(None, None, AppEnv::Development, "OUTBOUND_API_KEY"),
            BearerCheck::OpenInDevelopment
        );
        let BearerCheck::Refused(reply) = check_bearer(
            Some("Bearer x"),
            None,
            AppEnv::Production,
            "OUTBOUND_API_KEY",
        ) else {
            panic!("production without a key must refuse");
        };
        assert_eq!(reply.status, 503);
        assert!(reply
            .body_text()
            .contains("OUTBOUND_API_KEY is required in production"));
    }

    #[test]
    fn a_wrong_key_is_401_with_a_challenge() {
        let key = Secret::new("right-key-0123456789");
        let BearerCheck::Refused(reply) =
            check_bearer(Some("Bearer wrong"), Some(&key), AppEnv::Production, "K")
        else {
            panic!("must refuse");
        };
        assert_eq!(reply.status, 401);
        assert!(reply
            .headers
            .contains(&("WWW-Authenticate", "Bearer".to_string())));
        assert_eq!(
            check_bearer(
                Some("Bearer right-key-0123456789"),
                Some(&key),
                AppEnv::Production,
                "K"
            ),
            BearerCheck::Allowed
        );
    }
}
