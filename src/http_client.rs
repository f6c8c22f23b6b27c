//! The transport under every provider HTTP agent (ureq): TCP, then TLS with the process's one
//! rustls configuration ([`crate::tls::current`], so root certificates are parsed once and
//! sessions resume across connections), and a way for one call to abandon its own request at
//! once while the agent and its pool of connections are shared by every call.
//!
//! ureq hands its connector no request context, and a pooled connection serves many requests,
//! so a request is tied to its caller by the thread doing its I/O (ureq does all of it on the
//! caller's thread): a [`RequestScope`] entered on that thread ([`RequestScope::enter`]) claims
//! every connection the thread reads or writes while the guard lives, and
//! [`RequestScope::shutdown`], from any thread, shuts those connections' sockets down (a read
//! blocked on them returns at once) and refuses every later request of the scope. When the
//! guard drops the claims are released: a connection back in the pool belongs to no call, so
//! the end of one call never cuts a connection another call picked up since.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, ShutdownHandle, TcpConnector,
    Transport, TransportAdapter,
};

/// What an agent's connections carry, per direction and per layer (TCP, then TLS): the
/// response's head must fit the input buffer whole (providers send 1–3 KiB of headers), and a
/// 16 KiB input holds one whole TLS record. Requests are streamed through the output buffer
/// in pieces, so its size bounds nothing but the pieces. ureq's default is 128 KiB each, zeroed
/// when a connection first moves bytes: four of them per TLS connection.
pub const INPUT_BUFFER_BYTES: usize = 16 * 1024;
/// See [`INPUT_BUFFER_BYTES`].
pub const OUTPUT_BUFFER_BYTES: usize = 8 * 1024;
/// Each buffer of the TCP layer under TLS: it hands bytes to rustls and takes records from it
/// (a 16 KiB record moves in four reads; a model's streamed events are far smaller).
const TCP_UNDER_TLS_BUFFER_BYTES: usize = 4 * 1024;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection's socket and who is using it now (the id of a [`RequestScope`], 0: nobody).
struct Claim {
    socket: Mutex<Option<Weak<dyn ShutdownHandle>>>,
    owner: Mutex<u64>,
}

impl Claim {
    fn new() -> Arc<Claim> {
        Arc::new(Claim {
            socket: Mutex::new(None),
            owner: Mutex::new(0),
        })
    }

    fn shut_down(&self) {
        let socket = lock(&self.socket).as_ref().and_then(Weak::upgrade);
        if let Some(socket) = socket {
            socket.shutdown();
        }
    }
}

#[derive(Default)]
struct ScopeState {
    closed: bool,
    claims: Vec<Weak<Claim>>,
}

struct ScopeInner {
    id: u64,
    state: Mutex<ScopeState>,
}

/// The requests of one user of a shared agent (a call): [`RequestScope::shutdown`] interrupts
/// the ones in flight and refuses later ones. Cheap to clone; clones are the same scope.
#[derive(Clone)]
pub struct RequestScope(Arc<ScopeInner>);

impl fmt::Debug for RequestScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestScope")
            .field("id", &self.0.id)
            .field("closed", &self.is_shut_down())
            .finish()
    }
}

thread_local! {
    /// The scope whose requests this thread is making now.
    static CURRENT: std::cell::RefCell<Option<RequestScope>> = const { std::cell::RefCell::new(None) };
}

impl Default for RequestScope {
    fn default() -> RequestScope {
        RequestScope::new()
    }
}

impl RequestScope {
    pub fn new() -> RequestScope {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        RequestScope(Arc::new(ScopeInner {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(ScopeState::default()),
        }))
    }

    /// Makes the current thread's requests this scope's until the guard drops (then the
    /// connections they used are released to whoever uses them next).
    pub fn enter(&self) -> ScopeGuard {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        ScopeGuard {
            scope: self.clone(),
            previous,
        }
    }

    /// Shuts down the sockets of this scope's requests in flight (a blocked read returns at
    /// once) and makes every later request of the scope fail before it starts.
    pub fn shutdown(&self) {
        let claims = {
            let mut state = lock(&self.0.state);
            state.closed = true;
            std::mem::take(&mut state.claims)
        };
        for claim in claims.iter().filter_map(Weak::upgrade) {
            // Held while shutting down, so a connection cannot change hands meanwhile.
            let owner = lock(&claim.owner);
            if *owner == self.0.id {
                claim.shut_down();
            }
        }
    }

    pub fn is_shut_down(&self) -> bool {
        lock(&self.0.state).closed
    }

    /// Takes `claim` for this scope; refused once the scope is shut down.
    fn adopt(&self, claim: &Arc<Claim>) -> Result<(), ureq::Error> {
        let mut state = lock(&self.0.state);
        if state.closed {
            return Err(stopped());
        }
        let mut owner = lock(&claim.owner);
        if *owner != self.0.id {
            *owner = self.0.id;
            state.claims.retain(|c| c.strong_count() > 0);
            state.claims.push(Arc::downgrade(claim));
        }
        Ok(())
    }

    /// Lets go of every connection this scope claimed (they are idle or gone).
    fn release(&self) {
        let claims = std::mem::take(&mut lock(&self.0.state).claims);
        for claim in claims.iter().filter_map(Weak::upgrade) {
            let mut owner = lock(&claim.owner);
            if *owner == self.0.id {
                *owner = 0;
            }
        }
    }
}

/// While it lives, the thread's requests belong to its scope.
pub struct ScopeGuard {
    scope: RequestScope,
    previous: Option<RequestScope>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        self.scope.release();
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

fn stopped() -> ureq::Error {
    ureq::Error::Io(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the request's call has ended",
    ))
}

/// Claims `claim` for the scope the current thread is in, if any.
fn claim_for_current(claim: &Arc<Claim>) -> Result<(), ureq::Error> {
    let scope = CURRENT.with(|c| c.borrow().clone());
    match scope {
        Some(scope) => scope.adopt(claim),
        None => {
            *lock(&claim.owner) = 0;
            Ok(())
        }
    }
}

/// The connector of every provider agent: TCP (ureq's), TLS with the process's configuration
/// for `https`, and the connection's socket claimed by the current thread's [`RequestScope`].
#[derive(Debug, Default)]
pub struct ProviderConnector;

impl Connector<()> for ProviderConnector {
    type Out = Box<dyn Transport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let claim = Claim::new();
        // Claimed before the TCP connect, so a scope shut down meanwhile refuses the socket.
        claim_for_current(&claim)?;
        let agent_register = details.register_shutdown.clone();
        let socket_slot = claim.clone();
        // Under TLS the TCP layer's buffers only move bytes in and out of rustls: small ones
        // (a TLS connection has two pairs; a busy server holds hundreds of connections).
        let tcp_config = if details.needs_tls() {
            tcp_under_tls_config()
        } else {
            details.config
        };
        let tcp_details = ConnectionDetails {
            uri: details.uri,
            addrs: details.addrs.clone(),
            config: tcp_config,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: details.current_time.clone(),
            run_connector: details.run_connector.clone(),
            register_shutdown: Arc::new(move |handle: Weak<dyn ShutdownHandle>| {
                *lock(&socket_slot.socket) = Some(handle.clone());
                agent_register(handle)
            }),
        };
        let tcp: Box<dyn Transport> =
            match Connector::<()>::connect(&TcpConnector::default(), &tcp_details, None)? {
                Some(tcp) => Box::new(tcp),
                None => return Err(ureq::Error::ConnectionFailed),
            };
        // A shutdown during the TCP connect found no socket yet: look again.
        claim_for_current(&claim).inspect_err(|_| claim.shut_down())?;
        let inner = if details.needs_tls() {
            Box::new(tls(details, tcp)?) as Box<dyn Transport>
        } else {
            tcp
        };
        Ok(Some(Box::new(Scoped { inner, claim })))
    }
}

/// The settings of the TCP layer of a TLS connection: ureq's defaults (`TCP_NODELAY` among
/// them) with [`TCP_UNDER_TLS_BUFFER_BYTES`] buffers.
fn tcp_under_tls_config() -> &'static ureq::config::Config {
    static CONFIG: std::sync::OnceLock<ureq::config::Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        ureq::Agent::config_builder()
            .input_buffer_size(TCP_UNDER_TLS_BUFFER_BYTES)
            .output_buffer_size(TCP_UNDER_TLS_BUFFER_BYTES)
            .build()
    })
}

fn tls(details: &ConnectionDetails, tcp: Box<dyn Transport>) -> Result<TlsTransport, ureq::Error> {
    let host = details
        .uri
        .authority()
        .map(|a| a.host().trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| ureq::Error::BadUri(details.uri.to_string()))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| ureq::Error::Tls("not a valid TLS server name"))?;
    let config = crate::tls::current()
        .rustls()
        .ok_or(ureq::Error::Tls("no TLS configuration could be built"))?;
    let mut conn = ClientConnection::new(config, name)?;
    let mut sock = TransportAdapter::new(tcp, details.current_time.clone());
    sock.set_timeout(details.timeout);
    conn.complete_io(&mut sock)?;
    Ok(TlsTransport {
        buffers: LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        ),
        stream: StreamOwned { conn, sock },
    })
}

/// TLS over a connection, with the process's rustls configuration.
struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// A connection that belongs, at each read and write, to the scope of the thread doing it.
struct Scoped {
    inner: Box<dyn Transport>,
    claim: Arc<Claim>,
}

impl fmt::Debug for Scoped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Transport for Scoped {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        claim_for_current(&self.claim)?;
        self.inner.transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        claim_for_current(&self.claim)?;
        self.inner.maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        claim_for_current(&self.claim)?;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}
