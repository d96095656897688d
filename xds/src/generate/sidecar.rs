//! Envoy sidecars: an inbound listener per `inbound` forwarding to the
//! application, an outbound listener per `outbound` towards a service, the
//! clusters and load assignments behind them.
//!
//! HTTP-family services (`kuma.io/protocol` http, http2 or grpc on the
//! destination's inbounds) get an HttpConnectionManager with routes over
//! ADS; everything else a TCP proxy. Names: `inbound:<address>:<port>`,
//! `outbound:<address>:<port>`, local application clusters
//! `localhost:<port>`, service clusters by service (and subset).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter::ConfigType,
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use meridian_core::dataplane::SERVICE_TAG;

use super::clusters::eds_cluster;
use super::endpoints::load_assignment;
use super::proxyless::fault_filter;
use super::routes::{route_configuration, ClusterRef, Protocol};
use super::{ads_source, any, duration, PolicyResolver};
use crate::resources::{ResourceSet, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::snapshot::{MeshSnapshot, ProxyContext, ServiceIndex, PROTOCOL_TAG};

/// The protocol a service speaks, from its endpoints' `kuma.io/protocol`
/// tags: gRPC wins, then HTTP; `None` means TCP.
pub fn service_protocol(index: &ServiceIndex<'_>, service: &str) -> Option<Protocol> {
    let mut http = None;
    for t in index.protocols(service) {
        match *t {
            "grpc" => return Some(Protocol::Grpc),
            "http" | "http2" => http = Some(Protocol::Http),
            _ => {}
        }
    }
    http
}

pub(crate) fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

pub(crate) fn network_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(config))),
    }
}

fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    }
}

pub(crate) fn tcp_proxy(stat_prefix: &str, cluster: &str, idle: Option<std::time::Duration>) -> TcpProxy {
    TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        idle_timeout: idle.map(duration),
        ..Default::default()
    }
}

/// A static cluster for the application behind an inbound.
fn local_cluster(name: &str, address: &str, port: u32, connect: std::time::Duration) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(connect)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(address, port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The configuration of an Envoy sidecar.
pub fn generate(snapshot: &MeshSnapshot, proxy: &ProxyContext, policies: &dyn PolicyResolver) -> ResourceSet {
    let mut set = ResourceSet::new();
    let net = &proxy.dataplane.networking;
    let index = ServiceIndex::new(snapshot);

    for (index, inbound) in net.inbound.iter().enumerate() {
        let address = inbound.address.clone().unwrap_or_else(|| net.address.clone());
        let name = format!("inbound:{address}:{}", inbound.port);
        let app_port = inbound.service_port.unwrap_or(inbound.port);
        let app_address = inbound
            .service_address
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let cluster = format!("localhost:{app_port}");
        let p = policies.inbound(snapshot, proxy, index);
        let t = p.timeout.as_ref();
        let connect = t
            .and_then(|t| t.connection_timeout.as_ref())
            .map(|d| d.as_std())
            .unwrap_or(std::time::Duration::from_secs(10));
        set.insert(
            CLUSTER,
            &cluster,
            &local_cluster(&cluster, &app_address, app_port, connect),
        );
        let idle = t.and_then(|t| t.idle_timeout.as_ref()).map(|d| d.as_std());
        let http = matches!(
            inbound.tags.get(PROTOCOL_TAG).map(String::as_str),
            Some("http" | "http2" | "grpc")
        );
        let filter = if http {
            let request_timeout = t
                .and_then(|t| t.http.as_ref())
                .and_then(|h| h.request_timeout.as_ref())
                .map(|d| duration(d.as_std()));
            let routes = RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: name.clone(),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(
                                envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                                    "/".into(),
                                ),
                            ),
                            ..Default::default()
                        }),
                        action: Some(Action::Route(RouteAction {
                            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
                            timeout: request_timeout,
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let mut filters = Vec::new();
            if let Some(f) = fault_filter(&p.faults) {
                filters.push(HttpFilter {
                    name: "envoy.filters.http.fault".into(),
                    config_type: Some(ConfigType::TypedConfig(any(&f))),
                    ..Default::default()
                });
            }
            filters.push(router());
            let hcm = HttpConnectionManager {
                stat_prefix: name.clone(),
                codec_type: CodecType::Auto as i32,
                route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
                http_filters: filters,
                stream_idle_timeout: t
                    .and_then(|t| t.http.as_ref())
                    .and_then(|h| h.stream_idle_timeout.as_ref())
                    .map(|d| duration(d.as_std())),
                ..Default::default()
            };
            network_filter("envoy.filters.network.http_connection_manager", &hcm)
        } else {
            network_filter("envoy.filters.network.tcp_proxy", &tcp_proxy(&name, &cluster, idle))
        };
        let listener = Listener {
            name: name.clone(),
            address: Some(socket(&address, inbound.port)),
            stat_prefix: name.clone(),
            filter_chains: vec![FilterChain {
                filters: vec![filter],
                ..Default::default()
            }],
            ..Default::default()
        };
        set.insert(LISTENER, &name, &listener);
    }

    let mut clusters: BTreeSet<ClusterRef> = BTreeSet::new();
    let mut resolved: std::collections::HashMap<String, super::OutboundPolicies> = std::collections::HashMap::new();
    for outbound in &net.outbound {
        let Some(service) = outbound.tags.get(SERVICE_TAG) else {
            continue;
        };
        let address = outbound.address.clone().unwrap_or_else(|| "127.0.0.1".to_string());
        let name = format!("outbound:{address}:{}", outbound.port);
        if !resolved.contains_key(service) {
            resolved.insert(service.clone(), policies.outbound(snapshot, proxy, service));
        }
        let Some(p) = resolved.get(service) else { continue };
        let filter = match service_protocol(&index, service) {
            Some(protocol) => {
                let (routes, used) = route_configuration(service, service, p, protocol);
                set.insert(ROUTE, service, &routes);
                clusters.extend(used);
                let mut filters = Vec::new();
                if let Some(f) = fault_filter(&p.faults) {
                    filters.push(HttpFilter {
                        name: "envoy.filters.http.fault".into(),
                        config_type: Some(ConfigType::TypedConfig(any(&f))),
                        ..Default::default()
                    });
                }
                filters.push(router());
                let hcm = HttpConnectionManager {
                    stat_prefix: name.clone(),
                    codec_type: CodecType::Auto as i32,
                    route_specifier: Some(RouteSpecifier::Rds(Rds {
                        config_source: Some(ads_source()),
                        route_config_name: service.clone(),
                    })),
                    http_filters: filters,
                    ..Default::default()
                };
                network_filter("envoy.filters.network.http_connection_manager", &hcm)
            }
            None => {
                let whole = ClusterRef {
                    service: service.clone(),
                    subset: Default::default(),
                };
                clusters.insert(whole);
                let idle = p
                    .timeout
                    .as_ref()
                    .and_then(|t| t.idle_timeout.as_ref())
                    .map(|d| d.as_std());
                network_filter("envoy.filters.network.tcp_proxy", &tcp_proxy(&name, service, idle))
            }
        };
        let listener = Listener {
            name: name.clone(),
            address: Some(socket(&address, outbound.port)),
            stat_prefix: name.clone(),
            filter_chains: vec![FilterChain {
                filters: vec![filter],
                ..Default::default()
            }],
            ..Default::default()
        };
        set.insert(LISTENER, &name, &listener);
    }
    for c in clusters {
        let name = c.name();
        let p = resolved
            .entry(c.service.clone())
            .or_insert_with(|| policies.outbound(snapshot, proxy, &c.service));
        let http2 = matches!(service_protocol(&index, &c.service), Some(Protocol::Grpc))
            || index.protocols(&c.service).contains(&"http2");
        set.insert(CLUSTER, &name, &eds_cluster(&name, p, http2));
        let endpoints = index.endpoints(&c.service, &c.subset);
        set.insert(
            ENDPOINT,
            &name,
            &load_assignment(&name, snapshot, &endpoints, p.load_balancing.as_ref()),
        );
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{invariants, NoPolicies};
    use crate::snapshot::{DataplaneEntry, ProxyKind};
    use meridian_core::dataplane::Dataplane;
    use serde_json::json;

    #[test]
    fn inbound_and_outbound_listeners_resolve() {
        let web: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 15001, "servicePort": 8080, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}},
                         {"port": 10002, "tags": {"kuma.io/service": "db"}}]}}))
        .unwrap();
        let backend: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.2",
            "inbound": [{"port": 15001, "servicePort": 9090, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "grpc"}}]}}))
        .unwrap();
        let db: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.3",
            "inbound": [{"port": 5432, "tags": {"kuma.io/service": "db"}}]}}))
        .unwrap();
        let snap = MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            dataplanes: vec![
                DataplaneEntry {
                    name: "web".into(),
                    spec: web.clone(),
                },
                DataplaneEntry {
                    name: "backend".into(),
                    spec: backend,
                },
                DataplaneEntry {
                    name: "db".into(),
                    spec: db,
                },
            ],
            ..Default::default()
        };
        let proxy = ProxyContext {
            mesh: "default".into(),
            name: "web".into(),
            kind: ProxyKind::Sidecar,
            dataplane: web,
        };
        let set = generate(&snap, &proxy, &NoPolicies);
        assert_eq!(invariants::check(&set), Vec::<String>::new());
        let listeners: Vec<_> = set.of_type(LISTENER).map(|r| r.name.as_str()).collect();
        assert_eq!(
            listeners,
            [
                "inbound:10.0.0.1:15001",
                "outbound:127.0.0.1:10001",
                "outbound:127.0.0.1:10002"
            ]
        );
        let clusters: Vec<_> = set.of_type(CLUSTER).map(|r| r.name.as_str()).collect();
        assert_eq!(clusters, ["backend", "db", "localhost:8080"]);
        assert!(set.get(ROUTE, "backend").is_some(), "grpc service gets routes");
        assert!(set.get(ROUTE, "db").is_none(), "tcp service gets a tcp proxy");
    }
}
