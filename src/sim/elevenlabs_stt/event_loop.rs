//! One thread for every STT session ([`super::SttSim::one_loop`]): the connection thread does
//! the handshakes (TLS, WebSocket) and hands the open session over; `sim-stt-loop` then holds
//! every session's non-blocking socket in one epoll set and answers each client message with
//! the same [`Transcriber`] a session's own thread would use. A commit is due the service's
//! processing time after the chunk that ended its utterance: a deadline, not a sleep.
//!
//! With a thread per session, each of Twilio's 50 frames a second per call wakes a thread of
//! its own; on one loop, the frames of many calls that arrive together are read in one
//! wake-up. The loop ends once the simulator is gone (its handle dropped) and its last session
//! has closed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::Value;
use tungstenite::{Message, WebSocket};

use super::{lock, Reply, State, Transcriber};
use crate::poll::{self, Epoll, WakeReceiver, WakeSender};
use crate::providers::ws::is_timeout;
use crate::sim::listener::SimStream;

/// Sessions handed over and not yet taken by the loop, at most (a connection thread finding
/// the queue full serves its session itself).
const HANDOFF_QUEUE: usize = 1024;
/// The wake-up descriptor's token; a session's is its slot.
const WAKE: u64 = u64::MAX;

/// A session whose handshake is done, for the loop to serve.
pub(super) struct Handoff {
    pub socket: WebSocket<SimStream>,
    pub transcriber: Transcriber,
    pub state: Arc<Mutex<State>>,
    pub commit_latency: Duration,
}

/// The way to the loop, kept in the simulator's state; dropping it tells the loop to end
/// once its sessions have.
pub(super) struct LoopHandle {
    handoffs: Sender<Handoff>,
    wake: WakeSender,
}

/// Gives `handoff` to the loop (starting it the first time). Hands it back when the loop cannot
/// take it, so the caller serves the session itself.
pub(super) fn hand_off(handoff: Handoff, state: &Mutex<State>) -> Result<(), Box<Handoff>> {
    let mut state = lock(state);
    if state.event_loop.is_none() {
        match start() {
            Ok(handle) => state.event_loop = Some(handle),
            Err(err) => {
                log::warn!("the STT simulator's loop could not start: {err}");
                return Err(Box::new(handoff));
            }
        }
    }
    let Some(handle) = &state.event_loop else {
        return Err(Box::new(handoff));
    };
    if let Err(err) = handoff.socket.get_ref().set_nonblocking(true) {
        log::warn!("an STT session stays on its thread: {err}");
        return Err(Box::new(handoff));
    }
    match handle.handoffs.try_send(handoff) {
        Ok(()) => {
            handle.wake.wake();
            Ok(())
        }
        Err(TrySendError::Full(handoff) | TrySendError::Disconnected(handoff)) => {
            let _ = handoff.socket.get_ref().set_nonblocking(false);
            Err(Box::new(handoff))
        }
    }
}

fn start() -> io::Result<LoopHandle> {
    let (wake, woken) = poll::wake_pair()?;
    let (handoffs, taken) = crossbeam_channel::bounded(HANDOFF_QUEUE);
    let epoll = Epoll::new()?;
    std::thread::Builder::new()
        .name("sim-stt-loop".into())
        .spawn(move || run(epoll, &taken, &woken))?;
    Ok(LoopHandle { handoffs, wake })
}

/// One session on the loop.
struct Session {
    socket: WebSocket<SimStream>,
    transcriber: Transcriber,
    state: Arc<Mutex<State>>,
    commit_latency: Duration,
    /// Commits waiting for their time: when, the words, how long they were spoken.
    commits: VecDeque<(Instant, String, f64)>,
    /// The socket holds data it could not write yet, and whether epoll watches for room.
    unflushed: bool,
    watching_writes: bool,
    /// Over: to be removed from the loop.
    ended: bool,
}

impl Session {
    fn send(&mut self, value: Value) {
        match self.socket.send(Message::text(value.to_string())) {
            Ok(()) => {}
            // Queued in the socket's buffer; flushed when there is room.
            Err(err) if is_timeout(&err) => self.unflushed = true,
            Err(_) => self.ended = true,
        }
    }

    fn flush(&mut self) {
        match self.socket.flush() {
            Ok(()) => self.unflushed = false,
            Err(err) if is_timeout(&err) => {}
            Err(_) => self.ended = true,
        }
    }

    /// Reads and answers everything that has arrived; returns when a commit was scheduled
    /// (its time), for the loop's deadlines.
    fn read_all(&mut self, commits_due: &mut Vec<Instant>) {
        loop {
            let message = match self.socket.read() {
                Ok(message) => message,
                Err(err) if is_timeout(&err) => return,
                Err(_) => {
                    self.ended = true;
                    return;
                }
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(_) => {
                    // The queued close reply completes the closing handshake.
                    let _ = self.socket.flush();
                    self.ended = true;
                    return;
                }
                _ => continue,
            };
            match self
                .transcriber
                .hear(text.as_str(), Instant::now(), &self.state)
            {
                Reply::Nothing => {}
                Reply::Send(value, partial) => {
                    self.send(value);
                    self.transcriber.sent_partial(partial);
                }
                Reply::Commit(words, speech_secs) => {
                    let at = Instant::now() + self.commit_latency;
                    self.commits.push_back((at, words, speech_secs));
                    commits_due.push(at);
                }
                // Sessions with faults are not handed to the loop; should one come, it ends.
                Reply::Fail(value) => {
                    self.send(value);
                    let _ = self.socket.close(None);
                    let _ = self.socket.flush();
                    self.ended = true;
                }
                Reply::Drop => self.ended = true,
            }
            if self.ended {
                return;
            }
        }
    }

    /// Sends the commits whose time has come.
    fn commit_due(&mut self, now: Instant) {
        while self.commits.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, words, speech_secs)) = self.commits.pop_front() else {
                break;
            };
            let (commit, timestamped) = self.transcriber.commit(&words, speech_secs);
            self.send(commit);
            self.transcriber.sent_commit(&words);
            if let Some(timestamped) = timestamped {
                self.send(timestamped);
            }
        }
    }

    /// Watches the socket for room to write exactly while it holds unwritten data.
    fn watch_writes(&mut self, epoll: &mut Epoll, token: u64) {
        if self.unflushed != self.watching_writes {
            match epoll.modify(self.socket.get_ref().as_fd(), token, self.unflushed) {
                Ok(()) => self.watching_writes = self.unflushed,
                Err(_) => self.ended = true,
            }
        }
    }
}

fn run(mut epoll: Epoll, taken: &Receiver<Handoff>, woken: &WakeReceiver) {
    let mut sessions: Vec<Option<Session>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut live = 0usize;
    // When commits are due, and on which slot (an entry whose session ended is skipped).
    let mut deadlines: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut handle_open = epoll.add(woken.fd(), WAKE, false).is_ok();
    let mut ready = Vec::new();
    let mut scheduled = Vec::new();
    while handle_open || live > 0 {
        let deadline = deadlines.peek().map(|Reverse((at, _))| *at);
        if epoll.wait(&mut ready, deadline).is_err() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        for event in &ready {
            let slot = if event.token == WAKE {
                if !woken.drain() {
                    // The simulator is gone: no session will come any more.
                    handle_open = false;
                    let _ = epoll.remove(woken.fd());
                }
                for handoff in taken.try_iter() {
                    let slot = free.pop().unwrap_or_else(|| {
                        sessions.push(None);
                        sessions.len() - 1
                    });
                    if epoll
                        .add(handoff.socket.get_ref().as_fd(), slot as u64, false)
                        .is_err()
                    {
                        free.push(slot);
                        continue;
                    }
                    sessions[slot] = Some(Session {
                        socket: handoff.socket,
                        transcriber: handoff.transcriber,
                        state: handoff.state,
                        commit_latency: handoff.commit_latency,
                        commits: VecDeque::new(),
                        unflushed: false,
                        watching_writes: false,
                        ended: false,
                    });
                    live += 1;
                    // What arrived before the socket was watched is read now.
                    serve(&mut sessions, slot, true, false, &mut scheduled);
                    settle(&mut sessions, slot, &mut epoll, &mut free, &mut live);
                    deadlines.extend(scheduled.drain(..).map(|at| Reverse((at, slot))));
                }
                continue;
            } else {
                match usize::try_from(event.token) {
                    Ok(slot) => slot,
                    Err(_) => continue,
                }
            };
            serve(
                &mut sessions,
                slot,
                event.readable,
                event.writable,
                &mut scheduled,
            );
            settle(&mut sessions, slot, &mut epoll, &mut free, &mut live);
            deadlines.extend(scheduled.drain(..).map(|at| Reverse((at, slot))));
        }
        let now = Instant::now();
        while let Some(Reverse((at, slot))) = deadlines.peek().copied() {
            if at > now {
                break;
            }
            deadlines.pop();
            if let Some(Some(session)) = sessions.get_mut(slot) {
                session.commit_due(now);
            }
            settle(&mut sessions, slot, &mut epoll, &mut free, &mut live);
        }
    }
}

/// Lets the session in `slot` read (and write what waits), as `readable` and `writable` say.
fn serve(
    sessions: &mut [Option<Session>],
    slot: usize,
    readable: bool,
    writable: bool,
    scheduled: &mut Vec<Instant>,
) {
    let Some(Some(session)) = sessions.get_mut(slot) else {
        return;
    };
    if writable && session.unflushed {
        session.flush();
    }
    if readable {
        session.read_all(scheduled);
    }
}

/// After a session acted: removes it if it ended, else watches its socket as it now needs.
fn settle(
    sessions: &mut [Option<Session>],
    slot: usize,
    epoll: &mut Epoll,
    free: &mut Vec<usize>,
    live: &mut usize,
) {
    let Some(entry) = sessions.get_mut(slot) else {
        return;
    };
    let Some(session) = entry else { return };
    if !session.ended {
        session.watch_writes(epoll, slot as u64);
    }
    if session.ended {
        let _ = epoll.remove(session.socket.get_ref().as_fd());
        *entry = None;
        free.push(slot);
        *live = live.saturating_sub(1);
    }
}
