//! Server-sent events, parsed from any `BufRead` (the Anthropic stream, MCP answers over SSE).
//! Follows the WHATWG event-stream rules: `event:` and `data:` fields (several `data:` lines
//! joined with `\n`), `:` comments ignored, a blank line ends an event, CR, LF and CRLF all end a
//! line, one byte-order mark at the start of the stream is dropped. Lines are bounded so a
//! broken peer cannot grow memory without limit.

use std::fmt;
use std::io::{self, BufRead};

/// One event: its type (`message` when the stream names none) and its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Why a stream could not be read.
#[derive(Debug)]
pub enum SseError {
    /// Reading the underlying stream failed (including a read timeout).
    Io(io::Error),
    /// A line longer than the limit: the peer is not speaking SSE, or is broken.
    LineTooLong { limit: usize },
    /// A line that is not UTF-8.
    NotUtf8,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::Io(err) => write!(f, "reading the event stream failed: {err}"),
            SseError::LineTooLong { limit } => {
                write!(f, "event stream line longer than {limit} bytes")
            }
            SseError::NotUtf8 => f.write_str("event stream line is not UTF-8"),
        }
    }
}

impl std::error::Error for SseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SseError::Io(err) => Some(err),
            _ => None,
        }
    }
}

/// Reads events one at a time.
pub struct SseReader<R> {
    reader: R,
    max_line_bytes: usize,
    line: Vec<u8>,
    /// A CR ended the last line; an LF right after it belongs to it.
    after_cr: bool,
    /// The last `id:` field seen (kept across events, as the standard's last event ID is).
    last_event_id: Option<String>,
    /// The last valid `retry:` field, in milliseconds.
    retry_ms: Option<u64>,
    /// No line has been read yet: a byte-order mark there is not part of it.
    at_start: bool,
}

impl<R: BufRead> SseReader<R> {
    pub fn new(reader: R, max_line_bytes: usize) -> SseReader<R> {
        SseReader {
            reader,
            max_line_bytes,
            line: Vec::new(),
            after_cr: false,
            last_event_id: None,
            retry_ms: None,
            at_start: true,
        }
    }

    /// The stream's last event ID so far (`id:` fields; an ID field containing NUL is ignored,
    /// an empty one resets it), for a reconnection's `Last-Event-ID`. Set even by an event that
    /// carries no data (an MCP priming event).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The last `retry:` field (digits only), in milliseconds: how long to wait before
    /// reconnecting.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// The next event, or `None` at the end of the stream. An event cut off by the end of the
    /// stream (no blank line after it) is dropped, as the specification says.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        let mut event_type = String::new();
        let mut data = String::new();
        let mut has_data = false;
        loop {
            let Some(line) = self.next_line()? else {
                return Ok(None);
            };
            if line.is_empty() {
                if has_data {
                    let event = if event_type.is_empty() {
                        "message".to_string()
                    } else {
                        event_type
                    };
                    return Ok(Some(SseEvent { event, data }));
                }
                event_type = String::new();
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment (keep-alive)
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => event_type = value.to_string(),
                "data" => {
                    if has_data {
                        data.push('\n');
                    }
                    data.push_str(value);
                    has_data = true;
                }
                // For a client that reconnects (MCP's resumable streams).
                "id" if !value.contains('\0') => {
                    self.last_event_id = (!value.is_empty()).then(|| value.to_string());
                }
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    self.retry_ms = value.parse().ok();
                }
                _ => {}
            }
        }
    }

    fn next_line(&mut self) -> Result<Option<String>, SseError> {
        self.line.clear();
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(SseError::Io(err)),
            };
            if buf.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                break;
            }
            if self.after_cr {
                self.after_cr = false;
                if buf[0] == b'\n' {
                    self.reader.consume(1);
                    continue;
                }
            }
            match buf.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(end) => {
                    self.after_cr = buf[end] == b'\r';
                    self.line.extend_from_slice(&buf[..end]);
                    self.reader.consume(end + 1);
                    break;
                }
                None => {
                    let n = buf.len();
                    self.line.extend_from_slice(buf);
                    self.reader.consume(n);
                }
            }
            if self.line.len() > self.max_line_bytes {
                return Err(SseError::LineTooLong {
                    limit: self.max_line_bytes,
                });
            }
        }
        if self.line.len() > self.max_line_bytes {
            return Err(SseError::LineTooLong {
                limit: self.max_line_bytes,
            });
        }
        if std::mem::replace(&mut self.at_start, false) && self.line.starts_with(BOM) {
            self.line.drain(..BOM.len());
        }
        String::from_utf8(std::mem::take(&mut self.line))
            .map(Some)
            .map_err(|_| SseError::NotUtf8)
    }
}

/// U+FEFF in UTF-8, which the standard drops from the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<SseEvent> {
        let mut reader = SseReader::new(text.as_bytes(), 1024);
        let mut out = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            out.push(event);
        }
        out
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_dropped_and_only_there() {
        assert_eq!(
            events("\u{feff}event: ping\ndata: {}\n\n"),
            vec![ev("ping", "{}")]
        );
        // Later, U+FEFF is data like any character.
        assert_eq!(
            events("data: a\n\ndata: \u{feff}b\n\n"),
            vec![ev("message", "a"), ev("message", "\u{feff}b")]
        );
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn anthropic_style_events() {
        let text = "event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n";
        assert_eq!(
            events(text),
            vec![
                ev("message_start", "{\"type\":\"message_start\"}"),
                ev("ping", "{\"type\": \"ping\"}")
            ]
        );
    }

    #[test]
    fn multi_line_data_comments_and_defaults() {
        let text = ": keep-alive\ndata: first\ndata:second\nid: 7\nretry: 100\n\ndata\n\n";
        assert_eq!(
            events(text),
            vec![ev("message", "first\nsecond"), ev("message", "")]
        );
    }

    #[test]
    fn the_last_event_id_and_retry_are_kept_for_a_reconnection() {
        // An MCP priming event: an id and an empty data field, then a retry of its own.
        let text = "id: s1-0\ndata:\n\nretry: 250\n\nretry: soon\nid: bad\0id\n\n";
        let mut reader = SseReader::new(text.as_bytes(), 1024);
        assert_eq!(reader.last_event_id(), None);
        assert_eq!(reader.next_event().unwrap(), Some(ev("message", "")));
        assert_eq!(reader.last_event_id(), Some("s1-0"));
        assert_eq!(reader.next_event().unwrap(), None);
        assert_eq!(
            reader.retry_ms(),
            Some(250),
            "a retry that is not digits is ignored"
        );
        assert_eq!(
            reader.last_event_id(),
            Some("s1-0"),
            "an id with NUL is ignored"
        );
        let mut reset = SseReader::new("id: 1\ndata: a\n\nid\ndata: b\n\n".as_bytes(), 64);
        reader_drain(&mut reset);
        assert_eq!(reset.last_event_id(), None, "an empty id resets it");
    }

    fn reader_drain(reader: &mut SseReader<&[u8]>) {
        while reader.next_event().unwrap().is_some() {}
    }

    #[test]
    fn every_line_ending() {
        let text = "event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: 3\n\n";
        assert_eq!(
            events(text),
            vec![ev("a", "1"), ev("b", "2"), ev("message", "3")]
        );
    }

    #[test]
    fn an_event_type_without_data_is_not_an_event() {
        assert_eq!(
            events("event: lonely\n\ndata: x\n\n"),
            vec![ev("message", "x")]
        );
    }

    #[test]
    fn an_unfinished_event_at_the_end_is_dropped() {
        assert_eq!(
            events("data: whole\n\ndata: cut"),
            vec![ev("message", "whole")]
        );
    }

    #[test]
    fn a_line_split_across_reads_is_joined() {
        // A reader that hands out one byte at a time.
        let text = "event: x\r\ndata: hello\r\n\r\n";
        let reader = std::io::BufReader::with_capacity(1, text.as_bytes());
        let mut sse = SseReader::new(reader, 1024);
        assert_eq!(sse.next_event().unwrap(), Some(ev("x", "hello")));
        assert_eq!(sse.next_event().unwrap(), None);
    }

    #[test]
    fn overlong_lines_and_bad_utf8_are_errors() {
        let long = format!("data: {}\n\n", "x".repeat(2000));
        let mut reader = SseReader::new(long.as_bytes(), 1024);
        assert!(matches!(
            reader.next_event(),
            Err(SseError::LineTooLong { limit: 1024 })
        ));
        let bad: &[u8] = b"data: \xff\n\n";
        let mut reader = SseReader::new(bad, 1024);
        assert!(matches!(reader.next_event(), Err(SseError::NotUtf8)));
    }
}
