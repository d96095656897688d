//! Proxyless gRPC clients (`xds:///SERVICE`): for every service of the mesh,
//! a Listener named `SERVICE` (and `SERVICE:PORT` for each port the service
//! is known on) holding an `api_listener` — an HttpConnectionManager that
//! takes its routes over ADS (RDS), with the fault filter when the
//! destination injects faults and the router last — plus the
//! RouteConfiguration, EDS Clusters and ClusterLoadAssignments behind it.
//!
//! What a gRPC client does not support is left out rather than sent to be
//! ignored (or NACKed):
//! - MeshHealthCheck: gRPC clients do not run active health checks (they
//!   ignore a cluster's `health_checks` and have no panic threshold), so
//!   their clusters carry neither (see `clusters::with_health_check`, which
//!   only sidecars call).
//! - MeshTCPRoute: gRPC is HTTP/2 only; a client's traffic always takes the
//!   HTTP routes.
//! - MeshHTTPRoute: routes take the subset of Envoy's route API that gRFC A28
//!   allows (`routes` module docs): prefix matches as an exact path plus a
//!   `/`-terminated prefix, no query matches, no filters, no redirects.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    fault_delay, fault_rate_limit, FaultDelay, FaultRateLimit,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter::ConfigType, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use meridian_core::policy::common::IntOrString;
use meridian_core::policy::meshfaultinjection::FaultConf;

use super::cache::{facts_of, shared_or_built, BuiltPart, Variant};
use super::clusters::{eds_cluster, for_grpc};
use super::routes::{route_configuration, Client, ClusterRef, Protocol};
use super::{ads_source, any, duration, OutboundPolicies, PolicyResolver};
use crate::resources::{ResourceSet, XdsResource, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::snapshot::{MeshSnapshot, ProxyContext, ServiceIndex};
use std::cell::OnceCell;

/// A percentage (`50`, `"12.5"`) as a fraction of a million.
pub fn fraction(p: &IntOrString) -> FractionalPercent {
    let value = p.as_f64().unwrap_or(0.0).clamp(0.0, 100.0);
    FractionalPercent {
        numerator: (value * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// The fault filter for a destination's faults: the first abort and the
/// first delay configured (Envoy's filter holds one of each).
pub fn fault_filter(faults: &[FaultConf]) -> Option<HttpFault> {
    let abort = faults.iter().find_map(|f| f.abort.as_ref());
    let delay = faults.iter().find_map(|f| f.delay.as_ref());
    // Validation admits only positive bandwidths.
    let bandwidth = faults
        .iter()
        .filter_map(|f| f.response_bandwidth.as_ref())
        .find_map(|b| Some((meridian_core::policy::meshfaultinjection::bandwidth_kbps(&b.limit)?, b)));
    if abort.is_none() && delay.is_none() && bandwidth.is_none() {
        return None;
    }
    Some(HttpFault {
        response_rate_limit: bandwidth.map(|(kbps, b)| FaultRateLimit {
            percentage: Some(fraction(&b.percentage)),
            limit_type: Some(fault_rate_limit::LimitType::FixedLimit(fault_rate_limit::FixedLimit {
                limit_kbps: kbps,
            })),
        }),
        abort: abort.map(|a| FaultAbort {
            percentage: Some(fraction(&a.percentage)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(a.http_status.clamp(200, 599) as u32)),
            ..Default::default()
        }),
        delay: delay.map(|d| FaultDelay {
            percentage: Some(fraction(&d.percentage)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(d.value.as_std()))),
        }),
        ..Default::default()
    })
}

fn http_connection_manager(route_name: &str, fault: Option<HttpFault>) -> HttpConnectionManager {
    let mut filters = Vec::new();
    if let Some(f) = fault {
        filters.push(HttpFilter {
            name: "envoy.filters.http.fault".into(),
            config_type: Some(ConfigType::TypedConfig(any(&f))),
            ..Default::default()
        });
    }
    filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    });
    HttpConnectionManager {
        stat_prefix: route_name.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: route_name.to_string(),
        })),
        http_filters: filters,
        ..Default::default()
    }
}

/// Everything a proxyless gRPC client of the mesh may ask for.
pub fn generate(snapshot: &MeshSnapshot, proxy: &ProxyContext, policies: &dyn PolicyResolver) -> ResourceSet {
    // The index is built only if something is not in the cache.
    let lazy_index = OnceCell::new();
    let index = || lazy_index.get_or_init(|| ServiceIndex::new(snapshot));
    let facts = facts_of(policies.cache(), snapshot, index);
    // Mesh mTLS, when the node's bootstrap has a certificate provider to
    // name; clients of the default instance share their part, others get
    // theirs built alone.
    let provider = snapshot.mtls.as_ref().and(proxy.tls.certificate_provider.as_deref());
    let (variant, cache) = match provider {
        None => (Variant::Proxyless, policies.cache()),
        Some(super::tls::DEFAULT_CERTIFICATE_PROVIDER) => (Variant::ProxylessTls, policies.cache()),
        Some(_) => (Variant::ProxylessTls, None),
    };
    let services: Vec<(&str, Arc<OutboundPolicies>)> = facts
        .services()
        .map(|(service, _)| (service, policies.outbound_shared(snapshot, proxy, service)))
        .collect();
    // Every client of the mesh with the same policies towards every service
    // gets the same resources for them: built once, cloned (as shared
    // references) for the others.
    let build = || -> BuiltPart {
        let mut set = ResourceSet::new();
        let mut resolved: HashMap<&str, Arc<OutboundPolicies>> =
            services.iter().map(|(s, p)| (*s, p.clone())).collect();
        let mut extras = Vec::new();
        let mut clusters: BTreeSet<ClusterRef> = BTreeSet::new();
        for (service, p) in &services {
            let service = *service;
            let (routes, used) = shared_or_built(cache, ROUTE, service, p, Variant::Proxyless, || {
                let (routes, used) = route_configuration(service, service, p, Protocol::Grpc, Client::Proxyless);
                (XdsResource::new(ROUTE, service, &routes), used.into_iter().collect())
            });
            set.insert_shared(ROUTE, routes);
            clusters.extend(used.iter().cloned());
            let mut names = vec![service.to_string()];
            names.extend(facts.get(service).ports.iter().map(|port| format!("{service}:{port}")));
            for name in names {
                let (listener, _) = shared_or_built(cache, LISTENER, &name, p, Variant::Proxyless, || {
                    let hcm = http_connection_manager(service, fault_filter(&p.faults));
                    let listener = Listener {
                        name: name.clone(),
                        api_listener: Some(ApiListener {
                            api_listener: Some(any(&hcm)),
                        }),
                        ..Default::default()
                    };
                    (XdsResource::new(LISTENER, &name, &listener), Vec::new())
                });
                set.insert_shared(LISTENER, listener);
            }
        }
        for cluster in &clusters {
            let name = cluster.name();
            // A cluster carries the policies of the service it belongs to.
            let p = match resolved.get(cluster.service.as_str()) {
                Some(p) => p.clone(),
                None => {
                    let p = policies.outbound_shared(snapshot, proxy, &cluster.service);
                    extras.push((cluster.service.clone(), p.clone()));
                    resolved.insert(&cluster.service, p.clone());
                    p
                }
            };
            // gRPC clients speak HTTP/2 themselves; the option is for Envoy.
            let (c, _) = shared_or_built(cache, CLUSTER, &name, &p, variant, || {
                let mut c = for_grpc(eds_cluster(&name, &p, false));
                if let Some(provider) = provider {
                    let ctx =
                        super::tls::proxyless_upstream(&snapshot.mesh, &cluster.service, &cluster.subset, provider);
                    c.transport_socket = Some(super::tls::transport_socket(&ctx));
                }
                (XdsResource::new(CLUSTER, &name, &c), Vec::new())
            });
            set.insert_shared(CLUSTER, c);
            let cla = super::endpoints::assignment(cache, snapshot, proxy, &name, &p, || {
                index().endpoints(&cluster.service, &cluster.subset)
            });
            set.insert_shared(ENDPOINT, cla);
        }
        (set, extras)
    };
    // Affinity tags make assignments the client's own: its resources are
    // not shared with the mesh's other clients.
    let own = services
        .iter()
        .any(|(_, p)| super::endpoints::affinity_tags(p.load_balancing.as_ref()).is_some());
    let mut set = match cache {
        Some(c) if !own => {
            let key: Vec<Arc<OutboundPolicies>> = services.iter().map(|(_, p)| p.clone()).collect();
            c.mesh_part(
                variant,
                &key,
                |service, p| Arc::ptr_eq(&policies.outbound_shared(snapshot, proxy, service), p),
                build,
            )
        }
        _ => build().0,
    };
    // A proxyless dataplane's inbounds are xDS-enabled gRPC servers.
    super::server::add_listeners(&mut set, snapshot, proxy, policies);
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{invariants, NoPolicies, OutboundPolicies};
    use crate::snapshot::{DataplaneEntry, ProxyKind, RemoteIngress};
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier, RouteConfiguration,
    };
    use meridian_core::dataplane::{Dataplane, ZoneIngress};
    use meridian_core::policy::meshhttproute::Rule;
    use prost::Message;
    use serde_json::json;

    fn dp(address: &str, port: u32, service: &str, version: &str) -> Dataplane {
        serde_json::from_value(json!({"networking": {"address": address, "inbound": [
            {"port": port, "tags": {"kuma.io/service": service, "version": version}}]}}))
        .unwrap()
    }

    fn snapshot() -> MeshSnapshot {
        MeshSnapshot {
            zone: "zone-1".into(),
            mesh: "default".into(),
            dataplanes: vec![
                DataplaneEntry { name: "backend-1".into(), spec: dp("127.0.0.1", 50051, "backend", "v1") },
                DataplaneEntry { name: "backend-2".into(), spec: dp("127.0.0.2", 50051, "backend", "v2") },
            ],
            remote_ingresses: vec![RemoteIngress {
                zone: "zone-2".into(),
                spec: serde_json::from_value::<ZoneIngress>(json!({
                    "networking": {"address": "10.0.0.9", "port": 10001, "advertisedAddress": "10.0.0.9", "advertisedPort": 10001},
                    "availableServices": [
                        {"tags": {"kuma.io/service": "backend", "version": "v1"}, "instances": 2, "mesh": "default"},
                        {"tags": {"kuma.io/service": "db"}, "instances": 1, "mesh": "default"},
                        {"tags": {"kuma.io/service": "other-mesh"}, "instances": 1, "mesh": "other"}
                    ]}))
                .unwrap(),
            }],
            ..Default::default()
        }
    }

    fn client() -> ProxyContext {
        ProxyContext {
            mesh: "default".into(),
            name: "client".into(),
            kind: ProxyKind::Proxyless,
            dataplane: dp("127.0.0.9", 1, "client", "v1"),
            tls: Default::default(),
        }
    }

    #[test]
    fn every_service_gets_listener_route_cluster_and_endpoints() {
        let set = generate(&snapshot(), &client(), &NoPolicies);
        let names: Vec<_> = set.of_type(LISTENER).map(|r| r.name.as_str()).collect();
        // The client's own inbound (port 1) is a server: see `server`.
        let server = |a: &str| format!("grpc/server?xds.resource.listening_address={a}");
        assert_eq!(
            names,
            [
                "backend",
                "backend:50051",
                "db",
                &server("0.0.0.0:1"),
                &server("127.0.0.9:1"),
                &server("[::]:1")
            ]
        );
        assert!(
            set.get(CLUSTER, "other-mesh").is_none(),
            "another mesh's service never appears"
        );
        assert_eq!(invariants::check(&set), Vec::<String>::new());
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
            set.get(ENDPOINT, "backend").unwrap().body.value.as_slice(),
        )
        .unwrap();
        let by_priority: Vec<(String, u32, usize)> = cla
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.clone().unwrap_or_default().zone,
                    l.priority,
                    l.lb_endpoints.len(),
                )
            })
            .collect();
        assert_eq!(by_priority, [("zone-1".into(), 0, 2), ("zone-2".into(), 1, 1)]);
    }

    struct Split;

    impl PolicyResolver for Split {
        fn outbound(&self, _: &MeshSnapshot, _: &ProxyContext, service: &str) -> OutboundPolicies {
            if service != "backend" {
                return OutboundPolicies::default();
            }
            let rule: Rule =
                serde_json::from_value(json!({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "default": {"backendRefs": [
                    {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 80},
                    {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 20}]}}))
                .unwrap();
            OutboundPolicies {
                http_rules: vec![rule],
                ..Default::default()
            }
        }
    }

    #[test]
    fn weighted_subsets_get_their_own_clusters() {
        let set = generate(&snapshot(), &client(), &Split);
        assert_eq!(invariants::check(&set), Vec::<String>::new());
        let rc = RouteConfiguration::decode(set.get(ROUTE, "backend").unwrap().body.value.as_slice()).unwrap();
        let Some(Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else {
            panic!("no route action")
        };
        let Some(ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
            panic!("not weighted")
        };
        let got: Vec<(String, u32)> = w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.unwrap_or_default().value))
            .collect();
        assert_eq!(
            got,
            [("backend|version=v1".into(), 80), ("backend|version=v2".into(), 20)]
        );
        let v2 = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
            set.get(ENDPOINT, "backend|version=v2").unwrap().body.value.as_slice(),
        )
        .unwrap();
        assert_eq!(v2.endpoints.len(), 1, "v2 exists only locally");
    }

    /// Health checks and TCP routes for every service.
    struct Checked;

    impl PolicyResolver for Checked {
        fn outbound(&self, _: &MeshSnapshot, _: &ProxyContext, service: &str) -> OutboundPolicies {
            OutboundPolicies {
                health_check: Some(
                    serde_json::from_value(json!({"healthyPanicThreshold": 20, "failTrafficOnPanic": true,
                        "grpc": {}, "http": {}, "tcp": {}}))
                    .unwrap(),
                ),
                tcp_route: Some(
                    serde_json::from_value(json!({"backendRefs": [
                        {"kind": "MeshServiceSubset", "name": service, "tags": {"version": "v2"}}]}))
                    .unwrap(),
                ),
                ..Default::default()
            }
        }
    }

    #[test]
    fn no_health_checks_or_tcp_routes_for_grpc_clients() {
        let set = generate(&snapshot(), &client(), &Checked);
        assert_eq!(invariants::check(&set), Vec::<String>::new());
        let mut clusters = 0;
        for r in set.of_type(CLUSTER) {
            let c = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(r.body.value.as_slice()).unwrap();
            assert!(c.health_checks.is_empty(), "{}: {:?}", r.name, c.health_checks);
            assert_eq!(c.common_lb_config, None, "{}", r.name);
            clusters += 1;
        }
        assert_eq!(clusters, 2, "backend and db, no TCP route subsets");
    }
}
