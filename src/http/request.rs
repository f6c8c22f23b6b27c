//! An HTTP request as the route handlers see it: read whole by the accept loop within its
//! limits, then plain data (so handlers are tested without sockets), plus form and query
//! decoding.

use std::net::SocketAddr;

use super::response::Reply;
use super::wire::Head;

/// A request whose body has been read (at most the configured limit).
#[derive(Clone, Debug, Default)]
pub struct Incoming {
    /// Upper-case method name (`GET`, `POST`, …).
    pub method: String,
    /// The path as received, without the query string.
    pub path: String,
    /// The raw query string without the `?`, exactly as received (signatures cover it verbatim).
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: Option<SocketAddr>,
}

impl Incoming {
    /// The request of `head` and `body` from `remote`.
    pub fn from_parts(head: Head, body: Vec<u8>, remote: SocketAddr) -> Incoming {
        let (path, query) = match head.target.split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (head.target, String::new()),
        };
        Incoming {
            method: head.method,
            path,
            query,
            headers: head.headers,
            body,
            remote: Some(remote),
        }
    }

    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        super::wire::header(&self.headers, name)
    }

    /// Path and query as the client sent them (`/call/incoming?role=judge`).
    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    /// The decoded query parameters, in order.
    pub fn query_pairs(&self) -> Result<Vec<(String, String)>, String> {
        decode_form(&self.query)
    }

    /// The first value of query parameter `name`, if the query decodes.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body as `application/x-www-form-urlencoded` parameters, every one in order
    /// (repeated names kept: Twilio signs each). An empty body is no parameters; a body of any
    /// other content type is refused with 415 rather than guessed at.
    pub fn form(&self) -> Result<Vec<(String, String)>, Reply> {
        if self.body.is_empty() {
            return Ok(Vec::new());
        }
        let is_form = self.header("Content-Type").is_some_and(|ct| {
            ct.split(';').next().is_some_and(|media| {
                media
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
        if !is_form {
            return Err(Reply::error(
                415,
                "Expected an application/x-www-form-urlencoded body",
            ));
        }
        let text = std::str::from_utf8(&self.body)
            .map_err(|_| Reply::error(400, "Form body is not UTF-8"))?;
        decode_form(text).map_err(|err| Reply::error(400, &format!("Malformed form body: {err}")))
    }
}

/// Decodes `a=1&b=two+words&c=%C3%A9` into pairs. `+` is a space; a name without `=` has an
/// empty value; empty segments (`a=1&&b=2`) are skipped.
pub fn decode_form(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

/// `+` is a space, then `%XX` escapes; an escape that is not two hex digits is refused (Twilio
/// never sends one), and the bytes must be UTF-8.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let broken = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if broken {
        return Err(format!("bad percent escape in {text:?}"));
    }
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn decodes_forms_like_twilio_sends_them() {
        assert_eq!(
            decode_form("CallSid=CA1&From=%2B15551234567&SpeechResult=hello+there&Empty=").unwrap(),
            pairs(&[
                ("CallSid", "CA1"),
                ("From", "+15551234567"),
                ("SpeechResult", "hello there"),
                ("Empty", "")
            ])
        );
        assert_eq!(
            decode_form("a=1&a=2&&b").unwrap(),
            pairs(&[("a", "1"), ("a", "2"), ("b", "")])
        );
        assert_eq!(decode_form("").unwrap(), vec![]);
        assert_eq!(decode_form("n=%C3%A9").unwrap(), pairs(&[("n", "é")]));
    }

    #[test]
    fn refuses_broken_escapes() {
        assert!(decode_form("a=%2").is_err());
        assert!(decode_form("a=%zz").is_err());
        assert!(decode_form("a=%FF").is_err());
    }

    fn with_body(content_type: Option<&str>, body: &str) -> Incoming {
        Incoming {
            method: "POST".into(),
            path: "/call/status".into(),
            headers: content_type
                .map(|ct| vec![("content-type".to_string(), ct.to_string())])
                .unwrap_or_default(),
            body: body.as_bytes().to_vec(),
            ..Incoming::default()
        }
    }

    #[test]
    fn form_bodies_need_the_form_content_type() {
        let req = with_body(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            "a=1",
        );
        assert_eq!(req.form().unwrap(), pairs(&[("a", "1")]));
        assert_eq!(with_body(None, "").form().unwrap(), vec![]);
        assert_eq!(
            with_body(Some("application/json"), "{}")
                .form()
                .unwrap_err()
                .status,
            415
        );
        assert_eq!(with_body(None, "a=1").form().unwrap_err().status, 415);
        let bad = with_body(Some("application/x-www-form-urlencoded"), "a=%");
        assert_eq!(bad.form().unwrap_err().status, 400);
    }

    #[test]
    fn headers_are_case_insensitive_and_query_is_kept_raw() {
        let req = Incoming {
            path: "/call/incoming".into(),
            query: "role=judge&x=%20".into(),
            headers: vec![("X-Forwarded-Host".into(), "a.example".into())],
            ..Incoming::default()
        };
        assert_eq!(req.header("x-forwarded-host"), Some("a.example"));
        assert_eq!(req.path_and_query(), "/call/incoming?role=judge&x=%20");
        assert_eq!(req.query_param("role").as_deref(), Some("judge"));
        assert_eq!(req.query_param("x").as_deref(), Some(" "));
    }
}
