//! HTTP/1.1 on the wire, as pure functions: finding and parsing a request head within a size
//! limit, deciding how its body is framed, writing a response, and making a header value safe
//! for a log line. The listener ([`super::listener`]) feeds bytes in; nothing here touches a
//! socket, so every rule is tested without one.

use std::fmt::Write as _;

/// The most a request line and its headers may take, `\r\n\r\n` included. Twilio's webhooks
/// carry about 1 KiB of headers; a client past this is answered 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most headers one request may carry (Twilio sends about a dozen, a proxy adds a few).
pub const MAX_HEADERS: usize = 100;

/// A parsed request line and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Upper-case method name.
    pub method: String,
    /// The request target as received (`/call/incoming?role=judge`).
    pub target: String,
    /// `HTTP/1.0` (false) or `HTTP/1.1` (true).
    pub http11: bool,
    pub headers: Vec<(String, String)>,
}

/// Why a head cannot be served; each maps to the status answered ([`HeadError::status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`]: 431.
    TooLarge,
    /// Not HTTP/1.x as we read it: 400 with the reason.
    Malformed(&'static str),
    /// `HTTP/2.0` and friends over plain TCP: 505.
    Version,
    /// A transfer coding other than `chunked` alone: 411, send a `Content-Length`.
    LengthRequired,
    /// `Content-Length` over the body limit: 413.
    BodyTooLarge { limit: usize },
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed(_) => 400,
            HeadError::Version => 505,
            HeadError::LengthRequired => 411,
            HeadError::BodyTooLarge { .. } => 413,
        }
    }

    /// The `error` of the JSON body answered.
    pub fn message(&self) -> String {
        match self {
            HeadError::TooLarge => format!(
                "Request header fields too large (at most {MAX_HEAD_BYTES} bytes and \
                 {MAX_HEADERS} headers)"
            ),
            HeadError::Malformed(why) => format!("Malformed request: {why}"),
            HeadError::Version => "HTTP version not supported".to_string(),
            HeadError::LengthRequired => {
                "Length required: send the body with a Content-Length (or chunked alone)"
                    .to_string()
            }
            HeadError::BodyTooLarge { limit } => {
                format!("Request body is larger than {limit} bytes")
            }
        }
    }
}

/// Where the head in `buf` ends (the index just past `\r\n\r\n`), looking from `from` on (what
/// an earlier call already searched, less three bytes). `None`: not all of it has arrived.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| start + at + 4)
}

/// Parses a complete head (`bytes` ends with `\r\n\r\n`).
pub fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    if bytes.len() > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let text =
        std::str::from_utf8(bytes).map_err(|_| HeadError::Malformed("the head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(
            "the request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(HeadError::Malformed("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::Malformed("the target must be a path"));
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::Malformed("bad HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if headers.len() == MAX_HEADERS {
            return Err(HeadError::TooLarge);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::Malformed("a header line without a colon"));
        };
        // RFC 9112 5.1: no whitespace between the name and the colon; obsolete line folding
        // (a line starting with whitespace) is refused rather than guessed at.
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HeadError::Malformed("bad header name"));
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(HeadError::Malformed(
                "a control character in a header value",
            ));
        }
        // Optional whitespace is spaces and tabs only (RFC 9110 5.6.3), not Unicode's.
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        headers.push((name.to_string(), value.to_string()));
    }
    Ok(Head {
        method: method.to_ascii_uppercase(),
        target: target.to_string(),
        http11,
        headers,
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The first value of header `name` in `headers`, compared case-insensitively.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Head {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// How the body is framed: `Content-Length` (0 without one), or `chunked` (HTTP/1.1 only,
    /// as a proxy sends a body whose length it did not know). Both at once, a coding other than
    /// `chunked` alone, a repeated or unreadable length, or one over `max_body_bytes` is
    /// refused: request smuggling starts where two framings disagree, so there is only one.
    pub fn body_framing(&self, max_body_bytes: usize) -> Result<Framing, HeadError> {
        let Some(coding) = self.header("Transfer-Encoding") else {
            return self.body_length(max_body_bytes).map(Framing::Length);
        };
        if self.header("Content-Length").is_some() {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if !self.http11 || !coding.trim().eq_ignore_ascii_case("chunked") {
            return Err(HeadError::LengthRequired);
        }
        Ok(Framing::Chunked)
    }

    /// The `Content-Length` of a request without a transfer coding (see [`Head::body_framing`]).
    fn body_length(&self, max_body_bytes: usize) -> Result<usize, HeadError> {
        let mut lengths = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("Content-Length"));
        let Some((_, text)) = lengths.next() else {
            return Ok(0);
        };
        if lengths.next().is_some() {
            return Err(HeadError::Malformed("more than one Content-Length"));
        }
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeadError::Malformed("Content-Length is not a number"));
        }
        match text.parse::<usize>() {
            Ok(len) if len <= max_body_bytes => Ok(len),
            _ => Err(HeadError::BodyTooLarge {
                limit: max_body_bytes,
            }),
        }
    }

    /// Whether the client waits for `100 Continue` before sending the body (curl does for
    /// bodies over 1 KiB).
    pub fn expects_continue(&self) -> bool {
        self.http11
            && self
                .header("Expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }

    /// Whether the connection may carry another request after this one: HTTP/1.1 unless the
    /// client says `close`; HTTP/1.0 never (its keep-alive is not worth supporting).
    pub fn keep_alive(&self) -> bool {
        self.http11
            && !self.header("Connection").is_some_and(|v| {
                v.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("close"))
            })
    }
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes (0: no body).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The most a chunked body may take on the wire beyond the body itself (chunk-size lines,
/// CRLFs, trailers): a sender of one-byte chunks is refused before it costs more.
pub const CHUNKED_OVERHEAD_BYTES: usize = 16 * 1024;

/// Decodes a chunked body from the start of `raw` (what follows the head). `Ok(None)`: not all
/// of it has arrived. `Ok(Some((body, used)))`: the body, and how many bytes of `raw` it took
/// (what follows is the next request). Chunk extensions are skipped and trailers dropped; a
/// body over `max_body_bytes`, or wire bytes over that plus [`CHUNKED_OVERHEAD_BYTES`], is 413.
pub fn decode_chunked(
    raw: &[u8],
    max_body_bytes: usize,
) -> Result<Option<(Vec<u8>, usize)>, HeadError> {
    let too_large = HeadError::BodyTooLarge {
        limit: max_body_bytes,
    };
    let mut body = Vec::new();
    let mut pos = 0;
    // The chunks, up to the last (zero-size) one.
    loop {
        let Some(line_end) = find_crlf(raw, pos) else {
            return incomplete(raw, max_body_bytes);
        };
        let line = &raw[pos..line_end];
        let size_text = line.split(|&b| b == b';').next().unwrap_or(b"");
        let size_text = std::str::from_utf8(size_text)
            .map_err(|_| HeadError::Malformed("bad chunk size"))?
            .trim();
        if size_text.is_empty() || size_text.len() > 8 {
            return Err(HeadError::Malformed("bad chunk size"));
        }
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HeadError::Malformed("bad chunk size"))?;
        pos = line_end + 2;
        if size == 0 {
            break;
        }
        if body.len() + size > max_body_bytes {
            return Err(too_large);
        }
        let data_end = pos + size;
        if raw.len() < data_end + 2 {
            return incomplete(raw, max_body_bytes);
        }
        if &raw[data_end..data_end + 2] != b"\r\n" {
            return Err(HeadError::Malformed("a chunk does not end with CRLF"));
        }
        body.extend_from_slice(&raw[pos..data_end]);
        pos = data_end + 2;
    }
    // Trailers, dropped, up to the empty line.
    loop {
        let Some(line_end) = find_crlf(raw, pos) else {
            return incomplete(raw, max_body_bytes);
        };
        let empty = line_end == pos;
        pos = line_end + 2;
        if empty {
            return Ok(Some((body, pos)));
        }
    }
}

fn find_crlf(raw: &[u8], from: usize) -> Option<usize> {
    raw.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|at| from + at)
}

/// Not complete yet: wait for more, unless what came is already more than a body may take.
fn incomplete<T>(raw: &[u8], max_body_bytes: usize) -> Result<Option<T>, HeadError> {
    if raw.len() > max_body_bytes + CHUNKED_OVERHEAD_BYTES {
        return Err(HeadError::BodyTooLarge {
            limit: max_body_bytes,
        });
    }
    Ok(None)
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A whole response: status line, `headers` (each already checked: no CR or LF), framing,
/// then `body`.
pub fn response_bytes(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(
        head,
        "Content-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Whether `value` can go into a response header as is.
pub fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The reason phrase of the statuses we answer.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        // Anthropic's "overloaded" (the simulators answer it too).
        529 => "Overloaded",
        _ => "Unknown",
    }
}

/// The most characters of a client-supplied value that reach a log line.
pub const LOG_VALUE_CHARS: usize = 128;

/// `value` as it may appear in a log line: at most `max_chars` characters, control characters
/// replaced by `?`, and a cut marked with how long the value was (a header can be 16 KiB; a log
/// line should not be, nor should a client be able to forge line breaks in it).
pub fn log_value(value: &str, max_chars: usize) -> String {
    let mut out: String = value
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().nth(max_chars).is_some() {
        let _ = write!(out, "…[{} bytes]", value.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWILIO: &[u8] = b"POST /call/status?x=1 HTTP/1.1\r\nHost: voice.example.com\r\n\
        Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 12\r\n\
        X-Twilio-Signature:  abc= \r\n\r\n";

    #[test]
    fn finds_the_end_of_a_head_arriving_in_pieces() {
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(head_end(whole, 0), Some(whole.len() - 4));
        // Searched up to 26 bytes already, the CRLFCRLF straddling the edge is still found.
        assert_eq!(head_end(&whole[..27], 25), Some(27));
        assert_eq!(head_end(&whole[..26], 0), None);
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"ab", 10), None);
    }

    #[test]
    fn parses_a_twilio_webhook_head() {
        let head = parse_head(TWILIO).unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/call/status?x=1");
        assert!(head.http11 && head.keep_alive() && !head.expects_continue());
        assert_eq!(head.header("x-twilio-signature"), Some("abc="));
        assert_eq!(head.body_framing(64), Ok(Framing::Length(12)));
        assert_eq!(
            head.body_framing(11),
            Err(HeadError::BodyTooLarge { limit: 11 })
        );
    }

    #[test]
    fn refuses_what_is_not_http_1() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET /\r\n\r\n", 400),
            (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
            (b"GET http://a/ HTTP/1.1\r\n\r\n", 400),
            (b"G3T / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / FTP/1.0\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad name: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: \xff\r\n\r\n", 400),
        ];
        for (head, status) in cases {
            let err = parse_head(head).unwrap_err();
            assert_eq!(err.status(), *status, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn heads_over_the_limits_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&big), Err(HeadError::TooLarge));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooLarge));
        let enough = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS));
        assert!(parse_head(enough.as_bytes()).is_ok());
    }

    #[test]
    fn bodies_have_one_framing_only() {
        let head = |extra: &str| parse_head(format!("POST / HTTP/1.1\r\n{extra}\r\n").as_bytes());
        let framing = |extra: &str| head(extra).unwrap().body_framing(10);
        assert_eq!(framing(""), Ok(Framing::Length(0)));
        assert_eq!(
            framing("Transfer-Encoding: Chunked\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("Transfer-Encoding: gzip, chunked\r\n"),
            Err(HeadError::LengthRequired)
        );
        let http10 = parse_head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            http10.unwrap().body_framing(10),
            Err(HeadError::LengthRequired)
        );
        for bad in [
            "Content-Length: 1\r\nContent-Length: 1\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 1e3\r\n",
            "Content-Length: \r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        ] {
            assert_eq!(framing(bad).unwrap_err().status(), 400, "{bad}");
        }
        assert_eq!(
            framing("Content-Length: 99999999999999999999999\r\n"),
            Err(HeadError::BodyTooLarge { limit: 10 })
        );
    }

    #[test]
    fn chunked_bodies_decode_as_they_arrive() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET /next";
        let end = wire.len() - b"GET /next".len();
        assert_eq!(
            decode_chunked(wire, 64),
            Ok(Some((b"hello world".to_vec(), end)))
        );
        // Every cut short of the end is "not yet".
        for cut in 0..end {
            assert_eq!(decode_chunked(&wire[..cut], 64), Ok(None), "cut at {cut}");
        }
        assert_eq!(decode_chunked(b"0\r\n\r\n", 64), Ok(Some((Vec::new(), 5))));
        assert_eq!(
            decode_chunked(b"B\r\nhello world\r\n0\r\n\r\n", 10),
            Err(HeadError::BodyTooLarge { limit: 10 })
        );
        for bad in [&b"z\r\n"[..], b"\r\n", b"123456789\r\n", b"2\r\nabc\r\n"] {
            assert_eq!(
                decode_chunked(bad, 64).unwrap_err().status(),
                400,
                "{bad:?}"
            );
        }
        // Endless chunk extensions or trailers are cut off at the overhead allowance.
        let endless = vec![b'a'; 64 + CHUNKED_OVERHEAD_BYTES + 1];
        assert_eq!(
            decode_chunked(&endless, 64),
            Err(HeadError::BodyTooLarge { limit: 64 })
        );
    }

    #[test]
    fn keep_alive_and_continue_follow_the_version_and_the_client() {
        let head = |text: &str| parse_head(text.as_bytes()).unwrap();
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive());
        assert!(head("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").keep_alive());
        assert!(head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expects_continue());
        assert!(!head("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expects_continue());
    }

    #[test]
    fn responses_are_framed_by_length() {
        let bytes = response_bytes(431, &[("Content-Type", "application/json")], b"{}", false);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
        assert!(valid_header_value("Bearer x\ty"));
        assert!(!valid_header_value("a\r\nSet-Cookie: x"));
    }

    #[test]
    fn log_values_are_short_and_on_one_line() {
        assert_eq!(log_value("203.0.113.9", 128), "203.0.113.9");
        assert_eq!(log_value("a\r\nfake: line", 128), "a??fake: line");
        let long = "x".repeat(5000);
        let logged = log_value(&long, 10);
        assert_eq!(logged, "xxxxxxxxxx…[5000 bytes]");
        assert_eq!(log_value(&"é".repeat(10), 10), "é".repeat(10));
    }
}
