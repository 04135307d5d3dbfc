//! CA files of `https` checks (`tls.ca_file`): read and checked when the
//! config is validated, so a bad file is a config error with its position,
//! and read again by the prober that uses them.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};
use reqwest::{Certificate, Client};

/// Reads the CA certificates of `path` (PEM) and checks that they can be
/// trusted as roots. Errors name the file.
pub fn read_ca_file(path: &Path) -> anyhow::Result<Vec<Certificate>> {
    let pem = fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
    let certificates = Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("CA file {} is not valid PEM", path.display()))?;
    if certificates.is_empty() {
        bail!(
            "CA file {} holds no certificate (expected PEM with -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    // rustls parses the certificates when a client is built.
    let mut builder = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    for certificate in &certificates {
        builder = builder.add_root_certificate(certificate.clone());
    }
    builder
        .build()
        .with_context(|| format!("CA file {} holds an unusable certificate", path.display()))?;
    Ok(certificates)
}
