//! The process-wide count of live calls, read by `/health` and `/metrics` and used for the
//! admission cap. A call holds a [`CallSlot`]; dropping it (however the call ends) frees it.
//!
//! A call's threads are started through its slot ([`CallSlot::spawn`]) and each holds a share
//! of it: a thread that outlives its call (a provider connect still timing out) keeps counting
//! against `MAX_CONCURRENT_CALLS` until it ends, so the cap bounds threads, not just calls.
//!
//! The end of the shutdown drain reaches every live call as an event, not a flag to poll: each
//! slot holds a receiver of one channel on which nothing is ever sent, and
//! [`CallRegistry::end_all`] closes it, which wakes every call waiting on it at once.
//!
//! A live call can also be told something by its CallSid from outside its threads (a webhook
//! of Twilio's: who answered it): the call listens ([`CallSlot::listen`]) with a function that
//! hands a [`Notice`] to its input channel without blocking, and [`CallRegistry::notify`]
//! calls it. A notice for a call whose stream has not started yet is kept (bounded in count
//! and age) and handed over when the call starts listening.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::twilio::amd::AnsweredBy;

/// Notices kept for calls not yet listening: far more than calls whose stream is still
/// opening at once (Twilio opens it within a second or two of fetching our TwiML).
pub const MAX_EARLY_NOTICES: usize = 256;
/// How long a kept notice waits for its call's stream.
pub const EARLY_NOTICE_AGE: Duration = Duration::from_secs(120);

/// Something a live call is told from outside its threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Twilio's answering-machine detection said who took the call.
    AnsweredBy(AnsweredBy),
}

/// What became of a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to the live call.
    Delivered,
    /// The call is not listening (its stream has not started, or it is over): kept for a
    /// while in case it starts.
    Kept,
    /// The call's input channel was full or closed: the notice is lost.
    Refused,
}

/// How a listening call takes a notice: without blocking, `false` when it cannot.
type Deliver = Box<dyn Fn(Notice) -> bool + Send>;

#[derive(Default)]
struct Inboxes {
    /// Listening calls by CallSid, each with its registration's number.
    live: HashMap<String, (u64, Deliver)>,
    /// Notices for calls not listening yet, oldest first, with when they came.
    early: VecDeque<(String, Notice, Instant)>,
}

#[derive(Debug)]
pub struct CallRegistry {
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Dropped by `end_all` (the channel's closing is the signal; it carries nothing).
    ending: Mutex<Option<Sender<()>>>,
    ended: Receiver<()>,
    /// A test hook: threads whose name ends with this are refused as the system would refuse
    /// them (`None`, always in production: every thread is started).
    refuse_threads: Mutex<Option<String>>,
    inboxes: Mutex<Inboxes>,
    registrations: AtomicU64,
}

impl std::fmt::Debug for Inboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inboxes")
            .field("live", &self.live.len())
            .field("early", &self.early.len())
            .finish()
    }
}

impl Default for CallRegistry {
    fn default() -> CallRegistry {
        // Capacity 0 and never sent on: only its closing means something.
        let (ending, ended) = crossbeam_channel::bounded(0);
        CallRegistry {
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            ending: Mutex::new(Some(ending)),
            ended,
            refuse_threads: Mutex::new(None),
            inboxes: Mutex::new(Inboxes::default()),
            registrations: AtomicU64::new(0),
        }
    }
}

/// A live call's place in the registry; released when the call and every thread it started
/// are done with it. A clone is one more holder of the same place (a thread of the call that
/// starts threads of its own).
#[derive(Clone, Debug)]
pub struct CallSlot {
    share: Arc<Place>,
}

/// The place itself: freed when its last holder (the call, a thread of it) drops it.
#[derive(Debug)]
struct Place {
    registry: Arc<CallRegistry>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.registry.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call listening for notices; it stops when this is dropped.
pub struct Listening {
    registry: Arc<CallRegistry>,
    call_sid: String,
    registration: u64,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut inboxes = self.registry.inboxes();
        // Only its own registration: a later stream of the same SID may have replaced it.
        if inboxes
            .live
            .get(&self.call_sid)
            .is_some_and(|(n, _)| *n == self.registration)
        {
            inboxes.live.remove(&self.call_sid);
        }
    }
}

impl CallSlot {
    /// From now until the returned guard is dropped, notices for `call_sid` go to `deliver`
    /// (which must not block: it runs on the notifier's thread). Notices kept for it before
    /// are handed over at once, oldest first.
    pub fn listen(
        &self,
        call_sid: &str,
        deliver: impl Fn(Notice) -> bool + Send + 'static,
    ) -> Listening {
        let registry = &self.share.registry;
        let registration = registry.registrations.fetch_add(1, Ordering::Relaxed);
        let mut inboxes = registry.inboxes();
        let mut kept = VecDeque::new();
        inboxes.early.retain(|(sid, notice, _)| {
            let mine = sid == call_sid;
            if mine {
                kept.push_back(*notice);
            }
            !mine
        });
        for notice in kept {
            if !deliver(notice) {
                log::warn!(callSid = call_sid; "call.notice.refused: the call's inputs are full");
            }
        }
        inboxes
            .live
            .insert(call_sid.to_string(), (registration, Box::new(deliver)));
        Listening {
            registry: Arc::clone(registry),
            call_sid: call_sid.to_string(),
            registration,
        }
    }

    /// Closes (reports disconnected) when the call must end because the server is stopping.
    pub fn ending(&self) -> &Receiver<()> {
        &self.share.registry.ended
    }

    /// Starts a named thread of this call; it holds the call's place until it ends. An error
    /// is the system's refusal (no memory for the stack, the task limit): the caller refuses
    /// the call.
    pub fn spawn<F>(&self, name: String, stack: usize, f: F) -> io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let refused = self
            .share
            .registry
            .refuse_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|suffix| name.ends_with(suffix.as_str()));
        if refused {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "refused by the test hook",
            ));
        }
        let place = self.share.clone();
        // The call's threads log its CallSid on every line.
        let call = crate::logging::current_call();
        std::thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(move || {
                let _place = place;
                let _call = crate::logging::enter_call(call);
                f();
            })
    }
}

impl CallRegistry {
    /// Takes a slot if fewer than `limit` calls are live. The check and the increment are one
    /// atomic step, so concurrent admissions never overshoot the cap.
    pub fn try_admit(registry: &Arc<CallRegistry>, limit: usize) -> Option<CallSlot> {
        registry
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|previous| {
                registry.peak.fetch_max(previous + 1, Ordering::AcqRel);
                CallSlot {
                    share: Arc::new(Place {
                        registry: Arc::clone(registry),
                    }),
                }
            })
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Tells every live call to end now.
    pub fn end_all(&self) {
        self.ending.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn must_end(&self) -> bool {
        self.ending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Tests: refuse every call thread whose name ends with `suffix` (`None`: none), as the
    /// system refuses a thread it has no room for.
    #[doc(hidden)]
    pub fn refuse_threads_named(&self, suffix: Option<&str>) {
        *self
            .refuse_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = suffix.map(str::to_string);
    }

    /// Tells the call `call_sid` about `notice`, without blocking (see the module docs).
    pub fn notify(&self, call_sid: &str, notice: Notice) -> Delivery {
        self.notify_at(call_sid, notice, Instant::now())
    }

    fn notify_at(&self, call_sid: &str, notice: Notice, now: Instant) -> Delivery {
        let mut inboxes = self.inboxes();
        if let Some((_, deliver)) = inboxes.live.get(call_sid) {
            return if deliver(notice) {
                Delivery::Delivered
            } else {
                Delivery::Refused
            };
        }
        while inboxes
            .early
            .front()
            .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) >= EARLY_NOTICE_AGE)
        {
            inboxes.early.pop_front();
        }
        if inboxes.early.len() >= MAX_EARLY_NOTICES {
            inboxes.early.pop_front();
        }
        inboxes.early.push_back((call_sid.to_string(), notice, now));
        Delivery::Kept
    }

    fn inboxes(&self) -> MutexGuard<'_, Inboxes> {
        // A panic elsewhere while holding the lock leaves consistent maps.
        self.inboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most calls that were ever live at once since start-up.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let registry = Arc::new(CallRegistry::default());
        let a = CallRegistry::try_admit(&registry, 2).unwrap();
        let b = CallRegistry::try_admit(&registry, 2).unwrap();
        assert!(CallRegistry::try_admit(&registry, 2).is_none());
        assert_eq!(registry.active(), 2);
        drop(a);
        assert_eq!(registry.active(), 1);
        let _c = CallRegistry::try_admit(&registry, 2).unwrap();
        drop(b);
        assert_eq!((registry.active(), registry.peak()), (1, 2));
    }

    #[test]
    fn a_thread_that_outlives_its_call_keeps_its_place_until_it_ends() {
        let registry = Arc::new(CallRegistry::default());
        let slot = CallRegistry::try_admit(&registry, 1).unwrap();
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        let lingering = slot
            .spawn("call-1-stt".into(), 64 * 1024, move || {
                // Until the test lets it go (or, at worst, for 5 s).
                let _ = released.recv_timeout(std::time::Duration::from_secs(5));
            })
            .unwrap();
        drop(slot);
        assert_eq!(registry.active(), 1, "the thread still holds the place");
        assert!(CallRegistry::try_admit(&registry, 1).is_none());
        drop(release);
        lingering.join().unwrap();
        assert_eq!(registry.active(), 0);
        assert!(CallRegistry::try_admit(&registry, 1).is_some());
    }

    #[test]
    fn the_test_hook_refuses_the_threads_it_names_only() {
        let registry = Arc::new(CallRegistry::default());
        let slot = CallRegistry::try_admit(&registry, 1).unwrap();
        registry.refuse_threads_named(Some("-llm"));
        assert!(slot.spawn("call-7-llm".into(), 64 * 1024, || {}).is_err());
        let ok = slot.spawn("call-7-tts".into(), 64 * 1024, || {}).unwrap();
        ok.join().unwrap();
        registry.refuse_threads_named(None);
        let ok = slot.spawn("call-7-llm".into(), 64 * 1024, || {}).unwrap();
        ok.join().unwrap();
    }

    const HUMAN: Notice = Notice::AnsweredBy(AnsweredBy::Human);
    const MACHINE: Notice = Notice::AnsweredBy(AnsweredBy::MachineEndBeep);

    #[test]
    fn a_notice_reaches_the_listening_call_by_its_sid_without_blocking() {
        let registry = Arc::new(CallRegistry::default());
        let slot = CallRegistry::try_admit(&registry, 2).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let listening = slot.listen("CA1", move |n| tx.try_send(n).is_ok());
        assert_eq!(registry.notify("CA1", MACHINE), Delivery::Delivered);
        assert_eq!(rx.try_recv(), Ok(MACHINE));
        // Its channel full: refused at once, not waited for.
        assert_eq!(registry.notify("CA1", HUMAN), Delivery::Delivered);
        assert_eq!(registry.notify("CA1", HUMAN), Delivery::Refused);
        // Another call's SID is not this call's.
        assert_eq!(registry.notify("CA2", HUMAN), Delivery::Kept);
        drop(listening);
        // No longer listening: kept for a stream that may still start.
        assert_eq!(registry.notify("CA1", HUMAN), Delivery::Kept);
    }

    #[test]
    fn a_notice_before_the_call_listens_is_handed_over_when_it_does() {
        let registry = Arc::new(CallRegistry::default());
        let slot = CallRegistry::try_admit(&registry, 1).unwrap();
        assert_eq!(registry.notify("CA1", MACHINE), Delivery::Kept);
        let (tx, rx) = crossbeam_channel::bounded(4);
        let _listening = slot.listen("CA1", move |n| tx.try_send(n).is_ok());
        assert_eq!(rx.try_recv(), Ok(MACHINE));
        assert!(rx.try_recv().is_err(), "handed over once");
        assert_eq!(registry.inboxes().early.len(), 0);
    }

    #[test]
    fn kept_notices_are_bounded_in_count_and_age() {
        let registry = CallRegistry::default();
        let t0 = Instant::now();
        for n in 0..MAX_EARLY_NOTICES + 10 {
            registry.notify_at(&format!("CA{n}"), HUMAN, t0);
        }
        let early = registry.inboxes().early.len();
        assert_eq!(early, MAX_EARLY_NOTICES);
        assert_eq!(registry.inboxes().early.front().unwrap().0, "CA10");
        registry.notify_at("CAlate", HUMAN, t0 + EARLY_NOTICE_AGE);
        let inboxes = registry.inboxes();
        assert_eq!(inboxes.early.len(), 1, "the old ones expired");
        assert_eq!(inboxes.early[0].0, "CAlate");
    }

    #[test]
    fn a_replaced_listener_is_not_removed_by_the_old_ones_end() {
        let registry = Arc::new(CallRegistry::default());
        let slot = CallRegistry::try_admit(&registry, 1).unwrap();
        let first = slot.listen("CA1", |_| true);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _second = slot.listen("CA1", move |n| tx.try_send(n).is_ok());
        drop(first);
        assert_eq!(registry.notify("CA1", HUMAN), Delivery::Delivered);
        assert_eq!(rx.try_recv(), Ok(HUMAN));
    }

    #[test]
    fn ending_all_wakes_a_call_waiting_on_its_slot() {
        let registry = Arc::new(CallRegistry::default());
        let slot = CallRegistry::try_admit(&registry, 1).unwrap();
        let waiting = slot.ending().clone();
        let waiter = std::thread::Builder::new()
            .name("test-ending-waiter".into())
            .spawn(move || waiting.recv_timeout(std::time::Duration::from_secs(5)))
            .unwrap();
        assert!(!registry.must_end());
        registry.end_all();
        assert!(registry.must_end());
        // Closed, not timed out: the call wakes at once.
        assert_eq!(
            waiter.join().unwrap(),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
    }
}
