//! A call's worker threads: speech-to-text, the model (with its tool loop), text-to-speech.
//! Each owns its provider socket, reports to the call thread through the call's event channel,
//! and stops when its input channel closes or the call's `ended` flag is set. Work for a turn
//! carries that turn's cancel flag, checked between provider events: a cancelled turn's work
//! stops, and whatever it still produces is dropped by the call thread by turn number anyway.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde_json::json;

use super::Event;
use crate::providers::anthropic::client::{AnthropicClient, LlmError};
use crate::providers::anthropic::request::{self, RequestParts};
use crate::providers::anthropic::stream::{StreamItem, Usage};
use crate::providers::anthropic::{Block, Speaker, Turn};
use crate::providers::elevenlabs_stt::{SttEvent, SttSettings, SttStream};
use crate::providers::elevenlabs_tts::{TtsError, TtsEvent, TtsSettings, TtsStream};
use crate::providers::mcp::{McpClient, ToolCatalog};

/// What speech-to-text tells the call.
#[derive(Debug, Clone, PartialEq)]
pub enum SttOut {
    Partial(String),
    Committed(String),
    /// The service could not be reached again within the allowed reconnects.
    Lost(String),
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
        error: Option<LlmError>,
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
    Failed(String),
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

/// Speech-to-text for one call: forwards the caller's audio (base64 as Twilio sent it) and
/// reports transcripts; reconnects up to `reconnects` times. `sent_bytes` counts the audio
/// forwarded (what ElevenLabs bills), readable by the call at any moment.
pub fn stt(
    settings: &SttSettings,
    reconnects: u32,
    audio: &Receiver<String>,
    out: &Sender<Event>,
    ended: &AtomicBool,
    sent_bytes: &AtomicU64,
) {
    let mut failures = 0u32;
    'session: loop {
        let opened = Instant::now();
        let mut stream =
            match SttStream::open_retrying(settings, 3, Duration::from_millis(250), ended) {
                Ok(stream) => stream,
                Err(err) => {
                    if !ended.load(Ordering::SeqCst) {
                        let _ = out.send(Event::Stt(SttOut::Lost(err.to_string())));
                    }
                    break;
                }
            };
        let failure = loop {
            if ended.load(Ordering::SeqCst) {
                stream.close();
                break 'session;
            }
            let mut send_failed = None;
            loop {
                match audio.try_recv() {
                    Ok(payload) => {
                        if let Err(err) = stream.send_audio(&payload) {
                            send_failed = Some(err);
                            break;
                        }
                        let padding = payload.bytes().rev().take_while(|b| *b == b'=').count();
                        let bytes = (payload.len() / 4 * 3).saturating_sub(padding);
                        sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        stream.close();
                        break 'session;
                    }
                }
            }
            if let Some(err) = send_failed {
                break err;
            }
            match stream.next_event() {
                Ok(Some(SttEvent::Partial(text))) => {
                    let _ = out.send(Event::Stt(SttOut::Partial(text)));
                }
                Ok(Some(SttEvent::Committed(text))) => {
                    let _ = out.send(Event::Stt(SttOut::Committed(text)));
                }
                Ok(Some(SttEvent::SessionStarted(id))) => {
                    log::debug!(sessionId = id.as_str(); "stt.session_started");
                }
                Ok(None) => {}
                Err(err) => break err,
            }
        };
        stream.close();
        // Reconnects are counted per trouble spell: a session that held for a while resets
        // the count (a long call may see unrelated drops, or the service's session limit).
        if opened.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        failures += 1;
        if failures > reconnects {
            let _ = out.send(Event::Stt(SttOut::Lost(failure.to_string())));
            break;
        }
        log::warn!(error:% = failure, attempt = failures; "stt.reconnect");
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

/// Text-to-speech for one call: one piece of speech at a time, in order, one stream per piece
/// (so each piece's end is known exactly and no stream is reused after its end of input).
pub fn tts(
    settings: &TtsSettings,
    voice: &str,
    jobs: &Receiver<TtsJob>,
    out: &Sender<Event>,
    ended: &AtomicBool,
) {
    let mut spare: Option<(TtsStream, Instant)> = None;
    loop {
        let job = match jobs.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                if ended.load(Ordering::SeqCst) {
                    break;
                }
                if spare
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() > SPARE_MAX_AGE)
                {
                    if let Some((stream, _)) = spare.take() {
                        stream.abandon();
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
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
                        Ok(stream) => {
                            speak_piece(stream, text, &job, out, &mut sent_audio, &mut billed)
                        }
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
                            let _ = send(TtsOut::Failed(err.to_string()));
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

fn speak_piece(
    mut stream: TtsStream,
    text: &str,
    job: &TtsJob,
    out: &Sender<Event>,
    sent_audio: &mut bool,
    billed: &mut u64,
) -> Result<(), PieceError> {
    let started = Instant::now();
    let result = stream.send_sentence(text).and_then(|()| stream.end_input());
    *billed += stream.chars_sent();
    if let Err(err) = result {
        stream.abandon();
        return Err(PieceError::Failed(err));
    }
    loop {
        if job.cancel.load(Ordering::SeqCst) {
            stream.abandon();
            return Err(PieceError::Cancelled);
        }
        if started.elapsed() > PIECE_DEADLINE {
            stream.abandon();
            return Err(PieceError::Failed(TtsError::Closed(
                "no end of audio within 20 s".into(),
            )));
        }
        match stream.next_event() {
            Ok(Some(TtsEvent::Audio(audio))) => {
                *sent_audio = true;
                let event = Event::Tts {
                    turn: job.turn,
                    seq: job.seq,
                    out: TtsOut::Audio(audio),
                };
                if out.send(event).is_err() {
                    stream.abandon();
                    return Err(PieceError::Cancelled);
                }
            }
            Ok(Some(TtsEvent::Final)) => return Ok(()),
            Ok(None) => {}
            Err(err) => {
                stream.abandon();
                return Err(PieceError::Failed(err));
            }
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
                    error = Some(err);
                    break;
                }
            };
            usage += outcome.usage;
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
