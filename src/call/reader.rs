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
//! (marks, `stop`) wait at most one chunk. With the smart turn end it also waits on a wake-up
//! the call thread signals to commit the caller's utterance by hand.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::Sender;
use tungstenite::{Message, WebSocket};

use super::end::End;
use super::socket::ReadHalf;
use super::workers::SttLink;
use super::Event;
use crate::poll::{self, WakeReceiver, Watch};
use crate::speech::ulaw::{self, FRAME_BYTES};
use crate::twilio::media_messages::{self as twilio_messages, Inbound, Received};

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
    /// Readable when the call asks for a manual commit (the smart turn end); `None` when the
    /// service commits by itself.
    pub commits: Option<WakeReceiver>,
}

/// What to do after a message.
#[derive(Debug, PartialEq)]
pub enum Flow {
    /// Read on.
    Go,
    /// The call is over on Twilio's side, or nobody listens any more: the call was told, or
    /// is told this (`Some`).
    Stop(Option<End>),
}

/// Reads the Twilio socket until the call ends; see the module docs.
pub(super) fn twilio_reader(mut socket: WebSocket<ReadHalf>, mut reader: Reader<'_>) {
    let mut state = TwilioReader::new(reader.events, reader.voiced_ms, reader.started);
    let mut clock = ChunkClock::new(reader.chunk);
    // The socket's receive low-water mark as last set.
    let mut low_water = 1usize;
    let mut release_stack_at = Some(reader.started + std::time::Duration::from_secs(5));
    // What the listener read past `start` waits in the socket's buffer, where `poll` cannot
    // see it: the first pass reads without waiting for the socket.
    let mut buffered = true;
    let end = loop {
        if !reader.stt.started() && reader.admitted.load(Ordering::Acquire) {
            reader.stt.start(reader.events);
        }
        let wanted = clock.low_water(state.chunk.len() / FRAME_BYTES, state.media_bytes);
        if wanted != low_water {
            low_water = match poll::set_receive_low_water(socket.get_ref().fd(), wanted) {
                Ok(()) => wanted,
                // Without the mark every frame wakes the reader: more wake-ups, same result.
                Err(_) => 1,
            };
        }
        let silent_at = state.last_message + reader.read_timeout;
        let deadline = [clock.late_at(), Some(silent_at), reader.stt.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        let deadline = if buffered {
            Some(Instant::now())
        } else {
            deadline
        };
        let mut watches = [
            Some(Watch::read(socket.get_ref().fd())),
            reader.stt.watch(),
            reader.commits.as_ref().map(|c| Watch::read(c.fd())),
        ];
        if let Err(err) = poll::wait_optional(&mut watches, deadline) {
            // Not expected (poll fails only on bad arguments): the call cannot go on.
            break Some(End::TwilioLost(format!("waiting for the socket: {err}")));
        }
        let ready = |n: usize| watches[n].as_ref().is_some_and(Watch::readable);
        let (twilio_ready, stt_read, commit_asked) = (ready(0), ready(1), ready(2));
        let stt_write = watches[1].as_ref().is_some_and(Watch::writable);
        let now = Instant::now();
        if twilio_ready || clock.is_late(now) || std::mem::take(&mut buffered) {
            if let Flow::Stop(end) = state.drain(&mut socket, now) {
                break end;
            }
        }
        if clock.due(now, state.chunk.len() / FRAME_BYTES) {
            let (audio, loud) = state.chunk();
            reader.stt.send(audio, loud, now, reader.events);
            state.clear_chunk();
        }
        if state.last_message + reader.read_timeout <= now {
            break Some(End::TwilioSilent);
        }
        if stt_read || stt_write {
            reader.stt.on_ready(stt_read, stt_write, now, reader.events);
        }
        if commit_asked {
            // The call thread holds the sender for the whole call: gone, the call is ending.
            if reader.commits.as_ref().is_some_and(WakeReceiver::drain) {
                // The audio gathered so far goes first: the commit covers everything the
                // caller said before it (a chunk may be longer than the silence that ended
                // the turn).
                let (audio, loud) = state.chunk();
                if !audio.is_empty() {
                    reader.stt.send(audio, loud, now, reader.events);
                    state.clear_chunk();
                }
                reader.stt.commit(now, reader.events);
            } else {
                reader.commits = None;
            }
        }
        reader.stt.on_time(now, reader.events);
        if release_stack_at.is_some_and(|at| at <= now) {
            // The `start` and the first speech-to-text messages went deeper than the frames
            // that follow; the reader goes on in a few KiB.
            crate::stack::release_unused();
            release_stack_at = None;
        }
    };
    let too_big = end == Some(End::MessageTooBig);
    if let Some(end) = end {
        let _ = reader.events.send(Event::TwilioGone(end));
    }
    if too_big {
        // The call thread writes the close (1009) and ends our side; what is still arriving
        // of the message is dropped meanwhile, so closing does not reset the connection.
        super::socket::drain_raw(socket.get_mut(), Instant::now() + super::socket::DRAIN_WAIT);
    }
    reader.stt.close();
}

/// When the caller's audio goes to speech-to-text, as a pure rule of the time and the frames
/// gathered (see the module docs): a chunk starts with its first frame, goes when it is whole
/// or a frame is late, and while frames keep coming the next starts one chunk later.
#[derive(Debug)]
struct ChunkClock {
    chunk: Duration,
    frames: usize,
    /// The nominal start of the chunk being gathered.
    gathering: Option<Instant>,
}

impl ChunkClock {
    fn new(chunk: Duration) -> ChunkClock {
        ChunkClock {
            chunk,
            frames: ((chunk.as_millis() / FRAME.as_millis()) as usize).max(1),
            gathering: None,
        }
    }

    /// The Twilio socket's receive low-water mark: while a chunk gathers, the bytes of the
    /// frames it still lacks (a little under, since sizes vary by a few digits; a wake-up early
    /// finds the chunk short and waits again); otherwise 1, any byte.
    fn low_water(&self, frames_in: usize, media_bytes: usize) -> usize {
        match self.gathering {
            Some(_) => {
                let missing = self.frames.saturating_sub(frames_in).max(1);
                missing * media_bytes.saturating_sub(SIZE_SLACK).max(1)
            }
            None => 1,
        }
    }

    /// When the chunk's frames are late: it goes with what it has.
    fn late_at(&self) -> Option<Instant> {
        self.gathering.map(|start| start + self.chunk + FRAME)
    }

    fn is_late(&self, now: Instant) -> bool {
        self.late_at().is_some_and(|at| now >= at)
    }

    /// After a read, with `frames_in` frames gathered: whether the chunk goes now. When it
    /// does, the next chunk's clock is set.
    fn due(&mut self, now: Instant, frames_in: usize) -> bool {
        if self.gathering.is_none() && frames_in > 0 {
            self.gathering = Some(now);
        }
        let Some(start) = self.gathering else {
            return false;
        };
        let late = self.is_late(now);
        if frames_in < self.frames && !late {
            return false;
        }
        // Frames keep coming while the caller is on: the next chunk starts one chunk later
        // without waking for its first frame (a reader held up for more than a chunk starts
        // again from now). A chunk that found nothing goes back to waiting for the socket.
        let next = start + self.chunk;
        self.gathering =
            (frames_in > 0).then_some(if next + self.chunk < now { now } else { next });
        frames_in > 0
    }
}

/// What the reader does with each message from Twilio, apart from the socket and the timing
/// (the test that counts a frame's allocations drives it too): a media frame is decoded once,
/// into a reused buffer, for its loudness and into the chunk for speech-to-text, allocating
/// nothing; the other messages go to the call; a flood of invalid ones ends it.
pub struct TwilioReader<'a> {
    events: &'a Sender<Event>,
    voiced_ms: &'a AtomicU64,
    started: Instant,
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

impl<'a> TwilioReader<'a> {
    pub fn new(events: &'a Sender<Event>, voiced_ms: &'a AtomicU64, started: Instant) -> Self {
        TwilioReader {
            events,
            voiced_ms,
            started,
            invalid: 0,
            in_a_row: 0,
            frame: Vec::with_capacity(FRAME_BYTES * 2),
            chunk: Vec::with_capacity(FRAME_BYTES * 16),
            chunk_loud: false,
            last_message: Instant::now(),
            media_bytes: 0,
        }
    }

    /// The caller's audio gathered so far (decoded μ-law), and whether any of it is speech.
    pub fn chunk(&self) -> (&[u8], bool) {
        (&self.chunk, self.chunk_loud)
    }

    /// The chunk went to speech-to-text: the next one starts empty.
    pub fn clear_chunk(&mut self) {
        self.chunk.clear();
        self.chunk_loud = false;
    }

    /// Reads every message the socket has now.
    fn drain(&mut self, socket: &mut WebSocket<ReadHalf>, now: Instant) -> Flow {
        loop {
            let message = match socket.read() {
                Ok(message) => message,
                Err(err) if crate::providers::ws::is_timeout(&err) => return Flow::Go,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Flow::Stop(Some(End::TwilioClosed))
                }
                // The call closes with 1009; the rest of the message is read and dropped.
                Err(tungstenite::Error::Capacity(_)) => {
                    return Flow::Stop(Some(End::MessageTooBig))
                }
                Err(err) => return Flow::Stop(Some(End::TwilioLost(err.to_string()))),
            };
            self.last_message = now;
            if let stop @ Flow::Stop(_) = self.on_message(message) {
                return stop;
            }
        }
    }

    /// Handles one message: audio into the chunk, the rest to the call.
    pub fn on_message(&mut self, message: Message) -> Flow {
        let bad = match message {
            Message::Text(text) => match twilio_messages::parse(text.as_str()) {
                Ok(Received::Media(media)) => {
                    self.media_bytes = text.len() + 4;
                    self.on_media(&media.payload)
                }
                Ok(Received::Message(Inbound::Stop)) => {
                    let _ = self.events.send(Event::Twilio(Inbound::Stop));
                    return Flow::Stop(None);
                }
                Ok(Received::Message(other)) => {
                    if self.events.send(Event::Twilio(other)).is_err() {
                        return Flow::Stop(None);
                    }
                    None
                }
                Err(bad) => Some(bad.to_string()),
            },
            // Answered by the call thread (this half's writes go nowhere).
            Message::Close(frame) => {
                return Flow::Stop(Some(End::ClosedByTwilio(frame.map(|f| u16::from(f.code)))))
            }
            // RFC 6455: a ping is answered with a pong carrying its payload. tungstenite's own
            // reply goes into this half's sink; the call thread, the only writer, sends it.
            Message::Ping(payload) => {
                if self.events.send(Event::Ping(payload.to_vec())).is_err() {
                    return Flow::Stop(None);
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
                    return Flow::Stop(Some(End::TwilioInvalid(self.invalid)));
                }
            }
        }
        Flow::Go
    }

    /// A media frame: decoded once, for its loudness and into the chunk.
    fn on_media(&mut self, payload: &str) -> Option<String> {
        self.frame.clear();
        if let Err(err) = base64::engine::general_purpose::STANDARD
            .decode_vec(payload.as_bytes(), &mut self.frame)
        {
            return Some(format!("media payload is not base64: {err}"));
        }
        // Decoded once here: the call's silence timers and the watchdog get the verdict,
        // speech-to-text the samples.
        if ulaw::is_voice(&self.frame) {
            self.chunk_loud = true;
            self.voiced_ms.store(
                self.started.elapsed().as_millis() as u64 + 1,
                Ordering::Relaxed,
            );
        }
        self.chunk.extend_from_slice(&self.frame);
        None
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use crossbeam_channel::bounded;

    use super::*;

    fn media(frame: &[u8], n: usize) -> Message {
        let payload = base64::engine::general_purpose::STANDARD.encode(frame);
        Message::text(format!(
            r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{n}","timestamp":"{}","payload":"{payload}"}},"streamSid":"MZ1"}}"#,
            n + 1,
            n * 20
        ))
    }

    #[test]
    fn frames_join_into_the_chunk_decoded_and_the_rest_goes_to_the_call() {
        let (events_tx, events) = bounded::<Event>(8);
        let voiced = AtomicU64::new(0);
        let mut reader = TwilioReader::new(&events_tx, &voiced, Instant::now());
        let speech = crate::sim::voice::speak("hello there", 150.0);
        let frames: Vec<&[u8]> = speech.chunks(FRAME_BYTES).take(5).collect();
        for (n, frame) in frames.iter().enumerate() {
            assert_eq!(reader.on_message(media(frame, n)), Flow::Go);
        }
        let (chunk, loud) = reader.chunk();
        assert_eq!(
            chunk,
            frames.concat().as_slice(),
            "the frames, decoded, in order"
        );
        assert!(loud);
        assert_ne!(
            voiced.load(Ordering::Relaxed),
            0,
            "the call hears the voice"
        );
        assert!(reader.media_bytes > 200, "a media message's size is learnt");
        reader.clear_chunk();
        assert_eq!(reader.chunk(), (&[][..], false));

        let mark = r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"1-0"}}"#;
        assert_eq!(reader.on_message(Message::text(mark)), Flow::Go);
        assert!(matches!(
            events.try_recv(),
            Ok(Event::Twilio(Inbound::Mark { name })) if name == "1-0"
        ));
        let stop = r#"{"event":"stop","streamSid":"MZ1","stop":{"callSid":"CA1"}}"#;
        assert_eq!(reader.on_message(Message::text(stop)), Flow::Stop(None));
    }

    #[test]
    fn a_chunk_starts_with_its_first_frame_and_goes_when_whole_or_late() {
        let chunk = Duration::from_millis(100);
        let mut clock = ChunkClock::new(chunk);
        let t0 = Instant::now();
        assert_eq!(
            clock.low_water(0, 330),
            1,
            "idle: any byte wakes the reader"
        );
        assert_eq!(clock.late_at(), None);
        assert!(!clock.due(t0, 1), "one frame of five");
        // The reader sleeps until the four missing frames' bytes are there.
        assert_eq!(clock.low_water(1, 330), 4 * (330 - SIZE_SLACK));
        assert_eq!(clock.late_at(), Some(t0 + chunk + FRAME));
        assert!(clock.due(t0 + FRAME * 4, 5), "whole");
        // Frames keep coming: the next chunk is already timed, from one chunk later.
        assert_eq!(clock.late_at(), Some(t0 + chunk * 2 + FRAME));
        assert_eq!(clock.low_water(0, 330), 5 * (330 - SIZE_SLACK));
        assert!(!clock.due(t0 + chunk + FRAME * 2, 3));
        // A frame is late: what there is goes.
        assert!(clock.due(t0 + chunk * 2 + FRAME, 3));
        // The caller's frames stopped: the late chunk finds none, and the clock rests.
        assert!(!clock.due(t0 + chunk * 3 + FRAME, 0));
        assert_eq!(clock.late_at(), None);
        assert_eq!(clock.low_water(0, 330), 1);
    }

    #[test]
    fn a_reader_held_up_starts_its_next_chunk_from_now() {
        let chunk = Duration::from_millis(100);
        let mut clock = ChunkClock::new(chunk);
        let t0 = Instant::now();
        assert!(!clock.due(t0, 1));
        let later = t0 + chunk * 5;
        assert!(clock.due(later, 9));
        assert_eq!(clock.late_at(), Some(later + chunk + FRAME));
    }

    #[test]
    fn twenty_ms_chunks_go_frame_by_frame() {
        let mut clock = ChunkClock::new(FRAME);
        let t0 = Instant::now();
        assert!(clock.due(t0, 1));
        assert!(clock.due(t0 + FRAME, 1));
    }

    #[test]
    fn a_flood_of_invalid_messages_stops_the_reader() {
        let (events_tx, _events) = bounded::<Event>(8);
        let voiced = AtomicU64::new(0);
        let mut reader = TwilioReader::new(&events_tx, &voiced, Instant::now());
        let mut flow = Flow::Go;
        for _ in 0..MAX_INVALID_IN_A_ROW {
            flow = reader.on_message(Message::text("not json"));
        }
        assert_eq!(
            flow,
            Flow::Stop(Some(End::TwilioInvalid(MAX_INVALID_IN_A_ROW)))
        );
    }
}
