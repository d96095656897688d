//! Mesh mTLS for a proxyless gRPC application (gRFC A29): gRPC reads its
//! certificates from files through a `file_watcher` certificate provider of
//! its bootstrap; the agent follows the dataplane's certificate bundle on the
//! zone's dataplane service (`Certificates`) and keeps those files current —
//! at once, and again whenever the zone renews the certificate or the mesh's
//! trust bundle changes. gRPC reads the files again every
//! [`REFRESH_INTERVAL`], so a renewal needs no reconnection.
//!
//! Files, in `--certificates-dir`: `cert.pem` (the certificate and its chain),
//! `key.pem` (its key, readable by the owner only) and `ca.pem` (the mesh's
//! trust bundle). Each is written whole (temporary file, then rename), the
//! new key and certificate renamed back to back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use meridian_proto::dp::CertificateBundle;
use serde_json::{json, Value};

use crate::zone::{self, FailureLog, Zone};

/// The certificate provider instance the agent's bootstraps define (the
/// zone names it in the TLS contexts it sends).
pub const PROVIDER_INSTANCE: &str = meridian_xds::generate::tls::DEFAULT_CERTIFICATE_PROVIDER;
/// The node metadata field that tells the zone the instance exists.
pub const PROVIDER_METADATA: &str = meridian_xds::generate::tls::CERTIFICATE_PROVIDER_METADATA;
/// How often gRPC reads the files again.
pub const REFRESH_INTERVAL: &str = "1s";

/// Where the files are.
#[derive(Debug, Clone, PartialEq)]
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The bootstrap's `certificate_providers` (absolute paths: the
    /// application may run elsewhere).
    pub fn providers(&self) -> std::io::Result<Value> {
        let abs = |p: PathBuf| -> std::io::Result<String> {
            let p = if p.is_absolute() {
                p
            } else {
                std::env::current_dir()?.join(p)
            };
            Ok(p.display().to_string())
        };
        Ok(json!({
            PROVIDER_INSTANCE: {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": abs(self.cert())?,
                    "private_key_file": abs(self.key())?,
                    "ca_certificate_file": abs(self.ca())?,
                    "refresh_interval": REFRESH_INTERVAL,
                },
            },
        }))
    }

    /// Writes an enabled bundle's files.
    pub fn write(&self, b: &CertificateBundle) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let ca = stage(&self.ca(), &b.trust_bundle_pem, 0o644)?;
        std::fs::rename(&ca, self.ca())?;
        let key = stage(&self.key(), &b.private_key_pem, 0o600)?;
        let cert = stage(&self.cert(), &b.certificate_chain_pem, 0o644)?;
        std::fs::rename(&key, self.key())?;
        std::fs::rename(&cert, self.cert())
    }
}

/// Writes `text` to a temporary file beside `path` with `mode`; returns it.
fn stage(path: &Path, text: &str, mode: u32) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(tmp)
}

/// Follows the bundle of dataplane `mesh`.`name` and keeps `files` current,
/// reconnecting with backoff; `first` fires once the first answer is in
/// (files written, or the mesh has no mTLS). Never returns.
pub async fn follow(
    zone: Arc<Zone>,
    mesh: String,
    name: String,
    files: Files,
    max_delay: Duration,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut backoff = zone::backoff(max_delay);
    let mut log = FailureLog::new("certificates");
    let mut last_reason = String::new();
    loop {
        match zone.certificates(&mesh, &name).await {
            Ok(mut stream) => {
                backoff.reset();
                let end = loop {
                    match stream.message().await {
                        Ok(Some(b)) => {
                            log.ok("following the mesh certificates");
                            if b.enabled {
                                match files.write(&b) {
                                    Ok(()) => tracing::info!(
                                        dir = %files.dir.display(),
                                        not_after = b.not_after,
                                        "wrote the mesh certificate"
                                    ),
                                    Err(e) => {
                                        tracing::error!(dir = %files.dir.display(), error = %e, "cannot write the mesh certificate files")
                                    }
                                }
                                last_reason.clear();
                            } else if b.reason != last_reason {
                                tracing::info!(reason = %b.reason, "no mesh certificate");
                                last_reason = b.reason.clone();
                            }
                            if let Some(tx) = first.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(None) => break tonic::Status::unavailable("the zone ended the certificate stream"),
                        Err(status) => break status,
                    }
                };
                log.failed(&zone.failure(&end));
            }
            Err(f) => {
                log.failed(&f);
            }
        }
        tokio::time::sleep(backoff.next_backoff().unwrap_or(max_delay)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn files_are_written_with_the_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            dir: dir.path().join("certs"),
        };
        let b = CertificateBundle {
            enabled: true,
            certificate_chain_pem: "CERT".into(),
            private_key_pem: "KEY".into(),
            trust_bundle_pem: "CA".into(),
            not_after: 1,
            reason: String::new(),
        };
        files.write(&b).unwrap();
        assert_eq!(std::fs::read_to_string(files.cert()).unwrap(), "CERT");
        assert_eq!(std::fs::read_to_string(files.key()).unwrap(), "KEY");
        assert_eq!(std::fs::read_to_string(files.ca()).unwrap(), "CA");
        let mode = std::fs::metadata(files.key()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let p = files.providers().unwrap();
        let c = &p[PROVIDER_INSTANCE]["config"];
        assert_eq!(p[PROVIDER_INSTANCE]["plugin_name"], "file_watcher");
        assert_eq!(c["refresh_interval"], REFRESH_INTERVAL);
        assert!(c["certificate_file"].as_str().unwrap().starts_with('/'));
    }
}
