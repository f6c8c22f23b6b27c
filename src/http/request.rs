//! An HTTP request as the route handlers see it: read once from tiny_http with a bounded body,
//! then plain data (so handlers are tested without sockets), plus form and query decoding.

use std::io::Read;
use std::net::SocketAddr;

use super::response::Reply;

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
    /// Reads `request`'s head and body. A body over `max_body_bytes` gives a 413 reply without
    /// being read further; a body that breaks off gives a 400.
    pub fn read(
        request: &mut tiny_http::Request,
        max_body_bytes: usize,
    ) -> Result<Incoming, Reply> {
        let url = request.url().to_string();
        let (path, query) = match url.split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (url, String::new()),
        };
        let headers = request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_string(),
                    h.value.as_str().to_string(),
                )
            })
            .collect();
        let too_large = || {
            Reply::error(
                413,
                &format!("Request body is larger than {max_body_bytes} bytes"),
            )
        };
        if request
            .body_length()
            .is_some_and(|len| len > max_body_bytes)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        request
            .as_reader()
            .take(max_body_bytes as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|err| Reply::error(400, &format!("Could not read the request body: {err}")))?;
        if body.len() > max_body_bytes {
            return Err(too_large());
        }
        Ok(Incoming {
            method: request.method().as_str().to_ascii_uppercase(),
            path,
            query,
            headers,
            body,
            remote: request.remote_addr().copied(),
        })
    }

    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
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

fn percent_decode(text: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut iter = text.bytes();
    while let Some(b) = iter.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hi = iter.next().and_then(hex_value);
                let lo = iter.next().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => bytes.push(hi << 4 | lo),
                    _ => return Err(format!("bad percent escape in {text:?}")),
                }
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
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
