//! The HTTP API and meridianctl against a real `meridian-global` process on
//! the embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meridian_e2e::*;
use serde_json::{json, Value};

const DEFAULT_POLICIES: [&str; 4] = [
    "mesh-circuit-breaker-all-default",
    "mesh-gateways-timeout-all-default",
    "mesh-retry-all-default",
    "mesh-timeout-all-default",
];

fn policy_names(g: &Proc, mesh: &str) -> Vec<String> {
    let mut out = Vec::new();
    for plural in ["meshtimeouts", "meshretries", "meshcircuitbreakers"] {
        let (status, list) = g.get(&format!("/meshes/{mesh}/{plural}"));
        assert_eq!(status, 200, "{list}");
        out.extend(names(&list));
    }
    out.sort();
    out
}

#[test]
fn defaults_on_first_start_with_exact_specs_and_never_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut g = start_global_embedded(dir.path(), &data, &[]);

    let (status, root) = g.get("/");
    assert_eq!(status, 200);
    assert_eq!(root["product"], "Meridian");
    assert_eq!(root["mode"], "global");

    let (_, meshes) = g.get("/meshes");
    assert_eq!(names(&meshes), ["default"]);
    assert_eq!(policy_names(&g, "default"), DEFAULT_POLICIES);

    let (_, t) = g.get("/meshes/default/meshtimeouts/mesh-timeout-all-default");
    assert_eq!(
        t["spec"],
        json!({"targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
               "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "5s", "idleTimeout": "1h",
                        "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"}}}],
               "from": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "10s", "idleTimeout": "2h",
                        "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"}}}]})
    );
    let (_, gw) = g.get("/meshes/default/meshtimeouts/mesh-gateways-timeout-all-default");
    assert_eq!(
        gw["spec"]["from"][0]["default"]["http"]["requestHeadersTimeout"],
        "500ms"
    );
    assert_eq!(gw["spec"]["targetRef"]["proxyTypes"], json!(["Gateway"]));
    let (_, r) = g.get("/meshes/default/meshretries/mesh-retry-all-default");
    assert_eq!(
        r["spec"]["to"][0]["default"],
        json!({"tcp": {"maxConnectAttempt": 5},
               "http": {"numRetries": 5, "perTryTimeout": "16s", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}},
               "grpc": {"numRetries": 5, "perTryTimeout": "16s", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}}})
    );
    let (_, cb) = g.get("/meshes/default/meshcircuitbreakers/mesh-circuit-breaker-all-default");
    assert_eq!(
        cb["spec"]["to"][0]["default"]["connectionLimits"],
        json!({"maxConnections": 1024, "maxPendingRequests": 1024, "maxRetries": 3, "maxRequests": 1024})
    );

    // A user deletes a default policy and the default mesh's sibling; a
    // restart must not bring them back.
    assert_eq!(g.delete("/meshes/default/meshretries/mesh-retry-all-default").0, 200);
    let (status, _) = g.put_json("/meshes/other", &json!({"type": "Mesh", "name": "other"}));
    assert_eq!(status, 201);
    wait_for("defaults of mesh other", Duration::from_secs(10), || {
        (policy_names(&g, "other").len() == 4).then_some(())
    });
    assert_eq!(g.delete("/meshes/default").0, 200);
    assert_eq!(g.terminate().code(), Some(0), "clean exit on SIGTERM");

    let g = start_global_embedded(dir.path(), &data, &[]);
    let (_, meshes) = g.get("/meshes");
    assert_eq!(names(&meshes), ["other"], "the deleted default mesh stays deleted");
    assert_eq!(policy_names(&g, "other").len(), 4);

    // Re-creating a deleted mesh is a new mesh: it gets its defaults again.
    assert_eq!(
        g.put_json("/meshes/default", &json!({"type": "Mesh", "name": "default"}))
            .0,
        201
    );
    wait_for("defaults of re-created mesh", Duration::from_secs(10), || {
        (policy_names(&g, "default") == DEFAULT_POLICIES).then_some(())
    });
}

#[test]
fn skip_default_mesh_and_initial_policies() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_embedded(
        dir.path(),
        &dir.path().join("d"),
        &[("KUMA_DEFAULTS_SKIP_MESH_CREATION", "true")],
    );
    let (_, meshes) = g.get("/meshes");
    assert_eq!(meshes["total"], 0, "{meshes}");

    let out = g.ctl(
        &["apply", "-f", "-"],
        Some("type: Mesh\nname: bare\nskipCreatingInitialPolicies: ['*']\n---\ntype: Mesh\nname: half\nskipCreatingInitialPolicies: [MeshTimeout]\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("defaults of mesh half", Duration::from_secs(10), || {
        (policy_names(&g, "half") == ["mesh-circuit-breaker-all-half", "mesh-retry-all-half"]).then_some(())
    });
    // The marker for "bare" is written after its (empty) defaults pass; check
    // a later mesh got its defaults to know the pass for "bare" has run.
    assert_eq!(
        g.put_json("/meshes/late", &json!({"type": "Mesh", "name": "late"})).0,
        201
    );
    wait_for("defaults of mesh late", Duration::from_secs(10), || {
        (policy_names(&g, "late").len() == 4).then_some(())
    });
    assert!(policy_names(&g, "bare").is_empty());
}

#[test]
fn apply_get_round_trip_and_tenancy() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_embedded(dir.path(), &dir.path().join("d"), &[]);
    let input = r#"
apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: payments
spec:
  mtls:
    enabledBackend: ca-1
    backends:
    - name: ca-1
      type: builtin
      mode: PERMISSIVE
      dpCert:
        rotation:
          expiration: 24h
  networking:
    outbound:
      passthrough: false
  constraints:
    dataplaneProxy:
      requirements:
      - tags:
          kuma.io/zone: '*'
---
apiVersion: kuma.io/v1alpha1
kind: MeshTimeout
metadata:
  name: slow
  namespace: kong-mesh-system
  labels:
    kuma.io/mesh: payments
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    default:
      http:
        requestTimeout: 3s
---
type: MeshTimeout
mesh: default
name: slow
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: Mesh
    default:
      idleTimeout: 10m
"#;
    let path = dir.path().join("in.yaml");
    std::fs::write(&path, input).unwrap();
    let out = g.ctl(&["apply", "-f", path.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The same name in two meshes is two resources.
    let (_, a) = g.get("/meshes/payments/meshtimeouts/slow");
    let (_, b) = g.get("/meshes/default/meshtimeouts/slow");
    assert_eq!(a["spec"]["to"][0]["default"]["http"]["requestTimeout"], "3s");
    assert_eq!(b["spec"]["to"][0]["default"]["idleTimeout"], "10m");

    // get -o yaml shows what was applied, and applying it again is a no-op update.
    let out = g.ctl(&["get", "meshtimeout", "slow", "-m", "payments", "-o", "yaml"], None);
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("requestTimeout: 3s"), "{yaml}");
    assert!(yaml.contains("kuma.io/mesh: payments"), "{yaml}");
    let again = g.ctl(&["apply", "-f", "-"], Some(&yaml));
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let (_, a2) = g.get("/meshes/payments/meshtimeouts/slow");
    assert_eq!(a2["spec"], a["spec"]);
    assert_eq!(a2["creationTime"], a["creationTime"]);

    let (_, mesh) = g.get("/meshes/payments");
    assert_eq!(mesh["mtls"]["backends"][0]["dpCert"]["rotation"]["expiration"], "24h");
    assert_eq!(mesh["networking"]["outbound"]["passthrough"], false);

    // Table output lists both meshes' policies by mesh.
    let out = g.ctl(&["get", "meshtimeouts", "-m", "payments"], None);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("slow") && table.contains("mesh-timeout-all-payments"),
        "{table}"
    );

    // Deleting a mesh deletes everything in it and nothing elsewhere.
    let out = g.ctl(&["delete", "mesh", "payments"], None);
    assert!(out.status.success());
    assert_eq!(g.get("/meshes/payments/meshtimeouts/slow").0, 404);
    assert_eq!(g.get("/meshes/payments/meshtimeouts").1["total"], 0);
    assert_eq!(g.get("/meshes/default/meshtimeouts/slow").0, 200);
}

#[test]
fn bad_input_is_refused_with_the_field_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_embedded(dir.path(), &dir.path().join("d"), &[]);
    let before = g.get("/global-insight").1;

    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("/meshes/default/meshtimeouts/t", "type: MeshTimeout\nname: t\nspec: [".into(), "application/yaml", 400, ""),
        ("/meshes/default/meshtimeouts/t", "{\"type\": \"MeshTimeout\"".into(), "application/json", 400, ""),
        (
            "/meshes/default/meshtimeouts/t",
            "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http: {requestTimeout: 15 seconds}\n".into(),
            "application/yaml",
            400,
            "spec.to[0].default.http.requestTimeout",
        ),
        (
            "/meshes/default/meshtimeouts/t",
            "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: Mesh}\n  bogus: 1\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1s}\n".into(),
            "application/yaml",
            400,
            "spec",
        ),
        (
            "/meshes/default/meshtimeouts/t",
            "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshSubset, tags: {a: b}}\n    default: {idleTimeout: 1s}\n".into(),
            "application/yaml",
            400,
            "spec.to[0].targetRef.kind",
        ),
        (
            "/meshes/nope/meshtimeouts/t",
            "type: MeshTimeout\nname: t\nmesh: nope\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1s}\n".into(),
            "application/yaml",
            400,
            "mesh",
        ),
        (
            "/meshes/default/meshtimeouts/t",
            "type: MeshTimeout\nname: other\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1s}\n".into(),
            "application/yaml",
            400,
            "name",
        ),
        (
            "/meshes/default/meshtimeouts/t",
            "type: MeshRetry\nname: t\nspec:\n  targetRef: {kind: Mesh}\n".into(),
            "application/yaml",
            400,
            "",
        ),
        ("/meshes/default/nosuchthings/t", "{}".into(), "application/json", 404, ""),
        (
            "/meshes/default/meshtimeouts/t",
            format!("{{\"type\":\"MeshTimeout\",\"name\":\"t\",\"labels\":{{\"a\":\"{}\"}}}}", "x".repeat(2 * 1024 * 1024)),
            "application/json",
            413,
            "",
        ),
        (
            "/meshes/default/dataplanes/dp",
            "{\"type\":\"Dataplane\",\"name\":\"dp\",\"networking\":{\"address\":\"127.0.0.1\",\"inbound\":[{\"port\":1,\"tags\":{\"kuma.io/service\":\"a\"}}]}}".into(),
            "application/json",
            405,
            "",
        ),
    ];
    for (path, body, ct, want, field) in &cases {
        let (status, resp) = g.put_raw(path, body, ct);
        assert_eq!(status, *want, "PUT {path} {}: {resp}", &body[..body.len().min(200)]);
        if !field.is_empty() {
            let causes = resp["causes"].as_array().cloned().unwrap_or_default();
            assert!(
                causes
                    .iter()
                    .any(|c| c["field"].as_str().unwrap_or("").starts_with(field)),
                "expected a cause naming {field}: {resp}"
            );
            assert!(causes.iter().all(|c| !c["message"].as_str().unwrap_or("").is_empty()));
        }
        if *want == 400 && field.is_empty() {
            assert!(resp["details"].as_str().is_some_and(|d| !d.is_empty()), "{resp}");
        }
    }
    assert_eq!(g.get("/meshes/default/meshtimeouts/t").0, 404);
    assert_eq!(g.get("/meshes/default/meshtimeouts/other").0, 404);
    let after = g.get("/global-insight").1;
    assert_eq!(before["policies"], after["policies"], "nothing stored");
    assert_eq!(before["meshes"], after["meshes"]);

    // A bad document in a multi-document apply applies nothing at all.
    let out = g.ctl(
        &["apply", "-f", "-"],
        Some("type: Mesh\nname: fine\n---\ntype: MeshRetry\nname: r\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http: {numRetries: many}\n"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.to[0].default.http.numRetries"), "{err}");
    assert_eq!(g.get("/meshes/fine").0, 404);

    // The server still serves everyone else.
    assert_eq!(g.get("/meshes/default").0, 200);
}

#[test]
fn paging_metrics_and_kill9_durability() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut g = start_global_embedded(dir.path(), &data, &[("KUMA_DEFAULTS_SKIP_MESH_CREATION", "true")]);
    for i in 0..25 {
        let (s, body) = g.put_json(
            &format!("/meshes/m{i:02}"),
            &json!({"type": "Mesh", "name": format!("m{i:02}"), "skipCreatingInitialPolicies": ["*"]}),
        );
        assert_eq!(s, 201, "{body}");
    }
    let (_, page) = g.get("/meshes?size=10&offset=20");
    assert_eq!(page["total"], 25);
    assert_eq!(names(&page), ["m20", "m21", "m22", "m23", "m24"]);
    assert!(page["next"].is_null());
    let (_, page) = g.get("/meshes?size=10");
    assert!(
        page["next"].as_str().unwrap().ends_with("/meshes?offset=10&size=10"),
        "{page}"
    );
    assert_eq!(g.get("/meshes?size=abc").0, 400);

    // Update answers 200 and keeps creationTime.
    let (_, before) = g.get("/meshes/m00");
    let (s, after) = g.put_json(
        "/meshes/m00",
        &json!({"type": "Mesh", "name": "m00", "routing": {"localityAwareLoadBalancing": true}}),
    );
    assert_eq!(s, 200, "{after}");
    assert_eq!(before["creationTime"], after["creationTime"]);

    let (s, metrics) = g.get("/metrics");
    assert_eq!(s, 200);
    let text = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        text.lines().any(|l| l.starts_with("meridian_api_requests_total{")),
        "{text}"
    );
    assert!(text.contains("meridian_resources{resource_type=\"Mesh\"} 25"), "{text}");
    assert_eq!(g.get("/healthy").0, 200);

    // kill -9: every acknowledged write survives.
    g.kill9();
    let g = start_global_embedded(dir.path(), &data, &[("KUMA_DEFAULTS_SKIP_MESH_CREATION", "true")]);
    assert_eq!(g.get("/meshes").1["total"], 25);
    assert_eq!(g.get("/meshes/m00").1["routing"]["localityAwareLoadBalancing"], true);
}

#[test]
fn second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let _g = start_global_embedded(dir.path(), &data, &[]);
    let port = free_port();
    let mut second = Proc::spawn(
        "meridian-global",
        &[
            "run".into(),
            "--api-addr".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data.display().to_string(),
        ],
        &[],
        dir.path(),
        port,
    );
    let status = wait_for("second global to exit", Duration::from_secs(20), || {
        second.child.try_wait().ok().flatten()
    });
    assert!(!status.success());
    let log = second.log_text();
    assert!(log.contains("embedded store"), "{log}");
}

#[test]
fn zone_standalone_serves_its_own_meshes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut z = Proc::spawn(
        "meridian-zone",
        &[
            "run".into(),
            "--zone".into(),
            "zone-1".into(),
            "--api-addr".into(),
            format!("127.0.0.1:{port}"),
            "--store".into(),
            "memory".into(),
        ],
        &[],
        dir.path(),
        port,
    );
    z.wait_ready(Duration::from_secs(30));
    let (_, root) = z.get("/");
    assert_eq!(root["mode"], "standalone");
    assert_eq!(root["zone"], "zone-1");
    assert_eq!(policy_names(&z, "default"), DEFAULT_POLICIES);
    // A standalone zone owns its dataplanes too.
    let dp = json!({"type": "Dataplane", "name": "dp-1", "mesh": "default",
        "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "backend"}}]}});
    assert_eq!(z.put_json("/meshes/default/dataplanes/dp-1", &dp).0, 201);
    let (_, overview) = z.get("/meshes/default/dataplanes+insights");
    assert_eq!(
        overview["items"][0]["dataplane"]["networking"]["inbound"][0]["port"],
        8080
    );
    let _: &Value = &overview;
}

#[test]
fn logs_are_json_objects_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_on(
        dir.path(),
        &dir.path().join("g"),
        free_port(),
        free_port(),
        &["--log-format", "json", "--log-level", "meridian_server=debug,info"],
    );
    let (status, _) = g.get("/meshes");
    assert_eq!(status, 200);
    let log = g.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|v| v["fields"]["message"] == "API listening"), "{log}");
    assert!(
        lines.iter().any(|v| v["level"] == "DEBUG"),
        "the level filter applies: {log}"
    );
    // A level that is not one is refused at start, naming the flag.
    let out = std::process::Command::new(bin("meridian-global"))
        .args(["run", "--log-level", "loud=="])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log-level"), "{out:?}");
}
