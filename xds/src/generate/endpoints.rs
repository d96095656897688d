//! ClusterLoadAssignments: a service's endpoints grouped by zone locality,
//! with priorities for cross-zone failover.
//!
//! Local endpoints are priority 0 in locality `zone=<this zone>`. Other
//! zones' endpoints (reached through their ingresses) follow the effective
//! MeshLoadBalancingStrategy `localityAwareness.crossZone.failover` rules:
//! each rule that applies to this zone opens the next priority level for the
//! zones it names (`Any`, `Only`, `AnyExcept`), and `None` stops there; zones
//! no rule names receive no traffic. Without rules — Meridian's default —
//! every other zone is priority 1: traffic leaves the zone only when no local
//! endpoint is available. `localityAwareness.disabled: true` puts every zone
//! at priority 0.
//!
//! `localityAwareness.localZone.affinityTags` splits this zone's endpoints
//! by the proxy's own tag values ([`affinity`]): an endpoint goes to the
//! locality of the first listed key whose value it shares with the proxy
//! (sub-zone `key=value`), weighted by the tag's `weight` or, without
//! weights, 9×10^(n−1−i) for the i-th of n tags; the rest of the zone is one
//! locality of weight 1 (Kuma's numbers: 90 %, 9 %, …, the rest 1 %). All of
//! them stay priority 0, so a group's share moves to the others as its
//! endpoints fail. Such an assignment is the proxy's own, not shared.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, Locality, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    cluster_load_assignment, lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use meridian_core::dataplane::Dataplane;
use meridian_core::policy::meshloadbalancingstrategy::{Conf as LbConf, ToZonesType};

use super::u32_value;
use crate::snapshot::{MeshSnapshot, ServiceEndpoint};

/// The priority of each zone's endpoints as seen from `local_zone`; zones
/// missing from the map receive no traffic.
pub fn zone_priorities(local_zone: &str, zones: &BTreeSet<String>, lb: Option<&LbConf>) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::from([(local_zone.to_string(), 0)]);
    let awareness = lb.and_then(|c| c.locality_awareness.as_ref());
    if awareness.and_then(|a| a.disabled).unwrap_or(false) {
        for z in zones {
            out.insert(z.clone(), 0);
        }
        return out;
    }
    let rules = awareness
        .and_then(|a| a.cross_zone.as_ref())
        .and_then(|c| c.failover.as_ref())
        .filter(|r| !r.is_empty());
    let Some(rules) = rules else {
        for z in zones.iter().filter(|z| *z != local_zone) {
            out.insert(z.clone(), 1);
        }
        return out;
    };
    let mut level = 1;
    for rule in rules {
        if let Some(from) = &rule.from {
            if !from.zones.iter().any(|z| z == local_zone) {
                continue;
            }
        }
        let named: BTreeSet<&String> = rule.to.zones.iter().flatten().collect();
        let remaining: Vec<String> = zones.iter().filter(|z| !out.contains_key(*z)).cloned().collect();
        let chosen: Vec<String> = match rule.to.to_type {
            ToZonesType::None => break,
            ToZonesType::Any => remaining,
            ToZonesType::Only => remaining.into_iter().filter(|z| named.contains(z)).collect(),
            ToZonesType::AnyExcept => remaining.into_iter().filter(|z| !named.contains(z)).collect(),
        };
        if chosen.is_empty() {
            continue;
        }
        for z in chosen {
            out.insert(z, level);
        }
        level += 1;
    }
    out
}

/// The affinity tags of `lb` when they apply (listed, locality awareness
/// not disabled).
pub fn affinity_tags(lb: Option<&LbConf>) -> Option<&[meridian_core::policy::meshloadbalancingstrategy::AffinityTag]> {
    let awareness = lb?.locality_awareness.as_ref()?;
    if awareness.disabled.unwrap_or(false) {
        return None;
    }
    awareness
        .local_zone
        .as_ref()?
        .affinity_tags
        .as_deref()
        .filter(|t| !t.is_empty())
}

/// One affinity group of a proxy: this zone's endpoints whose `key` is
/// `value` (the proxy's own), with the locality weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityGroup {
    pub key: String,
    pub value: String,
    pub weight: u32,
}

/// The affinity groups of `dataplane` under `lb`, in order; `None` when
/// `lb` has no affinity tags. A key the proxy has no value for makes no
/// group (the others keep their weights); with several inbounds, a key's
/// value is the first by name of theirs.
pub fn affinity(lb: Option<&LbConf>, dataplane: &Dataplane) -> Option<Vec<AffinityGroup>> {
    let tags = affinity_tags(lb)?;
    let n = tags.len();
    let groups = tags
        .iter()
        .enumerate()
        .filter_map(|(i, tag)| {
            let value = dataplane
                .networking
                .inbound
                .iter()
                .filter_map(|inbound| inbound.tags.get(&tag.key))
                .min()?;
            let weight = match tag.weight {
                Some(w) => u32::try_from(w).unwrap_or(1).max(1),
                // 9×10^(n−1−i); the validator allows at most 9 tags
                // without weights, so this fits.
                None => 10u32
                    .checked_pow((n - 1 - i) as u32)
                    .and_then(|p| p.checked_mul(9))
                    .unwrap_or(u32::MAX),
            };
            Some(AffinityGroup {
                key: tag.key.clone(),
                value: value.clone(),
                weight,
            })
        })
        .collect();
    Some(groups)
}

fn lb_endpoint(address: &str, port: u32, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: address.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        load_balancing_weight: Some(u32_value(weight.max(1))),
        ..Default::default()
    }
}

/// The load assignment of cluster `name` (of a destination with policies
/// `p`) for `proxy`: its own with affinity tags, else the one shared through
/// `cache`. `endpoints` lists the cluster's endpoints.
pub fn assignment<'s>(
    cache: Option<&super::cache::SharedCache>,
    snapshot: &MeshSnapshot,
    proxy: &crate::snapshot::ProxyContext,
    name: &str,
    p: &std::sync::Arc<super::OutboundPolicies>,
    endpoints: impl FnOnce() -> Vec<&'s ServiceEndpoint<'s>>,
) -> std::sync::Arc<crate::resources::XdsResource> {
    use crate::resources::{XdsResource, ENDPOINT};
    let lb = p.load_balancing.as_ref();
    match affinity(lb, &proxy.dataplane) {
        // The proxy's own tags decide its assignment.
        Some(groups) => std::sync::Arc::new(XdsResource::new(
            ENDPOINT,
            name,
            &load_assignment(name, snapshot, &endpoints(), lb, &groups),
        )),
        None => {
            super::cache::shared_or_built(cache, ENDPOINT, name, p, super::cache::Variant::Any, || {
                let cla = load_assignment(name, snapshot, &endpoints(), lb, &[]);
                (XdsResource::new(ENDPOINT, name, &cla), Vec::new())
            })
            .0
        }
    }
}

/// (address, port) -> weight.
type Endpoints<'a> = BTreeMap<(&'a str, u32), u32>;

/// The load assignment of cluster `cluster_name` for `endpoints`, for a
/// proxy in `affinity` groups (empty: none; see [`affinity`]).
pub fn load_assignment(
    cluster_name: &str,
    snapshot: &MeshSnapshot,
    endpoints: &[&ServiceEndpoint<'_>],
    lb: Option<&LbConf>,
    affinity: &[AffinityGroup],
) -> ClusterLoadAssignment {
    let zones: BTreeSet<String> = endpoints.iter().map(|e| e.zone.to_string()).collect();
    let priorities = zone_priorities(&snapshot.zone, &zones, lb);
    // (zone, affinity group) -> (address, port) -> weight; one remote
    // ingress may advertise several tag sets of a service at the same
    // address. Groups are indexes into `affinity`, the rest of a zone
    // `usize::MAX`.
    const REST: usize = usize::MAX;
    let mut by_locality: BTreeMap<(&str, usize), Endpoints<'_>> = BTreeMap::new();
    for e in endpoints {
        let group = if e.zone == snapshot.zone {
            affinity
                .iter()
                .position(|g| e.tags.get(&g.key) == Some(&g.value))
                .unwrap_or(REST)
        } else {
            REST
        };
        *by_locality
            .entry((e.zone, group))
            .or_default()
            .entry((e.address, e.port))
            .or_default() += e.weight;
    }
    let localities = by_locality
        .into_iter()
        .filter_map(|((zone, group), eps)| {
            let priority = *priorities.get(zone)?;
            let total: u32 = eps.values().sum();
            let (sub_zone, weight) = match affinity.get(group) {
                Some(g) => (format!("{}={}", g.key, g.value), g.weight),
                None if !affinity.is_empty() && zone == snapshot.zone => (String::new(), 1),
                None => (String::new(), total.max(1)),
            };
            Some(LocalityLbEndpoints {
                locality: Some(Locality {
                    zone: zone.to_string(),
                    sub_zone,
                    ..Default::default()
                }),
                lb_endpoints: eps.into_iter().map(|((a, p), w)| lb_endpoint(a, p, w)).collect(),
                load_balancing_weight: Some(u32_value(weight)),
                priority,
                ..Default::default()
            })
        })
        .collect::<Vec<_>>();
    // Priorities must be contiguous from 0: compact the levels in use.
    let used: BTreeSet<u32> = localities.iter().map(|l| l.priority).collect();
    let rank: BTreeMap<u32, u32> = used.into_iter().enumerate().map(|(i, p)| (p, i as u32)).collect();
    let localities = localities
        .into_iter()
        .map(|mut l| {
            l.priority = rank.get(&l.priority).copied().unwrap_or(l.priority);
            l
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: localities,
        policy: failover_policy(lb),
        ..Default::default()
    }
}

/// MeshLoadBalancingStrategy `crossZone.failoverThreshold`: traffic starts
/// to move to the next priority (other zones) once fewer than `percentage`
/// of this priority's endpoints are healthy. Envoy moves load once
/// healthy% × overprovisioning factor / 100 falls under 100, so the factor
/// is 100 × 100 / percentage (Envoy's default, 140, is a threshold of
/// 71.4 %).
fn failover_policy(lb: Option<&LbConf>) -> Option<cluster_load_assignment::Policy> {
    let percentage = lb?
        .locality_awareness
        .as_ref()?
        .cross_zone
        .as_ref()?
        .failover_threshold
        .as_ref()?
        .percentage
        .as_f64()?;
    if !(percentage > 0.0 && percentage <= 100.0) {
        return None;
    }
    Some(cluster_load_assignment::Policy {
        overprovisioning_factor: Some(u32_value((10_000.0 / percentage).round() as u32)),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zones(z: &[&str]) -> BTreeSet<String> {
        z.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_other_zones_are_priority_one() {
        let p = zone_priorities("z1", &zones(&["z1", "z2", "z3"]), None);
        assert_eq!(
            p,
            BTreeMap::from([("z1".into(), 0), ("z2".into(), 1), ("z3".into(), 1)])
        );
    }

    #[test]
    fn failover_rules_open_levels_in_order() {
        let lb: LbConf = serde_json::from_value(json!({"localityAwareness": {"crossZone": {"failover": [
            {"to": {"type": "Only", "zones": ["z3"]}},
            {"from": {"zones": ["other"]}, "to": {"type": "Any"}},
            {"to": {"type": "AnyExcept", "zones": ["z4"]}}
        ]}}}))
        .unwrap();
        let p = zone_priorities("z1", &zones(&["z1", "z2", "z3", "z4"]), Some(&lb));
        assert_eq!(
            p,
            BTreeMap::from([("z1".into(), 0), ("z3".into(), 1), ("z2".into(), 2)])
        );
        let none: LbConf = serde_json::from_value(
            json!({"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "None"}}]}}}),
        )
        .unwrap();
        assert_eq!(zone_priorities("z1", &zones(&["z1", "z2"]), Some(&none)).len(), 1);
        let off: LbConf = serde_json::from_value(json!({"localityAwareness": {"disabled": true}})).unwrap();
        assert!(zone_priorities("z1", &zones(&["z1", "z2"]), Some(&off))
            .values()
            .all(|p| *p == 0));
    }

    #[test]
    fn priorities_are_contiguous_and_remote_weights_add_up() {
        let snap = MeshSnapshot {
            zone: "z1".into(),
            ..Default::default()
        };
        let no_tags = BTreeMap::new();
        let ep = |zone: &'static str, addr: &'static str, w: u32| ServiceEndpoint {
            address: addr,
            port: 10001,
            zone,
            tags: &no_tags,
            weight: w,
        };
        // No local endpoint: the remote zone becomes priority 0.
        let (a, b) = (ep("z2", "10.0.0.2", 2), ep("z2", "10.0.0.2", 3));
        let cla = load_assignment("backend", &snap, &[&a, &b], None, &[]);
        assert_eq!(cla.endpoints.len(), 1);
        assert_eq!(cla.endpoints[0].priority, 0);
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
        assert_eq!(cla.endpoints[0].load_balancing_weight, Some(u32_value(5)));
    }

    #[test]
    fn affinity_groups_follow_the_proxys_tags_in_order() {
        let lb: LbConf = serde_json::from_value(json!({"localityAwareness": {"localZone": {"affinityTags": [
            {"key": "node"}, {"key": "rack"}, {"key": "az"}]}}}))
        .unwrap();
        // Two inbounds: az's first value by name; no rack tag.
        let proxy: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.1", "inbound": [
            {"port": 1, "tags": {"kuma.io/service": "web", "node": "n1", "az": "b"}},
            {"port": 2, "tags": {"kuma.io/service": "web-admin", "az": "a"}}]}}))
        .unwrap();
        let groups = affinity(Some(&lb), &proxy).unwrap();
        let got: Vec<(&str, &str, u32)> = groups
            .iter()
            .map(|g| (g.key.as_str(), g.value.as_str(), g.weight))
            .collect();
        assert_eq!(
            got,
            [("node", "n1", 900), ("az", "a", 9)],
            "rack's share is not given away"
        );
        assert_eq!(affinity(None, &proxy), None);
        let off: LbConf = serde_json::from_value(json!({"localityAwareness": {"disabled": true,
            "localZone": {"affinityTags": [{"key": "node"}]}}}))
        .unwrap();
        assert_eq!(affinity(Some(&off), &proxy), None, "disabled wins");

        let snap = MeshSnapshot {
            zone: "z1".into(),
            ..Default::default()
        };
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let (both, az, other) = (
            tags(&[("node", "n1"), ("az", "a")]),
            tags(&[("az", "a")]),
            tags(&[("az", "c")]),
        );
        let eps = [
            ("z1", "10.0.0.2", &both),
            ("z1", "10.0.0.3", &az),
            ("z1", "10.0.0.4", &other),
            ("z2", "10.1.0.1", &az),
        ]
        .map(|(zone, address, tags)| ServiceEndpoint {
            address,
            port: 8080,
            zone,
            tags,
            weight: 1,
        });
        let refs: Vec<&ServiceEndpoint> = eps.iter().collect();
        let cla = load_assignment("backend", &snap, &refs, Some(&lb), &groups);
        let got: Vec<(String, u32, u32, usize)> = cla
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality
                        .as_ref()
                        .map(|l| format!("{}/{}", l.zone, l.sub_zone))
                        .unwrap_or_default(),
                    l.priority,
                    l.load_balancing_weight.as_ref().map(|w| w.value).unwrap_or(0),
                    l.lb_endpoints.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("z1/node=n1".to_string(), 0, 900, 1),
                ("z1/az=a".to_string(), 0, 9, 1),
                ("z1/".to_string(), 0, 1, 1),
                ("z2/".to_string(), 1, 1, 1),
            ],
            "the first shared key wins; other zones keep their priority"
        );
    }
}
