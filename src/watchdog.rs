//! systemd's readiness and watchdog, spoken directly: the `sd_notify` protocol is one datagram
//! of `KEY=value` lines to the Unix socket named by `NOTIFY_SOCKET` (a path, or an abstract
//! name written with a leading `@`), so no library is needed.
//!
//! `serve` sends `READY=1` once both listeners accept and the records are loaded, `STOPPING=1`
//! when it starts draining, and, when systemd asks for a watchdog (`WATCHDOG_USEC`),
//! `WATCHDOG=1` at half that interval — but only while [`Liveness`] says both accept loops have
//! beaten recently and the records store answers. A dead or wedged accept loop stops the pings,
//! and systemd restarts the service (`WatchdogSec=` in the unit).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loop's proof of life: the loop calls [`Beat::beat`] every time round (at least every
/// second, idle or not); the watchdog reads [`Beat::age`].
#[derive(Debug)]
pub struct Beat {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat.
    last_ms: AtomicU64,
}

impl Default for Beat {
    fn default() -> Beat {
        Beat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Beat {
    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last beat was (since creation, if none yet).
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The accept loops' beats.
#[derive(Debug, Default)]
pub struct Liveness {
    /// The `http-accept` loop.
    pub http: Arc<Beat>,
    /// The `media-accept` loop.
    pub media: Arc<Beat>,
}

/// How often a beating loop beats at least (it wakes this often even when idle).
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A loop is counted dead when it has not beaten for this long (it beats at least every
/// second; three missed beats is not scheduling noise).
pub const STALE_AFTER: Duration = Duration::from_secs(3);

impl Liveness {
    /// What is wrong, if anything: the loops whose beat is stale.
    pub fn stale(&self) -> Vec<&'static str> {
        [("http-accept", &self.http), ("media-accept", &self.media)]
            .into_iter()
            .filter(|(_, beat)| beat.age() > STALE_AFTER)
            .map(|(name, _)| name)
            .collect()
    }
}

/// Where systemd listens for notifications (`NOTIFY_SOCKET`), bound to an unnamed socket of ours.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    /// Linux's abstract namespace: the name without the leading `@`.
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From the value of `NOTIFY_SOCKET`; `None` for an empty value.
    pub fn new(notify_socket: &str) -> io::Result<Option<Notifier>> {
        let target = match notify_socket.strip_prefix('@') {
            Some(name) => Target::Abstract(name.as_bytes().to_vec()),
            None if notify_socket.is_empty() => return Ok(None),
            None => Target::Path(notify_socket.into()),
        };
        Ok(Some(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
        }))
    }

    /// Sends one notification (`READY=1`, …). A datagram to a local socket does not block for
    /// long; a failure is returned for the caller to log (systemd gone is not our crash).
    pub fn send(&self, message: &str) -> io::Result<()> {
        match &self.target {
            Target::Path(path) => self.socket.send_to(message.as_bytes(), path).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                self.socket
                    .send_to_addr(message.as_bytes(), &addr)
                    .map(|_| ())
            }
        }
    }

    /// [`Notifier::send`], with a failure logged.
    pub fn notify(&self, message: &str) {
        if let Err(err) = self.send(message) {
            log::warn!(error:% = err, message = message; "sd_notify failed");
        }
    }
}

/// The `watchdog` thread: pings every `interval / 2` while `healthy` says so. Dropping the
/// handle's sender ends it.
pub struct Watchdog {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// `healthy` returns what is wrong (empty: all well). It may block (a wedged records store
    /// holds its lock): then no ping goes out, which is the point.
    pub fn start(
        notifier: Arc<Notifier>,
        interval: Duration,
        healthy: impl Fn() -> Vec<&'static str> + Send + 'static,
    ) -> io::Result<Watchdog> {
        // Capacity 0 and never sent on: dropping the sender is the stop.
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let every = (interval / 2).max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let mut reported = false;
                loop {
                    let problems = healthy();
                    if problems.is_empty() {
                        notifier.notify("WATCHDOG=1");
                        reported = false;
                    } else if !reported {
                        // Once per episode: systemd restarts us within WatchdogSec= anyway.
                        let stale = serde_json::json!(problems);
                        crate::logging::with_fields(&[("stale", stale)], || {
                            log::error!(
                                watchdogMs = interval.as_millis() as u64;
                                "watchdog.withheld: not pinging systemd, which will restart the service"
                            )
                        });
                        reported = true;
                    }
                    match stopped.recv_timeout(every) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })?;
        Ok(Watchdog {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_goes_stale() {
        let liveness = Liveness::default();
        liveness.http.beat();
        liveness.media.beat();
        assert!(liveness.stale().is_empty());
        // Pretend the media loop last beat long ago.
        liveness.media.last_ms.store(0, Ordering::Relaxed);
        let old = Beat {
            origin: Instant::now() - Duration::from_secs(10),
            last_ms: AtomicU64::new(0),
        };
        assert!(old.age() >= Duration::from_secs(10));
        let liveness = Liveness {
            http: liveness.http.clone(),
            media: Arc::new(old),
        };
        assert_eq!(liveness.stale(), vec!["media-accept"]);
    }

    /// A socket to notify, bound in a fresh directory (removed by the caller).
    fn listening(label: &str) -> (UnixDatagram, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("cotrackpro-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
        (socket, dir)
    }

    fn pings_within(socket: &UnixDatagram, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        let mut pings = 0;
        let mut buf = [0u8; 64];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match socket.recv(&mut buf) {
                Ok(n) if &buf[..n] == b"WATCHDOG=1" => pings += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        pings
    }

    #[test]
    fn the_watchdog_pings_only_while_the_check_passes_and_not_while_it_blocks() {
        use std::sync::atomic::AtomicU8;
        let (socket, dir) = listening("watchdog-unit");
        let notifier = Arc::new(
            Notifier::new(dir.join("notify.sock").to_str().unwrap())
                .unwrap()
                .unwrap(),
        );
        // 0: healthy, 1: a loop is stale, 2: the check blocks (a wedged records lock).
        let state = Arc::new(AtomicU8::new(0));
        let (unblock, blocked) = crossbeam_channel::bounded::<()>(1);
        let check_state = state.clone();
        let watchdog =
            Watchdog::start(
                notifier,
                Duration::from_millis(40),
                move || match check_state.load(Ordering::SeqCst) {
                    0 => Vec::new(),
                    1 => vec!["http-accept"],
                    _ => {
                        let _ = blocked.recv_timeout(Duration::from_secs(5));
                        Vec::new()
                    }
                },
            )
            .unwrap();
        assert!(pings_within(&socket, Duration::from_millis(300)) >= 3);
        state.store(1, Ordering::SeqCst);
        let _ = pings_within(&socket, Duration::from_millis(150));
        assert_eq!(
            pings_within(&socket, Duration::from_millis(300)),
            0,
            "stale"
        );
        state.store(2, Ordering::SeqCst);
        let _ = pings_within(&socket, Duration::from_millis(150));
        assert_eq!(
            pings_within(&socket, Duration::from_millis(300)),
            0,
            "blocked"
        );
        state.store(0, Ordering::SeqCst);
        unblock.send(()).unwrap();
        assert!(
            pings_within(&socket, Duration::from_millis(300)) >= 3,
            "back"
        );
        watchdog.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notifications_reach_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("cotrackpro-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listening = UnixDatagram::bind(&path).unwrap();
        listening
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::new(path.to_str().unwrap()).unwrap().unwrap();
        notifier.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listening.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("cotrackpro-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listening = UnixDatagram::bind_addr(&addr).unwrap();
        listening
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::new(&format!("@{name}")).unwrap().unwrap();
        notifier.send("STOPPING=1").unwrap();
        let n = listening.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(Notifier::new("").unwrap().is_none());
    }
}
