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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use super::routes::{ClusterRef, Protocol};
use super::OutboundPolicies;
use crate::resources::{ResourceSet, XdsResource};
use crate::snapshot::{MeshSnapshot, ServiceIndex};

/// What generation asks about a service besides its endpoints. Its
/// protocol comes from its endpoints' `kuma.io/protocol` tags: gRPC wins,
/// then HTTP; `None` means TCP.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// The L7 protocol its endpoints declare (`kuma.io/protocol`), if any.
    pub protocol: Option<Protocol>,
    /// Whether its upstream connections should be HTTP/2 (gRPC or http2).
    pub http2: bool,
    /// The ports it listens on in this zone.
    pub ports: BTreeSet<u32>,
}

/// [`Facts`] of every service of a snapshot, by name, in name order.
#[derive(Debug, Default)]
pub struct ServiceFacts {
    services: BTreeMap<String, Facts>,
}

impl ServiceFacts {
    pub fn new(snapshot: &MeshSnapshot, index: &ServiceIndex<'_>) -> Self {
        let services = snapshot
            .services()
            .into_iter()
            .map(|service| {
                let declared = index.protocols(&service);
                let protocol = if declared.contains(&"grpc") {
                    Some(Protocol::Grpc)
                } else if declared.iter().any(|p| *p == "http" || *p == "http2") {
                    Some(Protocol::Http)
                } else {
                    None
                };
                let facts = Facts {
                    protocol,
                    http2: protocol == Some(Protocol::Grpc) || declared.contains(&"http2"),
                    ports: index.ports(&service),
                };
                (service, facts)
            })
            .collect();
        ServiceFacts { services }
    }

    /// The facts of `service` (defaults for one the snapshot does not know).
    pub fn get(&self, service: &str) -> Facts {
        self.services.get(service).cloned().unwrap_or_default()
    }

    pub fn protocol(&self, service: &str) -> Option<Protocol> {
        self.services.get(service).and_then(|f| f.protocol)
    }

    /// Every service of the snapshot, in name order.
    pub fn services(&self) -> impl Iterator<Item = (&str, &Facts)> {
        self.services.iter().map(|(s, f)| (s.as_str(), f))
    }
}

/// Who a shared resource was built for, when that changes its content.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Variant {
    Sidecar,
    Proxyless,
    /// A proxyless client with mesh mTLS through the default certificate
    /// provider instance.
    ProxylessTls,
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
/// The part of a proxyless client's set that covers every service of the
/// mesh, for one combination of effective policies.
struct MeshPart {
    /// Keeps the policies of the key alive.
    _policies: Vec<Arc<OutboundPolicies>>,
    /// Services outside the key whose policies the part was built with.
    extras: Vec<(String, Arc<OutboundPolicies>)>,
    set: Arc<ResourceSet>,
}

/// What [`SharedCache::mesh_part`] builds: the set, and the services outside
/// the key it resolved policies for.
pub type BuiltPart = (ResourceSet, Vec<(String, Arc<OutboundPolicies>)>);

#[derive(Default)]
pub struct SharedCache {
    entries: Mutex<HashMap<Key, Entry>>,
    facts: OnceLock<Arc<ServiceFacts>>,
    trust_bundle: OnceLock<Arc<XdsResource>>,
    parts: Mutex<HashMap<(Variant, Vec<usize>), MeshPart>>,
}

impl SharedCache {
    /// The snapshot's [`ServiceFacts`], built by `build` the first time.
    pub fn facts(&self, build: impl FnOnce() -> ServiceFacts) -> Arc<ServiceFacts> {
        self.facts.get_or_init(|| Arc::new(build())).clone()
    }

    /// The snapshot's trust bundle secret, built by `build` the first time.
    pub fn trust_bundle(&self, build: impl FnOnce() -> Arc<XdsResource>) -> Arc<XdsResource> {
        self.trust_bundle.get_or_init(build).clone()
    }

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

    /// A set built from `policies` (one per service, in a fixed order), the
    /// same for every proxy resolving to those same policies: from the cache
    /// if `still_same` confirms the policies of the services outside the
    /// key it was built with, else built by `build` (and kept if there is
    /// none yet).
    pub fn mesh_part(
        &self,
        variant: Variant,
        policies: &[Arc<OutboundPolicies>],
        still_same: impl Fn(&str, &Arc<OutboundPolicies>) -> bool,
        build: impl FnOnce() -> BuiltPart,
    ) -> ResourceSet {
        let key = (variant, policies.iter().map(|p| Arc::as_ptr(p) as usize).collect());
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(part) = parts.get(&key) {
            if part.extras.iter().all(|(s, p)| still_same(s, p)) {
                return ResourceSet::clone(&part.set);
            }
            drop(parts);
            return build().0;
        }
        let (set, extras) = build();
        let set = Arc::new(set);
        parts.insert(
            key,
            MeshPart {
                _policies: policies.to_vec(),
                extras,
                set: set.clone(),
            },
        );
        ResourceSet::clone(&set)
    }

    /// How many resources are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The snapshot's service facts: built once per cache, or for this proxy
/// alone without one. `index` gives the snapshot's service index.
pub fn facts_of<'a>(
    cache: Option<&SharedCache>,
    snapshot: &'a MeshSnapshot,
    index: impl Fn() -> &'a ServiceIndex<'a>,
) -> Arc<ServiceFacts> {
    match cache {
        Some(c) => c.facts(|| ServiceFacts::new(snapshot, index())),
        None => Arc::new(ServiceFacts::new(snapshot, index())),
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

    #[test]
    fn a_mesh_part_is_shared_only_while_the_policies_outside_its_key_agree() {
        let cache = SharedCache::default();
        let (p, extra) = (
            Arc::new(OutboundPolicies::default()),
            Arc::new(OutboundPolicies::default()),
        );
        let mut one = ResourceSet::new();
        one.insert_shared(CLUSTER, Arc::new(cluster("a").0));
        let built = one.clone();
        let first = cache.mesh_part(
            Variant::Proxyless,
            std::slice::from_ref(&p),
            |_, _| true,
            || (built, vec![("other".into(), extra.clone())]),
        );
        assert_eq!(first, one);
        // Same key, the extra service resolves to the same policies: shared.
        let again = cache.mesh_part(
            Variant::Proxyless,
            std::slice::from_ref(&p),
            |s, q| s == "other" && Arc::ptr_eq(q, &extra),
            || panic!("built twice"),
        );
        assert_eq!(again, one);
        // Same key, other policies for the extra service: built anew.
        let fresh = cache.mesh_part(
            Variant::Proxyless,
            std::slice::from_ref(&p),
            |_, _| false,
            || (ResourceSet::new(), Vec::new()),
        );
        assert!(fresh.is_empty());
    }
}
