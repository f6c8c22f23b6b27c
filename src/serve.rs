//! `cotrackpro-voice serve`: binds the listeners and runs until the process is stopped.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::app::App;
use crate::config::Config;
use crate::http::HttpServer;

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
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { what, addr, source } => {
                write!(f, "cannot listen for {what} on {addr}: {source}")
            }
            ServeError::Spawn(source) => write!(f, "cannot start worker threads: {source}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Bind { source, .. } | ServeError::Spawn(source) => Some(source),
        }
    }
}

/// A started server: its shared state and its listeners.
pub struct Server {
    pub app: Arc<App>,
    pub http: HttpServer,
}

impl Server {
    /// Binds `BIND_ADDR:HTTP_PORT` and starts serving. Port 0 picks a free port; see
    /// [`Server::http_addr`].
    pub fn start(config: Config) -> Result<Server, ServeError> {
        let addr = SocketAddr::new(config.bind_addr, config.http_port);
        let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
            what: "webhooks (HTTP_PORT)",
            addr,
            source,
        })?;
        let app = Arc::new(App::new(config));
        let http = HttpServer::start(app.clone(), listener).map_err(ServeError::Spawn)?;
        Ok(Server { app, http })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Stops the listeners after the requests in progress.
    pub fn shutdown(self) {
        self.http.shutdown();
    }
}

/// Runs the server in the foreground until the process is stopped.
pub fn run(config: Config) -> Result<(), ServeError> {
    let server = Server::start(config)?;
    let config = &server.app.config;
    log::info!(
        http:% = server.http_addr(),
        env = config.app_env.as_str(),
        apiDomain:% = config.domains.api,
        wsDomain:% = config.domains.ws,
        signatureValidation = config.twilio.validate_signature;
        "cotrackpro-voice {} listening", env!("CARGO_PKG_VERSION")
    );
    server.http.join();
    Ok(())
}
