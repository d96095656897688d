//! Zone tokens: what a zone presents to the global to prove which zone it is
//! (DESIGN §7).
//!
//! A token is JWT-shaped, `base64url(header).base64url(claims).base64url(sig)`,
//! signed with HMAC-SHA256 under a 32-byte random key that the global keeps
//! as a system record ([`SIGNING_KEY_RECORD`]). The key is created with
//! `put_system_if_absent`, so several globals on one etcd agree on one key and
//! accept each other's tokens. Revoking a token writes a per-id record
//! (`zone-token-revoked/<id>`), which every replica sees.
//!
//! Verification checks, in order: the shape (three base64url parts), the
//! signature (in constant time), the header and claims, the zone name, the
//! expiry, and revocation. Every failure is a [`TokenError`] whose message
//! can be sent to the zone as the reason it was refused.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use meridian_core::names::check_rfc1035_label;
use meridian_store::{Store, StoreError};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::OnceCell;

/// The global system record holding the signing key.
pub const SIGNING_KEY_RECORD: &str = "zone-token-signing-key";
/// The prefix of the global system records marking revoked token ids.
pub const REVOKED_RECORD_PREFIX: &str = "zone-token-revoked/";
/// Tokens longer than this are refused before any work is done on them.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The longest validity a token may be issued with (ten years).
pub const MAX_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

const KEY_BYTES: usize = 32;
const ALGORITHM: &str = "HS256";

type HmacSha256 = Hmac<Sha256>;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneClaims {
    /// The zone the token was issued for.
    pub zone: String,
    /// The token's unique id, the handle for revoking it.
    #[serde(rename = "jti")]
    pub id: String,
    /// When it was issued (unix seconds).
    #[serde(rename = "iat")]
    pub issued_at: i64,
    /// When it stops being accepted (unix seconds).
    #[serde(rename = "exp")]
    pub expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
}

/// Why a token was not issued, not accepted or not revoked. Messages are
/// meant for the zone (or the operator) as the reason of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was presented.
    #[error(
        "no zone token was presented: give the zone the token issued by the global (meridianctl generate zone-token)"
    )]
    Missing,
    /// The token is not of the expected shape or encoding.
    #[error("the zone token is malformed: {0}")]
    Malformed(String),
    /// The signature does not match: another issuer, or an altered token.
    #[error(
        "the zone token's signature is invalid: it was not issued by this global control plane, or it was altered"
    )]
    BadSignature,
    /// The token's validity has ended.
    #[error("the zone token expired at {}; issue a new one", format_unix(*expired_at))]
    Expired { expired_at: i64 },
    /// The token was revoked by an operator.
    #[error("the zone token {id} has been revoked")]
    Revoked { id: String },
    /// The zone name is not an RFC 1035 label.
    #[error("invalid zone name: {0}")]
    InvalidZone(String),
    /// The requested validity is zero or too long.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// The store holding the signing key or revocations failed.
    #[error("cannot check the zone token: {0}")]
    Store(StoreError),
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        TokenError::Store(e)
    }
}

/// Unix seconds as an RFC 3339 UTC time, for messages.
pub fn format_unix(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("unix time {secs}"))
}

/// The current time in unix seconds.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Checks a token id (as `revoke` receives it): 1 to 64 characters of the
/// base64url alphabet, which is what [`ZoneTokens::issue`] produces.
pub fn check_token_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > 64 {
        return Err(format!("must be at most 64 characters, got {}", id.len()));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("{id:?} is not a token id (letters, digits, '-' and '_')"));
    }
    Ok(())
}

/// Issues, verifies and revokes zone tokens over a store.
pub struct ZoneTokens {
    store: Arc<dyn Store>,
    key: OnceCell<[u8; KEY_BYTES]>,
}

impl std::fmt::Debug for ZoneTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneTokens")
            .field("key_loaded", &self.key.initialized())
            .finish_non_exhaustive()
    }
}

impl ZoneTokens {
    pub fn new(store: Arc<dyn Store>) -> Self {
        ZoneTokens {
            store,
            key: OnceCell::new(),
        }
    }

    /// Issues a token for `zone`, valid for `valid_for` from now.
    pub async fn issue(&self, zone: &str, valid_for: Duration) -> Result<String, TokenError> {
        self.issue_at(zone, valid_for, now_unix()).await
    }

    /// [`Self::issue`] as if the time were `now` (unix seconds).
    pub async fn issue_at(&self, zone: &str, valid_for: Duration, now: i64) -> Result<String, TokenError> {
        check_rfc1035_label(zone).map_err(TokenError::InvalidZone)?;
        if valid_for.as_secs() == 0 {
            return Err(TokenError::InvalidValidity("must be at least 1s".into()));
        }
        if valid_for > MAX_VALIDITY {
            return Err(TokenError::InvalidValidity(format!(
                "must be at most {}h",
                MAX_VALIDITY.as_secs() / 3600
            )));
        }
        let secs = i64::try_from(valid_for.as_secs()).map_err(|_| TokenError::InvalidValidity("too long".into()))?;
        let expires_at = now
            .checked_add(secs)
            .ok_or_else(|| TokenError::InvalidValidity("too long".into()))?;
        let mut id = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut id)
            .map_err(|e| TokenError::Store(StoreError::Internal(format!("no randomness for a token id: {e}"))))?;
        let claims = ZoneClaims {
            zone: zone.to_string(),
            id: URL_SAFE_NO_PAD.encode(id),
            issued_at: now,
            expires_at,
        };
        let header = Header {
            alg: ALGORITHM.into(),
            typ: "JWT".into(),
        };
        let signed = format!("{}.{}", encode_json(&header)?, encode_json(&claims)?);
        let key = self.signing_key().await?;
        let sig = mac(key, signed.as_bytes())?.finalize().into_bytes();
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Checks `token` and returns its claims. Surrounding whitespace (a
    /// trailing newline in a token file) is ignored.
    pub async fn verify(&self, token: &str) -> Result<ZoneClaims, TokenError> {
        self.verify_at(token, now_unix()).await
    }

    /// [`Self::verify`] as if the time were `now` (unix seconds).
    pub async fn verify_at(&self, token: &str, now: i64) -> Result<ZoneClaims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header, claims, sig] = parts.as_slice() else {
            return Err(TokenError::Malformed(format!(
                "expected 3 dot-separated parts, got {}",
                parts.len()
            )));
        };
        let header_bytes = decode_part("header", header)?;
        let claims_bytes = decode_part("claims", claims)?;
        let sig_bytes = decode_part("signature", sig)?;

        let key = self.signing_key().await?;
        let signed_len = header.len() + 1 + claims.len();
        let signed = token.get(..signed_len).unwrap_or_default();
        mac(key, signed.as_bytes())?
            .verify_slice(&sig_bytes)
            .map_err(|_| TokenError::BadSignature)?;

        let header: Header =
            serde_json::from_slice(&header_bytes).map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Malformed(format!(
                "unsupported algorithm {:?} (expected {ALGORITHM})",
                header.alg
            )));
        }
        let claims: ZoneClaims =
            serde_json::from_slice(&claims_bytes).map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        check_rfc1035_label(&claims.zone).map_err(TokenError::InvalidZone)?;
        check_token_id(&claims.id).map_err(|e| TokenError::Malformed(format!("token id: {e}")))?;
        if now >= claims.expires_at {
            return Err(TokenError::Expired {
                expired_at: claims.expires_at,
            });
        }
        if self.is_revoked(&claims.id).await? {
            return Err(TokenError::Revoked { id: claims.id });
        }
        Ok(claims)
    }

    /// Revokes the token with `id`: from now on every replica refuses it.
    /// Revoking an unknown or already revoked id is not an error (ids are not
    /// recorded when issued).
    pub async fn revoke(&self, id: &str) -> Result<(), TokenError> {
        check_token_id(id).map_err(|e| TokenError::Malformed(format!("token id: {e}")))?;
        let record = serde_json::json!({"revokedAt": format_unix(now_unix())});
        self.store
            .put_system(None, &revoked_record(id), record.to_string().into_bytes())
            .await?;
        Ok(())
    }

    /// The ids of every revoked zone token (one paged range read), for
    /// checking the tokens of streams that are already open.
    pub async fn revoked_ids(&self) -> Result<std::collections::HashSet<String>, TokenError> {
        const PAGE: usize = 1000;
        let mut ids = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_system(REVOKED_RECORD_PREFIX, after.as_deref(), PAGE)
                .await?;
            let full = page.len() == PAGE;
            after = page.last().map(|(name, _)| name.clone());
            ids.extend(
                page.into_iter()
                    .filter_map(|(name, _)| name.strip_prefix(REVOKED_RECORD_PREFIX).map(str::to_string)),
            );
            if !full {
                return Ok(ids);
            }
        }
    }

    async fn is_revoked(&self, id: &str) -> Result<bool, TokenError> {
        Ok(self.store.get_system(None, &revoked_record(id)).await?.is_some())
    }

    /// The signing key: loaded once, created by the first replica that
    /// needs it.
    async fn signing_key(&self) -> Result<&[u8; KEY_BYTES], TokenError> {
        self.key
            .get_or_try_init(|| async {
                let stored = match self.store.get_system(None, SIGNING_KEY_RECORD).await? {
                    Some(k) => k,
                    None => {
                        let mut fresh = [0u8; KEY_BYTES];
                        rand::rngs::OsRng.try_fill_bytes(&mut fresh).map_err(|e| {
                            StoreError::Internal(format!("no randomness for the zone token signing key: {e}"))
                        })?;
                        self.store
                            .put_system_if_absent(None, SIGNING_KEY_RECORD, fresh.to_vec())
                            .await?
                    }
                };
                <[u8; KEY_BYTES]>::try_from(stored.as_slice()).map_err(|_| {
                    TokenError::Store(StoreError::Internal(format!(
                        "the zone token signing key record holds {} bytes, expected {KEY_BYTES}",
                        stored.len()
                    )))
                })
            })
            .await
    }
}

fn revoked_record(id: &str) -> String {
    format!("{REVOKED_RECORD_PREFIX}{id}")
}

fn mac(key: &[u8], data: &[u8]) -> Result<HmacSha256, TokenError> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .map_err(|e| TokenError::Store(StoreError::Internal(format!("unusable signing key: {e}"))))?;
    mac.update(data);
    Ok(mac)
}

fn decode_part(what: &str, part: &str) -> Result<Vec<u8>, TokenError> {
    if part.is_empty() {
        return Err(TokenError::Malformed(format!("the {what} is empty")));
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| TokenError::Malformed(format!("the {what} is not base64url: {e}")))
}

fn encode_json<T: Serialize>(value: &T) -> Result<String, TokenError> {
    serde_json::to_vec(value)
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
        .map_err(|e| TokenError::Malformed(format!("cannot encode the token: {e}")))
}

#[cfg(test)]
mod tests {
    use meridian_store::memory::MemoryStore;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const NOW: i64 = 1_800_000_000;

    fn tokens() -> (Arc<dyn Store>, ZoneTokens) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        (store.clone(), ZoneTokens::new(store))
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_string).collect()
    }

    fn b64_json(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[tokio::test]
    async fn issue_then_verify() {
        let (_, t) = tokens();
        let token = t.issue_at("zone-1", DAY, NOW).await.unwrap();
        assert_eq!(parts(&token).len(), 3);
        let claims = t.verify_at(&token, NOW + 10).await.unwrap();
        assert_eq!(claims.zone, "zone-1");
        assert_eq!(claims.issued_at, NOW);
        assert_eq!(claims.expires_at, NOW + 24 * 3600);
        check_token_id(&claims.id).unwrap();
        // A token file with a trailing newline works.
        assert_eq!(t.verify_at(&format!("{token}\n"), NOW).await.unwrap(), claims);
        // Each token has its own id.
        let other = t.issue_at("zone-1", DAY, NOW).await.unwrap();
        assert_ne!(t.verify_at(&other, NOW).await.unwrap().id, claims.id);
        // The real clock works as well.
        let now = t.issue("zone-1", DAY).await.unwrap();
        assert_eq!(t.verify(&now).await.unwrap().zone, "zone-1");
    }

    #[tokio::test]
    async fn replicas_on_one_store_share_the_key() {
        let (store, a) = tokens();
        let b = ZoneTokens::new(store.clone());
        let (ta, tb) = tokio::join!(a.issue_at("east", DAY, NOW), b.issue_at("west", DAY, NOW));
        assert_eq!(b.verify_at(&ta.unwrap(), NOW).await.unwrap().zone, "east");
        assert_eq!(a.verify_at(&tb.unwrap(), NOW).await.unwrap().zone, "west");
        let key = store.get_system(None, SIGNING_KEY_RECORD).await.unwrap().unwrap();
        assert_eq!(key.len(), KEY_BYTES);

        // Another global (another store, another key) does not accept them.
        let (_, foreign) = tokens();
        let token = foreign.issue_at("east", DAY, NOW).await.unwrap();
        assert_eq!(a.verify_at(&token, NOW).await, Err(TokenError::BadSignature));
    }

    #[tokio::test]
    async fn expiry() {
        let (_, t) = tokens();
        let token = t.issue_at("zone-1", Duration::from_secs(60), NOW).await.unwrap();
        assert!(t.verify_at(&token, NOW + 59).await.is_ok());
        let err = t.verify_at(&token, NOW + 60).await.unwrap_err();
        assert_eq!(err, TokenError::Expired { expired_at: NOW + 60 });
        assert!(err.to_string().contains("2027-01-15T08:01:00Z"), "{err}");
    }

    #[tokio::test]
    async fn revocation_is_seen_by_every_replica() {
        let (store, a) = tokens();
        let b = ZoneTokens::new(store);
        let token = a.issue_at("zone-1", DAY, NOW).await.unwrap();
        let keep = a.issue_at("zone-1", DAY, NOW).await.unwrap();
        let id = a.verify_at(&token, NOW).await.unwrap().id;
        b.revoke(&id).await.unwrap();
        b.revoke(&id).await.unwrap(); // idempotent
        let err = a.verify_at(&token, NOW).await.unwrap_err();
        assert_eq!(err, TokenError::Revoked { id: id.clone() });
        assert!(err.to_string().contains(&id));
        assert!(a.verify_at(&keep, NOW).await.is_ok(), "only the revoked id is refused");
        assert!(matches!(a.revoke("a/b").await, Err(TokenError::Malformed(_))));
        assert!(matches!(a.revoke("").await, Err(TokenError::Malformed(_))));
    }

    #[tokio::test]
    async fn issue_refuses_bad_zone_and_validity() {
        let (_, t) = tokens();
        for zone in ["", "Zone", "a.b", "1abc", "-a", &"a".repeat(64)] {
            assert!(
                matches!(t.issue_at(zone, DAY, NOW).await, Err(TokenError::InvalidZone(_))),
                "{zone:?}"
            );
        }
        for d in [
            Duration::ZERO,
            Duration::from_millis(500),
            MAX_VALIDITY + Duration::from_secs(1),
        ] {
            assert!(
                matches!(t.issue_at("z", d, NOW).await, Err(TokenError::InvalidValidity(_))),
                "{d:?}"
            );
        }
        assert!(matches!(
            t.issue_at("z", MAX_VALIDITY, i64::MAX - 10).await,
            Err(TokenError::InvalidValidity(_))
        ));
    }

    #[tokio::test]
    async fn tampered_tokens_are_refused() {
        let (_, t) = tokens();
        let token = t.issue_at("zone-a", DAY, NOW).await.unwrap();
        let p = parts(&token);
        let claims = t.verify_at(&token, NOW).await.unwrap();

        // Another zone, a later expiry: the signature no longer matches.
        let mut forged = serde_json::to_value(&claims).unwrap();
        forged["zone"] = "zone-b".into();
        let as_b = format!("{}.{}.{}", p[0], b64_json(&forged), p[2]);
        assert_eq!(t.verify_at(&as_b, NOW).await, Err(TokenError::BadSignature));
        let mut later = serde_json::to_value(&claims).unwrap();
        later["exp"] = (NOW + 10 * 365 * 24 * 3600).into();
        let extended = format!("{}.{}.{}", p[0], b64_json(&later), p[2]);
        assert_eq!(t.verify_at(&extended, NOW).await, Err(TokenError::BadSignature));

        // "alg: none" and an empty signature.
        let none = b64_json(&serde_json::json!({"alg": "none", "typ": "JWT"}));
        assert!(t.verify_at(&format!("{none}.{}.", p[1]), NOW).await.is_err());
        assert_eq!(
            t.verify_at(&format!("{none}.{}.{}", p[1], p[2]), NOW).await,
            Err(TokenError::BadSignature)
        );

        // Every single-character change anywhere is refused, never panics.
        let alphabet = b"AZaz09-_.=+/ \x00";
        for i in 0..token.len() {
            for &c in alphabet {
                let mut bytes = token.clone().into_bytes();
                if bytes[i] == c {
                    continue;
                }
                bytes[i] = c;
                let Ok(changed) = String::from_utf8(bytes) else {
                    continue;
                };
                if changed.trim() == token {
                    continue;
                }
                // base64url without padding may decode two spellings of the
                // last character to the same bytes; those are the same token.
                let verdict = t.verify_at(&changed, NOW).await;
                if let Ok(c) = verdict {
                    assert_eq!(c, claims, "a change at {i} to {:?} was accepted with other claims", c);
                }
            }
        }
    }

    #[tokio::test]
    async fn garbage_and_truncation_never_panic() {
        let (_, t) = tokens();
        let token = t.issue_at("zone-a", DAY, NOW).await.unwrap();
        assert_eq!(t.verify_at("", NOW).await, Err(TokenError::Missing));
        assert_eq!(t.verify_at(" \n\t", NOW).await, Err(TokenError::Missing));
        for n in 0..token.len() {
            let cut = &token[..n];
            assert!(t.verify_at(cut, NOW).await.is_err(), "a token cut at {n} was accepted");
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        let garbage = [
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b",
            "ÿ.ÿ.ÿ",
            "%%%.%%%.%%%",
            "eyJ.eyJ.eyJ",
            "\u{0}.\u{0}.\u{0}",
            huge.as_str(),
            "🦀.🦀.🦀",
        ];
        for g in garbage {
            assert!(
                matches!(t.verify_at(g, NOW).await, Err(TokenError::Malformed(_))),
                "{g:?}"
            );
        }
        // Validly signed, but not our claims: the signature is checked first,
        // then the content, so craft tokens with the real key.
        let key = *t.signing_key().await.unwrap();
        let sign = |header: &serde_json::Value, claims: &serde_json::Value| {
            let signed = format!("{}.{}", b64_json(header), b64_json(claims));
            let sig = mac(&key, signed.as_bytes()).unwrap().finalize().into_bytes();
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
        };
        let h = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let good = serde_json::json!({"zone": "z", "jti": "abc", "iat": NOW, "exp": NOW + 10});
        assert!(t.verify_at(&sign(&h, &good), NOW).await.is_ok());
        let cases = [
            (serde_json::json!({"alg": "HS512", "typ": "JWT"}), good.clone()),
            (serde_json::json!([1, 2]), good.clone()),
            (h.clone(), serde_json::json!({"zone": "z"})),
            (h.clone(), serde_json::json!("text")),
            (
                h.clone(),
                serde_json::json!({"zone": "z", "jti": "a/b", "iat": NOW, "exp": NOW + 10}),
            ),
            (
                h.clone(),
                serde_json::json!({"zone": "z", "jti": "a", "iat": NOW, "exp": 1e300}),
            ),
        ];
        for (header, claims) in cases {
            assert!(
                matches!(
                    t.verify_at(&sign(&header, &claims), NOW).await,
                    Err(TokenError::Malformed(_))
                ),
                "{header} {claims}"
            );
        }
        let bad_zone = serde_json::json!({"zone": "Not.A.Zone", "jti": "a", "iat": NOW, "exp": NOW + 10});
        assert!(matches!(
            t.verify_at(&sign(&h, &bad_zone), NOW).await,
            Err(TokenError::InvalidZone(_))
        ));
    }

    #[tokio::test]
    async fn a_corrupt_signing_key_is_a_store_error() {
        let (store, t) = tokens();
        store.put_system(None, SIGNING_KEY_RECORD, vec![1, 2, 3]).await.unwrap();
        let err = t.issue_at("z", DAY, NOW).await.unwrap_err();
        assert!(matches!(err, TokenError::Store(StoreError::Internal(_))), "{err:?}");
    }

    #[test]
    fn messages_say_why() {
        let cases = [
            (TokenError::Missing, "no zone token"),
            (TokenError::BadSignature, "signature is invalid"),
            (TokenError::Expired { expired_at: 0 }, "expired at 1970-01-01T00:00:00Z"),
            (TokenError::Revoked { id: "x1".into() }, "token x1 has been revoked"),
            (TokenError::InvalidZone("bad".into()), "invalid zone name: bad"),
            (TokenError::Malformed("m".into()), "malformed: m"),
        ];
        for (e, want) in cases {
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        }
    }
}
