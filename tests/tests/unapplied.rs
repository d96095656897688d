//! Kuma's semantics at the API: accepted but not applied is said, never
//! silent (a write of a policy or a field that generation does not use
//! answers with `warnings` and `Warning` headers, and `meridianctl apply`
//! prints them); a mesh with dataplanes is not deleted; a zone tags its dataplanes'
//! inbounds with `kuma.io/zone`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meridian_e2e::*;
use serde_json::json;

#[test]
fn writes_of_what_has_no_effect_carry_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global_embedded(dir.path(), &dir.path().join("g"), &[]);
    let log = json!({"type": "MeshAccessLog", "mesh": "default", "name": "all",
        "spec": {"targetRef": {"kind": "Mesh"},
                 "from": [{"targetRef": {"kind": "Mesh"},
                           "default": {"backends": [{"type": "File", "file": {"path": "/dev/stdout"}}]}}]}});
    let (status, body) = global.put_json("/meshes/default/meshaccesslogs/all", &log);
    assert_eq!(status, 201, "{body}");
    let warnings = body["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{body}");
    assert_eq!(warnings[0]["field"], "spec");
    assert!(warnings[0]["message"].as_str().unwrap().contains("no effect"), "{body}");
    // The stored resource itself has no such field.
    let (_, stored) = global.get("/meshes/default/meshaccesslogs/all");
    assert!(stored.get("warnings").is_none(), "{stored}");

    // The standard header, for any HTTP client.
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let resp = agent
        .put(&format!("{}/meshes/default/meshaccesslogs/all", global.api))
        .header("authorization", &format!("Bearer {}", global.admin_token()))
        .header("content-type", "application/json")
        .send(log.to_string())
        .unwrap();
    let header: Vec<String> = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(header.len(), 1, "{header:?}");
    assert!(
        header[0].starts_with("299 meridian \"spec: applies to Envoy sidecars; gRPC clients"),
        "{header:?}"
    );

    // A policy that is fully applied has none.
    let timeout = json!({"type": "MeshTimeout", "mesh": "default", "name": "t",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]}});
    let (_, body) = global.put_json("/meshes/default/meshtimeouts/t", &timeout);
    assert!(body.get("warnings").is_none(), "{body}");

    // A Kuma 2.7 Mesh with observability backends is accepted, each
    // section's effect reported; a bad one is refused at Kuma's path.
    let mesh = json!({"type": "Mesh", "name": "observed",
        "logging": {"defaultBackend": "file", "backends": [
            {"name": "file", "type": "file", "conf": {"path": "/tmp/access.log"}}]},
        "tracing": {"defaultBackend": "zipkin", "backends": [
            {"name": "zipkin", "type": "zipkin", "sampling": 10.5,
             "conf": {"url": "http://zipkin:9411/api/v2/spans"}}]},
        "metrics": {"enabledBackend": "prom", "backends": [
            {"name": "prom", "type": "prometheus", "conf": {"port": 5670, "path": "/metrics"}}]}});
    let (status, body) = global.put_json("/meshes/observed", &mesh);
    assert!(status == 200 || status == 201, "{status} {body}");
    let fields: Vec<&str> = body["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["logging", "tracing", "metrics"], "{body}");
    assert!(
        body["warnings"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("logs every outbound") && m.contains("TrafficLog")),
        "{body}"
    );
    let mut undefaulted = mesh.clone();
    undefaulted["name"] = json!("undefaulted");
    undefaulted["tracing"]["defaultBackend"] = json!(null);
    let (_, body) = global.put_json("/meshes/undefaulted", &undefaulted);
    assert!(
        body["warnings"][1]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("has no effect: no defaultBackend")),
        "{body}"
    );
    let mut bad = mesh.clone();
    bad["tracing"]["backends"][0]["conf"]["url"] = json!("http://zipkin/api/v2/spans");
    let (status, body) = global.put_json("/meshes/observed", &bad);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["causes"][0]["field"], "tracing.backends[0].config.url", "{body}");

    // A MeshProxyPatch whose value is no Envoy cluster is refused at the
    // write, naming the field; nothing is stored.
    let patch = |value: &str| {
        json!({"type": "MeshProxyPatch", "mesh": "default", "name": "p", "spec": {
            "targetRef": {"kind": "Mesh"}, "default": {"appendModifications": [
                {"cluster": {"operation": "Patch", "match": {"name": "backend"}, "value": value}}]}}})
    };
    let (status, body) = global.put_json("/meshes/default/meshproxypatches/p", &patch("conectTimeout: 7s"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["causes"][0]["field"], "spec.default.appendModifications[0].cluster.value",
        "{body}"
    );
    assert!(
        body["causes"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("envoy.config.cluster.v3.Cluster") && m.contains("conectTimeout")),
        "{body}"
    );
    let (status, _) = global.get("/meshes/default/meshproxypatches/p");
    assert_eq!(status, 404, "a refused patch is not stored");
    let (status, body) = global.put_json("/meshes/default/meshproxypatches/p", &patch("connectTimeout: 7s"));
    assert!(status == 200 || status == 201, "{status} {body}");

    // meridianctl apply says it.
    let file = dir.path().join("lb.yaml");
    std::fs::write(
        &file,
        "type: MeshLoadBalancingStrategy\nmesh: default\nname: lb\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      loadBalancer:\n        type: Random\n",
    )
    .unwrap();
    let out = global.ctl(&["apply", "-f", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: MeshLoadBalancingStrategy \"lb\" in mesh \"default\" spec.to[0].default.loadBalancer.type: Random applies to Envoy sidecars; gRPC clients (proxyless) balance with round robin or ring hash only"),
        "{stderr}"
    );
}

#[test]
fn a_mesh_with_dataplanes_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_embedded(d, &d.join("g"), &[]);
    let join = zone_join(&global, "zone-1", &d.join("join"));
    let zone = start_zone(d, &join, None, &["--store", "memory"]);
    wait_for(
        "the default mesh at the zone",
        std::time::Duration::from_secs(60),
        || (zone.get("/meshes/default").0 == 200).then_some(()),
    );
    let dp = json!({"type": "Dataplane", "mesh": "default", "name": "web-1",
        "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}});
    assert_eq!(zone.put_json("/meshes/default/dataplanes/web-1", &dp).0, 201);
    // The zone tags its dataplanes' inbounds with itself, as Kuma does, so
    // that policies can select by zone; another zone's tag is refused.
    let (_, stored) = zone.get("/meshes/default/dataplanes/web-1");
    assert_eq!(
        stored["networking"]["inbound"][0]["tags"]["kuma.io/zone"], "zone-1",
        "{stored}"
    );
    let mut foreign = dp.clone();
    foreign["name"] = json!("web-2");
    foreign["networking"]["inbound"][0]["tags"]["kuma.io/zone"] = json!("zone-9");
    let (status, body) = zone.put_json("/meshes/default/dataplanes/web-2", &foreign);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["causes"][0]["field"], "networking.inbound[0].tags[\"kuma.io/zone\"]",
        "{body}"
    );
    wait_for(
        "the dataplane at the global",
        std::time::Duration::from_secs(60),
        || (global.get("/meshes/default/dataplanes/zone-1.web-1").0 == 200).then_some(()),
    );
    let (status, body) = global.delete("/meshes/default");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["causes"][0]["field"], "mesh", "{body}");
    assert!(
        body.to_string().contains("there are still some dataplanes attached"),
        "{body}"
    );
    assert_eq!(global.get("/meshes/default").0, 200, "the mesh stays");
    assert_eq!(
        zone.get("/meshes/default/dataplanes/web-1").0,
        200,
        "and the zone's dataplane"
    );
    // Once its dataplanes are gone, it goes.
    assert_eq!(zone.delete("/meshes/default/dataplanes/web-1").0, 200);
    wait_for(
        "the dataplane gone at the global",
        std::time::Duration::from_secs(60),
        || (global.get("/meshes/default/dataplanes/zone-1.web-1").0 == 404).then_some(()),
    );
    assert_eq!(global.delete("/meshes/default").0, 200);
}
