//! A stored resource: identity, labels, times, store version and the
//! validated spec in its canonical JSON form.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::types::ResourceType;

/// Identifies a resource: `(type, mesh, name)`; `mesh` is `None` for
/// global-scoped types.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: ResourceType,
    pub mesh: Option<String>,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: ResourceType, mesh: Option<&str>, name: &str) -> Self {
        ResourceKey {
            kind,
            mesh: mesh.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// The key of a mesh-scoped resource.
    pub fn in_mesh(kind: ResourceType, mesh: &str, name: &str) -> Self {
        Self::new(kind, Some(mesh), name)
    }

    /// The key of a global-scoped resource.
    pub fn global(kind: ResourceType, name: &str) -> Self {
        Self::new(kind, None, name)
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mesh {
            Some(m) => write!(f, "{} {}/{}", self.kind, m, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A resource as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub key: ResourceKey,
    pub labels: BTreeMap<String, String>,
    pub creation_time: DateTime<Utc>,
    pub modification_time: DateTime<Utc>,
    /// The store revision of the last write; 0 for a resource not yet stored.
    /// Used for compare-and-swap updates.
    pub version: u64,
    /// The validated spec, canonical JSON (an object).
    pub spec: Value,
}

/// The persisted encoding of a resource (the version comes from the store).
#[derive(Serialize, Deserialize)]
struct StoredForm<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    mesh: Option<String>,
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    labels: BTreeMap<String, String>,
    #[serde(rename = "creationTime")]
    creation_time: DateTime<Utc>,
    #[serde(rename = "modificationTime")]
    modification_time: DateTime<Utc>,
    spec: Value,
}

/// A stored record that cannot be decoded (corruption or a foreign writer).
#[derive(Debug, thiserror::Error)]
#[error("undecodable stored resource: {0}")]
pub struct DecodeStoredError(pub String);

impl Resource {
    /// A new, not yet stored resource with both times set to `now`.
    pub fn new(key: ResourceKey, labels: BTreeMap<String, String>, spec: Value, now: DateTime<Utc>) -> Self {
        Resource {
            key,
            labels,
            creation_time: now,
            modification_time: now,
            version: 0,
            spec,
        }
    }

    pub fn kind(&self) -> ResourceType {
        self.key.kind
    }

    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub fn mesh(&self) -> Option<&str> {
        self.key.mesh.as_deref()
    }

    /// Encodes for persistence (JSON bytes).
    pub fn to_stored_bytes(&self) -> Vec<u8> {
        let form = StoredForm {
            kind: self.key.kind.name(),
            mesh: self.key.mesh.clone(),
            name: self.key.name.clone(),
            labels: self.labels.clone(),
            creation_time: self.creation_time,
            modification_time: self.modification_time,
            spec: self.spec.clone(),
        };
        // Serializing plain strings, maps and a Value cannot fail.
        serde_json::to_vec(&form).unwrap_or_default()
    }

    /// Decodes what [`Resource::to_stored_bytes`] wrote; `version` is the
    /// store revision of that write.
    pub fn from_stored_bytes(bytes: &[u8], version: u64) -> Result<Self, DecodeStoredError> {
        let form: StoredForm<'_> = serde_json::from_slice(bytes).map_err(|e| DecodeStoredError(e.to_string()))?;
        let kind = form
            .kind
            .parse::<ResourceType>()
            .map_err(|e| DecodeStoredError(e.to_string()))?;
        Ok(Resource {
            key: ResourceKey {
                kind,
                mesh: form.mesh,
                name: form.name,
            },
            labels: form.labels,
            creation_time: form.creation_time,
            modification_time: form.modification_time,
            version,
            spec: form.spec,
        })
    }

    /// The HTTP API form (DESIGN §4): `type`, `name`, `mesh`, `labels`,
    /// `creationTime`, `modificationTime`, then `spec` for policies or the
    /// fields inline for the other types.
    pub fn to_api_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.key.kind.name().into()));
        if let Some(mesh) = &self.key.mesh {
            m.insert("mesh".into(), Value::String(mesh.clone()));
        }
        m.insert("name".into(), Value::String(self.key.name.clone()));
        if !self.labels.is_empty() {
            let labels = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            m.insert("labels".into(), Value::Object(labels));
        }
        m.insert("creationTime".into(), Value::String(format_time(&self.creation_time)));
        m.insert(
            "modificationTime".into(),
            Value::String(format_time(&self.modification_time)),
        );
        if self.key.kind.is_policy() {
            m.insert("spec".into(), self.spec.clone());
        } else if let Value::Object(fields) = &self.spec {
            for (k, v) in fields {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }
}

/// RFC 3339 with seconds precision and a `Z`, as the API shows times.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_round_trip() {
        let now = Utc::now();
        let r = Resource::new(
            ResourceKey::in_mesh(ResourceType::MeshTimeout, "default", "t1"),
            BTreeMap::from([("team".to_string(), "a".to_string())]),
            json!({"targetRef": {"kind": "Mesh"}}),
            now,
        );
        let back = Resource::from_stored_bytes(&r.to_stored_bytes(), 7).unwrap();
        assert_eq!(back.version, 7);
        assert_eq!(back.key, r.key);
        assert_eq!(back.spec, r.spec);
        assert_eq!(back.labels, r.labels);
    }

    #[test]
    fn inline_types_flatten_fields() {
        let r = Resource::new(
            ResourceKey::global(ResourceType::Mesh, "m1"),
            BTreeMap::new(),
            json!({"skipCreatingInitialPolicies": ["*"]}),
            Utc::now(),
        );
        let v = r.to_api_json();
        assert_eq!(v["type"], "Mesh");
        assert_eq!(v["skipCreatingInitialPolicies"][0], "*");
        assert!(v.get("spec").is_none());
        assert!(v.get("mesh").is_none());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Resource::from_stored_bytes(b"\xff\x00", 1).is_err());
        assert!(Resource::from_stored_bytes(br#"{"type":"Nope"}"#, 1).is_err());
    }
}
