//! Waiting for a few descriptors at once with `poll(2)`, until an event or a real deadline —
//! never a periodic tick — and a wake-up descriptor pair another thread signals or closes.
//!
//! A thread that must both read a socket and act on what other threads hand it (the STT
//! worker: the provider's transcripts and the caller's audio; the media acceptor: new
//! connections and the order to stop) waits here on the socket and a [`WakeReceiver`]. std
//! has no `poll`; the `unsafe` calls are here, in [`wait`] and in [`Epoll`] (for the bench's
//! harness, whose loops wait on hundreds of sockets at once).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// One descriptor to wait on, and what it turned out to be ready for.
#[derive(Debug)]
pub struct Watch<'a> {
    fd: BorrowedFd<'a>,
    /// What to wait for (`POLLIN`, `POLLOUT`).
    events: i16,
    revents: i16,
}

impl<'a> Watch<'a> {
    /// Wait until `fd` is readable (or hung up, or in error).
    pub fn read(fd: BorrowedFd<'a>) -> Watch<'a> {
        Watch {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }
    }

    /// Wait until `fd` is writable only (a socket whose answer is being sent, whose next
    /// request must wait in the kernel, not wake us).
    pub fn write(fd: BorrowedFd<'a>) -> Watch<'a> {
        Watch {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        }
    }

    /// Also wait until `fd` is writable, when `write` (a socket with unflushed data).
    pub fn read_write(fd: BorrowedFd<'a>, write: bool) -> Watch<'a> {
        Watch {
            fd,
            events: libc::POLLIN | if write { libc::POLLOUT } else { 0 },
            revents: 0,
        }
    }

    /// Data (or the end of the stream, or an error) waits: a read will not block.
    pub fn readable(&self) -> bool {
        self.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }

    /// A write will not block (or will report the error at once).
    pub fn writable(&self) -> bool {
        self.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0
    }
}

/// Waits until one of `watches` is ready or `deadline` passes (`None`: no deadline). Returns
/// how many are ready; 0 means the deadline passed. A signal interrupting the wait resumes it
/// with the time that is left.
pub fn wait(watches: &mut [Watch<'_>], deadline: Option<Instant>) -> io::Result<usize> {
    // A call's threads wait on two or three descriptors at every wake-up: on the stack, then.
    const INLINE: usize = 4;
    const UNUSED: libc::pollfd = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut inline = [UNUSED; INLINE];
    let mut heap = Vec::new();
    let fds: &mut [libc::pollfd] = if watches.len() <= INLINE {
        &mut inline[..watches.len()]
    } else {
        heap.resize(watches.len(), UNUSED);
        &mut heap
    };
    for (fd, w) in fds.iter_mut().zip(watches.iter()) {
        *fd = libc::pollfd {
            fd: w.fd.as_raw_fd(),
            events: w.events,
            revents: 0,
        };
    }
    let ready = poll_fds(fds, deadline)?;
    for (watch, fd) in watches.iter_mut().zip(fds.iter()) {
        watch.revents = fd.revents;
    }
    Ok(ready)
}

/// Like [`wait`], for a fixed set of places some of which are empty (`None` is not waited
/// on): a thread whose descriptors come and go (a provider socket, a wake-up) waits on what
/// it has, with nothing allocated.
pub fn wait_optional<const N: usize>(
    watches: &mut [Option<Watch<'_>>; N],
    deadline: Option<Instant>,
) -> io::Result<usize> {
    // poll(2) skips an entry whose descriptor is negative.
    let mut fds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; N];
    for (fd, w) in fds.iter_mut().zip(watches.iter()) {
        if let Some(w) = w {
            fd.fd = w.fd.as_raw_fd();
            fd.events = w.events;
        }
    }
    let ready = poll_fds(&mut fds, deadline)?;
    for (watch, fd) in watches.iter_mut().zip(fds.iter()) {
        if let Some(w) = watch {
            w.revents = fd.revents;
        }
    }
    Ok(ready)
}

/// `poll(2)` on `fds` until one is ready or `deadline` passes; resumed after a signal.
fn poll_fds(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let timeout_ms = timeout_ms(deadline);
        // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfd structs for
        // the whole call, and every descriptor in it is borrowed by the caller from a `Watch`,
        // so it stays open until `poll` returns. `poll` writes only the `revents` fields.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // A deadline beyond what one poll can wait (about 24 days) is waited for in turns.
        if ready == 0 && deadline.is_some_and(|d| Instant::now() < d) {
            continue;
        }
        return Ok(ready as usize);
    }
}

/// What `poll(2)` and `epoll_wait(2)` take for `deadline`: -1 (none), or the milliseconds left,
/// rounded up (waking a fraction of a millisecond early would only wait again).
fn timeout_ms(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_nanos().div_ceil(1_000_000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    }
}

/// An `epoll(7)` set, for a thread that waits on many descriptors at once (the benchmark's
/// harness: hundreds of sockets, where `poll(2)` would look at every one on every wake-up).
/// Level-triggered: a descriptor is reported for as long as it is ready. Each descriptor is
/// registered with a token of the caller's choice, which [`Epoll::wait`] reports back.
pub struct Epoll {
    fd: OwnedFd,
    /// What one wait can report, reused from wait to wait.
    events: Vec<libc::epoll_event>,
}

/// How many ready descriptors one [`Epoll::wait`] reports at most (the rest, still ready, the
/// next).
const EPOLL_BATCH: usize = 256;

/// One descriptor [`Epoll::wait`] found ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub token: u64,
    /// Data, the end of the stream, or an error waits: a read will not block.
    pub readable: bool,
    /// A write will not block (or will report the error at once).
    pub writable: bool,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; the result is a new descriptor this process owns, or -1.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_BATCH],
        })
    }

    fn control(
        &self,
        op: libc::c_int,
        fd: BorrowedFd<'_>,
        token: u64,
        write: bool,
    ) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | if write { libc::EPOLLOUT } else { 0 }) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open for the call (one owned, one borrowed) and
        // `event` is a live epoll_event the kernel only reads.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut event) })?;
        Ok(())
    }

    /// Watches `fd` for reading (and writing, when `write`), reported as `token`. The
    /// descriptor must be [`Epoll::remove`]d before it is closed.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, write: bool) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, token, write)
    }

    /// Changes whether `fd` is also watched for writing.
    pub fn modify(&self, fd: BorrowedFd<'_>, token: u64, write: bool) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, write)
    }

    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_DEL, fd, 0, false)
    }

    /// Waits until a watched descriptor is ready or `deadline` passes (`None`: no deadline),
    /// and puts what is ready in `ready` (cleared first). A signal interrupting the wait resumes
    /// it with the time that is left.
    pub fn wait(&mut self, ready: &mut Vec<Ready>, deadline: Option<Instant>) -> io::Result<()> {
        ready.clear();
        let events = &mut self.events;
        let n = loop {
            let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `events` is a live, exclusively borrowed array of at least `max` entries,
            // which is all the kernel writes.
            let n = unsafe {
                libc::epoll_wait(
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    max,
                    timeout_ms(deadline),
                )
            };
            match check(n) {
                Ok(0) if deadline.is_some_and(|d| Instant::now() < d) => continue,
                Ok(n) => break n as usize,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        };
        let (read_bits, write_bits) = (
            (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32,
            (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32,
        );
        ready.extend(events[..n].iter().map(|e| Ready {
            token: e.u64,
            readable: e.events & read_bits != 0,
            writable: e.events & write_bits != 0,
        }));
        Ok(())
    }
}

/// Reads what a socket has now, without blocking and without changing its mode (`recv` with
/// `MSG_DONTWAIT`): `WouldBlock` when nothing is there. For a descriptor shared with a writer
/// that must keep blocking (the two halves of a Twilio socket).
pub fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call, and `fd` is an
        // open descriptor for at least as long as the borrow.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sets a socket's receive low-water mark (`SO_RCVLOWAT`): `poll` then reports it readable
/// only once that many bytes wait (or on end of stream or an error). 1 is the default.
pub fn set_receive_low_water(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: the option value is a c_int that lives for the call, with its size given.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// [`wait`] on `first` and, when there is one, `second` (a call's threads at every wake-up);
/// returns both, their readiness filled in.
pub fn wait_either<'a>(
    first: Watch<'a>,
    second: Option<Watch<'a>>,
    deadline: Option<Instant>,
) -> io::Result<(Watch<'a>, Option<Watch<'a>>)> {
    match second {
        Some(second) => {
            let mut both = [first, second];
            wait(&mut both, deadline)?;
            let [first, second] = both;
            Ok((first, Some(second)))
        }
        None => {
            let mut one = [first];
            wait(&mut one, deadline)?;
            let [first] = one;
            Ok((first, None))
        }
    }
}

/// Makes a wake-up pair: [`WakeSender::wake`] makes the receiver readable, and dropping the
/// sender makes it readable for good (end of stream), which the receiver reports as closed.
pub fn wake_pair() -> io::Result<(WakeSender, WakeReceiver)> {
    let (tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    Ok((WakeSender(tx), WakeReceiver(rx)))
}

/// The signalling end of a wake-up pair. Never blocks.
#[derive(Debug)]
pub struct WakeSender(UnixStream);

impl WakeSender {
    /// Makes the receiver readable. A full socket buffer is ignored: the receiver has
    /// unread wake-ups, so it is already due to wake.
    pub fn wake(&self) {
        let _ = (&self.0).write(&[1]);
    }
}

/// The waiting end of a wake-up pair, to put in a [`wait`].
#[derive(Debug)]
pub struct WakeReceiver(UnixStream);

impl WakeReceiver {
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    /// Reads every pending wake-up without blocking. Returns false once the sender is gone
    /// (end of stream) or the pair is broken.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match (&self.0).read(&mut buf) {
                Ok(0) => return false,
                // A short read emptied the socket (a byte written meanwhile only wakes the
                // receiver once more): no second read just to see WouldBlock.
                Ok(n) if n < buf.len() => return true,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_wake_up_ends_a_wait_without_deadline() {
        let (tx, rx) = wake_pair().unwrap();
        let waker = std::thread::Builder::new()
            .name("test-waker".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                tx.wake();
                tx
            })
            .unwrap();
        let started = Instant::now();
        let mut watches = [Watch::read(rx.fd())];
        assert_eq!(wait(&mut watches, None).unwrap(), 1);
        assert!(watches[0].readable());
        assert!(started.elapsed() >= Duration::from_millis(25));
        assert!(rx.drain(), "the sender is still there");
        let tx = waker.join().unwrap();
        // Drained: nothing is ready now, so a deadline ends the wait.
        let mut watches = [Watch::read(rx.fd())];
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(wait(&mut watches, Some(deadline)).unwrap(), 0);
        assert!(Instant::now() >= deadline);
        assert!(!watches[0].readable());
        drop(tx);
        let mut watches = [Watch::read(rx.fd())];
        assert_eq!(wait(&mut watches, None).unwrap(), 1);
        assert!(!rx.drain(), "a dropped sender reads as closed");
    }

    #[test]
    fn epoll_reports_ready_descriptors_by_token_and_honours_its_deadline() {
        let mut epoll = Epoll::new().unwrap();
        let (tx_a, rx_a) = wake_pair().unwrap();
        let (_tx_b, rx_b) = wake_pair().unwrap();
        epoll.add(rx_a.fd(), 7, false).unwrap();
        epoll.add(rx_b.fd(), 9, false).unwrap();
        let mut ready = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(20);
        epoll.wait(&mut ready, Some(deadline)).unwrap();
        assert!(ready.is_empty());
        assert!(Instant::now() >= deadline);
        tx_a.wake();
        epoll.wait(&mut ready, None).unwrap();
        assert_eq!(
            ready,
            [Ready {
                token: 7,
                readable: true,
                writable: false
            }]
        );
        // Level-triggered: still ready until drained; then watched for writing too.
        epoll.wait(&mut ready, Some(Instant::now())).unwrap();
        assert_eq!(ready.len(), 1);
        assert!(rx_a.drain());
        epoll.modify(rx_b.fd(), 9, true).unwrap();
        epoll.wait(&mut ready, Some(Instant::now())).unwrap();
        assert_eq!(
            ready,
            [Ready {
                token: 9,
                readable: false,
                writable: true
            }]
        );
        epoll.remove(rx_b.fd()).unwrap();
        epoll.wait(&mut ready, Some(Instant::now())).unwrap();
        assert!(ready.is_empty());
    }

    #[test]
    fn a_past_deadline_returns_at_once() {
        let (_tx, rx) = wake_pair().unwrap();
        let mut watches = [Watch::read(rx.fd())];
        let started = Instant::now();
        assert_eq!(wait(&mut watches, Some(Instant::now())).unwrap(), 0);
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
