#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Golden files for generated xDS, and Envoy's own validation of it.
//!
//! A few representative meshes are written here as the YAML a user would
//! apply (validated by `meridian_core::decode`), turned into the
//! [`MeshSnapshot`] the zone would build, and generated with the zone's real
//! policy resolver ([`MeshPolicies`]). Each output is rendered as JSON — type
//! URL, name, content version and the message field by field, `Any`s
//! unpacked — and compared with `tests/golden/xds/<case>.json`.
//!
//! After an intended change of generation, regenerate and review the diff:
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test -p meridian-e2e --test xds_golden
//! ```
//!
//! The sidecar output of every snapshot also goes through Envoy's
//! protoc-gen-validate rules (`validate_envoy`, which needs the venv that
//! `scripts/test-all.sh` installs).

use std::path::PathBuf;

use meridian_core::dataplane::{Dataplane, ZoneIngress};
use meridian_core::decode::{decode_all, Document, Format};
use meridian_core::defaults::initial_policies;
use meridian_core::mesh::Mesh;
use meridian_core::ResourceType;
use meridian_e2e::xds_clients::validate_envoy;
use meridian_xds::generate::tls::DEFAULT_CERTIFICATE_PROVIDER;
use meridian_xds::generate::{ingress, invariants, proxyless, sidecar};
use meridian_xds::resources::{ResourceSet, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use meridian_xds::snapshot::{
    DataplaneEntry, MeshSnapshot, MeshTls, ProxyContext, ProxyIdentity, ProxyKind, ProxyTls, RemoteIngress,
};
use meridian_zone::policies::MeshPolicies;
use serde_json::json;
use std::sync::Arc;

const MESH: &str = "default";
/// The label that says which zone a synced resource comes from.
const ZONE_LABEL: &str = "kuma.io/zone";

/// Resource types in the order a reader follows them: listener → routes →
/// clusters → endpoints.
const READING_ORDER: [&str; 5] = [LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET];

// ---------------------------------------------------------------------------
// The meshes.

/// web (http) calls backend (grpc, two instances) and db (tcp), with the
/// mesh's four default policies and nothing else.
const WEB_BACKEND_DB: &str = r#"
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: db}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound:
  - port: 15001
    servicePort: 9090
    tags: {kuma.io/service: backend, kuma.io/protocol: grpc, version: v1}
---
type: Dataplane
mesh: default
name: backend-2
networking:
  address: 10.0.0.3
  inbound:
  - port: 15001
    servicePort: 9090
    tags: {kuma.io/service: backend, kuma.io/protocol: grpc, version: v2}
---
type: Dataplane
mesh: default
name: db-1
networking:
  address: 10.0.0.4
  inbound:
  - port: 5432
    tags: {kuma.io/service: db, kuma.io/protocol: tcp}
"#;

/// A gRPC client of backend (v1 and v2) with a weighted split, retries, a
/// timeout and fault injection on top of the defaults.
const GRPC_WITH_POLICIES: &str = r#"
type: Dataplane
mesh: default
name: client-1
networking:
  address: 127.0.0.10
  inbound:
  - port: 1
    tags: {kuma.io/service: client}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
---
type: Dataplane
mesh: default
name: backend-v1
networking:
  address: 127.0.0.1
  inbound:
  - port: 50051
    tags: {kuma.io/service: backend, kuma.io/protocol: grpc, version: v1}
---
type: Dataplane
mesh: default
name: backend-v2
networking:
  address: 127.0.0.2
  inbound:
  - port: 50051
    tags: {kuma.io/service: backend, kuma.io/protocol: grpc, version: v2}
---
type: MeshHTTPRoute
mesh: default
name: backend-split
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    rules:
    - matches:
      - path:
          type: PathPrefix
          value: /meridian.test.Echo
        headers:
        - type: Exact
          name: x-canary
          value: "true"
      default:
        backendRefs:
        - kind: MeshServiceSubset
          name: backend
          tags: {version: v2}
          weight: 100
    - matches:
      - path:
          type: PathPrefix
          value: /meridian.test.Echo
      default:
        backendRefs:
        - kind: MeshServiceSubset
          name: backend
          tags: {version: v1}
          weight: 80
        - kind: MeshServiceSubset
          name: backend
          tags: {version: v2}
          weight: 20
---
type: MeshRetry
mesh: default
name: backend-retry
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    default:
      grpc:
        numRetries: 3
        perTryTimeout: 500ms
        retryOn: [Unavailable, ResourceExhausted]
        backOff:
          baseInterval: 10ms
          maxInterval: 100ms
---
type: MeshTimeout
mesh: default
name: backend-timeout
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    default:
      connectionTimeout: 2s
      http:
        requestTimeout: 3s
---
type: MeshFaultInjection
mesh: default
name: backend-faults
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
  - targetRef:
      kind: Mesh
    default:
      http:
      - abort:
          httpStatus: 503
          percentage: 10
      - delay:
          value: 150ms
          percentage: "12.5"
"#;

/// zone-1 has one backend; zone-2, zone-3 and zone-4 advertise more through
/// their ingresses, and a MeshLoadBalancingStrategy makes backend fail over
/// to zone-3 first, then anywhere but zone-4. db exists only in zone-2 and
/// gets the default cross-zone behaviour.
const CROSS_ZONE: &str = r#"
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.1.0.1
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: db}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.1.0.2
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http}
---
type: ZoneIngress
name: ingress-2
labels: {kuma.io/zone: zone-2}
networking:
  address: 10.2.0.100
  port: 10001
  advertisedAddress: 192.0.2.2
  advertisedPort: 30001
availableServices:
- mesh: default
  instances: 3
  tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
- mesh: default
  instances: 1
  tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v2}
- mesh: default
  instances: 2
  tags: {kuma.io/service: db, kuma.io/protocol: tcp}
- mesh: other
  instances: 5
  tags: {kuma.io/service: backend, kuma.io/protocol: http}
---
type: ZoneIngress
name: ingress-3
labels: {kuma.io/zone: zone-3}
networking:
  address: 10.3.0.100
  port: 10001
  advertisedAddress: 192.0.2.3
  advertisedPort: 30001
availableServices:
- mesh: default
  instances: 2
  tags: {kuma.io/service: backend, kuma.io/protocol: http}
---
type: ZoneIngress
name: ingress-4
labels: {kuma.io/zone: zone-4}
networking:
  address: 10.4.0.100
  port: 10001
  advertisedAddress: 192.0.2.4
  advertisedPort: 30001
availableServices:
- mesh: default
  instances: 4
  tags: {kuma.io/service: backend, kuma.io/protocol: http}
---
type: MeshLoadBalancingStrategy
mesh: default
name: backend-failover
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    default:
      loadBalancer:
        type: LeastRequest
      localityAwareness:
        crossZone:
          failover:
          - to:
              type: Only
              zones: [zone-3]
          - to:
              type: AnyExcept
              zones: [zone-4]
"#;

/// web calls backend (http: v1, v2 and a shadow), db (tcp: v1, v2) and api
/// (grpc) under MeshHealthCheck (Mesh-wide TCP, HTTP towards backend with
/// every option, TCP payloads towards db, gRPC towards api), MeshTCPRoute
/// (db split 90/10; one on backend that its MeshHTTPRoute overrides; one on
/// api, which makes that gRPC outbound a TCP proxy) and a MeshHTTPRoute on
/// backend using every match and filter kind.
const OUTBOUND_POLICIES: &str = r#"
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: db}
  - port: 10003
    tags: {kuma.io/service: api}
---
type: Dataplane
mesh: default
name: backend-v1
networking:
  address: 10.0.0.2
  inbound:
  - port: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
---
type: Dataplane
mesh: default
name: backend-v2
networking:
  address: 10.0.0.3
  inbound:
  - port: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v2}
---
type: Dataplane
mesh: default
name: backend-shadow
networking:
  address: 10.0.0.4
  inbound:
  - port: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: shadow}
---
type: Dataplane
mesh: default
name: db-v1
networking:
  address: 10.0.0.5
  inbound:
  - port: 5432
    tags: {kuma.io/service: db, kuma.io/protocol: tcp, version: v1}
---
type: Dataplane
mesh: default
name: db-v2
networking:
  address: 10.0.0.6
  inbound:
  - port: 5432
    tags: {kuma.io/service: db, kuma.io/protocol: tcp, version: v2}
---
type: Dataplane
mesh: default
name: api-1
networking:
  address: 10.0.0.7
  inbound:
  - port: 50051
    tags: {kuma.io/service: api, kuma.io/protocol: grpc}
---
type: MeshHealthCheck
mesh: default
name: mesh-health
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: Mesh
    default:
      interval: 10s
      timeout: 2s
      unhealthyThreshold: 3
      healthyThreshold: 1
      tcp: {}
---
type: MeshHealthCheck
mesh: default
name: web-to-backend
spec:
  targetRef:
    kind: MeshService
    name: web
  to:
  - targetRef:
      kind: MeshService
      name: backend
    default:
      initialJitter: 5s
      intervalJitter: 1s
      intervalJitterPercent: 10
      healthyPanicThreshold: "62.5"
      failTrafficOnPanic: true
      noTrafficInterval: 30s
      eventLogPath: /tmp/health-check.log
      alwaysLogHealthCheckFailures: true
      reuseConnection: false
      http:
        path: /health
        expectedStatuses: [200, 204]
        requestHeadersToAdd:
          set:
          - {name: x-health, value: meridian}
          add:
          - {name: x-probe, value: active}
  - targetRef:
      kind: MeshService
      name: db
    default:
      tcp:
        send: cGluZw==
        receive: [cG9uZw==]
  - targetRef:
      kind: MeshService
      name: api
    default:
      grpc:
        serviceName: meridian.test.Api
        authority: api.mesh
---
type: MeshTCPRoute
mesh: default
name: db-split
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: db
    rules:
    - default:
        backendRefs:
        - kind: MeshServiceSubset
          name: db
          tags: {version: v1}
          weight: 90
        - kind: MeshServiceSubset
          name: db
          tags: {version: v2}
          weight: 10
---
type: MeshTCPRoute
mesh: default
name: backend-tcp
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    rules:
    - default:
        backendRefs:
        - kind: MeshServiceSubset
          name: backend
          tags: {version: v1}
---
type: MeshTCPRoute
mesh: default
name: api-tcp
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: api
---
type: MeshHTTPRoute
mesh: default
name: backend-routes
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    rules:
    - matches:
      - path: {type: PathPrefix, value: /api}
        method: GET
        queryParams:
        - {type: Exact, name: view, value: full}
      default:
        filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set:
            - {name: x-route, value: api}
            remove: [x-debug]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            add:
            - {name: x-served-by, value: meridian}
        - type: URLRewrite
          urlRewrite:
            hostname: backend.internal
            path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
        - type: RequestMirror
          requestMirror:
            backendRef:
              kind: MeshServiceSubset
              name: backend
              tags: {version: shadow}
            percentage: 25
        backendRefs:
        - kind: MeshServiceSubset
          name: backend
          tags: {version: v1}
          weight: 80
        - kind: MeshServiceSubset
          name: backend
          tags: {version: v2}
          weight: 20
    - matches:
      - path: {type: Exact, value: /old}
      default:
        filters:
        - type: RequestRedirect
          requestRedirect:
            scheme: https
            hostname: new.example.com
            statusCode: 301
            path: {type: ReplaceFullPath, replaceFullPath: /new}
    - matches:
      - path: {type: RegularExpression, value: "^/items/[0-9]+$"}
      - path: {type: PathPrefix, value: /}
        headers:
        - {type: Exact, name: x-canary, value: "true"}
      default:
        backendRefs:
        - kind: MeshServiceSubset
          name: backend
          tags: {version: v2}
---
type: MeshRetry
mesh: default
name: backend-http-retry
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    default:
      http:
        numRetries: 2
        retryOn: [5xx, GatewayError, "503", 429, HttpMethodGet, HttpMethodPut]
---
type: MeshFaultInjection
mesh: default
name: web-slow-responses
spec:
  targetRef:
    kind: MeshService
    name: web
  from:
  - targetRef:
      kind: Mesh
    default:
      http:
      - responseBandwidth:
          limit: 100mbps
          percentage: 25
"#;

/// zone-1's ingress advertises backend (two tag sets) and db of `default`,
/// and backend of `payments`; web is local but not advertised, and zone-2's
/// ingress advertises backend v1 too (never routed from an ingress).
const INGRESS_MESHES: &str = r#"
type: ZoneIngress
name: ingress
labels: {kuma.io/zone: zone-1}
networking:
  address: 10.1.0.100
  port: 10001
  advertisedAddress: 192.0.2.1
  advertisedPort: 30001
availableServices:
- mesh: default
  instances: 2
  tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
- mesh: default
  instances: 1
  tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v2}
- mesh: default
  instances: 1
  tags: {kuma.io/service: db, kuma.io/protocol: tcp}
- mesh: payments
  instances: 1
  tags: {kuma.io/service: backend, kuma.io/protocol: grpc}
---
type: ZoneIngress
name: zone-2.ingress
labels: {kuma.io/zone: zone-2}
networking:
  address: 10.2.0.100
  port: 10001
  advertisedAddress: 192.0.2.2
  advertisedPort: 30001
availableServices:
- mesh: default
  instances: 3
  tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.1.0.1
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
---
type: Dataplane
mesh: default
name: backend-2
networking:
  address: 10.1.0.2
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
---
type: Dataplane
mesh: default
name: backend-3
networking:
  address: 10.1.0.3
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v2}
---
type: Dataplane
mesh: default
name: db-1
networking:
  address: 10.1.0.4
  inbound:
  - port: 5432
    tags: {kuma.io/service: db, kuma.io/protocol: tcp}
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.1.0.5
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: web, kuma.io/protocol: http}
---
type: Dataplane
mesh: payments
name: backend-1
networking:
  address: 10.1.1.1
  inbound:
  - port: 15001
    servicePort: 9090
    tags: {kuma.io/service: backend, kuma.io/protocol: grpc}
"#;

/// A proxyless gRPC server, backend, and its callers: web (v1 on IPv4, v2 on
/// IPv6) and batch; a mesh-wide allow, and backend's own rules over it.
const SERVER_PERMISSIONS: &str = r#"
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 50051
    tags: {kuma.io/service: backend, kuma.io/protocol: grpc}
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.2
  inbound:
  - port: 8080
    tags: {kuma.io/service: web, version: v1}
---
type: Dataplane
mesh: default
name: web-2
networking:
  address: fd00::2
  inbound:
  - port: 8080
    tags: {kuma.io/service: web, version: v2}
---
type: Dataplane
mesh: default
name: batch-1
networking:
  address: 127.0.0.4
  inbound:
  - port: 9000
    tags: {kuma.io/service: batch}
---
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
---
type: MeshTrafficPermission
mesh: default
name: backend-callers
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Deny}
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}
  - targetRef: {kind: MeshServiceSubset, name: web, tags: {version: v2}}
    default: {action: Deny}
  - targetRef: {kind: MeshSubset, tags: {kuma.io/service: batch}}
    default: {action: AllowWithShadowDeny}
"#;

/// An Envoy sidecar of backend: a grpc inbound and a tcp one (backend-cache),
/// callers web (v1 on IPv4, v2 on IPv6) and batch; a mesh-wide allow,
/// backend's own rules over it (batch shadow-denied), web only for the
/// cache, and a rate limit that RBAC comes before.
const SIDECAR_PERMISSIONS: &str = r#"
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.1
  inbound:
  - port: 15001
    servicePort: 50051
    tags: {kuma.io/service: backend, kuma.io/protocol: grpc}
  - port: 16379
    servicePort: 6379
    tags: {kuma.io/service: backend-cache, kuma.io/protocol: tcp}
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.2
  inbound:
  - port: 8080
    tags: {kuma.io/service: web, version: v1}
---
type: Dataplane
mesh: default
name: web-2
networking:
  address: fd00::2
  inbound:
  - port: 8080
    tags: {kuma.io/service: web, version: v2}
---
type: Dataplane
mesh: default
name: batch-1
networking:
  address: 10.0.0.4
  inbound:
  - port: 9000
    tags: {kuma.io/service: batch}
---
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
---
type: MeshTrafficPermission
mesh: default
name: backend-callers
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Deny}
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}
  - targetRef: {kind: MeshServiceSubset, name: web, tags: {version: v2}}
    default: {action: Deny}
  - targetRef: {kind: MeshSubset, tags: {kuma.io/service: batch}}
    default: {action: AllowWithShadowDeny}
---
type: MeshTrafficPermission
mesh: default
name: cache-callers
spec:
  targetRef: {kind: MeshService, name: backend-cache}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Deny}
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}
---
type: MeshRateLimit
mesh: default
name: rate-limit
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default:
      local:
        http:
          requestRate: {num: 100, interval: 1s}
        tcp:
          connectionRate: {num: 50, interval: 1s}
"#;

/// The zone ingress's case: `proxy` names the ingress; its meshes are every
/// mesh the documents put dataplanes in.
const INGRESS_CASE: Case = Case {
    name: "ingress",
    description: "zone-1's ingress: an SNI filter chain per advertised service and tag set of two meshes, TCP proxies to mesh-qualified clusters of zone-1's endpoints only",
    zone: "zone-1",
    yaml: INGRESS_MESHES,
    proxy: "ingress",
    kind: ProxyKind::Ingress,
};

/// Every golden case.
fn all_cases() -> impl Iterator<Item = &'static Case> {
    CASES.iter().chain(std::iter::once(&INGRESS_CASE))
}

/// The proxy kinds a case is generated and validated as.
fn kinds_of(case: &Case) -> Vec<ProxyKind> {
    match case.kind {
        ProxyKind::Ingress => vec![ProxyKind::Ingress],
        _ => vec![ProxyKind::Sidecar, ProxyKind::Proxyless],
    }
}

/// The ingress case's configuration: the snapshots of its meshes as zone
/// `case.zone` would build them (other zones' ingresses included).
fn generate_ingress(case: &Case) -> ResourceSet {
    let docs = decode_all(case.yaml, Format::Yaml).unwrap_or_else(|e| panic!("invalid test meshes: {e}"));
    let mut own = None;
    let mut remote = Vec::new();
    let mut meshes: std::collections::BTreeMap<String, MeshSnapshot> = Default::default();
    for doc in docs {
        match doc.key.kind {
            ResourceType::ZoneIngress => {
                let spec: ZoneIngress = serde_json::from_value(doc.spec).unwrap();
                match doc.labels.get(ZONE_LABEL).cloned() {
                    Some(z) if z != case.zone => remote.push(RemoteIngress { zone: z, spec }),
                    _ if doc.key.name == case.proxy => own = Some(spec),
                    _ => {}
                }
            }
            ResourceType::Dataplane => {
                let mesh = doc.key.mesh.clone().unwrap();
                let snap = meshes.entry(mesh.clone()).or_insert_with(|| MeshSnapshot {
                    zone: case.zone.to_string(),
                    mesh,
                    ..Default::default()
                });
                snap.dataplanes.push(DataplaneEntry {
                    name: doc.key.name,
                    spec: serde_json::from_value::<Dataplane>(doc.spec).unwrap(),
                });
            }
            other => panic!("unexpected {other} in the ingress case"),
        }
    }
    let snapshots: Vec<MeshSnapshot> = meshes
        .into_values()
        .map(|mut s| {
            s.remote_ingresses = remote.clone();
            s
        })
        .collect();
    let own = own.unwrap_or_else(|| panic!("{}: no ZoneIngress {}", case.name, case.proxy));
    ingress::generate(&own, &snapshots)
}

/// backend (http, with an admin port over tcp) under MeshRateLimit and
/// MeshTimeout `from` rules on top of the defaults: a Mesh-wide limit, a
/// stricter one for backend with its own answer, every inbound timeout.
const INBOUND_POLICIES: &str = r#"
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound:
  - port: 15001
    servicePort: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http}
  - port: 15002
    servicePort: 9901
    tags: {kuma.io/service: backend-admin, kuma.io/protocol: tcp}
---
type: MeshRateLimit
mesh: default
name: mesh-rate-limit
spec:
  targetRef:
    kind: Mesh
  from:
  - targetRef:
      kind: Mesh
    default:
      local:
        http:
          requestRate: {num: 100, interval: 1s}
        tcp:
          connectionRate: {num: 50, interval: 1s}
---
type: MeshRateLimit
mesh: default
name: backend-rate-limit
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
  - targetRef:
      kind: Mesh
    default:
      local:
        http:
          requestRate: {num: 5, interval: 10s}
          onRateLimit:
            status: 423
            headers:
              set:
              - {name: x-rate-limit, value: "5"}
              add:
              - {name: x-limited, value: "true"}
---
type: MeshTimeout
mesh: default
name: backend-inbound-timeout
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
  - targetRef:
      kind: Mesh
    default:
      connectionTimeout: 3s
      http:
        requestTimeout: 20s
        maxStreamDuration: 30s
        maxConnectionDuration: 30m
        requestHeadersTimeout: 500ms
"#;

/// web behind transparent proxying, both IP families: backend and db are
/// reachable at the outbounds it declares (a virtual address for backend,
/// loopback for db), `reachableServices` leaves out the declared `other`.
const TRANSPARENT: &str = r#"
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - port: 8080
    tags: {kuma.io/service: web, kuma.io/protocol: http}
  outbound:
  - port: 80
    address: 240.0.0.2
    tags: {kuma.io/service: backend}
  - port: 10002
    tags: {kuma.io/service: db}
  - port: 80
    address: 240.0.0.4
    tags: {kuma.io/service: other}
  transparentProxying:
    redirectPortInbound: 15006
    redirectPortOutbound: 15001
    ipFamilyMode: DualStack
    reachableServices: [backend, db]
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound:
  - port: 8080
    tags: {kuma.io/service: backend, kuma.io/protocol: http}
---
type: Dataplane
mesh: default
name: db-1
networking:
  address: 10.0.0.3
  inbound:
  - port: 5432
    tags: {kuma.io/service: db, kuma.io/protocol: tcp}
---
type: Dataplane
mesh: default
name: other-1
networking:
  address: 10.0.0.4
  inbound:
  - port: 80
    tags: {kuma.io/service: other}
"#;

/// A transparent web (IPv4) in a mesh without passthrough.
const TRANSPARENT_NO_PASSTHROUGH: &str = r#"
type: Mesh
name: default
networking:
  outbound:
    passthrough: false
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - port: 8080
    tags: {kuma.io/service: web}
  outbound:
  - port: 80
    address: 240.0.0.3
    tags: {kuma.io/service: db}
  transparentProxying:
    redirectPortInbound: 15006
    redirectPortOutbound: 15001
---
type: Dataplane
mesh: default
name: db-1
networking:
  address: 10.0.0.3
  inbound:
  - port: 5432
    tags: {kuma.io/service: db}
"#;

/// One golden file: a mesh, the zone generating, and the proxy it generates for.
struct Case {
    name: &'static str,
    description: &'static str,
    zone: &'static str,
    yaml: &'static str,
    proxy: &'static str,
    kind: ProxyKind,
}

/// Mesh mTLS (STRICT, two backends) with MeshTrafficPermission by identity.
const MTLS: &str = include_str!("../golden/xds/inputs/mtls.yaml");
/// The same mesh in PERMISSIVE mode.
const MTLS_PERMISSIVE: &str = include_str!("../golden/xds/inputs/mtls-permissive.yaml");
/// MeshTimeout and MeshRetry targeting a MeshHTTPRoute.
const ROUTE_POLICIES: &str = include_str!("../golden/xds/inputs/route-policies.yaml");

/// Stand-ins for the PEM the zone puts in SDS secrets: generation copies
/// them as they are, and golden files stay stable.
const GOLDEN_TRUST_BUNDLE: &str = "-----BEGIN CERTIFICATE-----\n(root of ca-1)\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n(root of ca-2)\n-----END CERTIFICATE-----\n";
const GOLDEN_CHAIN: &str = "-----BEGIN CERTIFICATE-----\n(workload certificate)\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n(zone-1 intermediate)\n-----END CERTIFICATE-----\n";
const GOLDEN_KEY: &str = "-----BEGIN PRIVATE KEY-----\n(workload key)\n-----END PRIVATE KEY-----\n";

/// MeshAccessLog (file, OpenTelemetry, TCP) and MeshTrace (Zipkin, Datadog,
/// OpenTelemetry) on sidecars.
const OBSERVABILITY: &str = include_str!("../golden/xds/inputs/observability.yaml");

/// Kuma 2.7's `Mesh.logging`, `Mesh.tracing` and `Mesh.metrics` backends.
const MESH_OBSERVABILITY: &str = include_str!("../golden/xds/inputs/mesh-observability.yaml");

/// MeshProxyPatch modifications of every kind.
const PROXY_PATCH: &str = include_str!("../golden/xds/inputs/proxy-patch.yaml");

/// MeshLoadBalancingStrategy with every balancer's options.
const LOAD_BALANCING: &str = include_str!("../golden/xds/inputs/load-balancing.yaml");

const CASES: [Case; 28] = [
    Case {
        name: "sidecar-defaults",
        description: "Envoy sidecar of web: http inbound, grpc outbound to backend (2 instances), tcp outbound to db; the 4 default policies",
        zone: "zone-1",
        yaml: WEB_BACKEND_DB,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "proxyless-policies",
        description: "proxyless gRPC client: MeshHTTPRoute split (header match, 80/20), MeshRetry, MeshTimeout, MeshFaultInjection on backend, over the defaults",
        zone: "zone-1",
        yaml: GRPC_WITH_POLICIES,
        proxy: "client-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "sidecar-policies",
        description: "the proxyless-policies mesh seen by an Envoy sidecar of the same client",
        zone: "zone-1",
        yaml: GRPC_WITH_POLICIES,
        proxy: "client-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "cross-zone-failover",
        description: "Envoy sidecar of web in zone-1: backend local + 3 remote ingresses with a MeshLoadBalancingStrategy failover (zone-3, then any but zone-4); db only remote, default priorities",
        zone: "zone-1",
        yaml: CROSS_ZONE,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "cross-zone-proxyless",
        description: "the cross-zone mesh seen by a proxyless client (web-1)",
        zone: "zone-1",
        yaml: CROSS_ZONE,
        proxy: "web-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "sidecar-inbound-policies",
        description: "Envoy sidecar of backend: MeshRateLimit (Mesh-wide http + tcp, stricter for backend with status and headers) and every MeshTimeout inbound field, over the defaults",
        zone: "zone-1",
        yaml: INBOUND_POLICIES,
        proxy: "backend-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-transparent-proxy",
        description: "Envoy sidecar of web with transparent proxying (dual stack): virtual listeners, passthrough clusters, outbounds by original destination, reachableServices",
        zone: "zone-1",
        yaml: TRANSPARENT,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-transparent-proxy-no-passthrough",
        description: "Envoy sidecar of web with transparent proxying in a mesh with networking.outbound.passthrough false: the outbound virtual listener blackholes",
        zone: "zone-1",
        yaml: TRANSPARENT_NO_PASSTHROUGH,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-outbound-policies",
        description: "Envoy sidecar of web: MeshHealthCheck (tcp everywhere, http to backend with every option, tcp payloads to db, grpc to api), MeshTCPRoute (db 90/10; backend's yields to its MeshHTTPRoute; api's makes it a TCP proxy), MeshHTTPRoute with every match and filter kind, an HTTP MeshRetry (conditions, status codes, methods), a response bandwidth limit on the inbound",
        zone: "zone-1",
        yaml: OUTBOUND_POLICIES,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "proxyless-outbound-policies",
        description: "the sidecar-outbound-policies mesh seen by a proxyless client: no health checks, no TCP routes, routes limited to what gRPC takes",
        zone: "zone-1",
        yaml: OUTBOUND_POLICIES,
        proxy: "web-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "proxyless-server-permissions",
        description: "an xDS-enabled gRPC server (backend-1): its server Listeners with the RBAC filter of its MeshTrafficPermissions (callers by address: batch shadow-denied, web v2 denied, web allowed, the rest denied)",
        zone: "zone-1",
        yaml: SERVER_PERMISSIONS,
        proxy: "backend-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "sidecar-mtls-client",
        description: "Envoy sidecar of web in a STRICT mTLS mesh: its SDS secrets (identity, trust bundle of both backends), outbound clusters verifying backend's and db's SPIFFE IDs with the ingress server names, the inbound requiring a client certificate of the mesh",
        zone: "zone-1",
        yaml: MTLS,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-mtls-server",
        description: "Envoy sidecar of backend in a STRICT mTLS mesh: TLS-only inbounds, MeshTrafficPermission by caller identity (authenticated principal names: web v2 denied, web allowed, batch shadow-denied, the rest denied)",
        zone: "zone-1",
        yaml: MTLS,
        proxy: "backend-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-mtls-permissive",
        description: "the sidecar-mtls-server mesh in PERMISSIVE mode: a TLS inspector and, per inbound, a TLS chain and a plaintext chain with the same filters",
        zone: "zone-1",
        yaml: MTLS_PERMISSIVE,
        proxy: "backend-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-route-policies",
        description: "Envoy sidecar of web: a MeshHTTPRoute to backend (/api to v2, / to v1); both of its rules carry the 2s timeout and 1 retry of the MeshTimeout and MeshRetry that target the route (merged over the mesh-wide ones), the destination's catch-all route the mesh-wide 15s and retries",
        zone: "zone-1",
        yaml: ROUTE_POLICIES,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "proxyless-route-policies",
        description: "the route-policies mesh seen by a proxyless client (web-1)",
        zone: "zone-1",
        yaml: ROUTE_POLICIES,
        proxy: "web-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "sidecar-observability-client",
        description: "Envoy sidecar of web: outbound access logs (a file in the default format and an OpenTelemetry collector; to db a TCP collector in JSON through meridian-dp's pipe), Zipkin tracing over https with sampling and tags on every HTTP connection manager, MeshMetric's Prometheus listener on 5670 (metrics in use) through the admin cluster",
        zone: "zone-1",
        yaml: OBSERVABILITY,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-observability-server",
        description: "Envoy sidecar of backend: inbound access logs in a plain format on its http and tcp inbounds, Datadog tracing with split service names, the Prometheus listener with unused metrics too, over TLS with the certificate files its agent names (ProvidedTLS)",
        zone: "zone-1",
        yaml: OBSERVABILITY,
        proxy: "backend-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-observability-otel",
        description: "Envoy sidecar of api: OpenTelemetry tracing to a collector at an IP address (a static cluster), outbound access logs, MeshMetric's OpenTelemetry backend (a listener on a Unix socket that meridian-dp pushes OTLP to, the collector's HTTP/2 cluster, and the dynamic configuration listener that tells meridian-dp what to push)",
        zone: "zone-1",
        yaml: OBSERVABILITY,
        proxy: "api-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "proxyless-observability",
        description: "the observability mesh seen by a proxyless client (web-1): gRPC takes no access logs, tracing or metrics listener over xDS, so nothing of them appears",
        zone: "zone-1",
        yaml: OBSERVABILITY,
        proxy: "web-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "sidecar-mesh-observability-client",
        description: "Envoy sidecar of web in a mesh with default logging, tracing and metrics backends: backend's outbound logs to the default tcp backend (Kuma's legacy format through meridian-dp's pipe), db's to the file of the MeshAccessLog that reaches it; Datadog tracing at 50.5 % with split service names; the enabled Prometheus backend's listener on 5680 at /stats, metrics in use only",
        zone: "zone-1",
        yaml: MESH_OBSERVABILITY,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-mesh-observability-server",
        description: "Envoy sidecar of backend: its own MeshTrace (Zipkin) wins over the Mesh's default tracing backend; no outbound, so no access log (the Mesh's default logs outbounds only)",
        zone: "zone-1",
        yaml: MESH_OBSERVABILITY,
        proxy: "backend-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-proxy-patch",
        description: "Envoy sidecar of web with a MeshProxyPatch: backend's cluster patched (7s, a connection limit), a static cluster added, web-admin's listener patched by JSON patch, a buffer filter before the inbound router, TCP proxies' idle timeout by JSON patch, a virtual host added to backend's routes",
        zone: "zone-1",
        yaml: PROXY_PATCH,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "sidecar-load-balancing",
        description: "Envoy sidecar of web: a ring hash to backend (sizes, MurmurHash2, header/cookie/source IP/query/filter-state hash policies on its routes, a 50 % failover threshold as overprovisioning factor 200, affinity localities weighted 90 (same node), 9 (same availability zone) and 1 (the rest) with locality-weighted balancing), least request to api (3 choices, bias 1.5), Maglev to db (table size)",
        zone: "zone-1",
        yaml: LOAD_BALANCING,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    },
    Case {
        name: "proxyless-load-balancing",
        description: "the load-balancing mesh seen by a proxyless client (web-1): round robin for api and db, an xxHash ring for backend hashing only by header and channel, the same affinity localities (gRPC picks localities by weight)",
        zone: "zone-1",
        yaml: LOAD_BALANCING,
        proxy: "web-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "proxyless-mtls-client",
        description: "proxyless gRPC client (web) in a STRICT mTLS mesh: clusters with A29 TLS contexts naming the meridian-mesh certificate provider, verifying each destination's SPIFFE ID, with the ingress server names",
        zone: "zone-1",
        yaml: MTLS,
        proxy: "web-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "proxyless-mtls-server",
        description: "xDS-enabled gRPC server (backend) in a STRICT mTLS mesh: server Listeners requiring a client certificate from the provider's roots, RBAC by caller identity",
        zone: "zone-1",
        yaml: MTLS,
        proxy: "backend-1",
        kind: ProxyKind::Proxyless,
    },
    Case {
        name: "sidecar-traffic-permissions",
        description: "Envoy sidecar of backend: MeshTrafficPermission as the RBAC HTTP filter first on its grpc inbound (batch allowed with shadow rules denying it, web v2 denied, web allowed, the rest denied) and the network RBAC filter first on its tcp inbound (web only), before the rate limits",
        zone: "zone-1",
        yaml: SIDECAR_PERMISSIONS,
        proxy: "backend-1",
        kind: ProxyKind::Sidecar,
    },
];

// ---------------------------------------------------------------------------
// Snapshot and generation.

/// The snapshot zone `zone` would build from these documents plus the mesh's
/// default policies.
fn snapshot(zone: &str, yaml: &str) -> MeshSnapshot {
    let mut docs: Vec<Document> = initial_policies(MESH, &Mesh::default());
    docs.extend(decode_all(yaml, Format::Yaml).unwrap_or_else(|e| panic!("invalid test mesh: {e}")));
    let mut snap = MeshSnapshot {
        zone: zone.to_string(),
        mesh: MESH.to_string(),
        ..Default::default()
    };
    for doc in docs {
        let kind = doc.key.kind;
        match kind {
            ResourceType::Mesh => snap.spec = serde_json::from_value::<Mesh>(doc.spec).unwrap(),
            ResourceType::Dataplane => snap.dataplanes.push(DataplaneEntry {
                name: doc.key.name,
                spec: serde_json::from_value::<Dataplane>(doc.spec).unwrap(),
            }),
            ResourceType::ZoneIngress => {
                let spec: ZoneIngress = serde_json::from_value(doc.spec).unwrap();
                let from = doc
                    .labels
                    .get(ZONE_LABEL)
                    .cloned()
                    .or_else(|| spec.zone.clone())
                    .unwrap();
                snap.remote_ingresses.push(RemoteIngress { zone: from, spec });
            }
            k if k.is_policy() => snap
                .policies
                .entry(k.name().to_string())
                .or_default()
                .push((doc.key.name, doc.spec)),
            other => panic!("unexpected {other} in a test mesh"),
        }
    }
    snap.mtls = snap.spec.mtls_enabled().map(|m| MeshTls {
        mode: m.mode,
        trust_bundle_pem: GOLDEN_TRUST_BUNDLE.to_string(),
    });
    snap
}

fn generate(case: &Case, kind: ProxyKind) -> ResourceSet {
    if kind == ProxyKind::Ingress {
        return generate_ingress(case);
    }
    let snap = snapshot(case.zone, case.yaml);
    let dataplane = snap
        .dataplanes
        .iter()
        .find(|d| d.name == case.proxy)
        .unwrap_or_else(|| panic!("{}: no dataplane {}", case.name, case.proxy))
        .spec
        .clone();
    let proxy = ProxyContext {
        mesh: MESH.to_string(),
        name: case.proxy.to_string(),
        kind,
        dataplane,
        tls: ProxyTls {
            identity: (snap.mtls.is_some() && kind == ProxyKind::Sidecar)
                .then(|| Arc::new(ProxyIdentity::new(GOLDEN_CHAIN.into(), GOLDEN_KEY.into()))),
            certificate_provider: (kind == ProxyKind::Proxyless).then(|| DEFAULT_CERTIFICATE_PROVIDER.to_string()),
            // As `meridian-dp --metrics-cert-file --metrics-key-file` names them.
            metrics_files: (kind == ProxyKind::Sidecar).then(|| meridian_xds::snapshot::MetricsTlsFiles {
                cert: "/etc/meridian/metrics/tls.crt".into(),
                key: "/etc/meridian/metrics/tls.key".into(),
            }),
        },
    };
    let resolver = MeshPolicies::new(&snap);
    match kind {
        ProxyKind::Sidecar => sidecar::generate(&snap, &proxy, &resolver),
        ProxyKind::Proxyless | ProxyKind::Ingress => proxyless::generate(&snap, &proxy, &resolver),
    }
}

// ---------------------------------------------------------------------------
// Golden files.

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden").join("xds")
}

/// The node id of a case's proxy.
fn proxy_name(case: &Case) -> String {
    match case.kind {
        ProxyKind::Ingress => case.proxy.to_string(),
        _ => format!("{MESH}.{}", case.proxy),
    }
}

fn render_case(case: &Case, set: &ResourceSet) -> String {
    let mut resources = Vec::new();
    for type_url in READING_ORDER {
        for r in set.of_type(type_url) {
            resources.push(json!({
                "type_url": type_url,
                "name": r.name,
                "version": r.version,
                "resource": render::message(&r.body.type_url, &r.body.value),
            }));
        }
    }
    let doc = json!({
        "case": case.name,
        "description": case.description,
        "zone": case.zone,
        "proxy": {"name": proxy_name(case), "kind": format!("{:?}", case.kind)},
        "resources": resources,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap();
    text.push('\n');
    text
}

/// The first lines where `want` and `got` differ, for a failure message.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let Some(at) = (0..w.len().max(g.len())).find(|&i| w.get(i) != g.get(i)) else {
        return "(only trailing whitespace differs)".into();
    };
    let from = at.saturating_sub(3);
    let mut out = format!("first difference at line {}:\n", at + 1);
    for i in from..(at + 6) {
        match (w.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => out.push_str(&format!("   {a}\n")),
            (a, b) => {
                if let Some(a) = a {
                    out.push_str(&format!(" - {a}\n"));
                }
                if let Some(b) = b {
                    out.push_str(&format!(" + {b}\n"));
                }
            }
        }
    }
    out
}

#[test]
fn generated_xds_matches_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let dir = golden_dir();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    for case in all_cases() {
        let set = generate(case, case.kind);
        assert_eq!(
            invariants::check(&set),
            Vec::<String>::new(),
            "{}: generated resources break invariants",
            case.name
        );
        assert!(!set.is_empty(), "{}: nothing generated", case.name);
        let got = render_case(case, &set);
        let path = dir.join(format!("{}.json", case.name));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}: generated xDS differs from {}\n{}",
                case.name,
                path.display(),
                first_difference(&want, &got)
            )),
            Err(e) => failures.push(format!("{}: cannot read {}: {e}", case.name, path.display())),
        }
    }
    // A golden file without a case is stale.
    let known: Vec<String> = all_cases().map(|c| format!("{}.json", c.name)).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !known.contains(&name) {
            if update {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                failures.push(format!("{name}: golden file of no case (remove it)"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended: UPDATE_GOLDEN=1 cargo test -p meridian-e2e --test xds_golden, and review the diff.",
        failures.join("\n\n")
    );
}

/// The renderer itself: Anys unpacked, durations and wrappers readable,
/// defaults left out, oneofs flattened.
#[test]
fn renderer_shows_what_matters() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
    use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
    use prost::Message;

    let cluster = Cluster {
        name: "a\"b".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 500_000_000,
        }),
        lb_policy: LbPolicy::LeastRequest as i32,
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: 0 }),
        ..Default::default()
    };
    assert_eq!(
        render::message(CLUSTER, &cluster.encode_to_vec()),
        json!({"name": "a\"b", "type": "Eds", "connect_timeout": "1.500s", "lb_policy": "LeastRequest",
               "per_connection_buffer_limit_bytes": 0})
    );
    let tcp = TcpProxy {
        stat_prefix: "s".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".into())),
        ..Default::default()
    };
    let listener = Listener {
        name: "l".into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(meridian_xds::generate::any(&tcp))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        render::message(LISTENER, &listener.encode_to_vec()),
        json!({"name": "l", "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                             "stat_prefix": "s", "cluster": "db"}}]}]})
    );
}

/// Every collector the observability mesh's policies name is reached by a
/// cluster of a sidecar's configuration at that `host:port` (read here from
/// the policies' URLs independently of generation), and every tcp backend's
/// address is in a record written to meridian-dp's pipe.
#[test]
fn every_collector_of_the_policies_has_its_cluster() {
    let docs = decode_all(OBSERVABILITY, Format::Yaml).unwrap();
    let mut want: Vec<(String, u32)> = Vec::new();
    let mut tcp: Vec<String> = Vec::new();
    // `[scheme://]host[:port][/path]` with the port each kind defaults to.
    let host_port = |url: &str, default: u32| {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let authority = rest.split('/').next().unwrap();
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u32>().unwrap()),
            None => (authority.to_string(), if scheme == "https" { 443 } else { default }),
        }
    };
    for doc in &docs {
        let spec: serde_json::Value = doc.spec.clone();
        let mut backends = Vec::new();
        for list in ["to", "from"] {
            for e in spec[list].as_array().into_iter().flatten() {
                backends.extend(e["default"]["backends"].as_array().cloned().unwrap_or_default());
            }
        }
        backends.extend(spec["default"]["backends"].as_array().cloned().unwrap_or_default());
        for b in backends {
            match (doc.key.kind, b["type"].as_str().unwrap()) {
                (ResourceType::MeshAccessLog, "OpenTelemetry") => {
                    want.push(host_port(b["openTelemetry"]["endpoint"].as_str().unwrap(), 4317))
                }
                (ResourceType::MeshAccessLog, "Tcp") => tcp.push(b["tcp"]["address"].as_str().unwrap().to_string()),
                (ResourceType::MeshTrace, "Zipkin") => want.push(host_port(b["zipkin"]["url"].as_str().unwrap(), 9411)),
                (ResourceType::MeshTrace, "Datadog") => {
                    want.push(host_port(b["datadog"]["url"].as_str().unwrap(), 8126))
                }
                (ResourceType::MeshTrace | ResourceType::MeshMetric, "OpenTelemetry") => {
                    want.push(host_port(b["openTelemetry"]["endpoint"].as_str().unwrap(), 4317))
                }
                _ => {}
            }
        }
    }
    assert_eq!(want.len(), 5, "the input names five collectors: {want:?}");
    assert_eq!(tcp.len(), 1);
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;
    let mut reached = std::collections::BTreeSet::new();
    let mut pipe_records = String::new();
    for proxy in ["web-1", "backend-1", "api-1"] {
        let case = Case {
            name: "collectors",
            description: "",
            zone: "zone-1",
            yaml: OBSERVABILITY,
            proxy,
            kind: ProxyKind::Sidecar,
        };
        let set = generate(&case, ProxyKind::Sidecar);
        for r in set.of_type(CLUSTER) {
            let c = Cluster::decode(r.body.value.as_slice()).unwrap();
            if let Some(ep) = invariants::single_endpoint(&c) {
                reached.insert(ep);
            }
        }
        for r in set.of_type(LISTENER) {
            pipe_records.push_str(&render::message(&r.body.type_url, &r.body.value).to_string());
        }
    }
    for w in &want {
        assert!(reached.contains(w), "no cluster reaches {w:?}: {reached:?}");
    }
    for address in &tcp {
        assert!(
            pipe_records.contains("/tmp/meridian-al-default-web-1.pipe")
                && pipe_records.contains(&format!("\"string_value\":\"{address}\"")),
            "the tcp backend {address} is not in a record on web-1's pipe"
        );
    }
}

// ---------------------------------------------------------------------------
// Envoy's validation.

/// The sidecar configuration of every golden mesh (and the proxyless one,
/// which real gRPC clients take) passes Envoy's protoc-gen-validate rules,
/// `Any`s included.
#[test]
fn generated_xds_passes_envoy_validation() {
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    for case in all_cases() {
        for kind in kinds_of(case) {
            if seen.contains(&(case.yaml, case.proxy, kind)) {
                continue;
            }
            seen.push((case.yaml, case.proxy, kind));
            let set = generate(case, kind);
            let resources: Vec<(&str, &[u8])> = READING_ORDER
                .iter()
                .flat_map(|t| set.of_type(t).map(move |r| (*t, r.body.value.as_slice())))
                .collect();
            assert!(!resources.is_empty());
            if let Err(report) = validate_envoy(&resources) {
                failures.push(format!("{} as {kind:?}:\n{report}", case.name));
            }
            // Inspection can show all of it: every type inside has a
            // descriptor for the configuration dump's JSON.
            if let Err(e) = meridian_xds::config_dump::config_dump_json(&set, true) {
                failures.push(format!("{} as {kind:?}: configuration dump: {e}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "Envoy validation failed:\n{}", failures.join("\n"));
}

/// The validation above would see a broken field of generated output, at the
/// top level and inside an `Any`: a zero connect timeout on a cluster, an
/// empty stat prefix in a listener's HttpConnectionManager.
#[test]
fn envoy_validation_catches_broken_generated_output() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Listener};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::google::protobuf::Duration;
    use prost::Message;

    let set = generate(&CASES[0], ProxyKind::Sidecar);
    let mut cluster = Cluster::decode(set.get(CLUSTER, "backend").unwrap().body.value.as_slice()).unwrap();
    cluster.connect_timeout = Some(Duration::default());
    let mut listener = Listener::decode(
        set.get(LISTENER, "outbound:127.0.0.1:10001")
            .unwrap()
            .body
            .value
            .as_slice(),
    )
    .unwrap();
    let Some(ConfigType::TypedConfig(any)) = &mut listener.filter_chains[0].filters[0].config_type else {
        panic!("no typed_config")
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    hcm.stat_prefix.clear();
    any.value = hcm.encode_to_vec();
    let report = validate_envoy(&[(CLUSTER, cluster.encode_to_vec()), (LISTENER, listener.encode_to_vec())])
        .expect_err("broken resources pass validation");
    assert!(report.contains("\"connect_timeout\""), "{report}");
    assert!(
        report.contains("filter_chains[0].filters[0].typed_config<envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager>.stat_prefix"),
        "{report}"
    );
}

// ---------------------------------------------------------------------------
// Rendering prost messages as reviewable JSON.

mod render {
    //! prost messages have `Debug` but no serde. This parses their `Debug`
    //! text (which names every field, and enum values by name) into a tree
    //! and turns it into JSON close to the protobuf JSON mapping:
    //! - fields at their default (unset, zero, empty, the enum's zero value)
    //!   are left out; set wrapper fields (`Some(UInt32Value { value: 0 })`)
    //!   are kept, as their value;
    //! - oneofs are flattened to the field of their case (`cluster`,
    //!   `weighted_clusters`, `typed_config`, …);
    //! - `Any`s are unpacked into `{"@type": …, fields…}`; a type the
    //!   renderer does not know fails the test, so nothing hides in bytes;
    //! - `Duration`s read `"1.500s"`.

    use std::collections::BTreeMap;
    use std::sync::OnceLock;

    use envoy_types::pb::envoy::config::cluster::v3::{circuit_breakers::Thresholds, CircuitBreakers, Cluster};
    use envoy_types::pb::envoy::config::cluster::v3::{cluster::EdsClusterConfig, OutlierDetection};
    use envoy_types::pb::envoy::config::core::v3::{Address, ConfigSource, Locality, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
    use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint};
    use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Filter, FilterChain, Listener};
    use envoy_types::pb::envoy::config::route::v3::{
        retry_policy::RetryBackOff, route_action::MaxStreamDuration, weighted_cluster::ClusterWeight, HeaderMatcher,
        RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    };
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, Rds,
    };
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use prost::{Message, Name};
    use serde_json::{Map, Value};

    /// A parsed `Debug` value.
    #[derive(Clone, Debug, PartialEq)]
    enum Node {
        Str(String),
        /// A number, as printed.
        Num(String),
        /// `None`, `true`, an enum value, a unit struct.
        Ident(String),
        Struct(String, Vec<(String, Node)>),
        /// `Some(x)`, or a oneof case `Cluster("x")`.
        Tuple(String, Vec<Node>),
        List(Vec<Node>),
        Map(Vec<(Node, Node)>),
    }

    /// Decodes `bytes` as the message `type_url` names and renders it.
    pub fn message(type_url: &str, bytes: &[u8]) -> Value {
        let text = debug_of(type_url, bytes)
            .unwrap_or_else(|| panic!("the golden renderer does not know {type_url}: add it to `debug_of`"));
        let node = Parser::new(&text).parse();
        json(&node)
    }

    fn decode_debug<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> String {
        let m = M::decode(bytes).unwrap_or_else(|e| panic!("{} does not decode: {e}", std::any::type_name::<M>()));
        format!("{m:?}")
    }

    /// The `Debug` text of the message in `bytes`, for the types generation
    /// produces.
    fn debug_of(type_url: &str, bytes: &[u8]) -> Option<String> {
        macro_rules! known {
            ($($t:ty),* $(,)?) => {
                $(if type_url == <$t>::type_url() { return Some(decode_debug::<$t>(bytes)); })*
            };
        }
        known!(
            Listener,
            RouteConfiguration,
            Cluster,
            ClusterLoadAssignment,
            HttpConnectionManager,
            Router,
            HttpFault,
            TcpProxy,
            envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac,
            envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac,
            envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector,
            envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions,
            envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit,
            envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit,
            envoy_types::pb::envoy::extensions::health_check::event_sinks::file::v3::HealthCheckEventFileSink,
            tls::Secret,
            tls::UpstreamTlsContext,
            tls::DownstreamTlsContext,
            envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog,
            envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig,
            envoy_types::pb::envoy::config::trace::v3::ZipkinConfig,
            envoy_types::pb::envoy::config::trace::v3::DatadogConfig,
            envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig,
            envoy_types::pb::envoy::extensions::filters::http::buffer::v3::Buffer,
        );
        None
    }

    /// Per message name, its fields at their default values: a field equal
    /// to its default is left out (this is what hides enums at zero).
    fn defaults() -> &'static BTreeMap<String, Vec<(String, Node)>> {
        static DEFAULTS: OnceLock<BTreeMap<String, Vec<(String, Node)>>> = OnceLock::new();
        DEFAULTS.get_or_init(|| {
            let mut out = BTreeMap::new();
            macro_rules! register {
                ($($t:ty),* $(,)?) => {
                    $(if let Node::Struct(name, fields) = Parser::new(&format!("{:?}", <$t>::default())).parse() {
                        out.insert(name, fields);
                    })*
                };
            }
            register!(
                envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions,
                envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions,
                Listener,
                FilterChain,
                Filter,
                envoy_types::pb::envoy::config::listener::v3::FilterChainMatch,
                envoy_types::pb::envoy::config::listener::v3::ListenerFilter,
                envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector,
                ApiListener,
                HttpConnectionManager,
                HttpFilter,
                Rds,
                ConfigSource,
                RouteConfiguration,
                VirtualHost,
                Route,
                RouteMatch,
                RouteAction,
                RetryPolicy,
                RetryBackOff,
                MaxStreamDuration,
                WeightedCluster,
                ClusterWeight,
                HeaderMatcher,
                StringMatcher,
                RegexMatcher,
                Cluster,
                EdsClusterConfig,
                CircuitBreakers,
                Thresholds,
                OutlierDetection,
                ClusterLoadAssignment,
                LocalityLbEndpoints,
                LbEndpoint,
                Endpoint,
                Locality,
                Address,
                SocketAddress,
                TcpProxy,
                HttpFault,
                FaultAbort,
                FaultDelay,
                FractionalPercent,
                Router,
                // Both are named `LocalRateLimit` and the HTTP one, registered
                // last, wins: the network one's defaults are all zero anyway.
                envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit,
                envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit,
                envoy_types::pb::envoy::r#type::v3::TokenBucket,
                envoy_types::pb::envoy::r#type::v3::HttpStatus,
                envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent,
                envoy_types::pb::envoy::config::core::v3::HeaderValueOption,
                envoy_types::pb::envoy::config::core::v3::HeaderValue,
                // Shares its name with the upstream `HttpProtocolOptions`
                // above, whose defaults are all zero.
                envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions,
                envoy_types::pb::envoy::config::core::v3::BindConfig,
                envoy_types::pb::envoy::config::core::v3::TransportSocket,
                envoy_types::pb::envoy::config::core::v3::DataSource,
                tls::Secret,
                tls::TlsCertificate,
                tls::UpstreamTlsContext,
                tls::DownstreamTlsContext,
                tls::CommonTlsContext,
                tls::CertificateValidationContext,
                tls::common_tls_context::CombinedCertificateValidationContext,
                tls::SdsSecretConfig,
                tls::SubjectAltNameMatcher,
                tls::CertificateProviderPluginInstance,
                envoy_types::pb::envoy::config::rbac::v3::Principal,
                envoy_types::pb::envoy::config::rbac::v3::principal::Authenticated,
                envoy_types::pb::envoy::config::accesslog::v3::AccessLog,
                envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog,
                envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString,
                envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig,
                envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::CommonGrpcAccessLogConfig,
                envoy_types::pb::envoy::config::core::v3::GrpcService,
                envoy_types::pb::envoy::config::core::v3::grpc_service::EnvoyGrpc,
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing,
                envoy_types::pb::envoy::config::trace::v3::tracing::Http,
                envoy_types::pb::envoy::config::trace::v3::ZipkinConfig,
                envoy_types::pb::envoy::config::trace::v3::DatadogConfig,
                envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig,
                envoy_types::pb::envoy::r#type::tracing::v3::CustomTag,
                envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::Header,
                envoy_types::pb::envoy::r#type::v3::Percent,
                envoy_types::pb::envoy::config::cluster::v3::cluster::RingHashLbConfig,
                envoy_types::pb::envoy::config::cluster::v3::cluster::LeastRequestLbConfig,
                envoy_types::pb::envoy::config::cluster::v3::cluster::MaglevLbConfig,
                envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy,
            );
            out
        })
    }

    fn is_zero(n: &Node) -> bool {
        match n {
            Node::Ident(i) => i == "None" || i == "false",
            Node::Str(s) => s.is_empty(),
            Node::Num(s) => s.parse::<f64>().is_ok_and(|v| v == 0.0),
            Node::List(l) => l.is_empty(),
            Node::Map(m) => m.is_empty(),
            _ => false,
        }
    }

    /// `WeightedClusters` → `weighted_clusters`.
    fn snake(s: &str) -> String {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    fn number(s: &str) -> Value {
        if let Ok(i) = s.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(u) = s.parse::<u64>() {
            return Value::from(u);
        }
        match s.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(s.to_string()),
        }
    }

    fn field<'a>(fields: &'a [(String, Node)], name: &str) -> Option<&'a Node> {
        fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn json(n: &Node) -> Value {
        match n {
            Node::Str(s) => Value::String(s.clone()),
            Node::Num(s) => number(s),
            Node::Ident(i) => match i.as_str() {
                "None" => Value::Null,
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                other => Value::String(other.to_string()),
            },
            Node::List(items) => Value::Array(items.iter().map(json).collect()),
            Node::Map(entries) => {
                let mut sorted: Vec<(String, Value)> = entries
                    .iter()
                    .map(|(k, v)| {
                        let key = match json(k) {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (key, json(v))
                    })
                    .collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(sorted.into_iter().collect())
            }
            Node::Tuple(name, items) if name == "Some" && items.len() == 1 => json(&items[0]),
            Node::Tuple(name, items) => {
                let inner = match items.as_slice() {
                    [one] => json(one),
                    many => Value::Array(many.iter().map(json).collect()),
                };
                Value::Object(Map::from_iter([(snake(name), inner)]))
            }
            Node::Struct(name, fields) => struct_json(name, fields),
        }
    }

    fn struct_json(name: &str, fields: &[(String, Node)]) -> Value {
        match name {
            "Any" => return any_json(fields),
            "Duration" => {
                if let (Some(Node::Num(s)), Some(Node::Num(n)), 2) =
                    (field(fields, "seconds"), field(fields, "nanos"), fields.len())
                {
                    let nanos: i64 = n.parse().unwrap_or(0);
                    return Value::String(if nanos == 0 {
                        format!("{s}s")
                    } else {
                        let frac = format!("{nanos:09}");
                        format!("{s}.{}s", frac.trim_end_matches("000"))
                    });
                }
            }
            "UInt32Value" | "UInt64Value" | "Int32Value" | "Int64Value" | "BoolValue" | "DoubleValue"
            | "FloatValue" | "StringValue" => {
                if let [(f, v)] = fields {
                    if f == "value" {
                        return json(v);
                    }
                }
            }
            _ => {}
        }
        let defaults = defaults().get(name);
        let mut out = Map::new();
        for (f, v) in fields {
            if is_zero(v) || defaults.and_then(|d| field(d, f)) == Some(v) {
                continue;
            }
            match v {
                // A oneof: the field of its case.
                Node::Tuple(some, inner) if some == "Some" => match inner.as_slice() {
                    [Node::Tuple(case, value)] if case != "Some" && value.len() == 1 => {
                        out.insert(snake(case), json(&value[0]));
                    }
                    _ => {
                        out.insert(f.clone(), json(v));
                    }
                },
                _ => {
                    out.insert(f.clone(), json(v));
                }
            }
        }
        Value::Object(out)
    }

    fn any_json(fields: &[(String, Node)]) -> Value {
        let (Some(Node::Str(type_url)), Some(Node::List(bytes))) = (field(fields, "type_url"), field(fields, "value"))
        else {
            panic!("an Any without type_url and value: {fields:?}")
        };
        let bytes: Vec<u8> = bytes
            .iter()
            .map(|b| match b {
                Node::Num(n) => n.parse::<u8>().unwrap(),
                other => panic!("not a byte: {other:?}"),
            })
            .collect();
        let mut out = Map::new();
        out.insert("@type".into(), Value::String(type_url.clone()));
        if let Value::Object(inner) = message(type_url, &bytes) {
            out.extend(inner);
        }
        Value::Object(out)
    }

    /// A parser for `{:?}` output of prost messages.
    struct Parser<'a> {
        s: &'a [u8],
        text: &'a str,
        at: usize,
    }

    impl<'a> Parser<'a> {
        fn new(text: &'a str) -> Self {
            Parser {
                s: text.as_bytes(),
                text,
                at: 0,
            }
        }

        fn parse(mut self) -> Node {
            let n = self.value();
            self.ws();
            assert_eq!(self.at, self.s.len(), "trailing text in {:?}", self.text);
            n
        }

        fn fail(&self, what: &str) -> ! {
            let end = (self.at + 60).min(self.text.len());
            panic!(
                "cannot parse Debug output ({what}) at {}: {:?}",
                self.at,
                self.text.get(self.at..end).unwrap_or("")
            )
        }

        fn ws(&mut self) {
            while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
                self.at += 1;
            }
        }

        fn peek(&mut self) -> Option<u8> {
            self.ws();
            self.s.get(self.at).copied()
        }

        fn eat(&mut self, c: u8) -> bool {
            if self.peek() == Some(c) {
                self.at += 1;
                true
            } else {
                false
            }
        }

        fn expect(&mut self, c: u8) {
            if !self.eat(c) {
                self.fail(&format!("expected {:?}", c as char));
            }
        }

        fn ident(&mut self) -> String {
            self.ws();
            let start = self.at;
            while self.at < self.s.len() && (self.s[self.at].is_ascii_alphanumeric() || self.s[self.at] == b'_') {
                self.at += 1;
            }
            if start == self.at {
                self.fail("expected an identifier");
            }
            // `r#type` and friends.
            let id = &self.text[start..self.at];
            if id == "r" && self.s.get(self.at) == Some(&b'#') {
                self.at += 1;
                return self.ident();
            }
            id.to_string()
        }

        /// Items separated by commas up to `close` (a trailing comma allowed).
        fn items<T>(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
            let mut out = Vec::new();
            loop {
                if self.eat(close) {
                    return out;
                }
                out.push(item(self));
                if !self.eat(b',') {
                    self.expect(close);
                    return out;
                }
            }
        }

        fn value(&mut self) -> Node {
            match self.peek() {
                Some(b'"') => Node::Str(self.string()),
                Some(b'[') => {
                    self.at += 1;
                    Node::List(self.items(b']', Self::value))
                }
                Some(b'{') => {
                    self.at += 1;
                    Node::Map(self.items(b'}', |p| {
                        let k = p.value();
                        p.expect(b':');
                        (k, p.value())
                    }))
                }
                Some(c) if c == b'-' || c.is_ascii_digit() => self.number(),
                Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                    let name = self.ident();
                    match self.peek() {
                        Some(b'{') => {
                            self.at += 1;
                            let fields = self.items(b'}', |p| {
                                let f = p.ident();
                                p.expect(b':');
                                (f, p.value())
                            });
                            Node::Struct(name, fields)
                        }
                        Some(b'(') => {
                            self.at += 1;
                            Node::Tuple(name, self.items(b')', Self::value))
                        }
                        _ => Node::Ident(name),
                    }
                }
                _ => self.fail("expected a value"),
            }
        }

        fn number(&mut self) -> Node {
            let start = self.at;
            if self.s[self.at] == b'-' {
                self.at += 1;
            }
            while self.at < self.s.len() && matches!(self.s[self.at], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                self.at += 1;
            }
            Node::Num(self.text[start..self.at].to_string())
        }

        /// A string as `Debug` escapes it.
        fn string(&mut self) -> String {
            self.expect(b'"');
            let mut out = String::new();
            let mut chars = self.text[self.at..].char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        self.at += i + 1;
                        return out;
                    }
                    '\\' => match chars.next().map(|(_, e)| e) {
                        Some('n') => out.push('\n'),
                        Some('r') => out.push('\r'),
                        Some('t') => out.push('\t'),
                        Some('0') => out.push('\0'),
                        Some('u') => {
                            let mut hex = String::new();
                            for (_, h) in chars.by_ref() {
                                match h {
                                    '{' => {}
                                    '}' => break,
                                    h => hex.push(h),
                                }
                            }
                            let c = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                            out.push(c.unwrap_or(char::REPLACEMENT_CHARACTER));
                        }
                        Some(other) => out.push(other),
                        None => break,
                    },
                    c => out.push(c),
                }
            }
            self.fail("unterminated string")
        }
    }
}

// ---------------------------------------------------------------------------
// Cross-zone over mTLS.

/// Zone 1 of a two-zone mTLS mesh whose route splits backend by version.
const MTLS_CROSS_ZONE_1: &str = include_str!("../golden/xds/inputs/mtls-cross-zone-1.yaml");
/// Zone 2 of it: the backends behind the ingress.
const MTLS_CROSS_ZONE_2: &str = include_str!("../golden/xds/inputs/mtls-cross-zone-2.yaml");

/// Every cluster of zone 1's web (sidecar or proxyless) that has an
/// endpoint at zone 2's ingress sends a server name that one of the
/// ingress's filter chains matches — subsets of a route included — and the
/// ingress's chains lead to zone 2's endpoints of that subset only.
#[test]
fn every_cross_zone_cluster_reaches_a_chain_of_the_ingress() {
    let case = Case {
        name: "mtls-cross-zone",
        description: "",
        zone: "zone-1",
        yaml: MTLS_CROSS_ZONE_1,
        proxy: "web-1",
        kind: ProxyKind::Sidecar,
    };
    let zone1 = snapshot("zone-1", MTLS_CROSS_ZONE_1);
    let ingress_spec = zone1.remote_ingresses[0].spec.clone();
    let zone2 = snapshot("zone-2", MTLS_CROSS_ZONE_2);
    let ingress_set = ingress::generate(&ingress_spec, std::slice::from_ref(&zone2));
    assert_eq!(invariants::check(&ingress_set), Vec::<String>::new());
    for kind in [ProxyKind::Sidecar, ProxyKind::Proxyless] {
        let client = generate(&case, kind);
        assert_eq!(invariants::check(&client), Vec::<String>::new(), "{kind:?}");
        let clusters: Vec<&str> = client.of_type(CLUSTER).map(|r| r.name.as_str()).collect();
        assert!(clusters.contains(&"backend|version=v1"), "{kind:?}: {clusters:?}");
        assert_eq!(
            invariants::check_cross_zone(&client, &ingress_set, "192.0.2.2", 30001),
            Vec::<String>::new(),
            "{kind:?}"
        );
    }
    // The subset's chain reaches the subset only.
    use prost::Message;
    let v1 = ingress::cluster_name(MESH, "backend", &[("version".to_string(), "v1".to_string())].into());
    let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
        ingress_set
            .get(ENDPOINT, &v1)
            .unwrap_or_else(|| panic!("no {v1} at the ingress"))
            .body
            .value
            .as_slice(),
    )
    .unwrap();
    let endpoints: usize = cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    assert_eq!(endpoints, 1);
}

/// Two sidecars of one service on one address, generated with one resolver
/// (as the zone regenerates a mesh): the outbound listener that logs to a
/// tcp backend is not shared between them, as each names its own pipe.
#[test]
fn a_tcp_access_log_names_each_proxys_own_pipe() {
    let twin = OBSERVABILITY.replacen(
        "type: Dataplane\nmesh: default\nname: web-1\n",
        "type: Dataplane\nmesh: default\nname: web-2\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 15001\n    servicePort: 8080\n    tags: {kuma.io/service: web, kuma.io/protocol: http}\n  outbound:\n  - port: 10001\n    tags: {kuma.io/service: backend}\n  - port: 10002\n    tags: {kuma.io/service: db}\n---\ntype: Dataplane\nmesh: default\nname: web-1\n",
        1,
    );
    let snap = snapshot("zone-1", &twin);
    let resolver = MeshPolicies::new(&snap);
    for name in ["web-1", "web-2"] {
        let dataplane = snap.dataplanes.iter().find(|d| d.name == name).unwrap().spec.clone();
        let proxy = ProxyContext {
            mesh: MESH.to_string(),
            name: name.to_string(),
            kind: ProxyKind::Sidecar,
            dataplane,
            tls: ProxyTls::default(),
        };
        let set = sidecar::generate(&snap, &proxy, &resolver);
        let db = set
            .of_type(LISTENER)
            .find(|r| r.name == "outbound:127.0.0.1:10002")
            .map(|r| render::message(&r.body.type_url, &r.body.value).to_string())
            .unwrap_or_else(|| panic!("{name}: no listener towards db"));
        assert!(
            db.contains(&format!("/tmp/meridian-al-default-{name}.pipe")),
            "{name}'s listener towards db writes to another pipe: {db}"
        );
    }
}
