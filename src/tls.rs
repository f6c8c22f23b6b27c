//! Which certificate authorities provider connections trust: the built-in Mozilla roots, plus
//! the CAs of `PROVIDER_CA_FILE` when it is set (an operator behind a TLS-inspecting proxy; the
//! bench's simulators). Extra CAs are trusted *in addition to* the built-in roots, never instead.
//!
//! The trust is the process's: [`trust`] adds a configuration's CAs once at start-up (the server,
//! `generate-audio`), and every provider connection reads it where it is opened — the WebSocket
//! connector ([`crate::providers::ws`]) and every ureq agent (through
//! [`crate::resolve::bounded`], the one place agents are finished). Trust only grows: a test
//! process that runs several servers trusts the union of their CAs, and a CA nobody added is
//! refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::CertificateDer;

/// A set of extra CAs read from a PEM file (or text). Cheap to clone.
#[derive(Clone, Default)]
pub struct ExtraCas {
    source: Option<PathBuf>,
    certs: Arc<Vec<CertificateDer<'static>>>,
}

impl fmt::Debug for ExtraCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraCas")
            .field("source", &self.source)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl ExtraCas {
    /// Reads every certificate of the PEM file at `path`; an unreadable file, or one with no
    /// certificate, is an error that says which.
    pub fn from_pem_file(path: &Path) -> Result<ExtraCas, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut cas = ExtraCas::from_pem(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        cas.source = Some(path.to_path_buf());
        Ok(cas)
    }

    /// Every certificate in PEM text (other items, such as keys, are skipped).
    pub fn from_pem(pem: &[u8]) -> Result<ExtraCas, String> {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => {
                    certs.push(CertificateDer::from(cert.der().to_vec()))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("not a PEM file of certificates: {e}")),
            }
        }
        if certs.is_empty() {
            return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
        }
        // Each must be usable as a trust anchor, or the operator learns it at the first call.
        let mut store = rustls::RootCertStore::empty();
        for cert in &certs {
            store
                .add(cert.clone())
                .map_err(|e| format!("a certificate is not a usable CA: {e}"))?;
        }
        Ok(ExtraCas {
            source: None,
            certs: Arc::new(certs),
        })
    }

    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// The trust every provider connection uses now: `None` parts mean the libraries' built-in
/// roots (nothing was added).
#[derive(Clone, Default)]
pub struct Trust {
    extra: Vec<CertificateDer<'static>>,
    rustls: Option<Arc<rustls::ClientConfig>>,
    ureq: Option<ureq::tls::TlsConfig>,
}

impl Trust {
    fn with(extra: Vec<CertificateDer<'static>>) -> Trust {
        if extra.is_empty() {
            return Trust::default();
        }
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        store.add_parsable_certificates(extra.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let rustls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(store).with_no_client_auth())
            .ok()
            .map(Arc::new);
        let all = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .chain(extra.iter())
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned());
        let ureq = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::from(all))
            .build();
        Trust {
            extra,
            rustls,
            ureq: Some(ureq),
        }
    }

    /// The rustls configuration for a WebSocket (`None`: tungstenite's built-in roots).
    pub fn rustls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.rustls.clone()
    }

    /// The ureq TLS configuration (`None`: ureq's built-in roots).
    pub fn ureq(&self) -> Option<ureq::tls::TlsConfig> {
        self.ureq.clone()
    }
}

fn process() -> &'static RwLock<Trust> {
    static TRUST: std::sync::OnceLock<RwLock<Trust>> = std::sync::OnceLock::new();
    TRUST.get_or_init(|| RwLock::new(Trust::default()))
}

/// Trusts `cas` for every provider connection opened from now on, in addition to the built-in
/// roots and to what was added before.
pub fn trust(cas: &ExtraCas) {
    if cas.is_empty() {
        return;
    }
    let mut guard = process().write().unwrap_or_else(|p| p.into_inner());
    let mut extra = guard.extra.clone();
    let before = extra.len();
    for cert in cas.certs.iter() {
        if !extra.contains(cert) {
            extra.push(cert.clone());
        }
    }
    if extra.len() != before {
        *guard = Trust::with(extra);
    }
}

/// What provider connections trust now.
pub fn current() -> Trust {
    process().read().unwrap_or_else(|p| p.into_inner()).clone()
}
