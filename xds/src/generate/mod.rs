//! Generation: pure functions from a [`MeshSnapshot`], a proxy and the
//! policies that apply to it to the proxy's [`ResourceSet`].
//!
//! Policy matching and merging happen before generation (in
//! `meridian_core::policy::matching`); the generator receives, per
//! destination service, the effective configuration in [`OutboundPolicies`].

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use meridian_core::policy::{
    meshaccesslog, meshcircuitbreaker, meshfaultinjection, meshhttproute, meshloadbalancingstrategy, meshmetric,
    meshproxypatch, meshretry, meshtimeout, meshtrace,
};
use prost::{Message, Name};

use crate::snapshot::{MeshSnapshot, ProxyContext};

pub mod cache;
pub mod clusters;
pub mod endpoints;
pub mod ingress;
pub mod invariants;
pub mod observability;
pub mod patch;
pub mod proxyless;
pub mod routes;
pub mod server;
pub mod sidecar;
pub mod tls;

/// The effective configuration of a proxy towards one destination service.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundPolicies {
    pub timeout: Option<meshtimeout::Conf>,
    pub retry: Option<meshretry::Conf>,
    pub circuit_breaker: Option<meshcircuitbreaker::Conf>,
    pub load_balancing: Option<meshloadbalancingstrategy::Conf>,
    /// MeshHTTPRoute rules for this destination, highest precedence first.
    pub http_rules: Vec<meshhttproute::Rule>,
    /// Faults the destination's side injects for this client.
    pub faults: Vec<meshfaultinjection::FaultConf>,
    /// MeshHealthCheck: active checks of the destination's endpoints
    /// (Envoy sidecars only; gRPC clients do not health-check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<meridian_core::policy::meshhealthcheck::Conf>,
    /// MeshTCPRoute: where TCP traffic to this destination goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_route: Option<meridian_core::policy::meshtcproute::RuleConf>,
    /// One entry per `http_rules` entry, in the same order, when some
    /// MeshTimeout or MeshRetry targets a MeshHTTPRoute: that rule's requests
    /// take these instead of `timeout` and `retry`. Empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route_policies: Vec<RoutePolicies>,
    /// MeshAccessLog `to`: where this proxy logs its traffic to the
    /// destination (Envoy sidecars only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_logs: Vec<meshaccesslog::Backend>,
}

/// The timeout and retries of one MeshHTTPRoute rule's requests: the
/// destination's, merged with the policies that target the route.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutePolicies {
    pub timeout: Option<meshtimeout::Conf>,
    pub retry: Option<meshretry::Conf>,
}

/// The effective configuration of a proxy's inbound: what applies to the
/// traffic it receives.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPolicies {
    pub timeout: Option<meshtimeout::Conf>,
    pub faults: Vec<meshfaultinjection::FaultConf>,
    /// MeshRateLimit `local` limits every client of this inbound shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<meridian_core::policy::meshratelimit::Conf>,
    /// MeshTrafficPermission rules, highest precedence first; `None` when no
    /// MeshTrafficPermission selects the inbound (every caller is allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_permissions: Option<Vec<server::PermissionRule>>,
    /// MeshAccessLog `from`: where the inbound's traffic is logged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_logs: Vec<meshaccesslog::Backend>,
}

/// What applies to a proxy as a whole rather than to one destination or
/// inbound: the single-item policies (and the Mesh's own backends).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPolicies {
    /// MeshTrace: tracing of every HTTP connection manager.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<meshtrace::Conf>,
    /// MeshMetric: the metrics the proxy exposes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<meshmetric::Conf>,
    /// MeshProxyPatch: changes applied last (Envoy sidecars).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<meshproxypatch::Conf>,
}

/// Gives generation the effective policies of a proxy.
pub trait PolicyResolver {
    /// The effective configuration of `proxy` towards `service`.
    fn outbound(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, service: &str) -> OutboundPolicies;

    /// [`PolicyResolver::outbound`], shared: a resolver with a
    /// [`PolicyResolver::cache`] answers equal configurations with the same
    /// `Arc`, which is what lets proxies share what is built from it.
    fn outbound_shared(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, service: &str) -> Arc<OutboundPolicies> {
        Arc::new(self.outbound(snapshot, proxy, service))
    }

    /// The effective configuration of the proxy's inbound number `index`.
    fn inbound(&self, _snapshot: &MeshSnapshot, _proxy: &ProxyContext, _index: usize) -> InboundPolicies {
        InboundPolicies::default()
    }

    /// What applies to the proxy as a whole.
    fn proxy(&self, _snapshot: &MeshSnapshot, _proxy: &ProxyContext) -> ProxyPolicies {
        ProxyPolicies::default()
    }

    /// Resources shared by the proxies generated with this resolver (one
    /// snapshot); `None` builds everything per proxy.
    fn cache(&self) -> Option<&cache::SharedCache> {
        None
    }
}

/// A resolver that applies no policies (tests, and a mesh without any).
pub struct NoPolicies;

impl PolicyResolver for NoPolicies {
    fn outbound(&self, _: &MeshSnapshot, _: &ProxyContext, _: &str) -> OutboundPolicies {
        OutboundPolicies::default()
    }
}

/// Packs a message into an `Any` with its type URL.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// A config source pointing at the ADS stream itself.
pub fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn u32_value(v: u32) -> UInt32Value {
    UInt32Value { value: v }
}

/// The cluster name of a service, or of a subset of it (`svc` or
/// `svc|version=v1,zone=z`): stable and unique per tag set.
pub fn cluster_name(service: &str, subset: &BTreeMap<String, String>) -> String {
    if subset.is_empty() {
        service.to_string()
    } else {
        let tags: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{service}|{}", tags.join(","))
    }
}
