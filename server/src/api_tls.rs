//! The HTTP API's TLS (`--api-tls-cert/--api-tls-key`): the rustls acceptor
//! `http_serve` puts in front of the router.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The API's certificate and key files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ApiTls {
    /// Both files or neither.
    pub fn from_paths(cert: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<Option<Self>> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(ApiTls { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("--api-tls-cert needs --api-tls-key"),
            (None, Some(_)) => anyhow::bail!("--api-tls-key needs --api-tls-cert"),
        }
    }

    /// Reads and checks the files into an acceptor.
    pub fn acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        let cert_pem = std::fs::read(&self.cert).with_context(|| format!("reading {}", self.cert.display()))?;
        let key_pem = std::fs::read(&self.key).with_context(|| format!("reading {}", self.key.display()))?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--api-tls-cert {}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            anyhow::bail!("--api-tls-cert {}: no certificate in it", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| anyhow::anyhow!("--api-tls-key {}: {e}", self.key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the API's TLS certificate and key do not go together")?;
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
