//! Dataplane identity (DESIGN §10): what a dataplane token says, what it
//! allows, and the two resource types that let zones check tokens offline.
//!
//! The global (or a standalone zone) signs tokens with a per-mesh Ed25519
//! key. Only the public half leaves it, as a [`DataplaneTokenKey`] resource
//! in the mesh; a revoked token id becomes a [`DataplaneTokenRevocation`].
//! Both are synced to zones like policies, so a zone verifies every token
//! from its own replica, with no call to the global.
//!
//! Signing and verification live in `meridian-server` (`identity`); this
//! module holds what both ends agree on and what `meridian-dp` reads.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::dataplane::Dataplane;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

/// The only signature algorithm of dataplane tokens.
pub const ALGORITHM: &str = "Ed25519";
/// The JWT `alg` of tokens signed with [`ALGORITHM`].
pub const JWT_ALGORITHM: &str = "EdDSA";
/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// The `iss` of every token Meridian signs.
pub const ISSUER: &str = "meridian";
/// The names of the key resources are this prefix and the key's serial.
pub const KEY_NAME_PREFIX: &str = "key-";

/// The public half of one of a mesh's token signing keys. Its name is
/// `key-<serial>`; the key with the highest serial signs new tokens, and every
/// key that exists verifies the tokens it signed. Deleting a key ends every
/// token it signed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneTokenKey {
    /// Always `Ed25519`.
    pub algorithm: String,
    /// The 32-byte public key, base64 (standard alphabet, padded).
    pub public_key: String,
}

impl DataplaneTokenKey {
    /// The raw public key; `None` when the field does not hold one (the
    /// validation refuses such a resource, so a stored one always decodes).
    pub fn public_key_bytes(&self) -> Option<Vec<u8>> {
        STANDARD
            .decode(&self.public_key)
            .ok()
            .filter(|k| k.len() == PUBLIC_KEY_BYTES)
    }

    /// A key resource holding `public_key`.
    pub fn ed25519(public_key: &[u8]) -> Self {
        DataplaneTokenKey {
            algorithm: ALGORITHM.to_string(),
            public_key: STANDARD.encode(public_key),
        }
    }
}

impl Spec for DataplaneTokenKey {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if self.algorithm != ALGORITHM {
            causes.add(
                &path.field("algorithm"),
                format!("must be {ALGORITHM:?}, got {:?}", self.algorithm),
            );
        }
        if self.public_key_bytes().is_none() {
            causes.add(
                &path.field("publicKey"),
                format!("must be a base64 {PUBLIC_KEY_BYTES}-byte Ed25519 public key"),
            );
        }
    }
}

/// The serial of a key resource's name (`key-3` → 3).
pub fn key_serial(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(KEY_NAME_PREFIX)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name of the key resource of `serial`.
pub fn key_name(serial: u64) -> String {
    format!("{KEY_NAME_PREFIX}{serial}")
}

/// A revoked token: its name is the token's id (`jti`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneTokenRevocation {
    /// When it was revoked (RFC 3339).
    pub revoked_at: String,
}

impl Spec for DataplaneTokenRevocation {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if chrono::DateTime::parse_from_rfc3339(&self.revoked_at).is_err() {
            causes.add(
                &path.field("revokedAt"),
                format!("must be an RFC 3339 time, got {:?}", self.revoked_at),
            );
        }
    }
}

/// What a dataplane token says about its holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneClaims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The mesh the holder belongs to.
    pub mesh: String,
    /// The only dataplane name the holder may connect as, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags every inbound (and gateway) of the holder's dataplane must carry,
    /// each with one of the listed values; `kuma.io/service` restricts the
    /// services it may register.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, Vec<String>>,
    /// The token id, the handle for revoking it.
    pub jti: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
}

impl DataplaneClaims {
    /// Whether the holder may act as dataplane `name` with `dataplane`; the
    /// error says what the token does not allow.
    pub fn allows(&self, name: &str, dataplane: &Dataplane) -> Result<(), String> {
        if let Some(only) = &self.name {
            if only != name {
                return Err(format!("the token is for dataplane {only:?}, not {name:?}"));
            }
        }
        let mut tagged: Vec<(String, &BTreeMap<String, String>)> = dataplane
            .networking
            .inbound
            .iter()
            .enumerate()
            .map(|(i, ib)| (format!("networking.inbound[{i}]"), &ib.tags))
            .collect();
        if let Some(g) = &dataplane.networking.gateway {
            tagged.push(("networking.gateway".to_string(), &g.tags));
        }
        for (tag, allowed) in &self.tags {
            for (where_, tags) in &tagged {
                match tags.get(tag) {
                    Some(v) if allowed.contains(v) => {}
                    Some(v) => {
                        return Err(format!(
                            "{where_} has tag {tag}={v:?}, which the token does not allow (allowed: {})",
                            quoted(allowed)
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{where_} lacks tag {tag}, which the token requires (one of {})",
                            quoted(allowed)
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

fn quoted(values: &[String]) -> String {
    values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
}

/// Checks the tags a token is to be issued with: names and values non-empty,
/// at most 64 tags of at most 64 values.
pub fn check_token_tags(tags: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
    if tags.len() > 64 {
        return Err(format!("at most 64 tags, got {}", tags.len()));
    }
    for (k, values) in tags {
        if k.is_empty() || k.len() > 253 {
            return Err(format!("tag name {k:?} must have 1 to 253 characters"));
        }
        if values.is_empty() || values.len() > 64 {
            return Err(format!("tag {k} must have 1 to 64 values, got {}", values.len()));
        }
        if let Some(v) = values.iter().find(|v| v.is_empty() || v.len() > 253) {
            return Err(format!("tag {k}: value {v:?} must have 1 to 253 characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::decode::validate_spec;
    use crate::ResourceType;

    fn dataplane(services: &[&str]) -> Dataplane {
        let inbound: Vec<_> = services
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"port": 8000 + i, "tags": {"kuma.io/service": s, "version": "v1"}}))
            .collect();
        serde_json::from_value(json!({"networking": {"address": "10.0.0.1", "inbound": inbound}})).unwrap()
    }

    fn claims(name: Option<&str>, tags: &[(&str, &[&str])]) -> DataplaneClaims {
        DataplaneClaims {
            iss: ISSUER.into(),
            mesh: "default".into(),
            name: name.map(str::to_string),
            tags: tags
                .iter()
                .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
                .collect(),
            jti: "id".into(),
            iat: 0,
            exp: 10,
        }
    }

    #[test]
    fn name_and_tags_restrict_the_holder() {
        let web = dataplane(&["web"]);
        assert_eq!(claims(None, &[]).allows("any", &web), Ok(()));
        assert_eq!(claims(Some("web-1"), &[]).allows("web-1", &web), Ok(()));
        let err = claims(Some("web-1"), &[]).allows("web-2", &web).unwrap_err();
        assert!(err.contains("\"web-1\", not \"web-2\""), "{err}");

        let only_web = claims(None, &[("kuma.io/service", &["web", "web-admin"])]);
        assert_eq!(only_web.allows("a", &web), Ok(()));
        let err = only_web.allows("a", &dataplane(&["web", "backend"])).unwrap_err();
        assert!(
            err.contains("networking.inbound[1] has tag kuma.io/service=\"backend\""),
            "{err}"
        );
        let err = claims(None, &[("team", &["a"])]).allows("a", &web).unwrap_err();
        assert!(err.contains("lacks tag team"), "{err}");
        assert_eq!(claims(None, &[("version", &["v1"])]).allows("a", &web), Ok(()));
    }

    #[test]
    fn key_and_revocation_resources_validate() {
        let key = DataplaneTokenKey::ed25519(&[7u8; 32]);
        assert_eq!(key.public_key_bytes(), Some(vec![7u8; 32]));
        let v = serde_json::to_value(&key).unwrap();
        assert!(validate_spec(ResourceType::DataplaneTokenKey, v, &FieldPath::root()).is_ok());

        let bad = json!({"algorithm": "RS256", "publicKey": "AAAA"});
        let err = validate_spec(ResourceType::DataplaneTokenKey, bad, &FieldPath::root()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("algorithm") && text.contains("publicKey"), "{text}");

        let ok = json!({"revokedAt": "2026-12-03T10:00:00Z"});
        assert!(validate_spec(ResourceType::DataplaneTokenRevocation, ok, &FieldPath::root()).is_ok());
        let bad = json!({"revokedAt": "yesterday"});
        let err = validate_spec(ResourceType::DataplaneTokenRevocation, bad, &FieldPath::root()).unwrap_err();
        assert!(err.to_string().contains("revokedAt"), "{err}");
    }

    #[test]
    fn key_names_carry_serials() {
        assert_eq!(key_serial(&key_name(12)), Some(12));
        for bad in ["key-", "key-01", "key-x", "12", "key--1"] {
            assert_eq!(key_serial(bad), None, "{bad}");
        }
    }

    #[test]
    fn token_tags_are_bounded() {
        let mut tags = BTreeMap::new();
        assert!(check_token_tags(&tags).is_ok());
        tags.insert("kuma.io/service".to_string(), vec![]);
        assert!(check_token_tags(&tags).is_err());
        tags.insert("kuma.io/service".to_string(), vec![String::new()]);
        assert!(check_token_tags(&tags).is_err());
        tags.insert("kuma.io/service".to_string(), vec!["web".into()]);
        assert!(check_token_tags(&tags).is_ok());
    }
}
