//! The zone's policy resolver: which policies apply to a proxy towards each
//! destination and on each inbound, from the mesh snapshot. Matching and
//! merging are `meridian_core::policy::matching`; this module decodes a
//! snapshot's policies once and answers the generator's questions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use meridian_core::dataplane::{Dataplane, SERVICE_TAG};
use meridian_core::policy::matching::{
    from_conf, http_route_rules, ordered_http_routes, route_to_conf, single_item_conf, to_conf, traffic_permissions,
    Destination, ProxyView, Tags,
};
use meridian_core::policy::meshcircuitbreaker::MeshCircuitBreaker;
use meridian_core::policy::meshfaultinjection::MeshFaultInjection;
use meridian_core::policy::meshhttproute::{MeshHttpRoute, Rule};
use meridian_core::policy::meshloadbalancingstrategy::MeshLoadBalancingStrategy;
use meridian_core::policy::meshratelimit::MeshRateLimit;
use meridian_core::policy::meshretry::MeshRetry;
use meridian_core::policy::meshtimeout::MeshTimeout;
use meridian_core::policy::meshtrafficpermission::MeshTrafficPermission;
use meridian_core::ResourceType;
use meridian_xds::generate::cache::SharedCache;
use meridian_xds::generate::{server, InboundPolicies, OutboundPolicies, PolicyResolver, ProxyPolicies, RoutePolicies};
use meridian_xds::snapshot::{MeshSnapshot, ProxyContext};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::xds::ResolverFactory;

/// The policies of one mesh, decoded.
///
/// Most destinations are only ever targeted by `Mesh`-wide entries; for
/// those, every destination gets the same effective configuration, so it is
/// computed once per proxy and reused ([`MeshPolicies::specific`] lists the
/// services some policy names, which are resolved one by one).
#[derive(Default)]
pub struct MeshPolicies {
    /// Services named by some policy (MeshService targets, subset tags).
    specific: HashSet<String>,
    /// The configuration of a proxy towards any destination no policy names.
    generic: Mutex<HashMap<String, Arc<OutboundPolicies>>>,
    /// One `Arc` per distinct configuration (by a hash of its JSON form), so
    /// that proxies with equal policies share what is generated from them.
    interned: Mutex<HashMap<u64, Vec<Arc<OutboundPolicies>>>>,
    /// Resources shared by the proxies generated from this snapshot.
    cache: SharedCache,
    timeouts: Vec<(String, MeshTimeout)>,
    retries: Vec<(String, MeshRetry)>,
    circuit_breakers: Vec<(String, MeshCircuitBreaker)>,
    load_balancing: Vec<(String, MeshLoadBalancingStrategy)>,
    http_routes: Vec<(String, MeshHttpRoute)>,
    tcp_routes: Vec<(String, meridian_core::policy::meshtcproute::MeshTcpRoute)>,
    health_checks: Vec<(String, meridian_core::policy::meshhealthcheck::MeshHealthCheck)>,
    faults: Vec<(String, MeshFaultInjection)>,
    rate_limits: Vec<(String, MeshRateLimit)>,
    traffic_permissions: Vec<(String, MeshTrafficPermission)>,
    access_logs: Vec<(String, meridian_core::policy::meshaccesslog::MeshAccessLog)>,
    traces: Vec<(String, meridian_core::policy::meshtrace::MeshTrace)>,
    metrics: Vec<(String, meridian_core::policy::meshmetric::MeshMetric)>,
    patches: Vec<(String, meridian_core::policy::meshproxypatch::MeshProxyPatch)>,
    /// Whether some MeshTimeout or MeshRetry targets a MeshHTTPRoute (then
    /// each route rule gets its own timeout and retries).
    route_targeted: bool,
}

pub(crate) fn decode<P: DeserializeOwned>(snapshot: &MeshSnapshot, kind: ResourceType) -> Vec<(String, P)> {
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
        let mut specific = HashSet::new();
        for (_, spec) in snapshot.policies.values().flatten() {
            named_services(spec, &mut specific);
        }
        let timeouts: Vec<(String, MeshTimeout)> = decode(snapshot, ResourceType::MeshTimeout);
        let retries: Vec<(String, MeshRetry)> = decode(snapshot, ResourceType::MeshRetry);
        let on_route =
            |t: &meridian_core::policy::TargetRef| t.kind == meridian_core::policy::TargetRefKind::MeshHttpRoute;
        let route_targeted = timeouts.iter().any(|(_, p)| on_route(&p.target_ref))
            || retries.iter().any(|(_, p)| on_route(&p.target_ref));
        MeshPolicies {
            route_targeted,
            specific,
            generic: Mutex::new(HashMap::new()),
            interned: Mutex::new(HashMap::new()),
            cache: SharedCache::default(),
            timeouts,
            retries,
            circuit_breakers: decode(snapshot, ResourceType::MeshCircuitBreaker),
            load_balancing: decode(snapshot, ResourceType::MeshLoadBalancingStrategy),
            http_routes: decode(snapshot, ResourceType::MeshHTTPRoute),
            tcp_routes: decode(snapshot, ResourceType::MeshTCPRoute),
            health_checks: decode(snapshot, ResourceType::MeshHealthCheck),
            faults: decode(snapshot, ResourceType::MeshFaultInjection),
            rate_limits: decode(snapshot, ResourceType::MeshRateLimit),
            traffic_permissions: decode(snapshot, ResourceType::MeshTrafficPermission),
            access_logs: decode(snapshot, ResourceType::MeshAccessLog),
            traces: decode(snapshot, ResourceType::MeshTrace),
            metrics: decode(snapshot, ResourceType::MeshMetric),
            patches: decode(snapshot, ResourceType::MeshProxyPatch),
        }
    }
}

/// 64-bit FNV-1a.
fn hash64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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

/// Collects every service a policy names: `MeshService`/`MeshServiceSubset`
/// references and `kuma.io/service` values of tag selectors.
fn named_services(v: &serde_json::Value, out: &mut HashSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(kind), Some(name)) = (m.get("kind").and_then(|k| k.as_str()), m.get("name")) {
                if matches!(kind, "MeshService" | "MeshServiceSubset") {
                    if let Some(n) = name.as_str() {
                        out.insert(n.to_string());
                    }
                }
            }
            if let Some(s) = m.get("tags").and_then(|t| t.get(SERVICE_TAG)).and_then(|s| s.as_str()) {
                out.insert(s.to_string());
            }
            for child in m.values() {
                named_services(child, out);
            }
        }
        serde_json::Value::Array(a) => {
            for child in a {
                named_services(child, out);
            }
        }
        _ => {}
    }
}

impl PolicyResolver for MeshPolicies {
    fn outbound(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, service: &str) -> OutboundPolicies {
        OutboundPolicies::clone(&self.outbound_shared(snapshot, proxy, service))
    }

    fn outbound_shared(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, service: &str) -> Arc<OutboundPolicies> {
        if self.specific.contains(service) {
            return self.intern(self.resolve_outbound(snapshot, proxy, service));
        }
        if let Some(p) = self.generic.lock().unwrap_or_else(|p| p.into_inner()).get(&proxy.name) {
            return p.clone();
        }
        let p = self.intern(self.resolve_outbound(snapshot, proxy, service));
        self.generic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(proxy.name.clone(), p.clone());
        p
    }

    fn cache(&self) -> Option<&SharedCache> {
        Some(&self.cache)
    }

    fn inbound(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, index: usize) -> InboundPolicies {
        self.resolve_inbound(snapshot, proxy, index)
    }

    fn proxy(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext) -> ProxyPolicies {
        let view = ProxyView::new(&proxy.mesh, &proxy.dataplane);
        ProxyPolicies {
            // A MeshTrace wins over the Mesh's default tracing backend.
            trace: ok_or_log("MeshTrace", single_item_conf(&self.traces, &view))
                .or_else(|| snapshot.spec.tracing.as_ref().and_then(|t| t.as_mesh_trace())),
            // A MeshMetric wins over the Mesh's enabled metrics backend, as
            // in Kuma.
            metric: ok_or_log("MeshMetric", single_item_conf(&self.metrics, &view))
                .or_else(|| snapshot.spec.metrics.as_ref().and_then(|m| m.as_mesh_metric())),
            patch: ok_or_log("MeshProxyPatch", single_item_conf(&self.patches, &view)),
        }
    }
}

impl MeshPolicies {
    /// The shared `Arc` of a configuration equal to `p`.
    fn intern(&self, p: OutboundPolicies) -> Arc<OutboundPolicies> {
        let hash = serde_json::to_vec(&p).map(|b| hash64(&b)).unwrap_or_default();
        let mut interned = self.interned.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = interned.entry(hash).or_default();
        if let Some(found) = bucket.iter().find(|i| ***i == p) {
            return found.clone();
        }
        let p = Arc::new(p);
        bucket.push(p.clone());
        p
    }

    fn resolve_outbound(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, service: &str) -> OutboundPolicies {
        let view = ProxyView::new(&proxy.mesh, &proxy.dataplane);
        let dest = Destination::Service(service);
        let rules: Vec<Rule> = http_route_rules(&self.http_routes, &view, dest).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "MeshHTTPRoutes could not be merged");
            Vec::new()
        });
        // One route per match, in the order Envoy must try them.
        let entries = ordered_http_routes(&rules);
        let http_rules = entries
            .iter()
            .map(|e| Rule {
                matches: vec![e.matched.clone()],
                default: e.conf.clone(),
            })
            .collect();
        // Policies that target a route apply to its rules' requests: each
        // rule (by its whole list of matches) gets its own limits.
        let route_policies = if self.route_targeted {
            entries
                .iter()
                .map(|e| {
                    let matches = rules
                        .iter()
                        .find(|r| r.matches.iter().any(|m| std::ptr::eq(m, e.matched)))
                        .map_or(std::slice::from_ref(e.matched), |r| r.matches.as_slice());
                    RoutePolicies {
                        timeout: ok_or_log(
                            "MeshTimeout",
                            route_to_conf(&self.timeouts, &self.http_routes, &view, dest, matches),
                        ),
                        retry: ok_or_log(
                            "MeshRetry",
                            route_to_conf(&self.retries, &self.http_routes, &view, dest, matches),
                        ),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
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
            health_check: ok_or_log("MeshHealthCheck", to_conf(&self.health_checks, &view, dest)),
            tcp_route: ok_or_log(
                "MeshTCPRoute",
                meridian_core::policy::matching::tcp_route_conf(&self.tcp_routes, &view, dest),
            ),
            route_policies,
            // The Mesh's default logging backend logs the outbounds no
            // MeshAccessLog reaches, as a MeshAccessLog `to` the whole Mesh.
            access_logs: match ok_or_log("MeshAccessLog", to_conf(&self.access_logs, &view, dest)) {
                Some(c) => c.backends.unwrap_or_default(),
                None => snapshot
                    .spec
                    .logging
                    .as_ref()
                    .and_then(|l| l.as_access_log())
                    .into_iter()
                    .collect(),
            },
        }
    }

    fn resolve_inbound(&self, snapshot: &MeshSnapshot, proxy: &ProxyContext, index: usize) -> InboundPolicies {
        let view = ProxyView::new(&proxy.mesh, &proxy.dataplane);
        let anyone = BTreeMap::new();
        InboundPolicies {
            timeout: ok_or_log("MeshTimeout", from_conf(&self.timeouts, &view, index, &anyone)),
            faults: ok_or_log("MeshFaultInjection", from_conf(&self.faults, &view, index, &anyone))
                .and_then(|c| c.http)
                .unwrap_or_default(),
            rate_limit: ok_or_log("MeshRateLimit", from_conf(&self.rate_limits, &view, index, &anyone)),
            // Callers are known by their dataplanes' addresses (docs/decisions/0004).
            traffic_permissions: server::resolve_permissions(
                snapshot,
                &traffic_permissions(&self.traffic_permissions, &view, index),
            ),
            access_logs: ok_or_log("MeshAccessLog", from_conf(&self.access_logs, &view, index, &anyone))
                .and_then(|c| c.backends)
                .unwrap_or_default(),
        }
    }
}

/// The resolver every generation uses.
pub fn resolver_factory() -> ResolverFactory {
    Arc::new(|snapshot: &MeshSnapshot| -> Box<dyn PolicyResolver + Send + Sync> {
        Box::new(MeshPolicies::new(snapshot))
    })
}

#[cfg(test)]
mod rate_limit_tests {
    use super::*;
    use meridian_core::error::FieldPath;
    use meridian_core::policy::meshratelimit::Conf;
    use meridian_core::spec::check;
    use meridian_xds::snapshot::{DataplaneEntry, ProxyKind};
    use serde_json::Value;

    fn http_limit(num: u32, interval: &str) -> Value {
        json!({"local": {"http": {"requestRate": {"num": num, "interval": interval}}}})
    }

    fn policy(top: Value, default: Value) -> Value {
        let spec = json!({"targetRef": top, "from": [{"targetRef": {"kind": "Mesh"}, "default": default}]});
        check::<MeshRateLimit>(spec.clone(), &FieldPath::root()).unwrap();
        spec
    }

    fn dataplane(name: &str, inbounds: Value) -> DataplaneEntry {
        DataplaneEntry {
            name: name.into(),
            spec: serde_json::from_value(json!({"networking": {"address": "10.0.0.1", "inbound": inbounds}})).unwrap(),
        }
    }

    fn snapshot() -> MeshSnapshot {
        let policies = vec![
            (
                "mesh-wide".to_string(),
                policy(
                    json!({"kind": "Mesh"}),
                    json!({"local": {
                        "http": {"requestRate": {"num": 100, "interval": "1s"},
                                 "onRateLimit": {"status": 429, "headers": {"set": [{"name": "x-limited", "value": "yes"}]}}},
                        "tcp": {"connectionRate": {"num": 50, "interval": "1s"}}}}),
                ),
            ),
            (
                "backend-limit".to_string(),
                policy(json!({"kind": "MeshService", "name": "backend"}), http_limit(5, "10s")),
            ),
            (
                "backend-v2-off".to_string(),
                policy(
                    json!({"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}),
                    json!({"local": {"http": {"disabled": true}}}),
                ),
            ),
            (
                "gateways".to_string(),
                policy(json!({"kind": "Mesh", "proxyTypes": ["Gateway"]}), http_limit(1, "1m")),
            ),
        ];
        MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            dataplanes: vec![
                dataplane(
                    "backend-1",
                    json!([{"port": 8080, "tags": {"kuma.io/service": "backend", "version": "v1"}},
                           {"port": 9000, "tags": {"kuma.io/service": "backend-admin"}}]),
                ),
                dataplane(
                    "backend-2",
                    json!([{"port": 8080, "tags": {"kuma.io/service": "backend", "version": "v2"}}]),
                ),
                dataplane("web-1", json!([{"port": 8080, "tags": {"kuma.io/service": "web"}}])),
            ],
            policies: BTreeMap::from([("MeshRateLimit".to_string(), policies)]),
            ..Default::default()
        }
    }

    fn inbound(snap: &MeshSnapshot, name: &str, index: usize) -> Option<Conf> {
        let dp = snap.dataplanes.iter().find(|d| d.name == name).unwrap();
        let proxy = ProxyContext {
            mesh: "default".into(),
            name: name.into(),
            kind: ProxyKind::Sidecar,
            dataplane: dp.spec.clone(),
            tls: Default::default(),
        };
        MeshPolicies::new(snap).inbound(snap, &proxy, index).rate_limit
    }

    fn as_json(c: Option<Conf>) -> Value {
        serde_json::to_value(c).unwrap()
    }

    #[test]
    fn from_rules_merge_from_least_to_most_specific() {
        let snap = snapshot();
        // Only the Mesh-wide policy selects web (the gateway one does not).
        assert_eq!(
            as_json(inbound(&snap, "web-1", 0)),
            json!({"local": {
                "http": {"requestRate": {"num": 100, "interval": "1s"},
                         "onRateLimit": {"status": 429, "headers": {"set": [{"name": "x-limited", "value": "yes"}]}}},
                "tcp": {"connectionRate": {"num": 50, "interval": "1s"}}}})
        );
        // MeshService backend overrides the rate and keeps the rest.
        let v1 = inbound(&snap, "backend-1", 0);
        assert_eq!(
            as_json(v1.clone())["local"]["http"]["requestRate"],
            json!({"num": 5, "interval": "10s"})
        );
        assert_eq!(as_json(v1.clone())["local"]["http"]["onRateLimit"]["status"], 429);
        assert_eq!(as_json(v1)["local"]["tcp"]["connectionRate"]["num"], 50);
        // The other inbound of the same proxy is not `backend`.
        assert_eq!(
            as_json(inbound(&snap, "backend-1", 1))["local"]["http"]["requestRate"]["num"],
            100
        );
        // The subset policy, the most specific, turns the HTTP limit off.
        let v2 = as_json(inbound(&snap, "backend-2", 0));
        assert_eq!(v2["local"]["http"]["disabled"], true);
        assert_eq!(v2["local"]["http"]["requestRate"]["num"], 5);
    }

    #[test]
    fn equally_specific_policies_let_the_first_name_win_and_none_means_none() {
        let mut snap = snapshot();
        if let Some(list) = snap.policies.get_mut("MeshRateLimit") {
            list.push((
                "aaa-mesh".to_string(),
                policy(json!({"kind": "Mesh"}), http_limit(7, "2s")),
            ));
        }
        assert_eq!(
            as_json(inbound(&snap, "web-1", 0))["local"]["http"]["requestRate"],
            json!({"num": 7, "interval": "2s"})
        );
        snap.policies.clear();
        assert_eq!(inbound(&snap, "web-1", 0), None);
    }
}

#[cfg(test)]
mod outbound_policy_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meridian_core::decode::{decode_all, Format};
    use meridian_xds::snapshot::{DataplaneEntry, ProxyKind};
    use serde_json::Value;

    /// web and worker call backend (http) and db (tcp), with `yaml`'s policies.
    fn snapshot(yaml: &str) -> MeshSnapshot {
        let mut snap = MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            ..Default::default()
        };
        for (name, service) in [("web-1", "web"), ("worker-1", "worker")] {
            snap.dataplanes.push(DataplaneEntry {
                name: name.into(),
                spec: serde_json::from_value(json!({"networking": {"address": "10.0.0.1",
                    "inbound": [{"port": 1, "tags": {SERVICE_TAG: service}}]}}))
                .unwrap(),
            });
        }
        for doc in decode_all(yaml, Format::Yaml).unwrap() {
            snap.policies
                .entry(doc.key.kind.name().to_string())
                .or_default()
                .push((doc.key.name, doc.spec));
        }
        snap
    }

    fn outbound(snap: &MeshSnapshot, proxy: &str, service: &str) -> Value {
        let dp = snap.dataplanes.iter().find(|d| d.name == proxy).unwrap();
        let ctx = ProxyContext {
            mesh: "default".into(),
            name: proxy.into(),
            kind: ProxyKind::Sidecar,
            dataplane: dp.spec.clone(),
            tls: Default::default(),
        };
        // As the policies endpoint shows it.
        serde_json::to_value(MeshPolicies::new(snap).outbound(snap, &ctx, service)).unwrap()
    }

    const HEALTH_CHECKS: &str = r#"
type: MeshHealthCheck
mesh: default
name: all-tcp
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default: {interval: 20s, tcp: {}}
---
type: MeshHealthCheck
mesh: default
name: web-to-backend
spec:
  targetRef: {kind: MeshService, name: web}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      tcp: {disabled: true}
      http: {path: /health}
"#;

    #[test]
    fn health_checks_merge_by_target_ref() {
        let snap = snapshot(HEALTH_CHECKS);
        let web = outbound(&snap, "web-1", "backend");
        assert_eq!(
            web["healthCheck"],
            json!({"interval": "20s", "tcp": {"disabled": true}, "http": {"path": "/health"}})
        );
        // Another client, or another destination: the Mesh-wide check only.
        let mesh_wide = json!({"interval": "20s", "tcp": {}});
        assert_eq!(outbound(&snap, "worker-1", "backend")["healthCheck"], mesh_wide);
        assert_eq!(outbound(&snap, "web-1", "db")["healthCheck"], mesh_wide);
        assert_eq!(outbound(&snap, "web-1", "unnamed")["healthCheck"], mesh_wide);
        assert_eq!(outbound(&snapshot(""), "web-1", "db").get("healthCheck"), None);
    }

    const TCP_ROUTES: &str = r#"
type: MeshTCPRoute
mesh: default
name: db-split
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: db}
    rules:
    - default:
        backendRefs:
        - {kind: MeshServiceSubset, name: db, tags: {version: v1}, weight: 90}
        - {kind: MeshServiceSubset, name: db, tags: {version: v2}, weight: 10}
---
type: MeshTCPRoute
mesh: default
name: worker-db
spec:
  targetRef: {kind: MeshService, name: worker}
  to:
  - targetRef: {kind: MeshService, name: db}
    rules:
    - default:
        backendRefs:
        - {kind: MeshService, name: db-replica}
"#;

    #[test]
    fn tcp_routes_select_by_target_ref_and_the_most_specific_wins() {
        let snap = snapshot(TCP_ROUTES);
        let web = outbound(&snap, "web-1", "db");
        let weights: Vec<(Value, Value)> = web["tcpRoute"]["backendRefs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["tags"]["version"].clone(), b["weight"].clone()))
            .collect();
        assert_eq!(weights, [(json!("v1"), json!(90)), (json!("v2"), json!(10))]);
        assert_eq!(
            outbound(&snap, "worker-1", "db")["tcpRoute"],
            json!({"backendRefs": [{"kind": "MeshService", "name": "db-replica"}]})
        );
        assert_eq!(outbound(&snap, "web-1", "backend").get("tcpRoute"), None);
    }
}
