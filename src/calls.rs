//! The process-wide count of live calls, read by `/health` and `/metrics` and used for the
//! admission cap. A call holds a [`CallSlot`]; dropping it (however the call ends) frees it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct CallRegistry {
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Set when the server's shutdown drain is over: live calls end within a tick.
    ending: AtomicBool,
}

/// A live call's place in the registry; released on drop.
#[derive(Debug)]
pub struct CallSlot {
    registry: Arc<CallRegistry>,
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
        self.ending.store(true, Ordering::SeqCst);
    }

    pub fn must_end(&self) -> bool {
        self.ending.load(Ordering::SeqCst)
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
}
