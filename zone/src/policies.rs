//! The zone's policy resolver: which policies apply to a proxy towards each
//! destination and on each inbound, from the mesh snapshot. Matching and
//! merging are `meridian_core::policy::matching`; this module decodes a
//! snapshot's policies once and answers the generator's questions.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_core::dataplane::{Dataplane, SERVICE_TAG};
use meridian_core::policy::matching::{
    from_conf, http_route_rules, ordered_http_routes, to_conf, Destination, ProxyView, Tags,
};
use meridian_core::policy::meshcircuitbreaker::MeshCircuitBreaker;
use meridian_core::policy::meshfaultinjection::MeshFaultInjection;
use meridian_core::policy::meshhttproute::{MeshHttpRoute, Rule};
use meridian_core::policy::meshloadbalancingstrategy::MeshLoadBalancingStrategy;
use meridian_core::policy::meshretry::MeshRetry;
use meridian_core::policy::meshtimeout::MeshTimeout;
use meridian_core::ResourceType;
use meridian_xds::generate::{InboundPolicies, OutboundPolicies, PolicyResolver};
use meridian_xds::snapshot::{MeshSnapshot, ProxyContext};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::xds::ResolverFactory;

/// The policies of one mesh, decoded.
#[derive(Default)]
pub struct MeshPolicies {
    timeouts: Vec<(String, MeshTimeout)>,
    retries: Vec<(String, MeshRetry)>,
    circuit_breakers: Vec<(String, MeshCircuitBreaker)>,
    load_balancing: Vec<(String, MeshLoadBalancingStrategy)>,
    http_routes: Vec<(String, MeshHttpRoute)>,
    faults: Vec<(String, MeshFaultInjection)>,
}

fn decode<P: DeserializeOwned>(snapshot: &MeshSnapshot, kind: ResourceType) -> Vec<(String, P)> {
    snapshot
        .policies
        .get(kind.name())
        .into_iter()
        .flatten()
        .filter_map(|(name, spec)| match serde_json::from_value(spec.clone()) {
            Ok(p) => Some((name.clone(), p)),
            Err(e) => {
                // Stored policies were validated; one that no longer decodes
                // is skipped rather than breaking the whole mesh.
                tracing::warn!(policy = %name, kind = %kind, error = %e, "skipping an undecodable policy");
                None
            }
        })
        .collect()
}

impl MeshPolicies {
    pub fn new(snapshot: &MeshSnapshot) -> Self {
        MeshPolicies {
            timeouts: decode(snapshot, ResourceType::MeshTimeout),
            retries: decode(snapshot, ResourceType::MeshRetry),
            circuit_breakers: decode(snapshot, ResourceType::MeshCircuitBreaker),
            load_balancing: decode(snapshot, ResourceType::MeshLoadBalancingStrategy),
            http_routes: decode(snapshot, ResourceType::MeshHTTPRoute),
            faults: decode(snapshot, ResourceType::MeshFaultInjection),
        }
    }
}

/// Logs a merge failure (two policies that cannot be combined) and carries on
/// without that policy type for this destination.
fn ok_or_log<T>(what: &str, r: Result<Option<T>, meridian_core::policy::matching::MatchError>) -> Option<T> {
    r.unwrap_or_else(|e| {
        tracing::warn!(policy = what, error = %e, "policies could not be merged");
        None
    })
}

/// A stand-in for the destination side when only its service is known: one
/// inbound tagged with the service.
fn destination_dataplane(service: &str) -> Dataplane {
    serde_json::from_value(json!({"networking": {"address": "127.0.0.1",
        "inbound": [{"port": 1, "tags": {SERVICE_TAG: service}}]}}))
    .unwrap_or_else(|_| Dataplane {
        networking: meridian_core::dataplane::DataplaneNetworking {
            address: "127.0.0.1".into(),
            advertised_address: None,
            inbound: Vec::new(),
            outbound: Vec::new(),
            transparent_proxying: None,
            gateway: None,
            admin: None,
        },
    })
}

fn client_tags(dp: &Dataplane) -> Tags {
    dp.all_tags()
}

impl PolicyResolver for MeshPolicies {
    fn outbound(&self, _snapshot: &MeshSnapshot, proxy: &ProxyContext, service: &str) -> OutboundPolicies {
        let view = ProxyView::new(&proxy.mesh, &proxy.dataplane);
        let dest = Destination::Service(service);
        let rules: Vec<Rule> = http_route_rules(&self.http_routes, &view, dest).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "MeshHTTPRoutes could not be merged");
            Vec::new()
        });
        // One route per match, in the order Envoy must try them.
        let http_rules = ordered_http_routes(&rules)
            .into_iter()
            .map(|e| Rule {
                matches: vec![e.matched.clone()],
                default: e.conf.clone(),
            })
            .collect();
        // Faults are the destination's: its inbound `from` rules that select
        // this client.
        let target = destination_dataplane(service);
        let target_view = ProxyView::new(&proxy.mesh, &target);
        let faults = ok_or_log(
            "MeshFaultInjection",
            from_conf(&self.faults, &target_view, 0, &client_tags(&proxy.dataplane)),
        )
        .and_then(|c| c.http)
        .unwrap_or_default();
        OutboundPolicies {
            timeout: ok_or_log("MeshTimeout", to_conf(&self.timeouts, &view, dest)),
            retry: ok_or_log("MeshRetry", to_conf(&self.retries, &view, dest)),
            circuit_breaker: ok_or_log("MeshCircuitBreaker", to_conf(&self.circuit_breakers, &view, dest)),
            load_balancing: ok_or_log("MeshLoadBalancingStrategy", to_conf(&self.load_balancing, &view, dest)),
            http_rules,
            faults,
        }
    }

    fn inbound(&self, _snapshot: &MeshSnapshot, proxy: &ProxyContext, index: usize) -> InboundPolicies {
        let view = ProxyView::new(&proxy.mesh, &proxy.dataplane);
        let anyone = BTreeMap::new();
        InboundPolicies {
            timeout: ok_or_log("MeshTimeout", from_conf(&self.timeouts, &view, index, &anyone)),
            faults: ok_or_log("MeshFaultInjection", from_conf(&self.faults, &view, index, &anyone))
                .and_then(|c| c.http)
                .unwrap_or_default(),
        }
    }
}

/// The resolver every generation uses.
pub fn resolver_factory() -> ResolverFactory {
    Arc::new(|snapshot: &MeshSnapshot| -> Box<dyn PolicyResolver> { Box::new(MeshPolicies::new(snapshot)) })
}
