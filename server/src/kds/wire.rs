//! Resources on the KDS wire: type URLs, wire names, payloads and content
//! versions. Conversion happens here and nowhere else.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_proto as pb;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The type URL of `kind` (`meridian.kds/MeshTimeout`).
pub fn type_url(kind: ResourceType) -> String {
    format!("{}{}", pb::TYPE_URL_PREFIX, kind.name())
}

/// The type a URL names, if Meridian knows it.
pub fn kind_of(type_url: &str) -> Option<ResourceType> {
    type_url.strip_prefix(pb::TYPE_URL_PREFIX)?.parse().ok()
}

/// `<mesh>/<name>` for mesh-scoped resources, `<name>` otherwise.
pub fn wire_name(mesh: Option<&str>, name: &str) -> String {
    match mesh {
        Some(m) => format!("{m}/{name}"),
        None => name.to_string(),
    }
}

/// Splits a wire name according to the scope of `kind`.
pub fn parse_wire_name(kind: ResourceType, wire: &str) -> Result<(Option<String>, String), String> {
    if kind.is_mesh_scoped() {
        match wire.split_once('/') {
            Some((mesh, name)) if !mesh.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((Some(mesh.to_string()), name.to_string()))
            }
            _ => Err(format!("{wire:?} is not of the form <mesh>/<name>")),
        }
    } else if wire.is_empty() || wire.contains('/') {
        Err(format!("{wire:?} is not a valid name"))
    } else {
        Ok((None, wire.to_string()))
    }
}

/// A resource as it travels: identity as the sender names it, labels, spec.
#[derive(Clone, Debug, PartialEq)]
pub struct WireResource {
    pub kind: ResourceType,
    pub mesh: Option<String>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Value,
    pub creation_time: Option<DateTime<Utc>>,
    pub modification_time: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Payload {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    spec: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    creation_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modification_time: Option<DateTime<Utc>>,
}

impl WireResource {
    /// The wire form of a stored resource, under its own name.
    pub fn from_resource(r: &Resource) -> Self {
        WireResource {
            kind: r.key.kind,
            mesh: r.key.mesh.clone(),
            name: r.key.name.clone(),
            labels: r.labels.clone(),
            spec: r.spec.clone(),
            creation_time: Some(r.creation_time),
            modification_time: Some(r.modification_time),
        }
    }

    pub fn wire_name(&self) -> String {
        wire_name(self.mesh.as_deref(), &self.name)
    }

    /// The content version: equal for equal labels and spec.
    pub fn version(&self) -> String {
        content_version(&self.labels, &self.spec)
    }

    pub fn to_proto(&self) -> pb::Resource {
        let payload = Payload {
            labels: self.labels.clone(),
            spec: self.spec.clone(),
            creation_time: self.creation_time,
            modification_time: self.modification_time,
        };
        pb::Resource {
            name: self.wire_name(),
            version: self.version(),
            // Serializing maps of strings and a Value cannot fail.
            payload: serde_json::to_vec(&payload).unwrap_or_default(),
        }
    }

    /// Decodes a resource of type `kind`; the error says what is wrong.
    pub fn from_proto(kind: ResourceType, r: &pb::Resource) -> Result<Self, String> {
        let (mesh, name) = parse_wire_name(kind, &r.name)?;
        let p: Payload = serde_json::from_slice(&r.payload).map_err(|e| format!("undecodable payload: {e}"))?;
        Ok(WireResource {
            kind,
            mesh,
            name,
            labels: p.labels,
            spec: p.spec,
            creation_time: p.creation_time,
            modification_time: p.modification_time,
        })
    }

    /// A stored resource under `key` carrying this content.
    pub fn into_resource(self, key: ResourceKey, version: u64) -> Resource {
        let now = Utc::now();
        Resource {
            key,
            labels: self.labels,
            creation_time: self.creation_time.unwrap_or(now),
            modification_time: self.modification_time.unwrap_or(now),
            version,
            spec: self.spec,
        }
    }
}

/// A 128-bit content hash of labels and spec, as hex (two FNV-1a passes with
/// different offsets over the canonical JSON). Used only to tell whether two
/// sides hold the same content, never for security.
pub fn content_version(labels: &BTreeMap<String, String>, spec: &Value) -> String {
    let bytes = serde_json::to_vec(&(labels, spec)).unwrap_or_default();
    let fnv = |offset: u64| {
        bytes
            .iter()
            .fold(offset, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
    };
    format!("{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip() {
        assert_eq!(wire_name(Some("m"), "a.b"), "m/a.b");
        assert_eq!(
            parse_wire_name(ResourceType::MeshRetry, "m/a.b"),
            Ok((Some("m".into()), "a.b".into()))
        );
        assert!(parse_wire_name(ResourceType::MeshRetry, "nomesh").is_err());
        assert!(parse_wire_name(ResourceType::MeshRetry, "m/a/b").is_err());
        assert!(parse_wire_name(ResourceType::Mesh, "a/b").is_err());
        assert_eq!(
            kind_of(&type_url(ResourceType::ZoneIngress)),
            Some(ResourceType::ZoneIngress)
        );
        assert_eq!(kind_of("type.googleapis.com/x"), None);
    }

    #[test]
    fn proto_round_trip_and_version() {
        let w = WireResource {
            kind: ResourceType::MeshTimeout,
            mesh: Some("default".into()),
            name: "t".into(),
            labels: BTreeMap::from([("kuma.io/origin".into(), "global".into())]),
            spec: json!({"targetRef": {"kind": "Mesh"}}),
            creation_time: Some(Utc::now()),
            modification_time: None,
        };
        let p = w.to_proto();
        assert_eq!(p.name, "default/t");
        let back = WireResource::from_proto(ResourceType::MeshTimeout, &p).unwrap();
        assert_eq!(back, w);
        assert_eq!(p.version, back.version());
        let mut other = w.clone();
        other.spec = json!({"targetRef": {"kind": "MeshSubset"}});
        assert_ne!(other.version(), w.version());
    }

    #[test]
    fn garbage_payload_is_an_error() {
        let p = pb::Resource {
            name: "default/t".into(),
            version: "x".into(),
            payload: b"\x00\xff".to_vec(),
        };
        assert!(WireResource::from_proto(ResourceType::MeshTimeout, &p).is_err());
    }
}
