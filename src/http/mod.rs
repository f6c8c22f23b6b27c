//! The webhook and API listener on `HTTP_PORT`: our own accept loop (`http-accept`, see
//! [`listener`]) reading every request whole within bounded size and time, a fixed pool of named
//! worker threads answering them, and [`route`], one table from method and path to handler.
//!
//! Every response carries `X-Request-Id`, every request gets one access-log line, and a handler
//! that panics answers 500 instead of taking its worker down. Why not tiny_http (the design
//! card's choice): its accept thread panics or ends on the first `accept` error (EMFILE), it
//! reads heads without a size limit and bodies without a deadline, one thread per connection,
//! and it gives no way to hand it connections we accepted ourselves (README, "The HTTP tier").

mod cron;
mod dashboard;
mod health;
pub mod listener;
mod outbound;
pub mod records;
pub mod request;
pub mod response;
pub mod summary;
mod twilio;
pub mod wire;

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::app::App;
use crate::ids::RequestId;
use crate::poll::WakeSender;
use listener::{Answer, Job};

pub use request::Incoming;
pub use response::Reply;

/// `POST /call/outbound` calls Twilio over TLS (rustls) from a worker, so workers get the
/// same generous stack as the call's provider workers (only touched pages are committed).
const WORKER_STACK_BYTES: usize = 1024 * 1024;

/// How long a worker writes an answer itself, when the accept loop has stopped (shutdown).
const SHUTDOWN_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests that have arrived and wait for a worker, per worker. Past this the accept loop
/// answers 503 at once rather than let a queue grow while every worker is busy.
const QUEUED_PER_WORKER: usize = 8;

/// The running HTTP listener. [`HttpServer::shutdown`] stops it; dropping it without that leaves
/// the threads running until the process exits.
pub struct HttpServer {
    /// Dropping it stops the accept loop (its wake-up descriptor reads end-of-stream).
    stop: Option<WakeSender>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Serves `listener` with an accept loop and `app.config.http.workers` worker threads.
    pub fn start(app: Arc<App>, listener: TcpListener) -> io::Result<HttpServer> {
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let limits = &app.config.http;
        let (jobs_tx, jobs) = crossbeam_channel::bounded::<Job>(limits.workers * QUEUED_PER_WORKER);
        // Never full: every connection in it holds one of `max_connections` places.
        let (answered_tx, answered) = crossbeam_channel::bounded::<Answer>(limits.max_connections);
        let (stop, wake) = crate::poll::wake_pair()?;
        // Workers wake the loop when they hand an answer over; a second pair, so that the
        // workers' copies do not keep the loop from seeing `stop` dropped.
        let (answered_wake, answered_woken) = crate::poll::wake_pair()?;
        let answered_wake = Arc::new(answered_wake);
        let mut workers = Vec::new();
        for idx in 0..limits.workers {
            let (app, jobs, answered_tx, answered_wake) = (
                app.clone(),
                jobs.clone(),
                answered_tx.clone(),
                answered_wake.clone(),
            );
            let worker = thread::Builder::new()
                .name(format!("http-{idx}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || worker_loop(&app, &jobs, &answered_tx, &answered_wake))?;
            workers.push(worker);
        }
        let lp = listener::Loop {
            listener,
            max_connections: limits.max_connections,
            max_body_bytes: limits.max_body_bytes,
            counters: app.http_counters.clone(),
            jobs: jobs_tx,
            answered,
            wake,
            answered_woken,
            beat: app.liveness.http.clone(),
        };
        let acceptor = thread::Builder::new()
            .name("http-accept".into())
            .stack_size(256 * 1024)
            .spawn(move || listener::run(lp))?;
        Ok(HttpServer {
            stop: Some(stop),
            acceptor: Some(acceptor),
            workers,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Ends the accept loop: no new connection or request is taken, and the workers end once
    /// they have answered what they hold. On its own (not through [`HttpServer::shutdown`]) it
    /// is how tests play a dead accept loop, which the systemd watchdog must notice
    /// (`crate::watchdog`).
    pub fn stop_accepting(&mut self) {
        drop(self.stop.take());
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }

    /// Stops accepting, lets requests in progress finish, then stops every worker.
    pub fn shutdown(mut self) {
        // The loop ends and drops the job queue's sender: each worker ends after its request.
        self.stop_accepting();
        for worker in self.workers {
            if worker.join().is_err() {
                log::error!("an HTTP worker thread panicked");
            }
        }
    }

    /// Blocks until every worker has ended (they end only through [`HttpServer::shutdown`]
    /// from another handle, or with the process).
    pub fn join(self) {
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

/// A worker: answers whole requests until the accept loop ends (the queue disconnects). The
/// accept loop writes the answers; once it has stopped (shutdown), the worker writes the last
/// ones itself, briefly.
fn worker_loop(app: &App, jobs: &Receiver<Job>, answered: &Sender<Answer>, wake: &WakeSender) {
    while let Ok(job) = jobs.recv() {
        let answer = answer(app, job);
        match answered.try_send(answer) {
            Ok(()) => wake.wake(),
            Err(err) => {
                let answer = err.into_inner();
                let stream = &answer.conn.stream;
                let _ = stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_write_timeout(Some(SHUTDOWN_WRITE_TIMEOUT)))
                    .and_then(|()| (&answer.conn.stream).write_all(&answer.bytes));
            }
        }
    }
}

/// Answers one request (the route, the access-log line) and hands back the bytes to write.
fn answer(app: &App, job: Job) -> Answer {
    let Job {
        conn,
        head,
        body,
        started,
    } = job;
    let keep_alive = head.keep_alive();
    let incoming = Incoming::from_parts(head, body, conn.peer);
    let request_id = RequestId::from_header(incoming.header("X-Request-Id"));
    let reply = catch_unwind(AssertUnwindSafe(|| route(app, &incoming))).unwrap_or_else(|_| {
        log::error!(
            requestId = request_id.as_str(),
            path = wire::log_value(&incoming.path, wire::LOG_VALUE_CHARS).as_str();
            "handler panicked"
        );
        Reply::error(500, "Internal error")
    });
    let status = reply.status;
    let route_name = Route::resolve(&incoming.path).map_or("unknown", Route::name);
    app.http_counters
        .response(route_name, status, started.elapsed());
    let body_len = reply.body.len();
    let client = client_address(&app.config.http.trusted_proxies, &incoming);
    // Only the path is logged: query strings may carry data that does not belong in logs.
    let method = wire::log_value(&incoming.method, 16);
    let path = wire::log_value(&incoming.path, wire::LOG_VALUE_CHARS);
    log::info!(
        target: "access",
        method = method.as_str(),
        path = path.as_str(),
        status = status,
        durationMs = (started.elapsed().as_micros() as f64 / 1000.0),
        requestId = request_id.as_str(),
        bytes = body_len,
        client = client.as_str();
        "http.request"
    );
    let mut bytes = reply.into_bytes(&request_id, keep_alive);
    if incoming.method == "HEAD" {
        // The head only, `Content-Length` included, as for the GET it stands for.
        bytes.truncate(bytes.len() - body_len);
    }
    Answer {
        conn,
        bytes,
        keep_alive,
    }
}

/// The client's address for the access log: the peer, or the nearest `X-Forwarded-For` hop
/// when the peer is a `TRUSTED_PROXY` (see [`forwarded_client`]). Bounded for the log.
pub fn client_address(trusted: &[IpAddr], req: &Incoming) -> String {
    let Some(peer) = req.remote.map(|a| a.ip()) else {
        return String::new();
    };
    match forwarded_client(trusted, peer, req.header("X-Forwarded-For")) {
        Some(hop) => wire::log_value(hop, 64),
        None => peer.to_string(),
    }
}

/// The one rule, for the webhook port and the media port alike, for when `X-Forwarded-For`
/// names the client: only when the TCP `peer` is one of the `trusted` proxies, and then it is
/// the nearest hop that is not itself a trusted proxy (anything further left was written by
/// the client and proves nothing). `None`: the peer is the client (not a proxy, or it
/// forwarded nothing usable). The hop is as received: parse it or bound it before use.
///
/// ```
/// use cotrackpro_voice::http::forwarded_client;
/// let proxy = ["127.0.0.1".parse().unwrap()];
/// let forwarded = Some("6.6.6.6, 203.0.113.9");
/// assert_eq!(forwarded_client(&proxy, proxy[0], forwarded), Some("203.0.113.9"));
/// assert_eq!(forwarded_client(&proxy, "198.51.100.7".parse().unwrap(), forwarded), None);
/// assert_eq!(forwarded_client(&[], proxy[0], forwarded), None);
/// ```
pub fn forwarded_client<'a>(
    trusted: &[IpAddr],
    peer: IpAddr,
    forwarded_for: Option<&'a str>,
) -> Option<&'a str> {
    if !trusted.contains(&peer) {
        return None;
    }
    forwarded_for?
        .rsplit(',')
        .map(str::trim)
        .find(|hop| {
            hop.parse::<IpAddr>()
                .map_or(true, |ip| !trusted.contains(&ip))
        })
        .filter(|hop| !hop.is_empty())
}

/// The routes, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    CallIncoming,
    CallStatus,
    Records(records::RecordsRoute<'a>),
    CronCostRollup,
    Dashboard,
    Metrics,
    CallOutbound,
    CallAmd,
}

impl<'a> Route<'a> {
    fn resolve(path: &'a str) -> Option<Route<'a>> {
        use records::RecordsRoute;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        Some(match segments.as_slice() {
            ["health"] => Route::Health,
            ["call", "incoming"] => Route::CallIncoming,
            ["call", "status"] => Route::CallStatus,
            ["call", "outbound"] => Route::CallOutbound,
            ["call", "amd"] => Route::CallAmd,
            ["api", "cron", "cost-rollup"] => Route::CronCostRollup,
            ["dashboard"] => Route::Dashboard,
            ["metrics"] => Route::Metrics,
            ["records"] => Route::Records(RecordsRoute::List),
            ["records", "by-role", role] => Route::Records(RecordsRoute::ByRole(role)),
            ["records", "by-status", status] => Route::Records(RecordsRoute::ByStatus(status)),
            ["records", sid] => Route::Records(RecordsRoute::One(sid)),
            _ => return None,
        })
    }

    /// The route's label in `cotrackpro_http_responses_total` (fixed names: a path's own
    /// segments, such as a call SID, never become label values).
    fn name(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::CallIncoming => "call_incoming",
            Route::CallStatus => "call_status",
            Route::Records(_) => "records",
            Route::CronCostRollup => "cron_cost_rollup",
            Route::Dashboard => "dashboard",
            Route::Metrics => "metrics",
            Route::CallOutbound => "call_outbound",
            Route::CallAmd => "call_amd",
        }
    }

    fn methods(self) -> &'static [&'static str] {
        match self {
            Route::Health | Route::CronCostRollup | Route::Dashboard | Route::Metrics => &["GET"],
            Route::CallIncoming | Route::CallStatus | Route::CallOutbound | Route::CallAmd => {
                &["POST"]
            }
            Route::Records(records::RecordsRoute::One(_)) => &["GET", "DELETE"],
            Route::Records(_) => &["GET"],
        }
    }
}

/// Every route: method and path to handler. Unknown paths answer 404, known paths with another
/// method 405 with `Allow`.
pub fn route(app: &App, req: &Incoming) -> Reply {
    let Some(route) = Route::resolve(&req.path) else {
        return Reply::error(404, "Not found");
    };
    let allowed = route.methods();
    if !allowed.contains(&req.method.as_str()) {
        return Reply::error(405, "Method not allowed").with_header("Allow", allowed.join(", "));
    }
    match route {
        Route::Health => health::health(app),
        Route::CallIncoming => twilio::incoming(app, req),
        Route::CallStatus => twilio::status(app, req),
        Route::Records(which) => records::handle(app, req, which),
        Route::CronCostRollup => cron::cost_rollup(app, req),
        Route::Dashboard => dashboard::dashboard(),
        Route::Metrics => health::metrics(app, req),
        Route::CallOutbound => outbound::outbound(app, req),
        Route::CallAmd => twilio::amd(app, req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(peer: &str, forwarded: Option<&str>) -> Incoming {
        Incoming {
            remote: Some(SocketAddr::new(peer.parse().unwrap(), 40000)),
            headers: forwarded
                .map(|v| vec![("X-Forwarded-For".to_string(), v.to_string())])
                .unwrap_or_default(),
            ..Incoming::default()
        }
    }

    #[test]
    fn every_route_has_its_own_series_in_the_metrics() {
        let paths = [
            "/health",
            "/call/incoming",
            "/call/status",
            "/call/outbound",
            "/records/by-role/cps",
            "/api/cron/cost-rollup",
            "/dashboard",
            "/metrics",
            "/call/amd",
        ];
        let names: Vec<&str> = paths
            .iter()
            .map(|p| Route::resolve(p).map_or("none", Route::name))
            .collect();
        let known = &crate::metrics::HTTP_ROUTES;
        assert_eq!(
            names,
            known[..known.len() - 1],
            "in the order of HTTP_ROUTES"
        );
        assert_eq!(known.last(), Some(&"unknown"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let proxy: Vec<std::net::IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        // No proxy configured, or a peer that is not one: the peer is the client.
        assert_eq!(
            client_address(&[], &from("127.0.0.1", Some("203.0.113.9"))),
            "127.0.0.1"
        );
        assert_eq!(
            client_address(&proxy, &from("198.51.100.7", Some("203.0.113.9"))),
            "198.51.100.7"
        );
        // Through the proxy: the nearest hop it did not add itself; what the client wrote
        // further left is not believed.
        assert_eq!(
            client_address(&proxy, &from("127.0.0.1", Some("6.6.6.6, 203.0.113.9"))),
            "203.0.113.9"
        );
        assert_eq!(
            client_address(&proxy, &from("127.0.0.1", Some("203.0.113.9, 127.0.0.1"))),
            "203.0.113.9"
        );
        assert_eq!(
            client_address(&proxy, &from("127.0.0.1", None)),
            "127.0.0.1"
        );
        assert_eq!(
            client_address(&proxy, &from("127.0.0.1", Some(" , "))),
            "127.0.0.1"
        );
    }

    #[test]
    fn a_forwarded_for_from_the_proxy_is_bounded_for_the_log() {
        let proxy: Vec<std::net::IpAddr> = vec!["::1".parse().unwrap()];
        let huge = format!("{}\nforged line", "x".repeat(10_000));
        let logged = client_address(&proxy, &from("::1", Some(&huge)));
        assert!(logged.chars().count() < 100, "{logged}");
        assert!(!logged.contains('\n'));
        assert!(logged.ends_with("bytes]"));
    }
}
