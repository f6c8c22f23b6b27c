//! systemd's notification protocol as the server speaks it: `READY=1`, `WATCHDOG=1` and
//! `STOPPING=1` from the real binary to a `NOTIFY_SOCKET` the test listens on, and the watchdog
//! falling silent when an accept loop dies (in-process: the test ends one with `stop_accepting`).

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cotrackpro_voice::config::{Config, Env};
use cotrackpro_voice::serve::{watchdog_problems, Server};
use cotrackpro_voice::watchdog::{Notifier, Watchdog, STALE_AFTER};

use crate::support::{binary, serve_env, Spawned, TempDir, DOMAIN};

/// A datagram socket in a fresh directory, as systemd's would be.
fn notify_socket(dir: &TempDir) -> (UnixDatagram, String) {
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    (socket, path.display().to_string())
}

/// `serve` as a child process with `extra` variables (systemd's among them).
fn serve(records: &TempDir, extra: &[(&str, &str)]) -> Spawned {
    let mut command = binary();
    command.arg("serve");
    Spawned::spawn(serve_env(command, records, extra))
}

/// The next notification within `within`.
fn next(socket: &UnixDatagram, within: Duration) -> Option<String> {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Notifications until `want` arrives (within 10 s); panics with what came instead.
fn wait_for(socket: &UnixDatagram, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match next(socket, left) {
            Some(message) if message.lines().any(|l| l == want) => return,
            Some(message) => seen.push(message),
            None => break,
        }
    }
    panic!("no {want} within 10 s; got {seen:?}");
}

#[test]
fn the_binary_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = TempDir::new("notify");
    let (socket, path) = notify_socket(&dir);
    let records = TempDir::new("notify-records");
    let mut server = serve(
        &records,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")],
    );
    wait_for(&socket, "READY=1");
    // Pings at half the interval: several within a second.
    for _ in 0..3 {
        assert_eq!(
            next(&socket, Duration::from_secs(2)).as_deref(),
            Some("WATCHDOG=1")
        );
    }
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    wait_for(&socket, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn without_a_watchdog_interval_there_are_no_pings() {
    let dir = TempDir::new("notify-nowd");
    let (socket, path) = notify_socket(&dir);
    let records = TempDir::new("notify-nowd-records");
    let _server = serve(&records, &[("NOTIFY_SOCKET", &path)]);
    wait_for(&socket, "READY=1");
    assert_eq!(next(&socket, Duration::from_millis(800)), None);
}

fn in_process_server() -> (Server, TempDir) {
    let records = TempDir::new("watchdog");
    let env = Env::from_pairs([
        ("SERVER_DOMAIN", DOMAIN),
        ("HTTP_PORT", "0"),
        ("MEDIA_PORT", "0"),
        ("LOG_LEVEL", "off"),
        ("RECORDS_DIR", &records.path().display().to_string()),
    ]);
    let config = Config::from_env(&env).expect("test config is valid");
    (Server::start(config).expect("server starts"), records)
}

/// Pings arrive, then `kill` ends one accept loop, then the pings stop for good.
fn pings_stop_when(kill: impl FnOnce(&mut Server)) {
    let dir = TempDir::new("watchdog-socket");
    let (socket, path) = notify_socket(&dir);
    let (mut server, _records) = in_process_server();
    let notifier = Arc::new(Notifier::new(&path).unwrap().unwrap());
    let app = server.app.clone();
    let watchdog = Watchdog::start(notifier, Duration::from_millis(200), move || {
        watchdog_problems(&app)
    })
    .unwrap();
    assert_eq!(
        next(&socket, Duration::from_secs(2)).as_deref(),
        Some("WATCHDOG=1")
    );
    kill(&mut server);
    let killed = Instant::now();
    // Pings go on until the loop's beat is stale, then stop: a full second of silence comes
    // within STALE_AFTER and a margin, and nothing after it.
    let deadline = killed + STALE_AFTER + Duration::from_secs(3);
    loop {
        assert!(Instant::now() < deadline, "the pings never stopped");
        if next(&socket, Duration::from_secs(1)).is_none() {
            break;
        }
    }
    assert_eq!(next(&socket, Duration::from_secs(1)), None);
    assert!(killed.elapsed() >= STALE_AFTER - Duration::from_millis(500));
    drop(watchdog);
    server.shutdown();
}

#[test]
fn the_watchdog_stops_pinging_when_the_http_accept_loop_dies() {
    pings_stop_when(|server| server.http.stop_accepting());
}

#[test]
fn the_watchdog_stops_pinging_when_the_media_accept_loop_dies() {
    pings_stop_when(|server| server.media.stop_accepting());
}
