//! A call's worker threads: speech-to-text, the model (with its tool loop), text-to-speech.
//! Each owns its provider socket and reports to the call thread through the call's event
//! channel. Work for a turn carries that turn's cancel flag, checked between provider events: a
//! cancelled turn's work stops, and whatever it still produces is dropped by the call thread by
//! turn number anyway.
//!
//! No worker wakes on a tick; each waits for an event or a real deadline, and ends by an event:
//! - speech-to-text waits with `poll(2)` on its provider socket and the caller's
//!   [`AudioFeed`]'s wake-up descriptor; it ends when the feed is dropped (the Twilio reader
//!   ends with the call) or the event channel is gone;
//! - text-to-speech waits on its job channel (`recv`, or `recv_deadline` while a spare stream
//!   ages) and reads a piece's audio with a read timeout set from the piece's deadline; it
//!   ends when the job channel closes, and [`TtsShutdown::shutdown`] ends a read in flight;
//! - the model worker ends when its job channel closes ([`CallLlm::shutdown`] interrupts a
//!   stream in flight).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::json;

pub use super::audio_feed::{audio_feed, AudioFeed, AudioInbox};
use super::Event;
use crate::poll::{self, Watch};
use crate::providers::anthropic::client::AnthropicClient;
use crate::providers::anthropic::request::{self, RequestParts};
use crate::providers::anthropic::stream::{StreamItem, Usage};
use crate::providers::anthropic::{Block, Speaker, Turn};
use crate::providers::elevenlabs_stt::{SttError, SttEvent, SttSettings, SttStream};
use crate::providers::elevenlabs_tts::{TtsError, TtsEvent, TtsSettings, TtsStream};
use crate::providers::mcp::{McpClient, ToolCatalog};
use crate::providers::ws;

/// What speech-to-text tells the call.
#[derive(Debug, Clone, PartialEq)]
pub enum SttOut {
    Partial(String),
    Committed(String),
    /// The caller cannot be heard for the rest of the call.
    Lost(SttLost),
}

/// Why speech-to-text is gone for good.
#[derive(Debug, Clone, PartialEq)]
pub enum SttLost {
    /// No ElevenLabs key: there is no speech-to-text on this server.
    NotConfigured,
    /// The service failed, and could not be reached again within the allowed reconnects.
    Provider(SttError),
    /// The process could not set the worker up (no descriptors or threads left).
    NoResources(String),
}

impl std::fmt::Display for SttLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SttLost::NotConfigured => {
                write!(f, "speech-to-text is not configured (ELEVENLABS_API_KEY)")
            }
            SttLost::Provider(err) => write!(f, "{err}"),
            SttLost::NoResources(what) => {
                write!(f, "speech-to-text could not be started: {what}")
            }
        }
    }
}

/// What the model worker tells the call, for one turn.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmOut {
    /// The first words of the turn are on their way (for latency).
    Delta(String),
    /// The model asked for tools; the call plays the hold phrase.
    ToolsStarted(Vec<String>),
    /// One tool call ended.
    ToolFinished {
        name: String,
        ok: bool,
        duration_ms: u64,
    },
    /// The turn's response is complete (or failed, or was cancelled).
    Done {
        /// The turns to append to the conversation: assistant turns and tool results.
        new_turns: Vec<Turn>,
        usage: Usage,
        /// Set when the model failed; what was streamed before stays valid.
        error: Option<String>,
    },
}

/// What text-to-speech tells the call, for one piece of speech.
#[derive(Debug, Clone, PartialEq)]
pub enum TtsOut {
    /// μ-law 8 kHz audio, in order.
    Audio(Vec<u8>),
    /// All of the piece's audio has been delivered; `chars` were billed.
    Done { chars: u64 },
    /// The piece could not be spoken (after one retry).
    Failed(TtsError),
}

/// What to speak.
#[derive(Debug, Clone)]
pub enum Speech {
    Text(String),
    /// Pre-rendered μ-law audio, played in order with the live speech around it.
    Clip(Arc<Vec<u8>>),
    /// Open a stream now so the next sentence does not wait for the connection.
    Prewarm,
}

#[derive(Debug, Clone)]
pub struct TtsJob {
    pub turn: u64,
    pub seq: u32,
    pub speech: Speech,
    pub cancel: Arc<AtomicBool>,
}

/// One response to produce.
pub struct LlmJob {
    pub turn: u64,
    pub history: Vec<Turn>,
    pub cancel: Arc<AtomicBool>,
}

/// Speech-to-text for one call: forwards the caller's audio (base64 as Twilio sent it) the
/// moment it arrives and reports transcripts the moment they arrive; reconnects up to
/// `reconnects` times. `sent_bytes` counts the audio forwarded (what ElevenLabs bills),
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
    loop {
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
        let ended = stt_session(&mut stream, &audio, out, sent_bytes);
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
        log::warn!(error:% = failure, attempt = failures; "stt.reconnect");
    }
}

/// One session: waits on the provider socket and the audio feed together, forwarding audio
/// and transcripts as they come. `Ok` when the call is over (feed closed, or nobody listens),
/// `Err` when the session failed.
fn stt_session(
    stream: &mut SttStream,
    audio: &AudioInbox,
    out: &Sender<Event>,
    sent_bytes: &AtomicU64,
) -> Result<(), SttError> {
    // Something may already be buffered from the handshake (session_started).
    let mut readable = true;
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
        }
        let fd = stream
            .fd()
            .ok_or_else(|| SttError::Protocol("the socket has no descriptor".into()))?;
        let mut watches = [
            Watch::read_write(fd, stream.wants_write()),
            Watch::read(audio.fd()),
        ];
        // No deadline: the next event is audio, a transcript, or the end of the call.
        poll::wait(&mut watches, None)
            .map_err(|e| SttError::Closed(format!("waiting for the socket: {e}")))?;
        let (writable, fed) = (watches[0].writable(), watches[1].readable());
        readable = watches[0].readable();
        if fed {
            for payload in audio.take() {
                stream.send_audio(&payload)?;
                // Base64 without decoding: every 4 characters are 3 bytes, minus the padding.
                let padding = payload.bytes().rev().take_while(|b| *b == b'=').count();
                let bytes = (payload.len() / 4 * 3).saturating_sub(padding);
                sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            if !audio.is_open() {
                return Ok(());
            }
        }
        if writable && stream.wants_write() {
            stream.flush()?;
        }
    }
}

/// A stream opened ahead of need is dropped after this long (the service closes idle ones at
/// 20 s).
const SPARE_MAX_AGE: Duration = Duration::from_secs(15);
/// The longest one piece of speech may take to arrive in full.
const PIECE_DEADLINE: Duration = Duration::from_secs(20);

enum PieceError {
    Cancelled,
    Failed(TtsError),
}

/// Ends the text-to-speech worker's provider read in flight from another thread: the call
/// calls [`TtsShutdown::shutdown`] at its end (after setting the turn's cancel flag and
/// dropping its job sender), so a worker reading a piece does not outlive the call by the
/// piece's deadline. From then on the worker opens no stream it would wait on.
#[derive(Clone, Debug, Default)]
pub struct TtsShutdown(Arc<Mutex<ShutdownState>>);

#[derive(Debug, Default)]
struct ShutdownState {
    ended: bool,
    /// The socket of the piece being read.
    reading: Option<ws::Interrupt>,
}

impl TtsShutdown {
    pub fn new() -> TtsShutdown {
        TtsShutdown::default()
    }

    /// Interrupts the read in flight, if any, and every later one.
    pub fn shutdown(&self) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.ended = true;
        if let Some(socket) = state.reading.take() {
            socket.interrupt();
        }
    }

    pub fn is_shut_down(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).ended
    }

    /// Registers the stream about to be read; false when the call has already ended.
    fn reading(&self, stream: &TtsStream) -> bool {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if state.ended {
            return false;
        }
        // Without a handle the read still ends by the piece's deadline.
        state.reading = stream.interrupt_handle().ok();
        true
    }

    fn done_reading(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).reading = None;
    }
}

/// Text-to-speech for one call: one piece of speech at a time, in order, one stream per piece
/// (so each piece's end is known exactly and no stream is reused after its end of input).
///
/// Waits for jobs with no timeout, or until the spare stream (opened by [`Speech::Prewarm`])
/// is too old to use; ends when `jobs` closes or `shutdown` is called.
pub fn tts(
    settings: &TtsSettings,
    voice: &str,
    jobs: &Receiver<TtsJob>,
    out: &Sender<Event>,
    shutdown: &TtsShutdown,
) {
    let mut spare: Option<(TtsStream, Instant)> = None;
    loop {
        let next = match &spare {
            None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some((_, opened)) => jobs.recv_deadline(*opened + SPARE_MAX_AGE),
        };
        let job = match next {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                if let Some((stream, _)) = spare.take() {
                    stream.abandon();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if shutdown.is_shut_down() {
            break;
        }
        if job.cancel.load(Ordering::SeqCst) {
            continue;
        }
        let send = |out_: TtsOut| {
            out.send(Event::Tts {
                turn: job.turn,
                seq: job.seq,
                out: out_,
            })
        };
        match &job.speech {
            Speech::Prewarm => {
                if spare.is_none() {
                    match TtsStream::open(settings, voice) {
                        Ok(stream) => spare = Some((stream, Instant::now())),
                        Err(err) => log::warn!(error:% = err; "tts.prewarm_failed"),
                    }
                }
            }
            Speech::Clip(audio) => {
                // 400 ms per message: the call cuts it into 20 ms frames.
                for chunk in audio.chunks(3200) {
                    if job.cancel.load(Ordering::SeqCst) {
                        break;
                    }
                    if send(TtsOut::Audio(chunk.to_vec())).is_err() {
                        return;
                    }
                }
                let _ = send(TtsOut::Done { chars: 0 });
            }
            Speech::Text(text) => {
                let mut sent_audio = false;
                let mut billed = 0;
                for attempt in 1..=2 {
                    let stream = match spare.take() {
                        Some((stream, at)) if at.elapsed() < SPARE_MAX_AGE => Ok(stream),
                        Some((stream, _)) => {
                            stream.abandon();
                            TtsStream::open(settings, voice)
                        }
                        None => TtsStream::open(settings, voice),
                    };
                    let result = match stream {
                        Ok(stream) => speak_piece(
                            stream,
                            text,
                            &job,
                            out,
                            shutdown,
                            &mut sent_audio,
                            &mut billed,
                        ),
                        Err(err) => Err(PieceError::Failed(err)),
                    };
                    match result {
                        Ok(()) => {
                            let _ = send(TtsOut::Done { chars: billed });
                            break;
                        }
                        Err(PieceError::Cancelled) => {
                            // Billed all the same: report it with no audio to play.
                            let _ = send(TtsOut::Done { chars: billed });
                            break;
                        }
                        Err(PieceError::Failed(err)) if attempt == 1 && !sent_audio => {
                            log::warn!(error:% = err; "tts.retry");
                        }
                        Err(PieceError::Failed(err)) => {
                            log::error!(error:% = err, chars = billed; "tts.failed");
                            let _ = send(TtsOut::Failed(err));
                            break;
                        }
                    }
                }
            }
        }
    }
    if let Some((stream, _)) = spare {
        stream.abandon();
    }
}

/// Speaks one piece on `stream`, reading until its end, a cancel, or the piece's deadline.
fn speak_piece(
    mut stream: TtsStream,
    text: &str,
    job: &TtsJob,
    out: &Sender<Event>,
    shutdown: &TtsShutdown,
    sent_audio: &mut bool,
    billed: &mut u64,
) -> Result<(), PieceError> {
    let deadline = Instant::now() + PIECE_DEADLINE;
    let result = stream.send_sentence(text).and_then(|()| stream.end_input());
    *billed += stream.chars_sent();
    if let Err(err) = result {
        stream.abandon();
        return Err(PieceError::Failed(err));
    }
    if !shutdown.reading(&stream) {
        stream.abandon();
        return Err(PieceError::Cancelled);
    }
    let read = read_piece(&mut stream, job, out, deadline, sent_audio);
    shutdown.done_reading();
    let ended = job.cancel.load(Ordering::SeqCst) || shutdown.is_shut_down();
    match read {
        Ok(()) => Ok(()),
        // A read interrupted by the end of the call is a cancellation, not a failure.
        Err(PieceError::Failed(_)) if ended => {
            stream.abandon();
            Err(PieceError::Cancelled)
        }
        Err(err) => {
            stream.abandon();
            Err(err)
        }
    }
}

/// Forwards the piece's audio until `isFinal`; checks the cancel flag between provider
/// events. Each read waits for the next message or the deadline, whichever comes first.
fn read_piece(
    stream: &mut TtsStream,
    job: &TtsJob,
    out: &Sender<Event>,
    deadline: Instant,
    sent_audio: &mut bool,
) -> Result<(), PieceError> {
    loop {
        if job.cancel.load(Ordering::SeqCst) {
            return Err(PieceError::Cancelled);
        }
        if Instant::now() >= deadline {
            return Err(PieceError::Failed(TtsError::Closed(format!(
                "no end of audio within {} s",
                PIECE_DEADLINE.as_secs()
            ))));
        }
        match stream.next_event(deadline).map_err(PieceError::Failed)? {
            Some(TtsEvent::Audio(audio)) => {
                *sent_audio = true;
                let event = Event::Tts {
                    turn: job.turn,
                    seq: job.seq,
                    out: TtsOut::Audio(audio),
                };
                if out.send(event).is_err() {
                    return Err(PieceError::Cancelled);
                }
            }
            Some(TtsEvent::Final) => return Ok(()),
            None => {}
        }
    }
}

/// What the model worker needs, shared by every call.
pub struct LlmSetup {
    pub anthropic: crate::config::AnthropicConfig,
    pub api_key: crate::config::Secret,
    pub max_tool_rounds: u32,
    pub tools: Arc<ToolCatalog>,
    /// `COTRACKPRO_MCP_URL`, its token and the tool timeout.
    pub mcp: Option<(String, Option<crate::config::Secret>, Duration)>,
}

/// One call's own clients: their connections end with the call ([`CallLlm::shutdown`]
/// interrupts a read in flight, so the worker never outlives the call by a timeout).
#[derive(Clone)]
pub struct CallLlm {
    pub client: AnthropicClient,
    pub mcp: Option<Arc<McpClient>>,
}

impl CallLlm {
    pub fn new(setup: &LlmSetup) -> CallLlm {
        CallLlm {
            client: AnthropicClient::new(&setup.anthropic, setup.api_key.clone()),
            mcp: setup.mcp.as_ref().map(|(url, token, timeout)| {
                Arc::new(McpClient::new(url, token.clone(), *timeout))
            }),
        }
    }

    pub fn shutdown(&self) {
        self.client.shutdown();
        if let Some(mcp) = &self.mcp {
            mcp.shutdown();
        }
    }
}

/// The model for one call: one response per job, with up to `max_tool_rounds` rounds of tool
/// calls; text is streamed to the call as it arrives.
pub fn llm(
    setup: &LlmSetup,
    clients: &CallLlm,
    system: &str,
    jobs: &Receiver<LlmJob>,
    out: &Sender<Event>,
) {
    for job in jobs.iter() {
        let send = |o: LlmOut| {
            out.send(Event::Llm {
                turn: job.turn,
                out: o,
            })
        };
        let mut conversation = job.history;
        let mut new_turns = Vec::new();
        let mut usage = Usage::default();
        let mut error = None;
        let mut round = 0;
        loop {
            if job.cancel.load(Ordering::SeqCst) {
                break;
            }
            let tools = setup.tools.current();
            let mut body = request::build(&RequestParts {
                model: &setup.anthropic.model,
                max_tokens: setup.anthropic.max_tokens,
                system,
                tools: &tools,
                history: &conversation,
                max_history_messages: setup.anthropic.max_history_messages,
            });
            if round >= setup.max_tool_rounds && !tools.is_empty() {
                // Tools stay defined (the history may hold tool blocks), but no more calls.
                body["tool_choice"] = json!({"type": "none"});
            }
            let mut gone = false;
            let result = clients.client.stream(&body, &job.cancel, |item| {
                if let StreamItem::Text(text) = item {
                    if send(LlmOut::Delta(text.clone())).is_err() {
                        gone = true;
                        job.cancel.store(true, Ordering::SeqCst);
                    }
                }
            });
            if gone {
                return;
            }
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(err) => {
                    error = Some(err.to_string());
                    break;
                }
            };
            add_usage(&mut usage, &outcome.usage);
            if outcome.cancelled {
                break;
            }
            let reply = Turn {
                speaker: Speaker::Assistant,
                blocks: outcome.content,
            };
            let uses: Vec<(String, String, serde_json::Value)> = reply
                .blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, name, input } => {
                        Some((id.clone(), name.clone(), input.clone()))
                    }
                    _ => None,
                })
                .collect();
            let wants_tools =
                outcome.stop_reason.as_deref() == Some("tool_use") && !uses.is_empty();
            let mut reply = reply;
            if !wants_tools {
                // A tool_use cut off by max_tokens would stay unanswered in the history and
                // make every later request a 400: keep only the words.
                reply.blocks.retain(|b| !matches!(b, Block::ToolUse { .. }));
            }
            if !reply.is_empty() {
                conversation.push(reply.clone());
                new_turns.push(reply);
            }
            if !wants_tools {
                break;
            }
            round += 1;
            let _ = send(LlmOut::ToolsStarted(
                uses.iter().map(|(_, name, _)| name.clone()).collect(),
            ));
            let mut results = Vec::with_capacity(uses.len());
            for (id, name, input) in uses {
                let started = Instant::now();
                let outcome = match &clients.mcp {
                    Some(mcp) if !job.cancel.load(Ordering::SeqCst) => mcp.call_tool(&name, &input),
                    Some(_) => crate::providers::mcp::ToolOutcome {
                        text: "cancelled: the caller spoke".into(),
                        is_error: true,
                    },
                    None => crate::providers::mcp::ToolOutcome {
                        text: "the CoTrackPro tools are not configured on this server".into(),
                        is_error: true,
                    },
                };
                let _ = send(LlmOut::ToolFinished {
                    name: name.clone(),
                    ok: !outcome.is_error,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
                results.push(Block::ToolResult {
                    tool_use_id: id,
                    content: outcome.text,
                    is_error: outcome.is_error,
                });
            }
            let answer = Turn {
                speaker: Speaker::User,
                blocks: results,
            };
            conversation.push(answer.clone());
            new_turns.push(answer);
        }
        if send(LlmOut::Done {
            new_turns,
            usage,
            error,
        })
        .is_err()
        {
            return;
        }
    }
}

fn add_usage(total: &mut Usage, more: &Usage) {
    total.input_tokens += more.input_tokens;
    total.output_tokens += more.output_tokens;
    total.cache_creation_input_tokens += more.cache_creation_input_tokens;
    total.cache_read_input_tokens += more.cache_read_input_tokens;
}
