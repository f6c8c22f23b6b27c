//! The provider TLS section: extra certificate authorities every provider connection trusts,
//! in addition to the built-in Mozilla roots (a TLS-inspecting proxy's CA; the bench's
//! simulators). Read once here: an unreadable file, or one without a certificate, is a
//! configuration error, not a failure at the first call.

use std::path::Path;

use super::read::{Reader, Report};
use crate::tls::ExtraCas;

const CA_FILE: &str = "PROVIDER_CA_FILE";

#[derive(Clone, Debug, Default)]
pub struct ProviderTlsConfig {
    /// Empty when `PROVIDER_CA_FILE` is not set: the built-in roots only.
    pub extra_cas: ExtraCas,
}

impl ProviderTlsConfig {
    pub(super) fn read(r: &mut Reader<'_>) -> ProviderTlsConfig {
        let extra_cas = r
            .optional(CA_FILE, |v| {
                if v.is_empty() {
                    return Err(
                        "is empty; unset it, or give the path of a PEM file of CA certificates"
                            .into(),
                    );
                }
                ExtraCas::from_pem_file(Path::new(v))
            })
            .unwrap_or_default();
        ProviderTlsConfig { extra_cas }
    }

    pub(super) fn report(&self, out: &mut Report) {
        match self.extra_cas.source() {
            Some(path) => out.value(
                CA_FILE,
                format!(
                    "{} ({} certificates, trusted in addition to the built-in roots)",
                    path.display(),
                    self.extra_cas.len()
                ),
            ),
            None => out.value(CA_FILE, "[not set: built-in roots only]"),
        }
    }
}
