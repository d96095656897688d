//! The certificate authority of the global (or of a standalone zone): it
//! keeps a root per CA backend of every mesh and signs the intermediates
//! the zones ask for. Only the leader does this work.
//!
//! For each mesh and each backend of its `mtls.backends`:
//! - **builtin**: the root is made once (RSA of `conf.caCert.RSAbits`, valid
//!   for `conf.caCert.expiration`) and kept in the mesh system record
//!   `mtls-root/<backend>` (certificate and key, created with
//!   `put_system_if_absent`, so replicas agree; it dies with the mesh). A
//!   backend removed and added again under the same name finds its root.
//! - **provided**: the root is read from the mesh's `Secret`s the backend
//!   names, checked by [`pki::load_provided`]; a pair that does not check
//!   out is logged and skipped (the API refuses to store one, unless the
//!   mesh sets `mtls.skipValidation`).
//!
//! The root's certificate goes out as `CertificateAuthority M/<backend>`
//! (synced to every zone: the trust bundle is made of them). Each
//! `ZoneCertificateRequest` for the backend is answered with a
//! `ZoneCertificate M/<zone>.<backend>`: an intermediate for the request's
//! public key, signed again when the request's key changes, when the root
//! changes (its `authority` is the root's digest) and at 4/5 of its
//! lifetime. What no backend or request wants any more is deleted.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_core::decode::Document;
use meridian_core::mesh::Mesh;
use meridian_core::mtls::{
    backend_conf, zone_certificate_name, BackendConf, CertificateAuthority, Secret, ZoneCertificate,
    ZoneCertificateRequest,
};
use meridian_core::resource::format_time;
use meridian_core::{Causes, FieldPath, ResourceKey, ResourceType};
use meridian_store::{Event, Filter, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};

use super::pki::{self, PkiError, SigningCa};
use crate::kds::labels;
use crate::manager::{Manager, WriteError};

/// The prefix of the mesh system records holding builtin roots.
pub const ROOT_RECORD_PREFIX: &str = "mtls-root/";
/// How often the authority looks at every mesh again even without a change
/// (intermediates nearing their end are signed again).
pub const RECHECK_EVERY: Duration = Duration::from_secs(600);

/// Why a mesh's CAs could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Stored material does not decode: fail closed.
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StoredRoot {
    cert_pem: String,
    key_pem: String,
}

/// The digest that names a root in the intermediates it signed.
pub fn authority_digest(cert_pem: &str) -> String {
    Sha256::digest(cert_pem.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The global's (or a standalone zone's) certificate authority.
pub struct Authority {
    manager: Arc<Manager>,
    /// The zone a request without a zone label comes from: a standalone
    /// zone's own.
    local_zone: Option<String>,
}

impl Authority {
    pub fn new(manager: Arc<Manager>, local_zone: Option<String>) -> Self {
        Authority { manager, local_zone }
    }

    /// Runs while this replica leads: a full pass, then the meshes that
    /// events touch, and a full pass every [`RECHECK_EVERY`].
    pub async fn run(self, mut leader: watch::Receiver<bool>) {
        loop {
            if !*leader.borrow_and_update() {
                if leader.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let mut events = self.manager.cache().subscribe();
            self.full_pass().await;
            let mut tick = tokio::time::interval(RECHECK_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    changed = leader.changed() => {
                        if changed.is_err() { return; }
                        if !*leader.borrow() { break; }
                    }
                    _ = tick.tick() => self.full_pass().await,
                    ev = events.recv() => match ev {
                        Ok(ev) => {
                            if let Some(mesh) = mesh_of_interest(&ev) {
                                self.reconcile_logged(&mesh).await;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => self.full_pass().await,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        }
    }

    async fn full_pass(&self) {
        for mesh in self.manager.list(&Filter::kind(ResourceType::Mesh)) {
            self.reconcile_logged(&mesh.key.name).await;
        }
    }

    async fn reconcile_logged(&self, mesh: &str) {
        if let Err(e) = self.reconcile(mesh, Utc::now()).await {
            tracing::warn!(mesh, error = %e, "mesh certificate authorities not brought up to date");
        }
    }

    /// Brings the CAs of `mesh` and the intermediates of its zones up to
    /// date as of `now`.
    pub async fn reconcile(&self, mesh: &str, now: DateTime<Utc>) -> Result<(), AuthorityError> {
        let Some(mesh_res) = self.manager.get(&ResourceKey::global(ResourceType::Mesh, mesh)) else {
            return Ok(());
        };
        let spec: Mesh = serde_json::from_value(mesh_res.spec)
            .map_err(|e| AuthorityError::Corrupt(format!("stored mesh {mesh:?} does not decode: {e}")))?;
        let requests: Vec<(String, ZoneCertificateRequest)> = self
            .manager
            .list(&Filter::in_mesh(ResourceType::ZoneCertificateRequest, mesh))
            .into_iter()
            .filter_map(|r| {
                let zone = r
                    .labels
                    .get(labels::ZONE)
                    .cloned()
                    .or_else(|| self.local_zone.clone())?;
                let req = serde_json::from_value::<ZoneCertificateRequest>(r.spec).ok()?;
                Some((zone, req))
            })
            .collect();
        let mut kept_cas = Vec::new();
        let mut kept_certs = Vec::new();
        for (i, backend) in spec.ca_backends().iter().enumerate() {
            let mut causes = Causes::new();
            let path = FieldPath::new("mtls").field("backends").index(i);
            let Some(conf) = backend_conf(backend, &path, &mut causes) else {
                continue;
            };
            let root = match &conf {
                BackendConf::Builtin(b) => {
                    self.builtin_root(mesh, &backend.name, b.rsa_bits(), b.root_validity(), now)
                        .await?
                }
                BackendConf::Provided {
                    cert_secret,
                    key_secret,
                } => match provided_root(&self.manager, mesh, cert_secret, key_secret, now) {
                    Ok(root) => root,
                    Err(why) => {
                        tracing::warn!(mesh, backend = %backend.name, reason = %why, "provided CA is not usable; its backend issues nothing");
                        continue;
                    }
                },
            };
            kept_cas.push(backend.name.clone());
            let ca = CertificateAuthority {
                kind: backend.kind,
                certificate: root.cert_pem.clone(),
                not_after: format_time(&root.not_after),
            };
            self.upsert(
                ResourceKey::in_mesh(ResourceType::CertificateAuthority, mesh, &backend.name),
                &ca,
            )
            .await?;
            let digest = authority_digest(&root.cert_pem);
            for (zone, req) in requests.iter().filter(|(_, r)| r.backend == backend.name) {
                let name = zone_certificate_name(zone, &backend.name);
                kept_certs.push(name.clone());
                let key = ResourceKey::in_mesh(ResourceType::ZoneCertificate, mesh, &name);
                let current = self
                    .manager
                    .get(&key)
                    .and_then(|r| serde_json::from_value::<ZoneCertificate>(r.spec).ok());
                if current.as_ref().is_some_and(|c| still_good(c, req, &digest, now)) {
                    continue;
                }
                let (certificate, not_after) = pki::sign_intermediate(&root, mesh, zone, &req.public_key, now)?;
                let cert = ZoneCertificate {
                    zone: zone.clone(),
                    backend: backend.name.clone(),
                    public_key: req.public_key.clone(),
                    certificate,
                    not_after: format_time(&not_after),
                    authority: digest.clone(),
                };
                self.upsert(key, &cert).await?;
                tracing::info!(mesh, zone = %zone, backend = %backend.name, "signed a zone intermediate CA");
            }
        }
        for (kind, kept) in [
            (ResourceType::CertificateAuthority, &kept_cas),
            (ResourceType::ZoneCertificate, &kept_certs),
        ] {
            for r in self.manager.list(&Filter::in_mesh(kind, mesh)) {
                if !kept.contains(&r.key.name) {
                    self.manager.delete(&r.key).await?;
                    tracing::info!(mesh, name = %r.key.name, %kind, "removed: no backend or zone asks for it any more");
                }
            }
        }
        Ok(())
    }

    /// Writes `spec` under `key` unless it is there already.
    async fn upsert<T: Serialize>(&self, key: ResourceKey, spec: &T) -> Result<(), AuthorityError> {
        let spec = serde_json::to_value(spec).map_err(|e| AuthorityError::Corrupt(e.to_string()))?;
        if self.manager.get(&key).is_some_and(|r| r.spec == spec) {
            return Ok(());
        }
        self.manager
            .apply(Document {
                key,
                labels: Default::default(),
                spec,
            })
            .await?;
        Ok(())
    }

    /// The builtin root of `backend`, made on first use.
    async fn builtin_root(
        &self,
        mesh: &str,
        backend: &str,
        rsa_bits: u32,
        validity: Duration,
        now: DateTime<Utc>,
    ) -> Result<SigningCa, AuthorityError> {
        let record = format!("{ROOT_RECORD_PREFIX}{backend}");
        let store = self.manager.store();
        let bytes = match store.get_system(Some(mesh), &record).await? {
            Some(b) => b,
            None => {
                let mesh_owned = mesh.to_string();
                // RSA key generation takes a while: off the async workers.
                let (root, key_pem) =
                    tokio::task::spawn_blocking(move || pki::generate_root(&mesh_owned, rsa_bits, validity, now))
                        .await
                        .map_err(|e| AuthorityError::Corrupt(format!("root generation: {e}")))??;
                let fresh = serde_json::to_vec(&StoredRoot {
                    cert_pem: root.cert_pem,
                    key_pem,
                })
                .map_err(|e| AuthorityError::Corrupt(e.to_string()))?;
                let stored = store.put_system_if_absent(Some(mesh), &record, fresh).await?;
                tracing::info!(mesh, backend, rsa_bits, "builtin CA root created");
                stored
            }
        };
        let stored: StoredRoot = serde_json::from_slice(&bytes)
            .map_err(|e| AuthorityError::Corrupt(format!("root of backend {backend:?} of mesh {mesh:?}: {e}")))?;
        Ok(pki::load_root(&stored.cert_pem, &stored.key_pem)?)
    }
}

/// Whether `current` still answers `req` for the root of `digest` at `now`.
fn still_good(current: &ZoneCertificate, req: &ZoneCertificateRequest, digest: &str, now: DateTime<Utc>) -> bool {
    if current.public_key != req.public_key || current.authority != digest {
        return false;
    }
    let Ok(not_after) = pki::not_after(&current.certificate) else {
        return false;
    };
    let Ok(not_before) = pki::not_before(&current.certificate) else {
        return false;
    };
    now < not_before + (not_after - not_before) * 4 / 5
}

/// What keeps a provided backend's pair from being used.
#[derive(Debug, thiserror::Error)]
pub enum ProvidedError {
    #[error("secret {0:?} does not exist in the mesh")]
    Missing(String),
    #[error("secret {0:?} does not decode")]
    Undecodable(String),
    #[error("secret {secret:?}: {error}")]
    Cert { secret: String, error: PkiError },
    #[error("secret {secret:?}: {error}")]
    Key { secret: String, error: PkiError },
}

impl ProvidedError {
    /// Whether the fault lies with the key's secret (else the certificate's).
    pub fn is_key(&self) -> bool {
        matches!(self, ProvidedError::Key { .. })
    }
}

fn secret_text(
    manager: &Manager,
    mesh: &str,
    name: &str,
    overlay: Option<(&str, &[u8])>,
) -> Result<String, ProvidedError> {
    let bytes = match overlay {
        Some((n, data)) if n == name => data.to_vec(),
        _ => {
            let r = manager
                .get(&ResourceKey::in_mesh(ResourceType::Secret, mesh, name))
                .ok_or_else(|| ProvidedError::Missing(name.to_string()))?;
            serde_json::from_value::<Secret>(r.spec)
                .ok()
                .and_then(|s| s.bytes())
                .ok_or_else(|| ProvidedError::Undecodable(name.to_string()))?
        }
    };
    String::from_utf8(bytes).map_err(|_| ProvidedError::Undecodable(name.to_string()))
}

/// The provided root of a backend whose certificate and key are the mesh's
/// secrets `cert_secret` and `key_secret`, checked as of `now`.
pub fn provided_root(
    manager: &Manager,
    mesh: &str,
    cert_secret: &str,
    key_secret: &str,
    now: DateTime<Utc>,
) -> Result<SigningCa, ProvidedError> {
    provided_root_with(manager, mesh, cert_secret, key_secret, None, now)
}

/// [`provided_root`] as if secret `overlay.0` held `overlay.1` (a write
/// being checked before it is stored).
pub fn provided_root_with(
    manager: &Manager,
    mesh: &str,
    cert_secret: &str,
    key_secret: &str,
    overlay: Option<(&str, &[u8])>,
    now: DateTime<Utc>,
) -> Result<SigningCa, ProvidedError> {
    let cert = secret_text(manager, mesh, cert_secret, overlay)?;
    let key = secret_text(manager, mesh, key_secret, overlay)?;
    pki::load_provided(&cert, &key, now).map_err(|error| match error {
        PkiError::KeyMismatch => ProvidedError::Key {
            secret: key_secret.to_string(),
            error,
        },
        PkiError::Pem(ref m) if m.contains("private key") => ProvidedError::Key {
            secret: key_secret.to_string(),
            error,
        },
        error => ProvidedError::Cert {
            secret: cert_secret.to_string(),
            error,
        },
    })
}

/// The mesh whose CAs an event may change.
fn mesh_of_interest(ev: &Event) -> Option<String> {
    let key = match ev {
        Event::Put(r) => &r.key,
        Event::Delete { key, .. } => key,
    };
    match key.kind {
        ResourceType::Mesh => Some(key.name.clone()),
        ResourceType::Secret
        | ResourceType::ZoneCertificateRequest
        | ResourceType::CertificateAuthority
        | ResourceType::ZoneCertificate => key.mesh.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::http::StatusCode;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use meridian_store::cache::Cache;
    use meridian_store::memory::MemoryStore;
    use meridian_store::Store;
    use serde_json::json;

    use super::*;
    use crate::mtls::checks;

    async fn manager() -> Arc<Manager> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let cache = Cache::start(store.clone());
        let _ = cache.ready().clone().wait_for(|r| *r).await;
        Arc::new(Manager::new(store, cache))
    }

    async fn put(m: &Manager, kind: ResourceType, mesh: Option<&str>, name: &str, spec: serde_json::Value) {
        let key = match mesh {
            Some(mesh) => ResourceKey::in_mesh(kind, mesh, name),
            None => ResourceKey::global(kind, name),
        };
        m.apply(Document {
            key,
            labels: Default::default(),
            spec,
        })
        .await
        .unwrap();
    }

    async fn request(m: &Manager, mesh: &str, zone: &str, backend: &str) -> (String, String) {
        let (key_pem, public_pem) = pki::generate_intermediate_key().unwrap();
        m.apply(Document {
            key: ResourceKey::in_mesh(ResourceType::ZoneCertificateRequest, mesh, &format!("{zone}.{backend}")),
            labels: BTreeMap::from([(labels::ZONE.to_string(), zone.to_string())]),
            spec: json!({"backend": backend, "publicKey": public_pem}),
        })
        .await
        .unwrap();
        (key_pem, public_pem)
    }

    fn get<T: serde::de::DeserializeOwned>(m: &Manager, kind: ResourceType, mesh: &str, name: &str) -> Option<T> {
        m.get(&ResourceKey::in_mesh(kind, mesh, name))
            .map(|r| serde_json::from_value(r.spec).unwrap())
    }

    #[tokio::test]
    async fn builtin_root_and_zone_intermediates() {
        let m = manager().await;
        put(
            &m,
            ResourceType::Mesh,
            None,
            "default",
            json!({"mtls": {"enabledBackend": "ca-1", "backends": [
                {"name": "ca-1", "type": "builtin"}
            ]}}),
        )
        .await;
        let authority = Authority::new(m.clone(), None);
        let now = Utc::now();
        authority.reconcile("default", now).await.unwrap();
        let ca: CertificateAuthority = get(&m, ResourceType::CertificateAuthority, "default", "ca-1").unwrap();
        // The root's key stays in the system record.
        let record = m
            .store()
            .get_system(Some("default"), "mtls-root/ca-1")
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8(record).unwrap().contains("PRIVATE KEY"));
        assert!(!serde_json::to_string(&ca).unwrap().contains("PRIVATE KEY"));

        let (key_pem, public_pem) = request(&m, "default", "zone-1", "ca-1").await;
        authority.reconcile("default", now).await.unwrap();
        let zc: ZoneCertificate = get(&m, ResourceType::ZoneCertificate, "default", "zone-1.ca-1").unwrap();
        assert_eq!(zc.public_key, public_pem);
        assert_eq!(zc.authority, authority_digest(&ca.certificate));
        let intermediate = pki::Intermediate::new(&key_pem, &zc.certificate).unwrap();
        intermediate
            .issue(
                "default",
                &["web".into()],
                &BTreeMap::new(),
                Duration::from_secs(600),
                now,
            )
            .unwrap();

        // Unchanged: nothing is signed again.
        let before = m
            .get(&ResourceKey::in_mesh(
                ResourceType::ZoneCertificate,
                "default",
                "zone-1.ca-1",
            ))
            .unwrap();
        authority.reconcile("default", now).await.unwrap();
        let after = m
            .get(&ResourceKey::in_mesh(
                ResourceType::ZoneCertificate,
                "default",
                "zone-1.ca-1",
            ))
            .unwrap();
        assert_eq!(before.version, after.version);
        // Past 4/5 of its lifetime it is signed again.
        let late = now + chrono::Duration::days(300);
        authority.reconcile("default", late).await.unwrap();
        let renewed: ZoneCertificate = get(&m, ResourceType::ZoneCertificate, "default", "zone-1.ca-1").unwrap();
        assert_ne!(renewed.certificate, zc.certificate);

        // The backend removed: its CA and intermediates go.
        put(&m, ResourceType::Mesh, None, "default", json!({})).await;
        authority.reconcile("default", now).await.unwrap();
        assert!(get::<CertificateAuthority>(&m, ResourceType::CertificateAuthority, "default", "ca-1").is_none());
        assert!(get::<ZoneCertificate>(&m, ResourceType::ZoneCertificate, "default", "zone-1.ca-1").is_none());
    }

    fn secret(pem: &str) -> serde_json::Value {
        json!({"data": STANDARD.encode(pem)})
    }

    #[tokio::test]
    async fn provided_ca_from_secrets_checked_at_the_api() {
        let m = manager().await;
        put(&m, ResourceType::Mesh, None, "team-a", json!({})).await;
        let now = Utc::now();
        let (root, key_pem) = pki::generate_root("team-a", 2048, Duration::from_secs(86400 * 365), now).unwrap();
        let (_, other_key) = pki::generate_root("team-a", 2048, Duration::from_secs(86400), now).unwrap();
        let provided = json!({"mtls": {"enabledBackend": "ca-p", "backends": [
            {"name": "ca-p", "type": "provided", "conf": {"cert": {"secret": "ca-cert"}, "key": {"secret": "ca-key"}}}
        ]}});
        let doc = |spec: serde_json::Value| Document {
            key: ResourceKey::global(ResourceType::Mesh, "team-a"),
            labels: Default::default(),
            spec,
        };
        // The secrets do not exist yet.
        let err = checks::check_write(&m, &doc(provided.clone())).unwrap_err();
        assert_eq!(err.causes[0].field, "mtls.backends[0].conf.cert.secret");
        // A key of another certificate.
        put(
            &m,
            ResourceType::Secret,
            Some("team-a"),
            "ca-cert",
            secret(&root.cert_pem),
        )
        .await;
        put(&m, ResourceType::Secret, Some("team-a"), "ca-key", secret(&other_key)).await;
        let err = checks::check_write(&m, &doc(provided.clone())).unwrap_err();
        assert_eq!(err.causes[0].field, "mtls.backends[0].conf.key.secret");
        assert!(
            err.causes[0].message.contains("does not match"),
            "{}",
            err.causes[0].message
        );
        // The right key.
        put(&m, ResourceType::Secret, Some("team-a"), "ca-key", secret(&key_pem)).await;
        checks::check_write(&m, &doc(provided.clone())).unwrap();
        put(&m, ResourceType::Mesh, None, "team-a", provided).await;

        // Secrets in use: garbage refused, deletion refused.
        let garbage = Document {
            key: ResourceKey::in_mesh(ResourceType::Secret, "team-a", "ca-cert"),
            labels: Default::default(),
            spec: secret("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        };
        let err = checks::check_write(&m, &garbage).unwrap_err();
        assert_eq!(err.causes[0].field, "data");
        assert!(err.causes[0].message.contains("ca-p"), "{}", err.causes[0].message);
        let err = checks::check_delete(&m, &garbage.key).unwrap_err();
        assert_eq!(err.status, StatusCode::CONFLICT);

        // The authority publishes the provided root and signs with it.
        let authority = Authority::new(m.clone(), Some("zone-1".into()));
        let (key, _) = {
            let (key_pem, public_pem) = pki::generate_intermediate_key().unwrap();
            m.apply(Document {
                key: ResourceKey::in_mesh(ResourceType::ZoneCertificateRequest, "team-a", "ca-p"),
                labels: Default::default(),
                spec: json!({"backend": "ca-p", "publicKey": public_pem}),
            })
            .await
            .unwrap();
            (key_pem, public_pem)
        };
        authority.reconcile("team-a", now).await.unwrap();
        let ca: CertificateAuthority = get(&m, ResourceType::CertificateAuthority, "team-a", "ca-p").unwrap();
        assert_eq!(ca.certificate.trim(), root.cert_pem.trim());
        // A request without a zone label is the standalone zone's own.
        let zc: ZoneCertificate = get(&m, ResourceType::ZoneCertificate, "team-a", "zone-1.ca-p").unwrap();
        pki::Intermediate::new(&key, &zc.certificate).unwrap();
    }
}
