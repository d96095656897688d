//! Structural checks every generated configuration must pass: resources
//! decode as their type, names are unique and match, every route
//! configuration a listener names exists, every cluster a route sends to
//! exists (from routes and TCP proxies alike), every EDS cluster has its
//! load assignment, ports are valid, no two bound listeners share an
//! address and port, no two filter chains of a listener share a match, and
//! every SDS secret a TLS context names is in the set, every access logger
//! and tracer sends to a cluster of the set that reaches one `host:port`
//! and file loggers write to absolute paths. [`check_cross_zone`]
//! holds a client's clusters against another zone's ingress: whatever goes
//! through the ingress carries a server name one of its chains matches.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action::ClusterSpecifier, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use prost::Message;

use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
};

use crate::resources::{ResourceSet, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

const UPSTREAM_TLS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_TLS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// The SDS secrets a TLS context names.
fn sds_names(common: &CommonTlsContext) -> Vec<String> {
    let mut out: Vec<String> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|c| c.name.clone())
        .collect();
    match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(c)) => out.push(c.name.clone()),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            out.extend(c.validation_context_sds_secret_config.iter().map(|c| c.name.clone()))
        }
        _ => {}
    }
    out
}

/// The upstream TLS context of a cluster's transport socket, if any.
fn upstream_tls(socket: Option<&TransportSocket>, errors: &mut Vec<String>, what: &str) -> Option<UpstreamTlsContext> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = socket?.config_type.as_ref() else {
        return None;
    };
    if any.type_url != UPSTREAM_TLS {
        errors.push(format!("{what}: transport socket of type {}", any.type_url));
        return None;
    }
    match UpstreamTlsContext::decode(any.value.as_slice()) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(format!("{what}: upstream TLS context does not decode: {e}"));
            None
        }
    }
}

/// The downstream TLS context of a filter chain's transport socket, if any.
fn downstream_tls(
    socket: Option<&TransportSocket>,
    errors: &mut Vec<String>,
    what: &str,
) -> Option<DownstreamTlsContext> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = socket?.config_type.as_ref() else {
        return None;
    };
    if any.type_url != DOWNSTREAM_TLS {
        errors.push(format!("{what}: transport socket of type {}", any.type_url));
        return None;
    }
    match DownstreamTlsContext::decode(any.value.as_slice()) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(format!("{what}: downstream TLS context does not decode: {e}"));
            None
        }
    }
}

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// The clusters the TCP proxies of a listener send to.
fn tcp_proxy_targets(listener: &Listener) -> Vec<String> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy::ClusterSpecifier, TcpProxy};
    let mut out = Vec::new();
    for chain in listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
    {
        for f in &chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url != TCP_PROXY {
                continue;
            }
            match TcpProxy::decode(any.value.as_slice()).map(|t| t.cluster_specifier) {
                Ok(Some(ClusterSpecifier::Cluster(c))) => out.push(c),
                Ok(Some(ClusterSpecifier::WeightedClusters(w))) => out.extend(w.clusters.into_iter().map(|c| c.name)),
                Ok(None) | Err(_) => out.push(String::new()),
            }
        }
    }
    out
}

/// Where a listener binds, if it binds a socket.
fn bound_socket(listener: &Listener) -> Option<(String, u32)> {
    use envoy_types::pb::envoy::config::core::v3::{address::Address, socket_address::PortSpecifier};
    if listener.bind_to_port.as_ref().is_some_and(|b| !b.value) {
        return None;
    }
    match listener.address.as_ref()?.address.as_ref()? {
        Address::SocketAddress(s) => match s.port_specifier {
            Some(PortSpecifier::PortValue(p)) => Some((s.address.clone(), p)),
            _ => None,
        },
        _ => None,
    }
}

fn decode<M: Message + Default>(set: &ResourceSet, type_url: &str, errors: &mut Vec<String>) -> Vec<(String, M)> {
    set.of_type(type_url)
        .filter_map(|r| {
            if r.body.type_url != type_url {
                errors.push(format!("{} has type {} in a {type_url} slot", r.name, r.body.type_url));
                return None;
            }
            match M::decode(r.body.value.as_slice()) {
                Ok(m) => Some((r.name.clone(), m)),
                Err(e) => {
                    errors.push(format!("{type_url} {} does not decode: {e}", r.name));
                    None
                }
            }
        })
        .collect()
}

fn hcm_of(listener: &Listener) -> Vec<HttpConnectionManager> {
    let mut out = Vec::new();
    if let Some(api) = listener.api_listener.as_ref().and_then(|a| a.api_listener.as_ref()) {
        if api.type_url == HCM {
            out.extend(HttpConnectionManager::decode(api.value.as_slice()).ok());
        }
    }
    for chain in &listener.filter_chains {
        for f in &chain.filters {
            if let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
                &f.config_type
            {
                if any.type_url == HCM {
                    out.extend(HttpConnectionManager::decode(any.value.as_slice()).ok());
                }
            }
        }
    }
    out
}

/// The clusters that the access loggers and tracers of an HTTP connection
/// manager or TCP proxy send to, each with what names it; `errors` gets
/// loggers whose file path is not absolute and configurations that do not
/// decode.
fn collector_references(listener: &Listener, errors: &mut Vec<String>) -> Vec<(String, String)> {
    use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::config::trace::v3::{tracing::http, DatadogConfig, OpenTelemetryConfig, ZipkinConfig};
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    let name = &listener.name;
    let mut out = Vec::new();
    let logs = |list: &[AccessLog], out: &mut Vec<(String, String)>, errors: &mut Vec<String>| {
        for log in list {
            let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
                errors.push(format!("listener {name}: access log {} without a config", log.name));
                continue;
            };
            let what = format!("listener {name}: access log {}", log.name);
            match any.type_url.rsplit('/').next().unwrap_or_default() {
                "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
                    match FileAccessLog::decode(any.value.as_slice()) {
                        Ok(f) if f.path.starts_with('/') => {}
                        Ok(f) => errors.push(format!("{what} writes to a relative path {:?}", f.path)),
                        Err(e) => errors.push(format!("{what} does not decode: {e}")),
                    }
                }
                "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig" => {
                    #[allow(deprecated)]
                    let target = OpenTelemetryAccessLogConfig::decode(any.value.as_slice())
                        .ok()
                        .and_then(|c| c.common_config)
                        .and_then(|c| c.grpc_service)
                        .and_then(|g| g.target_specifier);
                    match target {
                        Some(TargetSpecifier::EnvoyGrpc(g)) => out.push((what, g.cluster_name)),
                        _ => errors.push(format!("{what} has no Envoy gRPC cluster")),
                    }
                }
                other => errors.push(format!("{what} has an unknown type {other}")),
            }
        }
    };
    for hcm in hcm_of(listener) {
        logs(&hcm.access_log, &mut out, errors);
        let Some(provider) = hcm.tracing.and_then(|t| t.provider) else {
            continue;
        };
        let what = format!("listener {name}: tracer {}", provider.name);
        let Some(http::ConfigType::TypedConfig(any)) = provider.config_type else {
            errors.push(format!("{what} without a config"));
            continue;
        };
        let cluster = match provider.name.as_str() {
            "envoy.tracers.zipkin" => ZipkinConfig::decode(any.value.as_slice())
                .ok()
                .map(|z| z.collector_cluster),
            "envoy.tracers.datadog" => DatadogConfig::decode(any.value.as_slice())
                .ok()
                .map(|d| d.collector_cluster),
            "envoy.tracers.opentelemetry" => OpenTelemetryConfig::decode(any.value.as_slice())
                .ok()
                .and_then(|o| o.grpc_service?.target_specifier)
                .and_then(|t| match t {
                    TargetSpecifier::EnvoyGrpc(g) => Some(g.cluster_name),
                    TargetSpecifier::GoogleGrpc(_) => None,
                }),
            _ => None,
        };
        match cluster {
            Some(c) => out.push((what, c)),
            None => errors.push(format!("{what} names no collector cluster")),
        }
    }
    for chain in &listener.filter_chains {
        for f in &chain.filters {
            if let Some(ConfigType::TypedConfig(any)) = &f.config_type {
                if any.type_url == TCP_PROXY {
                    if let Ok(t) = TcpProxy::decode(any.value.as_slice()) {
                        logs(&t.access_log, &mut out, errors);
                    }
                }
            }
        }
    }
    out
}

/// The one `host:port` a collector's cluster reaches, if it has exactly one.
pub fn single_endpoint(cluster: &Cluster) -> Option<(String, u32)> {
    use envoy_types::pb::envoy::config::core::v3::{address::Address, socket_address::PortSpecifier};
    let cla = cluster.load_assignment.as_ref()?;
    let [locality] = cla.endpoints.as_slice() else {
        return None;
    };
    let [endpoint] = locality.lb_endpoints.as_slice() else {
        return None;
    };
    let Some(HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else {
        return None;
    };
    match e.address.as_ref()?.address.as_ref()? {
        Address::SocketAddress(s) => match s.port_specifier {
            Some(PortSpecifier::PortValue(p)) => Some((s.address.clone(), p)),
            _ => None,
        },
        _ => None,
    }
}

/// All violations of the invariants in `set` (empty when it is sound).
pub fn check(set: &ResourceSet) -> Vec<String> {
    let mut errors = Vec::new();
    let listeners: Vec<(String, Listener)> = decode(set, LISTENER, &mut errors);
    let routes: Vec<(String, RouteConfiguration)> = decode(set, ROUTE, &mut errors);
    let clusters: Vec<(String, Cluster)> = decode(set, CLUSTER, &mut errors);
    let assignments: Vec<(String, ClusterLoadAssignment)> = decode(set, ENDPOINT, &mut errors);
    let route_names: BTreeSet<&str> = routes.iter().map(|(n, _)| n.as_str()).collect();
    let cluster_names: BTreeSet<&str> = clusters.iter().map(|(n, _)| n.as_str()).collect();
    let cla_names: BTreeSet<&str> = assignments.iter().map(|(n, _)| n.as_str()).collect();
    let secrets: Vec<(
        String,
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
    )> = decode(set, SECRET, &mut errors);
    let secret_names: BTreeSet<&str> = secrets.iter().map(|(n, _)| n.as_str()).collect();
    for (name, s) in &secrets {
        if &s.name != name {
            errors.push(format!("secret {name} carries the name {}", s.name));
        }
    }
    let check_sds = |what: &str, common: Option<&CommonTlsContext>, errors: &mut Vec<String>| {
        for sds in common.map(sds_names).unwrap_or_default() {
            if !secret_names.contains(sds.as_str()) {
                errors.push(format!("{what} names missing SDS secret {sds}"));
            }
        }
    };
    let mut sockets: std::collections::BTreeMap<(String, u32), &str> = std::collections::BTreeMap::new();
    for (name, l) in &listeners {
        if &l.name != name {
            errors.push(format!("listener {name} carries the name {}", l.name));
        }
        if let Some(socket) = bound_socket(l) {
            if !(1..=65535).contains(&socket.1) {
                errors.push(format!("listener {name} binds invalid port {}", socket.1));
            }
            if let Some(other) = sockets.insert(socket.clone(), name) {
                errors.push(format!(
                    "listeners {other} and {name} both bind {}:{}",
                    socket.0, socket.1
                ));
            }
        }
        let mut matches = BTreeSet::new();
        for chain in &l.filter_chains {
            let what = format!("listener {name}");
            if let Some(tls) = downstream_tls(chain.transport_socket.as_ref(), &mut errors, &what) {
                check_sds(&what, tls.common_tls_context.as_ref(), &mut errors);
            }
            let key = chain
                .filter_chain_match
                .as_ref()
                .map(Message::encode_to_vec)
                .unwrap_or_default();
            if !matches.insert(key) {
                errors.push(format!("listener {name} has two filter chains with the same match"));
            }
        }
        for target in tcp_proxy_targets(l) {
            if !cluster_names.contains(target.as_str()) {
                errors.push(format!("listener {name} proxies TCP to missing cluster {target:?}"));
            }
        }
        for (what, cluster) in collector_references(l, &mut errors) {
            match clusters.iter().find(|(n, _)| *n == cluster) {
                None => errors.push(format!("{what} sends to missing cluster {cluster:?}")),
                Some((_, c)) if single_endpoint(c).is_none() => errors.push(format!(
                    "{what}: cluster {cluster} does not reach exactly one host:port"
                )),
                Some(_) => {}
            }
        }
        for hcm in hcm_of(l) {
            match &hcm.route_specifier {
                Some(RouteSpecifier::Rds(rds)) if !route_names.contains(rds.route_config_name.as_str()) => errors.push(
                    format!("listener {name} names missing routes {}", rds.route_config_name),
                ),
                None => errors.push(format!("listener {name} has an HCM without routes")),
                _ => {}
            }
            match hcm.http_filters.last() {
                Some(f) if f.name == "envoy.filters.http.router" => {}
                _ => errors.push(format!("listener {name}: the router filter is not last")),
            }
        }
    }
    for (name, rc) in &routes {
        if &rc.name != name {
            errors.push(format!("route configuration {name} carries the name {}", rc.name));
        }
        for vh in &rc.virtual_hosts {
            for r in &vh.routes {
                let Some(Action::Route(action)) = &r.action else {
                    continue;
                };
                let targets: Vec<&str> = match &action.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => vec![c.as_str()],
                    Some(ClusterSpecifier::WeightedClusters(w)) => w.clusters.iter().map(|c| c.name.as_str()).collect(),
                    _ => vec![],
                };
                for t in targets {
                    if !cluster_names.contains(t) {
                        errors.push(format!("route {name} sends to missing cluster {t}"));
                    }
                }
            }
        }
    }
    for (name, c) in &clusters {
        if &c.name != name {
            errors.push(format!("cluster {name} carries the name {}", c.name));
        }
        let what = format!("cluster {name}");
        if let Some(tls) = upstream_tls(c.transport_socket.as_ref(), &mut errors, &what) {
            check_sds(&what, tls.common_tls_context.as_ref(), &mut errors);
        }
        if let Some(eds) = &c.eds_cluster_config {
            let service = if eds.service_name.is_empty() {
                name.as_str()
            } else {
                eds.service_name.as_str()
            };
            if !cla_names.contains(service) {
                errors.push(format!("EDS cluster {name} has no load assignment {service}"));
            }
        }
    }
    for (name, cla) in &assignments {
        let mut priorities: Vec<u32> = cla.endpoints.iter().map(|l| l.priority).collect();
        priorities.sort();
        priorities.dedup();
        if priorities.iter().enumerate().any(|(i, p)| *p != i as u32) {
            errors.push(format!(
                "load assignment {name} has non-contiguous priorities {priorities:?}"
            ));
        }
        for l in &cla.endpoints {
            for e in &l.lb_endpoints {
                if let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier {
                    let port = ep
                        .address
                        .as_ref()
                        .and_then(|a| a.address.as_ref())
                        .and_then(|a| match a {
                            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => {
                                s.port_specifier.as_ref()
                            }
                            _ => None,
                        });
                    match port {
                        Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p))
                            if (1..=65535).contains(p) => {}
                        _ => errors.push(format!("load assignment {name} has an endpoint without a valid port")),
                    }
                }
            }
        }
    }
    errors
}

/// Holds `client` (a proxy's set in one zone) against `ingress` (another
/// zone's ingress proxy, reached at `ingress_address`:`ingress_port`): every
/// cluster with an endpoint there originates TLS whose server name one of
/// the ingress's filter chains matches. Anything else could not cross.
pub fn check_cross_zone(
    client: &ResourceSet,
    ingress: &ResourceSet,
    ingress_address: &str,
    ingress_port: u32,
) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::{address::Address, socket_address::PortSpecifier};
    let mut errors = Vec::new();
    let server_names: BTreeSet<String> = decode::<Listener>(ingress, LISTENER, &mut errors)
        .into_iter()
        .flat_map(|(_, l)| l.filter_chains)
        .filter_map(|c| c.filter_chain_match)
        .flat_map(|m| m.server_names)
        .collect();
    let clusters: std::collections::BTreeMap<String, Cluster> =
        decode::<Cluster>(client, CLUSTER, &mut errors).into_iter().collect();
    for (name, cla) in decode::<ClusterLoadAssignment>(client, ENDPOINT, &mut errors) {
        let through_ingress = cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).any(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                return false;
            };
            matches!(
                ep.address.as_ref().and_then(|a| a.address.as_ref()),
                Some(Address::SocketAddress(s)) if s.address == ingress_address
                    && s.port_specifier == Some(PortSpecifier::PortValue(ingress_port))
            )
        });
        if !through_ingress {
            continue;
        }
        let Some(cluster) = clusters.get(&name) else {
            errors.push(format!("load assignment {name} has no cluster"));
            continue;
        };
        match upstream_tls(
            cluster.transport_socket.as_ref(),
            &mut errors,
            &format!("cluster {name}"),
        ) {
            None => errors.push(format!(
                "cluster {name} reaches the ingress without TLS: the ingress cannot route it"
            )),
            Some(tls) if !server_names.contains(&tls.sni) => errors.push(format!(
                "cluster {name} sends server name {:?}, which no filter chain of the ingress matches",
                tls.sni
            )),
            Some(_) => {}
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier, Address, SocketAddress};
    use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Filter, FilterChain, FilterChainMatch};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};

    use super::*;
    use crate::generate::any;

    fn tcp_listener(name: &str, port: u32, clusters: &[&str]) -> Listener {
        Listener {
            name: name.into(),
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "127.0.0.1".into(),
                    port_specifier: Some(PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            filter_chains: clusters
                .iter()
                .map(|c| FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: vec![format!("{c}.example")],
                        ..Default::default()
                    }),
                    filters: vec![Filter {
                        name: "envoy.filters.network.tcp_proxy".into(),
                        config_type: Some(ConfigType::TypedConfig(any(&TcpProxy {
                            stat_prefix: c.to_string(),
                            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(c.to_string())),
                            ..Default::default()
                        }))),
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn tcp_proxy_targets_sockets_and_chain_matches_are_checked() {
        let mut set = ResourceSet::new();
        set.insert(
            CLUSTER,
            "a",
            &Cluster {
                name: "a".into(),
                ..Default::default()
            },
        );
        set.insert(LISTENER, "one", &tcp_listener("one", 10001, &["a"]));
        assert_eq!(check(&set), Vec::<String>::new());

        set.insert(LISTENER, "two", &tcp_listener("two", 10001, &["a", "missing", "a"]));
        let errors = check(&set);
        assert!(
            errors.iter().any(|e| e.contains("both bind 127.0.0.1:10001")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("missing cluster \"missing\"")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("same match")), "{errors:?}");
    }
}
