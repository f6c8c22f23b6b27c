//! What the text-to-speech worker decides, as a pure machine: [`Plan::step`] takes the time
//! and one input (a job, a cut, what the socket said, what carrying out an action reported)
//! and queues actions; it owns no socket and reads no clock, so every rule is unit-tested in
//! microseconds. The worker thread ([`super::tts`]) only carries the actions out.
//!
//! The rules:
//! - One socket per call, opened at the worker's start (before the greeting) and kept: while
//!   nothing is said, a keep-alive goes out when nothing else was sent for `keepalive_every`.
//! - One piece at a time, in order, each a context of its own (`{turn}-{seq}-{n}`, `n`
//!   counting the socket's contexts, so no id is ever used twice); its `isFinal` ends it. Clips (pre-rendered audio) play in order between the live pieces.
//! - A piece that fails before any of its audio arrived (the socket dropped, the service sent
//!   an error, the piece ended mute, or its deadline passed) is tried once more, on a new
//!   socket when the old one is gone; then it is reported failed (the call apologizes).
//! - A socket that drops is reopened once at once, so the next piece does not wait for the
//!   connection; after that it is opened when a piece needs it. After a failed open the next
//!   waits a pause (1 s, doubling to 8 s), and a refused key (401, 403) is not tried again:
//!   its pieces fail at once.
//! - A cut (barge-in: the call moved to a newer turn) drops the older turns' pieces: the one
//!   being spoken is reported done (billed, no more audio) and its late audio is dropped by
//!   context; its context counts against the service's limit until its `isFinal`.
//! - At most [`MAX_CONTEXTS`] contexts are open on the socket; a piece waits for room.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Speech, TtsJob, TtsOut};
use crate::providers::elevenlabs_tts::{TtsError, TtsEvent, MAX_CONTEXTS};
use crate::providers::ws::ConnectError;

/// The longest one piece of speech may take to arrive in full.
pub const PIECE_DEADLINE: Duration = Duration::from_secs(20);
/// Audio bytes per message when a clip is handed to the call (400 ms).
const CLIP_CHUNK: usize = 3200;
/// The pause after a failed open before the next, doubling up to the maximum: a provider that
/// is down costs a connect timeout per pause, not one per piece back to back.
const OPEN_PAUSE_MIN: Duration = Duration::from_secs(1);
const OPEN_PAUSE_MAX: Duration = Duration::from_secs(8);

/// What happens to the worker.
#[derive(Debug)]
pub enum Input {
    /// A piece to speak (or a `Prewarm`: make sure the socket is open).
    Job(TtsJob),
    /// The call moved on to this turn: older turns' speech is cut.
    Cut(u64),
    /// The call ended.
    End,
    /// The socket opened, or could not be opened.
    Opened,
    OpenFailed(TtsError),
    /// A piece's text went out: the characters billed.
    Spoke(u64),
    /// What the socket said.
    Event(TtsEvent),
    /// The socket is gone (an error, the service's error message, a close, a failed write).
    Lost(TtsError),
    /// Time passed (a deadline of [`Plan::next_deadline`]).
    Tick,
}

/// What the worker carries out.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Open the socket (and report `Opened` or `OpenFailed`).
    Open,
    /// Speak `text` as the new context `context` (and report `Spoke` or `Lost`).
    Speak {
        context: String,
        text: String,
    },
    KeepAlive,
    /// Close the socket (`close_socket`) and forget it.
    Close,
    /// Tell the call.
    Out {
        turn: u64,
        seq: u32,
        out: TtsOut,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    Down,
    Opening,
    Up,
}

/// The piece being spoken.
#[derive(Debug)]
struct Current {
    turn: u64,
    seq: u32,
    text: String,
    attempt: u32,
    /// Its context, once its text went out.
    context: Option<String>,
    deadline: Instant,
    got_audio: bool,
    billed: u64,
}

#[derive(Debug)]
pub struct Plan {
    socket: Socket,
    keepalive_every: Duration,
    last_sent: Instant,
    /// Reopened once after a drop; cleared by the next piece spoken in full.
    reopened: bool,
    /// After a failed open, no other before this (the pause doubles, 1 s to 8 s).
    next_open_at: Option<Instant>,
    open_pause: Duration,
    /// The service refused the key (401, 403): nothing is spoken live any more.
    refused: Option<TtsError>,
    queue: VecDeque<TtsJob>,
    current: Option<Current>,
    /// Contexts sent and not yet final (a cut piece's included).
    open: Vec<String>,
    current_turn: u64,
    /// Contexts made so far (the last part of their ids).
    contexts_made: u64,
    ended: bool,
    actions: Vec<Action>,
}

impl Plan {
    /// A worker's plan at its start: the socket is opened at once.
    pub fn new(now: Instant, keepalive_every: Duration) -> Plan {
        Plan {
            socket: Socket::Opening,
            keepalive_every,
            last_sent: now,
            reopened: false,
            next_open_at: None,
            open_pause: Duration::ZERO,
            refused: None,
            queue: VecDeque::new(),
            current: None,
            open: Vec::new(),
            current_turn: 0,
            contexts_made: 0,
            ended: false,
            actions: vec![Action::Open],
        }
    }

    /// The actions queued by the steps so far, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// True once the call ended: the worker closes up and returns.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Contexts open on the socket now.
    #[cfg(test)]
    pub fn open_contexts(&self) -> usize {
        self.open.len()
    }

    /// When the plan next needs a [`Input::Tick`] with nothing else happening.
    pub fn next_deadline(&self) -> Option<Instant> {
        let piece = self.current.as_ref().map(|c| c.deadline);
        let keepalive = (self.socket == Socket::Up).then(|| self.last_sent + self.keepalive_every);
        // A piece waits for the socket's next try.
        let open = self
            .next_open_at
            .filter(|_| self.socket == Socket::Down && self.current.is_some());
        [piece, keepalive, open].into_iter().flatten().min()
    }

    pub fn step(&mut self, now: Instant, input: Input) {
        if self.ended {
            return;
        }
        match input {
            Input::Job(job) => {
                if job.turn < self.current_turn {
                    return;
                }
                match job.speech {
                    Speech::Prewarm => {
                        if self.socket == Socket::Down {
                            self.open_socket(now);
                        }
                    }
                    _ => self.queue.push_back(job),
                }
            }
            Input::Cut(turn) => {
                self.current_turn = self.current_turn.max(turn);
                let current_turn = self.current_turn;
                self.queue.retain(|job| job.turn >= current_turn);
                if let Some(current) = self.current.take_if(|c| c.turn < current_turn) {
                    // Billed all the same: reported with no audio to play.
                    self.out(
                        &current,
                        TtsOut::Done {
                            chars: current.billed,
                        },
                    );
                }
            }
            Input::End => {
                self.ended = true;
                self.queue.clear();
                self.current = None;
                if self.socket != Socket::Down {
                    self.actions.push(Action::Close);
                    self.socket = Socket::Down;
                }
                return;
            }
            Input::Opened => {
                self.socket = Socket::Up;
                self.last_sent = now;
                self.next_open_at = None;
                self.open_pause = Duration::ZERO;
            }
            Input::OpenFailed(err) => {
                self.socket = Socket::Down;
                log::warn!(error:% = err; "tts.open_failed");
                if matches!(
                    err,
                    TtsError::Connect(ConnectError::Refused {
                        status: 401 | 403,
                        ..
                    })
                ) {
                    // A refused key is not tried again: every piece fails at once (the call
                    // apologizes with its pre-rendered phrase, if it has one).
                    self.refused = Some(err.clone());
                }
                self.open_pause = (self.open_pause * 2).clamp(OPEN_PAUSE_MIN, OPEN_PAUSE_MAX);
                self.next_open_at = Some(now + self.open_pause);
                // A piece waiting for this socket fails its attempt.
                if self.current.is_some() {
                    self.piece_failed(now, err);
                }
            }
            Input::Spoke(chars) => {
                self.last_sent = now;
                if chars == 0 {
                    // Nothing to say (blank text): nothing was sent, and no isFinal will come.
                    if let Some(current) = self.current.take() {
                        self.open
                            .retain(|c| Some(c.as_str()) != current.context.as_deref());
                        self.out(
                            &current,
                            TtsOut::Done {
                                chars: current.billed,
                            },
                        );
                    }
                } else if let Some(current) = &mut self.current {
                    current.billed += chars;
                }
            }
            Input::Event(TtsEvent::Audio { context, audio }) => {
                if let Some(current) = self
                    .current
                    .as_mut()
                    .filter(|c| c.context.as_deref() == Some(context.as_str()))
                {
                    current.got_audio = true;
                    let (turn, seq) = (current.turn, current.seq);
                    self.actions.push(Action::Out {
                        turn,
                        seq,
                        out: TtsOut::Audio(audio),
                    });
                }
            }
            Input::Event(TtsEvent::Alignment { context, alignment }) => {
                // Passed on for the audio right after it (the audio is what it describes).
                if let Some(current) = self
                    .current
                    .as_ref()
                    .filter(|c| c.context.as_deref() == Some(context.as_str()))
                {
                    let (turn, seq) = (current.turn, current.seq);
                    self.actions.push(Action::Out {
                        turn,
                        seq,
                        out: TtsOut::Alignment(alignment),
                    });
                }
            }
            Input::Event(TtsEvent::Final { context }) => {
                self.open.retain(|c| *c != context);
                let mine = self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.context.as_deref() == Some(context.as_str()));
                if mine {
                    if let Some(current) = self.current.take() {
                        if !current.got_audio && current.billed > 0 {
                            log::warn!(chars = current.billed; "tts.no_audio");
                            let chars = current.billed;
                            self.current = Some(current);
                            self.piece_failed(now, TtsError::NoAudio { chars });
                        } else {
                            self.reopened = false;
                            self.out(
                                &current,
                                TtsOut::Done {
                                    chars: current.billed,
                                },
                            );
                        }
                    }
                }
            }
            Input::Lost(err) => {
                log::warn!(error:% = err; "tts.socket_lost");
                self.socket = Socket::Down;
                // The contexts die with the socket.
                self.open.clear();
                if self.current.is_some() {
                    self.piece_failed(now, err);
                }
                // A piece being retried opens its own; otherwise once at once.
                if self.current.is_none() && !self.reopened {
                    self.reopened = true;
                    self.open_socket(now);
                }
            }
            Input::Tick => {
                if self.current.as_ref().is_some_and(|c| now >= c.deadline) {
                    // A stalled piece: the socket is given up (its contexts with it) and the
                    // piece tried on a new one.
                    if self.socket != Socket::Down {
                        self.actions.push(Action::Close);
                        self.socket = Socket::Down;
                        self.open.clear();
                    }
                    self.piece_failed(
                        now,
                        TtsError::Closed(format!(
                            "no end of audio within {} s",
                            PIECE_DEADLINE.as_secs()
                        )),
                    );
                } else if self.socket == Socket::Up && now >= self.last_sent + self.keepalive_every
                {
                    self.actions.push(Action::KeepAlive);
                    self.last_sent = now;
                }
            }
        }
        self.advance(now);
    }

    /// Opens the socket, unless a failed open's pause still runs (then a waiting piece opens
    /// it at the pause's end) or the key was refused.
    fn open_socket(&mut self, now: Instant) {
        if self.refused.is_some() || self.next_open_at.is_some_and(|at| now < at) {
            return;
        }
        self.socket = Socket::Opening;
        self.actions.push(Action::Open);
    }

    fn out(&mut self, piece: &Current, out: TtsOut) {
        self.actions.push(Action::Out {
            turn: piece.turn,
            seq: piece.seq,
            out,
        });
    }

    /// The current piece's attempt failed: once more if none of its audio was heard,
    /// otherwise (or the second time) it is reported failed.
    fn piece_failed(&mut self, now: Instant, err: TtsError) {
        let Some(mut current) = self.current.take() else {
            return;
        };
        if current.attempt == 1 && !current.got_audio {
            crate::metrics::EVENTS.provider_retry("elevenlabs_tts", err.metric_kind());
            log::warn!(error:% = err; "tts.retry");
            current.attempt = 2;
            current.context = None;
            current.deadline = now + PIECE_DEADLINE;
            self.current = Some(current);
        } else {
            log::error!(error:% = err, chars = current.billed; "tts.failed");
            self.out(&current, TtsOut::Failed(err));
        }
    }

    /// Starts what can start: clips at the head of the queue play at once, and a piece is
    /// sent when the socket is up and has room for its context.
    fn advance(&mut self, now: Instant) {
        loop {
            if self.current.is_none() {
                let Some(job) = self.queue.pop_front() else {
                    return;
                };
                match job.speech {
                    Speech::Clip(audio) => {
                        for chunk in audio.chunks(CLIP_CHUNK) {
                            self.actions.push(Action::Out {
                                turn: job.turn,
                                seq: job.seq,
                                out: TtsOut::Audio(chunk.to_vec()),
                            });
                        }
                        self.actions.push(Action::Out {
                            turn: job.turn,
                            seq: job.seq,
                            out: TtsOut::Done { chars: 0 },
                        });
                        continue;
                    }
                    Speech::Text(text) => {
                        self.current = Some(Current {
                            turn: job.turn,
                            seq: job.seq,
                            text,
                            attempt: 1,
                            context: None,
                            deadline: now + PIECE_DEADLINE,
                            got_audio: false,
                            billed: 0,
                        });
                    }
                    Speech::Prewarm => continue,
                }
            }
            let Some(current) = &mut self.current else {
                return;
            };
            if current.context.is_some() {
                return;
            }
            if let Some(err) = self.refused.clone() {
                if let Some(current) = self.current.take() {
                    self.out(&current, TtsOut::Failed(err));
                }
                continue;
            }
            match self.socket {
                Socket::Down => {
                    self.open_socket(now);
                    return;
                }
                Socket::Opening => return,
                Socket::Up => {}
            }
            if self.open.len() >= MAX_CONTEXTS {
                // Room comes with the next isFinal (or the piece's deadline).
                return;
            }
            self.contexts_made += 1;
            let context = format!("{}-{}-{}", current.turn, current.seq, self.contexts_made);
            current.context = Some(context.clone());
            self.open.push(context.clone());
            self.actions.push(Action::Speak {
                context,
                text: current.text.clone(),
            });
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::providers::cancel::Cancel;

    const KEEPALIVE: Duration = Duration::from_secs(10);

    fn job(turn: u64, seq: u32, speech: Speech) -> TtsJob {
        TtsJob {
            turn,
            seq,
            speech,
            cancel: Arc::new(Cancel::new()),
        }
    }

    fn text(turn: u64, seq: u32, words: &str) -> Input {
        Input::Job(job(turn, seq, Speech::Text(words.into())))
    }

    fn audio(context: &str) -> Input {
        Input::Event(TtsEvent::Audio {
            context: context.into(),
            audio: vec![0x7F; 160],
        })
    }

    fn fin(context: &str) -> Input {
        Input::Event(TtsEvent::Final {
            context: context.into(),
        })
    }

    /// A plan whose socket is open.
    fn up(t0: Instant) -> Plan {
        let mut plan = Plan::new(t0, KEEPALIVE);
        assert_eq!(
            plan.take_actions(),
            vec![Action::Open],
            "opened at the start"
        );
        plan.step(t0, Input::Opened);
        assert!(plan.take_actions().is_empty());
        plan
    }

    fn speaks(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Speak { context, text } => Some((context.clone(), text.clone())),
                _ => None,
            })
            .collect()
    }

    fn outs(actions: &[Action]) -> Vec<(u64, u32, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Out { turn, seq, out } => Some((
                    *turn,
                    *seq,
                    match out {
                        TtsOut::Audio(_) => "audio".to_string(),
                        TtsOut::Done { chars } => format!("done {chars}"),
                        TtsOut::Failed(_) => "failed".to_string(),
                        TtsOut::Alignment(a) => format!("alignment {}", a.text),
                    },
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pieces_are_spoken_one_context_each_in_order() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "Hello there."));
        plan.step(t0, text(1, 1, "How are you?"));
        let actions = plan.take_actions();
        assert_eq!(
            speaks(&actions),
            vec![("1-0-1".into(), "Hello there.".into())]
        );
        plan.step(t0, Input::Spoke(13));
        plan.step(t0, audio("1-0-1"));
        assert_eq!(outs(&plan.take_actions()), vec![(1, 0, "audio".into())]);
        plan.step(t0, fin("1-0-1"));
        let actions = plan.take_actions();
        assert_eq!(outs(&actions), vec![(1, 0, "done 13".into())]);
        assert_eq!(
            speaks(&actions),
            vec![("1-1-2".into(), "How are you?".into())]
        );
        assert_eq!(plan.open_contexts(), 1);
    }

    #[test]
    fn an_alignment_goes_to_the_call_before_its_audio_and_only_for_the_current_piece() {
        use crate::providers::elevenlabs_tts::{AlignedChar, Alignment};
        let alignment = |context: &str, text: &str| {
            Input::Event(TtsEvent::Alignment {
                context: context.into(),
                alignment: Alignment {
                    text: text.into(),
                    chars: vec![AlignedChar {
                        end: text.len(),
                        start_ms: 0,
                        end_ms: 60,
                    }],
                },
            })
        };
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "Hi."));
        plan.step(t0, Input::Spoke(4));
        plan.take_actions();
        plan.step(t0, alignment("1-0-1", "H"));
        plan.step(t0, audio("1-0-1"));
        // A context that is not the piece's (a cut piece's late words) is dropped.
        plan.step(t0, alignment("0-9-9", "x"));
        assert_eq!(
            outs(&plan.take_actions()),
            vec![(1, 0, "alignment H".into()), (1, 0, "audio".into())]
        );
    }

    #[test]
    fn a_clip_plays_in_its_place_between_pieces() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "One."));
        plan.step(
            t0,
            Input::Job(job(1, 1, Speech::Clip(Arc::new(vec![1; 4000])))),
        );
        plan.step(t0, text(1, 2, "Two."));
        plan.take_actions();
        plan.step(t0, Input::Spoke(5));
        plan.step(t0, audio("1-0-1"));
        plan.step(t0, fin("1-0-1"));
        let actions = plan.take_actions();
        assert_eq!(
            outs(&actions),
            vec![
                (1, 0, "audio".into()),
                (1, 0, "done 5".into()),
                (1, 1, "audio".into()),
                (1, 1, "audio".into()),
                (1, 1, "done 0".into()),
            ]
        );
        assert_eq!(speaks(&actions), vec![("1-2-2".into(), "Two.".into())]);
    }

    #[test]
    fn a_cut_drops_older_turns_and_their_late_audio() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "A long answer."));
        plan.step(t0, text(1, 1, "And more."));
        plan.step(t0, Input::Spoke(15));
        plan.take_actions();
        plan.step(t0, Input::Cut(2));
        assert_eq!(outs(&plan.take_actions()), vec![(1, 0, "done 15".into())]);
        // Its audio still arrives (a flushed context finishes): nothing of it goes out.
        plan.step(t0, audio("1-0-1"));
        assert!(plan.take_actions().is_empty());
        // A late job of the old turn is dropped; the new turn speaks at once.
        plan.step(t0, text(1, 2, "Stale."));
        plan.step(t0, text(2, 0, "Yes?"));
        assert_eq!(
            speaks(&plan.take_actions()),
            vec![("2-0-2".into(), "Yes?".into())]
        );
        // The cut context counts until its isFinal.
        assert_eq!(plan.open_contexts(), 2);
        plan.step(t0, fin("1-0-1"));
        assert!(outs(&plan.take_actions()).is_empty());
        assert_eq!(plan.open_contexts(), 1);
    }

    #[test]
    fn no_more_contexts_than_the_service_allows() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        // Five barge-ins in a row, each leaving a context whose isFinal has not come yet.
        for turn in 1..=5u64 {
            plan.step(t0, text(turn, 0, "Words."));
            plan.step(t0, Input::Cut(turn + 1));
        }
        plan.take_actions();
        assert_eq!(plan.open_contexts(), MAX_CONTEXTS);
        plan.step(t0, text(6, 0, "Wait for room."));
        assert!(speaks(&plan.take_actions()).is_empty(), "a sixth waits");
        plan.step(t0, fin("2-0-2"));
        assert_eq!(
            speaks(&plan.take_actions()),
            vec![("6-0-6".into(), "Wait for room.".into())]
        );
    }

    #[test]
    fn a_piece_lost_with_its_socket_is_retried_once_on_a_new_socket() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "Retry me."));
        plan.step(t0, Input::Spoke(10));
        plan.take_actions();
        plan.step(t0, Input::Lost(TtsError::Closed("reset".into())));
        assert_eq!(plan.take_actions(), vec![Action::Open]);
        plan.step(t0, Input::Opened);
        assert_eq!(
            speaks(&plan.take_actions()),
            vec![("1-0-2".into(), "Retry me.".into())]
        );
        plan.step(t0, Input::Spoke(10));
        plan.step(t0, Input::Lost(TtsError::Closed("reset again".into())));
        let actions = plan.take_actions();
        assert_eq!(outs(&actions), vec![(1, 0, "failed".into())]);
        // The socket is reopened at once for what comes next.
        assert!(actions.contains(&Action::Open));
        plan.step(t0, text(1, 1, "Next."));
        assert!(plan.take_actions().is_empty(), "waits for the socket");
        plan.step(t0, Input::Opened);
        assert_eq!(
            speaks(&plan.take_actions()),
            vec![("1-1-3".into(), "Next.".into())]
        );
    }

    #[test]
    fn a_piece_that_ends_mute_is_retried_then_failed() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "Silent."));
        plan.step(t0, Input::Spoke(8));
        plan.step(t0, fin("1-0-1"));
        assert_eq!(
            speaks(&plan.take_actions()),
            vec![
                ("1-0-1".into(), "Silent.".into()),
                ("1-0-2".into(), "Silent.".into())
            ]
        );
        plan.step(t0, Input::Spoke(8));
        plan.step(t0, fin("1-0-2"));
        let actions = plan.take_actions();
        match actions.as_slice() {
            [Action::Out {
                out: TtsOut::Failed(TtsError::NoAudio { chars: 16 }),
                ..
            }] => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_piece_that_failed_after_its_audio_began_is_not_repeated() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "Half."));
        plan.step(t0, Input::Spoke(6));
        plan.step(t0, audio("1-0-1"));
        plan.take_actions();
        plan.step(t0, Input::Lost(TtsError::Closed("gone".into())));
        let actions = plan.take_actions();
        assert_eq!(outs(&actions), vec![(1, 0, "failed".into())]);
        // Idle now: the dropped socket is reopened once, at once.
        assert!(actions.contains(&Action::Open));
    }

    #[test]
    fn an_idle_drop_is_reopened_once_then_on_demand() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, Input::Lost(TtsError::Closed("idle".into())));
        assert_eq!(plan.take_actions(), vec![Action::Open]);
        plan.step(t0, Input::OpenFailed(TtsError::Closed("refused".into())));
        assert!(plan.take_actions().is_empty(), "not retried in a loop");
        // A piece waits for the pause after the failed open, then opens the socket.
        plan.step(t0, text(1, 0, "Hello."));
        assert!(plan.take_actions().is_empty());
        assert_eq!(plan.next_deadline(), Some(t0 + OPEN_PAUSE_MIN));
        plan.step(t0 + OPEN_PAUSE_MIN, Input::Tick);
        assert_eq!(plan.take_actions(), vec![Action::Open]);
    }

    #[test]
    fn failed_opens_are_paced_and_a_refused_key_is_not_tried_again() {
        let t0 = Instant::now();
        let mut plan = Plan::new(t0, KEEPALIVE);
        plan.take_actions();
        plan.step(t0, text(1, 0, "One."));
        plan.step(t0, Input::OpenFailed(TtsError::Closed("timed out".into())));
        // The piece's retry waits 1 s, and a second failure doubles the pause.
        assert!(plan.take_actions().is_empty());
        plan.step(t0 + OPEN_PAUSE_MIN, Input::Tick);
        assert_eq!(plan.take_actions(), vec![Action::Open]);
        let t1 = t0 + OPEN_PAUSE_MIN;
        plan.step(t1, Input::OpenFailed(TtsError::Closed("timed out".into())));
        assert_eq!(outs(&plan.take_actions()), vec![(1, 0, "failed".into())]);
        plan.step(t1, text(1, 1, "Two."));
        assert!(plan.take_actions().is_empty());
        assert_eq!(plan.next_deadline(), Some(t1 + OPEN_PAUSE_MIN * 2));
        plan.step(t1 + OPEN_PAUSE_MIN * 2, Input::Tick);
        assert_eq!(plan.take_actions(), vec![Action::Open]);
        // A refused key: this piece and every later one fail at once, with no new socket.
        let t2 = t1 + OPEN_PAUSE_MIN * 2;
        let refused = TtsError::Connect(ConnectError::Refused {
            status: 401,
            body: "Invalid API key".into(),
        });
        plan.step(t2, Input::OpenFailed(refused));
        plan.step(t2, text(1, 2, "Three."));
        assert_eq!(
            outs(&plan.take_actions()),
            vec![(1, 1, "failed".into()), (1, 2, "failed".into())]
        );
        plan.step(t2 + OPEN_PAUSE_MAX, Input::Tick);
        assert!(plan.take_actions().is_empty(), "never opened again");
    }

    #[test]
    fn a_blank_piece_is_done_at_once() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "   "));
        plan.step(t0, text(1, 1, "Next."));
        plan.take_actions();
        // Nothing was sent for it, so no isFinal will come.
        plan.step(t0, Input::Spoke(0));
        let actions = plan.take_actions();
        assert_eq!(outs(&actions), vec![(1, 0, "done 0".into())]);
        assert_eq!(speaks(&actions), vec![("1-1-2".into(), "Next.".into())]);
        assert_eq!(plan.open_contexts(), 1);
    }

    #[test]
    fn a_stalled_piece_gives_up_its_socket_at_the_deadline() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "Stalls."));
        plan.take_actions();
        let due = plan.next_deadline().expect("a deadline");
        assert_eq!(due, t0 + KEEPALIVE.min(PIECE_DEADLINE));
        plan.step(t0 + PIECE_DEADLINE, Input::Tick);
        assert_eq!(plan.take_actions(), vec![Action::Close, Action::Open]);
    }

    #[test]
    fn an_idle_socket_is_kept_alive_and_nothing_wakes_before() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        assert_eq!(plan.next_deadline(), Some(t0 + KEEPALIVE));
        plan.step(t0 + KEEPALIVE - Duration::from_millis(1), Input::Tick);
        assert!(plan.take_actions().is_empty());
        plan.step(t0 + KEEPALIVE, Input::Tick);
        assert_eq!(plan.take_actions(), vec![Action::KeepAlive]);
        assert_eq!(plan.next_deadline(), Some(t0 + KEEPALIVE * 2));
    }

    #[test]
    fn the_end_closes_the_socket_and_stops_everything() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, text(1, 0, "Bye."));
        plan.take_actions();
        plan.step(t0, Input::End);
        assert_eq!(plan.take_actions(), vec![Action::Close]);
        assert!(plan.ended());
        plan.step(t0, text(1, 1, "Too late."));
        assert!(plan.take_actions().is_empty());
    }

    #[test]
    fn a_prewarm_reopens_a_socket_that_is_down() {
        let t0 = Instant::now();
        let mut plan = up(t0);
        plan.step(t0, Input::Job(job(1, u32::MAX, Speech::Prewarm)));
        assert!(plan.take_actions().is_empty(), "already open");
        plan.step(t0, Input::Lost(TtsError::Closed("x".into())));
        plan.take_actions();
        plan.step(t0, Input::OpenFailed(TtsError::Closed("y".into())));
        plan.step(t0, Input::Job(job(1, u32::MAX, Speech::Prewarm)));
        assert!(plan.take_actions().is_empty(), "not within the pause");
        let later = t0 + OPEN_PAUSE_MIN;
        plan.step(later, Input::Job(job(1, u32::MAX, Speech::Prewarm)));
        assert_eq!(plan.take_actions(), vec![Action::Open]);
    }
}
