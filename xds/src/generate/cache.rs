//! Sharing between the proxies of one mesh snapshot.
//!
//! When a mesh changes, every proxy of it is regenerated against the same
//! snapshot, and most of what they get is the same: a destination's
//! endpoints, its cluster and its routes depend on the snapshot and on the
//! effective policies towards it, not on which proxy asks. A
//! [`SharedCache`] lives as long as the snapshot's resolver and keeps each
//! such resource encoded once; proxies' resource sets then hold the same
//! `Arc`, so the work and the memory are paid once per mesh change, not once
//! per proxy.
//!
//! Keys are the resource's type and name, the identity of the effective
//! policies it was built from (the resolver hands out one `Arc` per distinct
//! value, and the cache keeps that `Arc` alive so its address is not reused)
//! and a variant saying who it was built for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::routes::ClusterRef;
use super::OutboundPolicies;
use crate::resources::XdsResource;

/// Who a shared resource was built for, when that changes its content.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Variant {
    Sidecar,
    Proxyless,
    /// The same for every kind of proxy (endpoints).
    Any,
}

#[derive(Hash, PartialEq, Eq)]
struct Key {
    type_url: &'static str,
    name: String,
    policies: usize,
    variant: Variant,
}

struct Entry {
    /// Keeps the policies alive: their address is part of the key.
    _policies: Arc<OutboundPolicies>,
    resource: Arc<XdsResource>,
    /// For route configurations: the clusters they send to.
    clusters: Arc<[ClusterRef]>,
}

/// Encoded resources shared by the proxies generated from one snapshot.
#[derive(Default)]
pub struct SharedCache {
    entries: Mutex<HashMap<Key, Entry>>,
}

impl SharedCache {
    /// The resource `type_url`/`name` built from `policies` for `variant`:
    /// from the cache, or built by `build` (which also returns the clusters
    /// the resource sends to, for route configurations) and kept.
    pub fn get_or_build(
        &self,
        type_url: &'static str,
        name: &str,
        policies: &Arc<OutboundPolicies>,
        variant: Variant,
        build: impl FnOnce() -> (XdsResource, Vec<ClusterRef>),
    ) -> (Arc<XdsResource>, Arc<[ClusterRef]>) {
        let key = Key {
            type_url,
            name: name.to_string(),
            policies: Arc::as_ptr(policies) as usize,
            variant,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get(&key) {
            return (e.resource.clone(), e.clusters.clone());
        }
        // Built under the lock: proxies of one mesh are generated one after
        // another, so nobody waits for it.
        let (resource, clusters) = build();
        let entry = Entry {
            _policies: policies.clone(),
            resource: Arc::new(resource),
            clusters: clusters.into(),
        };
        let out = (entry.resource.clone(), entry.clusters.clone());
        entries.insert(key, entry);
        out
    }

    /// How many resources are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Gets a resource from `cache` if there is one, or builds it for this proxy
/// alone.
pub fn shared_or_built(
    cache: Option<&SharedCache>,
    type_url: &'static str,
    name: &str,
    policies: &Arc<OutboundPolicies>,
    variant: Variant,
    build: impl FnOnce() -> (XdsResource, Vec<ClusterRef>),
) -> (Arc<XdsResource>, Arc<[ClusterRef]>) {
    match cache {
        Some(c) => c.get_or_build(type_url, name, policies, variant, build),
        None => {
            let (r, clusters) = build();
            (Arc::new(r), clusters.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::CLUSTER;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn cluster(name: &str) -> (XdsResource, Vec<ClusterRef>) {
        let c = Cluster {
            name: name.into(),
            ..Default::default()
        };
        (XdsResource::new(CLUSTER, name, &c), Vec::new())
    }

    #[test]
    fn same_policies_share_other_policies_or_variants_do_not() {
        let cache = SharedCache::default();
        let p = Arc::new(OutboundPolicies::default());
        let (a, _) = cache.get_or_build(CLUSTER, "a", &p, Variant::Sidecar, || cluster("a"));
        let (b, _) = cache.get_or_build(CLUSTER, "a", &p, Variant::Sidecar, || panic!("built twice"));
        assert!(Arc::ptr_eq(&a, &b));

        let other = Arc::new(OutboundPolicies::default());
        let (c, _) = cache.get_or_build(CLUSTER, "a", &other, Variant::Sidecar, || cluster("a"));
        assert!(!Arc::ptr_eq(&a, &c), "other policies build their own");
        let (d, _) = cache.get_or_build(CLUSTER, "a", &p, Variant::Proxyless, || cluster("a"));
        assert!(!Arc::ptr_eq(&a, &d), "another variant builds its own");
        assert_eq!(cache.len(), 3);
    }
}
