//! Envoy sidecars: an inbound listener per `inbound` forwarding to the
//! application, an outbound listener per `outbound` towards a service, the
//! clusters and load assignments behind them.
//!
//! HTTP-family services (`kuma.io/protocol` http, http2 or grpc on the
//! destination's inbounds) get an HttpConnectionManager with routes over
//! ADS; everything else a TCP proxy — as is an HTTP service that a
//! MeshTCPRoute covers and no MeshHTTPRoute rule does (the HTTP route wins
//! where both apply; a TCP route splits by weight over its backends, see
//! [`super::routes::tcp_route_proxy`]). Names: `inbound:<address>:<port>`,
//! `outbound:<address>:<port>`, local application clusters
//! `localhost:<port>`, service clusters by service (and subset).
//!
//! # Inbound policies (`from` rules, every client alike)
//!
//! - MeshTimeout: `connectionTimeout` is the connect timeout to the
//!   application (10s without one); `idleTimeout` the HCM's
//!   `common_http_protocol_options.idle_timeout` or the TCP proxy's
//!   `idle_timeout`; `http.requestTimeout` the inbound route's timeout;
//!   `http.streamIdleTimeout`, `http.requestHeadersTimeout` the HCM's;
//!   `http.maxStreamDuration`, `http.maxConnectionDuration` the HCM's common
//!   HTTP protocol options. A mesh's default MeshTimeout sets several.
//! - MeshRateLimit `local`: an HTTP inbound gets
//!   `envoy.filters.http.local_ratelimit` first in its HCM (a token bucket of
//!   `requestRate.num` tokens refilled every `interval`, enabled and enforced
//!   for all requests, `onRateLimit` status and `set`/`add` headers; a status
//!   Envoy does not name means its default 429, headers beyond Envoy's 10 are
//!   dropped); a TCP inbound gets `envoy.filters.network.local_ratelimit`
//!   before its TCP proxy (`connectionRate`). `disabled: true` removes it.
//!   The `tcp` part does not apply to HTTP inbounds.
//! - MeshFaultInjection: the fault filter, after the rate limit.
//! - MeshTrafficPermission (docs/decisions/0004): when some MTP selects the
//!   inbound, an HTTP inbound gets `envoy.filters.http.rbac` first in its HCM
//!   (a refused request is answered 403 and takes no rate-limit token), a
//!   TCP inbound `envoy.filters.network.rbac` first among its network filters
//!   (stat prefix: the listener's name; a refused connection is closed). The
//!   rules are those of xDS-enabled gRPC servers
//!   ([`super::server::rbac_rules`]): callers known by source address
//!   (`direct_remote_ip`, /32 or /128), a caller no rule is about refused.
//!   Without any MTP there is no filter and every caller is served.
//!   `AllowWithShadowDeny` allows; the filter's `shadow_rules` are the same
//!   rules with those entries denying, so Envoy's `shadow_denied` statistic
//!   and `shadow_engine_result` metadata show whom a Deny would refuse (no
//!   shadow rules when that changes nothing). The network filter decides on
//!   the first bytes the caller sends (Envoy's default enforcement): by then
//!   the TCP rate limit has counted the connection and the TCP proxy has
//!   connected to the application, which matters only to applications that
//!   speak first.
//!
//! # Transparent proxying (`networking.transparentProxying`)
//!
//! Supported: per redirected IP family (`ipFamilyMode`: IPv4 when absent,
//! IPv6, or DualStack for both), a virtual listener on
//! `redirectPortOutbound` (`outbound:passthrough:ipv4`, on `0.0.0.0`, or
//! `…:ipv6` on `::`) with `use_original_dst`, whose own filter chain sends
//! what matches no outbound listener to an ORIGINAL_DST cluster of the same
//! name — or to [`BLACKHOLE`] when the Mesh sets
//! `networking.outbound.passthrough: false`; and likewise
//! `inbound:passthrough:<family>` on `redirectPortInbound`, whose
//! ORIGINAL_DST cluster connects from 127.0.0.6 (`::6`) so the redirection
//! rules let it through. Each virtual listener exists only when its port is
//! set. With outbound redirection, outbound listeners do not bind
//! (`bind_to_port: false`) and take connections by original destination;
//! one on a loopback address (the default 127.0.0.1) still binds, since
//! redirection leaves loopback alone. With inbound redirection the inbound
//! listeners do not bind either (the application may hold the port).
//! `reachableServices`, when it lists any, limits the outbounds generated.
//!
//! Not supported: virtual IPs. A service is reachable transparently at the
//! address and port of an `outbound` the Dataplane declares (its stable
//! virtual address, e.g. one the host's DNS gives); nothing allocates
//! addresses or adds outbounds for undeclared services, and
//! `directAccessServices` are not generated. `Mesh.routing.zoneEgress` has no
//! effect: it concerns external services, which Meridian does not model,
//! and passthrough traffic never goes through an egress. Installing the
//! redirection itself (iptables) is the host's business.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter::ConfigType,
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use meridian_core::dataplane::SERVICE_TAG;
use meridian_core::mesh::MtlsMode;

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, BindConfig, HeaderValue, HeaderValueOption, HttpProtocolOptions,
    RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as NetworkLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::{
    fractional_percent::DenominatorType, FractionalPercent, HttpStatus, StatusCode, TokenBucket,
};
use envoy_types::pb::google::protobuf::BoolValue;
use meridian_core::dataplane::{DataplaneNetworking, IpFamilyMode, TransparentProxying};
use meridian_core::policy::{meshratelimit, meshtimeout};
// MeshTrafficPermission on inbounds.
use super::server::{rbac_rules, PermissionRule};
use envoy_types::pb::envoy::config::rbac::v3::Rbac as RbacRules;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use meridian_core::policy::meshtrafficpermission::Action as PermissionAction;

use super::cache::{facts_of, shared_or_built, Facts, Variant};
use super::clusters::{eds_cluster, with_health_check, Upstream};
use super::observability::{
    access_log_collector, access_logs, trace_collector, tracing, Collectors, Direction, Traffic,
};
use super::proxyless::fault_filter;
use super::routes::{backends, route_configuration, tcp_route_proxy, Client, ClusterRef, Protocol};
use super::{ads_source, any, duration, u32_value, OutboundPolicies, PolicyResolver, ProxyPolicies};
use crate::resources::{ResourceSet, XdsResource, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::snapshot::{MeshSnapshot, ProxyContext, ServiceIndex, PROTOCOL_TAG};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

/// The HTTP filter of MeshTrafficPermission on HTTP inbounds.
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
/// The network filter of MeshTrafficPermission on TCP inbounds.
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// The HTTP filter of MeshRateLimit on inbounds.
pub const HTTP_LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
/// The network filter of MeshRateLimit on TCP inbounds.
pub const NETWORK_LOCAL_RATE_LIMIT: &str = "envoy.filters.network.local_ratelimit";
/// The cluster outbound traffic to no known destination goes to when the
/// mesh forbids passthrough: it has no endpoints.
pub const BLACKHOLE: &str = "outbound:blackhole";
/// Envoy's limit on `response_headers_to_add` of the HTTP local rate limit.
const MAX_RATE_LIMIT_HEADERS: usize = 10;
/// The connect timeout to the application when no MeshTimeout sets one.
const DEFAULT_INBOUND_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

/// A route configuration `name` of one virtual host (any domain) with one
/// route: what a listener's own inline routes are.
pub(crate) fn single_route(name: &str, path: PathSpecifier, action: RouteAction) -> RouteConfiguration {
    single_route_with(name, path, Action::Route(action))
}

/// [`single_route`] with any route action (a direct response, say).
pub(crate) fn single_route_with(name: &str, path: PathSpecifier, action: Action) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(path),
                    ..Default::default()
                }),
                action: Some(action),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A static cluster of one endpoint: the application behind an inbound, a
/// collector, the proxy's own admin interface.
pub(crate) fn local_cluster(name: &str, address: &str, port: u32, connect: std::time::Duration) -> Cluster {
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

/// The fraction of requests the HTTP local rate limit covers and enforces:
/// all of them (Envoy's default is none).
fn all_requests(runtime_key: &str) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: runtime_key.to_string(),
    }
}

fn token_bucket(rate: &meshratelimit::Rate) -> Option<TokenBucket> {
    if rate.num == 0 || rate.interval.is_zero() {
        return None;
    }
    Some(TokenBucket {
        max_tokens: rate.num,
        tokens_per_fill: Some(u32_value(rate.num)),
        fill_interval: Some(duration(rate.interval.as_std())),
    })
}

/// The HTTP local rate limit filter of an inbound, when MeshRateLimit sets
/// a request rate that is not disabled.
fn http_rate_limit(stat_prefix: &str, conf: Option<&meshratelimit::Conf>) -> Option<HttpFilter> {
    let http = conf?.local.as_ref()?.http.as_ref()?;
    if http.disabled == Some(true) {
        return None;
    }
    let bucket = token_bucket(http.request_rate.as_ref()?)?;
    let on = http.on_rate_limit.as_ref();
    let status = on.and_then(|o| o.status).and_then(|s| match StatusCode::try_from(s) {
        Ok(code) if code != StatusCode::Empty => Some(HttpStatus { code: code as i32 }),
        _ => {
            // Envoy only takes the status codes it names; it answers 429 otherwise.
            tracing::warn!(status = s, "MeshRateLimit status unknown to Envoy, answering 429");
            None
        }
    });
    let headers = on.and_then(|o| o.headers.as_ref());
    let set = headers
        .and_then(|h| h.set.as_ref())
        .into_iter()
        .flatten()
        .map(|h| (h, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = headers
        .and_then(|h| h.add.as_ref())
        .into_iter()
        .flatten()
        .map(|h| (h, HeaderAppendAction::AppendIfExistsOrAdd));
    let mut response_headers: Vec<HeaderValueOption> = set
        .chain(add)
        .map(|(h, action)| HeaderValueOption {
            header: Some(HeaderValue {
                key: h.name.clone(),
                value: h.value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        })
        .collect();
    if response_headers.len() > MAX_RATE_LIMIT_HEADERS {
        tracing::warn!(
            headers = response_headers.len(),
            "MeshRateLimit onRateLimit headers beyond Envoy's {MAX_RATE_LIMIT_HEADERS} are dropped"
        );
        response_headers.truncate(MAX_RATE_LIMIT_HEADERS);
    }
    let filter = HttpLocalRateLimit {
        stat_prefix: stat_prefix.to_string(),
        status,
        token_bucket: Some(bucket),
        filter_enabled: Some(all_requests("local_rate_limit_enabled")),
        filter_enforced: Some(all_requests("local_rate_limit_enforced")),
        response_headers_to_add: response_headers,
        ..Default::default()
    };
    Some(HttpFilter {
        name: HTTP_LOCAL_RATE_LIMIT.into(),
        config_type: Some(ConfigType::TypedConfig(any(&filter))),
        ..Default::default()
    })
}

/// The network local rate limit filter of a TCP inbound, when MeshRateLimit
/// sets a connection rate that is not disabled.
fn tcp_rate_limit(stat_prefix: &str, conf: Option<&meshratelimit::Conf>) -> Option<Filter> {
    let tcp = conf?.local.as_ref()?.tcp.as_ref()?;
    if tcp.disabled == Some(true) {
        return None;
    }
    let filter = NetworkLocalRateLimit {
        stat_prefix: stat_prefix.to_string(),
        token_bucket: Some(token_bucket(tcp.connection_rate.as_ref()?)?),
        ..Default::default()
    };
    Some(network_filter(NETWORK_LOCAL_RATE_LIMIT, &filter))
}

/// The enforced RBAC rules of an inbound's MeshTrafficPermission `rules`
/// and, when an `AllowWithShadowDeny` rule makes a difference, the shadow
/// rules: the same compilation with those rules denying.
fn permission_rules(rules: &[PermissionRule]) -> (RbacRules, Option<RbacRules>) {
    let enforced = rbac_rules(rules);
    if !rules.iter().any(|r| r.action == PermissionAction::AllowWithShadowDeny) {
        return (enforced, None);
    }
    let denying: Vec<PermissionRule> = rules
        .iter()
        .cloned()
        .map(|mut r| {
            if r.action == PermissionAction::AllowWithShadowDeny {
                r.action = PermissionAction::Deny;
            }
            r
        })
        .collect();
    let shadow = rbac_rules(&denying);
    let shadow = (shadow != enforced).then_some(shadow);
    (enforced, shadow)
}

/// The RBAC HTTP filter of an HTTP inbound, when a MeshTrafficPermission
/// selects it.
fn http_rbac(rules: Option<&[PermissionRule]>) -> Option<HttpFilter> {
    let (rules, shadow_rules) = permission_rules(rules?);
    let filter = HttpRbac {
        rules: Some(rules),
        shadow_rules,
        ..Default::default()
    };
    Some(HttpFilter {
        name: HTTP_RBAC.into(),
        config_type: Some(ConfigType::TypedConfig(any(&filter))),
        ..Default::default()
    })
}

/// The RBAC network filter of a TCP inbound, when a MeshTrafficPermission
/// selects it.
fn network_rbac(stat_prefix: &str, rules: Option<&[PermissionRule]>) -> Option<Filter> {
    let (rules, shadow_rules) = permission_rules(rules?);
    let filter = NetworkRbac {
        rules: Some(rules),
        shadow_rules,
        stat_prefix: stat_prefix.to_string(),
        ..Default::default()
    };
    Some(network_filter(NETWORK_RBAC, &filter))
}

/// Connection-level HTTP timeouts of an inbound's HttpConnectionManager.
fn inbound_http_options(t: &meshtimeout::Conf) -> Option<HttpProtocolOptions> {
    let http = t.http.as_ref();
    let options = HttpProtocolOptions {
        idle_timeout: t.idle_timeout.as_ref().map(|d| duration(d.as_std())),
        max_stream_duration: http
            .and_then(|h| h.max_stream_duration.as_ref())
            .map(|d| duration(d.as_std())),
        max_connection_duration: http
            .and_then(|h| h.max_connection_duration.as_ref())
            .map(|d| duration(d.as_std())),
        ..Default::default()
    };
    (options != HttpProtocolOptions::default()).then_some(options)
}

/// The listener of inbound `index` and the static cluster of the
/// application behind it, with the inbound's policies (`from` rules):
/// MeshTrafficPermission, MeshTimeout, MeshFaultInjection, MeshRateLimit.
fn inbound_resources(
    set: &mut ResourceSet,
    snapshot: &MeshSnapshot,
    proxy: &ProxyContext,
    policies: &dyn PolicyResolver,
    index: usize,
    whole: &ProxyPolicies,
    collectors: &mut Collectors,
) {
    let net = &proxy.dataplane.networking;
    let Some(inbound) = net.inbound.get(index) else {
        return;
    };
    let address = inbound.address.clone().unwrap_or_else(|| net.address.clone());
    let name = format!("inbound:{address}:{}", inbound.port);
    let app_port = inbound.service_port.unwrap_or(inbound.port);
    let app_address = inbound
        .service_address
        .clone()
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let cluster = format!("localhost:{app_port}");
    let p = policies.inbound(snapshot, proxy, index);
    let service = inbound.tags.get(SERVICE_TAG).map_or("unknown", String::as_str);
    let traffic = Traffic {
        mesh: &proxy.mesh,
        direction: Direction::Inbound,
        source_service: None,
        destination_service: service,
        address: net.advertised_address.as_deref().unwrap_or(&net.address),
        proxy_name: &proxy.name,
    };
    let t = p.timeout.as_ref();
    let connect = t
        .and_then(|t| t.connection_timeout.as_ref())
        .map(|d| d.as_std())
        .unwrap_or(DEFAULT_INBOUND_CONNECT_TIMEOUT);
    set.insert(
        CLUSTER,
        &cluster,
        &local_cluster(&cluster, &app_address, app_port, connect),
    );
    let http_timeouts = t.and_then(|t| t.http.as_ref());
    let http = matches!(
        inbound.tags.get(PROTOCOL_TAG).map(String::as_str),
        Some("http" | "http2" | "grpc")
    );
    let mut filters = Vec::new();
    if http {
        let request_timeout = http_timeouts
            .and_then(|h| h.request_timeout.as_ref())
            .map(|d| duration(d.as_std()));
        let routes = single_route(
            &name,
            PathSpecifier::Prefix("/".into()),
            RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
                timeout: request_timeout,
                ..Default::default()
            },
        );
        // A caller MeshTrafficPermission refuses takes no rate-limit token;
        // a limited request is refused before faults delay or abort it.
        let mut http_filters: Vec<HttpFilter> = http_rbac(p.traffic_permissions.as_deref()).into_iter().collect();
        http_filters.extend(http_rate_limit(&name, p.rate_limit.as_ref()));
        if let Some(f) = fault_filter(&p.faults) {
            http_filters.push(HttpFilter {
                name: "envoy.filters.http.fault".into(),
                config_type: Some(ConfigType::TypedConfig(any(&f))),
                ..Default::default()
            });
        }
        http_filters.push(router());
        let hcm = HttpConnectionManager {
            stat_prefix: name.clone(),
            codec_type: CodecType::Auto as i32,
            route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
            http_filters,
            common_http_protocol_options: t.and_then(inbound_http_options),
            stream_idle_timeout: http_timeouts
                .and_then(|h| h.stream_idle_timeout.as_ref())
                .map(|d| duration(d.as_std())),
            request_headers_timeout: http_timeouts
                .and_then(|h| h.request_headers_timeout.as_ref())
                .map(|d| duration(d.as_std())),
            access_log: access_logs(&p.access_logs, &traffic, true, collectors),
            tracing: whole
                .trace
                .as_ref()
                .and_then(|c| tracing(c, service, Direction::Inbound, service, collectors)),
            ..Default::default()
        };
        filters.push(network_filter("envoy.filters.network.http_connection_manager", &hcm));
    } else {
        filters.extend(network_rbac(&name, p.traffic_permissions.as_deref()));
        filters.extend(tcp_rate_limit(&name, p.rate_limit.as_ref()));
        let idle = t.and_then(|t| t.idle_timeout.as_ref()).map(|d| d.as_std());
        let mut proxy_filter = tcp_proxy(&name, &cluster, idle);
        proxy_filter.access_log = access_logs(&p.access_logs, &traffic, false, collectors);
        filters.push(network_filter("envoy.filters.network.tcp_proxy", &proxy_filter));
    }
    // Redirected inbound traffic reaches the listener through the inbound
    // virtual listener; the application may hold the port itself.
    let redirected = net
        .transparent_proxying
        .as_ref()
        .is_some_and(|tp| tp.redirect_port_inbound.is_some());
    let (filter_chains, listener_filters) = inbound_chains(snapshot, filters);
    let listener = Listener {
        name: name.clone(),
        address: Some(socket(&address, inbound.port)),
        stat_prefix: name.clone(),
        filter_chains,
        listener_filters,
        bind_to_port: redirected.then_some(BoolValue { value: false }),
        traffic_direction: traced_direction(whole, http, TrafficDirection::Inbound),
        ..Default::default()
    };
    set.insert(LISTENER, &name, &listener);
}

/// A listener's direction, set when its connection manager traces (Envoy
/// names its spans' kind after it); unset otherwise, as before tracing.
fn traced_direction(whole: &ProxyPolicies, http: bool, direction: TrafficDirection) -> i32 {
    if http && whole.trace.is_some() {
        direction as i32
    } else {
        TrafficDirection::Unspecified as i32
    }
}

/// The filter chains of an inbound listener running `filters`, and its
/// listener filters: without mesh mTLS one plaintext chain; STRICT one TLS
/// chain; PERMISSIVE a TLS inspector choosing between a TLS chain and a
/// plaintext one (see [`super::tls`]).
fn inbound_chains(snapshot: &MeshSnapshot, filters: Vec<Filter>) -> (Vec<FilterChain>, Vec<ListenerFilter>) {
    let Some(mtls) = &snapshot.mtls else {
        return (
            vec![FilterChain {
                filters,
                ..Default::default()
            }],
            Vec::new(),
        );
    };
    let tls = Some(super::tls::transport_socket(&super::tls::sidecar_downstream(
        &snapshot.mesh,
    )));
    match mtls.mode {
        MtlsMode::Strict => (
            vec![FilterChain {
                filters,
                transport_socket: tls,
                ..Default::default()
            }],
            Vec::new(),
        ),
        MtlsMode::Permissive => {
            let matching = |protocol: &str| {
                Some(FilterChainMatch {
                    transport_protocol: protocol.to_string(),
                    ..Default::default()
                })
            };
            (
                vec![
                    FilterChain {
                        filter_chain_match: matching("tls"),
                        filters: filters.clone(),
                        transport_socket: tls,
                        ..Default::default()
                    },
                    FilterChain {
                        filter_chain_match: matching("raw_buffer"),
                        filters,
                        ..Default::default()
                    },
                ],
                vec![ListenerFilter {
                    name: "envoy.filters.listener.tls_inspector".into(),
                    config_type: Some(listener_filter::ConfigType::TypedConfig(any(&TlsInspector::default()))),
                    ..Default::default()
                }],
            )
        }
    }
}

/// An IP family a transparent proxy redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// The wildcard address a virtual listener binds.
    fn any_address(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0",
            Family::V6 => "::",
        }
    }

    /// The source address of inbound passthrough connections, which the
    /// redirection rules leave alone so that they do not loop back.
    fn inbound_passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6",
            Family::V6 => "::6",
        }
    }
}

fn families(tp: &TransparentProxying) -> &'static [Family] {
    match tp.ip_family_mode {
        None | Some(IpFamilyMode::Ipv4) => &[Family::V4],
        Some(IpFamilyMode::Ipv6) => &[Family::V6],
        Some(IpFamilyMode::DualStack) => &[Family::V4, Family::V6],
    }
}

/// Whether the dataplane gets an outbound to `service`: `reachableServices`,
/// when it lists any, names every service the proxy may reach.
pub fn reachable(net: &DataplaneNetworking, service: &str) -> bool {
    match &net.transparent_proxying {
        Some(tp) if !tp.reachable_services.is_empty() => tp.reachable_services.iter().any(|s| s == service),
        _ => true,
    }
}

/// `bind_to_port` of an outbound listener at `address`: with outbound
/// traffic redirected, the listener does not bind and takes the connections
/// whose original destination it is; a loopback address still binds, since
/// the redirection leaves loopback traffic alone.
pub fn outbound_bind_to_port(net: &DataplaneNetworking, address: &str) -> Option<BoolValue> {
    let redirected = net
        .transparent_proxying
        .as_ref()
        .is_some_and(|tp| tp.redirect_port_outbound.is_some());
    let loopback = address == "localhost" || address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (redirected && !loopback).then_some(BoolValue { value: false })
}

/// A cluster that connects to each connection's original destination.
fn original_dst_cluster(name: &str, source: Option<&str>) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        upstream_bind_config: source.map(|s| BindConfig {
            source_address: Some(SocketAddress {
                address: s.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A static cluster without endpoints: connections sent to it are closed.
fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: BLACKHOLE.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A listener on the redirect port that hands each connection to the
/// listener of its original destination, and sends what no listener takes
/// to `cluster`.
fn virtual_listener(name: &str, family: Family, port: u32, cluster: &str) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket(family.any_address(), port)),
        stat_prefix: name.to_string(),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(
                "envoy.filters.network.tcp_proxy",
                &tcp_proxy(name, cluster, None),
            )],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The virtual listeners of a transparent proxy and the clusters behind
/// them, per redirected IP family: `outbound:passthrough:<family>` on
/// `redirectPortOutbound` (to the original destination when the mesh allows
/// passthrough, else to [`BLACKHOLE`]) and `inbound:passthrough:<family>` on
/// `redirectPortInbound` (to the original destination, from a source
/// address the redirection ignores).
fn transparent_proxy(set: &mut ResourceSet, snapshot: &MeshSnapshot, net: &DataplaneNetworking) {
    let Some(tp) = &net.transparent_proxying else {
        return;
    };
    let passthrough = snapshot
        .spec
        .networking
        .as_ref()
        .and_then(|n| n.outbound.as_ref())
        .and_then(|o| o.passthrough)
        .unwrap_or(true);
    for &family in families(tp) {
        if let Some(port) = tp.redirect_port_outbound {
            let name = format!("outbound:passthrough:{}", family.name());
            let cluster = if passthrough {
                set.insert(CLUSTER, &name, &original_dst_cluster(&name, None));
                name.clone()
            } else {
                set.insert(CLUSTER, BLACKHOLE, &blackhole_cluster());
                BLACKHOLE.to_string()
            };
            set.insert(LISTENER, &name, &virtual_listener(&name, family, port, &cluster));
        }
        if let Some(port) = tp.redirect_port_inbound {
            let name = format!("inbound:passthrough:{}", family.name());
            let source = family.inbound_passthrough_source();
            set.insert(CLUSTER, &name, &original_dst_cluster(&name, Some(source)));
            set.insert(LISTENER, &name, &virtual_listener(&name, family, port, &name));
        }
    }
}

/// The network filter of an outbound listener: an HTTP connection manager
/// on the service's routes when it speaks `l7`, a TCP proxy (over a
/// MeshTCPRoute's backends, if any) otherwise; and the clusters it sends to
/// directly.
fn outbound_filter(
    name: &str,
    service: &str,
    p: &OutboundPolicies,
    l7: Option<Protocol>,
    observed: &Observed<'_>,
) -> (Filter, Vec<ClusterRef>) {
    let traffic = Traffic {
        mesh: observed.mesh,
        direction: Direction::Outbound,
        source_service: Some(observed.service),
        destination_service: service,
        address: observed.address,
        proxy_name: observed.name,
    };
    // The collectors are gathered once per proxy (see `collectors_of`).
    let mut collectors = Collectors::new();
    if l7.is_some() {
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
            stat_prefix: name.to_string(),
            codec_type: CodecType::Auto as i32,
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ads_source()),
                route_config_name: service.to_string(),
            })),
            http_filters: filters,
            access_log: access_logs(&p.access_logs, &traffic, true, &mut collectors),
            tracing: match &observed.tracing {
                Some(t) => Some(t.clone()),
                None => observed
                    .whole
                    .trace
                    .as_ref()
                    .and_then(|c| tracing(c, observed.service, Direction::Outbound, service, &mut collectors)),
            },
            ..Default::default()
        };
        return (
            network_filter("envoy.filters.network.http_connection_manager", &hcm),
            Vec::new(),
        );
    }
    let targets = p
        .tcp_route
        .as_ref()
        .and_then(|r| backends(Some(&r.backend_refs), service))
        .unwrap_or_else(|| vec![(ClusterRef::service(service), 1)]);
    let idle = p
        .timeout
        .as_ref()
        .and_then(|t| t.idle_timeout.as_ref())
        .map(|d| d.as_std());
    let mut proxy_filter = tcp_route_proxy(name, &targets, idle);
    proxy_filter.access_log = access_logs(&p.access_logs, &traffic, false, &mut collectors);
    let filter = network_filter("envoy.filters.network.tcp_proxy", &proxy_filter);
    (filter, targets.into_iter().map(|(c, _)| c).collect())
}

/// What the observability of a sidecar's outbound listeners depends on
/// besides the destination's policies.
struct Observed<'a> {
    mesh: &'a str,
    /// The dataplane's name.
    name: &'a str,
    /// The proxy's own service ([`identifying_service`]).
    service: &'a str,
    address: &'a str,
    whole: &'a ProxyPolicies,
    /// The tracing of every outbound, when it does not name the
    /// destination (built once per proxy).
    tracing: Option<envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing>,
}

impl Observed<'_> {
    /// What to add to the cache key of an outbound listener towards a
    /// destination with policies `p`: nothing unless it logs or traces, as
    /// then its content depends on this proxy (`suffix`); with a tcp access
    /// log, on the proxy's name too (its pipe: `named`).
    fn key<'k>(&self, p: &OutboundPolicies, suffix: &'k str, named: &'k str) -> &'k str {
        if p.access_logs.is_empty() && self.whole.trace.is_none() {
            return "";
        }
        if p.access_logs.iter().any(|b| b.tcp.is_some()) {
            return named;
        }
        suffix
    }
}

/// The service a proxy's outbound traffic comes from: the first, by name,
/// of its inbounds' services; `unknown` without inbounds.
fn identifying_service(net: &DataplaneNetworking) -> &str {
    net.inbound
        .iter()
        .filter_map(|i| i.tags.get(SERVICE_TAG))
        .min()
        .map_or("unknown", String::as_str)
}

/// The collectors the outbound listeners towards a destination with
/// policies `p` send to (those listeners may come from the cache, built for
/// another proxy: the clusters are this proxy's to add).
fn outbound_collectors(p: &OutboundPolicies, whole: &ProxyPolicies, collectors: &mut Collectors) {
    for c in p.access_logs.iter().filter_map(access_log_collector) {
        collectors.entry(c.name()).or_insert(c);
    }
    let traced = whole.trace.as_ref().and_then(|t| t.backends.as_ref()?.first());
    if let Some(c) = traced.and_then(trace_collector) {
        collectors.entry(c.name()).or_insert(c);
    }
}

/// The configuration of an Envoy sidecar.
pub fn generate(snapshot: &MeshSnapshot, proxy: &ProxyContext, policies: &dyn PolicyResolver) -> ResourceSet {
    generate_reporting(snapshot, proxy, policies).0
}

/// [`generate`], and why the proxy's MeshProxyPatch modifications were not
/// applied, if they were not (the configuration is then the one without
/// them).
pub fn generate_reporting(
    snapshot: &MeshSnapshot,
    proxy: &ProxyContext,
    policies: &dyn PolicyResolver,
) -> (ResourceSet, Option<super::patch::PatchError>) {
    let mut set = ResourceSet::new();
    let net = &proxy.dataplane.networking;
    // The index is built only if something is not in the cache.
    let lazy_index = OnceCell::new();
    let index = || lazy_index.get_or_init(|| ServiceIndex::new(snapshot));
    let cache = policies.cache();
    let facts = facts_of(cache, snapshot, index);

    super::tls::add_sidecar_secrets(&mut set, snapshot, proxy, cache);
    let whole = policies.proxy(snapshot, proxy);
    let mut collectors = Collectors::new();
    for index in 0..net.inbound.len() {
        inbound_resources(&mut set, snapshot, proxy, policies, index, &whole, &mut collectors);
    }
    transparent_proxy(&mut set, snapshot, net);
    let own_service = identifying_service(net);
    // One tracing for every outbound, unless Datadog names the destination.
    let split = whole
        .trace
        .as_ref()
        .and_then(|t| t.backends.as_ref()?.first()?.datadog.as_ref()?.split_service)
        .unwrap_or(false);
    let outbound_tracing = match &whole.trace {
        Some(conf) if !split => tracing(conf, own_service, Direction::Outbound, "", &mut Collectors::new()),
        _ => None,
    };
    let observed = Observed {
        mesh: &proxy.mesh,
        name: &proxy.name,
        service: own_service,
        address: net.advertised_address.as_deref().unwrap_or(&net.address),
        whole: &whole,
        tracing: outbound_tracing,
    };
    // What an outbound listener that logs or traces depends on besides the
    // destination (see `Observed::key`), built once.
    let key_suffix = format!(
        "\n{}\n{}\n{}",
        observed.service,
        observed.address,
        whole
            .trace
            .as_ref()
            .and_then(|t| serde_json::to_string(t).ok())
            .unwrap_or_default()
    );
    let key_suffix_named = format!("{key_suffix}\n{}", proxy.name);
    let mut collected: std::collections::HashSet<*const OutboundPolicies> = std::collections::HashSet::new();

    let mut clusters: BTreeSet<ClusterRef> = BTreeSet::new();
    let mut resolved: HashMap<String, Arc<OutboundPolicies>> = HashMap::new();
    for outbound in &net.outbound {
        let Some(service) = outbound.tags.get(SERVICE_TAG) else {
            continue;
        };
        if !reachable(net, service) {
            continue;
        }
        let address = outbound.address.as_deref().unwrap_or("127.0.0.1");
        let name = format!("outbound:{address}:{}", outbound.port);
        let p = resolved
            .entry(service.clone())
            .or_insert_with(|| policies.outbound_shared(snapshot, proxy, service))
            .clone();
        // MeshTCPRoute: a TCP outbound, or an HTTP one that no MeshHTTPRoute
        // rule covers (the HTTP route wins where both apply), is a TCP proxy
        // over the route's backends.
        let l7 = facts
            .protocol(service)
            .filter(|_| p.tcp_route.is_none() || !p.http_rules.is_empty());
        if let Some(protocol) = l7 {
            let (routes, used) = shared_or_built(cache, ROUTE, service, &p, Variant::Sidecar, || {
                let (routes, used) = route_configuration(service, service, &p, protocol, Client::Sidecar);
                (XdsResource::new(ROUTE, service, &routes), used.into_iter().collect())
            });
            set.insert_shared(ROUTE, routes);
            clusters.extend(used.iter().cloned());
        }
        let bind_to_port = outbound_bind_to_port(net, address);
        // The listener depends on its socket and on the service behind it.
        let key = format!(
            "{name}\n{service}\n{bind_to_port:?}{}",
            observed.key(&p, &key_suffix, &key_suffix_named)
        );
        // Destinations without a policy of their own share one `Arc`: their
        // collectors are added once.
        if collected.insert(Arc::as_ptr(&p)) {
            outbound_collectors(&p, &whole, &mut collectors);
        }
        let (listener, used) = shared_or_built(cache, LISTENER, &key, &p, Variant::Sidecar, || {
            let (filter, used) = outbound_filter(&name, service, &p, l7, &observed);
            let listener = Listener {
                name: name.clone(),
                address: Some(socket(address, outbound.port)),
                stat_prefix: name.clone(),
                filter_chains: vec![FilterChain {
                    filters: vec![filter],
                    ..Default::default()
                }],
                bind_to_port,
                traffic_direction: traced_direction(&whole, l7.is_some(), TrafficDirection::Outbound),
                ..Default::default()
            };
            (XdsResource::new(LISTENER, &name, &listener), used)
        });
        set.insert_shared(LISTENER, listener);
        clusters.extend(used.iter().cloned());
    }
    for c in clusters {
        let name = c.name();
        let p = resolved
            .entry(c.service.clone())
            .or_insert_with(|| policies.outbound_shared(snapshot, proxy, &c.service))
            .clone();
        let (cluster, _) = shared_or_built(cache, CLUSTER, &name, &p, Variant::Sidecar, || {
            let Facts { protocol, http2, .. } = facts.get(&c.service);
            let mut cluster = with_health_check(
                eds_cluster(&name, &p, http2),
                p.health_check.as_ref(),
                Upstream::of(protocol, http2),
            );
            if snapshot.mtls.is_some() {
                let ctx = super::tls::sidecar_upstream(&snapshot.mesh, &c.service, &c.subset);
                cluster.transport_socket = Some(super::tls::transport_socket(&ctx));
            }
            (XdsResource::new(CLUSTER, &name, &cluster), Vec::new())
        });
        set.insert_shared(CLUSTER, cluster);
        let cla = super::endpoints::assignment(cache, snapshot, proxy, &name, &p, || {
            index().endpoints(&c.service, &c.subset)
        });
        set.insert_shared(ENDPOINT, cla);
    }
    for collector in collectors.values() {
        set.insert(CLUSTER, &collector.name(), &collector.cluster());
    }
    if let Some(metric) = &whole.metric {
        let (listeners, clusters) =
            super::observability::metrics(metric, net, &proxy.mesh, &proxy.name, proxy.tls.metrics_files.as_ref());
        for l in &listeners {
            set.insert(LISTENER, &l.name, l);
        }
        for c in &clusters {
            set.insert(CLUSTER, &c.name, c);
        }
    }
    match &whole.patch {
        Some(conf) if !conf.append_modifications.is_empty() => match super::patch::apply(&set, conf, net) {
            Ok(patched) => (patched, None),
            Err(e) => {
                tracing::warn!(mesh = %proxy.mesh, proxy = %proxy.name, error = %e,
                    "MeshProxyPatch not applied: the proxy gets its configuration without it");
                (set, Some(e))
            }
        },
        _ => (set, None),
    }
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
            tls: Default::default(),
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

#[cfg(test)]
mod inbound_and_transparent_proxy_tests {
    use super::*;
    use crate::generate::{invariants, InboundPolicies, NoPolicies, OutboundPolicies};
    use crate::snapshot::{DataplaneEntry, ProxyKind};
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as NetworkConfigType;
    use meridian_core::dataplane::Dataplane;
    use meridian_core::mesh::Mesh;
    use prost::{Message, Name};
    use serde_json::{json, Value};

    /// Gives every inbound the same policies, and outbounds none.
    struct Fixed(InboundPolicies);

    impl PolicyResolver for Fixed {
        fn outbound(&self, _: &MeshSnapshot, _: &ProxyContext, _: &str) -> OutboundPolicies {
            OutboundPolicies::default()
        }

        fn inbound(&self, _: &MeshSnapshot, _: &ProxyContext, _: usize) -> InboundPolicies {
            self.0.clone()
        }
    }

    /// Inbound policies from their JSON (`timeout`, `faults`, `rateLimit`).
    fn policies(v: Value) -> InboundPolicies {
        let mut p = InboundPolicies::default();
        if let Some(t) = v.get("timeout") {
            p.timeout = serde_json::from_value(t.clone()).unwrap();
        }
        if let Some(f) = v.get("faults") {
            p.faults = serde_json::from_value(f.clone()).unwrap();
        }
        if let Some(r) = v.get("rateLimit") {
            p.rate_limit = serde_json::from_value(r.clone()).unwrap();
        }
        p
    }

    /// A sidecar of `dataplane` in a mesh with `mesh` and one backend (http)
    /// and one db (tcp) instance.
    fn generate_for(dataplane: Value, mesh: Value, resolver: &dyn PolicyResolver) -> ResourceSet {
        let me: Dataplane = serde_json::from_value(dataplane).unwrap();
        let backend: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.2",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]}}))
        .unwrap();
        let db: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.3",
            "inbound": [{"port": 5432, "tags": {"kuma.io/service": "db"}}]}}))
        .unwrap();
        let snap = MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            spec: serde_json::from_value::<Mesh>(mesh).unwrap(),
            dataplanes: vec![
                DataplaneEntry {
                    name: "me".into(),
                    spec: me.clone(),
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
            name: "me".into(),
            kind: ProxyKind::Sidecar,
            dataplane: me,
            tls: Default::default(),
        };
        let set = generate(&snap, &proxy, resolver);
        assert_eq!(invariants::check(&set), Vec::<String>::new());
        set
    }

    /// web (http on 15001) and a tcp inbound (on 6379).
    fn two_inbounds() -> Value {
        json!({"networking": {"address": "10.0.0.1", "inbound": [
            {"port": 15001, "servicePort": 8080, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}},
            {"port": 6379, "tags": {"kuma.io/service": "cache"}}]}})
    }

    fn listener(set: &ResourceSet, name: &str) -> Listener {
        let r = set.get(LISTENER, name).unwrap_or_else(|| panic!("no listener {name}"));
        Listener::decode(r.body.value.as_slice()).unwrap()
    }

    fn cluster(set: &ResourceSet, name: &str) -> Cluster {
        let r = set.get(CLUSTER, name).unwrap_or_else(|| panic!("no cluster {name}"));
        Cluster::decode(r.body.value.as_slice()).unwrap()
    }

    fn network_filters(l: &Listener) -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
        l.filter_chains[0]
            .filters
            .iter()
            .map(|f| match &f.config_type {
                Some(NetworkConfigType::TypedConfig(any)) => (f.name.clone(), any.clone()),
                other => panic!("filter {} without typed config: {other:?}", f.name),
            })
            .collect()
    }

    fn hcm(l: &Listener) -> HttpConnectionManager {
        let filters = network_filters(l);
        HttpConnectionManager::decode(filters[0].1.value.as_slice()).unwrap()
    }

    fn http_filter_names(h: &HttpConnectionManager) -> Vec<&str> {
        h.http_filters.iter().map(|f| f.name.as_str()).collect()
    }

    fn http_rate_limit_of(h: &HttpConnectionManager) -> HttpLocalRateLimit {
        let f = h.http_filters.iter().find(|f| f.name == HTTP_LOCAL_RATE_LIMIT).unwrap();
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("no typed config")
        };
        assert_eq!(any.type_url, HttpLocalRateLimit::type_url());
        HttpLocalRateLimit::decode(any.value.as_slice()).unwrap()
    }

    fn secs(s: i64) -> Option<envoy_types::pb::google::protobuf::Duration> {
        Some(envoy_types::pb::google::protobuf::Duration { seconds: s, nanos: 0 })
    }

    #[test]
    fn http_rate_limit_goes_first_and_carries_the_policy() {
        let resolver = Fixed(policies(json!({
            "rateLimit": {"local": {
                "http": {"requestRate": {"num": 5, "interval": "10s"},
                         "onRateLimit": {"status": 423, "headers": {
                             "add": [{"name": "x-limited", "value": "true"}],
                             "set": [{"name": "x-rate", "value": "5"}]}}},
                "tcp": {"connectionRate": {"num": 2, "interval": "1s"}}}},
            "faults": [{"abort": {"httpStatus": 503, "percentage": 10}}]})));
        let set = generate_for(two_inbounds(), json!({}), &resolver);
        let web = listener(&set, "inbound:10.0.0.1:15001");
        assert_eq!(network_filters(&web).len(), 1, "the tcp limit is not for HTTP inbounds");
        let h = hcm(&web);
        assert_eq!(
            http_filter_names(&h),
            [
                HTTP_LOCAL_RATE_LIMIT,
                "envoy.filters.http.fault",
                "envoy.filters.http.router"
            ]
        );
        let rl = http_rate_limit_of(&h);
        assert_eq!(rl.stat_prefix, "inbound:10.0.0.1:15001");
        assert_eq!(
            rl.token_bucket,
            Some(TokenBucket {
                max_tokens: 5,
                tokens_per_fill: Some(u32_value(5)),
                fill_interval: secs(10),
            })
        );
        assert_eq!(rl.status.map(|s| s.code), Some(423));
        for enabled in [&rl.filter_enabled, &rl.filter_enforced] {
            let pct = enabled.as_ref().and_then(|e| e.default_value.as_ref()).unwrap();
            assert_eq!((pct.numerator, pct.denominator), (100, DenominatorType::Hundred as i32));
        }
        let headers: Vec<(&str, &str, i32)> = rl
            .response_headers_to_add
            .iter()
            .map(|h| {
                let v = h.header.as_ref().unwrap();
                (v.key.as_str(), v.value.as_str(), h.append_action)
            })
            .collect();
        assert_eq!(
            headers,
            [
                ("x-rate", "5", HeaderAppendAction::OverwriteIfExistsOrAdd as i32),
                ("x-limited", "true", HeaderAppendAction::AppendIfExistsOrAdd as i32),
            ]
        );

        // The TCP inbound limits connections, before its TCP proxy.
        let cache = listener(&set, "inbound:10.0.0.1:6379");
        let filters = network_filters(&cache);
        let names: Vec<&str> = filters.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [NETWORK_LOCAL_RATE_LIMIT, "envoy.filters.network.tcp_proxy"]);
        let tcp = NetworkLocalRateLimit::decode(filters[0].1.value.as_slice()).unwrap();
        assert_eq!(filters[0].1.type_url, NetworkLocalRateLimit::type_url());
        assert_eq!(
            tcp.token_bucket,
            Some(TokenBucket {
                max_tokens: 2,
                tokens_per_fill: Some(u32_value(2)),
                fill_interval: secs(1),
            })
        );
    }

    #[test]
    fn disabled_or_rateless_limits_generate_nothing() {
        for conf in [
            json!({"local": {"http": {"disabled": true, "requestRate": {"num": 5, "interval": "10s"}},
                             "tcp": {"disabled": true, "connectionRate": {"num": 2, "interval": "1s"}}}}),
            json!({"local": {"http": {"onRateLimit": {"status": 429}}}}),
        ] {
            let set = generate_for(two_inbounds(), json!({}), &Fixed(policies(json!({"rateLimit": conf}))));
            let web = hcm(&listener(&set, "inbound:10.0.0.1:15001"));
            assert_eq!(http_filter_names(&web), ["envoy.filters.http.router"], "{conf}");
            let cache = listener(&set, "inbound:10.0.0.1:6379");
            assert_eq!(network_filters(&cache).len(), 1, "{conf}");
        }
    }

    #[test]
    fn rate_limit_answers_within_what_envoy_accepts() {
        let many: Vec<Value> = (0..12)
            .map(|i| json!({"name": format!("x-{i}"), "value": "v"}))
            .collect();
        let resolver = Fixed(policies(json!({"rateLimit": {"local": {"http": {
            "requestRate": {"num": 1, "interval": "1s"},
            "onRateLimit": {"status": 499, "headers": {"add": many}}}}}})));
        let set = generate_for(two_inbounds(), json!({}), &resolver);
        let rl = http_rate_limit_of(&hcm(&listener(&set, "inbound:10.0.0.1:15001")));
        assert_eq!(rl.status, None, "499 is no Envoy StatusCode: Envoy's 429");
        assert_eq!(rl.response_headers_to_add.len(), MAX_RATE_LIMIT_HEADERS);
    }

    #[test]
    fn every_inbound_timeout_is_generated() {
        let resolver = Fixed(policies(json!({"timeout": {
            "connectionTimeout": "3s", "idleTimeout": "2h",
            "http": {"requestTimeout": "15s", "streamIdleTimeout": "1h", "maxStreamDuration": "20s",
                     "maxConnectionDuration": "30m", "requestHeadersTimeout": "500ms"}}})));
        let set = generate_for(two_inbounds(), json!({}), &resolver);
        assert_eq!(cluster(&set, "localhost:8080").connect_timeout, secs(3));
        assert_eq!(cluster(&set, "localhost:6379").connect_timeout, secs(3));
        let h = hcm(&listener(&set, "inbound:10.0.0.1:15001"));
        let common = h.common_http_protocol_options.unwrap();
        assert_eq!(common.idle_timeout, secs(7200));
        assert_eq!(common.max_stream_duration, secs(20));
        assert_eq!(common.max_connection_duration, secs(1800));
        assert_eq!(h.stream_idle_timeout, secs(3600));
        assert_eq!(
            h.request_headers_timeout,
            Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: 500_000_000
            })
        );
        let Some(RouteSpecifier::RouteConfig(routes)) = &h.route_specifier else {
            panic!("inline routes expected")
        };
        let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else {
            panic!("a route action expected")
        };
        assert_eq!(action.timeout, secs(15));
        let cache = network_filters(&listener(&set, "inbound:10.0.0.1:6379"));
        let tcp = TcpProxy::decode(cache[0].1.value.as_slice()).unwrap();
        assert_eq!(tcp.idle_timeout, secs(7200));

        // Without a MeshTimeout: the default connect timeout, nothing else.
        let set = generate_for(two_inbounds(), json!({}), &Fixed(InboundPolicies::default()));
        assert_eq!(cluster(&set, "localhost:8080").connect_timeout, secs(10));
        let h = hcm(&listener(&set, "inbound:10.0.0.1:15001"));
        assert_eq!(h.common_http_protocol_options, None);
        assert_eq!(h.request_headers_timeout, None);
    }

    fn transparent(tp: Value) -> Value {
        json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
            "outbound": [{"port": 80, "address": "240.0.0.2", "tags": {"kuma.io/service": "backend"}},
                         {"port": 10002, "tags": {"kuma.io/service": "db"}}],
            "transparentProxying": tp}})
    }

    fn tcp_cluster_of(l: &Listener) -> String {
        let filters = network_filters(l);
        let (name, any) = filters.last().unwrap();
        assert_eq!(name, "envoy.filters.network.tcp_proxy");
        match TcpProxy::decode(any.value.as_slice()).unwrap().cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    fn bound_at(l: &Listener) -> (String, u32) {
        match l.address.as_ref().and_then(|a| a.address.as_ref()) {
            Some(address::Address::SocketAddress(s)) => match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => (s.address.clone(), p),
                _ => panic!("no port"),
            },
            _ => panic!("no socket address"),
        }
    }

    #[test]
    fn transparent_proxy_gets_virtual_listeners_and_passthrough() {
        let set = generate_for(
            transparent(json!({"redirectPortInbound": 15006, "redirectPortOutbound": 15001})),
            json!({}),
            &NoPolicies,
        );
        let out = listener(&set, "outbound:passthrough:ipv4");
        assert_eq!(bound_at(&out), ("0.0.0.0".to_string(), 15001));
        assert_eq!(out.use_original_dst, Some(BoolValue { value: true }));
        assert_eq!(out.bind_to_port, None);
        assert_eq!(tcp_cluster_of(&out), "outbound:passthrough:ipv4");
        let c = cluster(&set, "outbound:passthrough:ipv4");
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32))
        );
        assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
        assert_eq!(c.upstream_bind_config, None);

        let inb = listener(&set, "inbound:passthrough:ipv4");
        assert_eq!(bound_at(&inb), ("0.0.0.0".to_string(), 15006));
        assert_eq!(inb.use_original_dst, Some(BoolValue { value: true }));
        assert_eq!(tcp_cluster_of(&inb), "inbound:passthrough:ipv4");
        let c = cluster(&set, "inbound:passthrough:ipv4");
        let source = c.upstream_bind_config.and_then(|b| b.source_address).unwrap();
        assert_eq!(source.address, "127.0.0.6");

        // Service listeners: reached by original destination, except loopback.
        let backend = listener(&set, "outbound:240.0.0.2:80");
        assert_eq!(backend.bind_to_port, Some(BoolValue { value: false }));
        assert_eq!(listener(&set, "outbound:127.0.0.1:10002").bind_to_port, None);
        let web = listener(&set, "inbound:10.0.0.1:8080");
        assert_eq!(web.bind_to_port, Some(BoolValue { value: false }));
        assert_eq!(set.len(LISTENER), 5);
        assert!(set.get(CLUSTER, BLACKHOLE).is_none());
    }

    #[test]
    fn dual_stack_without_passthrough_blackholes_unknown_destinations() {
        let set = generate_for(
            transparent(json!({"redirectPortInbound": 15006, "redirectPortOutbound": 15001,
                               "ipFamilyMode": "DualStack"})),
            json!({"networking": {"outbound": {"passthrough": false}}}),
            &NoPolicies,
        );
        for family in ["ipv4", "ipv6"] {
            let out = listener(&set, &format!("outbound:passthrough:{family}"));
            assert_eq!(tcp_cluster_of(&out), BLACKHOLE);
            assert!(set.get(CLUSTER, &format!("outbound:passthrough:{family}")).is_none());
            let inb = listener(&set, &format!("inbound:passthrough:{family}"));
            assert_eq!(tcp_cluster_of(&inb), format!("inbound:passthrough:{family}"));
        }
        assert_eq!(bound_at(&listener(&set, "outbound:passthrough:ipv6")).0, "::");
        let source = cluster(&set, "inbound:passthrough:ipv6")
            .upstream_bind_config
            .and_then(|b| b.source_address)
            .unwrap();
        assert_eq!(source.address, "::6");
        let hole = cluster(&set, BLACKHOLE);
        assert_eq!(
            hole.load_assignment.map(|l| l.endpoints.len()),
            Some(0),
            "a blackhole has no endpoints"
        );
    }

    #[test]
    fn only_the_redirected_directions_change() {
        // Inbound redirection only: outbound listeners bind as without it.
        let set = generate_for(
            transparent(json!({"redirectPortInbound": 15006, "ipFamilyMode": "IPv6"})),
            json!({}),
            &NoPolicies,
        );
        assert!(set.get(LISTENER, "outbound:passthrough:ipv6").is_none());
        assert!(set.get(LISTENER, "inbound:passthrough:ipv4").is_none());
        assert_eq!(bound_at(&listener(&set, "inbound:passthrough:ipv6")).0, "::");
        assert_eq!(listener(&set, "outbound:240.0.0.2:80").bind_to_port, None);
        // No transparent proxying at all: nothing virtual, everything binds.
        let mut plain = transparent(json!({}));
        plain["networking"]
            .as_object_mut()
            .unwrap()
            .remove("transparentProxying");
        let set = generate_for(plain, json!({}), &NoPolicies);
        assert_eq!(set.len(LISTENER), 3);
        assert!(set.of_type(LISTENER).all(|r| {
            let l = Listener::decode(r.body.value.as_slice()).unwrap();
            l.bind_to_port.is_none() && l.use_original_dst.is_none()
        }));
    }

    #[test]
    fn reachable_services_limit_the_outbounds() {
        let set = generate_for(
            transparent(json!({"redirectPortOutbound": 15001, "reachableServices": ["db"]})),
            json!({}),
            &NoPolicies,
        );
        assert!(set.get(LISTENER, "outbound:240.0.0.2:80").is_none());
        assert!(set.get(CLUSTER, "backend").is_none());
        assert!(set.get(LISTENER, "outbound:127.0.0.1:10002").is_some());
        assert!(set.get(CLUSTER, "db").is_some());
    }
}

#[cfg(test)]
mod traffic_permission_tests {
    use super::*;
    use crate::generate::server::rbac_eval::allows;
    use crate::generate::server::resolve_permissions;
    use crate::generate::{invariants, InboundPolicies, OutboundPolicies};
    use crate::snapshot::{DataplaneEntry, ProxyKind};
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as NetworkConfigType;
    use meridian_core::dataplane::Dataplane;
    use meridian_core::policy::matching::{traffic_permissions, ProxyView};
    use meridian_core::policy::meshtrafficpermission::MeshTrafficPermission;
    use prost::{Message, Name};
    use serde_json::{json, Value};

    /// Resolves MeshTrafficPermission as the zone does (matching, then the
    /// callers' addresses) and adds `extra` to every inbound.
    struct Permissions(InboundPolicies);

    impl PolicyResolver for Permissions {
        fn outbound(&self, _: &MeshSnapshot, _: &ProxyContext, _: &str) -> OutboundPolicies {
            OutboundPolicies::default()
        }

        fn inbound(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, index: usize) -> InboundPolicies {
            let mtps: Vec<(String, MeshTrafficPermission)> = snapshot
                .policies
                .get("MeshTrafficPermission")
                .into_iter()
                .flatten()
                .map(|(n, v)| (n.clone(), serde_json::from_value(v.clone()).unwrap()))
                .collect();
            let view = ProxyView::new(&proxy.mesh, &proxy.dataplane);
            InboundPolicies {
                traffic_permissions: resolve_permissions(snapshot, &traffic_permissions(&mtps, &view, index)),
                ..self.0.clone()
            }
        }
    }

    fn dataplane(address: &str, inbounds: Value) -> Dataplane {
        serde_json::from_value(json!({"networking": {"address": address, "inbound": inbounds}})).unwrap()
    }

    /// backend: an http inbound (15001) and a tcp one (6379, backend-cache).
    fn backend() -> Dataplane {
        dataplane(
            "10.0.0.1",
            json!([{"port": 15001, "servicePort": 8080,
                    "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}},
                   {"port": 6379, "tags": {"kuma.io/service": "backend-cache", "kuma.io/protocol": "tcp"}}]),
        )
    }

    const HTTP: &str = "inbound:10.0.0.1:15001";
    const TCP: &str = "inbound:10.0.0.1:6379";

    /// Checks an MTP spec as the API would, and names it `mtp-<i>`.
    fn with_mtps(mtps: Value) -> Vec<(String, Value)> {
        mtps.as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                meridian_core::spec::check::<MeshTrafficPermission>(
                    spec.clone(),
                    &meridian_core::error::FieldPath::root(),
                )
                .unwrap();
                (format!("mtp-{i}"), spec.clone())
            })
            .collect()
    }

    /// backend's mesh, with web (v1 on IPv4, v2 on IPv6) and batch, and its proxy.
    fn mesh_with(mtps: Value) -> (MeshSnapshot, ProxyContext) {
        let entry = |name: &str, spec: Dataplane| DataplaneEntry {
            name: name.into(),
            spec,
        };
        let tags = |service: &str, version: &str| json!([{"port": 8080, "tags": {"kuma.io/service": service, "version": version}}]);
        let mut snap = MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            dataplanes: vec![
                entry("backend-1", backend()),
                entry("web-1", dataplane("10.0.0.2", tags("web", "v1"))),
                entry("web-2", dataplane("fd00::2", tags("web", "v2"))),
                entry("batch-1", dataplane("10.0.0.4", tags("batch", "v1"))),
            ],
            ..Default::default()
        };
        snap.policies.insert("MeshTrafficPermission".into(), with_mtps(mtps));
        let proxy = ProxyContext {
            mesh: "default".into(),
            name: "backend-1".into(),
            kind: ProxyKind::Sidecar,
            dataplane: backend(),
            tls: Default::default(),
        };
        (snap, proxy)
    }

    /// The sidecar of backend.
    fn generate_with(mtps: Value, extra: InboundPolicies) -> ResourceSet {
        let (snap, proxy) = mesh_with(mtps);
        let set = generate(&snap, &proxy, &Permissions(extra));
        assert_eq!(invariants::check(&set), Vec::<String>::new());
        set
    }

    fn mtp(top: Value, from: Value) -> Value {
        json!({"targetRef": top, "from": from})
    }

    fn from(target: Value, action: &str) -> Value {
        json!({"targetRef": target, "default": {"action": action}})
    }

    fn backend_mtp(from: Value) -> Value {
        mtp(json!({"kind": "MeshService", "name": "backend"}), from)
    }

    fn listener(set: &ResourceSet, name: &str) -> Listener {
        let r = set.get(LISTENER, name).unwrap_or_else(|| panic!("no listener {name}"));
        Listener::decode(r.body.value.as_slice()).unwrap()
    }

    fn network_filters(set: &ResourceSet, name: &str) -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
        listener(set, name).filter_chains[0]
            .filters
            .iter()
            .map(|f| match &f.config_type {
                Some(NetworkConfigType::TypedConfig(any)) => (f.name.clone(), any.clone()),
                other => panic!("filter {} without typed config: {other:?}", f.name),
            })
            .collect()
    }

    fn hcm(set: &ResourceSet) -> HttpConnectionManager {
        let filters = network_filters(set, HTTP);
        assert_eq!(filters.len(), 1);
        HttpConnectionManager::decode(filters[0].1.value.as_slice()).unwrap()
    }

    /// The HTTP inbound's RBAC filter, if it has one.
    fn http_rbac_of(set: &ResourceSet) -> Option<HttpRbac> {
        let h = hcm(set);
        let f = h.http_filters.iter().find(|f| f.name == HTTP_RBAC)?;
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("no typed config")
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
        );
        Some(HttpRbac::decode(any.value.as_slice()).unwrap())
    }

    /// The TCP inbound's RBAC filter, if it has one.
    fn network_rbac_of(set: &ResourceSet) -> Option<NetworkRbac> {
        let filters = network_filters(set, TCP);
        let (_, any) = filters.iter().find(|(n, _)| n == NETWORK_RBAC)?;
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
        );
        Some(NetworkRbac::decode(any.value.as_slice()).unwrap())
    }

    /// For every inbound: web allowed except its v2, batch shadow-denied,
    /// everyone else denied.
    fn callers_policy() -> Value {
        json!([mtp(
            json!({"kind": "Mesh"}),
            json!([
                from(json!({"kind": "Mesh"}), "Deny"),
                from(json!({"kind": "MeshService", "name": "web"}), "Allow"),
                from(
                    json!({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v2"}}),
                    "Deny"
                ),
                from(
                    json!({"kind": "MeshSubset", "tags": {"kuma.io/service": "batch"}}),
                    "AllowWithShadowDeny"
                )
            ])
        )])
    }

    fn with_limits_and_faults() -> InboundPolicies {
        InboundPolicies {
            rate_limit: Some(
                serde_json::from_value(json!({"local": {
                    "http": {"requestRate": {"num": 5, "interval": "10s"}},
                    "tcp": {"connectionRate": {"num": 2, "interval": "1s"}}}}))
                .unwrap(),
            ),
            faults: serde_json::from_value(json!([{"abort": {"httpStatus": 503, "percentage": 10}}])).unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn rbac_comes_first_on_http_and_tcp_inbounds() {
        let set = generate_with(callers_policy(), with_limits_and_faults());
        let names: Vec<String> = hcm(&set).http_filters.iter().map(|f| f.name.clone()).collect();
        assert_eq!(
            names,
            [
                HTTP_RBAC,
                HTTP_LOCAL_RATE_LIMIT,
                "envoy.filters.http.fault",
                "envoy.filters.http.router"
            ]
        );
        let names: Vec<String> = network_filters(&set, TCP).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                NETWORK_RBAC,
                NETWORK_LOCAL_RATE_LIMIT,
                "envoy.filters.network.tcp_proxy"
            ]
        );
        let tcp = network_rbac_of(&set).unwrap();
        assert_eq!(tcp.stat_prefix, TCP, "the network filter's required stat prefix");
        assert_eq!(
            NetworkRbac::type_url(),
            "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
        );
    }

    #[test]
    fn callers_are_allowed_and_denied_by_address_on_both_kinds_of_inbound() {
        let set = generate_with(callers_policy(), InboundPolicies::default());
        let http = http_rbac_of(&set).unwrap().rules.unwrap();
        let tcp = network_rbac_of(&set).unwrap().rules.unwrap();
        for rules in [&http, &tcp] {
            assert!(allows(rules, "10.0.0.2"), "web v1");
            assert!(!allows(rules, "fd00::2"), "web v2 is denied");
            assert!(allows(rules, "10.0.0.4"), "batch: a shadow deny allows");
            assert!(!allows(rules, "10.0.0.9"), "a caller no rule is about");
        }
        // Exactly the rules an xDS-enabled gRPC server gets for the inbound.
        let (snap, proxy) = mesh_with(callers_policy());
        for (index, rules) in [(0, &http), (1, &tcp)] {
            let resolved = Permissions(InboundPolicies::default())
                .inbound(&snap, &proxy, index)
                .traffic_permissions
                .unwrap();
            assert_eq!(super::super::server::rbac(&resolved).rules.as_ref(), Some(rules));
        }
    }

    #[test]
    fn a_permission_applies_to_the_inbounds_it_selects_only() {
        // backend's MTP: the http inbound (backend) is guarded, the tcp one
        // (backend-cache) serves everyone.
        let set = generate_with(
            json!([backend_mtp(json!([from(
                json!({"kind": "MeshService", "name": "web"}),
                "Allow"
            )]))]),
            InboundPolicies::default(),
        );
        let http = http_rbac_of(&set).unwrap().rules.unwrap();
        assert!(allows(&http, "10.0.0.2") && !allows(&http, "10.0.0.4"));
        assert_eq!(network_rbac_of(&set), None);
        let names: Vec<String> = network_filters(&set, TCP).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["envoy.filters.network.tcp_proxy"]);
    }

    #[test]
    fn no_matching_permission_no_filter() {
        for mtps in [
            json!([]),
            json!([mtp(
                json!({"kind": "MeshService", "name": "web"}),
                json!([from(json!({"kind": "Mesh"}), "Deny")])
            )]),
        ] {
            let set = generate_with(mtps.clone(), with_limits_and_faults());
            assert_eq!(http_rbac_of(&set), None, "{mtps}");
            assert_eq!(network_rbac_of(&set), None, "{mtps}");
            let names: Vec<String> = hcm(&set).http_filters.iter().map(|f| f.name.clone()).collect();
            assert_eq!(names[0], HTTP_LOCAL_RATE_LIMIT);
        }
    }

    #[test]
    fn mesh_wide_deny_refuses_everyone_and_mesh_wide_allow_admits_everyone() {
        let deny = generate_with(
            json!([mtp(
                json!({"kind": "Mesh"}),
                json!([from(json!({"kind": "Mesh"}), "Deny")])
            )]),
            InboundPolicies::default(),
        );
        for rules in [
            http_rbac_of(&deny).unwrap().rules.unwrap(),
            network_rbac_of(&deny).unwrap().rules.unwrap(),
        ] {
            assert!(
                rules.policies.is_empty(),
                "an ALLOW without policies refuses all: {rules:?}"
            );
            assert!(!allows(&rules, "10.0.0.2"));
        }
        let allow = generate_with(
            json!([mtp(
                json!({"kind": "Mesh"}),
                json!([from(json!({"kind": "Mesh"}), "Allow")])
            )]),
            InboundPolicies::default(),
        );
        let rules = network_rbac_of(&allow).unwrap().rules.unwrap();
        for peer in ["10.0.0.2", "192.0.2.1", "fd00::9"] {
            assert!(allows(&rules, peer), "{peer}");
        }
    }

    #[test]
    fn allow_with_shadow_deny_allows_and_shadow_rules_deny() {
        let set = generate_with(callers_policy(), InboundPolicies::default());
        for (rules, shadow) in [
            http_rbac_of(&set)
                .map(|r| (r.rules.unwrap(), r.shadow_rules.unwrap()))
                .unwrap(),
            network_rbac_of(&set)
                .map(|r| (r.rules.unwrap(), r.shadow_rules.unwrap()))
                .unwrap(),
        ] {
            assert!(allows(&rules, "10.0.0.4"), "enforced: batch allowed");
            assert!(!allows(&shadow, "10.0.0.4"), "shadow: batch denied");
            assert!(allows(&shadow, "10.0.0.2"), "shadow: web still allowed");
            assert!(!allows(&shadow, "fd00::2"));
        }
        // Without AllowWithShadowDeny, or when it is about nobody: no shadow rules.
        for from_list in [
            json!([from(json!({"kind": "MeshService", "name": "web"}), "Allow")]),
            json!([
                from(json!({"kind": "MeshService", "name": "web"}), "Allow"),
                from(json!({"kind": "MeshService", "name": "nowhere"}), "AllowWithShadowDeny")
            ]),
        ] {
            let set = generate_with(
                json!([mtp(json!({"kind": "Mesh"}), from_list.clone())]),
                InboundPolicies::default(),
            );
            let http = http_rbac_of(&set).unwrap();
            assert!(http.rules.is_some() && http.shadow_rules.is_none(), "{from_list}");
            assert_eq!(network_rbac_of(&set).unwrap().shadow_rules, None, "{from_list}");
        }
    }
}

#[cfg(test)]
mod outbound_policy_tests {
    use super::*;
    use crate::generate::{invariants, OutboundPolicies};
    use crate::snapshot::{DataplaneEntry, ProxyKind};
    use envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker;
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as NetworkConfigType;
    use meridian_core::dataplane::Dataplane;
    use prost::Message;
    use serde_json::{json, Value};

    /// Gives every outbound the policies in a JSON object keyed by service.
    struct ByService(Value);

    impl PolicyResolver for ByService {
        fn outbound(&self, _: &MeshSnapshot, _: &ProxyContext, service: &str) -> OutboundPolicies {
            let p = &self.0[service];
            OutboundPolicies {
                http_rules: p
                    .get("httpRules")
                    .map(|r| serde_json::from_value(r.clone()).unwrap())
                    .unwrap_or_default(),
                tcp_route: p.get("tcpRoute").map(|r| serde_json::from_value(r.clone()).unwrap()),
                health_check: p.get("healthCheck").map(|r| serde_json::from_value(r.clone()).unwrap()),
                ..Default::default()
            }
        }
    }

    fn instance(address: &str, port: u32, tags: Value) -> Dataplane {
        serde_json::from_value(json!({"networking": {"address": address, "inbound": [{"port": port, "tags": tags}]}}))
            .unwrap()
    }

    /// A sidecar calling backend (http: v1, v2) and db (tcp: v1, v2).
    fn generate_with(policies: Value) -> ResourceSet {
        let me: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 1, "tags": {"kuma.io/service": "web"}}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}},
                         {"port": 10002, "tags": {"kuma.io/service": "db"}}]}}))
        .unwrap();
        let mut dataplanes = vec![DataplaneEntry {
            name: "web".into(),
            spec: me.clone(),
        }];
        for (i, (service, protocol, version)) in [
            ("backend", "http", "v1"),
            ("backend", "http", "v2"),
            ("db", "tcp", "v1"),
            ("db", "tcp", "v2"),
        ]
        .into_iter()
        .enumerate()
        {
            dataplanes.push(DataplaneEntry {
                name: format!("{service}-{version}"),
                spec: instance(
                    &format!("10.0.1.{i}"),
                    8080,
                    json!({"kuma.io/service": service, "kuma.io/protocol": protocol, "version": version}),
                ),
            });
        }
        let snap = MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            dataplanes,
            ..Default::default()
        };
        let proxy = ProxyContext {
            mesh: "default".into(),
            name: "web".into(),
            kind: ProxyKind::Sidecar,
            dataplane: me,
            tls: Default::default(),
        };
        let set = generate(&snap, &proxy, &ByService(policies));
        assert_eq!(invariants::check(&set), Vec::<String>::new());
        set
    }

    /// The TCP proxy of an outbound listener, if it has one.
    fn tcp_proxy_of(set: &ResourceSet, listener: &str) -> Option<TcpProxy> {
        let r = set
            .get(LISTENER, listener)
            .unwrap_or_else(|| panic!("no listener {listener}"));
        let l = Listener::decode(r.body.value.as_slice()).unwrap();
        match &l.filter_chains[0].filters[0].config_type {
            Some(NetworkConfigType::TypedConfig(any)) if any.type_url.ends_with("TcpProxy") => {
                Some(TcpProxy::decode(any.value.as_slice()).unwrap())
            }
            _ => None,
        }
    }

    fn split(p: &TcpProxy) -> Vec<(String, u32)> {
        match &p.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                w.clusters.iter().map(|c| (c.name.clone(), c.weight)).collect()
            }
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
            None => vec![],
        }
    }

    fn tcp_route(v1: u32, v2: u32, service: &str) -> Value {
        json!({"backendRefs": [
            {"kind": "MeshServiceSubset", "name": service, "tags": {"version": "v1"}, "weight": v1},
            {"kind": "MeshServiceSubset", "name": service, "tags": {"version": "v2"}, "weight": v2}]})
    }

    #[test]
    fn tcp_route_splits_a_tcp_outbound_over_subset_clusters() {
        let set = generate_with(json!({"db": {"tcpRoute": tcp_route(90, 10, "db")}}));
        let p = tcp_proxy_of(&set, "outbound:127.0.0.1:10002").unwrap();
        assert_eq!(split(&p), [("db|version=v1".into(), 90), ("db|version=v2".into(), 10)]);
        let v2 = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
            set.get(ENDPOINT, "db|version=v2").unwrap().body.value.as_slice(),
        )
        .unwrap();
        assert_eq!(v2.endpoints[0].lb_endpoints.len(), 1, "the v2 instance only");
        assert!(set.get(CLUSTER, "db").is_none(), "nothing sends to the whole of db");
    }

    #[test]
    fn on_an_http_outbound_the_http_route_wins_and_a_lone_tcp_route_applies() {
        let http_rule = json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}]}}]);
        let both =
            generate_with(json!({"backend": {"httpRules": http_rule, "tcpRoute": tcp_route(50, 50, "backend")}}));
        assert!(
            tcp_proxy_of(&both, "outbound:127.0.0.1:10001").is_none(),
            "HTTP routing"
        );
        assert!(both.get(ROUTE, "backend").is_some());
        assert!(
            both.get(CLUSTER, "backend|version=v1").is_none(),
            "the TCP route is ignored"
        );

        let tcp_only = generate_with(json!({"backend": {"tcpRoute": tcp_route(50, 50, "backend")}}));
        let p = tcp_proxy_of(&tcp_only, "outbound:127.0.0.1:10001").expect("a TCP proxy");
        assert_eq!(
            split(&p),
            [("backend|version=v1".into(), 50), ("backend|version=v2".into(), 50)]
        );
        assert!(tcp_only.get(ROUTE, "backend").is_none());
    }

    #[test]
    fn health_checks_go_on_outbound_clusters() {
        let hc = json!({"interval": "5s", "http": {"path": "/ready"}, "tcp": {}});
        let set = generate_with(json!({"backend": {"healthCheck": hc}, "db": {"healthCheck": hc}}));
        let checker = |name: &str| {
            let c = Cluster::decode(set.get(CLUSTER, name).unwrap().body.value.as_slice()).unwrap();
            c.health_checks.first().and_then(|h| h.health_checker.clone())
        };
        let Some(HealthChecker::HttpHealthCheck(h)) = checker("backend") else {
            panic!("backend has no HTTP check")
        };
        assert_eq!(h.path, "/ready");
        assert!(matches!(checker("db"), Some(HealthChecker::TcpHealthCheck(_))));
        assert_eq!(checker("localhost:1"), None, "inbound clusters are not checked");
    }
}
