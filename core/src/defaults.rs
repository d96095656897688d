//! The initial policies every new mesh gets (DESIGN §6), with exactly the
//! specs of the Kong Mesh 2.6 "Configuring your Mesh" page.

use crate::decode::{decode_all, Document, Format};
use crate::mesh::Mesh;

/// The default policies in universal YAML; `MESH` is replaced by the mesh name.
const DEFAULT_POLICIES: &str = r#"
type: MeshTimeout
mesh: MESH
name: mesh-gateways-timeout-all-MESH
spec:
  targetRef:
    kind: Mesh
    proxyTypes:
    - Gateway
  to:
  - targetRef:
      kind: Mesh
    default:
      idleTimeout: 1h
      http:
        streamIdleTimeout: 5s
  from:
  - targetRef:
      kind: Mesh
    default:
      idleTimeout: 5m
      http:
        streamIdleTimeout: 5s
        requestHeadersTimeout: 500ms
---
type: MeshTimeout
mesh: MESH
name: mesh-timeout-all-MESH
spec:
  targetRef:
    kind: Mesh
    proxyTypes:
    - Sidecar
  to:
  - targetRef:
      kind: Mesh
    default:
      connectionTimeout: 5s
      idleTimeout: 1h
      http:
        requestTimeout: 15s
        streamIdleTimeout: 30m
  from:
  - targetRef:
      kind: Mesh
    default:
      connectionTimeout: 10s
      idleTimeout: 2h
      http:
        requestTimeout: 0s
        streamIdleTimeout: 1h
        maxStreamDuration: 0s
---
type: MeshRetry
mesh: MESH
name: mesh-retry-all-MESH
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: Mesh
    default:
      tcp:
        maxConnectAttempt: 5
      http:
        numRetries: 5
        perTryTimeout: 16s
        backOff:
          baseInterval: 25ms
          maxInterval: 250ms
      grpc:
        numRetries: 5
        perTryTimeout: 16s
        backOff:
          baseInterval: 25ms
          maxInterval: 250ms
---
type: MeshCircuitBreaker
mesh: MESH
name: mesh-circuit-breaker-all-MESH
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: Mesh
    default:
      connectionLimits:
        maxConnections: 1024
        maxPendingRequests: 1024
        maxRetries: 3
        maxRequests: 1024
"#;

/// The default policies for mesh `mesh_name`, minus the types its
/// `skipCreatingInitialPolicies` names.
pub fn initial_policies(mesh_name: &str, mesh: &Mesh) -> Vec<Document> {
    let text = DEFAULT_POLICIES.replace("MESH", mesh_name);
    // The text is fixed and covered by tests; a mesh name is a DNS label, so
    // substituting it cannot make the documents invalid.
    decode_all(&text, Format::Yaml)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| !mesh.skips_initial_policy(d.key.kind))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ResourceType;
    use serde_json::json;

    #[test]
    fn four_policies_with_exact_specs() {
        let docs = initial_policies("default", &Mesh::default());
        let names: Vec<_> = docs.iter().map(|d| d.key.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mesh-gateways-timeout-all-default",
                "mesh-timeout-all-default",
                "mesh-retry-all-default",
                "mesh-circuit-breaker-all-default"
            ]
        );
        assert!(docs.iter().all(|d| d.key.mesh.as_deref() == Some("default")));
        assert_eq!(
            docs[1].spec["from"][0]["default"],
            json!({"connectionTimeout": "10s", "idleTimeout": "2h",
                   "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"}})
        );
        assert_eq!(
            docs[2].spec["to"][0]["default"]["grpc"]["backOff"]["maxInterval"],
            "250ms"
        );
        assert_eq!(docs[3].spec["to"][0]["default"]["connectionLimits"]["maxRetries"], 3);
    }

    #[test]
    fn skip_by_type_or_star() {
        let m: Mesh = serde_json::from_value(json!({"skipCreatingInitialPolicies": ["MeshTimeout"]})).unwrap();
        let docs = initial_policies("m1", &m);
        assert_eq!(docs.len(), 2);
        assert!(docs.iter().all(|d| d.key.kind != ResourceType::MeshTimeout));
        let m: Mesh = serde_json::from_value(json!({"skipCreatingInitialPolicies": ["*"]})).unwrap();
        assert!(initial_policies("m1", &m).is_empty());
    }
}
