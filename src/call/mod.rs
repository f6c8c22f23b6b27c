//! One phone call: the `call-N` thread, its reader and its workers.
//!
//! ```text
//!  Twilio ws ─► call-N-rx ─inputs─► call-N: Machine::step(now, input) → actions ─► Twilio ws
//!                 │ ▲ caller audio in chunks out, transcripts in (same thread)
//!                 ▼ │
//!             ElevenLabs STT
//!  call-N ─jobs─► call-N-llm (Claude + tools) ─text─► call-N ─pieces─► call-N-tts ─audio─► call-N
//! ```
//!
//! Every decision is the machine's ([`machine`]); this thread only waits and carries actions
//! out. It waits on its inputs until the machine's next deadline — no tick: a call that has
//! nothing to do sleeps until something happens or a timer is really due.
//!
//! Channels, and what happens when one is full:
//! - the call's inputs come on two channels, both read by the call thread, which never blocks
//!   on anything but them (its writes to Twilio have a timeout), so it drains them at once:
//!   control (64: Twilio's messages from the reader, transcripts, the model's text; a sender
//!   blocks when full) and speech (32: the text-to-speech worker's audio and piece ends, in
//!   order; the worker blocks when full, which only slows its reading). Control is read first
//!   whenever both have something, so a `stop`, a mark or a transcript never waits behind
//!   audio. Sizes: a slot is 128 bytes allocated and touched up front, so these 12 KiB per
//!   call replaced a single channel of 1,024 slots (128 KiB) that a thread draining at once
//!   never came near filling;
//! - caller audio to speech-to-text: no channel, the reader sends it itself; while no session
//!   is up (a handshake, a reconnect) it keeps 2 s, then drops the newest and counts it (the
//!   caller's words in a long reconnect are lost either way);
//! - jobs to the model (4) and to text-to-speech (64 pieces: a long answer is a dozen sentences,
//!   and a cut turn's pieces leave the queue at once): the call uses `try_send`; a full
//!   queue means a stuck worker, and the piece is dropped and logged rather than the call
//!   stalling (the machine is told, and forgets the piece);
//! - the machine's manual commits to speech-to-text: no channel, a wake-up pair the reader
//!   waits on (a commit carries nothing, and several asked before the reader wakes are one:
//!   there is one utterance to commit). Its socket buffer bounds it; a full one drops the
//!   wake-up, which the reader has yet to read anyway.
//!
//! Every turn has a number and a cancel flag. When the machine moves to a new turn (barge-in,
//! a new utterance), the old flag is set: workers stop between provider events, and the
//! machine drops any output of an older turn, so no audio of a cancelled turn reaches Twilio
//! after the `clear`.

pub mod barge_rules;
pub mod clips;
pub mod end;
pub mod machine;
pub mod playback;
pub mod reader;
pub mod setup;
pub mod socket;
pub mod workers;

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Select, Sender};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use self::end::End;
use self::machine::{Action, AskError, Machine, Rules, Stream, Summary};
use self::socket::{TwilioSocket, CALL_STACK};
use self::workers::{CallLlm, LlmJob, Speech, SttLost, SttOut, TtsHandle, TtsJob};
use crate::calls::{CallSlot, Listening, Notice};
use crate::config::{Config, TurnEndMode};
use crate::cost;
use crate::metrics::Metrics;
use crate::personas::prompts;
use crate::poll::WakeSender;
use crate::providers::cancel::Cancel;
use crate::records::event::{CallStatus, Event as RecordEvent, EventKind, Transcript};
use crate::records::ttl_from;
use crate::records::writer::RecordWriter;
use crate::timestamp;
use crate::twilio::media_messages::{Inbound, MediaFrames, StreamStart};
use crate::twilio::rest::CallUpdate;
use crate::twilio::stream_token::{self, StreamTokens};

/// What the call's threads send the call thread: the machine's inputs.
pub use self::machine::Input as Event;
pub use self::setup::Setup;

/// The call's input channels, allocated whole when the call starts (an event is 120 bytes).
/// Their senders block while one is full, which only slows the sender down: the call thread
/// takes events as fast as they come, and a worker that waits is a worker that is ahead.
/// Control: Twilio's messages, transcripts, the model's text as it streams.
const EVENTS_CAP: usize = 32;
/// Speech: the text-to-speech worker's audio and ends of pieces.
const SPEECH_EVENTS_CAP: usize = 16;
const LLM_JOBS_CAP: usize = 4;
const TTS_JOBS_CAP: usize = 64;
/// How long the end of a call waits for its `completed` line to be on file (queued behind a
/// compaction, or a stalled disk); past it the line is still written, later.
const RECORD_WAIT: Duration = Duration::from_secs(5);
/// How long the end of a call waits for its threads.
const JOIN_WAIT: Duration = Duration::from_secs(1);

/// What a call needs from the server: its settings, where its record goes, the metrics, and
/// the providers. (Not the whole server state: a call knows nothing of HTTP.)
pub struct Context<'a> {
    pub config: &'a Config,
    /// Where the record goes: the process's records writer (the call never writes the file).
    pub records: &'a RecordWriter,
    pub metrics: &'a Metrics,
    pub providers: &'a Setup,
    /// Admits streams by their per-call token.
    pub stream_tokens: &'a StreamTokens,
}

impl Context<'_> {
    /// The machine's rules from the configuration.
    fn rules(&self) -> Rules<'_> {
        let config = self.config;
        let tuning = &config.calls.tuning;
        let rounds = tuning.max_tool_rounds + 1;
        Rules {
            calls: &config.calls,
            clips: &self.providers.clips,
            reply_deadline: config.anthropic.stream_timeout * rounds
                + config.mcp.timeout * tuning.max_tool_rounds
                + Duration::from_secs(5),
            history_keep: config.anthropic.max_history_messages * 2,
        }
    }
}

/// The call thread's side of the call: the machine and what carries its actions out.
struct Call<'a> {
    ctx: &'a Context<'a>,
    n: u64,
    machine: Machine<'a>,
    writer: WebSocket<TcpStream>,
    /// A write to Twilio failed: nothing more is written.
    write_failed: bool,
    /// The stream's `media` messages, built in one reused buffer (from `Started` on).
    frames: Option<MediaFrames>,
    events_tx: Sender<Event>,
    /// The text-to-speech worker's outputs (see the module docs: read after control).
    speech_tx: Sender<Event>,
    started: Instant,
    /// The reader's last loud frame, in milliseconds from `started` plus one (0: none yet).
    voiced_ms: Arc<AtomicU64>,
    voiced_seen: u64,
    /// The current turn's cancel flag (set when the machine moves on).
    cancel: Arc<Cancel>,
    llm_tx: Option<Sender<LlmJob>>,
    /// The call's own model and tool clients, shut down when the call ends.
    llm_clients: Option<CallLlm>,
    /// The text-to-speech worker's jobs, cuts and end.
    tts: Option<TtsHandle>,
    threads: Threads,
    /// Set when the stream is admitted: the reader starts speech-to-text.
    admitted: Arc<AtomicBool>,
    /// Inputs that carrying out actions produced (a failed write, a full queue).
    feedback: Vec<Event>,
    /// The CallSid of the `start` admitted (its token was good and the call is not over):
    /// its record gets the call's verdict however the call ends.
    admitted_sid: Option<String>,
    /// The call's place under the cap; its threads are started through it and hold it.
    slot: &'a CallSlot,
    /// Notices for this call by its CallSid (who answered it) come while this is held.
    listening: Option<Listening>,
    /// Wakes the reader to commit what speech-to-text heard (the smart turn end).
    stt_commits: Option<WakeSender>,
}

/// Runs one call on the current (`call-N`) thread until it ends, then cleans up after it.
/// `start` is the stream's `start` message, read by the listener before the call took its
/// place under the cap.
pub fn run(ctx: &Context<'_>, socket: TwilioSocket, slot: CallSlot, n: u64, start: StreamStart) {
    let started = Instant::now();
    let TwilioSocket {
        reader,
        writer,
        peer,
    } = socket;
    log::info!(peer:% = peer, connection = n; "call.stream.connected");
    let (events_tx, events_rx) = bounded::<Event>(EVENTS_CAP);
    let (speech_tx, speech_rx) = bounded::<Event>(SPEECH_EVENTS_CAP);
    let voiced_ms = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicBool::new(false));
    let stt_bytes = Arc::new(AtomicU64::new(0));
    let mut threads = Threads::new();
    if ctx.providers.stt.is_none() {
        log::error!("call: ELEVENLABS_API_KEY is not set; the caller cannot be heard");
        let _ = events_tx.send(Event::Stt(SttOut::Lost(SttLost::NotConfigured)));
    }
    // The machine's commits reach the reader, which owns the STT socket, by a wake-up.
    let smart = ctx.config.calls.tuning.turn_end == TurnEndMode::Smart;
    let (stt_commits, commits) = match smart.then(crate::poll::wake_pair).transpose() {
        Ok(Some((tx, rx))) => (Some(tx), Some(rx)),
        Ok(None) => (None, None),
        Err(err) => {
            log::error!(error:% = err; "call.stt_commit_pair_failed: the caller's turns cannot end");
            let _ = events_tx.send(Event::Stt(SttOut::Lost(SttLost::NoResources(
                err.to_string(),
            ))));
            (None, None)
        }
    };
    {
        let events = events_tx.clone();
        let voiced = voiced_ms.clone();
        let admitted = admitted.clone();
        let tuning = &ctx.config.calls.tuning;
        // Speech-to-text starts when the stream is admitted (no provider is contacted before).
        let stt = workers::SttLink::new(
            ctx.providers.stt.clone(),
            tuning.stt_reconnects,
            format!("call-{n}-stt-dial"),
            PROVIDER_STACK,
            {
                // A handshake's thread holds the call's place too, until it ends.
                let slot = slot.clone();
                Arc::new(move |name, stack, f| slot.spawn(name, stack, f).map(drop))
            },
            stt_bytes.clone(),
        );
        let (chunk, read_timeout) = (tuning.stt_chunk, tuning.media_read_timeout);
        let spawned = threads.spawn(&slot, format!("call-{n}-rx"), CALL_STACK, move || {
            reader::twilio_reader(
                reader,
                reader::Reader {
                    events: &events,
                    stt,
                    admitted: &admitted,
                    voiced_ms: &voiced,
                    started,
                    chunk,
                    read_timeout,
                    commits,
                },
            )
        });
        if let Err(end) = spawned {
            ctx.metrics
                .thread_spawn_failures
                .fetch_add(1, Ordering::Relaxed);
            let _ = events_tx.send(Event::TwilioGone(end));
        }
    }

    let wall_ms = timestamp::now_ms();
    let mut call = Call {
        ctx,
        n,
        machine: Machine::new(ctx.rules(), started, wall_ms, format!("unknown-{n}")),
        writer,
        write_failed: false,
        frames: None,
        events_tx,
        speech_tx,
        started,
        voiced_ms,
        voiced_seen: 0,
        cancel: Arc::new(Cancel::new()),
        llm_tx: None,
        llm_clients: None,
        tts: None,
        threads,
        admitted,
        feedback: Vec::new(),
        admitted_sid: None,
        slot: &slot,
        listening: None,
        stt_commits,
    };
    // A bug must not leave a call half-alive (threads streaming, record active): a panic in
    // the call thread ends the call like any failure.
    let end = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        call.drive(
            Event::Twilio(Inbound::Start(start)),
            &events_rx,
            &speech_rx,
            slot.ending(),
        )
    })) {
        Ok(end) => end,
        Err(_) => {
            log::error!(callSid = call.machine.call_sid(); "call.panicked: ending the call");
            End::Internal
        }
    };

    // Whatever ended the call, everything of it ends now.
    call.cancel.cancel();
    // The record first: Twilio's own `completed` callback follows the close of the stream, and
    // the call's verdict (failed, force-reaped) must be on file before it (a final status is
    // never changed afterwards).
    let mut summary = call.machine.summary(Instant::now());
    summary.end = end;
    summary
        .usage
        .add_stt_secs(stt_bytes.load(Ordering::Relaxed) as f64 / 8000.0);
    // A stream admitted but refused by the machine (its media format) still has a record,
    // which gets the verdict: no call stays `active`.
    if let (false, Some(sid)) = (summary.started, &call.admitted_sid) {
        summary.call_sid.clone_from(sid);
        summary.started = true;
    }
    complete(ctx, &mut summary);
    let close = match &summary.end {
        // Told why (policy), so a misconfigured deployment is not a mystery.
        End::Unauthorized(_) => Some(close_frame(CloseCode::Policy, "stream not admitted")),
        End::CallOver => Some(close_frame(CloseCode::Policy, "the call is over")),
        End::NoThread(_) => Some(close_frame(
            CloseCode::Again,
            "server busy, try again later",
        )),
        End::MessageTooBig => Some(close_frame(CloseCode::Size, "message too big")),
        // RFC 6455: a close frame is answered with one.
        End::ClosedByTwilio(code) => Some(socket::close_answer(*code)),
        end if summary.started && end.may_close_socket() => {
            Some(close_frame(CloseCode::Normal, "call ended"))
        }
        _ => None,
    };
    if let Some(frame) = close.filter(|_| !call.write_failed) {
        let _ = call.writer.close(Some(frame));
        let _ = call.writer.flush();
    }
    let how = match summary.end {
        // The reader drops the rest of the oversized message until the client closes too
        // (closing over unread bytes would reset the connection before our 1009 is read).
        End::MessageTooBig => Shutdown::Write,
        // Both halves end: the reader sees the end of the stream at once.
        _ => Shutdown::Both,
    };
    let _ = call.writer.get_ref().shutdown(how);
    call.llm_tx = None;
    // After the cancel flag: the worker closes its socket and ends now, mid-piece or not.
    if let Some(tts) = call.tts.take() {
        tts.shutdown();
    }
    if let Some(clients) = call.llm_clients.take() {
        // A model stream or a tool call in flight is interrupted, not waited out.
        clients.shutdown();
    }
    drop(events_rx);
    drop(speech_rx);
    let threads = std::mem::replace(&mut call.threads, Threads::new());
    drop(call);
    threads.join_by(Instant::now() + JOIN_WAIT);
    drop(slot);
}

/// A call's threads, and a way to wait for all of them without polling: each holds a sender
/// of `done`, dropped when its function returns (or unwinds), so the channel closes when the
/// last one ends.
struct Threads {
    handles: Vec<JoinHandle<()>>,
    done_tx: Sender<()>,
    done_rx: Receiver<()>,
}

impl Threads {
    fn new() -> Threads {
        // Nothing is ever sent: only the closing counts.
        let (done_tx, done_rx) = bounded(0);
        Threads {
            handles: Vec::new(),
            done_tx,
            done_rx,
        }
    }

    /// Starts a thread of the call (holding its `slot`); a refusal is how the call ends.
    fn spawn<F>(&mut self, slot: &CallSlot, name: String, stack: usize, f: F) -> Result<(), End>
    where
        F: FnOnce() + Send + 'static,
    {
        let done = self.done_tx.clone();
        match slot.spawn(name.clone(), stack, move || {
            let _done = done;
            f();
        }) {
            Ok(handle) => {
                self.handles.push(handle);
                Ok(())
            }
            Err(err) => {
                log::error!(thread = name.as_str(), error:% = err; "call.spawn_failed: call refused with 1013");
                Err(End::NoThread(name))
            }
        }
    }

    /// Waits until every thread has ended or `deadline` passed; a thread still running then is
    /// left to end by its own timeouts (and logged).
    fn join_by(self, deadline: Instant) {
        let Threads {
            handles,
            done_tx,
            done_rx,
        } = self;
        drop(done_tx);
        // Closed: every thread has returned from its function (it may still be exiting, so
        // `join` waits for that moment rather than `is_finished` guessing).
        let all_returned = matches!(
            done_rx.recv_deadline(deadline),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        for handle in handles {
            if all_returned || handle.is_finished() {
                let _ = handle.join();
            } else {
                let name = handle.thread().name().unwrap_or("?").to_string();
                log::warn!(thread = name.as_str(); "call.thread.lingering");
            }
        }
    }
}

/// Stack of the provider workers: they run TLS handshakes and certificate checks (rustls),
/// whose stack use is not ours to bound, so they get a generous margin. Measured in `bench`
/// (the touched pages of their stacks in /proc/PID/smaps): at most 52 KiB, so 512 KiB is ten
/// times that. Only the pages a thread touches are resident; the rest is address space (and
/// commit charge, under strict overcommit), which a thousand calls' 3,000 workers multiply.
const PROVIDER_STACK: usize = 512 * 1024;
/// How long a webhook's notice for a call (who answered it) may wait for room in the call's
/// input channel.
const NOTICE_WAIT: Duration = Duration::from_millis(250);

impl Call<'_> {
    /// Steps the machine with `first` (the stream's `start`), then waits for inputs until the
    /// machine's next deadline, steps the machine, carries out its actions; returns how the
    /// call ended.
    fn drive(
        &mut self,
        first: Event,
        events: &Receiver<Event>,
        speech: &Receiver<Event>,
        ending: &Receiver<()>,
    ) -> End {
        let mut ending = Some(ending);
        let mut stack_released = false;
        let mut first = Some(first);
        loop {
            if !stack_released && self.frames.is_some() {
                // The handshake, the `start` and the greeting went deep; the call goes on in a
                // few KiB.
                crate::stack::release_unused();
                stack_released = true;
            }
            if let Some(end) = self.machine.end() {
                return end.clone();
            }
            let input = match first.take() {
                Some(start) => start,
                None => wait(events, speech, &mut ending, self.machine.next_deadline()),
            };
            let now = Instant::now();
            let voiced = self.voiced_ms.load(Ordering::Relaxed);
            if voiced != self.voiced_seen {
                self.voiced_seen = voiced;
                let at = self.started + Duration::from_millis(voiced - 1);
                self.step(now, Event::Voice(at));
            }
            let input = self.admit(input);
            self.step(now, input);
            self.flush();
            while !self.feedback.is_empty() {
                for input in std::mem::take(&mut self.feedback) {
                    self.step(Instant::now(), input);
                }
                self.flush();
            }
        }
    }

    /// A `start` is admitted only with a valid, unused token for its own CallSid, and only for
    /// a call that is not over (the store never reopens a finished call); otherwise the stream
    /// ends here, before any provider is contacted, and no record is touched.
    fn admit(&mut self, input: Event) -> Event {
        let Event::Twilio(Inbound::Start(start)) = &input else {
            return input;
        };
        if self.machine.stream().is_some() {
            // A repeated `start`: the machine ignores it.
            return input;
        }
        let token = start.parameter(stream_token::PARAMETER);
        let now_secs = timestamp::now_ms() / 1000;
        match self
            .ctx
            .stream_tokens
            .admit(token, &start.call_sid, now_secs)
        {
            Ok(()) => {}
            Err(why) => {
                log::warn!(
                    callSid = start.call_sid.as_str(),
                    reason:% = why;
                    "call.refused: stream not admitted"
                );
                return Event::TwilioGone(End::Unauthorized(why));
            }
        }
        let store = self.ctx.records.store();
        match store.may_stream(&start.call_sid) {
            Ok(true) => {}
            Ok(false) => {
                log::warn!(callSid = start.call_sid.as_str(); "call.refused: the call is over; its record is not reopened");
                return Event::TwilioGone(End::CallOver);
            }
            // The records file cannot be read: the call goes on (its record is written when
            // it can be, as when the webhook could not write it).
            Err(err) => {
                log::error!(callSid = start.call_sid.as_str(), error:% = err; "records.read.failed: stream admitted without the check");
            }
        }
        self.admitted_sid = Some(start.call_sid.clone());
        // Notices by CallSid (a webhook's) become inputs. Twilio posts a result once, so a
        // full channel is waited on briefly (the call thread drains its inputs at once);
        // only a call stuck that long refuses it.
        let events = self.events_tx.clone();
        self.listening = Some(self.slot.listen(&start.call_sid, move |notice| {
            let event = match notice {
                Notice::AnsweredBy(answered_by) => Event::AnsweredBy(answered_by),
            };
            events.send_timeout(event, NOTICE_WAIT).is_ok()
        }));
        input
    }

    fn step(&mut self, now: Instant, input: Event) {
        for action in self.machine.step(now, input) {
            self.perform(action);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Twilio(text) => self.send(Message::text(text)),
            Action::Media(ulaw) => self.send_media(&ulaw),
            Action::Pong(payload) => self.send(Message::Pong(payload.into())),
            Action::Started(stream) => self.on_started(&stream),
            Action::NewTurn(turn) => {
                // Whatever a worker still does for the old turn stops: between provider events
                // by the flag, and a piece being read at once.
                self.cancel.cancel();
                self.cancel = Arc::new(Cancel::new());
                if let Some(tts) = &self.tts {
                    tts.cut_turns_before(turn);
                }
            }
            Action::Speak { turn, seq, speech } => {
                let prewarm = matches!(speech, Speech::Prewarm);
                let job = TtsJob {
                    turn,
                    seq,
                    speech,
                    cancel: self.cancel.clone(),
                };
                let queued = match &self.tts {
                    Some(tts) => match tts.send(job) {
                        Ok(()) => true,
                        Err(err) => {
                            if !prewarm {
                                log::error!(callSid = self.machine.call_sid(), error:% = err; "tts.queue_full: speech dropped");
                            }
                            false
                        }
                    },
                    // Logged once when the workers started.
                    None => false,
                };
                if !queued && !prewarm {
                    self.feedback.push(Event::SpeechDropped { turn, seq });
                }
            }
            Action::Ask { turn, history } => {
                let job = LlmJob {
                    turn,
                    history,
                    cancel: self.cancel.clone(),
                };
                let sent = match &self.llm_tx {
                    Some(llm) => llm.try_send(job).map_err(|_| AskError::WorkerUnavailable),
                    None => Err(AskError::NotConfigured),
                };
                if let Err(why) = sent {
                    self.feedback.push(Event::AskFailed { turn, why });
                }
            }
            Action::Latency(l) => {
                log::info!(
                    callSid = l.call_sid.as_str(),
                    turn = l.turn,
                    // A stage the turn never reached is null, not a measured 0 ms.
                    speechEndToCommitMs = l.speech_end_to_commit_ms,
                    firstTokenMs = l.first_token_ms,
                    firstSentenceMs = l.first_sentence_ms,
                    firstAudioMs = l.first_audio_ms,
                    firstFrameMs = l.first_frame_ms;
                    "turn.latency"
                );
                self.ctx.metrics.record_turn(&l);
            }
            // The loop sees the machine's end.
            Action::End(_) => {}
            Action::Commit => {
                if let Some(commits) = &self.stt_commits {
                    commits.wake();
                }
            }
            Action::Transfer { call_sid, number } => self.transfer(call_sid, number),
        }
    }

    /// Asks Twilio to hand the call to `number` on a short-lived `call-N-transfer` thread (the
    /// request may take seconds; the call thread keeps carrying audio and marks); its answer
    /// comes back as an input.
    fn transfer(&mut self, call_sid: String, number: String) {
        let Some(rest) = self.ctx.providers.twilio.clone() else {
            self.feedback.push(Event::TransferDone(Err(
                "twilio's REST API is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)"
                    .to_string(),
            )));
            return;
        };
        let events = self.events_tx.clone();
        let name = format!("call-{}-transfer", self.n);
        // One of the call's threads (joined with them), but a refusal fails only the transfer.
        let done = self.threads.done_tx.clone();
        let spawned = self.slot.spawn(name, PROVIDER_STACK, move || {
            let _done = done;
            let update = CallUpdate::Twiml(crate::twilio::twiml::dial(&number));
            let result = rest
                .update_call(&call_sid, &update)
                .map_err(|err| err.to_string());
            // The call may be over by now; then nobody is listening, and that is fine.
            let _ = events.send(Event::TransferDone(result));
        });
        match spawned {
            Ok(handle) => self.threads.handles.push(handle),
            Err(err) => {
                log::error!(callSid = self.machine.call_sid(), error:% = err; "call.transfer.spawn_failed");
                self.ctx
                    .metrics
                    .thread_spawn_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.feedback.push(Event::TransferDone(Err(
                    "the transfer's thread could not be started".to_string(),
                )));
            }
        }
    }

    /// Queues a message for Twilio; what a step queued goes out in one write at its end
    /// ([`Call::flush`]).
    fn send(&mut self, message: Message) {
        if self.write_failed {
            return;
        }
        let sent = self.writer.write(message);
        self.sent(sent);
    }

    /// Writes what the last step queued for Twilio.
    fn flush(&mut self) {
        if self.write_failed {
            return;
        }
        let flushed = self.writer.flush();
        self.sent(flushed);
    }

    fn send_media(&mut self, ulaw: &[u8]) {
        let Some(frames) = self.frames.as_mut().filter(|_| !self.write_failed) else {
            return;
        };
        let sent = socket::send_media(&mut self.writer, frames, ulaw);
        self.sent(sent);
    }

    /// Notes a failed write: nothing more is written, and the machine is told.
    fn sent(&mut self, result: tungstenite::Result<()>) {
        if let Err(err) = result {
            // The machine gives the reader a moment to say how the call ended first.
            log::debug!(callSid = self.machine.call_sid(), error:% = err; "twilio.send_failed");
            self.write_failed = true;
            self.feedback.push(Event::WriteFailed);
        }
    }

    fn on_started(&mut self, stream: &Stream) {
        self.frames = Some(MediaFrames::new(&stream.stream_sid));
        log::info!(
            callSid = stream.call_sid.as_str(),
            role = stream.role.as_str(),
            voice = stream.voice.as_str();
            "call.started"
        );
        self.ctx
            .metrics
            .calls_started
            .fetch_add(1, Ordering::Relaxed);
        self.ensure_record(stream);
        self.start_stt();
        self.start_workers(stream);
    }

    /// Queued for the records writer: the greeting never waits for the records file.
    fn ensure_record(&self, stream: &Stream) {
        let now = timestamp::now_ms();
        let ttl = ttl_from(now, self.ctx.config.records.ttl_days);
        let event = RecordEvent::created(
            &stream.call_sid,
            stream.role,
            stream.direction,
            "unknown",
            now,
            ttl,
        );
        self.ctx.records.create_if_absent(event);
    }

    /// Starts a provider worker of the call; if the system refuses, the call ends (1013).
    fn spawn(&mut self, name: String, f: impl FnOnce() + Send + 'static) {
        if let Err(end) = self.threads.spawn(self.slot, name, PROVIDER_STACK, f) {
            self.ctx
                .metrics
                .thread_spawn_failures
                .fetch_add(1, Ordering::Relaxed);
            self.feedback.push(Event::TwilioGone(end));
        }
    }

    /// The reader starts speech-to-text the next time it wakes (Twilio sends a frame every
    /// 20 ms).
    fn start_stt(&mut self) {
        self.admitted.store(true, Ordering::Release);
    }

    fn start_workers(&mut self, stream: &Stream) {
        let n = self.n;
        if let Some(setup) = self.ctx.providers.llm.clone() {
            let (tx, rx) = bounded::<LlmJob>(LLM_JOBS_CAP);
            let events = self.events_tx.clone();
            let system = prompts::system_prompt(stream.role);
            let clients = CallLlm::new(&setup);
            self.llm_clients = Some(clients.clone());
            let transfer = self
                .ctx
                .config
                .calls
                .transfer
                .number_for(stream.role)
                .is_some();
            self.spawn(format!("call-{n}-llm"), move || {
                workers::llm(&setup, &clients, &system, transfer, &rx, &events)
            });
            self.llm_tx = Some(tx);
        } else {
            log::error!("call: ANTHROPIC_API_KEY is not set; the persona cannot answer");
        }
        if let Some(settings) = self.ctx.providers.tts.clone() {
            match workers::tts_channel(TTS_JOBS_CAP) {
                Ok((handle, inbox)) => {
                    let events = self.speech_tx.clone();
                    let voice = stream.voice.clone();
                    self.spawn(format!("call-{n}-tts"), move || {
                        workers::tts(&settings, &voice, &inbox, &events)
                    });
                    self.tts = Some(handle);
                }
                // Logged, and every piece is then reported dropped (the call apologizes and
                // ends as a call that cannot speak).
                Err(err) => log::error!(error:% = err; "call.tts_channel_failed"),
            }
        } else {
            log::error!("call: ELEVENLABS_API_KEY is not set; the persona cannot speak");
        }
    }
}

/// Waits for the next input: an event (control first), the end of the server's drain, or the
/// deadline.
fn wait(
    events: &Receiver<Event>,
    speech: &Receiver<Event>,
    ending: &mut Option<&Receiver<()>>,
    deadline: Option<Instant>,
) -> Event {
    if let Ok(event) = events.try_recv() {
        return event;
    }
    let mut select = Select::new();
    let events_index = select.recv(events);
    let speech_index = select.recv(speech);
    if let Some(ending) = ending {
        select.recv(ending);
    }
    let operation = match deadline {
        Some(deadline) => match select.select_deadline(deadline) {
            Ok(operation) => operation,
            Err(_) => return Event::Deadline,
        },
        None => select.select(),
    };
    if operation.index() == events_index {
        return match operation.recv(events) {
            Ok(event) => event,
            Err(_) => Event::TwilioGone(End::ChannelClosed),
        };
    }
    if operation.index() == speech_index {
        return match operation.recv(speech) {
            Ok(event) => event,
            Err(_) => Event::TwilioGone(End::ChannelClosed),
        };
    }
    if let Some(receiver) = ending.take() {
        // Closed (nothing is ever sent on it): the drain is over. Not waited on again.
        let _ = operation.recv(receiver);
    }
    Event::Shutdown
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The record's completion event, the metrics and the `cost.call.summary` line.
fn complete(ctx: &Context<'_>, summary: &mut Summary) {
    let status = summary.end.status();
    let duration_secs = summary.duration.as_secs();
    let cost = summary.usage.summary(&ctx.config.prices);
    log::info!(
        callSid = summary.call_sid.as_str(),
        callStatus = status.as_str(),
        reason:% = summary.end,
        durationSecs = duration_secs;
        "call.ended"
    );
    cost::log_call_summary(
        &summary.call_sid,
        duration_secs,
        summary.caller_turns,
        summary.barge_ins,
        summary.tool_calls.len() as u64,
        &cost,
    );
    if !summary.started {
        return;
    }
    let metrics = ctx.metrics;
    match status {
        CallStatus::Completed => metrics.calls_completed.fetch_add(1, Ordering::Relaxed),
        CallStatus::ForceReaped => metrics.calls_reaped.fetch_add(1, Ordering::Relaxed),
        _ => metrics.calls_failed.fetch_add(1, Ordering::Relaxed),
    };
    metrics
        .barge_ins
        .fetch_add(summary.barge_ins, Ordering::Relaxed);
    metrics
        .dtmf_dropped
        .fetch_add(summary.dtmf_dropped, Ordering::Relaxed);
    metrics
        .marks_overdue
        .fetch_add(summary.marks_overdue, Ordering::Relaxed);
    metrics
        .tool_calls
        .fetch_add(summary.tool_calls.len() as u64, Ordering::Relaxed);
    metrics.add_spend(&cost::spend_by_component(&cost, &ctx.config.prices));
    let now = timestamp::now_ms();
    let event = RecordEvent {
        status: Some(status),
        ended_at: Some(timestamp::format_ms(now)),
        duration_secs: Some(duration_secs),
        turn_count: Some(summary.caller_turns),
        transcript: Some(Transcript::from_entries(&summary.transcript)),
        tool_calls: Some(std::mem::take(&mut summary.tool_calls)),
        turn_latencies: Some(std::mem::take(&mut summary.turn_latencies)),
        cost_summary: Some(cost),
        barge_ins: Some(summary.barge_ins),
        end_reason: summary.end.record_reason(),
        ended_by: Some(summary.end.ended_by().as_str().to_string()),
        transfers: (!summary.transfers.is_empty()).then(|| std::mem::take(&mut summary.transfers)),
        ..RecordEvent::new(
            EventKind::Completed,
            &summary.call_sid,
            &timestamp::format_ms(now),
            ttl_from(now, ctx.config.records.ttl_days),
        )
    };
    // The call's only wait on the records file, at its end: its verdict is on file before the
    // stream closes.
    if let Err(err) = ctx.records.append_and_wait(event, RECORD_WAIT) {
        log::error!(callSid = summary.call_sid.as_str(), error:% = err; "records.completeCall.failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_is_read_before_speech_whatever_arrived_first() {
        let (control_tx, control) = bounded::<Event>(4);
        let (speech_tx, speech) = bounded::<Event>(4);
        speech_tx
            .send(Event::TwilioGone(End::TwilioClosed))
            .unwrap();
        speech_tx.send(Event::Deadline).unwrap();
        control_tx.send(Event::Shutdown).unwrap();
        let mut ending = None;
        let far = Some(Instant::now() + Duration::from_secs(5));
        assert!(matches!(
            wait(&control, &speech, &mut ending, far),
            Event::Shutdown
        ));
        assert!(matches!(
            wait(&control, &speech, &mut ending, far),
            Event::TwilioGone(End::TwilioClosed)
        ));
        assert!(matches!(
            wait(&control, &speech, &mut ending, far),
            Event::Deadline
        ));
    }
}
