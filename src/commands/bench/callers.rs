//! The bench's callers: every simulated call of a run, driven by one thread.
//!
//! The design card's thread per call binds the server, not the load generator; a thread per
//! simulated caller (as `sim::caller` has, for tests and the demo) costs the harness a wake-up
//! per frame per call and a stack each, which is what stopped it near 200 calls a core. Here
//! one thread (`bench-callers`) holds every caller's non-blocking WebSocket and waits with
//! `epoll(7)` until a socket is readable or the earliest caller's next 20 ms frame is due; the
//! frames due within [`SLACK`] go out together (a few hundred wake-ups a second whatever the
//! number of calls), and what arrives is read at once, so the hops timed here are not late.
//! Dialing (Twilio's webhook, then the WebSocket upgrade) blocks, so it runs on a thread of its
//! own (`bench-dialer`), one call every `stagger`, and hands each opened stream to the loop.
//!
//! Each caller is what `sim::caller` is to the server: a frame every 20 ms in real time
//! (speech when it has something to say, silence otherwise), Twilio's playback buffer played
//! in real time ([`PhoneBuffer`]: marks echoed when their audio has played, `clear` honoured,
//! frame gaps counted). Its script: hear the greeting, then speak `turns` utterances, waiting
//! for each answer; every second utterance is said over the assistant's answer (a barge-in),
//! [`BARGE_IN_AFTER`] after its first audio, so the server's `clear` is exercised and timed.
//!
//! Every voiced frame carries the caller and frame number in the low bits of its first
//! samples (inaudible), so its payload is unique in the run and the hops matched by payload
//! (`sim::hops`) never turn ambiguous however many calls run.

use std::borrow::Cow;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use tungstenite::{Message, WebSocket};

use crate::poll::{self, Epoll, WakeReceiver, WakeSender};
use crate::providers::ws::is_timeout;
use crate::sim::caller::{self as sim_caller, CallerOptions, PhoneBuffer};
use crate::sim::elevenlabs_stt::SPEECH_RMS;
use crate::sim::hops::{key_of, sampled, Hop, HopClock};
use crate::sim::voice;
use crate::speech::ulaw::FRAME_BYTES as FRAME;

/// Frames due this close to now go out in the same wake-up (a little early, never late).
pub const SLACK: Duration = Duration::from_millis(2);
/// The callers' voices.
const VOICES: usize = 8;
/// A frame sent this long after its time counts as late: the harness could not keep up.
pub const LATE: Duration = Duration::from_millis(10);
/// How long after its first audio an answer is interrupted, on a barge-in turn.
pub const BARGE_IN_AFTER: Duration = Duration::from_millis(700);
/// Nothing heard for this long, and no mark pending: the answer has finished.
const QUIET: Duration = Duration::from_millis(600);
/// How long each step of the script may take before the call counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const FRAME_EVERY: Duration = Duration::from_millis(20);

/// What a run's callers say, in turn order.
/// (The simulated STT hears the same words, in order, across all calls, so a call may be given
/// another turn's words. Each starts with a word the server's barge-in rule takes as an
/// interruption on its own — a stop word, see `call::barge_rules` — and that the simulated
/// model never says (it would be echo), so the first partial of a barge-in (every second
/// turn) is the one that interrupts, whichever words it got.)
/// A question, a phrase that trails off, a finished sentence and one without an ending: the
/// smart turn end answers each after its own silence (`call/machine/turn_end.rs`).
pub const UTTERANCES: [&str; 4] = [
    "Sorry what happens at the hearing?",
    "Wait it happened last Friday and then",
    "Sorry please read that back to me.",
    "Wait that is all for today",
];

/// What is said at turn `turn`, numbered `n` (unique words for the hops' keys): the number
/// goes after the first word, so the utterance's first word and its ending stay its own.
pub fn utterance_text(turn: usize, n: usize) -> String {
    let utterance = UTTERANCES[turn % UTTERANCES.len()];
    let (first, rest) = utterance.split_once(' ').unwrap_or((utterance, ""));
    format!("{first}, number {n}, {rest}")
}

/// One caller's outcome.
#[derive(Debug, Default)]
pub struct CallerRun {
    /// Milliseconds from the end of each utterance to the first audio heard back.
    pub waits_ms: Vec<u64>,
    pub failed: Option<String>,
    /// Times the caller's playback buffer ran dry inside a piece ([`PhoneBuffer`]).
    pub frame_gaps: u64,
    /// Utterances started over the assistant's answer, and `clear`s heard.
    pub barge_ins: u64,
    pub clears: u64,
    /// Frames sent more than [`LATE`] after their time.
    pub late_frames: u64,
    /// The turn of each of `waits_ms`, in the same order.
    pub wait_turns: Vec<usize>,
}

/// What the callers of one run share with the bench while they run.
pub struct Shared<'a> {
    /// Callers that heard the greeting and have not hung up.
    pub live: &'a AtomicUsize,
    pub hops: &'a Arc<HopClock>,
}

/// Runs `calls` callers against the server (`http` for its webhook, `media` for the stream),
/// one dialed every `stagger`, each speaking `turns` utterances; returns when all are done.
pub fn run(
    http: SocketAddr,
    media: SocketAddr,
    calls: usize,
    turns: usize,
    stagger: Duration,
    shared: &Shared<'_>,
) -> io::Result<Vec<CallerRun>> {
    let (wake, woken) = poll::wake_pair()?;
    // Bounded by the number of calls: the dialer never waits on the loop.
    let (opened, arrivals) = crossbeam_channel::bounded(calls.max(1));
    let dialer = thread::Builder::new()
        .name("bench-dialer".into())
        .spawn(move || dial_all(http, media, calls, stagger, &opened, &wake))?;
    let runs = drive(calls, turns, &arrivals, &woken, shared);
    let _ = dialer.join();
    runs
}

/// A dialed call, or why it could not be dialed.
type Opened = (usize, Result<Opening, String>);

struct Opening {
    socket: WebSocket<TcpStream>,
    stream_sid: String,
}

fn dial_all(
    http: SocketAddr,
    media: SocketAddr,
    calls: usize,
    stagger: Duration,
    opened: &Sender<Opened>,
    wake: &WakeSender,
) {
    let start = Instant::now();
    for index in 0..calls {
        let at = start + stagger.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX));
        thread::sleep(at.saturating_duration_since(Instant::now()));
        let outcome = dial(http, media).map_err(|err| format!("connect: {err}"));
        if opened.send((index, outcome)).is_err() {
            return;
        }
        wake.wake();
    }
}

fn dial(http: SocketAddr, media: SocketAddr) -> io::Result<Opening> {
    let call_sid = sim_caller::new_sid("CA");
    let options = CallerOptions {
        parameters: sim_caller::stream_parameters(http, "parent", &call_sid)?,
        call_sid,
        ..CallerOptions::default()
    };
    let socket = sim_caller::open_stream(media, &options)?;
    socket.get_ref().set_nonblocking(true)?;
    Ok(Opening {
        socket,
        stream_sid: options.stream_sid,
    })
}

/// The loop: frames out when due, whatever arrived read, until every call is done.
fn drive(
    calls: usize,
    turns: usize,
    arrivals: &Receiver<Opened>,
    woken: &WakeReceiver,
    shared: &Shared<'_>,
) -> io::Result<Vec<CallerRun>> {
    /// The token of the dialer's wake-up descriptor; a caller's is its index.
    const DIALER: u64 = u64::MAX;
    let mut epoll = Epoll::new()?;
    epoll.add(woken.fd(), DIALER, false)?;
    let mut runs: Vec<Option<CallerRun>> = (0..calls).map(|_| None).collect();
    // Callers by index, so a token finds its caller; `None` before dialing and after the end.
    let mut callers: Vec<Option<Caller>> = (0..calls).map(|_| None).collect();
    let mut outcomes = 0;
    let mut scratch = Scratch::default();
    let mut ready = Vec::new();
    while outcomes < calls {
        for (index, outcome) in arrivals.try_iter() {
            let opened = outcome.and_then(|opening| {
                let caller = Caller::new(index, opening, turns, Instant::now());
                epoll
                    .add(caller.socket.get_ref().as_fd(), index as u64, false)
                    .map_err(|err| format!("cannot watch the stream: {err}"))?;
                Ok(caller)
            });
            match opened {
                Ok(caller) => callers[index] = Some(caller),
                Err(why) => {
                    outcomes += 1;
                    runs[index] = Some(CallerRun {
                        failed: Some(why),
                        ..CallerRun::default()
                    });
                }
            }
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for slot in &mut callers {
            let Some(caller) = slot else { continue };
            if caller.next_frame <= now + SLACK {
                caller.frame(now, shared, &mut scratch);
            }
            if caller.outcome.is_some() {
                // Finished: it leaves the loop with its outcome.
                let _ = epoll.remove(caller.socket.get_ref().as_fd());
                caller.finish(shared);
                outcomes += 1;
                let index = caller.index;
                runs[index] = slot.take().map(|c| c.run);
                continue;
            }
            caller.watch_writes(&mut epoll);
            next = Some(next.map_or(caller.next_frame, |n| n.min(caller.next_frame)));
        }
        if outcomes >= calls {
            break;
        }
        // With no caller yet the dialer's wake-up is what ends the wait; the deadline only
        // bounds it.
        let deadline = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        if epoll.wait(&mut ready, Some(deadline)).is_err() {
            // Out of resources: the next turn of the loop tries again.
            thread::sleep(Duration::from_millis(1));
        }
        for event in &ready {
            if event.token == DIALER {
                // Closed for good once the dialer is done: then it is not watched any more
                // (it would end every wait at once).
                if !woken.drain() {
                    let _ = epoll.remove(woken.fd());
                }
                continue;
            }
            let slot = usize::try_from(event.token)
                .ok()
                .and_then(|i| callers.get_mut(i));
            let Some(Some(caller)) = slot else { continue };
            if event.writable && caller.unflushed {
                caller.flush();
            }
            if event.readable {
                caller.read_all(Instant::now(), shared, &mut scratch);
            }
            caller.watch_writes(&mut epoll);
        }
    }
    Ok(runs
        .into_iter()
        .map(|run| {
            run.unwrap_or_else(|| CallerRun {
                failed: Some("the caller never ran".into()),
                ..CallerRun::default()
            })
        })
        .collect())
}

/// Buffers the loop reuses for every caller.
#[derive(Default)]
struct Scratch {
    payload: String,
    audio: Vec<u8>,
}

/// Where a caller is in its script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Waiting for the greeting to play (its mark echoed).
    Greeting,
    /// Saying utterance `turn`.
    Speaking,
    /// Done speaking at this moment; waiting for the first audio of the answer.
    Answering { done: Instant },
    /// The answer's first audio came at this moment; listening to the rest.
    Listening { first_audio: Instant },
}

struct Caller {
    index: usize,
    socket: WebSocket<TcpStream>,
    stream_sid: String,
    turns: usize,
    started: Instant,
    next_frame: Instant,
    chunk: u64,
    to_say: std::sync::Arc<[u8]>,
    said: usize,
    phone: PhoneBuffer,
    step: Step,
    /// The turn being said or answered.
    turn: usize,
    step_deadline: Instant,
    last_heard: Instant,
    echoed: usize,
    /// The key of this utterance's first loud frame (`partial_to_clear`).
    utterance_key: Option<u64>,
    live: bool,
    /// The socket holds data it could not write yet, and whether epoll watches for room.
    unflushed: bool,
    watching_writes: bool,
    /// Set when the call is over: `Ok` hung up after the script, `Err` why it failed.
    outcome: Option<Result<(), String>>,
    run: CallerRun,
}

/// An event from the server, as much of it as a caller reads.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    media: Option<MediaIn<'a>>,
    #[serde(borrow)]
    mark: Option<MarkIn<'a>>,
}

#[derive(Deserialize)]
struct MediaIn<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct MarkIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

impl Caller {
    fn new(index: usize, opening: Opening, turns: usize, now: Instant) -> Caller {
        Caller {
            index,
            socket: opening.socket,
            stream_sid: opening.stream_sid,
            turns,
            started: now,
            next_frame: now,
            chunk: 0,
            to_say: std::sync::Arc::from(Vec::new()),
            said: 0,
            phone: PhoneBuffer::default(),
            step: Step::Greeting,
            turn: 0,
            step_deadline: now + STEP_TIMEOUT,
            last_heard: now,
            echoed: 0,
            utterance_key: None,
            live: false,
            unflushed: false,
            watching_writes: false,
            outcome: None,
            run: CallerRun::default(),
        }
    }

    /// One of [`VOICES`] pitches per caller, so its speech sounds like one voice. A few voices,
    /// not one a caller: what each says is synthesized once per voice and phrase
    /// ([`voice::speak_cached`]), not once per caller (it was a twentieth of the harness's CPU).
    fn pitch(&self) -> f32 {
        180.0 + (self.index % VOICES) as f32 * 9.0
    }

    fn fail(&mut self, why: String) {
        if self.outcome.is_none() {
            self.outcome = Some(Err(why));
        }
    }

    fn send(&mut self, text: String) {
        match self.socket.send(Message::text(text)) {
            Ok(()) => {}
            // Queued in the socket's buffer; flushed when writable.
            Err(err) if is_timeout(&err) => {
                self.unflushed = true;
            }
            Err(err) => self.fail(format!("sending: {err}")),
        }
    }

    /// Watches the socket for room to write exactly while it holds unwritten data.
    fn watch_writes(&mut self, epoll: &mut Epoll) {
        if self.unflushed != self.watching_writes {
            let token = self.index as u64;
            match epoll.modify(self.socket.get_ref().as_fd(), token, self.unflushed) {
                Ok(()) => self.watching_writes = self.unflushed,
                Err(err) => self.fail(format!("cannot watch the stream: {err}")),
            }
        }
    }

    fn flush(&mut self) {
        match self.socket.flush() {
            Ok(()) => self.unflushed = false,
            Err(err) if is_timeout(&err) => {}
            Err(err) => self.fail(format!("sending: {err}")),
        }
    }

    fn echo(&mut self, name: &str) {
        let name = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
        self.send(format!(
            r#"{{"event":"mark","streamSid":"{}","sequenceNumber":"0","mark":{{"name":{name}}}}}"#,
            self.stream_sid
        ));
        self.echoed += 1;
    }

    fn say(&mut self, now: Instant) {
        let text = utterance_text(self.turn, self.turn + 1);
        self.to_say = voice::speak_cached(&text, self.pitch());
        self.said = 0;
        self.utterance_key = None;
        self.step = Step::Speaking;
        self.step_deadline = now + STEP_TIMEOUT;
    }

    /// Whether turn `turn` is said over the answer to the one before.
    fn barges_in(turn: usize) -> bool {
        turn % 2 == 1
    }

    /// The frame due now: speech or silence out, a frame's time of playback, the script.
    fn frame(&mut self, now: Instant, shared: &Shared<'_>, scratch: &mut Scratch) {
        if now > self.next_frame + LATE {
            self.run.late_frames += 1;
        }
        self.chunk += 1;
        let mut frame = [voice::ULAW_SILENCE; FRAME];
        let n = (self.to_say.len() - self.said).min(FRAME);
        frame[..n].copy_from_slice(&self.to_say[self.said..self.said + n]);
        self.said += n;
        if n > 0 {
            tag(&mut frame, self.index, self.chunk);
        }
        scratch.payload.clear();
        base64::engine::general_purpose::STANDARD.encode_string(frame, &mut scratch.payload);
        if n > 0 {
            let key = key_of(scratch.payload.as_str());
            if sampled(key) {
                shared.hops.start(Hop::TwilioToStt, key, now);
            }
            if self.utterance_key.is_none() && voice::rms(&frame) > SPEECH_RMS {
                self.utterance_key = Some(key);
            }
        }
        let media = format!(
            r#"{{"event":"media","sequenceNumber":"{}","streamSid":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{}"}}}}"#,
            self.chunk + 1,
            self.stream_sid,
            self.chunk,
            now.duration_since(self.started).as_millis(),
            scratch.payload
        );
        self.send(media);
        let (_, due) = self.phone.play(FRAME);
        for name in due {
            self.echo(&name);
        }
        self.script(now, shared);
        self.next_frame += FRAME_EVERY;
        if self.next_frame + LATE < now {
            // Far behind (the harness stalled): start the cadence again from now.
            self.next_frame = now + FRAME_EVERY;
        }
    }

    /// Moves the script on, once per frame.
    fn script(&mut self, now: Instant, shared: &Shared<'_>) {
        if self.outcome.is_some() {
            return;
        }
        if now > self.step_deadline {
            let why = match self.step {
                Step::Greeting => "the greeting did not play".to_string(),
                Step::Speaking => "the caller could not finish speaking".to_string(),
                Step::Answering { .. } => format!("turn {} got no answer", self.turn + 1),
                Step::Listening { .. } => format!("turn {} did not finish playing", self.turn + 1),
            };
            self.fail(why);
            return;
        }
        match self.step {
            Step::Greeting => {
                if self.echoed >= 1 {
                    self.live = true;
                    shared.live.fetch_add(1, Ordering::SeqCst);
                    self.say(now);
                }
            }
            Step::Speaking => {
                if self.said >= self.to_say.len() {
                    self.step = Step::Answering { done: now };
                    self.step_deadline = now + STEP_TIMEOUT;
                }
            }
            Step::Answering { .. } => {}
            Step::Listening { first_audio } => {
                let next = self.turn + 1;
                let quiet =
                    self.phone.pending_marks() == 0 && now.duration_since(self.last_heard) >= QUIET;
                if next < self.turns
                    && Caller::barges_in(next)
                    && now.duration_since(first_audio) >= BARGE_IN_AFTER
                {
                    self.turn = next;
                    self.run.barge_ins += 1;
                    self.say(now);
                } else if quiet {
                    if next < self.turns {
                        self.turn = next;
                        self.say(now);
                    } else {
                        self.outcome = Some(Ok(()));
                    }
                }
            }
        }
    }

    /// Reads everything that has arrived.
    fn read_all(&mut self, now: Instant, shared: &Shared<'_>, scratch: &mut Scratch) {
        loop {
            let message = match self.socket.read() {
                Ok(message) => message,
                Err(err) if is_timeout(&err) => {
                    return;
                }
                Err(err) => {
                    self.fail(format!(
                        "the stream ended during turn {}: {err}",
                        self.turn + 1
                    ));
                    return;
                }
            };
            match message {
                Message::Text(text) => self.heard(text.as_str(), now, shared, scratch),
                Message::Close(_) => {
                    self.fail(format!(
                        "the server closed the stream during turn {}",
                        self.turn + 1
                    ));
                    return;
                }
                _ => {}
            }
        }
    }

    fn heard(&mut self, text: &str, now: Instant, shared: &Shared<'_>, scratch: &mut Scratch) {
        let Ok(event) = serde_json::from_str::<Incoming<'_>>(text) else {
            return;
        };
        self.last_heard = now;
        match (event.event.as_ref(), event.media, event.mark) {
            ("media", Some(media), _) => {
                shared
                    .hops
                    .end(Hop::TtsToTwilio, key_of(media.payload.as_ref()), now);
                scratch.audio.clear();
                if base64::engine::general_purpose::STANDARD
                    .decode_vec(media.payload.as_bytes(), &mut scratch.audio)
                    .is_err()
                {
                    self.fail("the server sent media that is not base64".into());
                    return;
                }
                self.phone.media(scratch.audio.len());
                if let Step::Answering { done } = self.step {
                    if !scratch.audio.is_empty() {
                        self.run
                            .waits_ms
                            .push(now.duration_since(done).as_millis() as u64);
                        self.run.wait_turns.push(self.turn);
                        self.step = Step::Listening { first_audio: now };
                        self.step_deadline = now + STEP_TIMEOUT;
                    }
                }
            }
            ("mark", _, Some(mark)) => self.phone.mark(mark.name.into_owned()),
            ("clear", _, _) => {
                self.run.clears += 1;
                if let Some(key) = self.utterance_key {
                    shared.hops.end(Hop::PartialToClear, key, now);
                }
                for name in self.phone.clear() {
                    self.echo(&name);
                }
            }
            _ => {}
        }
    }

    /// Hangs up as Twilio does when the caller does (`stop`, then the close), and counts the
    /// call off.
    fn finish(&mut self, shared: &Shared<'_>) {
        if self.live {
            shared.live.fetch_sub(1, Ordering::SeqCst);
            self.live = false;
        }
        let stop = format!(
            r#"{{"event":"stop","streamSid":"{}","sequenceNumber":"0","stop":{{"accountSid":"{}"}}}}"#,
            self.stream_sid,
            crate::sim::SIM_TWILIO_ACCOUNT_SID
        );
        let _ = self.socket.send(Message::text(stop));
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
        self.run.frame_gaps = self.phone.frame_gaps();
        if let Some(Err(why)) = self.outcome.take() {
            self.run.failed = Some(why);
        }
    }
}

/// Writes `index` and `chunk` into the lowest bit of the frame's first 32 samples: inaudible,
/// and it makes the frame's payload unique to this caller and moment.
fn tag(frame: &mut [u8; FRAME], index: usize, chunk: u64) {
    let tag = ((index as u64 & 0xffff) << 16) | (chunk & 0xffff);
    for (bit, sample) in frame.iter_mut().take(32).enumerate() {
        *sample = (*sample & !1) | ((tag >> bit) & 1) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_frames_differ_by_caller_and_moment_and_sound_the_same() {
        let speech = voice::speak("Actually wait", 200.0);
        let mut frame = [0u8; FRAME];
        frame.copy_from_slice(&speech[FRAME..2 * FRAME]);
        let tagged = |index, chunk| {
            let mut f = frame;
            tag(&mut f, index, chunk);
            f
        };
        assert_ne!(tagged(1, 7), tagged(2, 7));
        assert_ne!(tagged(1, 7), tagged(1, 8));
        assert_eq!(tagged(3, 9), tagged(3, 9));
        let (before, after) = (voice::rms(&frame), voice::rms(&tagged(65_535, 65_535)));
        assert!(
            (before - after).abs() < before * 0.02,
            "loudness {before} became {after}"
        );
    }

    #[test]
    fn every_second_turn_barges_in() {
        let barging: Vec<bool> = (0..4).map(Caller::barges_in).collect();
        assert_eq!(barging, [false, true, false, true]);
    }
}
