//! A cancel flag that can also be waited on: set by the call (barge-in, the end of the call),
//! read by a worker between provider events, and slept on by a retry's backoff, which then
//! ends the moment the flag is set instead of checking it on a timer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Cancel {
    set: AtomicBool,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Sets the flag and wakes every thread sleeping on it.
    pub fn cancel(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.set.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Sleeps for `wait` unless the flag is set first; returns whether it is still clear.
    pub fn sleep(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.is_cancelled() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            guard = match self.changed.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_sleep_ends_when_the_flag_is_set_and_not_before() {
        let cancel = Arc::new(Cancel::new());
        assert!(
            cancel.sleep(Duration::from_millis(5)),
            "nothing set: slept out"
        );
        let setter = cancel.clone();
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("test-cancel".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                setter.cancel();
            })
            .unwrap();
        assert!(!cancel.sleep(Duration::from_secs(10)));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken by the flag"
        );
        assert!(cancel.is_cancelled());
        thread.join().unwrap();
        // Once set, a sleep returns at once.
        assert!(!cancel.sleep(Duration::from_secs(10)));
    }
}
