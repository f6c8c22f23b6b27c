//! `https://` and `wss://` for the simulators, as production's providers have them: a CA made
//! at start-up ([`SimCa`], with `rcgen`), a leaf for `localhost` and 127.0.0.1 signed by it, and
//! a TLS front ([`TlsFront`]) on its own loopback port for each simulator. The front ends TLS
//! with rustls and relays the plain bytes to the simulator's own listener, so every simulator
//! keeps one code path (and its timing) for both modes; the server under test sees real TLS
//! from the first byte (handshake, records, close_notify).
//!
//! One named thread per TLS connection (`{name}-tls-conn`, from [`Listener`]) relays both
//! directions, waiting on both sockets with [`crate::poll`]; the simulator serves the relayed
//! connection on a thread of its own, as in plain mode.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

use super::listener::Listener;
use crate::poll::{self, Watch};

/// How long the TLS handshake, and each blocking write, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one wait for either side lasts before waiting again (connections may idle longer).
const WAIT_TURN: Duration = Duration::from_secs(30);

/// A certificate authority made at start-up, and the server configuration of a leaf it signed
/// for `localhost` and 127.0.0.1.
pub struct SimCa {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

fn cert_error(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("simulator certificate: {err}"))
}

impl SimCa {
    pub fn generate() -> io::Result<SimCa> {
        let ca_key = KeyPair::generate().map_err(cert_error)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "cotrackpro-voice simulators CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(cert_error)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().map_err(cert_error)?;
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(cert_error)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(cert_error)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(cert_error)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf_cert.der().clone()], key)
            .map_err(cert_error)?;
        Ok(SimCa {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        })
    }

    /// The CA certificate, PEM: what a client must trust (`PROVIDER_CA_FILE`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }
}

/// The CA's PEM in a file of its own, removed on drop.
pub struct CaFile(PathBuf);

impl CaFile {
    pub fn write(pem: &str) -> io::Result<CaFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "cotrackpro-voice-sim-ca-{}-{}.pem",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, pem)?;
        Ok(CaFile(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A TLS port in front of a simulator's plain one; stops on drop.
pub struct TlsFront {
    listener: Listener,
}

impl TlsFront {
    /// Ends TLS with `config` on a new loopback port and relays each connection to `target`.
    pub fn start(
        name: &str,
        config: Arc<ServerConfig>,
        target: SocketAddr,
    ) -> io::Result<TlsFront> {
        let listener = Listener::start(&format!("{name}-tls"), move |tcp| {
            relay(tcp, config.clone(), target)
        })?;
        Ok(TlsFront { listener })
    }

    pub fn port(&self) -> u16 {
        self.listener.addr().port()
    }

    /// `url` (a simulator's `scheme://127.0.0.1:PORT/path`) as this front serves it:
    /// `secure_scheme://localhost:FRONT/path`.
    pub fn rebase(&self, url: &str, secure_scheme: &str) -> String {
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
        format!("{secure_scheme}://localhost:{}{path}", self.port())
    }
}

/// Ends TLS on `tcp` and relays between it and a new plain connection to `target` until either
/// side closes.
fn relay(mut tcp: TcpStream, config: Arc<ServerConfig>, target: SocketAddr) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        // An error here is a client that refused our certificate, or the drop-time wake-up.
        conn.complete_io(&mut tcp)?;
    }
    let mut plain = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    plain.set_nodelay(true)?;
    plain.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Plaintext may already be waiting: the request can arrive with the handshake's last
        // flight, read by `complete_io` before the socket is watched.
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => {
                    // close_notify: the client is done.
                    let _ = plain.shutdown(Shutdown::Both);
                    return Ok(());
                }
                Ok(n) => plain.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut tcp)?;
        }
        let (tls_ready, plain_ready) = {
            let mut watches = [Watch::read(tcp.as_fd()), Watch::read(plain.as_fd())];
            poll::wait(&mut watches, Some(Instant::now() + WAIT_TURN))?;
            (watches[0].readable(), watches[1].readable())
        };
        if tls_ready {
            if conn.read_tls(&mut tcp)? == 0 {
                let _ = plain.shutdown(Shutdown::Both);
                return Ok(());
            }
            conn.process_new_packets().map_err(io::Error::other)?;
        }
        if plain_ready {
            let n = plain.read(&mut buf)?;
            if n == 0 {
                conn.send_close_notify();
                while conn.wants_write() {
                    conn.write_tls(&mut tcp)?;
                }
                return Ok(());
            }
            conn.writer().write_all(&buf[..n])?;
        }
    }
}
