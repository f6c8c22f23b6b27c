//! The text-to-speech worker: carries out what [`Plan`] decides, on one multi-context socket
//! for the whole call ([`TtsSocket`]).
//!
//! It waits with `poll(2)` on two descriptors and the plan's next deadline, never on a tick:
//! the socket (non-blocking; read until WouldBlock, which also empties rustls' and
//! tungstenite's buffers, so readiness stays the whole truth; POLLOUT while a message waits)
//! and the wake-up end of its [`TtsHandle`], which the call writes to after queueing a job,
//! cutting a turn (barge-in) or ending the call. A barge-in reaches the worker at once and
//! costs the socket nothing.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use super::tts_plan::{Action, Input, Plan};
use super::{TtsJob, TtsOut};
use crate::call::Event;
use crate::metrics::EVENTS;
use crate::poll::{self, WakeReceiver, WakeSender, Watch};
use crate::providers::elevenlabs_tts::{TtsError, TtsSettings, TtsSocket};

/// What the call tells the worker besides its jobs.
#[derive(Debug, Default)]
struct Control {
    ended: bool,
    /// Pieces of turns below this one are cut.
    current_turn: u64,
}

#[derive(Debug)]
struct Shared {
    control: Mutex<Control>,
    wake: WakeSender,
}

impl Shared {
    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A channel for a call's speech holding at most `cap` jobs, with a wake-up descriptor for the
/// worker. Fails only when the process has no descriptors left for the wake-up pair.
pub fn tts_channel(cap: usize) -> io::Result<(TtsHandle, TtsInbox)> {
    let (wake_tx, wake_rx) = poll::wake_pair()?;
    let (tx, rx) = bounded(cap);
    let shared = Arc::new(Shared {
        control: Mutex::new(Control::default()),
        wake: wake_tx,
    });
    Ok((
        TtsHandle {
            tx,
            shared: shared.clone(),
        },
        TtsInbox {
            rx,
            shared,
            wake: wake_rx,
        },
    ))
}

/// The call's end of its text-to-speech worker. Dropping it ends the worker as
/// [`TtsHandle::shutdown`] does.
#[derive(Debug)]
pub struct TtsHandle {
    tx: Sender<TtsJob>,
    shared: Arc<Shared>,
}

impl TtsHandle {
    /// Queues a job and wakes the worker. Never blocks: a full queue is the caller's to handle.
    pub fn send(&self, job: TtsJob) -> Result<(), TrySendError<TtsJob>> {
        self.tx.try_send(job)?;
        self.shared.wake.wake();
        Ok(())
    }

    /// The call moved on to `turn` (barge-in, a new utterance): the older turns' speech stops
    /// now, the piece being spoken included.
    pub fn cut_turns_before(&self, turn: u64) {
        {
            let mut control = self.shared.control();
            control.current_turn = control.current_turn.max(turn);
        }
        self.shared.wake.wake();
    }

    /// The call ended: the worker closes its socket (`close_socket`) and returns, whatever it
    /// was doing.
    pub fn shutdown(&self) {
        self.shared.control().ended = true;
        self.shared.wake.wake();
    }
}

impl Drop for TtsHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The worker's end: jobs, the call's cuts and end, and the descriptor that wakes it.
#[derive(Debug)]
pub struct TtsInbox {
    rx: Receiver<TtsJob>,
    shared: Arc<Shared>,
    wake: WakeReceiver,
}

/// Text-to-speech for one call, until the call ends it (or its events channel is gone).
pub fn tts(settings: &TtsSettings, voice: &str, inbox: &TtsInbox, out: &Sender<Event>) {
    // Half the service's inactivity limit: the socket never comes near it.
    let keepalive = Duration::from_secs(u64::from(settings.inactivity_secs.clamp(2, 180)) / 2);
    let mut plan = Plan::new(Instant::now(), keepalive);
    let mut socket: Option<TtsSocket> = None;
    let mut events = Vec::new();
    let mut seen_turn = 0;
    loop {
        // Carrying out an action may queue more (an open socket lets a piece go out).
        loop {
            let actions = plan.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                if matches!(action, Action::Open) {
                    // A connect blocks (up to its timeout): the call's end or a cut that came
                    // meanwhile is taken first, and may make it unneeded.
                    let (ended, turn) = {
                        let control = inbox.shared.control();
                        (control.ended, control.current_turn)
                    };
                    if ended {
                        plan.step(Instant::now(), Input::End);
                    } else if turn > seen_turn {
                        seen_turn = turn;
                        plan.step(Instant::now(), Input::Cut(turn));
                    }
                }
                // Once the call has ended only the socket's close is carried out (it comes in
                // the next batch); what else this batch held is dropped.
                if plan.ended() && !matches!(action, Action::Close) {
                    continue;
                }
                if !perform(action, settings, voice, &mut socket, &mut plan, out) {
                    plan.step(Instant::now(), Input::End);
                }
            }
        }
        if plan.ended() {
            break;
        }
        let provider = socket.as_ref().and_then(|live| {
            live.fd()
                .map(|fd| Watch::read_write(fd, live.wants_write()))
        });
        let (woken, readable, writable) =
            match poll::wait_either(Watch::read(inbox.wake.fd()), provider, plan.next_deadline()) {
                Ok((wake, provider)) => (
                    wake.readable(),
                    provider.as_ref().is_some_and(Watch::readable),
                    provider.as_ref().is_some_and(Watch::writable),
                ),
                Err(err) => {
                    // Not expected (poll fails only on bad arguments): the call cannot speak.
                    log::error!(error:% = err; "tts.wait_failed");
                    plan.step(Instant::now(), Input::End);
                    continue;
                }
            };
        let now = Instant::now();
        if woken {
            let open = inbox.wake.drain();
            let (ended, turn) = {
                let control = inbox.shared.control();
                (control.ended, control.current_turn)
            };
            if ended || !open {
                plan.step(now, Input::End);
                continue;
            }
            if turn > seen_turn {
                seen_turn = turn;
                plan.step(now, Input::Cut(turn));
            }
            for job in inbox.rx.try_iter() {
                plan.step(now, Input::Job(job));
            }
        }
        if let Some(live) = socket.as_mut() {
            let mut result = Ok(());
            if writable {
                result = live.flush();
            }
            if result.is_ok() && (readable || writable) {
                result = live.read_events(&mut events);
            }
            for event in events.drain(..) {
                plan.step(now, Input::Event(event));
            }
            if let Err(err) = result {
                if let Some(gone) = socket.take() {
                    gone.close();
                }
                plan.step(now, Input::Lost(err));
            }
        }
        plan.step(now, Input::Tick);
    }
}

/// Carries out one action; false when the call's event channel is gone (nobody listens).
fn perform(
    action: Action,
    settings: &TtsSettings,
    voice: &str,
    socket: &mut Option<TtsSocket>,
    plan: &mut Plan,
    out: &Sender<Event>,
) -> bool {
    match action {
        Action::Open => {
            if let Some(old) = socket.take() {
                old.close();
            }
            // Blocking, bounded by the connect timeout.
            let input = match TtsSocket::open(settings, voice) {
                Ok(opened) => {
                    *socket = Some(opened);
                    Input::Opened
                }
                Err(err) => Input::OpenFailed(err),
            };
            // The handshake went deep; the worker goes on in a few KiB.
            crate::stack::release_unused();
            plan.step(Instant::now(), input);
        }
        Action::Speak { context, text } => {
            let result = match socket.as_mut() {
                Some(live) => live.speak(&context, &text),
                None => Err(TtsError::Closed("no socket".into())),
            };
            let input = match result {
                Ok(chars) => Input::Spoke(chars),
                Err(err) => {
                    if let Some(gone) = socket.take() {
                        gone.close();
                    }
                    Input::Lost(err)
                }
            };
            plan.step(Instant::now(), input);
        }
        Action::KeepAlive => {
            if let Some(Err(err)) = socket.as_mut().map(TtsSocket::keep_alive) {
                if let Some(gone) = socket.take() {
                    gone.close();
                }
                plan.step(Instant::now(), Input::Lost(err));
            }
        }
        Action::Close => {
            if let Some(gone) = socket.take() {
                gone.close();
            }
        }
        Action::Out { turn, seq, out: o } => {
            if let TtsOut::Failed(err) = &o {
                let kind = err.metric_kind();
                EVENTS.tts_failures.inc(&[("kind", kind)]);
                EVENTS.provider_error("elevenlabs_tts", kind);
            }
            let event = Event::Tts { turn, seq, out: o };
            if out.send(event).is_err() {
                return false;
            }
        }
    }
    true
}
