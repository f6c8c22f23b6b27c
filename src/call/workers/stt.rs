//! Speech-to-text for one call, as a part of the `call-N-rx` thread ([`crate::call::reader`]):
//! the caller's audio out in chunks, transcripts in, on one provider socket.
//!
//! [`SttLink`] owns the session and its life: it is dialled once the stream is admitted, on a
//! short-lived `call-N-stt-dial` thread (a handshake blocks for up to the connect timeout; the
//! reader must keep reading Twilio meanwhile), retried up to three times with a doubling pause
//! (a refused key is not retried), replaced when it fails (up to `reconnects` times per spell
//! of trouble), and given up as lost after that ([`SttOut::Lost`]). A session whose service
//! says nothing at all for `silent_service_limit` after the caller's speech went to it is
//! taken for dead and replaced, counted as a reconnect. Audio that arrives while no session
//! is up waits, up to [`PENDING_MAX_BYTES`] (the newest is kept, the oldest dropped and
//! counted); a chunk whose send failed waits with it.
//!
//! The link never blocks and never sleeps: the reader's loop waits on [`SttLink::watch`]'s
//! descriptor and [`SttLink::next_deadline`] together with the Twilio socket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::{SttLost, SttOut};
use crate::call::Event;
use crate::metrics::EVENTS;
use crate::poll::{self, WakeReceiver, Watch};
use crate::providers::elevenlabs_stt::{SttError, SttEvent, SttSettings, SttStream};
use crate::providers::ws::ConnectError;
use crate::speech::ulaw::{self, FRAME_BYTES};

/// Starts a named thread with a stack size (the call's slot in the server, a plain thread in
/// tests); an error is the system's refusal.
pub type Spawner =
    Arc<dyn Fn(String, usize, Box<dyn FnOnce() + Send>) -> std::io::Result<()> + Send + Sync>;

/// Caller audio kept while no session is up: 2 s (a handshake, a reconnect's pause).
pub const PENDING_MAX_BYTES: usize = 16_000;
/// Attempts to open one session, and the pause before the second (doubled for the third).
const DIAL_ATTEMPTS: u32 = 3;
const DIAL_PAUSE: Duration = Duration::from_millis(250);
/// A session that held this long resets the count of reconnects: a long call may see
/// unrelated drops, or the service's session limit.
const SPELL_RESET: Duration = Duration::from_secs(30);

enum State {
    /// The stream is not admitted yet: nothing reaches the provider.
    Waiting,
    Dialing {
        attempt: u32,
        result: Receiver<Result<SttStream, SttError>>,
        wake: WakeReceiver,
    },
    Pausing {
        attempt: u32,
        until: Instant,
    },
    Live {
        // Boxed: the session is large, and the other states are small.
        stream: Box<SttStream>,
        opened: Instant,
        /// The liveness watchdog: the first speech sent since the service last said
        /// anything (a silent caller is not answered by the service either).
        unanswered_speech: Option<Instant>,
        heard: u64,
    },
    /// Lost for good, or not configured: audio is dropped.
    Gone,
}

/// One call's speech-to-text session and its life; see the module docs.
pub struct SttLink {
    settings: Option<SttSettings>,
    reconnects: u32,
    /// The thread name of the dialler (`call-N-stt-dial`), its stack, and how it is started.
    dial_name: String,
    dial_stack: usize,
    spawn: Spawner,
    state: State,
    failures: u32,
    /// Audio bytes forwarded (what ElevenLabs bills), readable by the call at any moment.
    sent_bytes: Arc<AtomicU64>,
    pending: Vec<u8>,
    dropped_bytes: u64,
    /// Bytes per message when what waited goes out (the reader's chunk).
    chunk_bytes: usize,
}

impl SttLink {
    /// A link that starts when [`SttLink::start`] is called; `None` settings: there is no
    /// speech-to-text on this server (the call thread tells the call so at its start).
    pub fn new(
        settings: Option<SttSettings>,
        reconnects: u32,
        dial_name: String,
        dial_stack: usize,
        spawn: Spawner,
        sent_bytes: Arc<AtomicU64>,
    ) -> SttLink {
        let chunk = settings.as_ref().map_or(Duration::ZERO, |s| s.chunk);
        SttLink {
            settings,
            reconnects,
            dial_name,
            dial_stack,
            spawn,
            state: State::Waiting,
            failures: 0,
            sent_bytes,
            pending: Vec::new(),
            dropped_bytes: 0,
            chunk_bytes: (chunk.as_millis() as usize * 8).max(FRAME_BYTES),
        }
    }

    /// Whether the link has been started (the stream was admitted).
    pub fn started(&self) -> bool {
        !matches!(self.state, State::Waiting)
    }

    /// The stream is admitted: the session is dialled now.
    pub fn start(&mut self, out: &Sender<Event>) {
        if !matches!(self.state, State::Waiting) {
            return;
        }
        // Without settings the call was told at its start (`SttLost::NotConfigured`).
        self.dial(1, out);
    }

    /// The descriptor to wait on: the dialler's wake-up while it works, the session's socket
    /// (writable too while audio waits to go out) when one is up.
    pub fn watch(&self) -> Option<Watch<'_>> {
        match &self.state {
            State::Dialing { wake, .. } => Some(Watch::read(wake.fd())),
            State::Live { stream, .. } => stream
                .fd()
                .map(|fd| Watch::read_write(fd, stream.wants_write())),
            _ => None,
        }
    }

    /// When the link next needs [`SttLink::on_time`]: the end of a pause, or the watchdog.
    pub fn next_deadline(&self) -> Option<Instant> {
        let limit = self.settings.as_ref().map(|s| s.silent_service_limit);
        match &self.state {
            State::Pausing { until, .. } => Some(*until),
            State::Live {
                unanswered_speech: Some(since),
                ..
            } => limit.map(|l| *since + l),
            _ => None,
        }
    }

    /// Forwards one chunk of the caller's μ-law audio (`loud`: some of it is speech), or keeps
    /// it while no session is up.
    pub fn send(&mut self, ulaw: &[u8], loud: bool, now: Instant, out: &Sender<Event>) {
        match &mut self.state {
            State::Gone => {}
            State::Live { .. } => {
                if let Err(err) = self.forward(ulaw, loud, now) {
                    self.session_failed(err, now, out);
                    // The chunk waits for the next session (no state after a failure is live).
                    if !matches!(self.state, State::Live { .. }) {
                        self.send(ulaw, loud, now, out);
                    }
                }
            }
            _ => {
                // The newest audio is kept: what the caller says last matters most.
                self.pending.extend_from_slice(ulaw);
                let over = self.pending.len().saturating_sub(PENDING_MAX_BYTES);
                if over > 0 {
                    self.pending.drain(..over);
                    self.dropped_bytes += over as u64;
                }
            }
        }
    }

    fn forward(&mut self, ulaw: &[u8], loud: bool, now: Instant) -> Result<(), SttError> {
        let State::Live {
            stream,
            unanswered_speech,
            ..
        } = &mut self.state
        else {
            return Ok(());
        };
        if ulaw.is_empty() {
            return Ok(());
        }
        stream.send_audio(ulaw)?;
        if loud && unanswered_speech.is_none() {
            *unanswered_speech = Some(now);
        }
        self.sent_bytes
            .fetch_add(ulaw.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Commits what the session heard since the last commit (the call decided the caller's
    /// turn is over). Without a live session there is nothing to commit: the audio that waits
    /// for the next one is heard afresh, and its words are committed when the call next asks.
    pub fn commit(&mut self, now: Instant, out: &Sender<Event>) {
        let State::Live { stream, .. } = &mut self.state else {
            log::warn!("stt.commit.skipped: no session is up");
            return;
        };
        if let Err(err) = stream.commit() {
            self.session_failed(err, now, out);
        }
    }

    /// After the watched descriptor was ready: takes the dialler's result, or reads the
    /// session's transcripts (until WouldBlock, which also empties rustls' and tungstenite's
    /// buffers, so readiness stays the whole truth) and writes what waits.
    pub fn on_ready(&mut self, readable: bool, writable: bool, now: Instant, out: &Sender<Event>) {
        match &mut self.state {
            State::Dialing {
                attempt,
                result,
                wake,
            } => {
                let attempt = *attempt;
                let _ = wake.drain();
                let dialled = match result.try_recv() {
                    Ok(dialled) => dialled,
                    // Still working (a stray wake-up): wait on.
                    Err(crossbeam_channel::TryRecvError::Empty) => return,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => Err(SttError::Closed(
                        "the dialler ended without an answer".into(),
                    )),
                };
                self.dialled(attempt, dialled, now, out);
            }
            State::Live { stream, .. } => {
                let result = (|| {
                    if writable && stream.wants_write() {
                        stream.flush()?;
                    }
                    if readable {
                        while let Some(event) = stream.try_next_event()? {
                            let forwarded = match event {
                                SttEvent::Partial(text) => {
                                    out.send(Event::Stt(SttOut::Partial(text)))
                                }
                                SttEvent::Committed(text) => {
                                    out.send(Event::Stt(SttOut::Committed(text)))
                                }
                                SttEvent::SessionStarted(id) => {
                                    log::debug!(sessionId = id.as_str(); "stt.session_started");
                                    Ok(())
                                }
                            };
                            // Nobody listens: the call is over, the reader ends with it.
                            if forwarded.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(())
                })();
                if let Err(err) = result {
                    self.session_failed(err, now, out);
                    return;
                }
                if let State::Live {
                    stream,
                    unanswered_speech,
                    heard,
                    ..
                } = &mut self.state
                {
                    if stream.messages_heard() != *heard {
                        *heard = stream.messages_heard();
                        *unanswered_speech = None;
                    }
                }
            }
            _ => {}
        }
    }

    /// A deadline of [`SttLink::next_deadline`] may have passed.
    pub fn on_time(&mut self, now: Instant, out: &Sender<Event>) {
        match &self.state {
            State::Pausing { attempt, until } if now >= *until => {
                let attempt = *attempt;
                self.dial(attempt, out);
            }
            State::Live {
                unanswered_speech: Some(since),
                ..
            } => {
                let limit = self
                    .settings
                    .as_ref()
                    .map_or(Duration::MAX, |s| s.silent_service_limit);
                if now.saturating_duration_since(*since) >= limit {
                    let after = now.saturating_duration_since(*since);
                    log::warn!(silentSecs = after.as_secs_f64(), attempt = self.failures + 1; "stt.watchdog.unresponsive");
                    self.session_failed(SttError::Unresponsive(after), now, out);
                }
            }
            _ => {}
        }
    }

    /// Ends the session (the call is over).
    pub fn close(self) {
        if self.dropped_bytes > 0 {
            log::warn!(frames = self.dropped_bytes / 160; "stt.audio.dropped while speech-to-text was not reading");
        }
        if let State::Live { stream, .. } = self.state {
            stream.close();
        }
    }

    fn dial(&mut self, attempt: u32, out: &Sender<Event>) {
        let Some(settings) = self.settings.clone() else {
            self.state = State::Gone;
            return;
        };
        let started = (|| {
            let (wake_tx, wake_rx) = poll::wake_pair()?;
            let (tx, rx) = bounded(1);
            (self.spawn)(
                self.dial_name.clone(),
                self.dial_stack,
                Box::new(move || {
                    // One message into a channel of one: never blocks. The wake-up follows it
                    // (and the sender's drop would wake the reader anyway).
                    let _ = tx.send(SttStream::open(&settings));
                    wake_tx.wake();
                }),
            )?;
            Ok::<_, std::io::Error>((rx, wake_rx))
        })();
        match started {
            Ok((result, wake)) => {
                self.state = State::Dialing {
                    attempt,
                    result,
                    wake,
                }
            }
            Err(err) => {
                log::error!(error:% = err; "stt.dial_failed: no thread or descriptor for the handshake");
                self.state = State::Gone;
                let _ = out.send(Event::Stt(SttOut::Lost(SttLost::NoResources(
                    err.to_string(),
                ))));
            }
        }
    }

    fn dialled(
        &mut self,
        attempt: u32,
        dialled: Result<SttStream, SttError>,
        now: Instant,
        out: &Sender<Event>,
    ) {
        match dialled {
            Ok(stream) => {
                let heard = stream.messages_heard();
                self.state = State::Live {
                    stream: Box::new(stream),
                    opened: now,
                    unanswered_speech: None,
                    heard,
                };
                // What the caller said meanwhile goes first, in chunks as it would have.
                let mut pending = std::mem::take(&mut self.pending);
                for chunk in pending.chunks(self.chunk_bytes) {
                    self.send(chunk, ulaw::is_voice(chunk), now, out);
                }
                pending.clear();
                if self.pending.is_empty() {
                    self.pending = pending;
                }
                // Something may already be buffered from the handshake (session_started).
                self.on_ready(true, false, now, out);
            }
            Err(err) => {
                let refused = matches!(
                    err,
                    SttError::Connect(ConnectError::Refused {
                        status: 401 | 403,
                        ..
                    })
                );
                if refused || attempt >= DIAL_ATTEMPTS {
                    self.lost(err, out);
                } else {
                    EVENTS.provider_retry("elevenlabs_stt", err.metric_kind());
                    log::warn!(attempt = attempt, error:% = err; "stt.connect.retry");
                    self.state = State::Pausing {
                        attempt: attempt + 1,
                        until: now + DIAL_PAUSE * 2u32.pow(attempt - 1),
                    };
                }
            }
        }
    }

    fn session_failed(&mut self, err: SttError, now: Instant, out: &Sender<Event>) {
        let opened = match std::mem::replace(&mut self.state, State::Waiting) {
            State::Live { stream, opened, .. } => {
                stream.close();
                opened
            }
            other => {
                self.state = other;
                return;
            }
        };
        if now.saturating_duration_since(opened) > SPELL_RESET {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures > self.reconnects {
            self.lost(err, out);
            return;
        }
        EVENTS.stt_reconnects.fetch_add(1, Ordering::Relaxed);
        log::warn!(error:% = err, attempt = self.failures; "stt.reconnect");
        self.dial(1, out);
    }

    fn lost(&mut self, err: SttError, out: &Sender<Event>) {
        EVENTS.provider_error("elevenlabs_stt", err.metric_kind());
        self.state = State::Gone;
        self.pending.clear();
        let _ = out.send(Event::Stt(SttOut::Lost(SttLost::Provider(err))));
    }
}
