//! The webhook and API listener on `HTTP_PORT`: tiny_http accepting connections, a fixed pool of
//! named worker threads answering them, and [`route`], one table from method and path to handler.
//!
//! Every response carries `X-Request-Id`, every request gets one access-log line, and a handler
//! that panics answers 500 instead of taking its worker down. tiny_http sets no socket timeouts,
//! so the listener is meant to sit behind a TLS reverse proxy that buffers requests (README).

mod cron;
mod dashboard;
mod health;
mod outbound;
pub mod records;
pub mod request;
pub mod response;
mod twilio;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::app::App;
use crate::ids::RequestId;

pub use request::Incoming;
pub use response::Reply;

/// `POST /call/outbound` calls Twilio over TLS (rustls) from a worker, so workers get the
/// same generous stack as the call's provider workers (only touched pages are committed).
const WORKER_STACK_BYTES: usize = 1024 * 1024;

/// The running HTTP listener. [`HttpServer::shutdown`] stops it; dropping it without that leaves
/// the workers running until the process exits.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Serves `listener` with `app.config.http.workers` worker threads.
    pub fn start(app: Arc<App>, listener: TcpListener) -> io::Result<HttpServer> {
        let local_addr = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|err| io::Error::other(format!("cannot serve HTTP: {err}")))?;
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for idx in 0..app.config.http.workers {
            let (app, server, stopping) = (app.clone(), server.clone(), stopping.clone());
            let worker = thread::Builder::new()
                .name(format!("http-{idx}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || worker_loop(&app, &server, &stopping))?;
            workers.push(worker);
        }
        Ok(HttpServer {
            server,
            workers,
            stopping,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Lets requests in progress finish, then stops every worker and closes the listener.
    pub fn shutdown(self) {
        self.stopping.store(true, Ordering::SeqCst);
        // `unblock` wakes one blocked `recv` each time.
        for _ in &self.workers {
            self.server.unblock();
        }
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

fn worker_loop(app: &App, server: &tiny_http::Server, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(request) => handle(app, request),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(err) => {
                // An accept error (e.g. out of file descriptors): log, breathe, go on.
                log::warn!(error:% = err; "HTTP listener error");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle(app: &App, mut request: tiny_http::Request) {
    let started = Instant::now();
    let request_id = RequestId::from_header(
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv("X-Request-Id"))
            .map(|h| h.value.as_str()),
    );
    let method = request.method().as_str().to_string();
    // Only the path is logged: query strings may carry data that does not belong in logs.
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let forwarded_for = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Forwarded-For"))
        .map(|h| h.value.as_str().to_string());

    let reply = match Incoming::read(&mut request, app.config.http.max_body_bytes) {
        Err(reply) => reply,
        Ok(incoming) => {
            catch_unwind(AssertUnwindSafe(|| route(app, &incoming))).unwrap_or_else(|_| {
                log::error!(requestId:% = request_id, path = path.as_str(); "handler panicked");
                Reply::error(500, "Internal error")
            })
        }
    };

    let status = reply.status;
    let bytes = reply.body.len();
    let client = forwarded_for
        .or_else(|| request.remote_addr().map(|a| a.ip().to_string()))
        .unwrap_or_default();
    if let Err(err) = request.respond(reply.into_tiny(&request_id)) {
        log::debug!(requestId:% = request_id, error:% = err; "client went away before the response was sent");
    }
    log::info!(
        target: "access",
        requestId:% = request_id,
        durationMs = (started.elapsed().as_micros() as f64 / 1000.0),
        bytes = bytes,
        client = client.as_str();
        "{method} {path} {status}"
    );
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

    fn methods(self) -> &'static [&'static str] {
        match self {
            Route::Health | Route::CronCostRollup | Route::Dashboard | Route::Metrics => &["GET"],
            Route::CallIncoming | Route::CallStatus | Route::CallOutbound => &["POST"],
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
    }
}
