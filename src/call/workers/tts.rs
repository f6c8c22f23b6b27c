//! The text-to-speech worker: one piece of speech at a time, one provider stream per piece.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{Speech, TtsJob, TtsOut};
use crate::call::Event;
use crate::providers::elevenlabs_tts::{TtsError, TtsEvent, TtsSettings, TtsStream};
use crate::providers::ws;

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
/// piece's deadline; from then on the worker opens no stream it would wait on. On a new turn
/// (barge-in) the call calls [`TtsShutdown::cut_turns_before`]: a piece of an older turn whose
/// provider is slow or stalled does not hold the new turn's speech behind it.
#[derive(Clone, Debug, Default)]
pub struct TtsShutdown(Arc<Mutex<ShutdownState>>);

#[derive(Debug, Default)]
struct ShutdownState {
    ended: bool,
    /// The socket of the piece being read, and the piece's turn.
    reading: Option<(u64, ws::Interrupt)>,
    /// Pieces of turns below this one are cancelled.
    current_turn: u64,
}

impl TtsShutdown {
    pub fn new() -> TtsShutdown {
        TtsShutdown::default()
    }

    /// Interrupts the read in flight, if any, and every later one.
    pub fn shutdown(&self) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.ended = true;
        if let Some((_, socket)) = state.reading.take() {
            socket.interrupt();
        }
    }

    /// The call moved on to `turn`: a piece of an earlier turn being read is cut off now.
    pub fn cut_turns_before(&self, turn: u64) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.current_turn = state.current_turn.max(turn);
        if state.reading.as_ref().is_some_and(|(t, _)| *t < turn) {
            if let Some((_, socket)) = state.reading.take() {
                socket.interrupt();
            }
        }
    }

    pub fn is_shut_down(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).ended
    }

    /// Registers the stream about to be read for a piece of `turn`; false when the call has
    /// already ended or moved past that turn.
    fn reading(&self, stream: &TtsStream, turn: u64) -> bool {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if state.ended || turn < state.current_turn {
            return false;
        }
        // Without a handle the read still ends by the piece's deadline.
        state.reading = stream.interrupt_handle().ok().map(|socket| (turn, socket));
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
        if job.cancel.is_cancelled() {
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
                    if job.cancel.is_cancelled() {
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
    if !shutdown.reading(&stream, job.turn) {
        stream.abandon();
        return Err(PieceError::Cancelled);
    }
    let mut got_audio = false;
    let read = read_piece(&mut stream, job, out, deadline, &mut got_audio);
    *sent_audio |= got_audio;
    shutdown.done_reading();
    // The service ended the piece without a byte of audio for the text it was given: that is
    // a failure (retried once, then the apology), never a silent success.
    let read = match read {
        Ok(()) if !got_audio && stream.chars_sent() > 0 => {
            log::warn!(chars = stream.chars_sent(); "tts.no_audio");
            Err(PieceError::Failed(TtsError::NoAudio {
                chars: stream.chars_sent(),
            }))
        }
        other => other,
    };
    let ended = job.cancel.is_cancelled() || shutdown.is_shut_down();
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
        if job.cancel.is_cancelled() {
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
