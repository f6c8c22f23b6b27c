//! Bearer-token checks for the operator APIs (records, outbound, the cron trigger): a positive,
//! constant-time match against the configured key, or a refusal that says why. The HTTP reply
//! for a refusal is built by `http` (`Reply::auth_refused`).
//!
//! Two keys have roles ([`Access`]): `READ_API_KEY` reads (the dashboard's data, `GET /records*`,
//! `/metrics`); `OUTBOUND_API_KEY` places calls, deletes records, and reads too, so deployments
//! from before the read key keep working.

use std::fmt;

use crate::config::{AppEnv, Secret};

/// The outcome of checking an `Authorization` header against a configured key.
#[derive(Debug, PartialEq, Eq)]
pub enum BearerCheck {
    /// The header carries the key.
    Allowed,
    /// No key is configured and this is development: open, as the original was.
    OpenInDevelopment,
    /// Refused, and why.
    Refused(AuthError),
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No key is configured and this is production: the API is off rather than open.
    KeyNotConfigured {
        /// The variable that would configure it (`OUTBOUND_API_KEY`, `CRON_SECRET`).
        key_name: &'static str,
    },
    /// The `Authorization` header is missing or does not carry the key.
    Wrong,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::KeyNotConfigured { key_name } => {
                write!(f, "{key_name} is required in production")
            }
            AuthError::Wrong => f.write_str("missing or wrong Bearer key"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Checks `authorization` against `key`. With no key configured, production refuses to run
/// the API at all (503) and development lets requests through.
pub fn check_bearer(
    authorization: Option<&str>,
    key: Option<&Secret>,
    app_env: AppEnv,
    key_name: &'static str,
) -> BearerCheck {
    let Some(key) = key else {
        return match app_env {
            AppEnv::Development => BearerCheck::OpenInDevelopment,
            AppEnv::Production => BearerCheck::Refused(AuthError::KeyNotConfigured { key_name }),
        };
    };
    if bearer_matches(authorization, key.expose()) {
        BearerCheck::Allowed
    } else {
        BearerCheck::Refused(AuthError::Wrong)
    }
}

/// What a request needs a key for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading records and metrics: the read key or the calls key.
    Read,
    /// Changing something (placing a call, deleting a record): the calls key only.
    Write,
}

impl Access {
    /// What a request with this HTTP method to the records API or `/metrics` needs: `GET` and
    /// `HEAD` read; anything else (`DELETE /records/{sid}`) writes.
    pub fn for_method(method: &str) -> Access {
        match method {
            "GET" | "HEAD" => Access::Read,
            _ => Access::Write,
        }
    }
}

/// Checks `authorization` for `access`: the calls key (`OUTBOUND_API_KEY`) allows both, the
/// read key (`READ_API_KEY`) reads only. Both keys are compared, in constant time, whichever
/// matches, so timing does not tell which key a guess was close to. With neither key that
/// could allow it configured: open in development, refused (503) in production.
pub fn check_access(
    authorization: Option<&str>,
    calls_key: Option<&Secret>,
    read_key: Option<&Secret>,
    access: Access,
    app_env: AppEnv,
) -> BearerCheck {
    let read_key = read_key.filter(|_| access == Access::Read);
    if calls_key.is_none() && read_key.is_none() {
        return match app_env {
            AppEnv::Development => BearerCheck::OpenInDevelopment,
            AppEnv::Production => BearerCheck::Refused(AuthError::KeyNotConfigured {
                key_name: match access {
                    Access::Read => "OUTBOUND_API_KEY or READ_API_KEY",
                    Access::Write => "OUTBOUND_API_KEY",
                },
            }),
        };
    }
    let calls = calls_key.is_some_and(|k| bearer_matches(authorization, k.expose()));
    let read = read_key.is_some_and(|k| bearer_matches(authorization, k.expose()));
    if calls | read {
        BearerCheck::Allowed
    } else {
        BearerCheck::Refused(AuthError::Wrong)
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
    use subtle::ConstantTimeEq;
    // Unequal lengths are unequal at once; equal ones are compared byte by byte to the end.
    a.ct_eq(b).into()
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
    fn the_read_key_reads_and_the_calls_key_reads_and_writes() {
        let calls = Secret::new("calls-key-0123456789");
        let read = Secret::new("read-key-0123456789ab");
        let check = |header: &str, access| {
            check_access(
                Some(header),
                Some(&calls),
                Some(&read),
                access,
                AppEnv::Production,
            )
        };
        let refused = BearerCheck::Refused(AuthError::Wrong);
        assert_eq!(
            check("Bearer read-key-0123456789ab", Access::Read),
            BearerCheck::Allowed
        );
        assert_eq!(
            check("Bearer read-key-0123456789ab", Access::Write),
            refused
        );
        assert_eq!(
            check("Bearer calls-key-0123456789", Access::Read),
            BearerCheck::Allowed
        );
        assert_eq!(
            check("Bearer calls-key-0123456789", Access::Write),
            BearerCheck::Allowed
        );
        for wrong in [
            "Bearer read-key-0123456789aX",
            "Bearer ",
            "read-key-0123456789ab",
        ] {
            assert_eq!(check(wrong, Access::Read), refused, "{wrong}");
        }
        // Only the read key configured: it reads, and writing is off (503) in production.
        assert_eq!(
            check_access(
                Some("Bearer read-key-0123456789ab"),
                None,
                Some(&read),
                Access::Read,
                AppEnv::Production
            ),
            BearerCheck::Allowed
        );
        assert_eq!(
            check_access(
                Some("Bearer read-key-0123456789ab"),
                None,
                Some(&read),
                Access::Write,
                AppEnv::Production
            ),
            BearerCheck::Refused(AuthError::KeyNotConfigured {
                key_name: "OUTBOUND_API_KEY"
            })
        );
        assert_eq!(Access::for_method("GET"), Access::Read);
        assert_eq!(Access::for_method("HEAD"), Access::Read);
        assert_eq!(Access::for_method("DELETE"), Access::Write);
    }

    #[test]
    fn a_missing_key_is_open_only_in_development() {
        assert_eq!(
            check_bearer(None, None, AppEnv::Development, "OUTBOUND_API_KEY"),
            BearerCheck::OpenInDevelopment
        );
        let refused = check_bearer(
            Some("Bearer x"),
            None,
            AppEnv::Production,
            "OUTBOUND_API_KEY",
        );
        let expected = AuthError::KeyNotConfigured {
            key_name: "OUTBOUND_API_KEY",
        };
        assert_eq!(refused, BearerCheck::Refused(expected));
        assert_eq!(
            expected.to_string(),
            "OUTBOUND_API_KEY is required in production"
        );
    }

    #[test]
    fn a_wrong_or_missing_key_is_refused_and_the_right_one_allowed() {
        let key = Secret::new("right-key-0123456789");
        for header in [Some("Bearer wrong"), None] {
            assert_eq!(
                check_bearer(header, Some(&key), AppEnv::Development, "K"),
                BearerCheck::Refused(AuthError::Wrong)
            );
        }
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
