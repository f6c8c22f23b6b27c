//! The media-stream listener on `MEDIA_PORT`: our own `TcpListener`, so each Twilio socket is a
//! `TcpStream` we own — `TCP_NODELAY`, a read timeout that notices a dead peer, and
//! `try_clone` to read on one thread and write on another (tiny_http's upgrade offers none of
//! these; see the design notes in `ARCHITECTURE.md`).
//!
//! Each connection gets one named thread (`call-N`) that does the WebSocket handshake itself
//! (only `GET /call/stream`, Twilio's signature checked when validation is on and one is sent),
//! waits for Twilio's `start`, then takes a place under `MAX_CONCURRENT_CALLS` — over it the
//! stream is closed with 1013 "try again later", as the original did — and runs the call
//! ([`crate::call`]).
//!
//! Before its `start` a connection is nobody's call: it holds no place under the cap and no
//! provider session, and has deadlines of its own, apart from the call's timers: the whole
//! handshake request within [`HANDSHAKE_TIMEOUT`], then `start` within [`START_TIMEOUT`] (Twilio
//! sends `connected` and `start` at once). Audio before `start` is dropped and counted. At most
//! [`MAX_PENDING_HANDSHAKES`] connections wait so, [`MAX_PENDING_PER_SOURCE`] of them from one
//! source; past that the oldest waiting one is closed to make room ([`super::pending`]), so a
//! flood of idle sockets only displaces itself. Behind the TLS proxy (a `TRUSTED_PROXY` peer)
//! the source is the client the proxy forwarded, by the webhook port's rule.
//!
//! The acceptor sleeps in `poll(2)` on the listener and a wake-up descriptor: it wakes for a
//! connection or for [`MediaServer::stop_accepting`], and once a second to beat its liveness
//! for the systemd watchdog.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use super::pending::Pending;
use crate::call::socket::{self, TwilioSocket, CALL_STACK};

use crate::app::App;
use crate::calls::CallRegistry;
use crate::metrics::MediaDrop;
use crate::poll::{self, WakeReceiver, WakeSender, Watch};
use crate::twilio::media_messages::{self, Inbound, Received, StreamStart};

/// Longest handshake request accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send its whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after the handshake `start` may take (Twilio sends it at once).
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections waiting for their handshake or `start` at once (each holds a thread).
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Of those, from one source. A real stream waits one round trip; a source with this many
/// waiting is a flood (or a burst of calls from one Twilio address larger than any seen).
pub const MAX_PENDING_PER_SOURCE: usize = 16;
/// Invalid messages tolerated before `start`.
const MAX_INVALID_BEFORE_START: u32 = 10;

/// The waiting connections, each with a clone of its socket to close it by.
type PendingTable = Mutex<Pending<TcpStream>>;

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
    let pending: Arc<PendingTable> = Arc::new(Mutex::new(Pending::new(
        MAX_PENDING_HANDSHAKES,
        MAX_PENDING_PER_SOURCE,
    )));
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
                // A clone to close it by, should it have to make room (one more descriptor
                // for each of at most MAX_PENDING_HANDSHAKES connections).
                let handle = match stream.try_clone() {
                    Ok(handle) => handle,
                    Err(err) => {
                        log::error!(peer:% = peer, error:% = err; "media.accept_failed: connection dropped");
                        continue;
                    }
                };
                let (ticket, evicted) = {
                    let mut table = lock(&pending);
                    let admitted = table.admit(peer.ip(), handle);
                    note_waiting(app, table.len());
                    admitted
                };
                if let Some(evicted) = evicted {
                    make_room(app, evicted);
                }
                let n = CONNECTION.fetch_add(1, Ordering::Relaxed);
                let for_call = app.clone();
                let table = pending.clone();
                let spawned = thread::Builder::new()
                    .name(format!("call-{n}"))
                    .stack_size(CALL_STACK)
                    .spawn(move || {
                        let waiting = Waiting {
                            table: &table,
                            ticket,
                            app: &for_call,
                        };
                        serve_connection(&for_call, stream, peer, n, &waiting)
                    });
                if let Err(err) = spawned {
                    let mut table = lock(&pending);
                    table.release(ticket);
                    note_waiting(app, table.len());
                    drop(table);
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

fn lock(table: &PendingTable) -> std::sync::MutexGuard<'_, Pending<TcpStream>> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes a waiting connection that must make room, and says so.
fn make_room(app: &App, evicted: super::pending::Evicted<TcpStream>) {
    let count = app.metrics.media_drop(evicted.why);
    // A flood makes one of these per connection: the first few, then every power of two,
    // with the running count (the metric has every one).
    if count <= 3 || count.is_power_of_two() {
        log::warn!(
            source:% = evicted.source,
            reason = evicted.why.as_str(),
            count = count;
            "media.dropped: too many connections waiting for a handshake or start; the oldest was closed"
        );
    }
    // Its thread's read ends at once.
    let _ = evicted.handle.shutdown(std::net::Shutdown::Both);
}

/// A connection's place among the waiting ones, left when it is dropped.
struct Waiting<'a> {
    table: &'a PendingTable,
    ticket: u64,
    app: &'a App,
}

/// The `cotrackpro_media_connections_waiting` gauge, set under the table's lock.
fn note_waiting(app: &App, waiting: usize) {
    app.metrics
        .media_waiting
        .store(waiting as u64, Ordering::Relaxed);
}

impl Waiting<'_> {
    /// The connection's real source is `source` (forwarded by the proxy).
    fn rekey(&self, app: &App, source: IpAddr) {
        let evicted = {
            let mut table = lock(self.table);
            let evicted = table.rekey(self.ticket, source);
            note_waiting(app, table.len());
            evicted
        };
        if let Some(evicted) = evicted {
            make_room(app, evicted);
        }
    }

    /// No longer waiting; `false` if it had been made to leave meanwhile.
    fn leave(&self) -> bool {
        let mut table = lock(self.table);
        let left = table.release(self.ticket);
        note_waiting(self.app, table.len());
        left
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

fn serve_connection(
    app: &Arc<App>,
    stream: TcpStream,
    peer: SocketAddr,
    n: u64,
    waiting: &Waiting<'_>,
) {
    let mut socket = match handshake(app, stream, peer, waiting) {
        Ok(Some(socket)) => socket,
        Ok(None) => return,
        Err(err) => {
            if matches!(
                err.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) {
                let count = app.metrics.media_drop(MediaDrop::HandshakeTimeout);
                // Idle connections make one of these each: the first few, then every power
                // of two.
                if count <= 3 || count.is_power_of_two() {
                    log::warn!(peer:% = peer, error:% = err, count = count; "media.handshake_failed");
                }
            } else {
                // Closed mid-handshake (by the client, or to make room: counted there).
                log::debug!(peer:% = peer, error:% = err; "media.handshake_failed");
            }
            return;
        }
    };
    let Some(start) = await_start(app, &mut socket, Instant::now() + START_TIMEOUT) else {
        return;
    };
    // From here every line of this thread and of the call's threads carries the CallSid the
    // `start` names (bounded: it is the client's until the stream is admitted).
    let _call = crate::logging::enter_call(Some(
        crate::http::wire::log_value(&start.call_sid, 40).into(),
    ));
    if !waiting.leave() {
        // Made to leave just as its `start` came: its socket is closed already.
        return;
    }
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
        record_refusal(app, &start);
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
    crate::call::run(&context, socket, slot, n, start);
}

/// Reads the stream until Twilio's `start` (see the module docs): `connected` is noted,
/// audio dropped and counted, a ping answered, a close answered with a close, a message over
/// the size limit closed with 1009; no `start` by `deadline` closes the stream (1008).
/// `None`: the stream ended without one (and was closed as it should be).
fn await_start(app: &App, socket: &mut TwilioSocket, deadline: Instant) -> Option<StreamStart> {
    let peer = socket.peer;
    let mut frames = 0u64;
    let mut invalid = 0u32;
    let start = loop {
        let message = match socket.reader.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                let mut watch = [Watch::read(socket.reader.get_ref().fd())];
                match poll::wait(&mut watch, Some(deadline)) {
                    Ok(0) => {
                        let count = app.metrics.media_drop(MediaDrop::StartTimeout);
                        if count <= 3 || count.is_power_of_two() {
                            log::warn!(peer:% = peer, frames = frames, count = count; "media.dropped: no start within the deadline; stream closed with 1008");
                        }
                        socket::close_and_drain(
                            socket,
                            CloseFrame {
                                code: CloseCode::Policy,
                                reason: "no start message".into(),
                            },
                        );
                        break None;
                    }
                    Ok(_) => continue,
                    Err(_) => break None,
                }
            }
            Err(tungstenite::Error::Capacity(_)) => {
                log::warn!(peer:% = peer; "media.refused: message over the size limit before start; closed with 1009");
                socket::close_and_drain(
                    socket,
                    CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too big".into(),
                    },
                );
                break None;
            }
            Err(_) => break None,
        };
        match message {
            Message::Text(text) => match media_messages::parse(text.as_str()) {
                Ok(Received::Message(Inbound::Start(start))) => break Some(start),
                Ok(Received::Media(_)) => {
                    frames += 1;
                    app.metrics
                        .media_frames_before_start
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(Received::Message(Inbound::Stop)) => {
                    socket::close_and_drain(socket, socket::close_answer(Some(1000)));
                    break None;
                }
                // `connected`, and marks or keys that cannot mean anything yet.
                Ok(Received::Message(_)) => {}
                Err(_) => invalid += 1,
            },
            Message::Ping(payload) => {
                let _ = socket.writer.send(Message::Pong(payload));
            }
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                let _ = socket
                    .writer
                    .send(Message::Close(Some(socket::close_answer(code))));
                break None;
            }
            Message::Binary(_) => invalid += 1,
            Message::Pong(_) | Message::Frame(_) => {}
        }
        if invalid >= MAX_INVALID_BEFORE_START {
            log::warn!(peer:% = peer, invalid = invalid; "media.refused: invalid messages before start; closed with 1008");
            socket::close_and_drain(
                socket,
                CloseFrame {
                    code: CloseCode::Policy,
                    reason: "invalid messages".into(),
                },
            );
            break None;
        }
    };
    // (A stream that never started says its frames in its own line.)
    if frames > 0 && start.is_some() {
        log::warn!(peer:% = peer, frames = frames; "media.audio_before_start: dropped, never sent to speech-to-text");
    }
    start
}

/// The connection's source for the flood limits: the peer, or, when the peer is one of
/// `TRUSTED_PROXY` (the TLS proxy), the client it forwarded — the webhook port's rule
/// ([`crate::http::forwarded_client`]). A hop that is not an address leaves the peer.
fn source_of(trusted: &[IpAddr], peer: SocketAddr, forwarded_for: Option<&str>) -> IpAddr {
    crate::http::forwarded_client(trusted, peer.ip(), forwarded_for)
        .and_then(|hop| hop.parse::<IpAddr>().ok())
        .unwrap_or(peer.ip())
}

/// A stream refused at `MAX_CONCURRENT_CALLS` after its `start`: when the start is the call's
/// own (its token is good; it is used up here, the stream being refused anyway), the call's
/// record gets the verdict, so it does not stay `active`. A start without a good token
/// changes no record.
fn record_refusal(app: &App, start: &StreamStart) {
    use crate::records::event::{CallStatus, Event, EventKind};
    use crate::twilio::stream_token;
    let now = crate::timestamp::now_ms();
    let token = start.parameter(stream_token::PARAMETER);
    if app
        .stream_tokens
        .admit(token, &start.call_sid, now / 1000)
        .is_err()
    {
        return;
    }
    let at = crate::timestamp::format_ms(now);
    let event = Event {
        status: Some(CallStatus::Failed),
        ended_at: Some(at.clone()),
        end_reason: Some("refused: MAX_CONCURRENT_CALLS reached (closed with 1013)".into()),
        ..Event::new(
            EventKind::Completed,
            &start.call_sid,
            &at,
            crate::records::ttl_from(now, app.config.records.ttl_days),
        )
    };
    if let Err(err) = app
        .record_writer
        .append_and_wait(event, Duration::from_secs(5))
    {
        log::error!(callSid = start.call_sid.as_str(), error:% = err; "records.completeCall.failed");
    }
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
    waiting: &Waiting<'_>,
) -> io::Result<Option<TwilioSocket>> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let (head, leftover) = read_head(&mut stream)?;
    let source = source_of(
        &app.config.http.trusted_proxies,
        peer,
        head.header("X-Forwarded-For"),
    );
    if source != peer.ip() {
        waiting.rekey(app, source);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let trusted: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let proxy: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let remote: SocketAddr = "198.51.100.7:50000".parse().unwrap();
        let forwarded = Some("203.0.113.9, 192.0.2.44");
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // The proxy's own view is the nearest hop; what the client claimed before it is not.
        assert_eq!(source_of(&trusted, proxy, forwarded), ip("192.0.2.44"));
        // A hop the proxy itself (or another trusted one) added is skipped.
        assert_eq!(
            source_of(&trusted, proxy, Some("192.0.2.44, ::1")),
            ip("192.0.2.44")
        );
        // A peer that is not a trusted proxy is who it is, whatever it says — on this
        // machine too, when no proxy is trusted.
        assert_eq!(source_of(&trusted, remote, forwarded), remote.ip());
        assert_eq!(source_of(&[], proxy, forwarded), proxy.ip());
        let other_local: SocketAddr = "127.0.0.2:50000".parse().unwrap();
        assert_eq!(
            source_of(&trusted, other_local, forwarded),
            other_local.ip()
        );
        // Nothing (or nothing readable) forwarded: the peer.
        assert_eq!(source_of(&trusted, proxy, None), proxy.ip());
        assert_eq!(source_of(&trusted, proxy, Some("unknown")), proxy.ip());
    }
}
