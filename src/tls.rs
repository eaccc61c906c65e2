//! TLS settings from PEM files (rustls with the ring provider): the HTTPS listener's certificate, and
//! the MQTT client's trust and certificate. Errors name the file and what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file; none is an error.
pub fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{}: not a readable PEM certificate file", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: holds no PEM certificate", path.display());
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("{}: not a readable PEM private key", path.display()))
}

/// A client configuration trusting the certificates of `ca_file`, or the system's when it is empty,
/// and presenting `client` (certificate and key files) when given.
pub fn client_config(ca_file: &Path, client: Option<(&Path, &Path)>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if ca_file.as_os_str().is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert); // the system store may hold certificates rustls does not parse
        }
        anyhow::ensure!(!roots.is_empty(), "no system CA certificates found; set ca_file");
    } else {
        for cert in certificates(ca_file)? {
            roots
                .add(cert)
                .with_context(|| format!("{}: not a usable CA certificate", ca_file.display()))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .with_context(|| {
                format!(
                    "{} and {} do not make a client certificate",
                    cert.display(),
                    key.display()
                )
            }),
    }
}

/// A server configuration presenting the chain of `cert` with the key of `key`, for HTTP/1.1 and 2.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .with_context(|| {
            format!(
                "{} and {} do not make a certificate and its key",
                cert.display(),
                key.display()
            )
        })?;
    // HTTP/1.1 only: the server bounds HTTP/1's waits (service/server.rs), not HTTP/2's.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
