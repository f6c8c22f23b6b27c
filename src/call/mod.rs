//! One phone call: the `call-N` thread and its workers.
//!
//! ```text
//!  Twilio ws ─► call-N-rx ─events─► call-N (control; the only writer to Twilio)
//!                  └─ caller audio (base64, untouched) ─► call-N-stt ─transcripts─┘
//!  call-N ─jobs─► call-N-llm (Claude + tools) ─text─► call-N ─sentences─► call-N-tts ─audio─► call-N ─► Twilio
//! ```
//!
//! Channels, and what happens when one is full:
//! - the call's event channel (1024): every worker blocks on it; the call thread never blocks
//!   on anything but it, so it drains at once;
//! - caller audio to speech-to-text (100 frames, 2 s): the reader never waits — when the STT
//!   worker is reconnecting, the newest audio is dropped and counted (the caller's words in a
//!   reconnect are lost either way);
//! - jobs to the model (4) and to text-to-speech (256 pieces): the call uses `try_send`; a full
//!   queue means a stuck worker, and the piece is dropped and logged rather than the call
//!   stalling.
//!
//! Every turn has a number and a cancel flag. Barge-in, a new utterance or the end of the call
//! sets the flag and moves to the next number: workers stop between provider events, and the
//! call drops any event of an older turn, so no audio of a cancelled turn reaches Twilio after
//! the `clear`.

pub mod audio_feed;
pub mod clips;
pub mod playback;
pub mod workers;

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use self::clips::Clips;
use self::playback::{Kind, Piece, Playback};
use self::workers::{
    AudioFeed, CallLlm, LlmJob, LlmOut, LlmSetup, Speech, SttLost, SttOut, TtsJob, TtsOut,
    TtsShutdown,
};
use crate::app::App;
use crate::calls::CallSlot;
use crate::config::Config;
use crate::cost::{self, CallUsage};
use crate::media::sentences::Sentences;
use crate::media::server::{ReadHalf, TwilioSocket, CALL_STACK};
use crate::media::twilio_messages::{self, Inbound, StreamStart};
use crate::media::ulaw::{self, FRAME_BYTES};
use crate::personas::prompts::{self, Phrase};
use crate::personas::Role;
use crate::providers::anthropic::request::CALL_CONNECTED;
use crate::providers::anthropic::{Block, Speaker, Turn};
use crate::providers::elevenlabs_stt::SttSettings;
use crate::providers::elevenlabs_tts::{TtsSettings, DEFAULT_INACTIVITY_SECS};
use crate::providers::mcp::{default_tools, McpClient, ToolCatalog};
use crate::records::event::{
    CallStatus, Direction, Event as RecordEvent, EventKind, ToolCallRecord, Transcript,
    TranscriptEntry,
};
use crate::records::ttl_from;
use crate::timestamp;

/// Something for the call thread to act on.
#[derive(Debug)]
pub enum Event {
    /// A message from Twilio (media goes straight to speech-to-text instead).
    Twilio(Inbound),
    /// The Twilio connection ended or must be ended.
    TwilioGone {
        reason: String,
        failed: bool,
    },
    Stt(SttOut),
    Llm {
        turn: u64,
        out: LlmOut,
    },
    Tts {
        turn: u64,
        seq: u32,
        out: TtsOut,
    },
}

const EVENTS_CAP: usize = 1024;
const AUDIO_CAP: usize = 100;
const LLM_JOBS_CAP: usize = 4;
const TTS_JOBS_CAP: usize = 256;
/// The call thread's clock: timers are checked at least this often.
const TICK: Duration = Duration::from_millis(20);
/// Invalid messages from Twilio in a row, or in all, after which the call is ended.
const MAX_INVALID_IN_A_ROW: u32 = 50;
const MAX_INVALID: u32 = 500;
/// Caller audio louder than this (RMS of the decoded samples) counts as speech.
const VOICE_RMS: f32 = 500.0;
/// How long the goodbye may take to play before the call is closed anyway.
const CLOSING_GRACE: Duration = Duration::from_secs(20);
/// How long the end of a call waits for its workers.
const JOIN_WAIT: Duration = Duration::from_secs(1);

/// The providers a call uses, built once from the configuration and shared by every call.
pub struct Setup {
    pub tts: Option<TtsSettings>,
    pub stt: Option<SttSettings>,
    pub llm: Option<Arc<LlmSetup>>,
    pub clips: Clips,
}

impl Setup {
    pub fn from_config(config: &Config) -> Setup {
        let el = &config.elevenlabs;
        let tts = el.api_key.clone().map(|api_key| TtsSettings {
            ws_base: el.ws_base.clone(),
            api_key,
            model_id: el.model_id.clone(),
            connect_timeout: el.connect_timeout,
            inactivity_secs: DEFAULT_INACTIVITY_SECS,
        });
        let tuning = &config.calls.tuning;
        let stt = el.api_key.clone().map(|api_key| SttSettings {
            ws_base: el.ws_base.clone(),
            api_key,
            model_id: "scribe_v2_realtime".to_string(),
            language_code: tuning.stt_language.clone(),
            vad_silence_secs: tuning.vad_silence_secs,
            connect_timeout: el.connect_timeout,
        });
        let mcp = config.mcp.url.as_ref().map(|url| {
            (
                url.to_string(),
                config.mcp.token.clone(),
                config.mcp.timeout,
            )
        });
        let tools = ToolCatalog::new(default_tools());
        if let Some((url, token, timeout)) = &mcp {
            // The catalog's refresh has a client of its own (calls have theirs).
            let client = Arc::new(McpClient::new(url, token.clone(), *timeout));
            if let Err(err) = ToolCatalog::refresh_in_background(&tools, client) {
                log::warn!(error:% = err; "mcp.tools.refresh not started");
            }
        }
        let llm = config.anthropic.api_key.clone().map(|api_key| {
            Arc::new(LlmSetup {
                anthropic: config.anthropic.clone(),
                api_key,
                max_tool_rounds: tuning.max_tool_rounds,
                tools,
                mcp,
            })
        });
        Setup {
            tts,
            stt,
            llm,
            clips: Clips::load(&tuning.audio_dir),
        }
    }
}

/// What one turn took, end of the caller's speech first (milliseconds from it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnLatency {
    pub call_sid: String,
    pub turn: u64,
    /// The caller's words.
    pub said: String,
    pub speech_end_to_commit_ms: Option<u64>,
    pub first_token_ms: Option<u64>,
    pub first_sentence_ms: Option<u64>,
    pub first_audio_ms: Option<u64>,
    pub first_frame_ms: Option<u64>,
}

/// A live turn: the model is answering the caller's utterance.
struct Live {
    id: u64,
    sentences: Sentences,
    last_delta: Instant,
    llm_done: bool,
    /// The history's length before this turn's reply went in.
    history_start: usize,
    apologized: bool,
    speech_end: Instant,
    committed: Instant,
    latency: TurnLatency,
}

struct Closing {
    status: CallStatus,
    reason: String,
    deadline: Instant,
}

/// The call thread's state.
struct Call<'a> {
    app: &'a App,
    n: u64,
    writer: WebSocket<TcpStream>,
    events_tx: Sender<Event>,
    started: Instant,
    voiced_ms: Arc<AtomicU64>,

    stream_sid: Option<String>,
    call_sid: String,
    role: Role,
    voice: String,

    turn: u64,
    cancel: Arc<AtomicBool>,
    live: Option<Live>,
    playback: Playback,
    next_seq: u32,
    /// Audio of the piece being sent that does not yet fill a frame: ((turn, seq), bytes).
    carry: ((u64, u32), Vec<u8>),
    /// Reply sentences the caller heard, with their turn.
    heard: Vec<(u64, String)>,

    history: Vec<Turn>,
    transcript: Vec<TranscriptEntry>,
    tool_calls: Vec<ToolCallRecord>,
    usage: CallUsage,
    caller_turns: u64,
    barge_ins: u64,

    llm_tx: Option<Sender<LlmJob>>,
    /// The call's own model and tool clients, shut down when the call ends.
    llm_clients: Option<CallLlm>,
    tts_tx: Option<Sender<TtsJob>>,
    /// Ends the TTS worker's provider read in flight when the call ends.
    tts_shutdown: TtsShutdown,
    threads: Vec<JoinHandle<()>>,

    quiet_since: Option<Instant>,
    reprompts: u32,
    /// The caller's last sign of life (speech, a key).
    caller_active_at: Instant,
    /// When a write to Twilio failed (the call ends shortly after, however the reader saw it).
    write_failed_at: Option<Instant>,
    closing: Option<Closing>,
    end: Option<(CallStatus, String)>,
}

/// Runs one call on the current (`call-N`) thread until it ends, then cleans up after it.
pub fn run(app: &Arc<App>, socket: TwilioSocket, slot: CallSlot, n: u64) {
    let started = Instant::now();
    let TwilioSocket {
        reader,
        writer,
        peer,
    } = socket;
    log::info!(peer:% = peer, connection = n; "call.stream.connected");
    let tcp = writer.get_ref().try_clone().ok();
    let (events_tx, events_rx) = bounded::<Event>(EVENTS_CAP);
    let (audio_feed, audio_inbox) = match workers::audio_feed(AUDIO_CAP) {
        Ok((feed, inbox)) => (Some(feed), Some(inbox)),
        Err(err) => {
            log::error!(error:% = err; "call.audio_feed_failed");
            (None, None)
        }
    };
    let voiced_ms = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();

    {
        let events = events_tx.clone();
        let voiced = voiced_ms.clone();
        match spawn(format!("call-{n}-rx"), CALL_STACK, move || {
            twilio_reader(reader, &events, audio_feed.as_ref(), &voiced, started)
        }) {
            Ok(handle) => threads.push(handle),
            Err(err) => log::error!(error:% = err; "call.spawn_failed: rx"),
        }
    }
    let stt_bytes = Arc::new(AtomicU64::new(0));
    match (&app.voice.stt, audio_inbox) {
        (Some(settings), Some(inbox)) => {
            let settings = settings.clone();
            let reconnects = app.config.calls.tuning.stt_reconnects;
            let events = events_tx.clone();
            let counter = stt_bytes.clone();
            match spawn(format!("call-{n}-stt"), PROVIDER_STACK, move || {
                workers::stt(&settings, reconnects, inbox, &events, &counter)
            }) {
                Ok(handle) => threads.push(handle),
                Err(err) => log::error!(error:% = err; "call.spawn_failed: stt"),
            }
        }
        (Some(_), None) => {
            let _ = events_tx.send(Event::Stt(SttOut::Lost(SttLost::NoResources(
                "no wake-up descriptor for the caller's audio".into(),
            ))));
        }
        (None, _) => {
            log::error!("call: ELEVENLABS_API_KEY is not set; the caller cannot be heard");
            let _ = events_tx.send(Event::Stt(SttOut::Lost(SttLost::NotConfigured)));
        }
    }

    let mut call = Call {
        app,
        n,
        writer,
        events_tx,
        started,
        voiced_ms,
        stream_sid: None,
        call_sid: format!("unknown-{n}"),
        role: app.config.calls.default_role,
        voice: String::new(),
        turn: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        live: None,
        playback: Playback::default(),
        next_seq: 0,
        carry: ((0, 0), Vec::new()),
        heard: Vec::new(),
        history: Vec::new(),
        transcript: Vec::new(),
        tool_calls: Vec::new(),
        usage: CallUsage::default(),
        caller_turns: 0,
        barge_ins: 0,
        llm_tx: None,
        llm_clients: None,
        tts_tx: None,
        tts_shutdown: TtsShutdown::new(),
        threads,
        quiet_since: None,
        reprompts: 0,
        caller_active_at: started,
        write_failed_at: None,
        closing: None,
        end: None,
    };
    // A bug must not leave a call half-alive (threads streaming, record active): a panic in
    // the call thread ends the call like any failure.
    let (status, reason) =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.run(&events_rx))) {
            Ok(end) => end,
            Err(_) => {
                log::error!(callSid = call.call_sid.as_str(); "call.panicked: ending the call");
                (CallStatus::Failed, "internal error".to_string())
            }
        };

    // Whatever ended the call, everything of it ends now.
    call.cancel.store(true, Ordering::SeqCst);
    // The record first: Twilio's own `completed` callback follows the close of the stream, and
    // the call's verdict (failed, force-reaped) must be on file before it (a final status is
    // never changed afterwards).
    call.usage
        .add_stt_secs(stt_bytes.load(Ordering::Relaxed) as f64 / 8000.0);
    call.complete(status, &reason);
    if call.stream_sid.is_some() && !reason.starts_with("twilio") {
        let _ = call.writer.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "call ended".into(),
        }));
        let _ = call.writer.flush();
    }
    if let Some(tcp) = &tcp {
        let _ = tcp.shutdown(Shutdown::Both);
    }
    call.llm_tx = None;
    call.tts_tx = None;
    // A piece being read is interrupted, not waited out.
    call.tts_shutdown.shutdown();
    if let Some(clients) = call.llm_clients.take() {
        // A model stream or a tool call in flight is interrupted, not waited out.
        clients.shutdown();
    }
    drop(events_rx);
    let deadline = Instant::now() + JOIN_WAIT;
    for handle in std::mem::take(&mut call.threads) {
        let name = handle.thread().name().unwrap_or("?").to_string();
        if join_by(handle, deadline).is_none() {
            // Its blocking call has a timeout of its own; it ends when that expires.
            log::warn!(thread = name.as_str(); "call.thread.lingering");
        }
    }
    drop(slot);
}

fn join_by(handle: JoinHandle<()>, deadline: Instant) -> Option<()> {
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
    handle.join().ok()
}

/// Stack of the provider workers: they run TLS handshakes and certificate checks (rustls),
/// whose stack use is not ours to bound, so they get a generous margin. Only the pages a
/// thread touches are committed, so the margin costs address space, not memory.
const PROVIDER_STACK: usize = 1024 * 1024;

fn spawn<F>(name: String, stack: usize, f: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    thread::Builder::new().name(name).stack_size(stack).spawn(f)
}

/// The reading half of the Twilio socket: messages to the call, caller audio to
/// speech-to-text, invalid messages counted (a flood ends the call).
fn twilio_reader(
    mut socket: WebSocket<ReadHalf>,
    events: &Sender<Event>,
    audio: Option<&AudioFeed>,
    voiced_ms: &AtomicU64,
    started: Instant,
) {
    let mut invalid = 0u32;
    let mut in_a_row = 0u32;
    let mut dropped_audio = 0u64;
    let mut decoded = Vec::with_capacity(FRAME_BYTES * 2);
    let gone = |reason: String, failed: bool| {
        let _ = events.send(Event::TwilioGone { reason, failed });
    };
    loop {
        let message = match socket.read() {
            Ok(message) => message,
            Err(err) if crate::providers::ws::is_tick(&err) => {
                gone(
                    "twilio sent nothing within MEDIA_READ_TIMEOUT_MS".into(),
                    true,
                );
                break;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                gone("twilio closed the stream".into(), false);
                break;
            }
            Err(err) => {
                gone(format!("twilio connection lost: {err}"), true);
                break;
            }
        };
        let bad = match message {
            Message::Text(text) => match twilio_messages::parse(text.as_str()) {
                Ok(Inbound::Media { payload, .. }) => {
                    decoded.clear();
                    match base64::engine::general_purpose::STANDARD
                        .decode_vec(payload.as_bytes(), &mut decoded)
                    {
                        Ok(()) => {
                            if ulaw::rms(&decoded) > VOICE_RMS {
                                voiced_ms.store(
                                    started.elapsed().as_millis() as u64 + 1,
                                    Ordering::Relaxed,
                                );
                            }
                            if audio.is_some_and(|feed| !feed.send(payload)) {
                                dropped_audio += 1;
                            }
                            None
                        }
                        Err(err) => Some(format!("media payload is not base64: {err}")),
                    }
                }
                Ok(Inbound::Stop) => {
                    let _ = events.send(Event::Twilio(Inbound::Stop));
                    break;
                }
                Ok(other) => {
                    if events.send(Event::Twilio(other)).is_err() {
                        break;
                    }
                    None
                }
                Err(bad) => Some(bad.to_string()),
            },
            Message::Close(_) => {
                gone("twilio closed the stream".into(), false);
                break;
            }
            Message::Binary(_) => Some("binary frame".to_string()),
            // Pings are answered into the sink; Twilio does not send them.
            _ => None,
        };
        match bad {
            None => in_a_row = 0,
            Some(why) => {
                invalid += 1;
                in_a_row += 1;
                if invalid <= 3 || invalid.is_power_of_two() {
                    log::warn!(reason = why.as_str(), count = invalid; "twilio.message.invalid (skipped)");
                }
                if in_a_row >= MAX_INVALID_IN_A_ROW || invalid >= MAX_INVALID {
                    gone(format!("{invalid} invalid messages from twilio"), true);
                    break;
                }
            }
        }
    }
    if dropped_audio > 0 {
        log::warn!(frames = dropped_audio; "stt.audio.dropped while speech-to-text was not reading");
    }
}

impl Call<'_> {
    fn run(&mut self, events: &Receiver<Event>) -> (CallStatus, String) {
        loop {
            if let Some(end) = self.end.take() {
                return end;
            }
            match events.recv_timeout(TICK) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return (CallStatus::Failed, "call channel closed".into())
                }
            }
            self.tick();
        }
    }

    fn ms_since(&self, at: Instant) -> u64 {
        at.duration_since(self.started).as_millis() as u64
    }

    fn finish_with(&mut self, status: CallStatus, reason: &str) {
        if self.end.is_none() {
            self.end = Some((status, reason.to_string()));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Twilio(inbound) => self.on_twilio(inbound),
            Event::TwilioGone { reason, failed } => {
                let status = if failed {
                    CallStatus::Failed
                } else {
                    CallStatus::Completed
                };
                self.finish_with(status, &reason);
            }
            Event::Stt(out) => self.on_stt(out),
            Event::Llm { turn, out } => self.on_llm(turn, out),
            Event::Tts { turn, seq, out } => self.on_tts(turn, seq, out),
        }
    }

    fn send_twilio(&mut self, text: String) {
        if self.end.is_some() || self.write_failed_at.is_some() {
            return;
        }
        if let Err(err) = self.writer.send(Message::text(text)) {
            // A caller who hangs up closes the socket right after `stop`: that `stop` may still
            // be on its way to us. The reader has a moment to say how the call ended (see
            // `tick`) before this counts as a lost connection.
            log::debug!(callSid = self.call_sid.as_str(), error:% = err; "twilio.send_failed");
            self.write_failed_at = Some(Instant::now());
        }
    }

    fn on_twilio(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Connected => log::debug!("twilio.connected"),
            Inbound::Start(start) => self.on_start(start),
            Inbound::Mark { name } => self.on_mark(&name),
            Inbound::Dtmf { digit } => {
                log::info!(callSid = self.call_sid.as_str(), digit = digit.as_str(); "call.dtmf");
                self.caller_active_at = Instant::now();
                self.note_transcript("user", &format!("[keypad: {digit}]"));
            }
            Inbound::Stop => self.finish_with(CallStatus::Completed, "caller hung up"),
            Inbound::Media { .. } => {}
        }
    }

    fn on_start(&mut self, start: StreamStart) {
        if self.stream_sid.is_some() {
            log::warn!(callSid = self.call_sid.as_str(); "twilio.start repeated; ignored");
            return;
        }
        if !start.media_format_ok {
            log::error!(callSid = start.call_sid.as_str(); "call.refused: media format is not 8 kHz mono μ-law");
            self.finish_with(CallStatus::Failed, "unsupported media format");
            return;
        }
        let config = &self.app.config;
        // The role arrived through our own TwiML, but the stream is a network input: check it.
        self.role = match start.parameter("role") {
            Some(name) => Role::parse(name).unwrap_or_else(|| {
                log::warn!(requested = name; "call.start: unknown role; using the default persona");
                config.calls.default_role
            }),
            None => config.calls.default_role,
        };
        self.voice = start
            .parameter("voiceId")
            .filter(|v| crate::personas::is_valid_voice_id(v))
            .map_or_else(
                || config.calls.voice_for(self.role).to_string(),
                str::to_string,
            );
        self.call_sid = start.call_sid.clone();
        self.stream_sid = Some(start.stream_sid.clone());
        let direction = match start.parameter("direction") {
            Some("outbound") => Direction::Outbound,
            _ => Direction::Inbound,
        };
        log::info!(
            callSid = self.call_sid.as_str(),
            role = self.role.as_str(),
            voice = self.voice.as_str();
            "call.started"
        );
        self.app
            .metrics
            .calls_started
            .fetch_add(1, Ordering::Relaxed);
        self.ensure_record(direction);
        self.start_workers();

        let greeting = prompts::greeting(self.role);
        self.history.push(Turn::user(CALL_CONNECTED));
        self.history.push(Turn::assistant(&greeting));
        let clip = self.app.voice.clips.greeting(&self.voice, self.role);
        self.say(Kind::Greeting, &greeting, clip);
    }

    fn ensure_record(&mut self, direction: Direction) {
        let records = &self.app.records;
        match crate::records::index::sid_key(&self.call_sid) {
            Some(key) if records.summary(&key).is_some() => return,
            Some(_) => {}
            None => {
                log::warn!(callSid = self.call_sid.as_str(); "call: not a Twilio call SID; no record kept");
                return;
            }
        }
        let now = timestamp::now_ms();
        let event = RecordEvent {
            role: Some(self.role.as_str().to_string()),
            direction: Some(direction),
            caller_number: Some("unknown".to_string()),
            started_at: Some(timestamp::format_ms(now)),
            status: Some(CallStatus::Active),
            ..RecordEvent::new(
                EventKind::Created,
                &self.call_sid,
                &timestamp::format_ms(now),
                ttl_from(now, self.app.config.records.ttl_days),
            )
        };
        if let Err(err) = records.append(&event) {
            log::error!(callSid = self.call_sid.as_str(), error:% = err; "records.createCallRecord.failed");
        }
    }

    fn start_workers(&mut self) {
        let n = self.n;
        if let Some(setup) = self.app.voice.llm.clone() {
            let (tx, rx) = bounded::<LlmJob>(LLM_JOBS_CAP);
            let events = self.events_tx.clone();
            let system = prompts::system_prompt(self.role);
            let clients = CallLlm::new(&setup);
            self.llm_clients = Some(clients.clone());
            match spawn(format!("call-{n}-llm"), PROVIDER_STACK, move || {
                workers::llm(&setup, &clients, &system, &rx, &events)
            }) {
                Ok(handle) => {
                    self.threads.push(handle);
                    self.llm_tx = Some(tx);
                }
                Err(err) => log::error!(error:% = err; "call.spawn_failed: llm"),
            }
        } else {
            log::error!("call: ANTHROPIC_API_KEY is not set; the persona cannot answer");
        }
        if let Some(settings) = self.app.voice.tts.clone() {
            let (tx, rx) = bounded::<TtsJob>(TTS_JOBS_CAP);
            let events = self.events_tx.clone();
            let voice = self.voice.clone();
            let shutdown = self.tts_shutdown.clone();
            match spawn(format!("call-{n}-tts"), PROVIDER_STACK, move || {
                workers::tts(&settings, &voice, &rx, &events, &shutdown)
            }) {
                Ok(handle) => {
                    self.threads.push(handle);
                    self.tts_tx = Some(tx);
                }
                Err(err) => log::error!(error:% = err; "call.spawn_failed: tts"),
            }
        } else {
            log::error!("call: ELEVENLABS_API_KEY is not set; the persona cannot speak");
        }
    }

    /// Queues a piece of speech in the current turn: pre-rendered when a clip is given.
    fn say(&mut self, kind: Kind, text: &str, clip: Option<Arc<Vec<u8>>>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let speech = match clip {
            Some(audio) => {
                self.usage.add_cached_chars(text.chars().count() as u64);
                Speech::Clip(audio)
            }
            None => Speech::Text(text.to_string()),
        };
        let Some(tts) = &self.tts_tx else {
            return;
        };
        let job = TtsJob {
            turn: self.turn,
            seq,
            speech,
            cancel: self.cancel.clone(),
        };
        match tts.try_send(job) {
            Ok(()) => self.playback.begin(Piece {
                turn: self.turn,
                seq,
                kind,
                text: text.to_string(),
                marked: false,
            }),
            Err(err) => {
                log::error!(callSid = self.call_sid.as_str(), error:% = err; "tts.queue_full: speech dropped")
            }
        }
    }

    fn say_phrase(&mut self, phrase: Phrase) {
        let clip = self.app.voice.clips.phrase(&self.voice, phrase);
        self.say(Kind::Phrase, phrase.text(), clip);
    }

    fn note_transcript(&mut self, role: &str, text: &str) {
        self.transcript.push(TranscriptEntry {
            role: role.to_string(),
            text: text.to_string(),
            timestamp: timestamp::format_ms(timestamp::now_ms()),
        });
    }

    fn on_mark(&mut self, name: &str) {
        if let Some(piece) = self.playback.echoed(name) {
            self.note_transcript("assistant", &piece.text);
            if piece.kind == Kind::Reply {
                self.heard.push((piece.turn, piece.text));
            }
        }
        self.maybe_finish_turn();
    }

    /// A turn is over when its reply is complete and has finished playing.
    fn maybe_finish_turn(&mut self) {
        if self.playback.is_speaking() {
            return;
        }
        match &self.live {
            Some(live) if !live.llm_done => {}
            Some(_) => {
                self.live = None;
                self.quiet_since = Some(Instant::now());
            }
            None => {
                if self.quiet_since.is_none() {
                    self.quiet_since = Some(Instant::now());
                }
            }
        }
    }

    fn on_stt(&mut self, out: SttOut) {
        match out {
            SttOut::Partial(text) => {
                // Re-armed, not stopped: a partial that never becomes an utterance (a cough)
                // must not silence the reprompt for good.
                self.quiet_since = Some(Instant::now());
                self.caller_active_at = Instant::now();
                if self.closing.is_some() {
                    return;
                }
                let tuning = &self.app.config.calls.tuning;
                if self.playback.is_speaking()
                    && playback::is_barge_in(
                        &text,
                        tuning.barge_in_min_chars,
                        self.playback.current_text(),
                    )
                {
                    log::info!(callSid = self.call_sid.as_str(), partialChars = text.chars().count(); "call.barge_in");
                    self.barge_ins += 1;
                    self.interrupt();
                }
            }
            SttOut::Committed(text) => {
                self.quiet_since = None;
                self.caller_active_at = Instant::now();
                self.reprompts = 0;
                self.note_transcript("user", &text);
                if self.closing.is_some() || self.stream_sid.is_none() {
                    return;
                }
                if self.playback.is_speaking() || self.live.is_some() {
                    // The caller spoke again before the answer finished: answer both together.
                    if self.playback.is_speaking() {
                        self.barge_ins += 1;
                    }
                    self.interrupt();
                }
                self.start_turn(&text);
            }
            SttOut::Lost(reason) => {
                log::error!(callSid = self.call_sid.as_str(), reason:% = reason; "stt.lost");
                if self.stream_sid.is_none() {
                    self.finish_with(CallStatus::Failed, "speech-to-text unavailable");
                } else {
                    self.close_with(
                        Phrase::GoodbyeTrouble,
                        CallStatus::Failed,
                        "speech-to-text lost",
                    );
                }
            }
        }
    }

    /// Cuts off whatever is playing and the live turn: `clear` to Twilio, workers cancelled,
    /// and the history keeps only what the caller heard.
    fn interrupt(&mut self) {
        if self.playback.is_speaking() {
            if let Some(sid) = self.stream_sid.clone() {
                self.send_twilio(twilio_messages::clear(&sid));
            }
            self.playback.clear();
        }
        self.carry.1.clear();
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(live) = self.live.take() {
            let heard: Vec<String> = self
                .heard
                .iter()
                .filter(|(turn, _)| *turn == live.id)
                .map(|(_, text)| text.clone())
                .collect();
            if live.llm_done {
                self.history.truncate(live.history_start);
            }
            if !heard.is_empty() {
                // What the caller heard, and that they cut in: the model should not repeat it,
                // nor assume the rest was said.
                let text = format!("{} [interrupted by the caller]", heard.join(" "));
                self.history.push(Turn::assistant(&text));
            }
        }
        self.next_turn();
        self.quiet_since = Some(Instant::now());
    }

    /// Moves to a new turn number: a fresh cancel flag, pieces numbered from 0.
    fn next_turn(&mut self) {
        // Whatever a worker still does for the old turn stops.
        self.cancel.store(true, Ordering::SeqCst);
        self.turn += 1;
        self.cancel = Arc::new(AtomicBool::new(false));
        self.next_seq = 0;
        self.heard.clear();
    }

    fn start_turn(&mut self, text: &str) {
        self.next_turn();
        self.caller_turns += 1;
        // Only a window is ever sent; keep twice that (the request builder cuts cleanly).
        let keep = self.app.config.anthropic.max_history_messages * 2;
        if self.history.len() > keep + 16 {
            let excess = self.history.len() - keep;
            self.history.drain(..excess);
        }
        self.history.push(Turn::user(text));
        let now = Instant::now();
        let voiced = self.voiced_ms.load(Ordering::Relaxed);
        let speech_end = if voiced > 0 {
            self.started + Duration::from_millis(voiced - 1)
        } else {
            now
        };
        self.live = Some(Live {
            id: self.turn,
            sentences: Sentences::new(),
            last_delta: now,
            llm_done: false,
            history_start: self.history.len(),
            apologized: false,
            speech_end,
            committed: now,
            latency: TurnLatency {
                call_sid: self.call_sid.clone(),
                turn: self.caller_turns,
                said: text.to_string(),
                speech_end_to_commit_ms: Some(
                    now.saturating_duration_since(speech_end).as_millis() as u64,
                ),
                ..TurnLatency::default()
            },
        });
        if let Some(tts) = &self.tts_tx {
            let _ = tts.try_send(TtsJob {
                turn: self.turn,
                seq: u32::MAX,
                speech: Speech::Prewarm,
                cancel: self.cancel.clone(),
            });
        }
        let job = LlmJob {
            turn: self.turn,
            history: self.history.clone(),
            cancel: self.cancel.clone(),
        };
        let sent = match &self.llm_tx {
            Some(llm) => llm.try_send(job).map_err(|e| e.to_string()),
            None => Err("the model is not configured".to_string()),
        };
        if let Err(err) = sent {
            log::error!(callSid = self.call_sid.as_str(), error = err.as_str(); "llm.unavailable");
            self.say_phrase(Phrase::Apology);
            if let Some(live) = &mut self.live {
                live.llm_done = true;
                live.apologized = true;
            }
        }
    }

    fn speak_sentences(&mut self, sentences: Vec<String>) {
        for sentence in sentences {
            if let Some(live) = &mut self.live {
                if live.latency.first_sentence_ms.is_none() {
                    live.latency.first_sentence_ms =
                        Some(live.speech_end.elapsed().as_millis() as u64);
                }
            }
            self.say(Kind::Reply, &sentence, None);
        }
    }

    fn on_llm(&mut self, turn: u64, out: LlmOut) {
        if let LlmOut::Done { usage, .. } = &out {
            self.usage.add_claude(
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens,
            );
        }
        if let LlmOut::ToolFinished {
            name,
            ok,
            duration_ms,
        } = &out
        {
            self.tool_calls.push(ToolCallRecord {
                tool_name: name.clone(),
                duration_ms: *duration_ms,
                timestamp: timestamp::format_ms(timestamp::now_ms()),
                success: *ok,
            });
        }
        let Some(live) = self.live.as_mut().filter(|l| l.id == turn && !l.llm_done) else {
            return;
        };
        match out {
            LlmOut::Delta(text) => {
                if live.latency.first_token_ms.is_none() {
                    live.latency.first_token_ms =
                        Some(live.speech_end.elapsed().as_millis() as u64);
                }
                live.last_delta = Instant::now();
                let done = live.sentences.push(&text);
                self.speak_sentences(done);
            }
            LlmOut::ToolsStarted(names) => {
                log::info!(callSid = self.call_sid.as_str(), tools:? = names; "call.tools");
                let rest = live.sentences.finish();
                self.speak_sentences(rest.into_iter().collect());
                self.say_phrase(Phrase::Hold);
            }
            LlmOut::ToolFinished { .. } => {}
            LlmOut::Done {
                new_turns, error, ..
            } => {
                let rest = live.sentences.finish();
                live.llm_done = true;
                live.history_start = self.history.len();
                let apologize = error.is_some() && !live.apologized;
                if apologize {
                    live.apologized = true;
                }
                self.history.extend(new_turns);
                self.speak_sentences(rest.into_iter().collect());
                if let Some(err) = error {
                    log::error!(callSid = self.call_sid.as_str(), error = err.as_str(); "llm.failed");
                    // Never an orphan tool_use: a failed round's history must end cleanly.
                    if matches!(self.history.last(), Some(t) if t.speaker == Speaker::User && t.blocks.iter().any(|b| matches!(b, Block::ToolResult { .. })))
                    {
                        self.history
                            .push(Turn::assistant("[the reply failed after that step]"));
                    }
                    if apologize {
                        self.say_phrase(Phrase::Apology);
                    }
                }
                self.maybe_finish_turn();
            }
        }
    }

    fn on_tts(&mut self, turn: u64, seq: u32, out: TtsOut) {
        if let TtsOut::Done { chars } = &out {
            self.usage.add_tts_chars(*chars);
        }
        if turn != self.turn || self.end.is_some() {
            return;
        }
        let Some(sid) = self.stream_sid.clone() else {
            return;
        };
        match out {
            TtsOut::Audio(audio) => {
                // A piece that is no longer playing (cut off by a `clear`) is not sent.
                if self.playback.piece_mut(turn, seq).is_none() {
                    return;
                }
                if let Some(live) = self.live.as_mut().filter(|l| l.id == turn) {
                    if live.latency.first_audio_ms.is_none() {
                        live.latency.first_audio_ms =
                            Some(live.speech_end.elapsed().as_millis() as u64);
                    }
                }
                // Whole 20 ms frames: what does not fill one waits for the next audio of the
                // piece (or is padded with silence at its end).
                if self.carry.0 != (turn, seq) {
                    self.carry = ((turn, seq), Vec::new());
                }
                let mut audio = audio;
                if !self.carry.1.is_empty() {
                    let mut joined = std::mem::take(&mut self.carry.1);
                    joined.extend_from_slice(&audio);
                    audio = joined;
                }
                let whole = audio.len() / FRAME_BYTES * FRAME_BYTES;
                self.carry.1 = audio.split_off(whole);
                self.send_frames(&sid, &audio);
                if whole > 0 {
                    self.note_first_frame(turn);
                }
            }
            TtsOut::Done { .. } => {
                if self.carry.0 == (turn, seq) && !self.carry.1.is_empty() {
                    let mut last = std::mem::take(&mut self.carry.1);
                    last.resize(FRAME_BYTES, ulaw::ULAW_SILENCE);
                    self.send_frames(&sid, &last);
                    self.note_first_frame(turn);
                }
                if let Some(name) = self.playback.end(turn, seq) {
                    self.send_twilio(twilio_messages::mark(&sid, &name));
                }
            }
            TtsOut::Failed(err) => {
                log::error!(callSid = self.call_sid.as_str(), error:% = err; "tts.piece_failed");
                // Its mark is sent with no audio before it: it plays as nothing, and the
                // apology (pre-rendered when it can be) follows — unless what failed was a
                // fixed phrase itself (the apology included): no apology loop.
                let was_phrase = self
                    .playback
                    .piece_mut(turn, seq)
                    .is_some_and(|p| p.kind == Kind::Phrase);
                if let Some(name) = self.playback.end(turn, seq) {
                    self.send_twilio(twilio_messages::mark(&sid, &name));
                }
                let first_failure = !was_phrase
                    && self
                        .live
                        .as_mut()
                        .filter(|l| l.id == turn)
                        .is_none_or(|l| !std::mem::replace(&mut l.apologized, true));
                if first_failure {
                    self.say_phrase(Phrase::Apology);
                }
            }
        }
    }

    fn send_frames(&mut self, sid: &str, audio: &[u8]) {
        for frame in audio.chunks(FRAME_BYTES) {
            let payload = base64::engine::general_purpose::STANDARD.encode(frame);
            self.send_twilio(twilio_messages::media(sid, &payload));
        }
    }

    fn note_first_frame(&mut self, turn: u64) {
        let Some(live) = self.live.as_mut().filter(|l| l.id == turn) else {
            return;
        };
        if live.latency.first_frame_ms.is_some() {
            return;
        }
        live.latency.first_frame_ms = Some(live.speech_end.elapsed().as_millis() as u64);
        let l = live.latency.clone();
        log::info!(
            callSid = self.call_sid.as_str(),
            turn = l.turn,
            speechEndToCommitMs = l.speech_end_to_commit_ms.unwrap_or(0),
            firstTokenMs = l.first_token_ms.unwrap_or(0),
            firstSentenceMs = l.first_sentence_ms.unwrap_or(0),
            firstAudioMs = l.first_audio_ms.unwrap_or(0),
            firstFrameMs = l.first_frame_ms.unwrap_or(0);
            "turn.latency"
        );
        self.app.metrics.record_turn(&l);
    }

    fn close_with(&mut self, phrase: Phrase, status: CallStatus, reason: &str) {
        if self.closing.is_some() {
            return;
        }
        log::info!(callSid = self.call_sid.as_str(), reason = reason; "call.closing");
        if self.live.is_some() || self.playback.is_speaking() {
            self.interrupt();
        }
        self.say_phrase(phrase);
        self.closing = Some(Closing {
            status,
            reason: reason.to_string(),
            deadline: Instant::now() + CLOSING_GRACE,
        });
    }

    fn tick(&mut self) {
        if self.end.is_some() {
            return;
        }
        let now = Instant::now();
        if self
            .write_failed_at
            .is_some_and(|at| now.duration_since(at) > Duration::from_millis(500))
        {
            log::warn!(callSid = self.call_sid.as_str(); "twilio.send_failed: connection lost");
            self.finish_with(CallStatus::Failed, "twilio connection lost while sending");
            return;
        }
        if self.app.calls.must_end() {
            self.finish_with(CallStatus::Failed, "server shutting down");
            return;
        }
        if now.duration_since(self.caller_active_at) >= self.app.config.calls.tuning.idle_reap {
            log::warn!(callSid = self.call_sid.as_str(); "call.reaped: no sign of the caller");
            self.finish_with(CallStatus::ForceReaped, "idle: no sign of the caller");
            return;
        }
        if let Some(closing) = &self.closing {
            if !self.playback.is_speaking() || now >= closing.deadline {
                let (status, reason) = (closing.status, closing.reason.clone());
                self.finish_with(status, &reason);
            }
            return;
        }
        if self.stream_sid.is_none() {
            // Twilio sends `start` at once; a stream without one is not a call.
            if now.duration_since(self.started) > Duration::from_secs(10) {
                self.finish_with(CallStatus::Failed, "twilio sent no start message");
            }
            return;
        }
        let tuning = &self.app.config.calls.tuning;
        if now.duration_since(self.started) >= tuning.max_duration {
            self.close_with(
                Phrase::GoodbyeTimeUp,
                CallStatus::Completed,
                "maximum call length reached",
            );
            return;
        }
        // A reply that never ends (a worker that died) must not leave the call stuck.
        let config = &self.app.config;
        let rounds = tuning.max_tool_rounds + 1;
        let reply_deadline = config.anthropic.stream_timeout * rounds
            + config.mcp.timeout * tuning.max_tool_rounds
            + Duration::from_secs(5);
        if self
            .live
            .as_ref()
            .is_some_and(|l| !l.llm_done && l.committed.elapsed() > reply_deadline)
        {
            log::error!(callSid = self.call_sid.as_str(); "llm.no_answer: the reply never ended; the turn is closed");
            // Whatever the worker still sends for this turn is ignored (see `on_llm`).
            let apologized = self.live.as_ref().is_some_and(|l| l.apologized);
            if let Some(live) = &mut self.live {
                live.llm_done = true;
                live.apologized = true;
            }
            if !apologized {
                self.say_phrase(Phrase::Apology);
            }
            self.maybe_finish_turn();
        }
        let idle_flush = tuning.sentence_idle_flush;
        if let Some(live) = &mut self.live {
            if !live.llm_done
                && live.sentences.has_pending()
                && live.last_delta.elapsed() >= idle_flush
            {
                let rest = live.sentences.finish();
                self.speak_sentences(rest.into_iter().collect());
            }
        }
        let reprompt_after = tuning.reprompt_after;
        let max_reprompts = tuning.max_reprompts;
        let voiced = self.voiced_ms.load(Ordering::Relaxed);
        let caller_recently_loud =
            voiced > 0 && self.ms_since(now).saturating_sub(voiced - 1) < 1000;
        if let Some(since) = self.quiet_since {
            if caller_recently_loud {
                self.quiet_since = Some(now);
            } else if self.live.is_none()
                && !self.playback.is_speaking()
                && now.duration_since(since) >= reprompt_after
            {
                if self.reprompts < max_reprompts {
                    self.reprompts += 1;
                    self.quiet_since = None;
                    self.say_phrase(Phrase::Reprompt);
                } else {
                    self.close_with(
                        Phrase::GoodbyeSilence,
                        CallStatus::Completed,
                        "caller silent",
                    );
                }
            }
        }
    }

    /// The record's completion event and the `cost.call.summary` line.
    fn complete(&mut self, status: CallStatus, reason: &str) {
        let duration_secs = self.started.elapsed().as_secs();
        let cost = self.usage.summary(&self.app.config.prices);
        log::info!(
            callSid = self.call_sid.as_str(),
            status = status.as_str(),
            reason = reason,
            durationSecs = duration_secs;
            "call.ended"
        );
        cost::log_call_summary(
            &self.call_sid,
            duration_secs,
            self.caller_turns,
            self.barge_ins,
            self.tool_calls.len() as u64,
            &cost,
        );
        if self.stream_sid.is_none() {
            return;
        }
        let metrics = &self.app.metrics;
        match status {
            CallStatus::Completed => metrics.calls_completed.fetch_add(1, Ordering::Relaxed),
            CallStatus::ForceReaped => metrics.calls_reaped.fetch_add(1, Ordering::Relaxed),
            _ => metrics.calls_failed.fetch_add(1, Ordering::Relaxed),
        };
        metrics
            .barge_ins
            .fetch_add(self.barge_ins, Ordering::Relaxed);
        metrics
            .tool_calls
            .fetch_add(self.tool_calls.len() as u64, Ordering::Relaxed);
        let now = timestamp::now_ms();
        let event = RecordEvent {
            status: Some(status),
            ended_at: Some(timestamp::format_ms(now)),
            duration_secs: Some(duration_secs),
            turn_count: Some(self.caller_turns),
            transcript: Some(Transcript::from_entries(&self.transcript)),
            tool_calls: Some(std::mem::take(&mut self.tool_calls)),
            cost_summary: Some(cost),
            barge_ins: Some(self.barge_ins),
            ..RecordEvent::new(
                EventKind::Completed,
                &self.call_sid,
                &timestamp::format_ms(now),
                ttl_from(now, self.app.config.records.ttl_days),
            )
        };
        if let Err(err) = self.app.records.append(&event) {
            log::error!(callSid = self.call_sid.as_str(), error:% = err; "records.completeCall.failed");
        }
    }
}
