//! Generated xDS resources: what a proxy should have, by type and name, each
//! with a content version so the ADS server can send only what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The types Meridian serves, in make-before-break order: a proxy gets the
/// secrets, clusters and endpoints a listener or route refers to before the
/// listener or route itself.
pub const TYPES_IN_ORDER: [&str; 5] = [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// One resource: its name, a content version and the encoded message.
#[derive(Clone, Debug, PartialEq)]
pub struct XdsResource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

impl XdsResource {
    /// Encodes `msg` of `type_url` under `name`; the version is a hash of the bytes.
    pub fn new<M: Message>(type_url: &str, name: &str, msg: &M) -> Self {
        let value = msg.encode_to_vec();
        XdsResource {
            name: name.to_string(),
            version: version_hex(&value),
            body: Any {
                type_url: type_url.to_string(),
                value,
            },
        }
    }
}

/// A resource in a set, ordered and looked up by its name: the set needs
/// no copy of the name, only a reference to the shared resource.
#[derive(Clone, Debug)]
struct Named(Arc<XdsResource>);

impl PartialEq for Named {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Named {}

impl PartialOrd for Named {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Named {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

impl std::borrow::Borrow<str> for Named {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

/// Everything one proxy should have. Resources are reference-counted: the
/// proxies of a mesh that get the same cluster or endpoints share one
/// encoded copy (see `generate::cache`).
#[derive(Clone, Debug, Default)]
pub struct ResourceSet {
    by_type: BTreeMap<String, BTreeSet<Named>>,
}

/// Two sets are equal when they hold the same names at the same content
/// versions (a version is a hash of the encoded resource): comparing
/// versions, or the same `Arc`, spares comparing every encoded body when
/// the zone checks whether a regenerated set changed.
impl PartialEq for ResourceSet {
    fn eq(&self, other: &Self) -> bool {
        self.by_type.len() == other.by_type.len()
            && self.by_type.iter().zip(&other.by_type).all(|((ta, a), (tb, b))| {
                ta == tb
                    && a.len() == b.len()
                    && a.iter().zip(b).all(|(Named(ra), Named(rb))| {
                        Arc::ptr_eq(ra, rb)
                            || (ra.name == rb.name && ra.version == rb.version && ra.body.type_url == rb.body.type_url)
                    })
            })
    }
}

impl ResourceSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource.
    pub fn insert<M: Message>(&mut self, type_url: &str, name: &str, msg: &M) {
        self.insert_shared(type_url, Arc::new(XdsResource::new(type_url, name, msg)));
    }

    /// Adds (or replaces) an encoded resource, shared with other sets.
    pub fn insert_shared(&mut self, type_url: &str, resource: Arc<XdsResource>) {
        let of_type = match self.by_type.get_mut(type_url) {
            Some(m) => m,
            None => self.by_type.entry(type_url.to_string()).or_default(),
        };
        of_type.replace(Named(resource));
    }

    /// Removes a resource; whether it was there.
    pub fn remove(&mut self, type_url: &str, name: &str) -> bool {
        self.by_type.get_mut(type_url).is_some_and(|m| m.remove(name))
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&XdsResource> {
        self.by_type.get(type_url)?.get(name).map(|n| n.0.as_ref())
    }

    /// The resources of one type, by name.
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = &XdsResource> {
        self.by_type
            .get(type_url)
            .into_iter()
            .flat_map(|m| m.iter().map(|n| n.0.as_ref()))
    }

    pub fn len(&self, type_url: &str) -> usize {
        self.by_type.get(type_url).map_or(0, BTreeSet::len)
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.values().all(BTreeSet::is_empty)
    }

    /// A version of all resources of a type together (for state-of-the-world).
    pub fn type_version(&self, type_url: &str) -> String {
        let mut bytes = Vec::new();
        for r in self.of_type(type_url) {
            bytes.extend_from_slice(r.name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(r.version.as_bytes());
            bytes.push(0);
        }
        hash_hex(&bytes)
    }
}

/// Shared, immutable resource sets handed to streams.
pub type SharedResources = Arc<ResourceSet>;

/// A resource's version: a 64-bit hash of its encoding as hex, read eight
/// bytes at a time (each step is a bijection of the state, so changing any
/// one word changes the result; a final mix spreads it over every bit).
/// Change detection, not security; about 7× faster than [`hash_hex`] over
/// the megabytes a sidecar's configuration encodes to.
pub fn version_hex(bytes: &[u8]) -> String {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ (bytes.len() as u64);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = step(h, u64::from_le_bytes(w));
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    h = step(h, u64::from_le_bytes(last));
    // MurmurHash3's 64-bit finalizer.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    format!("{h:016x}")
}

/// A 64-bit FNV-1a hash as hex: cheap change detection, not security.
pub fn hash_hex(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

#[cfg(test)]
mod version_tests {
    use super::version_hex;

    #[test]
    fn every_single_bit_change_and_every_length_changes_the_version() {
        let base: Vec<u8> = (0..67u8).map(|i| i.wrapping_mul(37)).collect();
        let v = version_hex(&base);
        assert_eq!(v, version_hex(&base), "deterministic");
        assert_eq!(v.len(), 16);
        for i in 0..base.len() {
            for bit in 0..8 {
                let mut changed = base.clone();
                changed[i] ^= 1 << bit;
                assert_ne!(version_hex(&changed), v, "byte {i} bit {bit}");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for n in 0..=base.len() {
            assert!(seen.insert(version_hex(&base[..n])), "prefix of {n} bytes");
        }
        // Trailing zeros are not padding.
        assert_ne!(version_hex(b"ab"), version_hex(b"ab\0"));
    }
}
