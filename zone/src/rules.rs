//! `GET /meshes/{mesh}/dataplanes/{name}/_rules`: the rules a dataplane's
//! configuration is built from, per policy type, each with the policies it
//! came from (Kuma's inspection of the same name). `toRules` hold the merged
//! configuration towards each destination service; `fromRules` the `from`
//! entries of each inbound in merge order (the last one a client matches
//! wins); policies that are matched but not generated carry the warnings of
//! `meridian_core::unapplied`, so inspection says what has no effect.

use std::collections::{BTreeMap, BTreeSet};

use meridian_core::dataplane::SERVICE_TAG;
use meridian_core::policy::matching::{
    from_contributions, http_route_rules, matching, merge_confs, ordered_to, selects_proxy, tcp_route_conf,
    to_contributions, Contribution, Destination, ProxyView, TargetRefPolicy, Targeted,
};
use meridian_core::policy::meshhttproute::MeshHttpRoute;
use meridian_core::policy::{TargetRef, TargetRefKind};
use meridian_core::unapplied::unapplied;
use meridian_core::ResourceType;
use meridian_xds::snapshot::{MeshSnapshot, ProxyContext};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::policies::decode;

/// Where one rule came from.
fn origin(kind: ResourceType, mesh: &str, names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"resourceMeta": {"type": kind.name(), "mesh": mesh, "name": n}}))
            .collect(),
    )
}

/// The names of `contributions`' policies, each once, in merge order.
fn policy_names<'a, C>(contributions: &[Contribution<'a, C>]) -> Vec<&'a str> {
    let mut seen = BTreeSet::new();
    contributions
        .iter()
        .map(|c| c.policy)
        .filter(|p| seen.insert(*p))
        .collect()
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// What the policies `names` of `kind` accept but do not apply.
fn warnings(snapshot: &MeshSnapshot, kind: ResourceType, names: &[&str]) -> Vec<Value> {
    let specs = snapshot.policies.get(kind.name());
    names
        .iter()
        .filter_map(|n| specs.and_then(|s| s.iter().find(|(name, _)| name == n)))
        .flat_map(|(name, spec)| {
            unapplied(kind, spec)
                .into_iter()
                .map(move |u| json!({"policy": name, "field": u.field, "message": u.message}))
        })
        .collect()
}

fn service_matcher(service: &str) -> Value {
    json!([{"key": SERVICE_TAG, "value": service}])
}

struct Builder<'a> {
    snapshot: &'a MeshSnapshot,
    proxy: &'a ProxyContext,
    view: ProxyView<'a>,
    destinations: &'a [String],
}

impl Builder<'_> {
    fn outbound_rules<P: TargetRefPolicy>(&self, kind: ResourceType, policies: &[(String, P)]) -> Vec<Value> {
        let mut out = Vec::new();
        for d in self.destinations {
            let contributions = to_contributions(policies, &self.view, Destination::Service(d));
            if contributions.is_empty() {
                continue;
            }
            let names = policy_names(&contributions);
            let conf = match merge_confs(contributions.iter().map(|c| c.conf)) {
                Ok(conf) => to_json(&conf),
                Err(e) => json!({"error": e.to_string()}),
            };
            out.push(json!({
                "matchers": service_matcher(d),
                "conf": conf,
                "origin": origin(kind, &self.proxy.mesh, &names),
                "warnings": warnings(self.snapshot, kind, &names),
            }));
        }
        out
    }

    fn inbound_rules<P: TargetRefPolicy>(&self, kind: ResourceType, policies: &[(String, P)]) -> Vec<Value> {
        let inbounds = &self.proxy.dataplane.networking.inbound;
        let mut out = Vec::new();
        for (i, inbound) in inbounds.iter().enumerate() {
            let contributions = from_contributions(policies, &self.view, i);
            if contributions.is_empty() {
                continue;
            }
            let rules: Vec<Value> = contributions
                .iter()
                .map(|c| {
                    json!({
                        "matchers": to_json(c.target_ref),
                        "conf": to_json(c.conf),
                        "origin": origin(kind, &self.proxy.mesh, &[c.policy]),
                    })
                })
                .collect();
            let names = policy_names(&contributions);
            out.push(json!({
                "inbound": {"port": inbound.port, "tags": inbound.tags},
                "rules": rules,
                "warnings": warnings(self.snapshot, kind, &names),
            }));
        }
        out
    }

    /// Routes: the merged rules towards each destination, and the routes
    /// whose `to` entries gave them.
    fn route_rules<P: Targeted, T, C: Serialize>(
        &self,
        kind: ResourceType,
        routes: &[(String, P)],
        entries: impl Fn(&P) -> Vec<(&TargetRef, &T)> + Copy,
        conf: impl Fn(Destination<'_>) -> Result<C, String>,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        for d in self.destinations {
            let dest = Destination::Service(d);
            let contributions = ordered_to(routes, &self.view, dest, entries);
            if contributions.is_empty() {
                continue;
            }
            let names = policy_names(&contributions);
            let conf = match conf(dest) {
                Ok(c) => to_json(&c),
                Err(e) => json!({"error": e}),
            };
            out.push(json!({
                "matchers": service_matcher(d),
                "conf": conf,
                "origin": origin(kind, &self.proxy.mesh, &names),
            }));
        }
        out
    }

    /// Policies that target a MeshHTTPRoute selecting this proxy: one rule
    /// per route, matched by its name, with the merged `to` defaults the
    /// route's rules get on top of the destination's (in the order
    /// `route_to_conf` merges them).
    fn on_route_rules<P: TargetRefPolicy>(
        &self,
        kind: ResourceType,
        policies: &[(String, P)],
        routes: &[(String, MeshHttpRoute)],
    ) -> Vec<Value> {
        let mut by_route: BTreeMap<&str, Vec<&(String, P)>> = BTreeMap::new();
        for entry in policies {
            let top = entry.1.target_ref();
            let Some(route) = top.name.as_deref().filter(|_| top.kind == TargetRefKind::MeshHttpRoute) else {
                continue;
            };
            let selects = routes
                .iter()
                .any(|(name, r)| name == route && selects_proxy(&r.target_ref, &self.view));
            if selects {
                by_route.entry(route).or_default().push(entry);
            }
        }
        by_route
            .into_iter()
            .map(|(route, mut on)| {
                on.sort_by(|a, b| b.0.cmp(&a.0));
                let names: Vec<&str> = on.iter().map(|(n, _)| n.as_str()).collect();
                let conf = match merge_confs(on.iter().flat_map(|(_, p)| p.to_entries()).map(|(_, c)| c)) {
                    Ok(conf) => to_json(&conf),
                    Err(e) => json!({"error": e.to_string()}),
                };
                json!({
                    "matchers": [{"key": "MeshHTTPRoute", "value": route}],
                    "conf": conf,
                    "origin": origin(kind, &self.proxy.mesh, &names),
                    "warnings": warnings(self.snapshot, kind, &names),
                })
            })
            .collect()
    }

    /// Policies that are matched whole (no `to`/`from` merge here): their
    /// top-level reference selects the proxy.
    fn proxy_rule<P: TargetRefPolicy + DeserializeOwned>(&self, kind: ResourceType) -> Option<Value> {
        let policies: Vec<(String, P)> = decode(self.snapshot, kind);
        let matched = matching(&policies, &self.view);
        if matched.is_empty() {
            return None;
        }
        let names: Vec<&str> = matched.iter().map(|(n, _)| n.as_str()).collect();
        let conf = match meridian_core::policy::matching::single_item_conf(&policies, &self.view) {
            Ok(c) => json!(c),
            Err(e) => json!({"error": e.to_string()}),
        };
        Some(json!({
            "conf": conf,
            "origin": origin(kind, &self.proxy.mesh, &names),
            "warnings": warnings(self.snapshot, kind, &names),
        }))
    }
}

/// The `_rules` of `proxy` towards `destinations`.
pub fn rules(snapshot: &MeshSnapshot, proxy: &ProxyContext, destinations: &[String]) -> Value {
    use meridian_core::policy::{
        meshaccesslog::MeshAccessLog, meshcircuitbreaker::MeshCircuitBreaker, meshfaultinjection::MeshFaultInjection,
        meshhealthcheck::MeshHealthCheck, meshloadbalancingstrategy::MeshLoadBalancingStrategy, meshmetric::MeshMetric,
        meshproxypatch::MeshProxyPatch, meshratelimit::MeshRateLimit, meshretry::MeshRetry, meshtcproute::MeshTcpRoute,
        meshtimeout::MeshTimeout, meshtrace::MeshTrace, meshtrafficpermission::MeshTrafficPermission,
    };
    let b = Builder {
        snapshot,
        proxy,
        view: ProxyView::new(&proxy.mesh, &proxy.dataplane),
        destinations,
    };
    let mut out = Vec::new();
    let mut push = |kind: ResourceType, to: Vec<Value>, from: Vec<Value>, proxy_rule: Option<Value>| {
        if to.is_empty() && from.is_empty() && proxy_rule.is_none() {
            return;
        }
        let mut rule = json!({"type": kind.name(), "toRules": to, "fromRules": from});
        if let (Some(p), Value::Object(m)) = (proxy_rule, &mut rule) {
            m.insert("proxyRule".into(), p);
        }
        out.push(rule);
    };

    let http: Vec<(String, MeshHttpRoute)> = decode(snapshot, ResourceType::MeshHTTPRoute);
    let with_routes = |mut to: Vec<Value>, on_route: Vec<Value>| {
        to.extend(on_route);
        to
    };
    let timeouts: Vec<(String, MeshTimeout)> = decode(snapshot, ResourceType::MeshTimeout);
    push(
        ResourceType::MeshTimeout,
        with_routes(
            b.outbound_rules(ResourceType::MeshTimeout, &timeouts),
            b.on_route_rules(ResourceType::MeshTimeout, &timeouts, &http),
        ),
        b.inbound_rules(ResourceType::MeshTimeout, &timeouts),
        None,
    );
    let retries: Vec<(String, MeshRetry)> = decode(snapshot, ResourceType::MeshRetry);
    push(
        ResourceType::MeshRetry,
        with_routes(
            b.outbound_rules(ResourceType::MeshRetry, &retries),
            b.on_route_rules(ResourceType::MeshRetry, &retries, &http),
        ),
        Vec::new(),
        None,
    );
    let breakers: Vec<(String, MeshCircuitBreaker)> = decode(snapshot, ResourceType::MeshCircuitBreaker);
    push(
        ResourceType::MeshCircuitBreaker,
        b.outbound_rules(ResourceType::MeshCircuitBreaker, &breakers),
        b.inbound_rules(ResourceType::MeshCircuitBreaker, &breakers),
        None,
    );
    let balancing: Vec<(String, MeshLoadBalancingStrategy)> = decode(snapshot, ResourceType::MeshLoadBalancingStrategy);
    push(
        ResourceType::MeshLoadBalancingStrategy,
        b.outbound_rules(ResourceType::MeshLoadBalancingStrategy, &balancing),
        Vec::new(),
        None,
    );
    let checks: Vec<(String, MeshHealthCheck)> = decode(snapshot, ResourceType::MeshHealthCheck);
    push(
        ResourceType::MeshHealthCheck,
        b.outbound_rules(ResourceType::MeshHealthCheck, &checks),
        Vec::new(),
        None,
    );
    let faults: Vec<(String, MeshFaultInjection)> = decode(snapshot, ResourceType::MeshFaultInjection);
    push(
        ResourceType::MeshFaultInjection,
        Vec::new(),
        b.inbound_rules(ResourceType::MeshFaultInjection, &faults),
        None,
    );
    let limits: Vec<(String, MeshRateLimit)> = decode(snapshot, ResourceType::MeshRateLimit);
    push(
        ResourceType::MeshRateLimit,
        Vec::new(),
        b.inbound_rules(ResourceType::MeshRateLimit, &limits),
        None,
    );
    let permissions: Vec<(String, MeshTrafficPermission)> = decode(snapshot, ResourceType::MeshTrafficPermission);
    push(
        ResourceType::MeshTrafficPermission,
        Vec::new(),
        b.inbound_rules(ResourceType::MeshTrafficPermission, &permissions),
        None,
    );
    let view = &b.view;
    push(
        ResourceType::MeshHTTPRoute,
        b.route_rules(
            ResourceType::MeshHTTPRoute,
            &http,
            |r: &MeshHttpRoute| r.to.iter().map(|t| (&t.target_ref, t)).collect(),
            |dest| http_route_rules(&http, view, dest).map_err(|e| e.to_string()),
        ),
        Vec::new(),
        None,
    );
    let tcp: Vec<(String, MeshTcpRoute)> = decode(snapshot, ResourceType::MeshTCPRoute);
    push(
        ResourceType::MeshTCPRoute,
        b.route_rules(
            ResourceType::MeshTCPRoute,
            &tcp,
            |r: &MeshTcpRoute| r.to.iter().map(|t| (&t.target_ref, t)).collect(),
            |dest| tcp_route_conf(&tcp, view, dest).map_err(|e| e.to_string()),
        ),
        Vec::new(),
        None,
    );
    let logs: Vec<(String, MeshAccessLog)> = decode(snapshot, ResourceType::MeshAccessLog);
    push(
        ResourceType::MeshAccessLog,
        b.outbound_rules(ResourceType::MeshAccessLog, &logs),
        b.inbound_rules(ResourceType::MeshAccessLog, &logs),
        None,
    );
    push(
        ResourceType::MeshTrace,
        Vec::new(),
        Vec::new(),
        b.proxy_rule::<MeshTrace>(ResourceType::MeshTrace),
    );
    push(
        ResourceType::MeshMetric,
        Vec::new(),
        Vec::new(),
        b.proxy_rule::<MeshMetric>(ResourceType::MeshMetric),
    );
    push(
        ResourceType::MeshProxyPatch,
        Vec::new(),
        Vec::new(),
        b.proxy_rule::<MeshProxyPatch>(ResourceType::MeshProxyPatch),
    );
    json!({"mesh": proxy.mesh, "name": proxy.name, "rules": out})
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_xds::snapshot::{DataplaneEntry, ProxyKind};
    use std::collections::BTreeMap;

    fn snapshot(policies: Vec<(&str, &str, Value)>) -> MeshSnapshot {
        let mut by_type: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for (kind, name, spec) in policies {
            by_type.entry(kind.into()).or_default().push((name.into(), spec));
        }
        MeshSnapshot {
            zone: "z".into(),
            mesh: "default".into(),
            dataplanes: vec![DataplaneEntry {
                name: "web-1".into(),
                spec: serde_json::from_value(json!({"networking": {"address": "10.0.0.1",
                    "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}))
                .unwrap(),
            }],
            policies: by_type,
            ..Default::default()
        }
    }

    fn proxy(snap: &MeshSnapshot) -> ProxyContext {
        ProxyContext {
            mesh: "default".into(),
            name: "web-1".into(),
            kind: ProxyKind::Sidecar,
            dataplane: snap.dataplanes[0].spec.clone(),
            tls: Default::default(),
        }
    }

    #[test]
    fn rules_merge_in_order_and_name_every_policy_they_came_from() {
        let snap = snapshot(vec![
            (
                "MeshTimeout",
                "mesh-wide",
                json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"connectionTimeout": "2s", "idleTimeout": "1h"}}],
                    "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "30m"}}]}),
            ),
            (
                "MeshTimeout",
                "to-backend",
                json!({"targetRef": {"kind": "MeshService", "name": "web"}, "to": [{"targetRef":
                    {"kind": "MeshService", "name": "backend"}, "default": {"connectionTimeout": "5s"}}]}),
            ),
            (
                "MeshTrace",
                "traces",
                json!({"targetRef": {"kind": "Mesh"}, "default": {"backends": [{"type": "Zipkin",
                    "zipkin": {"url": "http://zipkin:9411/api/v2/spans"}}]}}),
            ),
        ]);
        let p = proxy(&snap);
        let out = rules(&snap, &p, &["backend".to_string(), "other".to_string()]);
        let timeout = out["rules"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["type"] == "MeshTimeout"))
            .unwrap();
        let to = timeout["toRules"].as_array().unwrap();
        assert_eq!(to.len(), 2, "{timeout}");
        let backend = to.iter().find(|r| r["matchers"][0]["value"] == "backend").unwrap();
        assert_eq!(
            backend["conf"]["connectionTimeout"], "5s",
            "the narrower policy wins: {backend}"
        );
        assert_eq!(
            backend["conf"]["idleTimeout"], "1h",
            "merged with the mesh-wide one: {backend}"
        );
        let names: Vec<&str> = backend["origin"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["resourceMeta"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["mesh-wide", "to-backend"]);
        let other = to.iter().find(|r| r["matchers"][0]["value"] == "other").unwrap();
        assert_eq!(other["origin"].as_array().unwrap().len(), 1, "{other}");
        let from = &timeout["fromRules"][0];
        assert_eq!(from["inbound"]["port"], 8080);
        assert_eq!(from["rules"][0]["conf"]["idleTimeout"], "30m");
        let trace = out["rules"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["type"] == "MeshTrace"))
            .unwrap();
        assert_eq!(trace["proxyRule"]["origin"][0]["resourceMeta"]["name"], "traces");
        assert_eq!(trace["proxyRule"]["warnings"][0]["field"], "spec", "{trace}");
        assert!(
            out["rules"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["type"] != "MeshRetry"),
            "types with no rule are left out: {out}"
        );
    }

    #[test]
    fn policies_on_a_route_show_as_rules_of_that_route() {
        let route = json!({"targetRef": {"kind": "MeshService", "name": "web"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "default": {}}]}]});
        let snap = snapshot(vec![
            ("MeshHTTPRoute", "api", route),
            (
                "MeshTimeout",
                "on-api",
                json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "api"}, "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"http": {"requestTimeout": "2s"}}}]}),
            ),
            (
                "MeshTimeout",
                "on-other-route",
                json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "nosuch"}, "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"http": {"requestTimeout": "9s"}}}]}),
            ),
        ]);
        let p = proxy(&snap);
        let out = rules(&snap, &p, &["backend".to_string()]);
        let timeout = out["rules"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["type"] == "MeshTimeout"))
            .unwrap_or_else(|| panic!("{out}"));
        let to = timeout["toRules"].as_array().unwrap();
        assert_eq!(to.len(), 1, "only the route that selects this proxy: {timeout}");
        assert_eq!(to[0]["matchers"][0], json!({"key": "MeshHTTPRoute", "value": "api"}));
        assert_eq!(to[0]["conf"]["http"]["requestTimeout"], "2s");
        assert_eq!(to[0]["origin"][0]["resourceMeta"]["name"], "on-api");
    }
}
