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
//! no escaping is needed. System record names may contain `/` (`audit/1`):
//! the `s/g/` and `s/m/` spaces never overlap, so a global name cannot be
//! mistaken for a mesh-scoped record. Deleting mesh `M` removes `r/g/Mesh/M`, the range
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

    /// The prefix holding the global system records whose names start with
    /// `name_prefix` (with `""`: every global record, and no mesh-scoped
    /// one). Its key range ends at [`prefix_end`] of it.
    pub fn global_system_prefix(&self, name_prefix: &str) -> String {
        self.system(None, name_prefix)
    }

    /// The first key to read when listing the global system records named
    /// `name_prefix…` after `start_after`: the later of their prefix and the
    /// key right after `start_after`'s (its key plus a NUL byte, the least
    /// greater key). Reading goes on while keys start with
    /// [`Keys::global_system_prefix`].
    pub fn global_system_start(&self, name_prefix: &str, start_after: Option<&str>) -> String {
        let prefix = self.global_system_prefix(name_prefix);
        match start_after {
            Some(after) => {
                let mut next = self.system(None, after);
                next.push('\0');
                next.max(prefix)
            }
            None => prefix,
        }
    }

    /// Parses the key of a global system record back to the record's name;
    /// `None` for every other key (mesh-scoped records, resources, other
    /// prefixes).
    pub fn parse_global_system<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix("/s/g/")
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

    #[test]
    fn global_system_keys() {
        let k = Keys::new("/meridian");
        for name in ["audit/1", "", "a b/c"] {
            let key = k.system(None, name);
            assert!(key.starts_with(&k.global_system_prefix("")), "{key}");
            assert_eq!(k.parse_global_system(&key), Some(name));
        }
        assert_eq!(k.global_system_prefix("audit/"), "/meridian/s/g/audit/");
        assert_eq!(k.parse_global_system(&k.system(Some("m"), "audit/1")), None);
        assert_eq!(k.parse_global_system("/meridian/r/g/Zone/z"), None);
        assert_eq!(k.parse_global_system("/other/s/g/x"), None);
        assert!(!k.system(Some("m"), "x").starts_with(&k.global_system_prefix("")));
        assert_eq!(k.global_system_start("audit", None), "/meridian/s/g/audit");
        assert_eq!(
            k.global_system_start("audit", Some("audit/1")),
            "/meridian/s/g/audit/1\0"
        );
        assert_eq!(k.global_system_start("audit", Some("a")), "/meridian/s/g/audit");
    }
}
