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

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

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

impl CallSlot {
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
