//! `cotrackpro-voice serve`: binds the listeners and runs until the process is stopped.
//!
//! The foreground thread sleeps in a blocking read of a self-pipe the signal handlers write to
//! (signal-hook's `low_level::pipe`), so it wakes for SIGTERM or SIGINT only.
//!
//! Under systemd (`Type=notify`) it says `READY=1` once both listeners accept and the records
//! are loaded, `STOPPING=1` when the drain starts, and runs the watchdog ([`crate::watchdog`])
//! when the unit sets `WatchdogSec=`.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::app::App;
use crate::config::Config;
use crate::http::HttpServer;
use crate::media::server::MediaServer;
use crate::records::{RecordStore, RecordsError};
use crate::watchdog::{Notifier, Watchdog};

/// A server that failed to start.
#[derive(Debug)]
pub enum ServeError {
    /// A listener could not be bound (port in use, address not on this machine, …).
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// Worker threads could not be started.
    Spawn(io::Error),
    /// The records directory could not be opened.
    Records(RecordsError),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { what, addr, source } => {
                write!(f, "cannot listen for {what} on {addr}: {source}")
            }
            ServeError::Spawn(source) => write!(f, "cannot start worker threads: {source}"),
            ServeError::Records(source) => write!(f, "cannot open the call records: {source}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Bind { source, .. } | ServeError::Spawn(source) => Some(source),
            ServeError::Records(source) => Some(source),
        }
    }
}

/// How often the running server compacts the records (it also does at start-up).
const COMPACTION_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A started server: its shared state, its listeners and its housekeeping thread.
pub struct Server {
    pub app: Arc<App>,
    pub http: HttpServer,
    pub media: MediaServer,
    compactor: Option<(mpsc::SyncSender<()>, JoinHandle<()>)>,
}

impl Server {
    /// Binds `BIND_ADDR:HTTP_PORT` and starts serving. Port 0 picks a free port; see
    /// [`Server::http_addr`].
    pub fn start(config: Config) -> Result<Server, ServeError> {
        // PROVIDER_CA_FILE: trusted by every provider connection from here on (see crate::tls).
        crate::tls::trust(&config.provider_tls.extra_cas);
        let addr = SocketAddr::new(config.bind_addr, config.http_port);
        let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
            what: "webhooks (HTTP_PORT)",
            addr,
            source,
        })?;
        let media_addr = SocketAddr::new(config.bind_addr, config.media_port);
        let media_listener = TcpListener::bind(media_addr).map_err(|source| ServeError::Bind {
            what: "media streams (MEDIA_PORT)",
            addr: media_addr,
            source,
        })?;
        let (records, _bad_lines) =
            RecordStore::open(&config.records.dir).map_err(ServeError::Records)?;
        let records = Arc::new(records);
        let app = Arc::new(App::new(config, records.clone()));
        let http = HttpServer::start(app.clone(), listener).map_err(ServeError::Spawn)?;
        let media = MediaServer::start(app.clone(), media_listener).map_err(ServeError::Spawn)?;
        // Capacity 1: the only message is "stop", and dropping the sender says it too.
        let (stop, stopped) = mpsc::sync_channel::<()>(1);
        let compactor = thread::Builder::new()
            .name("records-compactor".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                // Once at start-up, off the serving path (a large store takes seconds, and
                // Twilio's webhooks must be answered meanwhile), then daily.
                compact_and_log(&records);
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(COMPACTION_INTERVAL)
                {
                    compact_and_log(&records);
                }
            })
            .map_err(ServeError::Spawn)?;
        Ok(Server {
            app,
            http,
            media,
            compactor: Some((stop, compactor)),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    pub fn media_addr(&self) -> SocketAddr {
        self.media.local_addr()
    }

    /// Stops taking calls, gives live calls `SHUTDOWN_DRAIN_SECS` to end (then ends them),
    /// stops the webhooks after the requests in progress, and the housekeeping.
    pub fn shutdown(mut self) {
        self.app
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.media.stop_accepting();
        let drain = self.app.config.calls.tuning.shutdown_drain;
        let deadline = std::time::Instant::now() + drain;
        if self.app.calls.active() > 0 {
            log::info!(calls = self.app.calls.active(), drainSecs = drain.as_secs(); "shutdown: waiting for live calls");
        }
        while self.app.calls.active() > 0 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        self.app.calls.end_all();
        let ended_by = std::time::Instant::now() + Duration::from_secs(3);
        while self.app.calls.active() > 0 && std::time::Instant::now() < ended_by {
            thread::sleep(Duration::from_millis(20));
        }
        self.http.shutdown();
        self.app.voice.end_sessions();
        if let Some((stop, compactor)) = self.compactor.take() {
            drop(stop);
            let _ = compactor.join();
        }
    }
}

/// What keeps the watchdog from pinging systemd: the accept loops whose beat is stale. It also
/// reads the records index, under the store's lock: a store wedged on its lock blocks this
/// call, so no ping goes out then either.
pub fn watchdog_problems(app: &App) -> Vec<&'static str> {
    let problems = app.liveness.stale();
    if let Some(probe) = crate::records::index::sid_key("CA00000000000000000000000000000000") {
        let _ = app.records.summary(&probe);
    }
    problems
}

/// systemd's notification socket (from `config.systemd`), if any.
struct Systemd {
    notifier: Option<Arc<Notifier>>,
}

impl Systemd {
    fn new(config: &crate::config::SystemdEnv) -> Systemd {
        let notifier = match config.notify_socket.as_deref().map(Notifier::new) {
            Some(Ok(notifier)) => notifier.map(Arc::new),
            Some(Err(err)) => {
                log::warn!(error:% = err; "NOTIFY_SOCKET is set but unusable: no sd_notify");
                None
            }
            None => None,
        };
        Systemd { notifier }
    }

    fn notify(&self, message: &str) {
        if let Some(notifier) = &self.notifier {
            notifier.notify(message);
        }
    }
}

/// Compacts the records; a failure is logged and the server runs on with the old file
/// (compaction is housekeeping, not a reason to stop answering calls).
pub fn compact_and_log(records: &RecordStore) {
    match records.compact() {
        Ok(report) => log::info!(
            linesBefore = report.lines_before,
            callsKept = report.calls_kept,
            callsDropped = report.calls_dropped;
            "records.compaction"
        ),
        Err(err) => log::error!("records compaction failed: {err}"),
    }
}

/// Runs the server in the foreground until SIGTERM or SIGINT; then stops taking calls, drains
/// the live ones (`SHUTDOWN_DRAIN_SECS`) and exits.
pub fn run(config: Config) -> Result<(), ServeError> {
    // The handlers write a byte to `signalled`'s other end; reading it is the wait.
    let (mut signalled, notify) =
        std::os::unix::net::UnixStream::pair().map_err(ServeError::Spawn)?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let notify = notify.try_clone().map_err(ServeError::Spawn)?;
        signal_hook::low_level::pipe::register(signal, notify).map_err(ServeError::Spawn)?;
    }
    drop(notify);
    let systemd = Systemd::new(&config.systemd);
    let watchdog_interval = config.systemd.watchdog;
    let server = Server::start(config)?;
    let config = &server.app.config;
    log::info!(
        http:% = server.http_addr(),
        media:% = server.media_addr(),
        env = config.app_env.as_str(),
        apiDomain:% = config.domains.api,
        wsDomain:% = config.domains.ws,
        signatureValidation = config.twilio.validate_signature;
        "cotrackpro-voice {} listening", env!("CARGO_PKG_VERSION")
    );
    // Both listeners are bound with their accept loops running, and the records are loaded.
    systemd.notify("READY=1");
    let draining = Arc::new(AtomicBool::new(false));
    let watchdog = match (&systemd.notifier, watchdog_interval) {
        (Some(notifier), Some(interval)) => {
            let (app, draining) = (server.app.clone(), draining.clone());
            let healthy = move || {
                // While draining, the media loop has stopped on purpose.
                if draining.load(Ordering::SeqCst) {
                    Vec::new()
                } else {
                    watchdog_problems(&app)
                }
            };
            match Watchdog::start(notifier.clone(), interval, healthy) {
                Ok(watchdog) => Some(watchdog),
                Err(err) => {
                    log::error!(error:% = err; "cannot start the watchdog thread; systemd will restart the service");
                    None
                }
            }
        }
        _ => None,
    };
    wait_for_signal(&mut signalled);
    log::info!(activeCalls = server.app.calls.active(); "shutdown requested");
    draining.store(true, Ordering::SeqCst);
    systemd.notify("STOPPING=1");
    server.shutdown();
    drop(watchdog);
    log::info!("stopped");
    Ok(())
}

/// Blocks until a registered signal writes to `signalled`. No timeout: nothing but a signal is
/// awaited here, and the handlers hold the other end for the life of the process.
fn wait_for_signal(signalled: &mut std::os::unix::net::UnixStream) {
    use std::io::Read;
    let mut byte = [0u8; 1];
    loop {
        match signalled.read(&mut byte) {
            Ok(_) => return,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                // Cannot happen with a live socket pair; stopping is the safe reading of it.
                log::error!(error:% = err; "cannot wait for signals; stopping");
                return;
            }
        }
    }
}
