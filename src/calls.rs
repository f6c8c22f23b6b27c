//! The process-wide count of live calls, read by `/health` and `/metrics` and used for the
//! admission cap. A call holds a [`CallSlot`]; dropping it (however the call ends) frees it.
//!
//! The end of the shutdown drain reaches every live call as an event, not a flag to poll: each
//! slot holds a receiver of one channel on which nothing is ever sent, and
//! [`CallRegistry::end_all`] closes it, which wakes every call waiting on it at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

#[derive(Debug)]
pub struct CallRegistry {
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Dropped by `end_all` (the channel's closing is the signal; it carries nothing).
    ending: Mutex<Option<Sender<()>>>,
    ended: Receiver<()>,
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
        }
    }
}

/// A live call's place in the registry; released on drop.
#[derive(Debug)]
pub struct CallSlot {
    registry: Arc<CallRegistry>,
}

impl CallSlot {
    /// Closes (reports disconnected) when the call must end because the server is stopping.
    pub fn ending(&self) -> &Receiver<()> {
        &self.registry.ended
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
                    registry: Arc::clone(registry),
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

    /// The most calls that were ever live at once since start-up.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Acquire)
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.registry.active.fetch_sub(1, Ordering::AcqRel);
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
