//! The `call-N-rx` thread: reads the Twilio socket, sends the call its messages, and carries
//! the caller's audio to speech-to-text and the transcripts back ([`SttLink`]), on one thread.
//!
//! It waits with `poll(2)` on the Twilio socket, the speech-to-text socket (or its dialler)
//! and the earliest of its deadlines, never on a tick. The caller's audio goes to the provider
//! in chunks of `STT_CHUNK_MS` ([`Reader::chunk`]): when a frame arrives the reader starts a
//! chunk and sets the Twilio socket's receive low-water mark to the bytes of the frames the
//! chunk still lacks, so `poll` wakes it only when they are there (Twilio keeps sending; its
//! frames wait in the socket); it sends the chunk the moment its last frame is in (or when a
//! frame is late). While frames keep coming, the next chunk starts one chunk later without
//! waking for its first frame. So a talking caller costs about one wake-up per chunk, not one
//! per 20 ms frame, the chunk's last frame goes on at once, and Twilio's other messages
//! (marks, `stop`) wait at most one chunk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::Sender;
use tungstenite::{Message, WebSocket};

use super::end::End;
use super::socket::ReadHalf;
use super::workers::SttLink;
use super::Event;
use crate::poll::{self, Watch};
use crate::speech::ulaw::{self, FRAME_BYTES};
use crate::twilio::media_messages::{self as twilio_messages, Inbound};

/// Twilio's frames: 20 ms of audio each. A chunk of N frames is whole when its Nth frame
/// arrives, N − 1 frames after its first.
const FRAME: Duration = Duration::from_millis(20);
/// Bytes under the last media message's size counted per frame still missing (sequence numbers
/// and timestamps grow a digit now and then).
const SIZE_SLACK: usize = 16;
/// Invalid messages from Twilio in a row, or in all, after which the call is ended.
const MAX_INVALID_IN_A_ROW: u32 = 50;
const MAX_INVALID: u32 = 500;

/// What the reader needs besides its socket.
pub(super) struct Reader<'a> {
    pub events: &'a Sender<Event>,
    pub stt: SttLink,
    /// Set by the call thread when the stream is admitted: speech-to-text starts then.
    pub admitted: &'a AtomicBool,
    /// The last loud frame, in milliseconds from `started` plus one (0: none yet).
    pub voiced_ms: &'a AtomicU64,
    pub started: Instant,
    /// Audio per message to speech-to-text (a multiple of 20 ms).
    pub chunk: Duration,
    /// No message from Twilio for this long: the connection is dead.
    pub read_timeout: Duration,
}

/// Why a read of everything available stopped.
enum Drained {
    /// Nothing more now.
    Empty,
    /// The call is over on Twilio's side (or nobody listens any more).
    Gone(Option<End>),
}

/// Reads the Twilio socket until the call ends; see the module docs.
pub(super) fn twilio_reader(mut socket: WebSocket<ReadHalf>, mut reader: Reader<'_>) {
    let mut state = ReadState {
        invalid: 0,
        in_a_row: 0,
        frame: Vec::with_capacity(FRAME_BYTES * 2),
        chunk: Vec::with_capacity(FRAME_BYTES * 16),
        chunk_loud: false,
        last_message: Instant::now(),
        media_bytes: 0,
    };
    // The nominal start of the chunk being gathered (its first frame's arrival, then one chunk
    // later for each chunk after it while frames keep coming).
    let mut gathering: Option<Instant> = None;
    let chunk_frames = ((reader.chunk.as_millis() / FRAME.as_millis()) as usize).max(1);
    // The socket's receive low-water mark as last set (see below), and what a media message
    // takes on the wire (JSON and WebSocket header), learnt from the last one.
    let mut low_water = 1usize;
    let end = loop {
        if !reader.stt.started() && reader.admitted.load(Ordering::Acquire) {
            reader.stt.start(reader.events);
        }
        // While a chunk gathers, the socket wakes the reader only once the frames the chunk
        // still lacks are there: the receive low-water mark is set to their bytes (a little
        // under, since sizes vary by a few digits; a wake-up early finds the chunk short and
        // waits again). The chunk goes when whole, or when a frame is late.
        let wanted = match gathering {
            Some(_) => {
                let missing = chunk_frames.saturating_sub(state.chunk.len() / FRAME_BYTES);
                missing.max(1) * state.media_bytes.saturating_sub(SIZE_SLACK).max(1)
            }
            None => 1,
        };
        if wanted != low_water {
            low_water = match poll::set_receive_low_water(socket.get_ref().fd(), wanted) {
                Ok(()) => wanted,
                // Without the mark every frame wakes the reader: more wake-ups, same result.
                Err(_) => 1,
            };
        }
        let late_at = gathering.map(|start| start + reader.chunk + FRAME);
        let silent_at = state.last_message + reader.read_timeout;
        let deadline = [late_at, Some(silent_at), reader.stt.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        let (twilio_ready, stt_read, stt_write) = {
            let mut watches = Vec::with_capacity(2);
            watches.push(Watch::read(socket.get_ref().fd()));
            let stt_watched = match reader.stt.watch() {
                Some(watch) => {
                    watches.push(watch);
                    true
                }
                None => false,
            };
            if let Err(err) = poll::wait(&mut watches, deadline) {
                // Not expected (poll fails only on bad arguments): the call cannot go on.
                break Some(End::TwilioLost(format!("waiting for the socket: {err}")));
            }
            let stt = stt_watched.then(|| &watches[watches.len() - 1]);
            (
                watches[0].readable(),
                stt.is_some_and(Watch::readable),
                stt.is_some_and(Watch::writable),
            )
        };
        let now = Instant::now();
        let late = late_at.is_some_and(|at| now >= at);
        if twilio_ready || late {
            if let Drained::Gone(end) = state.drain(&mut socket, &reader, now) {
                break end;
            }
            if gathering.is_none() && !state.chunk.is_empty() {
                gathering = Some(now);
            }
        }
        if let Some(start) = gathering {
            // Whole (its last frame is in), or a frame is late: it goes now.
            if state.chunk.len() >= chunk_frames * FRAME_BYTES || late {
                let carried = !state.chunk.is_empty();
                reader
                    .stt
                    .send(&state.chunk, state.chunk_loud, now, reader.events);
                state.chunk.clear();
                state.chunk_loud = false;
                // Frames keep coming while the caller is on: the next chunk starts one chunk
                // later without waking for its first frame. A chunk that found nothing goes
                // back to waiting for the socket.
                let next = start + reader.chunk;
                // (A reader held up for more than a chunk starts again from now.)
                gathering = carried.then_some(if next + reader.chunk < now { now } else { next });
            }
        }
        if state.last_message + reader.read_timeout <= now {
            break Some(End::TwilioSilent);
        }
        if stt_read || stt_write {
            reader.stt.on_ready(stt_read, stt_write, now, reader.events);
        }
        reader.stt.on_time(now, reader.events);
    };
    if let Some(end) = end {
        let _ = reader.events.send(Event::TwilioGone(end));
    }
    reader.stt.close();
}

struct ReadState {
    invalid: u32,
    in_a_row: u32,
    /// One frame decoded (reused).
    frame: Vec<u8>,
    /// The caller's audio of the chunk being gathered, decoded.
    chunk: Vec<u8>,
    chunk_loud: bool,
    last_message: Instant,
    /// The last media message's size on the wire (its text and a WebSocket header).
    media_bytes: usize,
}

impl ReadState {
    /// Reads every message the socket has now: audio into the chunk, the rest to the call.
    fn drain(
        &mut self,
        socket: &mut WebSocket<ReadHalf>,
        reader: &Reader<'_>,
        now: Instant,
    ) -> Drained {
        loop {
            let message = match socket.read() {
                Ok(message) => message,
                Err(err) if crate::providers::ws::is_timeout(&err) => return Drained::Empty,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Drained::Gone(Some(End::TwilioClosed))
                }
                Err(err) => return Drained::Gone(Some(End::TwilioLost(err.to_string()))),
            };
            self.last_message = now;
            let bad = match message {
                Message::Text(text) => match twilio_messages::parse(text.as_str()) {
                    Ok(Inbound::Media { payload, .. }) => {
                        self.media_bytes = text.len() + 4;
                        self.frame.clear();
                        match base64::engine::general_purpose::STANDARD
                            .decode_vec(payload.as_bytes(), &mut self.frame)
                        {
                            Ok(()) => {
                                // Decoded once here: the watchdog and barge-in get the verdict.
                                if ulaw::is_voice(&self.frame) {
                                    self.chunk_loud = true;
                                    reader.voiced_ms.store(
                                        reader.started.elapsed().as_millis() as u64 + 1,
                                        Ordering::Relaxed,
                                    );
                                }
                                self.chunk.extend_from_slice(&self.frame);
                                None
                            }
                            Err(err) => Some(format!("media payload is not base64: {err}")),
                        }
                    }
                    Ok(Inbound::Stop) => {
                        let _ = reader.events.send(Event::Twilio(Inbound::Stop));
                        return Drained::Gone(None);
                    }
                    Ok(other) => {
                        if reader.events.send(Event::Twilio(other)).is_err() {
                            return Drained::Gone(None);
                        }
                        None
                    }
                    Err(bad) => Some(bad.to_string()),
                },
                Message::Close(_) => return Drained::Gone(Some(End::TwilioClosed)),
                // RFC 6455: a ping is answered with a pong carrying its payload. tungstenite's
                // own reply goes into this half's sink; the call thread, the only writer,
                // sends it.
                Message::Ping(payload) => {
                    if reader.events.send(Event::Ping(payload.to_vec())).is_err() {
                        return Drained::Gone(None);
                    }
                    None
                }
                Message::Binary(_) => Some("binary frame".to_string()),
                Message::Pong(_) | Message::Frame(_) => None,
            };
            match bad {
                None => self.in_a_row = 0,
                Some(why) => {
                    self.invalid += 1;
                    self.in_a_row += 1;
                    if self.invalid <= 3 || self.invalid.is_power_of_two() {
                        log::warn!(reason = why.as_str(), count = self.invalid; "twilio.message.invalid (skipped)");
                    }
                    if self.in_a_row >= MAX_INVALID_IN_A_ROW || self.invalid >= MAX_INVALID {
                        return Drained::Gone(Some(End::TwilioInvalid(self.invalid)));
                    }
                }
            }
        }
    }
}
