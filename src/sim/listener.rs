//! The accept loop every simulator shares: a loopback listener on an ephemeral port, one named
//! thread per connection, and a clean stop (the accept thread is woken and joined on drop).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A running listener; stops on drop.
pub struct Listener {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on 127.0.0.1:0 and runs `serve` on its own thread (`{name}-conn`) for every
    /// connection. What `serve` returns is logged at debug level: a simulator's peer hanging
    /// up is ordinary.
    pub fn start<F>(name: &str, serve: F) -> io::Result<Listener>
    where
        F: Fn(TcpStream) -> io::Result<()> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (flag, conn_name, serve) = (stopping.clone(), format!("{name}-conn"), Arc::new(serve));
        let acceptor = thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let serve = serve.clone();
                    let spawned = thread::Builder::new()
                        .name(conn_name.clone())
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            if let Err(err) = serve(stream) {
                                log::debug!("simulator connection ended: {err}");
                            }
                        });
                    if let Err(err) = spawned {
                        log::warn!("simulator could not start a connection thread: {err}");
                    }
                }
            })?;
        Ok(Listener {
            addr,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Serves one connection of a simulator.
pub type ConnectionServer = Box<dyn Fn(TcpStream) -> io::Result<()> + Send + Sync>;

/// A WebSocket simulator's shared state, with a port of its own or served through another
/// simulator's listener (both ElevenLabs sockets share one port).
pub struct WsSimCore<S> {
    listener: Option<Listener>,
    state: std::sync::Arc<std::sync::Mutex<S>>,
}

impl<S: Default + Send + 'static> WsSimCore<S> {
    /// The core without a listener, and what serves a connection with its state.
    pub fn detached<F>(serve: F) -> (WsSimCore<S>, ConnectionServer)
    where
        F: Fn(TcpStream, &std::sync::Mutex<S>) -> io::Result<()> + Send + Sync + 'static,
    {
        let state = std::sync::Arc::new(std::sync::Mutex::new(S::default()));
        let shared = state.clone();
        let server: ConnectionServer = Box::new(move |stream| serve(stream, &shared));
        (
            WsSimCore {
                listener: None,
                state,
            },
            server,
        )
    }

    /// Gives the core a port of its own, served by `server`.
    pub fn listen(mut self, name: &str, server: ConnectionServer) -> io::Result<WsSimCore<S>> {
        self.listener = Some(Listener::start(name, server)?);
        Ok(self)
    }

    /// `ws://127.0.0.1:PORT`, or empty when served through another listener.
    pub fn base_url(&self) -> String {
        self.listener
            .as_ref()
            .map_or_else(String::new, |l| format!("ws://{}", l.addr()))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
