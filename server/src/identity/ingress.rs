//! Zone ingress tokens: what a zone's ingress proxy presents to its zone.
//!
//! A zone issues them itself (`POST /tokens/zone-ingress` on its API) and is
//! the only one to verify them, so the key never leaves the zone: an Ed25519
//! key in the zone's system record [`KEY_RECORD`]. Claims: the zone, an
//! optional ingress name, expiry and id. A revoked id is a system record
//! under [`REVOKED_PREFIX`]; revoking also tells [`IngressTokens::subscribe`] listeners
//! at once, so a live ingress stream of that token is closed.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use meridian_core::names::check_subdomain;
use meridian_store::Store;
use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, OnceCell};

use super::dataplane::MAX_VALIDITY;
use super::jwt::{self, JwtError};
use meridian_core::identity::ISSUER;

/// The zone system record holding the signing key (PKCS#8).
pub const KEY_RECORD: &str = "zone-ingress-token-signing-key";
/// The prefix of the zone system records marking revoked ids.
pub const REVOKED_PREFIX: &str = "zone-ingress-token-revoked/";
/// The `kid` of every ingress token; dataplane tokens name `key-<n>`.
pub const KID: &str = "zone-ingress";
/// The `scope` claim of ingress tokens.
pub const SCOPE: &str = "ingress";

/// What an ingress token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressClaims {
    pub iss: String,
    /// Always [`SCOPE`].
    pub scope: String,
    /// The zone that issued it.
    pub zone: String,
    /// The only ingress it may connect as, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why an ingress token was not issued or accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngressTokenError {
    #[error("zone ingress token: {0}")]
    Jwt(#[from] JwtError),
    #[error("zone ingress token: {0}")]
    Claims(String),
    #[error("zone ingress token {0} has been revoked")]
    Revoked(String),
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("zone ingress token key: {0}")]
    Key(String),
    #[error(transparent)]
    Store(#[from] meridian_store::StoreError),
}

impl IngressTokenError {
    /// Whether the proxy failed to prove who it is.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::Jwt(_) | Self::Claims(_) | Self::Revoked(_))
    }
}

/// Issues, verifies and revokes this zone's ingress tokens.
pub struct IngressTokens {
    store: Arc<dyn Store>,
    zone: String,
    key: OnceCell<Ed25519KeyPair>,
    revoked: broadcast::Sender<String>,
}

impl std::fmt::Debug for IngressTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressTokens")
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

impl IngressTokens {
    pub fn new(store: Arc<dyn Store>, zone: &str) -> Self {
        IngressTokens {
            store,
            zone: zone.to_string(),
            key: OnceCell::new(),
            revoked: broadcast::channel(64).0,
        }
    }

    async fn key(&self) -> Result<&Ed25519KeyPair, IngressTokenError> {
        self.key
            .get_or_try_init(|| async {
                let stored = match self.store.get_system(None, KEY_RECORD).await? {
                    Some(k) => k,
                    None => {
                        let fresh = jwt::generate_key().map_err(|e| IngressTokenError::Key(e.0))?;
                        self.store.put_system_if_absent(None, KEY_RECORD, fresh).await?
                    }
                };
                jwt::load_key(&stored).map_err(|e| IngressTokenError::Key(format!("record {KEY_RECORD}: {e}")))
            })
            .await
    }

    /// Issues a token for an ingress of this zone (`name`: only that one).
    pub async fn issue(&self, name: Option<&str>, valid_for: Duration) -> Result<String, IngressTokenError> {
        if let Some(n) = name {
            check_subdomain(n).map_err(|message| IngressTokenError::Invalid { field: "name", message })?;
        }
        if valid_for.as_secs() == 0 || valid_for > MAX_VALIDITY {
            return Err(IngressTokenError::Invalid {
                field: "validFor",
                message: format!("must be from 1s to {}h", MAX_VALIDITY.as_secs() / 3600),
            });
        }
        let now = Utc::now().timestamp();
        let claims = IngressClaims {
            iss: ISSUER.into(),
            scope: SCOPE.into(),
            zone: self.zone.clone(),
            name: name.map(str::to_string),
            jti: jwt::new_token_id().map_err(|e| IngressTokenError::Key(e.0))?,
            iat: now,
            exp: now.saturating_add(valid_for.as_secs() as i64),
        };
        jwt::sign(self.key().await?, KID, &claims).map_err(|e| IngressTokenError::Key(e.to_string()))
    }

    /// Checks a token of this zone's ingresses.
    pub async fn verify(&self, token: &str) -> Result<IngressClaims, IngressTokenError> {
        self.verify_at(token, Utc::now().timestamp()).await
    }

    /// [`Self::verify`] as if the time were `now`.
    pub async fn verify_at(&self, token: &str, now: i64) -> Result<IngressClaims, IngressTokenError> {
        let parsed = jwt::parse(token)?;
        if parsed.kid != KID {
            return Err(IngressTokenError::Claims(format!(
                "key {:?} does not sign zone ingress tokens",
                parsed.kid
            )));
        }
        let claims: IngressClaims = parsed.claims()?;
        parsed.verify(&jwt::public_key(self.key().await?))?;
        if claims.iss != ISSUER || claims.scope != SCOPE {
            return Err(IngressTokenError::Claims("not a zone ingress token".into()));
        }
        if claims.zone != self.zone {
            return Err(IngressTokenError::Claims(format!(
                "issued for zone {:?}, not this zone ({:?})",
                claims.zone, self.zone
            )));
        }
        jwt::check_token_id(&claims.jti).map_err(|e| IngressTokenError::Claims(format!("jti: {e}")))?;
        jwt::check_times(claims.iat, claims.exp, now)?;
        if self.is_revoked(&claims.jti).await? {
            return Err(IngressTokenError::Revoked(claims.jti));
        }
        Ok(claims)
    }

    /// Whether token `id` is revoked.
    pub async fn is_revoked(&self, id: &str) -> Result<bool, IngressTokenError> {
        Ok(self
            .store
            .get_system(None, &format!("{REVOKED_PREFIX}{id}"))
            .await?
            .is_some())
    }

    /// Revokes token `id` and tells the subscribers.
    pub async fn revoke(&self, id: &str) -> Result<(), IngressTokenError> {
        jwt::check_token_id(id).map_err(|message| IngressTokenError::Invalid { field: "id", message })?;
        let record = serde_json::json!({"revokedAt": jwt::format_unix(Utc::now().timestamp())});
        self.store
            .put_system(None, &format!("{REVOKED_PREFIX}{id}"), record.to_string().into_bytes())
            .await?;
        // Nobody listening is fine: no ingress stream is open.
        let _ = self.revoked.send(id.to_string());
        tracing::info!(id, "zone ingress token revoked");
        Ok(())
    }

    /// Ids revoked from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.revoked.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use meridian_store::memory::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn issue_verify_revoke() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let t = IngressTokens::new(store.clone(), "zone-1");
        let token = t.issue(Some("ingress"), Duration::from_secs(60)).await.unwrap();
        let c = t.verify(&token).await.unwrap();
        assert_eq!((c.zone.as_str(), c.name.as_deref()), ("zone-1", Some("ingress")));

        // The same store's key, another zone name: refused.
        let other = IngressTokens::new(store.clone(), "zone-2");
        assert!(matches!(other.verify(&token).await, Err(IngressTokenError::Claims(_))));
        // Another zone's key: the signature does not verify.
        let foreign = IngressTokens::new(Arc::new(MemoryStore::new()), "zone-1");
        assert!(matches!(
            foreign.verify(&token).await,
            Err(IngressTokenError::Jwt(JwtError::BadSignature))
        ));

        let mut revoked = t.subscribe();
        t.revoke(&c.jti).await.unwrap();
        assert_eq!(revoked.recv().await.unwrap(), c.jti);
        assert!(matches!(t.verify(&token).await, Err(IngressTokenError::Revoked(_))));
        // A restart on the same store keeps the key and the revocation.
        let again = IngressTokens::new(store, "zone-1");
        assert!(matches!(again.verify(&token).await, Err(IngressTokenError::Revoked(_))));
        let fresh = again.issue(None, Duration::from_secs(60)).await.unwrap();
        assert!(t.verify(&fresh).await.is_ok());
    }

    #[tokio::test]
    async fn bad_requests() {
        let t = IngressTokens::new(Arc::new(MemoryStore::new()), "zone-1");
        assert!(matches!(
            t.issue(Some("Bad Name"), Duration::from_secs(1)).await,
            Err(IngressTokenError::Invalid { field: "name", .. })
        ));
        assert!(matches!(
            t.issue(None, Duration::ZERO).await,
            Err(IngressTokenError::Invalid { field: "validFor", .. })
        ));
        assert!(matches!(
            t.verify("a.b.c").await,
            Err(IngressTokenError::Jwt(JwtError::Malformed(_)))
        ));
    }
}
