#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A zone keeps serving xDS from its last-known state while the global is
//! unreachable, and across its own restart: a real global and a zone on its
//! embedded store, a route applied at the global, then the global killed
//! (-9) and the zone restarted while it stays down. Real Python grpcio and
//! Node @grpc/grpc-js-xds clients must still follow the route, through one
//! `meridian-dp` that lives through it all: its relay reconnects to the
//! restarted zone and its registration is held again.
//!
//! Build the binaries first: `cargo build --workspace --bins`; the clients
//! come from `scripts/test-all.sh`.

use std::time::Duration;

use meridian_e2e::dp::{dataplane_token, xds_ca, Agent, AgentSpec};
use meridian_e2e::xds_clients::{run_client, ClientKind, TestServer};
use meridian_e2e::*;
use serde_json::{json, Value};

const MESH: &str = "default";
const CONVERGE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

fn register(zone: &Proc, name: &str, port: u16, tags: Value) {
    let body = json!({"type": "Dataplane", "name": name, "mesh": MESH,
        "networking": {"address": "127.0.0.1", "inbound": [{"port": port, "tags": tags}]}});
    let (status, reply) = zone.put_json(&format!("/meshes/{MESH}/dataplanes/{name}"), &body);
    assert!(status == 200 || status == 201, "PUT dataplane {name}: {status} {reply}");
}

/// Every call of each client kind lands on `zone-1/v2`.
fn all_calls_reach_v2(agent: &Agent, what: &str) {
    for kind in ClientKind::ALL {
        let r = run_client(kind, "xds:///backend", 20, &[], Some(agent.bootstrap()));
        assert_eq!(
            r.ok_from("zone-1/v2"),
            20,
            "{kind:?} {what}: {}\nstderr (tail): {}",
            r.raw,
            r.stderr.lines().rev().take(10).collect::<Vec<_>>().join("\n"),
        );
    }
}

#[test]
fn a_zone_serves_its_last_known_config_without_the_global_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut global = start_global_on(
        d,
        &d.join("global"),
        free_port(),
        free_port(),
        &["--kds-keepalive", "2s"],
    );
    let join = zone_join(&global, "zone-1", &d.join("join"));
    let (api, xds) = (free_port(), free_port());
    let data = d.join("zone-1-data");
    let store = ["--store", "embedded", "--data-dir", data.to_str().unwrap()];
    let mut zone = start_zone_xds(d, &join, Some(api), xds, &store);

    let v1 = TestServer::start("zone-1/v1", &[]);
    let v2 = TestServer::start("zone-1/v2", &[]);
    register(
        &zone,
        "v1",
        v1.port,
        json!({"kuma.io/service": "backend", "version": "v1"}),
    );
    register(
        &zone,
        "v2",
        v2.port,
        json!({"kuma.io/service": "backend", "version": "v2"}),
    );
    // The client's agent registers its dataplane and keeps it registered.
    let token = dataplane_token(&global.api, &json!({"mesh": MESH, "name": "client"}));
    let ca = xds_ca(&zone, d);
    let client_dp = json!({"type": "Dataplane", "name": "client", "mesh": MESH,
        "networking": {"address": "127.0.0.1", "inbound": [{"port": 1, "tags": {"kuma.io/service": "client"}}]}});
    let agent = Agent::grpc(
        d,
        &AgentSpec {
            xds_port: xds,
            ca_file: &ca,
            token: &token,
            mesh: MESH,
            name: "client",
            dataplane: Some(&client_dp),
            extra: &[],
            env: &[],
        },
    );

    let route = json!({"type": "MeshHTTPRoute", "name": "backend-v2", "mesh": MESH, "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "default": {"backendRefs": [
                {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 1}]}}]}]}});
    let out = global.ctl(&["apply", "-f", "-"], Some(&route.to_string()));
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    wait_until("the route at zone-1", CONVERGE, POLL, || {
        match zone.get(&format!("/meshes/{MESH}/meshhttproutes/backend-v2")) {
            (200, _) => Ok(()),
            (s, v) => Err(format!("{s} {v}")),
        }
    });
    all_calls_reach_v2(&agent, "with the global up");

    global.kill9();
    all_calls_reach_v2(&agent, "with the global killed");

    // The zone restarts while the global stays down: it starts from its own
    // store, without waiting for the global.
    zone.terminate();
    let zone = start_zone_xds(d, &join, Some(api), xds, &store);
    let (status, body) = zone.get(&format!("/meshes/{MESH}/meshhttproutes/backend-v2"));
    assert_eq!(status, 200, "the restarted zone lost the route: {body}");
    all_calls_reach_v2(&agent, "after a zone restart with the global down");
    // The agent held its registration again on the restarted zone.
    wait_until("the agent's registration held again", CONVERGE, POLL, || {
        let log = agent.log_text();
        let held = log.matches("dataplane registered").count();
        (held >= 2).then_some(()).ok_or(log)
    });
    let log = zone.log_text();
    assert!(
        !log.contains("connected to the global"),
        "the global was supposed to be unreachable:\n{log}"
    );
}
