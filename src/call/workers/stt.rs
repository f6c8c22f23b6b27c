//! The speech-to-text worker: the caller's audio out, transcripts in, on one provider socket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{SttLost, SttOut};

use crate::call::audio_feed::{AudioInbox, Frame};
use crate::call::Event;
use crate::poll::{self, Watch};
use crate::providers::elevenlabs_stt::{SttError, SttEvent, SttSettings, SttStream};
use crate::speech::ulaw::FRAME_BYTES;

/// Twilio's frame interval.
const FRAME: Duration = Duration::from_millis(20);

/// Speech-to-text for one call: forwards the caller's audio in chunks of `settings.chunk`
/// ([`SttChunks`]) and reports transcripts the moment they arrive; reconnects up to
/// `reconnects` times. A session whose service says nothing at all (no message of any kind)
/// for `settings.silent_service_limit` after the caller's speech was sent to it is taken for
/// dead: closed, logged and replaced, counted as a reconnect. `sent_bytes` counts the audio
/// forwarded (what ElevenLabs bills), readable by the call at any moment.
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
        // Whatever woke the worker, the frames waiting are taken (the feed wakes it only once
        // a chunk's worth waits, so some may be there unannounced).
        let now = Instant::now();
        note(chunks.feed(stream, audio.take())?, &mut unanswered_speech);
        if !audio.is_open() {
            // The call is over: what is left of the audio goes now.
            note(chunks.send(stream)?, &mut unanswered_speech);
            return Ok(());
        }
        note(chunks.send_due(stream, now)?, &mut unanswered_speech);
        let Some(audio_deadline) = chunks.arm(audio, now) else {
            // The frames it would wait for are already there.
            readable = false;
            continue;
        };
        // The next event is a chunk's worth of audio, a transcript, the end of the call, or a
        // partial chunk's time to go; and the watchdog's deadline, while speech waits for any
        // word from the service.
        let deadline = [
            unanswered_speech.map(|since| since + silent_limit),
            audio_deadline,
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
        readable = watches[0].readable();
        if watches[0].writable() && stream.wants_write() {
            stream.flush()?;
        }
    }
}

/// The caller's audio joined into chunks of `STT_CHUNK_MS` before it goes to speech-to-text:
/// fewer messages, and the worker woken once a chunk rather than once a frame. A chunk goes
/// when it is full, when its first frame has waited one chunk's length (a pause in the feed
/// never holds audio longer), and when the call ends. The μ-law is joined raw and encoded once
/// per chunk (base64 pieces cannot be joined unless each is a multiple of 3 bytes; a Twilio
/// frame is 160).
#[derive(Debug)]
pub struct SttChunks {
    ulaw: Vec<u8>,
    full_bytes: usize,
    length: Duration,
    /// When the chunk's first frame was queued by the reader.
    since: Option<Instant>,
    loud: bool,
    /// While the chunk is empty: when the next chunk's frames should have woken the worker.
    expected_by: Option<Instant>,
    /// They did not come (Twilio paused): the next frame wakes the worker.
    paused: bool,
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
            ulaw: Vec::with_capacity(full_bytes + FRAME_BYTES),
            full_bytes,
            length,
            since: None,
            loud: false,
            expected_by: None,
            paused: false,
        }
    }

    /// Adds `frames`, sending each chunk they fill.
    pub fn feed(
        &mut self,
        stream: &mut SttStream,
        frames: impl Iterator<Item = Frame>,
    ) -> Result<Sent, SttError> {
        let mut sent = Sent::default();
        for frame in frames {
            if self.push(&frame) {
                sent = sent.and(self.send(stream)?);
            }
        }
        Ok(sent)
    }

    /// Sends the chunk if its first frame has waited its length by `now`.
    pub fn send_due(&mut self, stream: &mut SttStream, now: Instant) -> Result<Sent, SttError> {
        if self.since.is_some_and(|since| since + self.length <= now) {
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
        // The next chunk is expected from now on (see `arm`).
        self.expected_by = None;
        Ok(sent)
    }

    /// Asks `audio` to wake the worker when the chunk can be filled, and says until when the
    /// worker may sleep (`Some(None)`: until something happens; `None`: the frames are
    /// already there, take them). While frames flow (Twilio sends one every 20 ms) the worker
    /// wakes once a chunk. With a partial chunk the wait ends at the chunk's due time; with an
    /// empty one, a frame after the next chunk should have been full (Twilio paused): then the
    /// first frame to come wakes the worker, and its chunk is due a chunk's length later.
    pub fn arm(&mut self, audio: &AudioInbox, now: Instant) -> Option<Option<Instant>> {
        let frames_per_chunk = self.full_bytes.div_ceil(FRAME_BYTES);
        let missing = frames_per_chunk.saturating_sub(self.ulaw.len() / FRAME_BYTES);
        let (wanted, until) = match self.since {
            Some(since) => {
                self.expected_by = None;
                self.paused = false;
                (missing, Some(since + self.length))
            }
            None if self.paused => (1, None),
            None => match self.expected_by {
                Some(by) if by <= now => {
                    self.expected_by = None;
                    self.paused = true;
                    (1, None)
                }
                Some(by) => (missing, Some(by)),
                None => {
                    let by = now + self.length + FRAME;
                    self.expected_by = Some(by);
                    (missing, Some(by))
                }
            },
        };
        if audio.wake_after(wanted) {
            None
        } else {
            Some(until)
        }
    }

    /// Adds one frame; true when the chunk is full.
    fn push(&mut self, frame: &Frame) -> bool {
        self.since.get_or_insert(frame.queued_at);
        self.ulaw.extend_from_slice(frame.ulaw());
        self.loud |= frame.loud;
        self.ulaw.len() >= self.full_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::audio_feed::audio_feed;

    const CHUNK: Duration = Duration::from_millis(100);

    fn woken(audio: &AudioInbox) -> bool {
        let mut watch = [Watch::read(audio.fd())];
        poll::wait(&mut watch, Some(Instant::now())).unwrap() == 1
    }

    #[test]
    fn the_worker_is_woken_once_a_chunk_or_when_a_partial_one_is_due() {
        let (feed, audio) = audio_feed(32).unwrap();
        let mut chunks = SttChunks::new(CHUNK);
        let t0 = Instant::now();
        // Empty: five frames wake it; if they do not come, a frame after they were due.
        assert_eq!(chunks.arm(&audio, t0), Some(Some(t0 + CHUNK + FRAME)));
        for _ in 0..4 {
            assert!(feed.send(&[0xFF; 160], false));
        }
        assert!(!woken(&audio), "four frames of five wake nobody");
        assert!(feed.send(&[0xFF; 160], false));
        assert!(woken(&audio));

        // Two frames in the chunk: three more wake it, and it is due one chunk after its first.
        let frames: Vec<Frame> = audio.take().collect();
        assert_eq!(frames.len(), 5);
        assert!(!chunks.push(&frames[0]) && !chunks.push(&frames[1]));
        let due = frames[0].queued_at + CHUNK;
        assert_eq!(chunks.arm(&audio, Instant::now()), Some(Some(due)));
        assert!(feed.send(&[0xFF; 160], false) && feed.send(&[0xFF; 160], false));
        assert!(!woken(&audio));
        assert!(feed.send(&[0xFF; 160], false));
        assert!(woken(&audio));
    }

    #[test]
    fn after_a_pause_in_the_feed_the_next_frame_wakes_the_worker() {
        let (feed, audio) = audio_feed(32).unwrap();
        let mut chunks = SttChunks::new(CHUNK);
        let t0 = Instant::now();
        let expected = t0 + CHUNK + FRAME;
        assert_eq!(chunks.arm(&audio, t0), Some(Some(expected)));
        // The chunk's frames did not come by then: no deadline, and one frame wakes it.
        assert_eq!(chunks.arm(&audio, expected), Some(None));
        assert!(feed.send(&[0xFF; 160], false));
        assert!(woken(&audio));
        // Asked again with the frame already there: take it, do not sleep.
        assert_eq!(chunks.arm(&audio, expected), None);
    }
}
