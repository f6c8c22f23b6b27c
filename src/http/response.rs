//! What a route answers, as plain data: status, content type, body, extra headers. Turned into a
//! response on the wire (with `X-Request-Id`) in one place, [`Reply::into_bytes`].

use super::wire;
use crate::auth::AuthError;
use crate::ids::RequestId;
use crate::rate_limit::Window;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

pub const JSON: &str = "application/json; charset=utf-8";
pub const XML: &str = "text/xml; charset=utf-8";

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: JSON,
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// The small JSON error every failing route answers with: `{"error": "…"}`.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, &serde_json::json!({ "error": message }))
    }

    /// `{"error": "…", "details": "…"}`, for errors that need an explanation.
    pub fn error_with_details(status: u16, message: &str, details: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({ "error": message, "details": details }),
        )
    }

    pub fn xml(body: String) -> Reply {
        Reply {
            status: 200,
            content_type: XML,
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }

    /// A reply without a body (204 and the like).
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// The refusal of an operator API: 503 when production has no key configured, else 401
    /// with a Bearer challenge.
    pub fn auth_refused(err: AuthError) -> Reply {
        match err {
            AuthError::KeyNotConfigured { .. } => {
                Reply::error_with_details(503, "Server misconfigured", &err.to_string())
            }
            AuthError::Wrong => {
                Reply::error(401, "Unauthorized").with_header("WWW-Authenticate", "Bearer")
            }
        }
    }

    /// The 429 the original answered with, `Retry-After` and `retryAfterSeconds` included.
    pub fn rate_limited(window: Window, retry_after_secs: u64) -> Reply {
        Reply::json(
            429,
            &serde_json::json!({
                "error": "Too many requests",
                "details": format!("Rate limit exceeded ({} window)", window.as_str()),
                "retryAfterSeconds": retry_after_secs,
            }),
        )
        .with_header("Retry-After", retry_after_secs.to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// The body as UTF-8 text (tests and logs).
    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("")
    }

    /// The response on the wire, with `X-Request-Id` and `Cache-Control: no-store` unless the
    /// route set its own.
    pub fn into_bytes(self, request_id: &RequestId, keep_alive: bool) -> Vec<u8> {
        // Nothing we answer is meant to be cached unless the route says otherwise.
        let cache_control = (!self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("Cache-Control")))
        .then(|| ("Cache-Control", "no-store".to_string()));
        let headers: Vec<(&str, String)> = [
            ("Content-Type", self.content_type.to_string()),
            ("X-Request-Id", request_id.to_string()),
        ]
        .into_iter()
        .chain(cache_control)
        .chain(self.headers)
        .filter(|(name, value)| {
            // Our header values are ASCII we built or checked; one that is not is dropped
            // rather than answered with a broken (or split) response.
            let ok = wire::valid_header_value(value);
            if !ok {
                log::warn!(header = *name; "dropped an invalid response header");
            }
            ok
        })
        .collect();
        let borrowed: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        wire::response_bytes(self.status, &borrowed, &self.body, keep_alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_in_production_is_503_with_the_variable_named() {
        let reply = Reply::auth_refused(AuthError::KeyNotConfigured {
            key_name: "OUTBOUND_API_KEY",
        });
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body_text(),
            r#"{"details":"OUTBOUND_API_KEY is required in production","error":"Server misconfigured"}"#
        );
        assert!(reply.headers.is_empty());
    }

    #[test]
    fn a_wrong_key_is_401_with_a_challenge() {
        let reply = Reply::auth_refused(AuthError::Wrong);
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body_text(), r#"{"error":"Unauthorized"}"#);
        assert_eq!(reply.headers, [("WWW-Authenticate", "Bearer".to_string())]);
    }

    #[test]
    fn the_429_says_when_to_come_back() {
        let reply = Reply::rate_limited(Window::Hour, 42);
        assert_eq!(reply.status, 429);
        assert_eq!(reply.headers, [("Retry-After", "42".to_string())]);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["retryAfterSeconds"], 42);
        assert_eq!(body["details"], "Rate limit exceeded (hour window)");
        assert_eq!(body["error"], "Too many requests");
    }
}
