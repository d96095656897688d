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

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, Locality, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    cluster_load_assignment, lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint,
    LocalityLbEndpoints,
};
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

/// The load assignment of cluster `cluster_name` for `endpoints`.
pub fn load_assignment(
    cluster_name: &str,
    snapshot: &MeshSnapshot,
    endpoints: &[&ServiceEndpoint<'_>],
    lb: Option<&LbConf>,
) -> ClusterLoadAssignment {
    let zones: BTreeSet<String> = endpoints.iter().map(|e| e.zone.to_string()).collect();
    let priorities = zone_priorities(&snapshot.zone, &zones, lb);
    // zone -> (address, port) -> weight; one remote ingress may advertise
    // several tag sets of a service at the same address.
    let mut by_zone: BTreeMap<&str, BTreeMap<(&str, u32), u32>> = BTreeMap::new();
    for e in endpoints {
        *by_zone
            .entry(e.zone)
            .or_default()
            .entry((e.address, e.port))
            .or_default() += e.weight;
    }
    let localities = by_zone
        .into_iter()
        .filter_map(|(zone, eps)| {
            let priority = *priorities.get(zone)?;
            let total: u32 = eps.values().sum();
            Some(LocalityLbEndpoints {
                locality: Some(Locality {
                    zone: zone.to_string(),
                    ..Default::default()
                }),
                lb_endpoints: eps.into_iter().map(|((a, p), w)| lb_endpoint(a, p, w)).collect(),
                load_balancing_weight: Some(u32_value(total.max(1))),
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
        let cla = load_assignment("backend", &snap, &[&a, &b], None);
        assert_eq!(cla.endpoints.len(), 1);
        assert_eq!(cla.endpoints[0].priority, 0);
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
        assert_eq!(cla.endpoints[0].load_balancing_weight, Some(u32_value(5)));
    }
}
