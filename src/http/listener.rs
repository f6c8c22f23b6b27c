//! The `http-accept` thread: accepts connections on `HTTP_PORT` and reads every request head
//! and body itself, on non-blocking sockets in one `poll(2)` loop, so that a slow or stalled
//! client holds a few kilobytes of buffer and nothing else. Only a request that has fully
//! arrived goes to a worker ([`Job`]); a worker never waits for a client's bytes.
//!
//! The limits, and what each one answers:
//! - open connections over `HTTP_MAX_CONNECTIONS`: 503 at once, counted, the connection closed;
//! - a head over [`wire::MAX_HEAD_BYTES`]: 431;
//! - a head and body not complete [`REQUEST_DEADLINE`] after their first byte (or after the
//!   connection was accepted): 408;
//! - a `Content-Length` over `HTTP_MAX_BODY_BYTES`: 413, before any of the body is read (a
//!   chunked body: 413 as soon as it passes the limit);
//! - every worker busy and the queue full: 503.
//!
//! `accept` failing for want of descriptors (EMFILE, ENFILE) closes a spare descriptor kept for
//! this, accepts and closes the waiting connection (so the backlog does not keep the listener
//! readable forever), re-opens the spare and stops accepting for [`ACCEPT_BACKOFF`]: the loop
//! logs, counts and goes on; nothing here panics or returns but the order to stop.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::wire::{self, Framing, Head, HeadError};
use crate::metrics::HttpCounters;
use crate::poll::{self, WakeReceiver, Watch};
use crate::watchdog::{Beat, BEAT_INTERVAL};

/// How long a request may take to arrive, head and body, from its first byte (or from the
/// accept, for a connection's first request). Twilio's webhooks arrive in one packet or two.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// How long a kept-alive connection may sit idle between requests before it is closed. Longer
/// than a reverse proxy keeps its idle upstream connections (Caddy: 2 min by default), so the
/// proxy closes first and never sends a webhook into a connection we are closing.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(150);

/// How long writing an answer may take, for a client that reads slowly.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a refused connection is read (and discarded) after its error response, so that
/// closing it with unread bytes does not reset it before the client reads the answer.
const LINGER: Duration = Duration::from_secs(2);

/// How long accepting pauses after the process ran out of descriptors.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// One read's buffer. Heads and bodies are copied from it into the connection's own buffer,
/// which grows only as far as the bytes that arrived (and at most one read past a limit).
const READ_CHUNK: usize = 16 * 1024;

/// A connection's place under `HTTP_MAX_CONNECTIONS`, given back when the connection closes.
#[derive(Debug)]
struct Slot(Arc<HttpCounters>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An accepted connection, in whichever thread holds it.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Bytes read and not yet consumed (the start of the next request on a kept-alive one).
    buf: Vec<u8>,
    _slot: Slot,
}

/// A worker's answer, for the loop to write (a client that reads slowly holds a buffer here,
/// never a worker).
#[derive(Debug)]
pub struct Answer {
    pub conn: Conn,
    pub bytes: Vec<u8>,
    /// Whether the connection then waits for the next request (else it is closed).
    pub keep_alive: bool,
}

/// A request that has fully arrived, for a worker to answer on `conn`.
#[derive(Debug)]
pub struct Job {
    pub conn: Conn,
    pub head: Head,
    pub body: Vec<u8>,
    /// When its first byte arrived (the access log's duration starts here).
    pub started: Instant,
}

/// What the loop is doing with a connection.
#[derive(Debug)]
enum Phase {
    /// Between requests (or just accepted): no byte of the next request yet.
    Idle,
    /// Reading the head; the part of `buf` already searched for its end.
    Head { searched: usize },
    /// Reading the body framed by `framing`, after a head of `head_len` bytes.
    Body {
        head: Head,
        head_len: usize,
        framing: Framing,
    },
    /// Writing a worker's answer; the next request waits in the kernel meanwhile.
    Writing {
        bytes: Vec<u8>,
        written: usize,
        keep_alive: bool,
    },
    /// An error was answered; reading and discarding until the client closes or `LINGER`.
    Linger,
}

#[derive(Debug)]
struct Reading {
    conn: Conn,
    phase: Phase,
    deadline: Instant,
    /// When the current request's first byte arrived.
    started: Instant,
}

/// What a read step decided.
enum Step {
    Wait,
    /// A whole request: its head and body (the connection's buffer keeps what follows).
    Ready(Head, Vec<u8>),
    Refuse(u16, String),
    Close,
}

/// The loop's fixed inputs.
pub struct Loop {
    pub listener: TcpListener,
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub counters: Arc<HttpCounters>,
    pub jobs: Sender<Job>,
    /// The workers' answers, with their connections.
    pub answered: Receiver<Answer>,
    /// Closed (its sender dropped) to stop the loop.
    pub wake: WakeReceiver,
    /// Woken by a worker when it hands an answer over.
    pub answered_woken: WakeReceiver,
    pub beat: Arc<Beat>,
}

/// The accept loop; returns when `wake`'s sender is dropped.
pub fn run(lp: Loop) {
    let mut spare = open_spare();
    let mut conns: Vec<Reading> = Vec::new();
    let mut paused_until: Option<Instant> = None;
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut over_cap = RateLimitedLog::default();
    let mut busy = RateLimitedLog::default();
    let mut refused = RateLimitedLog::default();
    let mut accept_failed = RateLimitedLog::default();
    loop {
        lp.beat.beat();
        let now = Instant::now();
        if paused_until.is_some_and(|t| t <= now) {
            paused_until = None;
        }
        let mut deadline = now + BEAT_INTERVAL;
        for r in &conns {
            deadline = deadline.min(r.deadline);
        }
        if let Some(t) = paused_until {
            deadline = deadline.min(t);
        }
        let accepting = paused_until.is_none();
        let (listener_ready, woken, ready) = {
            let mut watches = Vec::with_capacity(conns.len() + 2);
            watches.push(Watch::read(lp.wake.fd()));
            watches.push(Watch::read(lp.answered_woken.fd()));
            if accepting {
                watches.push(Watch::read(lp.listener.as_fd()));
            }
            for r in &conns {
                let fd = r.conn.stream.as_fd();
                watches.push(match r.phase {
                    Phase::Writing { .. } => Watch::write(fd),
                    _ => Watch::read(fd),
                });
            }
            if let Err(err) = poll::wait(&mut watches, Some(deadline)) {
                // EINTR is retried inside; ENOMEM is all that is left. Breathe and go on.
                log::error!(error:% = err; "http.poll_failed");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            let first_conn = if accepting { 3 } else { 2 };
            let ready: Vec<bool> = watches[first_conn..]
                .iter()
                .map(|w| w.readable() || w.writable())
                .collect();
            if watches[1].readable() {
                // Only wake-ups: the answers themselves come through `answered`.
                lp.answered_woken.drain();
            }
            (
                accepting && watches[2].readable(),
                watches[0].readable(),
                ready,
            )
        };
        if woken && !lp.wake.drain() {
            return;
        }
        while let Ok(answer) = lp.answered.try_recv() {
            let now = Instant::now();
            // Written in the step below, with the others (as far as the socket takes it).
            conns.push(Reading {
                conn: answer.conn,
                phase: Phase::Writing {
                    bytes: answer.bytes,
                    written: 0,
                    keep_alive: answer.keep_alive,
                },
                deadline: now + WRITE_DEADLINE,
                started: now,
            });
        }
        let now = Instant::now();
        // Back to front, so `swap_remove` never moves an unvisited connection.
        for i in (0..conns.len()).rev() {
            let ready = ready.get(i).copied().unwrap_or(true);
            let step = if ready && matches!(conns[i].phase, Phase::Writing { .. }) {
                write_step(&mut conns[i], lp.max_body_bytes, now)
            } else if ready {
                read_step(&mut conns[i], &mut chunk, lp.max_body_bytes, now)
            } else if conns[i].deadline <= now {
                expire(&conns[i])
            } else {
                Step::Wait
            };
            match step {
                Step::Wait => {}
                Step::Close => drop(conns.swap_remove(i)),
                Step::Refuse(status, message) => {
                    count_refusal(&lp.counters, status);
                    let r = &mut conns[i];
                    // A flood of bad requests must not become a flood of log lines.
                    if let Some(suppressed) = refused.due() {
                        log::warn!(
                            peer:% = r.conn.peer,
                            status = status,
                            reason = message.as_str(),
                            suppressedSinceLast = suppressed;
                            "http.refused"
                        );
                    }
                    answer_and_linger(r, status, &message, now);
                }
                Step::Ready(head, body) => {
                    let r = conns.swap_remove(i);
                    let job = Job {
                        conn: r.conn,
                        head,
                        body,
                        started: r.started,
                    };
                    if let Err(err) = lp.jobs.try_send(job) {
                        let (TrySendError::Full(job) | TrySendError::Disconnected(job)) = err;
                        lp.counters.refused_busy.fetch_add(1, Ordering::Relaxed);
                        busy.note("http.refused_busy: every worker busy and the queue full");
                        let mut r = Reading {
                            conn: job.conn,
                            phase: Phase::Linger,
                            deadline: now,
                            started: now,
                        };
                        answer_and_linger(&mut r, 503, "Server busy, try again", now);
                        conns.push(r);
                    }
                }
            }
        }
        if listener_ready {
            paused_until = accept_some(
                &lp,
                &mut conns,
                &mut spare,
                &mut over_cap,
                &mut accept_failed,
            );
        }
    }
}

/// Accepts what is waiting (at most a batch, so reading is not starved). Returns when to
/// accept again, if accepting must pause.
fn accept_some(
    lp: &Loop,
    conns: &mut Vec<Reading>,
    spare: &mut Option<File>,
    over_cap: &mut RateLimitedLog,
    accept_failed: &mut RateLimitedLog,
) -> Option<Instant> {
    for _ in 0..64 {
        match lp.listener.accept() {
            Ok((stream, peer)) => {
                lp.counters.accepted.fetch_add(1, Ordering::Relaxed);
                let open = lp.counters.open.fetch_add(1, Ordering::SeqCst) + 1;
                let slot = Slot(lp.counters.clone());
                let conn = Conn {
                    stream,
                    peer,
                    buf: Vec::new(),
                    _slot: slot,
                };
                let now = Instant::now();
                let r = Reading {
                    conn,
                    phase: Phase::Idle,
                    deadline: now + REQUEST_DEADLINE,
                    started: now,
                };
                if r.conn.stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if open > lp.max_connections {
                    lp.counters.refused_over_cap.fetch_add(1, Ordering::Relaxed);
                    over_cap.note("http.refused_over_cap: HTTP_MAX_CONNECTIONS reached");
                    // Closed at once: no linger, the point is to give the descriptor back.
                    let _ = (&r.conn.stream).write(&error_response(503, "Too many connections"));
                    continue;
                }
                r.conn.stream.set_nodelay(true).ok();
                conns.push(r);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                lp.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                let out_of_fds = matches!(
                    err.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if out_of_fds {
                    // The spare gives one descriptor back: accept the waiting connection and
                    // close it, so a client learns now instead of waiting in the backlog.
                    drop(spare.take());
                    if let Ok((stream, _)) = lp.listener.accept() {
                        drop(stream);
                    }
                    *spare = open_spare();
                }
                accept_failed.note_error(&err, out_of_fds);
                return Some(Instant::now() + ACCEPT_BACKOFF);
            }
        }
    }
    None
}

/// A descriptor held in reserve for the moment the process runs out (see the module docs).
fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Reads what is waiting on `r` and moves its request along. The buffer holds at most one
/// read past what the phase needs: a head over the limit is refused as soon as it is seen, a
/// body stops growing once complete.
fn read_step(r: &mut Reading, chunk: &mut [u8], max_body: usize, now: Instant) -> Step {
    // A pipelined request handed back with its connection is looked at before any read.
    if matches!(r.phase, Phase::Head { .. }) {
        let step = advance(r, max_body);
        if !matches!(step, Step::Wait) {
            return step;
        }
    }
    // A few reads per wake-up at most: one client sending fast must not starve the rest.
    for _ in 0..4 {
        let n = match (&r.conn.stream).read(chunk) {
            Ok(0) => return Step::Close,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Step::Close,
        };
        if matches!(r.phase, Phase::Linger) {
            continue;
        }
        if matches!(r.phase, Phase::Idle) {
            r.phase = Phase::Head { searched: 0 };
            r.started = now;
            r.deadline = now + REQUEST_DEADLINE;
        }
        r.conn.buf.extend_from_slice(&chunk[..n]);
        let step = advance(r, max_body);
        if !matches!(step, Step::Wait) {
            return step;
        }
    }
    if r.deadline <= now {
        return expire(r);
    }
    Step::Wait
}

/// Parses as far as the buffer allows.
fn advance(r: &mut Reading, max_body: usize) -> Step {
    if let Phase::Head { searched } = r.phase {
        let Some(end) = wire::head_end(&r.conn.buf, searched) else {
            if r.conn.buf.len() >= wire::MAX_HEAD_BYTES {
                return Step::Refuse(431, HeadError::TooLarge.message());
            }
            r.phase = Phase::Head {
                searched: r.conn.buf.len(),
            };
            return Step::Wait;
        };
        let parsed = wire::parse_head(&r.conn.buf[..end])
            .and_then(|head| head.body_framing(max_body).map(|framing| (head, framing)));
        let (head, framing) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => return Step::Refuse(err.status(), err.message()),
        };
        if framing != Framing::Length(0) && head.expects_continue() && r.conn.buf.len() == end {
            // Small and non-blocking; if it does not fit, the client sends the body anyway
            // after its own short wait.
            let _ = (&r.conn.stream).write(wire::CONTINUE);
        }
        r.phase = Phase::Body {
            head,
            head_len: end,
            framing,
        };
    }
    let Phase::Body {
        head_len, framing, ..
    } = &r.phase
    else {
        return Step::Wait;
    };
    let head_len = *head_len;
    // The body, and where the next (pipelined) request starts, once all of it is in.
    let (body, used) = match framing {
        Framing::Length(len) if r.conn.buf.len() < head_len + len => return Step::Wait,
        Framing::Length(len) => (r.conn.buf[head_len..head_len + len].to_vec(), *len),
        Framing::Chunked => match wire::decode_chunked(&r.conn.buf[head_len..], max_body) {
            Ok(None) => return Step::Wait,
            Ok(Some(decoded)) => decoded,
            Err(err) => return Step::Refuse(err.status(), err.message()),
        },
    };
    let Phase::Body { head, .. } = std::mem::replace(&mut r.phase, Phase::Idle) else {
        return Step::Wait;
    };
    // Whatever follows the body stays with the connection.
    r.conn.buf.drain(..head_len + used);
    Step::Ready(head, body)
}

/// Writes what the socket takes of the answer; then the connection waits for its next request
/// (one already buffered is looked at at once) or is closed.
fn write_step(r: &mut Reading, max_body: usize, now: Instant) -> Step {
    let Phase::Writing {
        bytes,
        written,
        keep_alive,
    } = &mut r.phase
    else {
        return Step::Wait;
    };
    while *written < bytes.len() {
        match (&r.conn.stream).write(&bytes[*written..]) {
            Ok(0) => return Step::Close,
            Ok(n) => *written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                return if r.deadline <= now {
                    expire(r)
                } else {
                    Step::Wait
                };
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Close,
        }
    }
    if !*keep_alive {
        // Our side ends; what the client still sends is read and dropped until it closes,
        // so that closing with unread bytes does not reset the answer away.
        let _ = r.conn.stream.shutdown(Shutdown::Write);
        r.phase = Phase::Linger;
        r.deadline = now + LINGER;
        return Step::Wait;
    }
    if r.conn.buf.is_empty() {
        // An idle connection keeps no buffer (the last body's may have been 64 KiB).
        r.conn.buf = Vec::new();
        r.phase = Phase::Idle;
        r.deadline = now + KEEP_ALIVE_IDLE;
        return Step::Wait;
    }
    r.phase = Phase::Head { searched: 0 };
    r.started = now;
    r.deadline = now + REQUEST_DEADLINE;
    advance(r, max_body)
}

/// The deadline of `r` has passed.
fn expire(r: &Reading) -> Step {
    match r.phase {
        // A client that does not read its answer in time: dropped, nothing more to say to it.
        Phase::Idle | Phase::Linger | Phase::Writing { .. } => Step::Close,
        Phase::Head { .. } | Phase::Body { .. } => Step::Refuse(
            408,
            format!(
                "Request timeout: head and body must arrive within {} s",
                REQUEST_DEADLINE.as_secs()
            ),
        ),
    }
}

fn count_refusal(counters: &HttpCounters, status: u16) {
    let counter = match status {
        408 => &counters.timeouts,
        431 => &counters.heads_too_large,
        413 => &counters.bodies_too_large,
        _ => &counters.malformed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Writes the error (best effort: a few hundred bytes into an empty send buffer), ends our
/// side, and keeps reading until the client closes or [`LINGER`] passes.
fn answer_and_linger(r: &mut Reading, status: u16, message: &str, now: Instant) {
    let _ = (&r.conn.stream).write(&error_response(status, message));
    let _ = r.conn.stream.shutdown(Shutdown::Write);
    r.conn.buf = Vec::new();
    r.phase = Phase::Linger;
    r.deadline = now + LINGER;
}

/// The JSON error every refusal at this level answers, with `Connection: close`.
pub fn error_response(status: u16, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    wire::response_bytes(
        status,
        &[
            ("Content-Type", super::response::JSON),
            ("Cache-Control", "no-store"),
        ],
        body.as_bytes(),
        false,
    )
}

/// Refusals come in floods; one warning per interval (per kind) says how many were left out
/// since the last, instead of one line each.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    fn note(&mut self, what: &str) {
        if let Some(suppressed) = self.due() {
            log::warn!(suppressedSinceLast = suppressed; "{what}");
        }
    }

    fn note_error(&mut self, err: &io::Error, out_of_fds: bool) {
        if let Some(suppressed) = self.due() {
            log::error!(
                error:% = err,
                outOfDescriptors = out_of_fds,
                backoffMs = ACCEPT_BACKOFF.as_millis() as u64,
                suppressedSinceLast = suppressed;
                "http.accept_failed"
            );
        }
    }
}
