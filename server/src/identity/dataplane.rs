//! Dataplane tokens (DESIGN §10): issued by the global (or a standalone
//! zone) with a per-mesh Ed25519 key, verified by zones from what KDS syncs.
//!
//! Keys. Serial `n` of mesh `M` is a pair: the private half in the mesh's
//! system record `dataplane-token-signing-key/<n>` (created with
//! `put_system_if_absent`, so replicas on one etcd agree), the public half
//! as the resource `DataplaneTokenKey M/key-<n>`, which zones receive. The
//! highest serial signs; [`DataplaneTokenIssuer::rotate`] adds the next one,
//! and [`DataplaneTokenIssuer::retire`] removes an older one, which ends
//! every token it signed. Both halves die with the mesh, so a mesh created
//! again under the same name accepts none of the old tokens. Serials are
//! never reused: a retired key leaves a marker in its record.
//!
//! Revocations are `DataplaneTokenRevocation M/<jti>` resources.
//!
//! [`DataplaneTokenVerifier`] reads only the cache (the zone's replica): a
//! verification costs one signature check and two map lookups.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Utc;
use meridian_core::decode::Document;
use meridian_core::identity::{check_token_tags, key_name, key_serial, DataplaneClaims, DataplaneTokenKey, ISSUER};
use meridian_core::names::check_subdomain;
use meridian_core::resource::format_time;
use meridian_core::{ResourceKey, ResourceType};
use meridian_store::{Filter, StoreError};
use serde::{Deserialize, Serialize};

use super::jwt::{self, JwtError};
use crate::manager::{Manager, WriteError};

/// The longest validity a token may be issued with (ten years).
pub const MAX_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The prefix of the mesh system records holding private keys.
pub const PRIVATE_KEY_RECORD_PREFIX: &str = "dataplane-token-signing-key/";

/// Why a token was not issued, accepted, revoked, or a key not changed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneTokenError {
    /// The token itself is unacceptable (shape, algorithm, signature, time).
    #[error("dataplane token: {0}")]
    Jwt(#[from] JwtError),
    /// The token's claims are not what Meridian issues.
    #[error("dataplane token: {0}")]
    Claims(String),
    /// The mesh does not exist (here).
    #[error("mesh {0:?} does not exist")]
    UnknownMesh(String),
    /// The key the token names is not (or no longer) one of the mesh's.
    #[error("dataplane token: it was signed with key {kid:?}, which mesh {mesh:?} does not have (retired, or not yet synced to this zone)")]
    UnknownKey { mesh: String, kid: String },
    /// The token was revoked.
    #[error("dataplane token {id} of mesh {mesh:?} has been revoked")]
    Revoked { mesh: String, id: String },
    /// A request field is invalid; names the field.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// Retiring the key that signs new tokens.
    #[error("{0}")]
    ActiveKey(String),
    /// The key to retire does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Stored key material does not decode: fail closed.
    #[error("stored signing key: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A write failed.
    #[error(transparent)]
    Write(WriteError),
    /// Key material could not be made (no randomness) or encoded.
    #[error("{0}")]
    Internal(String),
}

impl From<WriteError> for DataplaneTokenError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::MeshNotFound(m) => DataplaneTokenError::UnknownMesh(m),
            other => DataplaneTokenError::Write(other),
        }
    }
}

impl DataplaneTokenError {
    /// Whether the proxy failed to prove who it is (as opposed to the
    /// control plane failing).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Self::Jwt(_) | Self::Claims(_) | Self::UnknownMesh(_) | Self::UnknownKey { .. } | Self::Revoked { .. }
        )
    }
}

/// What a token is issued for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssueRequest {
    pub mesh: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    #[serde(skip)]
    pub valid_for: Duration,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
enum PrivateRecord {
    /// PKCS#8, base64.
    Ed25519 { pkcs8: String },
    /// The key was retired; its serial is not used again.
    Retired { retired_at: String },
}

/// Issues tokens and manages keys; the global and standalone zones have one.
pub struct DataplaneTokenIssuer {
    manager: Arc<Manager>,
}

impl std::fmt::Debug for DataplaneTokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataplaneTokenIssuer").finish_non_exhaustive()
    }
}

fn private_record(serial: u64) -> String {
    format!("{PRIVATE_KEY_RECORD_PREFIX}{serial}")
}

/// The serials of the mesh's key resources, highest last.
fn serials(manager: &Manager, mesh: &str) -> Vec<u64> {
    let mut s: Vec<u64> = manager
        .list(&Filter::in_mesh(ResourceType::DataplaneTokenKey, mesh))
        .iter()
        .filter_map(|r| key_serial(&r.key.name))
        .collect();
    s.sort_unstable();
    s
}

impl DataplaneTokenIssuer {
    pub fn new(manager: Arc<Manager>) -> Self {
        DataplaneTokenIssuer { manager }
    }

    fn check_mesh(&self, mesh: &str) -> Result<(), DataplaneTokenError> {
        if self
            .manager
            .get(&ResourceKey::global(ResourceType::Mesh, mesh))
            .is_none()
        {
            return Err(DataplaneTokenError::UnknownMesh(mesh.to_string()));
        }
        Ok(())
    }

    /// Issues a token valid for `req.valid_for` from now.
    pub async fn issue(&self, req: &IssueRequest) -> Result<String, DataplaneTokenError> {
        self.issue_at(req, Utc::now().timestamp()).await
    }

    /// [`Self::issue`] as if the time were `now` (unix seconds).
    pub async fn issue_at(&self, req: &IssueRequest, now: i64) -> Result<String, DataplaneTokenError> {
        let invalid = |field, message: String| DataplaneTokenError::Invalid { field, message };
        if req.mesh.is_empty() {
            return Err(invalid("mesh", "is required".into()));
        }
        if let Some(name) = &req.name {
            check_subdomain(name).map_err(|e| invalid("name", e))?;
        }
        check_token_tags(&req.tags).map_err(|e| invalid("tags", e))?;
        if req.valid_for.as_secs() == 0 {
            return Err(invalid("validFor", "must be at least 1s".into()));
        }
        if req.valid_for > MAX_VALIDITY {
            return Err(invalid(
                "validFor",
                format!("must be at most {}h", MAX_VALIDITY.as_secs() / 3600),
            ));
        }
        self.check_mesh(&req.mesh)?;
        let (kid, key) = self.signing_key(&req.mesh).await?;
        let claims = DataplaneClaims {
            iss: ISSUER.into(),
            mesh: req.mesh.clone(),
            name: req.name.clone(),
            tags: req.tags.clone(),
            jti: jwt::new_token_id().map_err(|e| DataplaneTokenError::Internal(e.0))?,
            iat: now,
            exp: now.saturating_add(req.valid_for.as_secs() as i64),
        };
        jwt::sign(&key, &kid, &claims).map_err(|e| DataplaneTokenError::Internal(format!("encoding the token: {e}")))
    }

    /// The key that signs new tokens of `mesh`, created as serial 1 when the
    /// mesh has none.
    async fn signing_key(&self, mesh: &str) -> Result<(String, ring::signature::Ed25519KeyPair), DataplaneTokenError> {
        let serial = match serials(&self.manager, mesh).last() {
            Some(s) => *s,
            None => {
                self.ensure_key(mesh, 1).await?;
                1
            }
        };
        let record = self
            .manager
            .store()
            .get_system(Some(mesh), &private_record(serial))
            .await?;
        match record.map(|r| decode_private(&r)).transpose()? {
            Some(PrivateRecord::Ed25519 { pkcs8 }) => {
                let der = STANDARD
                    .decode(pkcs8)
                    .map_err(|e| DataplaneTokenError::Corrupt(format!("key-{serial} of mesh {mesh:?}: {e}")))?;
                let key = jwt::load_key(&der)
                    .map_err(|e| DataplaneTokenError::Corrupt(format!("key-{serial} of mesh {mesh:?}: {e}")))?;
                Ok((key_name(serial), key))
            }
            Some(PrivateRecord::Retired { .. }) | None => Err(DataplaneTokenError::Corrupt(format!(
                "key-{serial} of mesh {mesh:?} has no private key here"
            ))),
        }
    }

    /// Makes sure key `serial` of `mesh` exists, both halves.
    async fn ensure_key(&self, mesh: &str, serial: u64) -> Result<(), DataplaneTokenError> {
        let fresh = jwt::generate_key().map_err(|e| DataplaneTokenError::Internal(e.0))?;
        let record = serde_json::to_vec(&PrivateRecord::Ed25519 {
            pkcs8: STANDARD.encode(&fresh),
        })
        .map_err(|e| DataplaneTokenError::Internal(e.to_string()))?;
        let stored = self
            .manager
            .store()
            .put_system_if_absent(Some(mesh), &private_record(serial), record)
            .await?;
        let PrivateRecord::Ed25519 { pkcs8 } = decode_private(&stored)? else {
            return Err(DataplaneTokenError::Corrupt(format!(
                "key-{serial} of mesh {mesh:?} was retired"
            )));
        };
        let der = STANDARD
            .decode(pkcs8)
            .map_err(|e| DataplaneTokenError::Corrupt(e.to_string()))?;
        let key = jwt::load_key(&der).map_err(|e| DataplaneTokenError::Corrupt(e.0))?;
        let public = DataplaneTokenKey::ed25519(&jwt::public_key(&key));
        let doc = Document {
            key: ResourceKey::in_mesh(ResourceType::DataplaneTokenKey, mesh, &key_name(serial)),
            labels: Default::default(),
            spec: serde_json::to_value(public).map_err(|e| DataplaneTokenError::Internal(e.to_string()))?,
        };
        // Concurrent first issues (and replicas) all try to create the same
        // resource from the same private key: one creates it, the others
        // find it.
        if self.manager.create_if_absent(doc).await? {
            tracing::info!(mesh, key = %key_name(serial), "dataplane token signing key created");
        }
        Ok(())
    }

    /// Adds the mesh's next key, which signs every token issued from now on;
    /// returns its name. Tokens of the older keys stay valid until those
    /// keys are retired.
    pub async fn rotate(&self, mesh: &str) -> Result<String, DataplaneTokenError> {
        self.check_mesh(mesh)?;
        let next = serials(&self.manager, mesh).last().map_or(1, |s| s + 1);
        self.ensure_key(mesh, next).await?;
        Ok(key_name(next))
    }

    /// Removes key `name` of `mesh`: every token it signed stops being
    /// accepted. The key that signs new tokens cannot be retired; rotate
    /// first.
    pub async fn retire(&self, mesh: &str, name: &str) -> Result<(), DataplaneTokenError> {
        self.check_mesh(mesh)?;
        let all = serials(&self.manager, mesh);
        let serial = key_serial(name).filter(|s| all.contains(s)).ok_or_else(|| {
            DataplaneTokenError::NotFound(format!("mesh {mesh:?} has no dataplane token key {name:?}"))
        })?;
        if all.last() == Some(&serial) {
            return Err(DataplaneTokenError::ActiveKey(format!(
                "{name} signs the new tokens of mesh {mesh:?}; rotate first (meridianctl rotate dataplane-token-key --mesh {mesh})"
            )));
        }
        let marker = serde_json::to_vec(&PrivateRecord::Retired {
            retired_at: format_time(&Utc::now()),
        })
        .map_err(|e| DataplaneTokenError::Internal(e.to_string()))?;
        self.manager
            .store()
            .put_system(Some(mesh), &private_record(serial), marker)
            .await?;
        self.manager
            .delete(&ResourceKey::in_mesh(ResourceType::DataplaneTokenKey, mesh, name))
            .await?;
        tracing::info!(mesh, key = name, "dataplane token signing key retired");
        Ok(())
    }

    /// Revokes token `id` of `mesh`. Revoking an unknown or revoked id is
    /// not an error (ids are not recorded when issued).
    pub async fn revoke(&self, mesh: &str, id: &str) -> Result<(), DataplaneTokenError> {
        jwt::check_token_id(id).map_err(|message| DataplaneTokenError::Invalid { field: "id", message })?;
        self.check_mesh(mesh)?;
        let doc = Document {
            key: ResourceKey::in_mesh(ResourceType::DataplaneTokenRevocation, mesh, id),
            labels: Default::default(),
            spec: serde_json::json!({"revokedAt": format_time(&Utc::now())}),
        };
        self.manager.create_if_absent(doc).await?;
        tracing::info!(mesh, id, "dataplane token revoked");
        Ok(())
    }
}

fn decode_private(bytes: &[u8]) -> Result<PrivateRecord, DataplaneTokenError> {
    serde_json::from_slice(bytes).map_err(|e| DataplaneTokenError::Corrupt(format!("record does not decode: {e}")))
}

/// Verifies dataplane tokens from the replica; zones (and standalone zones)
/// have one.
#[derive(Clone)]
pub struct DataplaneTokenVerifier {
    manager: Arc<Manager>,
}

/// A verified token: its claims and the key that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDataplane {
    pub claims: DataplaneClaims,
    pub kid: String,
}

impl DataplaneTokenVerifier {
    pub fn new(manager: Arc<Manager>) -> Self {
        DataplaneTokenVerifier { manager }
    }

    /// Checks `token` now.
    pub fn verify(&self, token: &str) -> Result<VerifiedDataplane, DataplaneTokenError> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// Checks `token` as if the time were `now` (unix seconds): shape,
    /// algorithm, the key it names in its mesh, the signature, the issuer,
    /// the times, and revocation.
    pub fn verify_at(&self, token: &str, now: i64) -> Result<VerifiedDataplane, DataplaneTokenError> {
        let parsed = jwt::parse(token)?;
        // Read (not trusted) only to find the key; trusted after `verify`.
        let claims: DataplaneClaims = parsed.claims()?;
        let key = self.manager.get(&ResourceKey::in_mesh(
            ResourceType::DataplaneTokenKey,
            &claims.mesh,
            &parsed.kid,
        ));
        let Some(key) = key else {
            if self
                .manager
                .get(&ResourceKey::global(ResourceType::Mesh, &claims.mesh))
                .is_none()
            {
                return Err(DataplaneTokenError::UnknownMesh(claims.mesh));
            }
            return Err(DataplaneTokenError::UnknownKey {
                mesh: claims.mesh,
                kid: parsed.kid,
            });
        };
        let public = jwt::public_key_of(&key).map_err(DataplaneTokenError::Corrupt)?;
        parsed.verify(&public)?;
        if claims.iss != ISSUER {
            return Err(DataplaneTokenError::Claims(format!(
                "issuer {:?} is not {ISSUER:?}",
                claims.iss
            )));
        }
        jwt::check_token_id(&claims.jti).map_err(|e| DataplaneTokenError::Claims(format!("jti: {e}")))?;
        jwt::check_times(claims.iat, claims.exp, now)?;
        if self.is_revoked(&claims.mesh, &claims.jti) {
            return Err(DataplaneTokenError::Revoked {
                mesh: claims.mesh,
                id: claims.jti,
            });
        }
        Ok(VerifiedDataplane {
            claims,
            kid: parsed.kid,
        })
    }

    /// Whether token `id` of `mesh` is revoked.
    pub fn is_revoked(&self, mesh: &str, id: &str) -> bool {
        self.manager
            .get(&ResourceKey::in_mesh(ResourceType::DataplaneTokenRevocation, mesh, id))
            .is_some()
    }

    /// Why a token verified earlier is no longer accepted, if it is not:
    /// revoked, its key retired, or its mesh gone.
    pub fn still_valid(&self, v: &VerifiedDataplane) -> Result<(), DataplaneTokenError> {
        let mesh = &v.claims.mesh;
        if self.is_revoked(mesh, &v.claims.jti) {
            return Err(DataplaneTokenError::Revoked {
                mesh: mesh.clone(),
                id: v.claims.jti.clone(),
            });
        }
        if self
            .manager
            .get(&ResourceKey::in_mesh(ResourceType::DataplaneTokenKey, mesh, &v.kid))
            .is_none()
        {
            return Err(DataplaneTokenError::UnknownKey {
                mesh: mesh.clone(),
                kid: v.kid.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use meridian_store::cache::Cache;
    use meridian_store::memory::MemoryStore;
    use meridian_store::Store;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    async fn setup(meshes: &[&str]) -> (Arc<Manager>, DataplaneTokenIssuer, DataplaneTokenVerifier) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let cache = Cache::start(store.clone());
        let _ = cache.ready().clone().wait_for(|r| *r).await;
        let manager = Arc::new(Manager::new(store, cache));
        for m in meshes {
            let doc = Document {
                key: ResourceKey::global(ResourceType::Mesh, m),
                labels: Default::default(),
                spec: serde_json::json!({}),
            };
            manager.apply(doc).await.unwrap();
        }
        (
            manager.clone(),
            DataplaneTokenIssuer::new(manager.clone()),
            DataplaneTokenVerifier::new(manager),
        )
    }

    fn req(mesh: &str) -> IssueRequest {
        IssueRequest {
            mesh: mesh.into(),
            valid_for: DAY,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn issue_verify_and_claims() {
        let (_, issuer, verifier) = setup(&["default"]).await;
        let mut r = req("default");
        r.name = Some("web-1".into());
        r.tags.insert("kuma.io/service".into(), vec!["web".into()]);
        let token = issuer.issue(&r).await.unwrap();
        let v = verifier.verify(&token).unwrap();
        assert_eq!(v.kid, "key-1");
        assert_eq!(v.claims.mesh, "default");
        assert_eq!(v.claims.name.as_deref(), Some("web-1"));
        assert_eq!(v.claims.tags["kuma.io/service"], vec!["web".to_string()]);
        assert_eq!(v.claims.exp - v.claims.iat, 24 * 3600);
        let second = verifier.verify(&issuer.issue(&r).await.unwrap()).unwrap();
        assert_ne!(second.claims.jti, v.claims.jti);
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() {
        let (_, issuer, _) = setup(&["default"]).await;
        let cases = [
            (
                IssueRequest {
                    mesh: String::new(),
                    ..req("default")
                },
                "mesh",
            ),
            (
                IssueRequest {
                    name: Some("Not A Name".into()),
                    ..req("default")
                },
                "name",
            ),
            (
                IssueRequest {
                    valid_for: Duration::ZERO,
                    ..req("default")
                },
                "validFor",
            ),
            (
                IssueRequest {
                    valid_for: MAX_VALIDITY + DAY,
                    ..req("default")
                },
                "validFor",
            ),
            (
                IssueRequest {
                    tags: [("kuma.io/service".to_string(), vec![])].into(),
                    ..req("default")
                },
                "tags",
            ),
        ];
        for (r, field) in cases {
            match issuer.issue(&r).await {
                Err(DataplaneTokenError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{r:?}: {other:?}"),
            }
        }
        assert!(matches!(
            issuer.issue(&req("nope")).await,
            Err(DataplaneTokenError::UnknownMesh(m)) if m == "nope"
        ));
    }

    #[tokio::test]
    async fn meshes_do_not_accept_each_others_tokens() {
        let (manager, issuer, verifier) = setup(&["team-a", "team-b"]).await;
        let a = issuer.issue(&req("team-a")).await.unwrap();
        issuer.issue(&req("team-b")).await.unwrap();
        // Re-sign team-a's claims as team-b with team-a's key: team-b's key
        // does not verify it.
        let parsed = jwt::parse(&a).unwrap();
        let mut claims: DataplaneClaims = parsed.claims().unwrap();
        claims.mesh = "team-b".into();
        let record = manager
            .store()
            .get_system(Some("team-a"), &private_record(1))
            .await
            .unwrap()
            .unwrap();
        let PrivateRecord::Ed25519 { pkcs8 } = decode_private(&record).unwrap() else {
            panic!()
        };
        let a_key = jwt::load_key(&STANDARD.decode(pkcs8).unwrap()).unwrap();
        let forged = jwt::sign(&a_key, "key-1", &claims).unwrap();
        assert!(matches!(
            verifier.verify(&forged),
            Err(DataplaneTokenError::Jwt(JwtError::BadSignature))
        ));
        // A token claiming a mesh that does not exist.
        claims.mesh = "ghost".into();
        let ghost = jwt::sign(&a_key, "key-1", &claims).unwrap();
        assert!(matches!(
            verifier.verify(&ghost),
            Err(DataplaneTokenError::UnknownMesh(m)) if m == "ghost"
        ));
    }

    #[tokio::test]
    async fn rotation_keeps_old_tokens_until_the_old_key_is_retired() {
        let (_, issuer, verifier) = setup(&["default"]).await;
        let old = issuer.issue(&req("default")).await.unwrap();
        assert_eq!(issuer.rotate("default").await.unwrap(), "key-2");
        let new = issuer.issue(&req("default")).await.unwrap();
        assert_eq!(verifier.verify(&new).unwrap().kid, "key-2");
        let old_v = verifier.verify(&old).unwrap();
        assert_eq!(old_v.kid, "key-1");

        let err = issuer.retire("default", "key-2").await.unwrap_err();
        assert!(matches!(err, DataplaneTokenError::ActiveKey(_)), "{err}");
        assert!(matches!(
            issuer.retire("default", "key-9").await,
            Err(DataplaneTokenError::NotFound(_))
        ));
        issuer.retire("default", "key-1").await.unwrap();
        assert!(matches!(
            verifier.verify(&old),
            Err(DataplaneTokenError::UnknownKey { kid, .. }) if kid == "key-1"
        ));
        assert!(matches!(
            verifier.still_valid(&old_v),
            Err(DataplaneTokenError::UnknownKey { .. })
        ));
        assert!(verifier.verify(&new).is_ok());
        // The retired serial is never used again.
        assert_eq!(issuer.rotate("default").await.unwrap(), "key-3");
    }

    #[tokio::test]
    async fn revocation() {
        let (_, issuer, verifier) = setup(&["default"]).await;
        let token = issuer.issue(&req("default")).await.unwrap();
        let keep = issuer.issue(&req("default")).await.unwrap();
        let v = verifier.verify(&token).unwrap();
        issuer.revoke("default", &v.claims.jti).await.unwrap();
        issuer.revoke("default", &v.claims.jti).await.unwrap();
        assert!(matches!(
            verifier.verify(&token),
            Err(DataplaneTokenError::Revoked { id, .. }) if id == v.claims.jti
        ));
        assert!(verifier.still_valid(&v).is_err());
        assert!(verifier.verify(&keep).is_ok());
        assert!(matches!(
            issuer.revoke("default", "A/B").await,
            Err(DataplaneTokenError::Invalid { field: "id", .. })
        ));
    }

    #[tokio::test]
    async fn expiry_with_clock_skew() {
        let (_, issuer, verifier) = setup(&["default"]).await;
        let now = Utc::now().timestamp();
        let mut r = req("default");
        r.valid_for = Duration::from_secs(60);
        let token = issuer.issue_at(&r, now).await.unwrap();
        assert!(verifier.verify_at(&token, now + 62).is_ok(), "2 s of skew");
        assert!(matches!(
            verifier.verify_at(&token, now + 90),
            Err(DataplaneTokenError::Jwt(JwtError::Expired { .. }))
        ));
        let future = issuer.issue_at(&r, now + 60).await.unwrap();
        assert!(matches!(
            verifier.verify_at(&future, now),
            Err(DataplaneTokenError::Jwt(JwtError::NotYetValid { .. }))
        ));
    }

    #[tokio::test]
    async fn a_recreated_mesh_refuses_the_old_tokens() {
        let (manager, issuer, verifier) = setup(&["default"]).await;
        let token = issuer.issue(&req("default")).await.unwrap();
        manager
            .delete(&ResourceKey::global(ResourceType::Mesh, "default"))
            .await
            .unwrap();
        assert!(matches!(
            verifier.verify(&token),
            Err(DataplaneTokenError::UnknownMesh(_))
        ));
        let doc = Document {
            key: ResourceKey::global(ResourceType::Mesh, "default"),
            labels: Default::default(),
            spec: serde_json::json!({}),
        };
        manager.apply(doc).await.unwrap();
        issuer.issue(&req("default")).await.unwrap();
        assert!(matches!(
            verifier.verify(&token),
            Err(DataplaneTokenError::Jwt(JwtError::BadSignature))
        ));
    }

    #[tokio::test]
    async fn concurrent_first_issues_agree_on_one_key() {
        let (_, issuer, verifier) = setup(&["default"]).await;
        let issuer = Arc::new(issuer);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let issuer = issuer.clone();
                tokio::spawn(async move { issuer.issue(&req("default")).await })
            })
            .collect();
        for t in tasks {
            let token = t.await.unwrap().unwrap();
            assert_eq!(verifier.verify(&token).unwrap().kid, "key-1");
        }
    }

    #[tokio::test]
    async fn corrupt_key_records_fail_closed() {
        let (manager, issuer, _) = setup(&["default"]).await;
        manager
            .store()
            .put_system(Some("default"), &private_record(1), b"{garbage".to_vec())
            .await
            .unwrap();
        assert!(matches!(
            issuer.issue(&req("default")).await,
            Err(DataplaneTokenError::Corrupt(_))
        ));
    }
}
