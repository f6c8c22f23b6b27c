//! Opening a provider WebSocket (`ws://` for the simulators, `wss://` for ElevenLabs) the
//! careful way: a connect timeout, a bounded handshake, small buffers (tungstenite's defaults
//! are 128 KiB each, per socket) and a size limit on messages. After the handshake the socket
//! has no read timeout: its owner either makes it non-blocking and waits for it with
//! [`crate::poll`] (speech-to-text) or sets a read timeout from a real deadline before each
//! read (text-to-speech). No reader wakes on a tick.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::WebSocket;

use crate::resolve::Resolver;

pub type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Why a socket could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The URL is not one we can open.
    BadUrl(String),
    /// TCP, TLS or the WebSocket handshake failed, or took too long.
    Failed(String),
    /// The server refused the upgrade with an HTTP status (401: bad key, …).
    Refused { status: u16, body: String },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::BadUrl(url) => write!(f, "cannot open websocket url {url}"),
            ConnectError::Failed(what) => write!(f, "websocket connection failed: {what}"),
            ConnectError::Refused { status, body } => {
                write!(f, "websocket refused with http {status}: {body}")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

impl ConnectError {
    /// The `kind` label of this failure in `/metrics`.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            ConnectError::BadUrl(_) => "bad_url",
            ConnectError::Failed(_) => "connect",
            ConnectError::Refused { .. } => "refused",
        }
    }
}

/// Opens `url` with extra request `headers`. `connect_timeout` bounds the name lookup and the
/// TCP connect together (every address found is tried, each with its share of what is left),
/// then each read and write of the handshake, and stays the write timeout; afterwards reads
/// have no timeout (see the module docs).
pub fn connect(
    url: &str,
    headers: &[(&str, &str)],
    connect_timeout: Duration,
) -> Result<Socket, ConnectError> {
    connect_with(url, headers, connect_timeout, &Resolver::system())
}

/// [`connect`] with names resolved by `resolver` (tests: one that hangs).
pub fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
    connect_timeout: Duration,
    resolver: &Resolver,
) -> Result<Socket, ConnectError> {
    let deadline = Instant::now() + connect_timeout;
    let mut request = url
        .into_client_request()
        .map_err(|_| ConnectError::BadUrl(url.to_string()))?;
    for (name, value) in headers {
        let name: tungstenite::http::HeaderName = name
            .parse()
            .map_err(|_| ConnectError::BadUrl(format!("bad header name {name}")))?;
        let value = value
            .parse()
            .map_err(|_| ConnectError::BadUrl("bad header value".into()))?;
        request.headers_mut().insert(name, value);
    }
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::BadUrl(url.to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let addrs = resolver
        .resolve(&host, port, deadline)
        .map_err(|e| ConnectError::Failed(e.to_string()))?;
    let tcp = connect_any(&addrs, deadline)?;
    let setup = |tcp: &TcpStream| -> io::Result<()> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(connect_timeout))?;
        tcp.set_write_timeout(Some(connect_timeout))
    };
    setup(&tcp).map_err(|e| ConnectError::Failed(e.to_string()))?;
    let config = WebSocketConfig::default()
        // Grown to a message's size when one is larger (text-to-speech audio, about 11 KiB);
        // speech-to-text's messages are a few hundred bytes: two sockets per call.
        .read_buffer_size(2 * 1024)
        .write_buffer_size(0)
        // What a non-blocking writer may queue while the peer does not read: 256 KiB is 16 s
        // of caller audio as STT messages, then the write fails and the session is retried.
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    // The process's provider trust (`PROVIDER_CA_FILE`, see `crate::tls`); `None`: built-in roots.
    let connector = crate::tls::current()
        .rustls()
        .map(tungstenite::Connector::Rustls);
    let (socket, _response) =
        tungstenite::client_tls_with_config(request, tcp, Some(config), connector).map_err(
            |err| match err {
                HandshakeError::Interrupted(_) => {
                    ConnectError::Failed("handshake timed out".to_string())
                }
                HandshakeError::Failure(tungstenite::Error::Http(response)) => {
                    let body = response
                        .body()
                        .as_deref()
                        .map(|b| String::from_utf8_lossy(b).chars().take(300).collect())
                        .unwrap_or_default();
                    ConnectError::Refused {
                        status: response.status().as_u16(),
                        body,
                    }
                }
                HandshakeError::Failure(other) => ConnectError::Failed(other.to_string()),
            },
        )?;
    tcp_of(&socket)
        .ok_or_else(|| ConnectError::Failed("unexpected tls backend".into()))?
        .set_read_timeout(None)
        .map_err(|e| ConnectError::Failed(e.to_string()))?;
    Ok(socket)
}

/// Connects to the first of `addrs` that answers before `deadline`, in order; each address gets
/// an equal share of the time left for it and those after it, so one that does not answer
/// leaves time for the next.
fn connect_any(
    addrs: &[std::net::SocketAddr],
    deadline: Instant,
) -> Result<TcpStream, ConnectError> {
    let mut failures = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failures.push(format!("{addr}: no time left"));
            break;
        }
        let share = left / (addrs.len() - i) as u32;
        match TcpStream::connect_timeout(addr, share.max(Duration::from_millis(1))) {
            Ok(tcp) => return Ok(tcp),
            Err(err) => failures.push(format!("{addr}: {err}")),
        }
    }
    Err(ConnectError::Failed(format!(
        "connecting to {}",
        failures.join("; ")
    )))
}

/// The TCP socket under a (possibly TLS) WebSocket.
pub fn tcp_of(socket: &Socket) -> Option<&TcpStream> {
    match socket.get_ref() {
        MaybeTlsStream::Plain(tcp) => Some(tcp),
        MaybeTlsStream::Rustls(tls) => Some(&tls.sock),
        // Only rustls is compiled in, but the enum is open to other backends.
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The descriptor under a (possibly TLS) WebSocket, to wait on with [`crate::poll`].
pub fn fd_of(socket: &Socket) -> Option<std::os::fd::BorrowedFd<'_>> {
    use std::os::fd::AsFd;
    tcp_of(socket).map(|tcp| tcp.as_fd())
}

/// What a write or flush on a non-blocking socket left behind: `Ok(true)` when part of it waits
/// in tungstenite's or rustls' buffers for a later flush (the socket had no room now),
/// `Ok(false)` when all of it went out.
pub fn left_queued(result: tungstenite::Result<()>) -> tungstenite::Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(err) if is_timeout(&err) => Ok(true),
        Err(err) => Err(err),
    }
}

/// Whether an error from a read or write is the socket's timeout or a non-blocking socket
/// having nothing to give (or no room) now, not a failure.
pub fn is_timeout(err: &tungstenite::Error) -> bool {
    matches!(err, tungstenite::Error::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// Ends a socket's reads and writes from another thread: a read blocked on it returns at once
/// with an error (`shutdown(2)`), so a thread never outlives its call by a read timeout.
#[derive(Debug)]
pub struct Interrupt(TcpStream);

impl Interrupt {
    /// A handle on the TCP socket under `socket` (a second descriptor for it).
    pub fn of(socket: &Socket) -> io::Result<Interrupt> {
        let tcp = tcp_of(socket).ok_or_else(|| io::Error::other("unexpected tls backend"))?;
        Ok(Interrupt(tcp.try_clone()?))
    }

    pub fn interrupt(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_resolver_that_hangs_is_a_connect_failure_within_the_connect_timeout() {
        let hanging = Resolver::with_lookup(
            Arc::new(|_: &str, _: u16| {
                std::thread::sleep(Duration::from_secs(3));
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], 9))])
            }),
            Duration::from_secs(30),
        );
        let started = Instant::now();
        let result = connect_with(
            "wss://api.elevenlabs.example/v1/speech-to-text/realtime",
            &[],
            Duration::from_millis(300),
            &hanging,
        );
        let took = started.elapsed();
        match result {
            Err(ConnectError::Failed(why)) => assert!(why.contains("no answer"), "{why}"),
            other => panic!("expected a failure, got {:?}", other.map(|_| ())),
        }
        assert!(took < Duration::from_secs(1), "ended after {took:?}");
    }

    #[test]
    fn every_resolved_address_is_tried_in_order() {
        // The first address refuses (nothing listens there), the second is a WebSocket server.
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let open_addr = listener.local_addr().expect("addr");
        let server = std::thread::Builder::new()
            .name("test-ws-accept".into())
            .spawn(move || {
                let (stream, _) = listener.accept().expect("accept");
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut socket = tungstenite::accept(stream).expect("handshake");
                let _ = socket.close(None);
                let _ = socket.flush();
            })
            .expect("thread");
        let both = vec![closed_addr, open_addr];
        let resolver = Resolver::with_lookup(
            Arc::new(move |_: &str, _: u16| Ok(both.clone())),
            Duration::from_secs(5),
        );
        let socket = connect_with(
            &format!("ws://two-addresses.example:{}/", open_addr.port()),
            &[],
            Duration::from_secs(5),
            &resolver,
        )
        .expect("the second address answers");
        let peer = tcp_of(&socket).and_then(|t| t.peer_addr().ok());
        assert_eq!(peer, Some(open_addr));
        drop(socket);
        server.join().expect("server thread");
    }

    #[test]
    fn when_no_address_answers_each_is_named_in_the_error() {
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            addrs.push(l.local_addr().expect("addr"));
        }
        let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let resolver = Resolver::with_lookup(
            Arc::new(move |_: &str, _: u16| Ok(addrs.clone())),
            Duration::from_secs(5),
        );
        match connect_with(
            "ws://closed.example/",
            &[],
            Duration::from_secs(2),
            &resolver,
        ) {
            Err(ConnectError::Failed(why)) => {
                for name in &names {
                    assert!(why.contains(name.as_str()), "{name} in {why}");
                }
            }
            other => panic!("expected a failure, got {:?}", other.map(|_| ())),
        }
    }
}
