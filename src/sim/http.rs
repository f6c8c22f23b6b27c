//! A small HTTP/1.1 server for the simulators, on a loopback port. It exists because the
//! simulators must stream: each server-sent event goes out as its own chunk the moment it is
//! written (tiny_http buffers chunked output, which would hide exactly the latency the tests
//! and the demo measure). One named thread per connection ([`Listener`]); every read has a
//! timeout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use super::listener::{Listener, SimStream, Tls};

/// Largest request body a simulator reads.
const MAX_BODY: usize = 4 << 20;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request as a simulator sees it.
#[derive(Debug, Clone)]
pub struct SimRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SimRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Writes one response: either whole ([`Responder::send`]) or as a stream of chunks.
pub struct Responder {
    stream: SimStream,
    started: bool,
}

impl Responder {
    /// A complete response with a body.
    pub fn send(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\n",
            crate::http::wire::reason(status)
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        // One write (one TLS record when small): head and body leave together.
        let mut whole = head.into_bytes();
        whole.extend_from_slice(body);
        self.stream.write_all(&whole)?;
        self.stream.flush()
    }

    /// Starts a chunked response; follow with [`Responder::chunk`] and [`Responder::finish`].
    pub fn start_stream(&mut self, status: u16, headers: &[(&str, &str)]) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\n",
            crate::http::wire::reason(status)
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        self.started = true;
        self.stream.write_all(head.as_bytes())?;
        self.stream.flush()
    }

    /// Sends `data` as one chunk, now.
    pub fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(b"\r\n");
        self.stream.write_all(&chunk)?;
        self.stream.flush()
    }

    /// Ends a chunked response (done for the handler if it does not).
    pub fn finish(&mut self) -> io::Result<()> {
        self.started = false;
        self.stream.write_all(b"0\r\n\r\n")?;
        self.stream.flush()
    }
}

/// A running simulator server; stops on drop.
pub struct SimServer {
    listener: Listener,
}

impl SimServer {
    /// Serves `handler` on 127.0.0.1 at an ephemeral port, over TLS when `tls` is given;
    /// `name` names the threads.
    pub fn start<H>(name: &str, tls: Tls, handler: H) -> io::Result<SimServer>
    where
        H: Fn(&SimRequest, &mut Responder) -> io::Result<()> + Send + Sync + 'static,
    {
        let listener =
            Listener::start(name, tls, move |stream| serve_connection(stream, &handler))?;
        Ok(SimServer { listener })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// The simulated network round trip ([`Listener::set_rtt`]).
    pub fn set_rtt(&self, rtt: Duration) {
        self.listener.set_rtt(rtt);
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` over TLS.
    pub fn base_url(&self) -> String {
        self.listener.url("http")
    }
}

/// Serves the requests of one accepted connection with `handler` (for simulators that share a
/// port between WebSockets and plain HTTP).
pub fn serve_connection<H>(mut stream: SimStream, handler: &H) -> io::Result<()>
where
    H: Fn(&SimRequest, &mut Responder) -> io::Result<()>,
{
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let Some(request) = read_request(&mut stream)? else {
        return Ok(()); // not HTTP (or the drop-time wake-up connection)
    };
    let mut responder = Responder {
        stream,
        started: false,
    };
    handler(&request, &mut responder)?;
    if responder.started {
        responder.finish()?;
    }
    Ok(())
}

/// The one request of a connection (`Connection: close`: nothing after it is read).
fn read_request(stream: &mut SimStream) -> io::Result<Option<SimRequest>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Some(SimRequest {
        method,
        target,
        headers,
        body,
    }))
}
