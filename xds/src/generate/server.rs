//! xDS-enabled gRPC servers (gRFC A36), with MeshTrafficPermission enforced
//! by the server itself through the RBAC HTTP filter (gRFC A41).
//!
//! # The Listener a server asks for
//!
//! A gRPC server built with xDS (grpcio: `grpc.server(pool, xds=True)`) does
//! not serve until it has a Listener named by its bootstrap's
//! `server_listener_resource_name_template`, with `%s` replaced by the
//! `IP:port` it listens on (`127.0.0.1:50051`, `0.0.0.0:50051`,
//! `[::]:50051`). Meridian's template is fixed, [`LISTENER_NAME_TEMPLATE`]:
//!
//! ```json
//! "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s"
//! ```
//!
//! For every inbound of a proxyless dataplane the zone generates the Listener
//! under three names, so that the server may bind the inbound's own address
//! (`inbound.address`, else `networking.address`) or either wildcard:
//! `<address>:<port>` (only when the address is an IP literal), `0.0.0.0:<port>`
//! and `[::]:<port>`. When two inbounds share a port, the first one in the
//! dataplane's order owns the wildcard names. The port is the inbound's
//! `port`: a proxyless server has no sidecar in front of it, so clients
//! reach it there (as its endpoints say).
//!
//! Each Listener holds what A36 accepts and nothing it would refuse:
//! - `address`: the TCP socket address of its name. A server whose Listener
//!   names another address stays "not serving", so each name carries its own.
//! - No `listener_filters`, no `use_original_dst` (both are NACKed).
//! - One filter chain without a `filter_chain_match` (no duplicate matchers
//!   possible), whose only filter is an HttpConnectionManager.
//! - The HttpConnectionManager: an inline RouteConfiguration with one virtual
//!   host for every authority and one route for every path whose action is
//!   `non_forwarding_action` (a server fails RPCs routed to any other
//!   action); HTTP filters: the RBAC filter when a MeshTrafficPermission
//!   applies, the router last (A39). `xff_num_trusted_hops` stays zero and
//!   there are no `original_ip_detection_extensions` (A41 NACKs either, as
//!   the server equates `remote_ip` with the peer address).
//! - No `transport_socket`: plaintext, as Meridian has no mesh mTLS yet. A
//!   server using `xds_server_credentials` falls back to its fallback
//!   credentials (insecure in the tests).
//!
//! Other inbound policies (MeshTimeout, MeshFaultInjection, MeshRateLimit)
//! are not sent to servers: gRPC runs no server-side filters for them.
//!
//! # MeshTrafficPermission
//!
//! The zone resolves an inbound's permissions into [`PermissionRule`]s,
//! highest precedence first ([`resolve_permissions`]); [`rbac`] turns them
//! into one ALLOW policy: a caller is allowed when the first rule that is
//! about it allows it. Callers are known by address only (no mTLS, so no
//! certificate identity): a `Mesh` entry is about every caller, the other
//! kinds about the source IPs of this zone's dataplanes whose tags they
//! select (RBAC `direct_remote_ip`, /32 or /128). See
//! `docs/decisions/0004-traffic-permission-identity.md` for the defaults,
//! `AllowWithShadowDeny`, and what mTLS will change.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{
    address::Address as AddressKind, socket_address::PortSpecifier, socket_address::Protocol, Address, CidrRange,
    SocketAddress, TrafficDirection,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action as RbacAction, Permission, Policy, Principal, Rbac as RbacRules,
};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action as RouteAction, route_match::PathSpecifier, NonForwardingAction, Route, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter::ConfigType, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use meridian_core::dataplane::Dataplane;
use meridian_core::dataplane::SERVICE_TAG;
use meridian_core::mtls::{spiffe_id, spiffe_prefix, tag_uri};
use meridian_core::policy::matching::MATCH_ALL;
use meridian_core::policy::matching::{Permission as MtpRule, Tags};
use meridian_core::policy::meshtrafficpermission::Action;
use meridian_core::policy::{TargetRef, TargetRefKind};

use super::{any, PolicyResolver};
use crate::resources::{ResourceSet, LISTENER};
use crate::snapshot::{MeshSnapshot, ProxyContext};

/// The `server_listener_resource_name_template` a proxyless gRPC server's
/// bootstrap must carry to get its Listener from a Meridian zone.
pub const LISTENER_NAME_TEMPLATE: &str = "grpc/server?xds.resource.listening_address=%s";

/// The name of the only RBAC policy: a map with one entry encodes the same
/// bytes every time, so unchanged permissions never look like a new Listener.
pub const RBAC_POLICY_NAME: &str = "meridian-mesh-traffic-permission";

/// The Listener name a server listening on `ip`:`port` asks for.
pub fn listener_name(ip: IpAddr, port: u32) -> String {
    LISTENER_NAME_TEMPLATE.replace("%s", &host_port(ip, port))
}

/// `IP:port`, an IPv6 address in brackets, as gRPC formats a listening address.
fn host_port(ip: IpAddr, port: u32) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// One MeshTrafficPermission rule for an inbound, as the server enforces it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionRule {
    /// The policy the rule comes from.
    pub policy: String,
    /// The `from` reference as written.
    pub from: TargetRef,
    pub action: Action,
    /// The callers the rule is about: `None` for every caller (a reference
    /// that selects any tags, such as `Mesh`), else the source addresses of
    /// the dataplanes of this zone it selects (possibly none). Used only
    /// without mesh mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<IpAddr>>,
    /// With mesh mTLS: the URI SANs a caller's certificate must all carry
    /// for the rule to be about it (`None`: every caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<SanMatch>>,
}

/// A URI SAN a caller's certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SanMatch {
    Exact(String),
    Prefix(String),
}

impl PermissionRule {
    /// Whether the rule is about every caller.
    fn is_everyone(&self) -> bool {
        self.sources.is_none() && self.identities.is_none()
    }
}

/// The SANs a caller must carry for `from` in `mesh`, as Kuma's identities
/// put them in certificates: `spiffe://<mesh>/<service>` for the service,
/// `kuma://<tag>/<value>` for other tags (`*`: any value); `None` for a
/// reference about every caller (and for one that selects nothing, an
/// empty list: it is about nobody).
fn identities_of(mesh: &str, from: &TargetRef) -> Option<Vec<SanMatch>> {
    let (service, tags) = match from.kind {
        TargetRefKind::Mesh => return None,
        TargetRefKind::MeshSubset => (None, from.tags.as_ref()),
        TargetRefKind::MeshService => match from.name.as_deref() {
            Some(n) => (Some(n), None),
            None => return Some(Vec::new()),
        },
        TargetRefKind::MeshServiceSubset => match from.name.as_deref() {
            Some(n) => (Some(n), from.tags.as_ref()),
            None => return Some(Vec::new()),
        },
        TargetRefKind::MeshGateway | TargetRefKind::MeshHttpRoute => return Some(Vec::new()),
    };
    let mut out = Vec::new();
    let service_match = |v: &str| {
        if v == MATCH_ALL {
            SanMatch::Prefix(spiffe_prefix(mesh))
        } else {
            SanMatch::Exact(spiffe_id(mesh, v))
        }
    };
    if let Some(s) = service {
        out.push(service_match(s));
    }
    for (k, v) in tags.into_iter().flatten() {
        out.push(if k == SERVICE_TAG {
            service_match(v)
        } else if v == MATCH_ALL {
            SanMatch::Prefix(tag_uri(k, ""))
        } else {
            SanMatch::Exact(tag_uri(k, v))
        });
    }
    if out.is_empty() {
        // A subset without tags selects any tags: every caller.
        return None;
    }
    Some(out)
}

/// The rules of `permissions` (from `matching::traffic_permissions`, highest
/// precedence first) with their callers' addresses in `snapshot`; `None`
/// when no MeshTrafficPermission applies to the inbound at all.
pub fn resolve_permissions(snapshot: &MeshSnapshot, permissions: &[MtpRule<'_>]) -> Option<Vec<PermissionRule>> {
    if permissions.is_empty() {
        return None;
    }
    let rules = permissions
        .iter()
        .map(|p| {
            // With mesh mTLS callers are who their certificates say.
            let (sources, identities) = if snapshot.mtls.is_some() {
                (None, identities_of(&snapshot.mesh, p.clients))
            } else if p.applies_to(&Tags::new()) {
                (None, None)
            } else {
                (Some(source_addresses(snapshot, |tags| p.applies_to(tags))), None)
            };
            PermissionRule {
                policy: p.policy.to_string(),
                from: p.clients.clone(),
                action: p.action,
                sources,
                identities,
            }
        })
        .collect();
    Some(rules)
}

/// The addresses the dataplanes of `snapshot` with a tag set that `selects`
/// call from: `networking.address` and the selected inbound's own `address`,
/// IP literals only (a hostname cannot be matched against a peer address).
fn source_addresses(snapshot: &MeshSnapshot, selects: impl Fn(&Tags) -> bool) -> Vec<IpAddr> {
    let mut out = BTreeSet::new();
    for dp in &snapshot.dataplanes {
        let n = &dp.spec.networking;
        let mut selected = false;
        for inbound in &n.inbound {
            if selects(&inbound.tags) {
                selected = true;
                out.extend(inbound.address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()));
            }
        }
        if n.gateway.as_ref().is_some_and(|g| selects(&g.tags)) {
            selected = true;
        }
        if selected {
            out.extend(n.address.parse::<IpAddr>().ok());
        }
    }
    out.into_iter().collect()
}

fn principal(identifier: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

/// A principal matching any of `list`; `None` for an empty list (it would
/// match nobody).
fn any_of(mut list: Vec<Principal>) -> Option<Principal> {
    match list.len() {
        0 => None,
        1 => list.pop(),
        _ => Some(principal(principal::Identifier::OrIds(principal::Set { ids: list }))),
    }
}

/// A caller whose certificate carries a URI SAN matching `m`.
fn authenticated(m: &SanMatch) -> Principal {
    let pattern = match m {
        SanMatch::Exact(s) => MatchPattern::Exact(s.clone()),
        SanMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
    };
    principal(principal::Identifier::Authenticated(principal::Authenticated {
        principal_name: Some(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        }),
    }))
}

/// The callers of a rule as a principal; `None` when it is about nobody.
fn callers(rule: &PermissionRule) -> Option<Principal> {
    if let Some(ids) = &rule.identities {
        let mut all: Vec<Principal> = ids.iter().map(authenticated).collect();
        return match all.len() {
            0 => None,
            1 => all.pop(),
            _ => Some(principal(principal::Identifier::AndIds(principal::Set { ids: all }))),
        };
    }
    let Some(addresses) = &rule.sources else {
        return Some(principal(principal::Identifier::Any(true)));
    };
    any_of(
        addresses
            .iter()
            .map(|ip| {
                let prefix_len = if ip.is_ipv4() { 32 } else { 128 };
                principal(principal::Identifier::DirectRemoteIp(CidrRange {
                    address_prefix: ip.to_string(),
                    prefix_len: Some(super::u32_value(prefix_len)),
                }))
            })
            .collect(),
    )
}

/// The RBAC filter enforcing `rules` (highest precedence first), with the
/// rules of [`rbac_rules`].
pub fn rbac(rules: &[PermissionRule]) -> Rbac {
    Rbac {
        rules: Some(rbac_rules(rules)),
        ..Default::default()
    }
}

/// The RBAC rules enforcing `rules` (highest precedence first): one ALLOW
/// policy whose principals are, for each allowing rule, its callers minus
/// those of the denying rules before it. A caller no rule is about is
/// refused (an ALLOW RBAC without a matching policy denies);
/// `AllowWithShadowDeny` allows (see the module docs). Sidecars use the same
/// rules in their RBAC filters.
pub(crate) fn rbac_rules(rules: &[PermissionRule]) -> RbacRules {
    let mut denied: Vec<Principal> = Vec::new();
    let mut allowed: Vec<Principal> = Vec::new();
    for rule in rules {
        let Some(who) = callers(rule) else {
            continue;
        };
        let everyone = rule.is_everyone();
        match rule.action {
            Action::Deny => {
                if everyone {
                    // Nothing after this rule can be reached.
                    break;
                }
                denied.push(who);
            }
            Action::Allow | Action::AllowWithShadowDeny => {
                let grant = match any_of(denied.clone()) {
                    None => who,
                    Some(d) => principal(principal::Identifier::AndIds(principal::Set {
                        ids: vec![who, principal(principal::Identifier::NotId(Box::new(d)))],
                    })),
                };
                allowed.push(grant);
                if everyone {
                    break;
                }
            }
        }
    }
    let policies = if allowed.is_empty() {
        Default::default()
    } else {
        [(
            RBAC_POLICY_NAME.to_string(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals: allowed,
                ..Default::default()
            },
        )]
        .into_iter()
        .collect()
    };
    RbacRules {
        action: RbacAction::Allow as i32,
        policies,
        ..Default::default()
    }
}

/// The HttpConnectionManager of a server Listener: every RPC takes the one
/// non-forwarding route; RBAC (when given) before the router.
fn http_connection_manager(stat_prefix: &str, rbac: Option<Rbac>) -> HttpConnectionManager {
    let mut filters = Vec::new();
    if let Some(r) = rbac {
        filters.push(HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(ConfigType::TypedConfig(any(&r))),
            ..Default::default()
        });
    }
    filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    });
    let routes = RouteConfiguration {
        name: stat_prefix.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(RouteAction::NonForwardingAction(NonForwardingAction {})),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
        http_filters: filters,
        ..Default::default()
    }
}

/// A server Listener on `ip`:`port`.
fn listener(name: &str, ip: IpAddr, port: u32, hcm: &HttpConnectionManager) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                protocol: Protocol::Tcp as i32,
                address: ip.to_string(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(hcm))),
            }],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// The addresses a server of inbound `index` of `dataplane` may listen on,
/// with the names it asks for them by: its own address when it is an IP
/// literal, then the IPv4 and IPv6 wildcards.
fn listening_addresses(dataplane: &Dataplane, index: usize) -> Vec<(String, IpAddr, u32)> {
    let n = &dataplane.networking;
    let Some(inbound) = n.inbound.get(index) else {
        return Vec::new();
    };
    let own = inbound.address.as_deref().unwrap_or(&n.address).parse::<IpAddr>().ok();
    let wildcards = [IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])];
    own.into_iter()
        .chain(wildcards)
        .map(|ip| (listener_name(ip, inbound.port), ip, inbound.port))
        .collect()
}

/// Adds the server Listeners of every inbound of `proxy` to `set`.
pub fn add_listeners(
    set: &mut ResourceSet,
    snapshot: &MeshSnapshot,
    proxy: &ProxyContext,
    policies: &dyn PolicyResolver,
) {
    let mut taken = BTreeSet::new();
    for index in 0..proxy.dataplane.networking.inbound.len() {
        let addresses: Vec<(String, IpAddr, u32)> = listening_addresses(&proxy.dataplane, index)
            .into_iter()
            .filter(|(name, _, _)| !taken.contains(name))
            .collect();
        let Some((_, _, port)) = addresses.first() else {
            continue;
        };
        let inbound = policies.inbound(snapshot, proxy, index);
        let rbac = inbound.traffic_permissions.as_deref().map(rbac);
        let hcm = http_connection_manager(&format!("inbound_{port}"), rbac);
        let tls = match (&snapshot.mtls, &proxy.tls.certificate_provider) {
            (Some(mtls), Some(provider)) => Some(super::tls::transport_socket(&super::tls::proxyless_downstream(
                mtls.mode, provider,
            ))),
            _ => None,
        };
        for (name, ip, port) in addresses {
            let mut l = listener(&name, ip, port, &hcm);
            for chain in &mut l.filter_chains {
                chain.transport_socket = tls.clone();
            }
            set.insert(LISTENER, &name, &l);
            taken.insert(name);
        }
    }
}

/// Test support shared by the RBAC tests of servers and sidecars.
#[cfg(test)]
pub(crate) mod rbac_eval {
    use std::net::IpAddr;

    use envoy_types::pb::envoy::config::rbac::v3::{
        principal, rbac::Action as RbacAction, Principal, Rbac as RbacRules,
    };

    /// A caller: its address, and the URI SANs of its certificate when it
    /// called over mTLS.
    struct Caller<'a> {
        ip: IpAddr,
        sans: Option<&'a [&'a str]>,
    }

    /// Whether ALLOW `rules` let a caller at `peer` through, as Envoy and
    /// gRPC decide on `direct_remote_ip`.
    pub(crate) fn allows(rules: &RbacRules, peer: &str) -> bool {
        let peer: IpAddr = peer.parse().unwrap();
        allows_caller(rules, &Caller { ip: peer, sans: None })
    }

    /// Whether ALLOW `rules` let a caller through whose certificate carries
    /// `sans` (`None`: a plaintext caller), as Envoy and gRPC decide on
    /// `authenticated.principal_name` (a URI SAN first).
    pub(crate) fn allows_identity(rules: &RbacRules, sans: Option<&[&str]>) -> bool {
        let ip: IpAddr = "192.0.2.99".parse().unwrap();
        allows_caller(rules, &Caller { ip, sans })
    }

    fn allows_caller(rules: &RbacRules, caller: &Caller<'_>) -> bool {
        assert_eq!(rules.action, RbacAction::Allow as i32);
        rules
            .policies
            .values()
            .any(|p| p.principals.iter().any(|pr| principal_matches(pr, caller)))
    }

    fn principal_matches(p: &Principal, caller: &Caller<'_>) -> bool {
        use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
        match p.identifier.as_ref().unwrap() {
            principal::Identifier::Any(true) => true,
            principal::Identifier::DirectRemoteIp(c) => {
                let ip: IpAddr = c.address_prefix.parse().unwrap();
                let full = if ip.is_ipv4() { 32 } else { 128 };
                assert_eq!(c.prefix_len.unwrap().value, full, "one address");
                ip == caller.ip
            }
            principal::Identifier::Authenticated(a) => {
                let Some(sans) = caller.sans else {
                    return false;
                };
                let pattern = a.principal_name.as_ref().unwrap().match_pattern.as_ref().unwrap();
                sans.iter().any(|san| match pattern {
                    MatchPattern::Exact(e) => san == e,
                    MatchPattern::Prefix(p) => san.starts_with(p.as_str()),
                    other => panic!("unexpected matcher {other:?}"),
                })
            }
            principal::Identifier::OrIds(s) => s.ids.iter().any(|i| principal_matches(i, caller)),
            principal::Identifier::AndIds(s) => s.ids.iter().all(|i| principal_matches(i, caller)),
            principal::Identifier::NotId(i) => !principal_matches(i, caller),
            other => panic!("unexpected principal {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rbac_eval::allows;
    use super::*;
    use crate::generate::{invariants, InboundPolicies, NoPolicies, OutboundPolicies};
    use crate::snapshot::{DataplaneEntry, ProxyKind};
    use meridian_core::policy::matching::{traffic_permissions, ProxyView};
    use meridian_core::policy::meshtrafficpermission::MeshTrafficPermission;
    use prost::Message;
    use serde_json::{json, Value};

    fn dataplane(address: &str, inbounds: Value) -> Dataplane {
        serde_json::from_value(json!({"networking": {"address": address, "inbound": inbounds}})).unwrap()
    }

    fn snapshot(policies: Value) -> MeshSnapshot {
        let entry = |name: &str, address: &str, service: &str| DataplaneEntry {
            name: name.into(),
            spec: dataplane(
                address,
                json!([{"port": 8080, "tags": {"kuma.io/service": service, "version": "v1"}}]),
            ),
        };
        let mut snap = MeshSnapshot {
            zone: "zone-1".into(),
            mesh: "default".into(),
            dataplanes: vec![
                entry("backend-1", "10.0.0.1", "backend"),
                entry("web-1", "10.0.0.2", "web"),
                entry("web-2", "fd00::2", "web"),
                entry("web-3", "web-3.example", "web"),
                entry("batch-1", "10.0.0.4", "batch"),
            ],
            ..Default::default()
        };
        let list: Vec<(String, Value)> = policies
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("mtp-{i}"), p.clone()))
            .collect();
        snap.policies.insert("MeshTrafficPermission".into(), list);
        snap
    }

    /// Resolves MeshTrafficPermission as the zone does: matching, then addresses.
    struct Resolver;

    impl PolicyResolver for Resolver {
        fn outbound(&self, _: &MeshSnapshot, _: &ProxyContext, _: &str) -> OutboundPolicies {
            OutboundPolicies::default()
        }

        fn inbound(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, index: usize) -> InboundPolicies {
            let mtps: Vec<(String, MeshTrafficPermission)> = snapshot.policies["MeshTrafficPermission"]
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::from_value(v.clone()).unwrap()))
                .collect();
            let view = ProxyView::new(&proxy.mesh, &proxy.dataplane);
            InboundPolicies {
                traffic_permissions: resolve_permissions(snapshot, &traffic_permissions(&mtps, &view, index)),
                ..Default::default()
            }
        }
    }

    fn backend() -> ProxyContext {
        ProxyContext {
            mesh: "default".into(),
            name: "backend-1".into(),
            kind: ProxyKind::Proxyless,
            dataplane: dataplane(
                "10.0.0.1",
                json!([{"port": 8080, "tags": {"kuma.io/service": "backend", "version": "v1"}}]),
            ),
            tls: Default::default(),
        }
    }

    fn mtp(top: Value, from: Value) -> Value {
        let spec = json!({"targetRef": top, "from": from});
        meridian_core::spec::check::<MeshTrafficPermission>(spec.clone(), &meridian_core::error::FieldPath::root())
            .unwrap();
        spec
    }

    fn from(kind_and_more: Value, action: &str) -> Value {
        json!({"targetRef": kind_and_more, "default": {"action": action}})
    }

    fn decode_listener(set: &ResourceSet, name: &str) -> Listener {
        let r = set.get(LISTENER, name).unwrap_or_else(|| panic!("no listener {name}"));
        Listener::decode(r.body.value.as_slice()).unwrap()
    }

    fn hcm_of(l: &Listener) -> HttpConnectionManager {
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(l.filter_chains[0].filters.len(), 1, "A36: exactly one network filter");
        let Some(filter::ConfigType::TypedConfig(a)) = &l.filter_chains[0].filters[0].config_type else {
            panic!("no typed config")
        };
        HttpConnectionManager::decode(a.value.as_slice()).unwrap()
    }

    /// The RBAC rules of a listener, `None` without an RBAC filter.
    fn rbac_of(l: &Listener) -> Option<RbacRules> {
        let hcm = hcm_of(l);
        let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"envoy.filters.http.router"), "router last");
        let f = hcm.http_filters.iter().find(|f| f.name == "envoy.filters.http.rbac")?;
        let Some(ConfigType::TypedConfig(a)) = &f.config_type else {
            panic!("no rbac config")
        };
        assert_eq!(
            a.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
        );
        Some(Rbac::decode(a.value.as_slice()).unwrap().rules.unwrap())
    }

    #[test]
    fn the_documented_template() {
        assert_eq!(
            listener_name("127.0.0.1".parse().unwrap(), 50051),
            "grpc/server?xds.resource.listening_address=127.0.0.1:50051"
        );
        assert_eq!(
            listener_name("::".parse().unwrap(), 80),
            "grpc/server?xds.resource.listening_address=[::]:80"
        );
    }

    #[test]
    fn one_listener_per_listening_address_each_with_its_own_socket_address() {
        let set = {
            let mut s = ResourceSet::new();
            let snap = snapshot(json!([]));
            add_listeners(&mut s, &snap, &backend(), &NoPolicies);
            s
        };
        let names: Vec<&str> = set.of_type(LISTENER).map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "grpc/server?xds.resource.listening_address=0.0.0.0:8080",
                "grpc/server?xds.resource.listening_address=10.0.0.1:8080",
                "grpc/server?xds.resource.listening_address=[::]:8080",
            ]
        );
        assert_eq!(invariants::check(&set), Vec::<String>::new());
        for (name, want) in [
            ("10.0.0.1:8080", "10.0.0.1"),
            ("0.0.0.0:8080", "0.0.0.0"),
            ("[::]:8080", "::"),
        ] {
            let l = decode_listener(&set, &format!("grpc/server?xds.resource.listening_address={name}"));
            let Some(AddressKind::SocketAddress(sa)) = l.address.clone().and_then(|a| a.address) else {
                panic!("no socket address")
            };
            assert_eq!(
                (sa.address.as_str(), sa.port_specifier),
                (want, Some(PortSpecifier::PortValue(8080)))
            );
            assert!(l.listener_filters.is_empty() && l.use_original_dst.is_none() && l.api_listener.is_none());
            assert!(l.filter_chains[0].filter_chain_match.is_none());
            let hcm = hcm_of(&l);
            assert_eq!(hcm.xff_num_trusted_hops, 0);
            assert!(hcm.original_ip_detection_extensions.is_empty());
            let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
                panic!("routes are inline")
            };
            let route = &rc.virtual_hosts[0].routes[0];
            assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
            assert!(matches!(route.action, Some(RouteAction::NonForwardingAction(_))));
            assert_eq!(
                rbac_of(&decode_listener(&set, &l.name)),
                None,
                "no MeshTrafficPermission, no RBAC"
            );
        }
    }

    #[test]
    fn a_shared_port_keeps_the_first_inbound_and_hostnames_get_only_wildcards() {
        let mut proxy = backend();
        proxy.dataplane = dataplane(
            "host.example",
            json!([{"port": 8080, "tags": {"kuma.io/service": "a"}},
                   {"port": 8080, "address": "10.0.0.7", "tags": {"kuma.io/service": "b"}},
                   {"port": 9090, "tags": {"kuma.io/service": "c"}}]),
        );
        let mut set = ResourceSet::new();
        add_listeners(&mut set, &snapshot(json!([])), &proxy, &NoPolicies);
        let names: Vec<&str> = set.of_type(LISTENER).map(|r| r.name.as_str()).collect();
        let prefix = "grpc/server?xds.resource.listening_address=";
        let want: Vec<String> = [
            "0.0.0.0:8080",
            "0.0.0.0:9090",
            "10.0.0.7:8080",
            "[::]:8080",
            "[::]:9090",
        ]
        .iter()
        .map(|a| format!("{prefix}{a}"))
        .collect();
        assert_eq!(names, want);
        assert_eq!(
            hcm_of(&decode_listener(&set, &want[0])).stat_prefix,
            "inbound_8080",
            "the first inbound owns the wildcard"
        );
    }

    fn rules_for(policies: Value) -> RbacRules {
        let snap = snapshot(policies);
        let mut set = ResourceSet::new();
        add_listeners(&mut set, &snap, &backend(), &Resolver);
        let names: Vec<String> = set.of_type(LISTENER).map(|r| r.name.clone()).collect();
        let all: Vec<Option<RbacRules>> = names.iter().map(|n| rbac_of(&decode_listener(&set, n))).collect();
        assert!(all.windows(2).all(|w| w[0] == w[1]), "every name carries the same RBAC");
        all.into_iter().next().flatten().expect("an RBAC filter")
    }

    #[test]
    fn with_mtls_callers_are_their_certificates_identities() {
        use super::rbac_eval::allows_identity;
        let mut snap = snapshot(json!([mtp(
            json!({"kind": "MeshService", "name": "backend"}),
            json!([
                from(json!({"kind": "MeshService", "name": "web"}), "Allow"),
                from(
                    json!({"kind": "MeshSubset", "tags": {"kuma.io/service": "web", "version": "v2"}}),
                    "Deny"
                ),
                from(json!({"kind": "MeshSubset", "tags": {"team": "*"}}), "Allow")
            ])
        )]));
        snap.mtls = Some(crate::snapshot::MeshTls {
            mode: meridian_core::mesh::MtlsMode::Strict,
            trust_bundle_pem: "x".into(),
        });
        let mut set = ResourceSet::new();
        let mut server = backend();
        server.tls.certificate_provider = Some("p".into());
        add_listeners(&mut set, &snap, &server, &Resolver);
        let name = set.of_type(LISTENER).next().unwrap().name.clone();
        let listener = decode_listener(&set, &name);
        let rules = rbac_of(&listener).unwrap();
        let web_v1 = [
            "spiffe://default/web",
            "kuma://kuma.io/service/web",
            "kuma://version/v1",
        ];
        let web_v2 = [
            "spiffe://default/web",
            "kuma://kuma.io/service/web",
            "kuma://version/v2",
        ];
        let team = ["spiffe://default/batch", "kuma://team/payments"];
        let other_mesh = ["spiffe://other/web", "kuma://version/v1"];
        assert!(allows_identity(&rules, Some(&web_v1)));
        assert!(!allows_identity(&rules, Some(&web_v2)), "web v2 is denied");
        assert!(allows_identity(&rules, Some(&team)), "any value of team");
        assert!(!allows_identity(&rules, Some(&other_mesh)), "another mesh's web");
        assert!(!allows_identity(&rules, None), "plaintext: no identity");
        // Addresses do not matter any more: web's own address without a
        // certificate is nobody.
        assert!(!allows(&rules, "10.0.0.2"));
        // The server terminates TLS with the node's certificate provider.
        let tls = listener.filter_chains[0]
            .transport_socket
            .as_ref()
            .expect("a TLS transport socket");
        assert_eq!(tls.name, "envoy.transport_sockets.tls");
    }

    #[test]
    fn mesh_deny_refuses_everyone_and_mesh_allow_admits_everyone() {
        let deny = rules_for(json!([mtp(
            json!({"kind": "MeshService", "name": "backend"}),
            json!([from(json!({"kind": "Mesh"}), "Deny")])
        )]));
        assert!(deny.policies.is_empty(), "{deny:?}");
        assert!(!allows(&deny, "10.0.0.2"));
        let allow = rules_for(json!([mtp(
            json!({"kind": "Mesh"}),
            json!([from(json!({"kind": "Mesh"}), "Allow")])
        )]));
        for peer in ["10.0.0.2", "192.0.2.1", "fd00::9"] {
            assert!(allows(&allow, peer), "{peer}");
        }
    }

    #[test]
    fn services_are_known_by_their_dataplanes_addresses() {
        // The later `from` entry wins: web is allowed, everyone else denied.
        let rules = rules_for(json!([mtp(
            json!({"kind": "MeshService", "name": "backend"}),
            json!([
                from(json!({"kind": "Mesh"}), "Deny"),
                from(json!({"kind": "MeshService", "name": "web"}), "Allow")
            ])
        )]));
        assert!(allows(&rules, "10.0.0.2"));
        assert!(allows(&rules, "fd00::2"), "IPv6 callers are /128");
        assert!(!allows(&rules, "10.0.0.4"), "batch is not web");
        assert!(!allows(&rules, "10.0.0.9"), "an unknown caller");
    }

    #[test]
    fn a_more_specific_policy_overrides_and_denies_carve_out_of_later_allows() {
        let rules = rules_for(json!([
            // Mesh-wide: everyone may call everyone.
            mtp(json!({"kind": "Mesh"}), json!([from(json!({"kind": "Mesh"}), "Allow")])),
            // backend: batch is denied, web (v1 only) shadow-denied, i.e. allowed.
            mtp(
                json!({"kind": "MeshService", "name": "backend"}),
                json!([
                    from(
                        json!({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1"}}),
                        "AllowWithShadowDeny"
                    ),
                    from(
                        json!({"kind": "MeshSubset", "tags": {"kuma.io/service": "batch"}}),
                        "Deny"
                    )
                ])
            ),
        ]));
        assert!(!allows(&rules, "10.0.0.4"), "batch denied before the mesh-wide allow");
        assert!(allows(&rules, "10.0.0.2"), "shadow deny allows");
        assert!(allows(&rules, "10.0.0.9"), "anyone else: the mesh-wide allow");
        let principals = &rules.policies[RBAC_POLICY_NAME].principals;
        assert_eq!(principals.len(), 2, "{principals:?}");
    }

    #[test]
    fn rules_about_nobody_are_dropped_and_a_policy_for_another_service_does_not_apply() {
        let rules = rules_for(json!([mtp(
            json!({"kind": "MeshService", "name": "backend"}),
            json!([from(json!({"kind": "MeshService", "name": "nowhere"}), "Allow")])
        )]));
        assert!(rules.policies.is_empty(), "allows nobody: {rules:?}");
        let snap = snapshot(json!([mtp(
            json!({"kind": "MeshService", "name": "web"}),
            json!([from(json!({"kind": "Mesh"}), "Deny")])
        )]));
        let mut set = ResourceSet::new();
        add_listeners(&mut set, &snap, &backend(), &Resolver);
        for r in set.of_type(LISTENER) {
            assert_eq!(rbac_of(&decode_listener(&set, &r.name)), None, "{}", r.name);
        }
    }

    #[test]
    fn resolved_rules_name_their_policy_and_addresses() {
        let snap = snapshot(json!([mtp(
            json!({"kind": "Mesh"}),
            json!([
                from(json!({"kind": "Mesh"}), "Deny"),
                from(json!({"kind": "MeshService", "name": "web"}), "Allow")
            ])
        )]));
        let got = Resolver.inbound(&snap, &backend(), 0).traffic_permissions.unwrap();
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            json!([
                {"policy": "mtp-0", "from": {"kind": "MeshService", "name": "web"}, "action": "Allow",
                 "sources": ["10.0.0.2", "fd00::2"]},
                {"policy": "mtp-0", "from": {"kind": "Mesh"}, "action": "Deny"}
            ])
        );
        assert_eq!(resolve_permissions(&snap, &[]), None);
    }

    #[test]
    fn unchanged_permissions_encode_identically() {
        let policies = json!([mtp(
            json!({"kind": "Mesh"}),
            json!([from(json!({"kind": "MeshService", "name": "web"}), "Allow")])
        )]);
        let versions = || {
            let snap = snapshot(policies.clone());
            let mut set = ResourceSet::new();
            add_listeners(&mut set, &snap, &backend(), &Resolver);
            set.type_version(LISTENER)
        };
        assert_eq!(versions(), versions());
    }
}
