//! Caller audio from the Twilio reader to the speech-to-text worker: a bounded channel of
//! base64 frames plus a wake-up descriptor, so the worker can wait on its provider socket and
//! on new audio at once with `poll(2)` ([`crate::poll`]) and forward each frame the moment it
//! arrives — no read timeout, no tick.
//!
//! The reader never waits: [`AudioFeed::send`] drops a frame when the channel is full (the
//! worker is reconnecting; the caller's words in a reconnect are lost either way) and says so,
//! for the reader to count. Dropping the feed closes it: the worker sees the end of the
//! wake-up stream, closes its session and ends.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::poll::{self, WakeReceiver, WakeSender, Watch};

/// A feed of caller audio holding at most `cap` frames (each 20 ms). Fails only when the
/// process has no descriptors left for the wake-up pair.
pub fn audio_feed(cap: usize) -> io::Result<(AudioFeed, AudioInbox)> {
    let (wake_tx, wake_rx) = poll::wake_pair()?;
    let (tx, rx) = bounded(cap);
    Ok((
        AudioFeed { tx, wake: wake_tx },
        AudioInbox {
            rx,
            wake: wake_rx,
            open: std::cell::Cell::new(true),
        },
    ))
}

/// One 20 ms frame of the caller's audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Base64 μ-law, as Twilio sent it.
    pub payload: String,
    /// Loud enough to be speech ([`crate::speech::ulaw::is_voice`]), as the reader found when
    /// it decoded the frame (so the worker need not decode it again).
    pub loud: bool,
}

/// The sending end, held by the Twilio reader.
#[derive(Debug)]
pub struct AudioFeed {
    tx: Sender<Frame>,
    wake: WakeSender,
}

impl AudioFeed {
    /// Queues one frame (base64 μ-law, as Twilio sent it) and wakes the worker. Never blocks.
    /// Returns false when the frame was dropped because the queue is full; a frame for a
    /// worker that has ended is dropped silently (true: nothing is behind).
    #[must_use]
    pub fn send(&self, base64_payload: String, loud: bool) -> bool {
        let frame = Frame {
            payload: base64_payload,
            loud,
        };
        match self.tx.try_send(frame) {
            Ok(()) => {
                // After the frame is queued, so a woken worker always finds it.
                self.wake.wake();
                true
            }
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => true,
        }
    }
}

/// The receiving end, owned by the speech-to-text worker.
#[derive(Debug)]
pub struct AudioInbox {
    rx: Receiver<Frame>,
    wake: WakeReceiver,
    /// Cleared once the end of the wake-up stream was seen (the feed is gone).
    open: std::cell::Cell<bool>,
}

impl AudioInbox {
    /// The descriptor that becomes readable when audio arrives or the feed closes.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.fd()
    }

    /// After the inbox's descriptor was readable: reads the wake-ups and returns the frames
    /// waiting, in order. The feed may have closed meanwhile: see [`AudioInbox::is_open`].
    pub fn take(&self) -> impl Iterator<Item = Frame> + '_ {
        if !self.wake.drain() {
            self.open.set(false);
        }
        self.rx.try_iter()
    }

    /// False once the feed was seen closed (the call is ending).
    pub fn is_open(&self) -> bool {
        self.open.get()
    }

    /// Waits `pause` (a reconnect's backoff) unless the feed closes first; returns whether it
    /// is still open. Frames arriving meanwhile stay queued for the next session (up to the
    /// feed's capacity).
    pub fn pause(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        while self.is_open() {
            let mut watch = [Watch::read(self.fd())];
            match poll::wait(&mut watch, Some(deadline)) {
                Ok(0) => return true,
                Ok(_) => {
                    if !self.wake.drain() {
                        self.open.set(false);
                    }
                }
                Err(err) => {
                    // Not expected (poll fails only on bad arguments); sleep out the pause.
                    log::warn!(error:% = err; "stt.pause: cannot wait on the audio feed");
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_wakes_a_waiting_poll_at_once_and_closing_is_seen() {
        let (feed, inbox) = audio_feed(2).unwrap();
        let sender = std::thread::Builder::new()
            .name("test-feed".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                let sent = Instant::now();
                assert!(feed.send("AAAA".into(), false));
                (feed, sent)
            })
            .unwrap();
        let mut watch = [Watch::read(inbox.fd())];
        assert_eq!(poll::wait(&mut watch, None).unwrap(), 1);
        let woke = Instant::now();
        let (feed, sent) = sender.join().unwrap();
        assert!(woke.duration_since(sent) < Duration::from_millis(20));
        assert_eq!(
            inbox.take().map(|f| f.payload).collect::<Vec<_>>(),
            vec!["AAAA".to_string()]
        );
        assert!(inbox.is_open());

        // Full: the third frame is dropped and said to be.
        assert!(feed.send("BBBB".into(), false));
        assert!(feed.send("CCCC".into(), false));
        assert!(!feed.send("DDDD".into(), false));
        drop(feed);
        let mut watch = [Watch::read(inbox.fd())];
        assert_eq!(
            poll::wait(&mut watch, Some(Instant::now() + Duration::from_secs(1))).unwrap(),
            1
        );
        // What was queued before the close still comes out; then the feed reads as closed
        // (at the latest on the next wake-up: the descriptor stays readable at its end).
        assert_eq!(inbox.take().count(), 2);
        if inbox.is_open() {
            let mut watch = [Watch::read(inbox.fd())];
            assert_eq!(
                poll::wait(&mut watch, Some(Instant::now() + Duration::from_secs(1))).unwrap(),
                1
            );
            assert_eq!(inbox.take().count(), 0);
        }
        assert!(!inbox.is_open());
    }

    #[test]
    fn a_pause_ends_early_when_the_feed_closes() {
        let (feed, inbox) = audio_feed(4).unwrap();
        let started = Instant::now();
        assert!(inbox.pause(Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));
        let closer = std::thread::Builder::new()
            .name("test-feed".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                drop(feed);
            })
            .unwrap();
        let started = Instant::now();
        assert!(!inbox.pause(Duration::from_secs(5)));
        assert!(started.elapsed() < Duration::from_secs(1));
        closer.join().unwrap();
    }

    #[test]
    fn a_feed_whose_worker_ended_swallows_frames() {
        let (feed, inbox) = audio_feed(1).unwrap();
        drop(inbox);
        assert!(feed.send("AAAA".into(), false));
        assert!(feed.send("AAAA".into(), false));
    }
}
