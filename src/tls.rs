//! Which certificate authorities provider connections trust: the built-in Mozilla roots, plus
//! the CAs of `PROVIDER_CA_FILE` when it is set (an operator behind a TLS-inspecting proxy; the
//! bench's simulators). Extra CAs are trusted *in addition to* the built-in roots, never instead.
//!
//! The trust is the process's: [`trust`] adds a configuration's CAs once at start-up (the server,
//! `generate-audio`), and every provider connection reads it where it is opened — the WebSocket
//! connector ([`crate::providers::ws`]) and every provider ureq agent (through
//! [`crate::http_client::ProviderConnector`]): one `ClientConfig` for all of them, built when
//! the trust changes (start-up), so roots are parsed once and TLS sessions resume. Trust only grows: a test
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

/// The trust every provider connection uses now: one rustls configuration, shared by every
/// WebSocket ([`crate::providers::ws`]) and every provider HTTP agent ([`crate::http_client`]),
/// so the roots are parsed once and a new connection resumes a session an earlier one made.
pub struct Trust {
    extra: Vec<CertificateDer<'static>>,
    rustls: Option<Arc<rustls::ClientConfig>>,
}

impl Trust {
    fn with(extra: Vec<CertificateDer<'static>>) -> Trust {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        store.add_parsable_certificates(extra.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Fails only for a crypto provider without the default protocol versions (ring has
        // them); then connections fall back to the libraries' own configurations.
        let rustls = match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(builder) => Some(Arc::new(
                builder.with_root_certificates(store).with_no_client_auth(),
            )),
            Err(err) => {
                log::error!(error:% = err; "tls.config_failed");
                None
            }
        };
        Trust { extra, rustls }
    }

    /// The process's rustls configuration (`None` only if it could not be built).
    pub fn rustls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.rustls.clone()
    }
}

fn process() -> &'static RwLock<Arc<Trust>> {
    static TRUST: std::sync::OnceLock<RwLock<Arc<Trust>>> = std::sync::OnceLock::new();
    TRUST.get_or_init(|| RwLock::new(Arc::new(Trust::with(Vec::new()))))
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
        *guard = Arc::new(Trust::with(extra));
    }
}

/// What provider connections trust now.
pub fn current() -> Arc<Trust> {
    process().read().unwrap_or_else(|p| p.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_shares_one_configuration_until_a_new_ca_is_trusted() {
        let first = current().rustls().expect("built");
        assert!(Arc::ptr_eq(&first, &current().rustls().expect("built")));
        // Nothing new to trust: the same configuration (and its session cache) stays.
        trust(&ExtraCas::default());
        assert!(Arc::ptr_eq(&first, &current().rustls().expect("built")));
    }
}
