//! The key layout shared by the embedded and etcd backends.
//!
//! ```text
//! {prefix}/r/g/{Type}/{name}            global-scoped resources (Mesh, Zone, ZoneIngress…)
//! {prefix}/r/m/{mesh}/{Type}/{name}     mesh-scoped resources
//! {prefix}/s/g/{name}                   global system records
//! {prefix}/s/m/{mesh}/{name}            mesh-scoped system records
//! ```
//!
//! Mesh, type and resource names cannot contain `/` (they are DNS names), so
//! no escaping is needed. Deleting mesh `M` removes `r/g/Mesh/M`, the range
//! `r/m/M/` and the range `s/m/M/` in one write.

use meridian_core::{ResourceKey, ResourceType};

use crate::Filter;

/// Builds and parses keys under one prefix (no trailing slash; may be empty).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The key of a resource.
    pub fn resource(&self, key: &ResourceKey) -> String {
        match &key.mesh {
            Some(m) => format!("{}/r/m/{}/{}/{}", self.prefix, m, key.kind.name(), key.name),
            None => format!("{}/r/g/{}/{}", self.prefix, key.kind.name(), key.name),
        }
    }

    /// The key of a system record.
    pub fn system(&self, mesh: Option<&str>, name: &str) -> String {
        match mesh {
            Some(m) => format!("{}/s/m/{}/{}", self.prefix, m, name),
            None => format!("{}/s/g/{}", self.prefix, name),
        }
    }

    /// The prefix holding every resource.
    pub fn all_resources(&self) -> String {
        format!("{}/r/", self.prefix)
    }

    /// The prefix holding everything in mesh `mesh` (resources).
    pub fn mesh_resources(&self, mesh: &str) -> String {
        format!("{}/r/m/{}/", self.prefix, mesh)
    }

    /// The prefix holding the mesh-scoped system records of `mesh`.
    pub fn mesh_system(&self, mesh: &str) -> String {
        format!("{}/s/m/{}/", self.prefix, mesh)
    }

    /// The narrowest prefix that covers `filter`; results must still be
    /// checked with [`Filter::matches`].
    pub fn filter_prefix(&self, filter: &Filter) -> String {
        match (filter.kind, &filter.mesh) {
            (Some(k), _) if !k.is_mesh_scoped() => format!("{}/r/g/{}/", self.prefix, k.name()),
            (Some(k), Some(m)) => format!("{}/r/m/{}/{}/", self.prefix, m, k.name()),
            (None, Some(m)) => self.mesh_resources(m),
            (Some(_), None) => format!("{}/r/m/", self.prefix),
            (None, None) => self.all_resources(),
        }
    }

    /// Parses a resource key back; `None` for keys outside the resource space.
    pub fn parse_resource(&self, key: &str) -> Option<ResourceKey> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/r/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["g", ty, name] => Some(ResourceKey::global(ty.parse::<ResourceType>().ok()?, name)),
            ["m", mesh, ty, name] => Some(ResourceKey::in_mesh(ty.parse::<ResourceType>().ok()?, mesh, name)),
            _ => None,
        }
    }
}

/// The exclusive end of the range of keys starting with `prefix` (etcd's
/// "range end" for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = Keys::new("/meridian/");
        for key in [
            ResourceKey::global(ResourceType::Mesh, "m1"),
            ResourceKey::in_mesh(ResourceType::MeshRetry, "m1", "r.1"),
        ] {
            let s = k.resource(&key);
            assert!(s.starts_with("/meridian/r/"), "{s}");
            assert_eq!(k.parse_resource(&s), Some(key));
        }
        assert_eq!(k.parse_resource("/meridian/s/g/x"), None);
        assert_eq!(prefix_end("a/"), b"a0".to_vec());
    }
}
