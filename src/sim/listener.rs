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
