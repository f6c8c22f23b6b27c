//! The speech-to-text worker: the caller's audio out, transcripts in, on one provider socket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{SttLost, SttOut};

use crate::call::audio_feed::{AudioInbox, Frame};
use crate::call::Event;
use crate::poll::{self, Watch};
use crate::providers::elevenlabs_stt::{SttError, SttEvent, SttSettings, SttStream};

/// Speech-to-text for one call: forwards the caller's audio in chunks of `settings.chunk`
/// ([`SttChunks`]) and reports transcripts the moment they arrive; reconnects up to
/// `reconnects` times. A session whose service says nothing at all (no message of any kind)
/// for `settings.silent_service_limit` after the caller's speech was sent to it is taken for
/// dead: closed, logged and replaced, counted as a reconnect. `sent_bytes` counts the audio forwarded (what ElevenLabs bills),
/// readable by the call at any moment.
///
/// Ends when the `audio` feed is dropped (the session is closed first) or `out` is gone; after
/// too many failures it reports [`SttOut::Lost`] and ends.
pub fn stt(
    settings: &SttSettings,
    reconnects: u32,
    audio: AudioInbox,
    out: &Sender<Event>,
    sent_bytes: &AtomicU64,
) {
    let mut failures = 0u32;
    // Across sessions: a chunk a failed session did not take goes to the next one.
    let mut chunks = SttChunks::new(settings.chunk);
    loop {
        if !audio.is_open() {
            // The call is over: no new session for nobody.
            return;
        }
        let opened = Instant::now();
        let mut stream =
            match SttStream::open_retrying(settings, 3, Duration::from_millis(250), |pause| {
                audio.pause(pause)
            }) {
                Ok(stream) => stream,
                Err(err) => {
                    if audio.is_open() {
                        let _ = out.send(Event::Stt(SttOut::Lost(SttLost::Provider(err))));
                    }
                    return;
                }
            };
        let ended = stt_session(
            &mut stream,
            &audio,
            &mut chunks,
            out,
            sent_bytes,
            settings.silent_service_limit,
        );
        stream.close();
        let failure = match ended {
            Ok(()) => return,
            Err(err) => err,
        };
        // Reconnects are counted per trouble spell: a session that held for a while resets
        // the count (a long call may see unrelated drops, or the service's session limit).
        if opened.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        failures += 1;
        if failures > reconnects {
            let _ = out.send(Event::Stt(SttOut::Lost(SttLost::Provider(failure))));
            return;
        }
        if let SttError::Unresponsive(after) = &failure {
            log::warn!(silentSecs = after.as_secs_f64(), attempt = failures; "stt.watchdog.unresponsive");
        }
        log::warn!(error:% = failure, attempt = failures; "stt.reconnect");
    }
}

/// One session: waits on the provider socket and the audio feed together, forwarding audio
/// (in chunks) and transcripts as they come. `Ok` when the call is over (feed closed, or
/// nobody listens), `Err` when the session failed, or when the service stayed mute for
/// `silent_limit` after the caller's speech went to it ([`SttError::Unresponsive`]).
fn stt_session(
    stream: &mut SttStream,
    audio: &AudioInbox,
    chunks: &mut SttChunks,
    out: &Sender<Event>,
    sent_bytes: &AtomicU64,
    silent_limit: Duration,
) -> Result<(), SttError> {
    // Something may already be buffered from the handshake (session_started).
    let mut readable = true;
    // The liveness watchdog: the first speech sent since the service last said anything. The
    // wait below has a deadline only while this is set — a caller who is silent is not
    // answered by the service either, and a wait with nothing to wait for has no deadline.
    let mut unanswered_speech: Option<Instant> = None;
    let mut heard = stream.messages_heard();
    // What was sent counts (billing), and the caller's speech starts the watchdog.
    let note = |sent: Sent, unanswered_speech: &mut Option<Instant>| {
        if sent.loud && unanswered_speech.is_none() {
            *unanswered_speech = Some(Instant::now());
        }
        sent_bytes.fetch_add(sent.bytes, Ordering::Relaxed);
    };
    // A chunk a failed session left, if it is due.
    note(
        chunks.send_due(stream, Instant::now())?,
        &mut unanswered_speech,
    );
    loop {
        if readable {
            // Until WouldBlock: that also empties rustls' and tungstenite's buffers, so the
            // socket's readiness is again the whole truth for the next wait.
            while let Some(event) = stream.try_next_event()? {
                let forwarded = match event {
                    SttEvent::Partial(text) => out.send(Event::Stt(SttOut::Partial(text))),
                    SttEvent::Committed(text) => out.send(Event::Stt(SttOut::Committed(text))),
                    SttEvent::SessionStarted(id) => {
                        log::debug!(sessionId = id.as_str(); "stt.session_started");
                        Ok(())
                    }
                };
                if forwarded.is_err() {
                    return Ok(());
                }
            }
            if stream.messages_heard() != heard {
                heard = stream.messages_heard();
                unanswered_speech = None;
            }
        }
        if let Some(since) = unanswered_speech.filter(|s| s.elapsed() >= silent_limit) {
            return Err(SttError::Unresponsive(since.elapsed()));
        }
        // The next event is audio, a transcript, the end of the call, or a partial chunk's
        // time to go; and the watchdog's deadline, while speech waits for any word from the
        // service.
        let deadline = [
            unanswered_speech.map(|since| since + silent_limit),
            chunks.deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let fd = stream
            .fd()
            .ok_or_else(|| SttError::Protocol("the socket has no descriptor".into()))?;
        let mut watches = [
            Watch::read_write(fd, stream.wants_write()),
            Watch::read(audio.fd()),
        ];
        poll::wait(&mut watches, deadline)
            .map_err(|e| SttError::Closed(format!("waiting for the socket: {e}")))?;
        let (writable, fed) = (watches[0].writable(), watches[1].readable());
        readable = watches[0].readable();
        let now = Instant::now();
        if fed {
            note(
                chunks.feed(stream, audio.take(), now)?,
                &mut unanswered_speech,
            );
            if !audio.is_open() {
                // The call is over: what is left of the audio goes now.
                note(chunks.send(stream)?, &mut unanswered_speech);
                return Ok(());
            }
        }
        note(chunks.send_due(stream, now)?, &mut unanswered_speech);
        if writable && stream.wants_write() {
            stream.flush()?;
        }
    }
}

/// The caller's audio joined into chunks of `STT_CHUNK_MS` before it goes to speech-to-text:
/// fewer messages, so fewer wake-ups of the provider socket's threads on both sides. A chunk
/// goes when it is full, when its first frame has waited one chunk's length (a pause in the
/// feed never holds audio longer), and when the call ends. The μ-law is joined raw and encoded
/// once per chunk (base64 pieces cannot be joined unless each is a multiple of 3 bytes; a
/// Twilio frame is 160).
#[derive(Debug)]
pub struct SttChunks {
    ulaw: Vec<u8>,
    full_bytes: usize,
    length: Duration,
    /// When the chunk's first frame arrived.
    since: Option<Instant>,
    loud: bool,
}

/// What sending a chunk (or none) did, for the byte count and the watchdog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// μ-law bytes sent (what is billed).
    pub bytes: u64,
    /// Whether any of it was loud (the caller spoke).
    pub loud: bool,
}

impl Sent {
    fn and(self, other: Sent) -> Sent {
        Sent {
            bytes: self.bytes + other.bytes,
            loud: self.loud || other.loud,
        }
    }
}

impl SttChunks {
    /// Chunks `length` long (of 8 kHz μ-law: 8 bytes a millisecond).
    pub fn new(length: Duration) -> SttChunks {
        let full_bytes = (length.as_millis() as usize * 8).max(1);
        SttChunks {
            ulaw: Vec::with_capacity(full_bytes + crate::speech::ulaw::FRAME_BYTES),
            full_bytes,
            length,
            since: None,
            loud: false,
        }
    }

    /// Adds the `frames` that arrived at `now`, sending each chunk they fill.
    pub fn feed(
        &mut self,
        stream: &mut SttStream,
        frames: impl Iterator<Item = Frame>,
        now: Instant,
    ) -> Result<Sent, SttError> {
        let mut sent = Sent::default();
        for frame in frames {
            if self.push(&frame, now) {
                sent = sent.and(self.send(stream)?);
            }
        }
        Ok(sent)
    }

    /// Sends the chunk if its first frame has waited its length by `now`.
    pub fn send_due(&mut self, stream: &mut SttStream, now: Instant) -> Result<Sent, SttError> {
        if self.deadline().is_some_and(|due| due <= now) {
            self.send(stream)
        } else {
            Ok(Sent::default())
        }
    }

    /// Sends what the chunk holds, full or not (nothing if it is empty). A chunk the socket
    /// refused is kept, for the next session.
    pub fn send(&mut self, stream: &mut SttStream) -> Result<Sent, SttError> {
        if self.ulaw.is_empty() {
            return Ok(Sent::default());
        }
        stream.send_audio(&self.ulaw)?;
        let sent = Sent {
            bytes: self.ulaw.len() as u64,
            loud: self.loud,
        };
        self.ulaw.clear();
        self.since = None;
        self.loud = false;
        Ok(sent)
    }

    /// When the chunk must go even if it is not full; `None` while it is empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + self.length)
    }

    /// Adds one frame; true when the chunk is full.
    fn push(&mut self, frame: &Frame, now: Instant) -> bool {
        self.since.get_or_insert(now);
        self.ulaw.extend_from_slice(frame.ulaw());
        self.loud |= frame.loud;
        self.ulaw.len() >= self.full_bytes
    }
}
