//! User tokens (DESIGN §12): Ed25519-signed JWTs naming a user and its
//! groups, issued by the global (or a standalone zone) and accepted by every
//! control plane of the deployment.
//!
//! Keys follow the dataplane tokens' scheme without the mesh: the private
//! half in the global system record `user-token-signing-key/<n>` (created
//! with `put_system_if_absent`, so replicas agree), the public half as the
//! global resource `UserTokenKey key-<n>`, synced to zones. A revoked token
//! id becomes a `UserTokenRevocation <jti>` resource, also synced, so a zone
//! refuses a revoked token as soon as KDS delivers the revocation.
//!
//! Verification costs one signature check, so verified tokens are kept in
//! a bounded map by their SHA-256 digest; a cached token is still checked
//! for expiry, revocation and its key on every request. Only tokens that
//! verified are kept: failed attempts leave nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Utc;
use meridian_core::access::{check_subject_name, UserClaims, USER_TOKEN_ISSUER};
use meridian_core::decode::Document;
use meridian_core::identity::{key_name, key_serial, DataplaneTokenKey};
use meridian_core::resource::format_time;
use meridian_core::{ResourceKey, ResourceType};
use meridian_store::{Filter, StoreError};
use ring::signature::Ed25519KeyPair;

use crate::identity::jwt::{self, JwtError};
use crate::manager::{Manager, WriteError};

/// The prefix of the global system records holding private keys.
pub const PRIVATE_KEY_RECORD_PREFIX: &str = "user-token-signing-key/";
/// The longest validity a user token may be issued with (one year).
pub const MAX_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most groups a token may carry.
pub const MAX_GROUPS: usize = 64;
/// Verified tokens kept; the map is emptied when it is full.
const VERIFIED_CACHE_ENTRIES: usize = 4096;

/// Why a user token was not issued or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum UserTokenError {
    #[error("user token: {0}")]
    Jwt(#[from] JwtError),
    #[error("user token: {0}")]
    Claims(String),
    #[error("user token: signed with key {0:?}, which this control plane does not have (retired, from another deployment, or not yet synced)")]
    UnknownKey(String),
    #[error("user token {0} has been revoked")]
    Revoked(String),
    /// A request field is invalid; names the field.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// Stored key material does not decode: fail closed.
    #[error("stored user token key: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{0}")]
    Internal(String),
}

impl UserTokenError {
    /// Whether the caller failed to prove who it is (401), as opposed to
    /// the control plane failing (5xx).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Self::Jwt(_) | Self::Claims(_) | Self::UnknownKey(_) | Self::Revoked(_)
        )
    }
}

/// What a user token is issued for.
#[derive(Debug, Clone)]
pub struct UserTokenRequest {
    pub name: String,
    pub groups: Vec<String>,
    pub valid_for: Duration,
}

/// Issues (where this control plane signs) and verifies user tokens.
pub struct UserTokens {
    manager: Arc<Manager>,
    verified: Mutex<HashMap<[u8; 32], (UserClaims, String)>>,
}

impl std::fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTokens").finish_non_exhaustive()
    }
}

fn private_record(serial: u64) -> String {
    format!("{PRIVATE_KEY_RECORD_PREFIX}{serial}")
}

impl UserTokens {
    pub fn new(manager: Arc<Manager>) -> Self {
        UserTokens {
            manager,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a token now.
    pub async fn issue(&self, req: &UserTokenRequest) -> Result<String, UserTokenError> {
        self.issue_at(req, Utc::now().timestamp()).await
    }

    /// [`Self::issue`] as if the time were `now` (unix seconds).
    pub async fn issue_at(&self, req: &UserTokenRequest, now: i64) -> Result<String, UserTokenError> {
        let invalid = |field, message: String| UserTokenError::Invalid { field, message };
        check_subject_name(&req.name).map_err(|e| invalid("name", e))?;
        if req.groups.len() > MAX_GROUPS {
            return Err(invalid("groups", format!("at most {MAX_GROUPS} groups")));
        }
        for g in &req.groups {
            check_subject_name(g).map_err(|e| invalid("groups", e))?;
        }
        if req.valid_for.as_secs() == 0 {
            return Err(invalid("validFor", "must be at least 1s".into()));
        }
        if req.valid_for > MAX_VALIDITY {
            return Err(invalid(
                "validFor",
                format!("must be at most {}h", MAX_VALIDITY.as_secs() / 3600),
            ));
        }
        let (kid, key) = self.signing_key().await?;
        let claims = UserClaims {
            iss: USER_TOKEN_ISSUER.into(),
            sub: req.name.clone(),
            groups: req.groups.clone(),
            jti: jwt::new_token_id().map_err(|e| UserTokenError::Internal(e.0))?,
            iat: now,
            exp: now.saturating_add(req.valid_for.as_secs() as i64),
        };
        jwt::sign(&key, &kid, &claims).map_err(|e| UserTokenError::Internal(format!("encoding the token: {e}")))
    }

    async fn signing_key(&self) -> Result<(String, Ed25519KeyPair), UserTokenError> {
        let serial = self
            .manager
            .list(&Filter::kind(ResourceType::UserTokenKey))
            .iter()
            .filter_map(|r| key_serial(&r.key.name))
            .max()
            .unwrap_or(1);
        let fresh = jwt::generate_key().map_err(|e| UserTokenError::Internal(e.0))?;
        let stored = self
            .manager
            .store()
            .put_system_if_absent(None, &private_record(serial), STANDARD.encode(&fresh).into_bytes())
            .await?;
        let der = std::str::from_utf8(&stored)
            .ok()
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| UserTokenError::Corrupt(format!("{} does not decode", private_record(serial))))?;
        let key =
            jwt::load_key(&der).map_err(|e| UserTokenError::Corrupt(format!("{}: {e}", private_record(serial))))?;
        let public = DataplaneTokenKey::ed25519(&jwt::public_key(&key));
        let doc = Document {
            key: ResourceKey::global(ResourceType::UserTokenKey, &key_name(serial)),
            labels: Default::default(),
            spec: serde_json::to_value(public).map_err(|e| UserTokenError::Internal(e.to_string()))?,
        };
        if self.manager.create_if_absent(doc).await? {
            tracing::info!(key = %key_name(serial), "user token signing key created");
        }
        Ok((key_name(serial), key))
    }

    /// Revokes token `id`; unknown or revoked ids are not an error.
    pub async fn revoke(&self, id: &str) -> Result<(), UserTokenError> {
        jwt::check_token_id(id).map_err(|message| UserTokenError::Invalid { field: "id", message })?;
        let doc = Document {
            key: ResourceKey::global(ResourceType::UserTokenRevocation, id),
            labels: Default::default(),
            spec: serde_json::json!({"revokedAt": format_time(&Utc::now())}),
        };
        self.manager.create_if_absent(doc).await?;
        Ok(())
    }

    /// Checks `token` now.
    pub fn verify(&self, token: &str) -> Result<UserClaims, UserTokenError> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// Checks `token` as if the time were `now`: shape, algorithm, key,
    /// signature, issuer, names, times, revocation.
    pub fn verify_at(&self, token: &str, now: i64) -> Result<UserClaims, UserTokenError> {
        let digest = super::admin_token::digest(token.trim());
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .cloned();
        let (claims, kid) = match cached {
            Some(hit) => hit,
            None => {
                let verified = self.verify_signed(token)?;
                let mut map = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
                if map.len() >= VERIFIED_CACHE_ENTRIES {
                    map.clear();
                }
                map.insert(digest, verified.clone());
                verified
            }
        };
        jwt::check_times(claims.iat, claims.exp, now)?;
        if self
            .manager
            .get(&ResourceKey::global(ResourceType::UserTokenKey, &kid))
            .is_none()
        {
            return Err(UserTokenError::UnknownKey(kid));
        }
        if self
            .manager
            .get(&ResourceKey::global(ResourceType::UserTokenRevocation, &claims.jti))
            .is_some()
        {
            return Err(UserTokenError::Revoked(claims.jti));
        }
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<(UserClaims, String), UserTokenError> {
        let parsed = jwt::parse(token)?;
        let claims: UserClaims = parsed.claims()?;
        let key = self
            .manager
            .get(&ResourceKey::global(ResourceType::UserTokenKey, &parsed.kid))
            .ok_or_else(|| UserTokenError::UnknownKey(parsed.kid.clone()))?;
        let public = jwt::public_key_of(&key).map_err(UserTokenError::Corrupt)?;
        parsed.verify(&public)?;
        if claims.iss != USER_TOKEN_ISSUER {
            return Err(UserTokenError::Claims(format!(
                "issuer {:?} is not {USER_TOKEN_ISSUER:?}",
                claims.iss
            )));
        }
        jwt::check_token_id(&claims.jti).map_err(|e| UserTokenError::Claims(format!("jti: {e}")))?;
        check_subject_name(&claims.sub).map_err(|e| UserTokenError::Claims(format!("sub: {e}")))?;
        if claims.groups.len() > MAX_GROUPS {
            return Err(UserTokenError::Claims(format!("more than {MAX_GROUPS} groups")));
        }
        for g in &claims.groups {
            check_subject_name(g).map_err(|e| UserTokenError::Claims(format!("groups: {e}")))?;
        }
        Ok((claims, parsed.kid))
    }

    /// How many verified tokens are kept (for the memory test).
    pub fn cached(&self) -> usize {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_store::cache::Cache;
    use meridian_store::memory::MemoryStore;
    use meridian_store::Store;

    async fn tokens() -> UserTokens {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let cache = Cache::start(store.clone());
        cache.wait_ready(Duration::from_secs(5)).await.unwrap();
        UserTokens::new(Arc::new(Manager::new(store, cache)))
    }

    fn request(name: &str, groups: &[&str]) -> UserTokenRequest {
        UserTokenRequest {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            valid_for: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn issued_verified_expired_revoked() {
        let t = tokens().await;
        let token = t.issue(&request("alice", &["team-a"])).await.unwrap();
        let claims = t.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.groups.as_slice()),
            ("alice", &["team-a".to_string()][..])
        );
        assert_eq!(t.cached(), 1);
        // Expiry holds for a cached token too.
        assert!(matches!(
            t.verify_at(&token, claims.exp + 3600),
            Err(UserTokenError::Jwt(JwtError::Expired { .. }))
        ));
        t.revoke(&claims.jti).await.unwrap();
        t.manager
            .cache()
            .wait_for_revision(
                t.manager.store().list(&Filter::all()).await.unwrap().revision,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(matches!(t.verify(&token), Err(UserTokenError::Revoked(_))));
        for (bad, field) in [
            (request("a b", &[]), "name"),
            (request("x", &["ok", "no/slash"]), "groups"),
            (
                UserTokenRequest {
                    valid_for: Duration::ZERO,
                    ..request("x", &[])
                },
                "validFor",
            ),
        ] {
            match t.issue(&bad).await {
                Err(UserTokenError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    /// Every single-character change of a token is refused (or, where
    /// base64 padding bits make two spellings decode alike, names exactly
    /// the same user); failed attempts are not kept.
    #[tokio::test]
    async fn altered_tokens_never_name_anyone_else() {
        let t = tokens().await;
        let token = t.issue(&request("alice", &["team-a"])).await.unwrap();
        let claims = t.verify(&token).unwrap();
        let mut accepted = 0;
        for (i, _) in token.char_indices() {
            for c in ['A', 'z', '0', '-', '_', '.', '=', ' '] {
                let mut altered = token.clone();
                altered.replace_range(i..i + 1, &c.to_string());
                if altered == token {
                    continue;
                }
                if let Ok(other) = t.verify(&altered) {
                    assert_eq!(other, claims, "{altered}");
                    accepted += 1;
                }
            }
        }
        assert!(accepted < 8, "{accepted} altered spellings accepted");
        assert!(t.cached() <= 1 + accepted, "failed attempts must not be cached");
    }
}
