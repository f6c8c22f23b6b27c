//! The media-stream listener on `MEDIA_PORT`: our own `TcpListener`, so each Twilio socket is a
//! `TcpStream` we own — `TCP_NODELAY`, a read timeout that notices a dead peer, and
//! `try_clone` to read on one thread and write on another (tiny_http's upgrade offers none of
//! these; see the design notes in `ARCHITECTURE.md`).
//!
//! Each connection gets one named thread (`call-N`) that does the WebSocket handshake itself
//! (only `GET /call/stream`, Twilio's signature checked when validation is on and one is sent), takes a place
//! under `MAX_CONCURRENT_CALLS` — over it the stream is closed with 1013 "try again later", as
//! the original did — and then runs the call ([`crate::call`]).
//!
//! The acceptor sleeps in `poll(2)` on the listener and a wake-up descriptor: it wakes for a
//! connection or for [`MediaServer::stop_accepting`], and once a second to beat its liveness
//! for the systemd watchdog.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

use crate::call::socket::{TwilioSocket, CALL_STACK};

use crate::app::App;
use crate::calls::CallRegistry;
use crate::poll::{self, WakeReceiver, WakeSender, Watch};

/// Longest handshake request accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send its whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; more connections are closed at once (a flood of idle
/// connections must not take every thread from real calls).
const MAX_PENDING_HANDSHAKES: usize = 64;

/// The running listener.
pub struct MediaServer {
    addr: SocketAddr,
    /// Dropping it wakes the acceptor, which then ends.
    stop: Option<WakeSender>,
    acceptor: Option<JoinHandle<()>>,
}

impl MediaServer {
    /// Serves `listener` on a named acceptor thread.
    pub fn start(app: Arc<App>, listener: TcpListener) -> io::Result<MediaServer> {
        let addr = listener.local_addr()?;
        // Non-blocking: a connection reset between the wake-up and `accept` must not block.
        listener.set_nonblocking(true)?;
        let (stop, stopped) = poll::wake_pair()?;
        let acceptor = thread::Builder::new()
            .name("media-accept".into())
            .stack_size(CALL_STACK)
            .spawn(move || accept_loop(&app, &listener, &stopped))?;
        Ok(MediaServer {
            addr,
            stop: Some(stop),
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; live calls are not touched (see [`crate::serve::Server::shutdown`]).
    pub fn stop_accepting(&mut self) {
        drop(self.stop.take());
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for MediaServer {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

/// Accepts until `stop`'s sender is dropped.
fn accept_loop(app: &Arc<App>, listener: &TcpListener, stop: &WakeReceiver) {
    use std::os::fd::AsFd;
    static CONNECTION: AtomicU64 = AtomicU64::new(1);
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        // Liveness for the systemd watchdog (crate::watchdog): beat at least once a second.
        app.liveness.media.beat();
        let beat_due = std::time::Instant::now() + crate::watchdog::BEAT_INTERVAL;
        let mut watches = [Watch::read(listener.as_fd()), Watch::read(stop.fd())];
        if let Err(err) = poll::wait(&mut watches, Some(beat_due)) {
            log::error!(error:% = err; "media.accept_failed: cannot wait for connections");
            return;
        }
        if watches[1].readable() && !stop.drain() {
            return;
        }
        if !watches[0].readable() {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if pending.load(Ordering::SeqCst) >= MAX_PENDING_HANDSHAKES {
                    log::warn!(peer:% = peer; "media.refused: too many handshakes in progress");
                    drop(stream);
                    continue;
                }
                pending.fetch_add(1, Ordering::SeqCst);
                let n = CONNECTION.fetch_add(1, Ordering::Relaxed);
                let for_call = app.clone();
                let counter = pending.clone();
                let spawned = thread::Builder::new()
                    .name(format!("call-{n}"))
                    .stack_size(CALL_STACK)
                    .spawn(move || serve_connection(&for_call, stream, peer, n, &counter));
                if let Err(err) = spawned {
                    pending.fetch_sub(1, Ordering::SeqCst);
                    app.metrics
                        .thread_spawn_failures
                        .fetch_add(1, Ordering::Relaxed);
                    log::error!(error:% = err; "media.spawn_failed: connection dropped");
                }
            }
            // Gone between the wake-up and the accept (reset by the peer): wait again.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => {
                // EMFILE and friends: back off rather than spin.
                log::error!(error:% = err; "media.accept_failed");
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn serve_connection(
    app: &Arc<App>,
    stream: TcpStream,
    peer: SocketAddr,
    n: u64,
    pending: &AtomicUsize,
) {
    let handshake = handshake(app, stream, peer);
    pending.fetch_sub(1, Ordering::SeqCst);
    let socket = match handshake {
        Ok(Some(socket)) => socket,
        Ok(None) => return,
        Err(err) => {
            log::warn!(peer:% = peer, error:% = err; "media.handshake_failed");
            return;
        }
    };
    let limit = app.config.calls.max_concurrent;
    let Some(slot) = CallRegistry::try_admit(&app.calls, limit) else {
        app.metrics
            .calls_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log::warn!(
            peer:% = peer,
            active = app.calls.active(),
            limit = limit;
            "call.refused: MAX_CONCURRENT_CALLS reached; stream closed with 1013"
        );
        let TwilioSocket {
            mut reader,
            mut writer,
            ..
        } = socket;
        let _ = writer.close(Some(CloseFrame {
            code: CloseCode::Again,
            reason: "server at capacity, try again later".into(),
        }));
        let _ = writer.flush();
        drain_until_close(&mut reader);
        return;
    };
    let context = crate::call::Context {
        config: &app.config,
        records: &app.record_writer,
        metrics: &app.metrics,
        providers: &app.voice,
        stream_tokens: &app.stream_tokens,
    };
    crate::call::run(&context, socket, slot, n);
}

/// A clean close: reads (and drops) what the client sent until its close answer, for at most a
/// second, so it sees our close code rather than a connection reset under its next write. The
/// reading half never blocks, so it waits for data with `poll`.
fn drain_until_close(reader: &mut tungstenite::WebSocket<crate::call::socket::ReadHalf>) {
    let until = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match reader.read() {
            Ok(tungstenite::Message::Close(_)) => return,
            Ok(_) => {}
            Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                let fd = reader.get_ref().fd();
                let mut watch = [crate::poll::Watch::read(fd)];
                match crate::poll::wait(&mut watch, Some(until)) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            Err(_) => return,
        }
    }
}

/// A handshake request, as far as we need it.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the request head; returns it and any bytes read past it.
fn read_head(stream: &mut TcpStream) -> io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let end = loop {
        // A deadline for the whole head, not per read: a byte every few seconds is not a client.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake not complete within 5 s",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake request too large",
            ));
        }
    };
    let leftover = buf.split_off(end);
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("").to_string();
    let target = request_line.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((
        Head {
            method,
            path,
            headers,
        },
        leftover,
    ))
}

fn refuse(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// Performs the server side of the WebSocket handshake; `None` when the request was refused
/// (and answered).
fn handshake(
    app: &App,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> io::Result<Option<TwilioSocket>> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let (head, leftover) = read_head(&mut stream)?;
    if head.path != "/call/stream" {
        log::warn!(peer:% = peer, path = head.path.as_str(); "media.refused: unknown path");
        refuse(
            &mut stream,
            "404 Not Found",
            "only /call/stream is served here\n",
        )?;
        return Ok(None);
    }
    let key = head.header("Sec-WebSocket-Key").map(str::to_string);
    let upgrade = head
        .header("Upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (Some(key), true, "GET") = (key, upgrade, head.method.as_str()) else {
        refuse(
            &mut stream,
            "400 Bad Request",
            "a WebSocket upgrade (GET with Upgrade: websocket) is expected\n",
        )?;
        return Ok(None);
    };
    if head.header("Sec-WebSocket-Version") != Some("13") {
        let response = "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        stream.write_all(response.as_bytes())?;
        return Ok(None);
    }
    let config = &app.config;
    // A signature on the upgrade is checked when one comes; its absence is not a refusal.
    // Twilio's own sources disagree on whether the upgrade is signed, and the signature covers
    // only the fixed URL (the same for every call, replayable). What admits a stream is the
    // per-call token in its `start` message (`twilio::stream_token`), checked by the call.
    let signature = head.header("X-Twilio-Signature");
    if config.twilio.validate_signature && signature.is_some() {
        // Twilio signs the upgrade over the stream URL exactly as our TwiML gave it, with no
        // parameters. A missing token with validation on is refused by `check-config`.
        let url = crate::twilio::stream_url(&config.domains.ws);
        let token = config.twilio.auth_token.as_ref().map(|t| t.expose());
        let verdict = match token {
            Some(token) => crate::twilio::signature::verify(token, signature, &[url], &[])
                .map_err(|e| e.to_string()),
            None => Err("TWILIO_AUTH_TOKEN is not set".to_string()),
        };
        if let Err(why) = verdict {
            log::warn!(peer:% = peer, reason = why.as_str(); "media.refused: bad Twilio signature");
            refuse(&mut stream, "403 Forbidden", "signature check failed\n")?;
            return Ok(None);
        }
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    // From here Twilio sends a frame every 20 ms: a long quiet read means it is gone.
    stream.set_read_timeout(Some(config.calls.tuning.media_read_timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    TwilioSocket::split(stream, leftover, peer).map(Some)
}
