//! Opening a provider WebSocket (`ws://` for the simulators, `wss://` for ElevenLabs) the
//! careful way: a connect timeout, a bounded handshake, small buffers (tungstenite's defaults
//! are 128 KiB each, per socket) and a size limit on messages. After the handshake the socket
//! has no read timeout: its owner either makes it non-blocking and waits for it with
//! [`crate::poll`] (speech-to-text) or sets a read timeout from a real deadline before each
//! read (text-to-speech). No reader wakes on a tick.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::WebSocket;

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

/// Opens `url` with extra request `headers`. `connect_timeout` bounds the TCP connect and the
/// handshake, and stays the write timeout; afterwards reads have no timeout (see the module
/// docs).
pub fn connect(
    url: &str,
    headers: &[(&str, &str)],
    connect_timeout: Duration,
) -> Result<Socket, ConnectError> {
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
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| ConnectError::Failed(format!("resolving {host}: {e}")))?
        .next()
        .ok_or_else(|| ConnectError::Failed(format!("{host} has no address")))?;
    let tcp = TcpStream::connect_timeout(&addr, connect_timeout)
        .map_err(|e| ConnectError::Failed(format!("connecting to {addr}: {e}")))?;
    let setup = |tcp: &TcpStream| -> io::Result<()> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(connect_timeout))?;
        tcp.set_write_timeout(Some(connect_timeout))
    };
    setup(&tcp).map_err(|e| ConnectError::Failed(e.to_string()))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        // What a non-blocking writer may queue while the peer does not read: 256 KiB is 16 s
        // of caller audio as STT messages, then the write fails and the session is retried.
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (socket, _response) = tungstenite::client_tls_with_config(request, tcp, Some(config), None)
        .map_err(|err| match err {
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
        })?;
    tcp_of(&socket)
        .ok_or_else(|| ConnectError::Failed("unexpected tls backend".into()))?
        .set_read_timeout(None)
        .map_err(|e| ConnectError::Failed(e.to_string()))?;
    Ok(socket)
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
