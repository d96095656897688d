//! What Meridian accepts and stores but does not apply (yet), per resource:
//! the API returns these as warnings with every write, so that nothing valid
//! is dropped without a word. Keep this list equal to what generation does
//! (docs/decisions/0003-xds.md, "still not generated").

use serde_json::Value;

use crate::ResourceType;

/// One accepted field (or whole resource) that has no effect.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unapplied {
    /// The field's path, as validation errors name fields (`spec.to[0]…`).
    pub field: String,
    pub message: String,
}

/// What `ProvidedTLS` (MeshMetric) and `providedTLS` (Mesh.metrics) do.
const PROVIDED_TLS: &str = "served over TLS with the certificate and key that meridian-dp --metrics-cert-file and --metrics-key-file name; a proxy whose agent names none gets no Prometheus listener (logged by the zone)";

const NOT_GENERATED: &str =
    "accepted and stored, but not generated into any proxy's configuration yet: it has no effect";

/// The parts of `spec` (a validated `kind`) that have no effect, with why.
pub fn unapplied(kind: ResourceType, spec: &Value) -> Vec<Unapplied> {
    let mut out = Vec::new();
    let mut note = |field: String, message: &str| {
        out.push(Unapplied {
            field,
            message: message.to_string(),
        })
    };
    match kind {
        ResourceType::MeshAccessLog => note(
            "spec".into(),
            "applies to Envoy sidecars; gRPC clients and servers (proxyless) take no access-log configuration over xDS, so it has no effect on them",
        ),
        ResourceType::MeshTrace => note(
            "spec".into(),
            "applies to Envoy sidecars; gRPC clients and servers (proxyless) take no tracing configuration over xDS, so it has no effect on them",
        ),
        ResourceType::MeshMetric => {
            note(
                "spec".into(),
                "applies to Envoy sidecars run by meridian-dp, which serves the Prometheus endpoint (profiles, applications); gRPC clients and servers (proxyless) take no metrics configuration over xDS, so it has no effect on them",
            );
            let Some(default) = spec.get("default") else {
                return out;
            };
            for (i, b) in default.get("backends").and_then(Value::as_array).into_iter().flatten().enumerate() {
                match b.pointer("/prometheus/tls/mode").and_then(Value::as_str) {
                    Some("ProvidedTLS") => note(
                        format!("spec.default.backends[{i}].prometheus.tls.mode"),
                        PROVIDED_TLS,
                    ),
                    Some("ActiveMTLSBackend") => note(
                        format!("spec.default.backends[{i}].prometheus.tls.mode"),
                        "not applied (Kuma 2.7 no longer supports it either): no Prometheus listener is generated for this backend",
                    ),
                    _ => {}
                }
            }
        }
        ResourceType::MeshProxyPatch => note(
            "spec".into(),
            "applies to Envoy sidecars; gRPC clients and servers (proxyless) are not patched, so it has no effect on them",
        ),
        ResourceType::MeshLoadBalancingStrategy => {
            const GRPC: &str = "gRPC clients (proxyless)";
            for (i, default) in defaults(spec, "to") {
                let at = format!("spec.to[{i}].default");
                if let Some(la) = default.get("localityAwareness") {
                    if la.pointer("/crossZone/failoverThreshold").is_some() {
                        note(
                            format!("{at}.localityAwareness.crossZone.failoverThreshold"),
                            &format!("applies to Envoy sidecars; {GRPC} fail over to another zone only when none of this zone's endpoints is reachable, so it has no effect on them"),
                        );
                    }
                }
                let Some(lb) = default.get("loadBalancer") else {
                    continue;
                };
                match lb.get("type").and_then(Value::as_str) {
                    Some(t @ ("LeastRequest" | "Random" | "Maglev")) => note(
                        format!("{at}.loadBalancer.type"),
                        &format!("{t} applies to Envoy sidecars; {GRPC} balance with round robin or ring hash only, and get round robin"),
                    ),
                    Some("RingHash") => {
                        let ring = lb.get("ringHash");
                        if ring.and_then(|r| r.get("hashFunction")).and_then(Value::as_str) == Some("MurmurHash2") {
                            note(
                                format!("{at}.loadBalancer.ringHash.hashFunction"),
                                &format!("applies to Envoy sidecars; {GRPC} hash with xxHash (gRFC A42)"),
                            );
                        }
                        for (j, h) in ring
                            .and_then(|r| r.get("hashPolicies"))
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .enumerate()
                        {
                            let grpc_takes = match h.get("type").and_then(Value::as_str) {
                                Some("Header") => true,
                                Some("FilterState") => {
                                    h.pointer("/filterState/key").and_then(Value::as_str) == Some("io.grpc.channel_id")
                                }
                                _ => false,
                            };
                            if !grpc_takes {
                                note(
                                    format!("{at}.loadBalancer.ringHash.hashPolicies[{j}]"),
                                    &format!("applies to Envoy sidecars; {GRPC} hash only by header or by the filter state key io.grpc.channel_id (gRFC A42)"),
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        ResourceType::MeshRetry => {
            for (i, default) in defaults(spec, "to") {
                for (proto, fields) in [
                    (
                        "http",
                        &[
                            "rateLimitedBackOff",
                            "retriableResponseHeaders",
                            "retriableRequestHeaders",
                            "hostSelection",
                            "hostSelectionMaxAttempts",
                        ][..],
                    ),
                    ("grpc", &["rateLimitedBackOff"][..]),
                ] {
                    for field in fields {
                        if default.get(proto).and_then(|p| p.get(field)).is_some() {
                            note(format!("spec.to[{i}].default.{proto}.{field}"), NOT_GENERATED);
                        }
                    }
                }
            }
        }
        ResourceType::MeshFaultInjection => {
            for list in ["from", "to"] {
                for (i, default) in defaults(spec, list) {
                    for (j, fault) in default.get("http").and_then(Value::as_array).into_iter().flatten().enumerate() {
                        if fault.get("responseBandwidth").is_some() {
                            note(
                                format!("spec.{list}[{i}].default.http[{j}].responseBandwidth"),
                                "applies to Envoy sidecars; proxyless gRPC clients and servers have no response rate limit (gRFC A33), so it has no effect on them",
                            );
                        }
                    }
                }
            }
        }
        ResourceType::Mesh => {
            for (field, policy, applied) in [
                (
                    "logging",
                    "TrafficLog",
                    "logs every outbound of the mesh's Envoy sidecars that no MeshAccessLog reaches, as a MeshAccessLog `to` the whole Mesh would",
                ),
                (
                    "tracing",
                    "TrafficTrace",
                    "traces every Envoy sidecar of the mesh that no MeshTrace selects, as a MeshTrace of the whole Mesh would",
                ),
            ] {
                let Some(section) = spec.get(field).filter(|v| !v.is_null()) else {
                    continue;
                };
                let default = section
                    .get("defaultBackend")
                    .and_then(Value::as_str)
                    .filter(|d| !d.is_empty());
                match default {
                    None => note(
                        field.into(),
                        "has no effect: no defaultBackend is set, and only the default backend is applied",
                    ),
                    Some(_) => note(
                        field.into(),
                        &format!("the default backend {applied} (Kuma applies it only through {policy} policies, which Meridian does not accept); other backends have no effect; gRPC clients and servers (proxyless) take no such configuration over xDS"),
                    ),
                }
                let chosen = section
                    .get("backends")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .find(|(_, b)| default.is_some() && b.get("name").and_then(Value::as_str) == default);
                if let Some((i, b)) = chosen {
                    if b.pointer("/conf/apiVersion").and_then(Value::as_str) == Some("httpJsonV1") {
                        note(
                            format!("{field}.backends[{i}].conf.apiVersion"),
                            "httpJsonV1 is sent as httpJson: Envoy no longer has Zipkin's v1 API",
                        );
                    }
                }
            }
            if let Some(metrics) = spec.get("metrics").filter(|v| !v.is_null()) {
                let enabled = metrics.get("enabledBackend").and_then(Value::as_str);
                let backend = metrics
                    .get("backends")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .find(|(_, b)| enabled.is_some() && b.get("name").and_then(Value::as_str) == enabled);
                match backend {
                    None => {}
                    Some((i, b)) => {
                        let conf = b.get("conf").cloned().unwrap_or(Value::Null);
                        let at = format!("metrics.backends[{i}].conf");
                        let port_ok = conf
                            .get("port")
                            .is_none_or(|p| p.as_i64().is_some_and(|p| (1..=65535).contains(&p)));
                        let path_ok = conf
                            .get("path")
                            .is_none_or(|p| p.as_str().is_some_and(|p| p.starts_with('/')));
                        if !port_ok || !path_ok {
                            note(
                                at.clone(),
                                "no metrics listener: the port must be 1-65535 and the path absolute",
                            );
                        }
                        match conf.pointer("/tls/mode").and_then(Value::as_str) {
                            Some("providedTLS") => note(
                                format!("{at}.tls.mode"),
                                PROVIDED_TLS,
                            ),
                            Some("activeMTLSBackend") => note(
                                format!("{at}.tls.mode"),
                                "not applied: the Prometheus endpoint is served in plaintext",
                            ),
                            _ => {}
                        }
                        note(
                            "metrics".into(),
                            "applies to Envoy sidecars (a Prometheus listener, unless a MeshMetric selects the proxy); gRPC clients and servers (proxyless) take no metrics configuration over xDS, so it has no effect on them",
                        );
                    }
                }
            }
            if spec.pointer("/routing/zoneEgress") == Some(&Value::Bool(true)) {
                note(
                    "routing.zoneEgress".into(),
                    "has no effect: it routes traffic to external services through a zone egress, and Meridian models neither",
                );
            }
            if spec.pointer("/routing/localityAwareLoadBalancing").is_some() {
                note(
                    "routing.localityAwareLoadBalancing".into(),
                    "has no effect: endpoints are always grouped by zone, this zone first (MeshLoadBalancingStrategy changes the order)",
                );
            }
        }
        ResourceType::MeshHealthCheck => note(
            "spec".into(),
            "applies to Envoy sidecars; proxyless gRPC clients do no active health checking, so it has no effect on them",
        ),
        _ => {}
    }
    out
}

/// `(index, default)` of each entry of `spec.<list>`.
fn defaults<'a>(spec: &'a Value, list: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    spec.get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, e)| e.get("default").map(|d| (i, d)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn whole_policies_not_generated_are_named() {
        for kind in [
            ResourceType::MeshAccessLog,
            ResourceType::MeshTrace,
            ResourceType::MeshMetric,
        ] {
            let got = unapplied(kind, &json!({}));
            assert_eq!(got.len(), 1, "{kind}");
            assert!(got[0].message.contains("proxyless"), "{}", got[0].message);
        }
        assert!(unapplied(ResourceType::MeshTimeout, &json!({"to": []})).is_empty());
        let mesh = unapplied(ResourceType::Mesh, &json!({"routing": {"zoneEgress": true}}));
        assert_eq!(mesh[0].field, "routing.zoneEgress");
        assert!(unapplied(ResourceType::Mesh, &json!({"mtls": {}})).is_empty());
    }

    #[test]
    fn fields_not_generated_are_named_by_path() {
        let lb = json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {
            "localityAwareness": {"localZone": {"affinityTags": [{"key": "k8s.io/node"}]},
                                  "crossZone": {"failoverThreshold": {"percentage": 50}}},
            "loadBalancer": {"type": "RingHash", "ringHash": {"minRingSize": 1024, "hashFunction": "MurmurHash2",
                "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}},
                                 {"type": "Cookie", "cookie": {"name": "session"}},
                                 {"type": "FilterState", "filterState": {"key": "io.grpc.channel_id"}}]}}}}]});
        let fields: Vec<String> = unapplied(ResourceType::MeshLoadBalancingStrategy, &lb)
            .into_iter()
            .map(|u| u.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.to[0].default.localityAwareness.crossZone.failoverThreshold",
                "spec.to[0].default.loadBalancer.ringHash.hashFunction",
                "spec.to[0].default.loadBalancer.ringHash.hashPolicies[1]",
            ]
        );
        let plain = json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {"type": "RingHash"}}}]});
        assert!(unapplied(ResourceType::MeshLoadBalancingStrategy, &plain).is_empty());
        let random = json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {"type": "Random"}}}]});
        let got = unapplied(ResourceType::MeshLoadBalancingStrategy, &random);
        assert_eq!(got[0].field, "spec.to[0].default.loadBalancer.type");
        assert!(got[0].message.contains("round robin"), "{}", got[0].message);
        let metric = json!({"targetRef": {"kind": "Mesh"}, "default": {
            "sidecar": {"includeUnused": true, "profiles": {"appendProfiles": [{"name": "Basic"}]}},
            "applications": [{"port": 8080}],
            "backends": [{"type": "Prometheus", "prometheus": {"port": 5670, "tls": {"mode": "ProvidedTLS"}}},
                         {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:4317"}}]}});
        let fields: Vec<String> = unapplied(ResourceType::MeshMetric, &metric)
            .into_iter()
            .map(|u| u.field)
            .collect();
        assert_eq!(fields, ["spec", "spec.default.backends[0].prometheus.tls.mode",]);
        let retry = json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {
            "http": {"numRetries": 1, "hostSelection": [{"predicate": "OmitPreviousHosts"}]}}}]});
        let got = unapplied(ResourceType::MeshRetry, &retry);
        assert_eq!(got[0].field, "spec.to[0].default.http.hostSelection");
    }
}
