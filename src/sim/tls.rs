//! `https://` and `wss://` for the simulators, as production's providers have them: a CA made
//! at start-up ([`SimCa`], with `rcgen`) and a leaf for `localhost` and 127.0.0.1 signed by it.
//! A simulator started with the leaf's [`ServerConfig`] ends TLS with rustls on the
//! connection's own thread ([`accept`], called by [`super::listener::Listener`] after the
//! simulated round trip) and serves the plaintext through a
//! [`SimStream`]: one code path (and its timing) for both modes, no relay, and the server
//! under test sees real TLS from the first byte (handshake, records, close_notify).

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::listener::SimStream;

/// How long the whole TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long each blocking read of the handshake, and each write, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Ends TLS on an accepted connection: the handshake, within [`HANDSHAKE_TIMEOUT`], on the
/// connection's own thread. The stream keeps [`IO_TIMEOUT`] on writes (and on reads until the
/// simulator sets its own).
pub fn accept(mut tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<SimStream> {
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake took too long",
            ));
        }
        // An error here is a client that refused our certificate, or one that went away.
        conn.complete_io(&mut tcp)?;
    }
    Ok(SimStream::tls(StreamOwned::new(conn, tcp)))
}
