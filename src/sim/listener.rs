//! The accept loop every simulator shares: a loopback listener on an ephemeral port, one named
//! thread per connection, and a clean stop (the accept thread is woken and joined on drop).
//! Started with a TLS configuration, the connection thread ends TLS itself (after the
//! simulated round trip, [`super::tls::accept`]) and the simulator reads and writes plaintext
//! through a [`SimStream`]; without one the [`SimStream`] is the plain socket.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// A simulator's TLS configuration: `None` serves plain `http://`/`ws://`.
pub type Tls = Option<Arc<ServerConfig>>;

thread_local! {
    /// When the connection this thread serves was accepted (set on `{name}-conn` threads).
    static ACCEPTED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// When the connection served by the calling thread was accepted, before any simulated round
/// trip: the moment the peer's request was on its way. `None` off a connection thread.
pub fn accepted_at() -> Option<Instant> {
    ACCEPTED_AT.with(Cell::get)
}

/// One accepted connection as a simulator sees it: the socket, or the plaintext of the TLS
/// session on it. Dropping a TLS stream sends `close_notify`.
pub struct SimStream {
    inner: Inner,
    /// Bytes read ahead by [`SimStream::peek_line`], returned first by `read`.
    ahead: Vec<u8>,
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl SimStream {
    pub fn plain(tcp: TcpStream) -> SimStream {
        SimStream {
            inner: Inner::Plain(tcp),
            ahead: Vec::new(),
        }
    }

    pub fn tls(tls: StreamOwned<ServerConnection, TcpStream>) -> SimStream {
        SimStream {
            inner: Inner::Tls(Box::new(tls)),
            ahead: Vec::new(),
        }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Plain(tcp) => tcp,
            Inner::Tls(tls) => &tls.sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nonblocking(on)
    }

    /// The socket's descriptor, to wait on.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.tcp().as_fd()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// The first line (up to CRLF, at most `max` bytes) of what the peer sent, without
    /// consuming it: later reads return it again. Shorter when the peer stops sending first
    /// (each read waits at most the stream's read timeout).
    pub fn peek_line(&mut self, max: usize) -> io::Result<&[u8]> {
        let mut buf = [0u8; 512];
        loop {
            if let Some(end) = self.ahead.windows(2).position(|w| w == b"\r\n") {
                return Ok(&self.ahead[..end]);
            }
            if self.ahead.len() >= max {
                return Ok(&self.ahead[..max]);
            }
            let want = buf.len().min(max - self.ahead.len());
            let n = match self.read_inner(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(&self.ahead);
            }
            self.ahead.extend_from_slice(&buf[..n]);
        }
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(tcp) => tcp.read(buf),
            Inner::Tls(tls) => tls.read(buf),
        }
    }
}

impl Read for SimStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.ahead.is_empty() {
            let n = buf.len().min(self.ahead.len());
            buf[..n].copy_from_slice(&self.ahead[..n]);
            self.ahead.drain(..n);
            return Ok(n);
        }
        self.read_inner(buf)
    }
}

impl Write for SimStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(tcp) => tcp.write(buf),
            Inner::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Plain(tcp) => tcp.flush(),
            Inner::Tls(tls) => tls.flush(),
        }
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        if let Inner::Tls(tls) = &mut self.inner {
            // The simulator is done: say so, as a TLS server does (a peer gone already is
            // ordinary; the write waits at most the socket's write timeout).
            tls.conn.send_close_notify();
            while tls.conn.wants_write() {
                if !matches!(tls.conn.write_tls(&mut tls.sock), Ok(n) if n > 0) {
                    break;
                }
            }
        }
    }
}

/// A running listener; stops on drop.
pub struct Listener {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    /// The simulated network round trip, in microseconds (see [`Listener::set_rtt`]).
    rtt_us: Arc<AtomicU64>,
    tls: bool,
}

impl Listener {
    /// Listens on 127.0.0.1:0 and runs `serve` on its own thread (`{name}-conn`) for every
    /// connection, after ending TLS with `tls` when given. What `serve` returns is logged at
    /// debug level: a simulator's peer hanging up is ordinary.
    pub fn start<F>(name: &str, tls: Tls, serve: F) -> io::Result<Listener>
    where
        F: Fn(SimStream) -> io::Result<()> + Send + Sync + 'static,
    {
        let secure = tls.is_some();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (flag, conn_name, serve) = (stopping.clone(), format!("{name}-conn"), Arc::new(serve));
        let rtt_us = Arc::new(AtomicU64::new(0));
        let rtt = rtt_us.clone();
        let acceptor = thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (serve, tls) = (serve.clone(), tls.clone());
                    let delay =
                        Duration::from_micros(rtt.load(Ordering::Relaxed)).saturating_mul(2);
                    let spawned = thread::Builder::new()
                        .name(conn_name.clone())
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            ACCEPTED_AT.with(|at| at.set(Some(Instant::now())));
                            // One round trip for the TCP (and TLS) handshake, one for the
                            // request and its first response; the peer's request is already
                            // in flight, so both are slept here, before it is read.
                            if !delay.is_zero() {
                                thread::sleep(delay);
                            }
                            let stream = match tls {
                                None => Ok(SimStream::plain(stream)),
                                Some(config) => super::tls::accept(stream, config),
                            };
                            if let Err(err) = stream.and_then(|s| serve(s)) {
                                log::debug!("simulator connection ended: {err}");
                            }
                        });
                    if let Err(err) = spawned {
                        log::warn!("simulator could not start a connection thread: {err}");
                    }
                }
            })?;
        Ok(Listener {
            addr,
            stopping,
            acceptor: Some(acceptor),
            rtt_us,
            tls: secure,
        })
    }

    /// Simulates a network round trip of `rtt` for connections accepted from now on: each is
    /// served two round trips after it was accepted (its handshake, then its first response);
    /// later messages on it are not delayed. Zero (the default) serves at once.
    pub fn set_rtt(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_us.store(us, Ordering::Relaxed);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://127.0.0.1:PORT` (`http`, `ws`), or with TLS the secure scheme and the host
    /// name the certificate names: `https://localhost:PORT`, `wss://localhost:PORT`.
    pub fn url(&self, scheme: &str) -> String {
        if self.tls {
            format!("{scheme}s://localhost:{}", self.addr.port())
        } else {
            format!("{scheme}://{}", self.addr)
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Serves one connection of a simulator.
pub type ConnectionServer = Box<dyn Fn(SimStream) -> io::Result<()> + Send + Sync>;

/// A WebSocket simulator's shared state, with a port of its own or served through another
/// simulator's listener (both ElevenLabs sockets share one port).
pub struct WsSimCore<S> {
    listener: Option<Listener>,
    state: std::sync::Arc<std::sync::Mutex<S>>,
}

impl<S: Default + Send + 'static> WsSimCore<S> {
    /// The core without a listener, and what serves a connection with its state.
    pub fn detached<F>(serve: F) -> (WsSimCore<S>, ConnectionServer)
    where
        F: Fn(SimStream, &Arc<std::sync::Mutex<S>>) -> io::Result<()> + Send + Sync + 'static,
    {
        let state = std::sync::Arc::new(std::sync::Mutex::new(S::default()));
        let shared = state.clone();
        let server: ConnectionServer = Box::new(move |stream| serve(stream, &shared));
        (
            WsSimCore {
                listener: None,
                state,
            },
            server,
        )
    }

    /// Gives the core a port of its own, served by `server`.
    pub fn listen(mut self, name: &str, server: ConnectionServer) -> io::Result<WsSimCore<S>> {
        self.listener = Some(Listener::start(name, None, server)?);
        Ok(self)
    }

    /// The simulated round trip of its own port ([`Listener::set_rtt`]; nothing when served
    /// through another listener).
    pub fn set_rtt(&self, rtt: Duration) {
        if let Some(listener) = &self.listener {
            listener.set_rtt(rtt);
        }
    }

    /// `ws://127.0.0.1:PORT`, or empty when served through another listener.
    pub fn base_url(&self) -> String {
        self.listener
            .as_ref()
            .map_or_else(String::new, |l| l.url("ws"))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Connects, sends a line, and returns how long until the first byte of the answer.
    fn first_byte_after(addr: SocketAddr, request: &[u8]) -> Duration {
        let started = Instant::now();
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout set");
        stream.write_all(request).expect("request sent");
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).expect("first byte");
        started.elapsed()
    }

    fn greeter() -> io::Result<Listener> {
        Listener::start("test-rtt", None, |mut stream| {
            let accepted = accepted_at().ok_or_else(|| io::Error::other("no accept time"))?;
            let waited = accepted.elapsed().as_millis();
            stream.write_all(format!("{waited}\n").as_bytes())
        })
    }

    #[test]
    fn over_tls_the_connection_thread_serves_plaintext_and_closes_with_close_notify() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let ca = crate::sim::tls::SimCa::generate().expect("a CA");
        let listener = Listener::start("test-tls", Some(ca.server_config()), |mut stream| {
            assert!(stream.is_tls());
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            // Peeked, then read again whole.
            let line = String::from_utf8_lossy(stream.peek_line(64)?).into_owned();
            let mut request = [0u8; 11];
            stream.read_exact(&mut request)?;
            let echo = format!("{line}|{}", String::from_utf8_lossy(&request));
            stream.write_all(echo.as_bytes())
        })
        .expect("listens");
        assert!(listener.url("ws").starts_with("wss://localhost:"));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).expect("the CA's PEM"))
            .expect("a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("a name");
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a client");
        let tcp =
            TcpStream::connect_timeout(&listener.addr(), Duration::from_secs(5)).expect("connects");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout set");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /\r\nabcd").expect("request sent");
        let mut answer = String::new();
        // A clean end: without close_notify rustls reports an unexpected EOF.
        tls.read_to_string(&mut answer)
            .expect("answer, then close_notify");
        assert_eq!(answer, "GET /|GET /\r\nabcd");
    }

    #[test]
    fn a_round_trip_delays_the_handshake_and_first_response() {
        let listener = greeter().expect("listens");
        let rtt = Duration::from_millis(40);
        listener.set_rtt(rtt);
        // Lower bounds only: the connection is served after the handshake's and the first
        // response's round trips.
        assert!(first_byte_after(listener.addr(), b"hi\n") >= rtt);
        let mut stream =
            TcpStream::connect_timeout(&listener.addr(), Duration::from_secs(5)).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout set");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        // The serving thread saw its accept time before the round trips were slept.
        let waited: u128 = answer.trim().parse().expect("a number");
        assert!(
            waited >= 2 * rtt.as_millis(),
            "served {waited} ms after accept"
        );
    }

    #[test]
    fn every_simulated_provider_takes_the_round_trip() {
        let rtt = Duration::from_millis(30);
        let sims = crate::sim::Simulators::start_with(crate::sim::SimTiming {
            provider_rtt_ms: Some(30),
            ..crate::sim::SimTiming::default()
        })
        .expect("simulators start");
        let addr = |url: String| -> SocketAddr {
            let host = url.split("://").nth(1).unwrap_or("").split('/').next();
            host.unwrap_or("").parse().expect("a socket address")
        };
        let request = b"POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        for url in [
            sims.anthropic.base_url(),
            sims.elevenlabs.api_base_url(),
            sims.mcp.url(),
            sims.twilio.base_url(),
        ] {
            assert!(first_byte_after(addr(url.clone()), request) >= rtt, "{url}");
        }
        sims.set_provider_rtt(Duration::ZERO);
        // Nothing else to assert about zero without timing; it must still answer.
        first_byte_after(addr(sims.anthropic.base_url()), request);
    }
}
