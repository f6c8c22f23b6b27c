//! Caller audio from the Twilio reader to the speech-to-text worker: a bounded channel of
//! μ-law frames plus a wake-up descriptor, so the worker can wait on its provider socket and
//! on new audio at once with `poll(2)` ([`crate::poll`]) — no read timeout, no tick. The
//! worker says how many frames it wants before it is woken ([`AudioInbox::wake_after`]): one
//! to forward each frame as it arrives, a chunk's worth (`STT_CHUNK_MS`) to wake once a chunk.
//!
//! A frame is the decoded μ-law, inline (the reader decodes every frame anyway, to measure its
//! loudness): the channel's slots are allocated once, so a frame costs no allocation, and the
//! worker joins frames into chunks of `STT_CHUNK_MS` and encodes each chunk once.
//!
//! The reader never waits: [`AudioFeed::send`] drops a frame when the channel is full (the
//! worker is reconnecting; the caller's words in a reconnect are lost either way) and says so,
//! for the reader to count. Dropping the feed closes it: the worker sees the end of the
//! wake-up stream, closes its session and ends.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::poll::{self, WakeReceiver, WakeSender, Watch};
use crate::speech::ulaw::FRAME_BYTES;

/// A feed of caller audio holding at most `cap` frames (each 20 ms). Fails only when the
/// process has no descriptors left for the wake-up pair.
pub fn audio_feed(cap: usize) -> io::Result<(AudioFeed, AudioInbox)> {
    let (wake_tx, wake_rx) = poll::wake_pair()?;
    let (tx, rx) = bounded(cap);
    let counts = Arc::new(Counts {
        queued: AtomicUsize::new(0),
        wanted: AtomicUsize::new(1),
    });
    Ok((
        AudioFeed {
            tx,
            wake: wake_tx,
            counts: counts.clone(),
        },
        AudioInbox {
            rx,
            wake: wake_rx,
            open: std::cell::Cell::new(true),
            counts,
        },
    ))
}

/// Frames queued since the worker last took them, and how many it wants before it is woken.
/// (Sequentially consistent: the worker's "want, then look" and the reader's "count, then
/// look" must not both miss the other.)
#[derive(Debug)]
struct Counts {
    queued: AtomicUsize,
    wanted: AtomicUsize,
}

/// One frame of the caller's audio: up to 20 ms of μ-law (Twilio's frames are exactly that;
/// a longer payload is queued as several frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    ulaw: [u8; FRAME_BYTES],
    len: u8,
    /// When the reader queued it (a chunk is due one chunk's length after its first frame).
    pub queued_at: Instant,
    /// Loud enough to be speech ([`crate::speech::ulaw::is_voice`]), as the reader found when
    /// it decoded the payload (so the worker need not look again).
    pub loud: bool,
}

// `len` holds a frame's length.
const _: () = assert!(FRAME_BYTES <= u8::MAX as usize);

impl Frame {
    /// The frame's μ-law bytes.
    pub fn ulaw(&self) -> &[u8] {
        &self.ulaw[..usize::from(self.len)]
    }
}

/// The sending end, held by the Twilio reader.
#[derive(Debug)]
pub struct AudioFeed {
    tx: Sender<Frame>,
    wake: WakeSender,
    counts: Arc<Counts>,
}

impl AudioFeed {
    /// Queues the caller's μ-law (one Twilio payload, in frames of at most 20 ms) and wakes
    /// the worker if it wants this many frames. Never blocks, never allocates. Returns false
    /// when audio was dropped because the queue is full; audio for a worker that has ended is
    /// dropped silently (true: nothing is behind).
    #[must_use]
    pub fn send(&self, ulaw: &[u8], loud: bool) -> bool {
        let queued_at = Instant::now();
        let mut queued = 0;
        let mut all = true;
        for piece in ulaw.chunks(FRAME_BYTES) {
            let mut frame = Frame {
                ulaw: [0; FRAME_BYTES],
                len: piece.len() as u8,
                queued_at,
                loud,
            };
            frame.ulaw[..piece.len()].copy_from_slice(piece);
            match self.tx.try_send(frame) {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(_)) => all = false,
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
        if queued > 0 {
            // After the frames are queued, so a woken worker always finds them.
            let waiting = self.counts.queued.fetch_add(queued, Ordering::SeqCst) + queued;
            if waiting >= self.counts.wanted.load(Ordering::SeqCst) {
                self.wake.wake();
            }
        }
        all
    }
}

/// The receiving end, owned by the speech-to-text worker.
#[derive(Debug)]
pub struct AudioInbox {
    rx: Receiver<Frame>,
    wake: WakeReceiver,
    /// Cleared once the end of the wake-up stream was seen (the feed is gone).
    open: std::cell::Cell<bool>,
    counts: Arc<Counts>,
}

impl AudioInbox {
    /// The descriptor that becomes readable when audio arrives or the feed closes.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.fd()
    }

    /// Reads the wake-ups and returns the frames waiting, in order (whether the descriptor
    /// was readable or not: frames short of what the worker wanted wake nobody). The feed may
    /// have closed meanwhile: see [`AudioInbox::is_open`].
    pub fn take(&self) -> impl Iterator<Item = Frame> + '_ {
        self.counts.queued.store(0, Ordering::SeqCst);
        if !self.wake.drain() {
            self.open.set(false);
        }
        self.rx.try_iter()
    }

    /// Asks to be woken once `frames` (at least one) have been queued since the last
    /// [`AudioInbox::take`]. True when that many already wait: take them rather than sleep.
    /// (The end of the feed wakes the worker whatever it asked.)
    pub fn wake_after(&self, frames: usize) -> bool {
        let frames = frames.max(1);
        self.counts.wanted.store(frames, Ordering::SeqCst);
        self.counts.queued.load(Ordering::SeqCst) >= frames
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
                assert!(feed.send(&[1, 2, 3], false));
                (feed, sent)
            })
            .unwrap();
        let mut watch = [Watch::read(inbox.fd())];
        assert_eq!(poll::wait(&mut watch, None).unwrap(), 1);
        let woke = Instant::now();
        let (feed, sent) = sender.join().unwrap();
        assert!(woke.duration_since(sent) < Duration::from_millis(20));
        assert_eq!(
            inbox.take().map(|f| f.ulaw().to_vec()).collect::<Vec<_>>(),
            vec![vec![1, 2, 3]]
        );
        assert!(inbox.is_open());

        // Full: the third frame is dropped and said to be.
        assert!(feed.send(&[2], false));
        assert!(feed.send(&[3], false));
        assert!(!feed.send(&[4], false));
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
        assert!(feed.send(&[1], false));
        assert!(feed.send(&[1], false));
    }

    #[test]
    fn the_worker_is_woken_once_the_frames_it_wants_are_queued() {
        let (feed, inbox) = audio_feed(16).unwrap();
        let readable = |inbox: &AudioInbox| {
            let mut watch = [Watch::read(inbox.fd())];
            poll::wait(&mut watch, Some(Instant::now())).unwrap() == 1
        };
        assert!(!inbox.wake_after(3));
        assert!(feed.send(&[1], false));
        assert!(feed.send(&[2], false));
        assert!(!readable(&inbox), "two frames of three wake nobody");
        assert!(feed.send(&[3], false));
        assert!(readable(&inbox));
        assert_eq!(inbox.take().count(), 3);
        // Frames already queued when the worker asks are said to be there.
        assert!(feed.send(&[4], false));
        assert!(inbox.wake_after(1));
        assert_eq!(inbox.take().count(), 1);
        assert!(!readable(&inbox));
    }

    #[test]
    fn a_long_payload_is_queued_as_frames_of_twenty_ms() {
        let (feed, inbox) = audio_feed(4).unwrap();
        let audio: Vec<u8> = (0..400).map(|i| i as u8).collect();
        assert!(feed.send(&audio, true));
        let frames: Vec<Frame> = inbox.take().collect();
        assert_eq!(
            frames.iter().map(|f| f.ulaw().len()).collect::<Vec<_>>(),
            vec![160, 160, 80]
        );
        assert!(frames.iter().all(|f| f.loud));
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.ulaw().to_vec()).collect();
        assert_eq!(joined, audio);
    }
}
