//! A simulated Twilio Media Stream: the phone side of a call, for the `demo` command and the
//! end-to-end tests. It connects to our media server as Twilio does (`connected`, `start` with
//! custom parameters, then a `media` frame every 20 ms for the whole call — speech when the
//! script says something, silence otherwise), and it plays what it receives like Twilio's
//! buffer does: audio at real-time speed (or faster, for tests), marks echoed when the audio
//! before them has played, and on `clear` the buffer dropped and every pending mark echoed at
//! once. Everything received is logged with its time, and both sides of the call are kept as
//! audio (the demo writes them to a WAV file).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::voice;

use crate::speech::ulaw::FRAME_BYTES as FRAME;

/// How the simulated phone behaves.
#[derive(Clone, Debug)]
pub struct CallerOptions {
    pub call_sid: String,
    pub stream_sid: String,
    /// `<Parameter>`s of the stream (`role`, …).
    pub parameters: Vec<(String, String)>,
    /// `X-Twilio-Signature` for the upgrade, when the server checks it.
    pub signature: Option<String>,
    /// Twilio plays received audio this many times faster than real time (1 is a real phone;
    /// tests use more so a long greeting does not take its full length).
    pub playback_speed: usize,
    /// The voice of the caller's speech.
    pub pitch: f32,
    /// Where this caller times its ends of the hops (`twilio_to_stt`: sampled speech frames
    /// sent; `tts_to_twilio`: media received), see [`super::hops`].
    pub hops: Option<Arc<super::hops::HopClock>>,
    /// Whether marks are echoed once their audio has played, as Twilio does (`false`: a
    /// broken client that never echoes them).
    pub echo_marks: bool,
}

impl Default for CallerOptions {
    fn default() -> CallerOptions {
        CallerOptions {
            call_sid: new_sid("CA"),
            stream_sid: new_sid("MZ"),
            parameters: vec![("role".into(), "parent".into())],
            signature: None,
            playback_speed: 1,
            pitch: 210.0,
            hops: None,
            echo_marks: true,
        }
    }
}

/// The `<Parameter>`s of the stream our server answers `POST /call/incoming?role=ROLE` with,
/// for `call_sid` (Twilio's webhook, unsigned).
pub fn stream_parameters(
    http: SocketAddr,
    role: &str,
    call_sid: &str,
) -> io::Result<Vec<(String, String)>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let agent = crate::resolve::bounded(&agent);
    let body = crate::twilio::rest::encode_form(&[
        ("CallSid", call_sid.to_string()),
        ("AccountSid", super::SIM_TWILIO_ACCOUNT_SID.to_string()),
        ("From", "+15555550100".to_string()),
        ("To", "+15555550199".to_string()),
        ("Direction", "inbound".to_string()),
        ("CallStatus", "ringing".to_string()),
    ]);
    let mut response = agent
        .post(&format!("http://{http}/call/incoming?role={role}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(body)
        .map_err(io::Error::other)?;
    let status = response.status().as_u16();
    let twiml = response
        .body_mut()
        .read_to_string()
        .map_err(io::Error::other)?;
    if status != 200 {
        return Err(io::Error::other(format!(
            "/call/incoming answered {status}: {twiml}"
        )));
    }
    super::twilio::stream_of(&twiml)
        .map(|(_, parameters)| parameters)
        .ok_or_else(|| io::Error::other("the TwiML has no <Connect><Stream>"))
}

/// Opens the Media Stream on `addr` as Twilio does: the WebSocket upgrade (signed when
/// `options` has a signature), then `connected` and `start` with the options' call, stream and
/// `<Parameter>`s. The socket keeps a 5 s read timeout.
pub fn open_stream(addr: SocketAddr, options: &CallerOptions) -> io::Result<WebSocket<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("ws://{addr}/call/stream")
        .into_client_request()
        .map_err(io::Error::other)?;
    if let Some(signature) = &options.signature {
        let value = signature.parse().map_err(io::Error::other)?;
        request.headers_mut().insert("X-Twilio-Signature", value);
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (mut socket, _) = tungstenite::client::client_with_config(request, stream, Some(config))
        .map_err(|e| io::Error::other(e.to_string()))?;
    send_start(&mut socket, options)?;
    Ok(socket)
}

/// Sends what Twilio sends first on a new stream: `connected`, then `start` with the options'
/// call, stream and `<Parameter>`s (as `customParameters`).
pub fn send_start<S: Read + Write>(
    socket: &mut WebSocket<S>,
    options: &CallerOptions,
) -> io::Result<()> {
    let mut send = |value: Value| {
        socket
            .send(Message::text(value.to_string()))
            .map_err(|e| io::Error::other(e.to_string()))
    };
    send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}))?;
    let parameters: serde_json::Map<String, Value> = options
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    send(
        json!({"event": "start", "sequenceNumber": "1", "streamSid": options.stream_sid,
               "start": {"accountSid": super::SIM_TWILIO_ACCOUNT_SID,
                         "streamSid": options.stream_sid, "callSid": options.call_sid,
                         "tracks": ["inbound"],
                         "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                         "customParameters": parameters}}),
    )
}

/// `CA…` or `MZ…` and 32 random hex digits, as Twilio's ids look.
pub fn new_sid(prefix: &str) -> String {
    format!("{prefix}{}", hex(&crate::ids::random_bytes::<16>()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the phone received, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Audio for the caller (bytes of μ-law).
    Media(usize),
    /// A mark arrived; it is echoed when its audio has played.
    Mark(String),
    /// We echoed this mark back.
    Echoed(String),
    Clear,
    /// The server closed the stream (with this close code).
    Closed(Option<u16>),
}

#[derive(Default)]
struct Shared {
    log: Vec<(Instant, Heard)>,
    to_say: VecDeque<u8>,
    /// When the last queued speech finished being sent.
    speech_done_at: Option<Instant>,
    outgoing: VecDeque<String>,
    hang_up: bool,
    closed: bool,
    caller_track: Vec<u8>,
    assistant_track: Vec<u8>,
    /// Playback speed now (starts as the options say).
    speed: usize,
    /// Times the playback buffer ran dry inside a piece while more of it was still to come.
    frame_gaps: u64,
}

/// A connected simulated caller.
pub struct SimCaller {
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
    options: CallerOptions,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimCaller {
    /// Calls the server as Twilio does: `POST /call/incoming?role=ROLE` on `http` (unsigned:
    /// for servers that do not check webhook signatures), then the stream on `media` with the
    /// TwiML's `<Parameter>`s passed back in `start` (the per-call token among them).
    pub fn dial(
        http: SocketAddr,
        media: SocketAddr,
        role: &str,
        options: CallerOptions,
    ) -> io::Result<SimCaller> {
        let parameters = stream_parameters(http, role, &options.call_sid)?;
        SimCaller::connect(
            media,
            CallerOptions {
                parameters,
                ..options
            },
        )
    }

    /// Connects to the media server at `addr` and starts the stream.
    pub fn connect(addr: SocketAddr, options: CallerOptions) -> io::Result<SimCaller> {
        let socket = open_stream(addr, &options)?;
        socket
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(2)))?;
        SimCaller::over(socket, options)
    }

    /// Plays the phone on a stream already opened and started (see [`send_start`]), plain or
    /// TLS. The socket under it must have a short read timeout (a few milliseconds): the phone
    /// sends a frame every 20 ms and reads whatever came in between.
    pub fn over<S: Read + Write + Send + 'static>(
        socket: WebSocket<S>,
        options: CallerOptions,
    ) -> io::Result<SimCaller> {
        let shared = Arc::new(Mutex::new(Shared {
            speed: options.playback_speed.max(1),
            ..Shared::default()
        }));
        let thread_shared = shared.clone();
        let thread_options = options.clone();
        let thread = thread::Builder::new()
            .name("sim-caller".into())
            .stack_size(256 * 1024)
            .spawn(move || phone(socket, &thread_options, &thread_shared))?;
        Ok(SimCaller {
            shared,
            thread: Some(thread),
            options,
        })
    }

    pub fn call_sid(&self) -> &str {
        &self.options.call_sid
    }

    /// Speaks `text` (after anything still being said), then silence.
    pub fn say(&self, text: &str) {
        let audio = voice::speak(text, self.options.pitch);
        let mut shared = lock(&self.shared);
        shared.to_say.extend(audio);
        shared.speech_done_at = None;
    }

    /// Speaks `ulaw` (8 kHz μ-law audio, e.g. from a WAV file) after anything still being
    /// said, then silence.
    pub fn say_audio(&self, ulaw: &[u8]) {
        let mut shared = lock(&self.shared);
        shared.to_say.extend(ulaw.iter().copied());
        shared.speech_done_at = None;
    }

    /// Changes how fast received audio plays (1 is real time).
    pub fn set_playback_speed(&self, speed: usize) {
        lock(&self.shared).speed = speed.max(1);
    }

    /// Presses a key.
    pub fn press(&self, digit: char) {
        let message = json!({"event": "dtmf", "streamSid": self.options.stream_sid,
                             "sequenceNumber": "0",
                             "dtmf": {"track": "inbound_track", "digit": digit.to_string()}});
        lock(&self.shared).outgoing.push_back(message.to_string());
    }

    /// Sends a raw text frame (tests send invalid ones).
    pub fn send_raw(&self, text: &str) {
        lock(&self.shared).outgoing.push_back(text.to_string());
    }

    /// When the caller last finished speaking (None while speaking or before speaking).
    pub fn speech_done_at(&self) -> Option<Instant> {
        lock(&self.shared).speech_done_at
    }

    /// Whether the caller is still saying something.
    pub fn is_speaking(&self) -> bool {
        !lock(&self.shared).to_say.is_empty()
    }

    /// How many times the playback buffer ran dry inside one spoken piece (between its first
    /// media and its mark) while more audio of that piece was still to come: a caller hears
    /// these as choppy audio. A pause between pieces is not a gap.
    pub fn frame_gaps(&self) -> u64 {
        lock(&self.shared).frame_gaps
    }

    /// Everything received so far, with when.
    pub fn log(&self) -> Vec<(Instant, Heard)> {
        lock(&self.shared).log.clone()
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.shared).closed
    }

    /// Waits until `done` holds for the log, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[(Instant, Heard)]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&lock(&self.shared).log) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the marks echoed so far number `n` (each piece of speech heard in full).
    pub fn wait_for_echoes(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |log| {
            log.iter()
                .filter(|(_, h)| matches!(h, Heard::Echoed(_)))
                .count()
                >= n
        })
    }

    /// Waits until nothing has been received for `quiet` (the assistant finished), up to
    /// `timeout`.
    pub fn wait_until_quiet(&self, quiet: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let last = lock(&self.shared).log.last().map(|(at, _)| *at);
            let playing = {
                let shared = lock(&self.shared);
                pending_marks(&shared.log) > 0
            };
            if !playing && last.is_some_and(|at| at.elapsed() >= quiet) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Both sides of the call so far: (caller, assistant as played), μ-law, aligned in time.
    pub fn tracks(&self) -> (Vec<u8>, Vec<u8>) {
        let shared = lock(&self.shared);
        (shared.caller_track.clone(), shared.assistant_track.clone())
    }

    /// A handle that ends this stream from elsewhere (see [`CallerLine`]).
    pub fn line(&self) -> CallerLine {
        CallerLine {
            shared: self.shared.clone(),
        }
    }

    /// Sends `stop` and closes, as Twilio does when the caller hangs up.
    pub fn hang_up(mut self) -> Vec<(Instant, Heard)> {
        lock(&self.shared).hang_up = true;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.log()
    }

    /// Waits for the server to close the stream.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_closed() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Ends a caller's stream the way Twilio does when the call leaves the stream (hung up, or
/// redirected to new TwiML by a call update): a `stop` message, then the close. The simulated
/// Twilio REST API holds one per call it may update.
#[derive(Clone)]
pub struct CallerLine {
    shared: Arc<Mutex<Shared>>,
}

impl CallerLine {
    /// Asks the phone to send `stop` and close (at its next 20 ms frame).
    pub fn end_stream(&self) {
        lock(&self.shared).hang_up = true;
    }

    /// Whether the stream was ended through [`CallerLine::end_stream`] or a hang-up.
    pub fn is_ended(&self) -> bool {
        lock(&self.shared).hang_up
    }
}

impl Drop for SimCaller {
    fn drop(&mut self) {
        lock(&self.shared).hang_up = true;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn pending_marks(log: &[(Instant, Heard)]) -> usize {
    let marks = log
        .iter()
        .filter(|(_, h)| matches!(h, Heard::Mark(_)))
        .count();
    let echoed = log
        .iter()
        .filter(|(_, h)| matches!(h, Heard::Echoed(_)))
        .count();
    marks.saturating_sub(echoed)
}

/// Twilio's playback buffer as the caller hears it, counted in bytes of μ-law: audio queues
/// up, plays a frame's worth at a time (times the speed), a mark is echoed once the audio
/// queued before it has played, and `clear` drops what is queued and echoes every pending mark.
/// It also counts frame gaps: the buffer running dry inside one spoken piece (between its
/// first media and its mark) while more of that piece was still to come.
#[derive(Debug, Default)]
pub struct PhoneBuffer {
    queued: usize,
    received_total: u64,
    played_total: u64,
    /// Pending marks, each with the total received when it arrived.
    marks: VecDeque<(u64, String)>,
    /// A piece is open from its first media to its mark (or a `clear`).
    piece_open: bool,
    /// The buffer ran out inside the open piece; a gap once more of it arrives.
    dry: bool,
    frame_gaps: u64,
}

impl PhoneBuffer {
    /// `len` bytes of audio arrived.
    pub fn media(&mut self, len: usize) {
        if len == 0 {
            return;
        }
        if self.piece_open && self.dry {
            self.frame_gaps += 1;
        }
        self.queued += len;
        self.received_total += len as u64;
        self.piece_open = true;
        self.dry = false;
    }

    /// A mark arrived: it is echoed when what came before it has played.
    pub fn mark(&mut self, name: String) {
        self.marks.push_back((self.received_total, name));
        self.piece_open = false;
        self.dry = false;
    }

    /// `clear` arrived: the queue is dropped; returns the marks to echo now, in order.
    pub fn clear(&mut self) -> Vec<String> {
        self.queued = 0;
        self.played_total = self.received_total;
        self.piece_open = false;
        self.dry = false;
        self.marks.drain(..).map(|(_, name)| name).collect()
    }

    /// One frame's time passed, in which up to `budget` bytes play. Returns how many played
    /// and the marks whose audio has now played (to echo, in order).
    pub fn play(&mut self, budget: usize) -> (usize, Vec<String>) {
        let n = self.queued.min(budget);
        if self.piece_open && n < budget {
            self.dry = true;
        }
        self.queued -= n;
        self.played_total += n as u64;
        let mut echo = Vec::new();
        while self
            .marks
            .front()
            .is_some_and(|(at, _)| *at <= self.played_total)
        {
            if let Some((_, name)) = self.marks.pop_front() {
                echo.push(name);
            }
        }
        (n, echo)
    }

    pub fn frame_gaps(&self) -> u64 {
        self.frame_gaps
    }

    /// Marks received and not yet echoed.
    pub fn pending_marks(&self) -> usize {
        self.marks.len()
    }
}

/// The phone's loop: one frame out every 20 ms, playback, and whatever came in.
fn phone<S: Read + Write>(
    mut socket: WebSocket<S>,
    options: &CallerOptions,
    shared: &Mutex<Shared>,
) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let started = Instant::now();
    let mut next = Instant::now();
    let mut chunk = 0u64;
    // The bytes themselves, for the assistant's track; `phone` counts them.
    let mut audio: VecDeque<u8> = VecDeque::new();
    let mut phone = PhoneBuffer::default();
    let stream_sid = options.stream_sid.clone();
    let echo = |socket: &mut WebSocket<S>, shared: &Mutex<Shared>, name: String| {
        if !options.echo_marks {
            return false;
        }
        let message = json!({"event": "mark", "streamSid": stream_sid, "sequenceNumber": "0",
                             "mark": {"name": name}});
        let sent = socket.send(Message::text(message.to_string()));
        lock(shared).log.push((Instant::now(), Heard::Echoed(name)));
        sent.is_err()
    };
    'call: loop {
        let (frame, outgoing, hang_up, speed) = {
            let mut s = lock(shared);
            let was_speaking = !s.to_say.is_empty();
            let n = s.to_say.len().min(FRAME);
            let mut frame: Vec<u8> = s.to_say.drain(..n).collect();
            frame.resize(FRAME, voice::ULAW_SILENCE);
            if was_speaking && s.to_say.is_empty() {
                s.speech_done_at = Some(Instant::now());
            }
            s.caller_track.extend_from_slice(&frame);
            (frame, std::mem::take(&mut s.outgoing), s.hang_up, s.speed)
        };
        if hang_up {
            let stop = json!({"event": "stop", "streamSid": stream_sid, "sequenceNumber": "0",
                              "stop": {"accountSid": super::SIM_TWILIO_ACCOUNT_SID,
                                       "callSid": options.call_sid}});
            let _ = socket.send(Message::text(stop.to_string()));
            let _ = socket.close(None);
            let _ = socket.flush();
            break;
        }
        chunk += 1;
        let payload = b64.encode(&frame);
        if let Some(hops) = &options.hops {
            let key = super::hops::key_of(payload.as_str());
            if super::hops::sampled(key) && frame.iter().any(|b| *b != voice::ULAW_SILENCE) {
                hops.start(super::hops::Hop::TwilioToStt, key, Instant::now());
            }
        }
        let media = json!({"event": "media", "sequenceNumber": (chunk + 1).to_string(),
                           "streamSid": stream_sid,
                           "media": {"track": "inbound", "chunk": chunk.to_string(),
                                     "timestamp": started.elapsed().as_millis().to_string(),
                                     "payload": payload}});
        let mut failed = socket.send(Message::text(media.to_string())).is_err();
        for text in outgoing {
            failed |= socket.send(Message::text(text)).is_err();
        }
        // Playback: real time (times the speed) out of the buffer.
        let (n, due) = phone.play(FRAME * speed);
        {
            let mut track: Vec<u8> = audio.drain(..n.min(audio.len())).take(FRAME).collect();
            track.resize(FRAME, voice::ULAW_SILENCE);
            let mut s = lock(shared);
            s.assistant_track.extend_from_slice(&track);
            s.frame_gaps = phone.frame_gaps();
        }
        for name in due {
            failed |= echo(&mut socket, shared, name);
        }
        // Whatever arrived since the last frame.
        loop {
            let message = match socket.read() {
                Ok(message) => message,
                Err(err) if crate::providers::ws::is_timeout(&err) => break,
                Err(_) => {
                    let mut s = lock(shared);
                    s.log.push((Instant::now(), Heard::Closed(None)));
                    s.closed = true;
                    break 'call;
                }
            };
            match message {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    match value["event"].as_str() {
                        Some("media") => {
                            let payload = value["media"]["payload"].as_str().unwrap_or("");
                            if let Some(hops) = &options.hops {
                                hops.end(
                                    super::hops::Hop::TtsToTwilio,
                                    super::hops::key_of(payload),
                                    Instant::now(),
                                );
                            }
                            let bytes = b64.decode(payload).unwrap_or_default();
                            phone.media(bytes.len());
                            let len = bytes.len();
                            audio.extend(bytes);
                            let mut s = lock(shared);
                            s.frame_gaps = phone.frame_gaps();
                            s.log.push((Instant::now(), Heard::Media(len)));
                        }
                        Some("mark") => {
                            let name = value["mark"]["name"].as_str().unwrap_or("").to_string();
                            lock(shared)
                                .log
                                .push((Instant::now(), Heard::Mark(name.clone())));
                            phone.mark(name);
                        }
                        Some("clear") => {
                            audio.clear();
                            lock(shared).log.push((Instant::now(), Heard::Clear));
                            for name in phone.clear() {
                                failed |= echo(&mut socket, shared, name);
                            }
                        }
                        _ => {}
                    }
                }
                Message::Close(frame) => {
                    let mut s = lock(shared);
                    s.log.push((
                        Instant::now(),
                        Heard::Closed(frame.map(|f| u16::from(f.code))),
                    ));
                    s.closed = true;
                    break 'call;
                }
                _ => {}
            }
        }
        if failed {
            let mut s = lock(shared);
            s.log.push((Instant::now(), Heard::Closed(None)));
            s.closed = true;
            break;
        }
        next += Duration::from_millis(20);
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// What the fake media server sends: audio (bytes), a pause, or a mark.
    enum Send {
        Audio(usize),
        Pause(Duration),
        Mark(&'static str),
    }

    /// A media server that plays `script` to the first caller, then holds the stream open
    /// until `stop` is dropped (or 10 s pass).
    fn fake_server(script: Vec<Send>) -> (SocketAddr, mpsc::Sender<()>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("test-fake-media".into())
            .spawn(move || {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let Ok(mut socket) = tungstenite::accept(stream) else {
                    return;
                };
                let b64 = base64::engine::general_purpose::STANDARD;
                for step in script {
                    let message = match step {
                        Send::Audio(n) => json!({"event": "media", "streamSid": "MZ1",
                            "media": {"payload": b64.encode(vec![0x7fu8; n])}}),
                        Send::Mark(name) => {
                            json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}})
                        }
                        Send::Pause(pause) => {
                            thread::sleep(pause);
                            continue;
                        }
                    };
                    if socket.send(Message::text(message.to_string())).is_err() {
                        return;
                    }
                }
                let _ = stopped.recv_timeout(Duration::from_secs(10));
            })
            .expect("thread starts");
        (addr, stop, thread)
    }

    fn gaps_heard(script: Vec<Send>, marks: usize) -> u64 {
        let (addr, stop, server) = fake_server(script);
        let caller = SimCaller::connect(addr, CallerOptions::default()).expect("connects");
        assert!(
            caller.wait_for_echoes(marks, Duration::from_secs(10)),
            "every piece played"
        );
        let gaps = caller.frame_gaps();
        drop(caller);
        drop(stop);
        let _ = server.join();
        gaps
    }

    #[test]
    fn the_phone_buffer_plays_in_real_time_echoes_marks_after_their_audio_and_honours_clear() {
        let mut phone = PhoneBuffer::default();
        phone.media(FRAME * 2 + 10);
        phone.mark("a".into());
        phone.media(FRAME);
        phone.mark("b".into());
        assert_eq!(phone.play(FRAME), (FRAME, vec![]));
        assert_eq!(phone.play(FRAME), (FRAME, vec![]));
        // The last 10 bytes of the first piece play: its mark is due, the next is not.
        assert_eq!(phone.play(10), (10, vec!["a".to_string()]));
        assert_eq!(phone.pending_marks(), 1);
        // A clear drops the rest and echoes what is pending at once.
        assert_eq!(phone.clear(), vec!["b".to_string()]);
        assert_eq!(phone.play(FRAME), (0, vec![]));
        assert_eq!(phone.frame_gaps(), 0);
        // A piece whose audio runs out before more of it comes: one gap.
        phone.media(FRAME);
        phone.play(FRAME);
        phone.play(FRAME);
        phone.media(FRAME);
        phone.mark("c".into());
        assert_eq!(phone.frame_gaps(), 1);
        // Between pieces (after the mark) an empty buffer is a pause, not a gap.
        phone.play(FRAME);
        phone.play(FRAME);
        phone.media(FRAME);
        assert_eq!(phone.frame_gaps(), 1);
    }

    #[test]
    fn a_pause_longer_than_the_buffer_inside_a_piece_is_a_frame_gap() {
        // 60 ms of audio, then nothing for 600 ms, then the rest of the same piece.
        let gaps = gaps_heard(
            vec![
                Send::Audio(3 * FRAME),
                Send::Pause(Duration::from_millis(600)),
                Send::Audio(3 * FRAME),
                Send::Mark("p1"),
            ],
            1,
        );
        assert_eq!(gaps, 1);
    }

    #[test]
    fn a_piece_sent_ahead_and_the_pause_between_pieces_are_not_gaps() {
        let gaps = gaps_heard(
            vec![
                Send::Audio(10 * FRAME),
                Send::Audio(10 * FRAME + 37),
                Send::Mark("p1"),
                Send::Pause(Duration::from_millis(600)),
                Send::Audio(5 * FRAME),
                Send::Mark("p2"),
            ],
            2,
        );
        assert_eq!(gaps, 0);
    }
}
