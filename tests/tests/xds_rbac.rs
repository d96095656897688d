#![allow(clippy::unwrap_used, clippy::expect_used)]
//! MeshTrafficPermission enforced by a proxyless, xDS-enabled gRPC server
//! (gRFC A36 + A41): a real global and zone, a Python grpcio server started
//! with `xds=True` that takes its Listener (and the RBAC filter in it) from
//! the zone, and real Python grpcio and Node @grpc/grpc-js-xds clients
//! calling it through `xds:///backend` from 127.0.0.1.
//!
//! Policies are applied at the global with meridianctl; every step waits,
//! with a deadline, until a client's calls show the new outcome, then
//! checks both client kinds.
//!
//! Build the binaries first: `cargo build --workspace --bins`; the clients
//! come from `scripts/test-all.sh`.

use std::time::Duration;

use meridian_e2e::dp::{dataplane_token, xds_ca, Agent, AgentSpec};
use meridian_e2e::xds_clients::{run_client, try_run_client, ClientKind, ClientReport, TestServer};
use meridian_e2e::*;
use serde_json::{json, Value};

const MESH: &str = "default";
const SERVER: &str = "backend-1";
/// Policy changes travel global → zone → server: allow for slow machines.
const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const CALLS: usize = 10;
const POLICY: &str = "backend-callers";

fn register(zone: &Proc, name: &str, address: &str, port: u16, service: &str) {
    let body = json!({"type": "Dataplane", "name": name, "mesh": MESH,
        "networking": {"address": address, "inbound": [{"port": port,
            "tags": {"kuma.io/service": service, "kuma.io/protocol": "grpc"}}]}});
    // The mesh may not have reached the zone yet.
    wait_until(&format!("dataplane {name} registered"), CONVERGE, POLL, || {
        match zone.put_json(&format!("/meshes/{MESH}/dataplanes/{name}"), &body) {
            (200 | 201, _) => Ok(()),
            (status, reply) => Err(format!("{status} {reply}")),
        }
    });
}

/// Applies a MeshTrafficPermission on backend with `from` at the global.
fn permit(global: &Proc, from: Value) {
    let doc = json!({"type": "MeshTrafficPermission", "name": POLICY, "mesh": MESH, "spec": {
        "targetRef": {"kind": "MeshService", "name": "backend"}, "from": from}});
    let out = global.ctl(&["apply", "-f", "-"], Some(&doc.to_string()));
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
}

fn rule(target: Value, action: &str) -> Value {
    json!({"targetRef": target, "default": {"action": action}})
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// Every call answered by the server.
    Served,
    /// Every call refused with PERMISSION_DENIED.
    Denied,
}

fn outcome_of(r: &ClientReport) -> Option<Outcome> {
    let n = r.total;
    if n > 0 && r.ok_from(SERVER) == n {
        Some(Outcome::Served)
    } else if n > 0 && r.errors_of("PERMISSION_DENIED") == n {
        Some(Outcome::Denied)
    } else {
        None
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Waits until the Python client's calls show `want` (the server may not be
/// serving yet, or still have the previous Listener), then holds both client
/// kinds to it.
fn expect(web: &Agent, want: Outcome, step: &str) {
    let bootstrap = web.bootstrap();
    let args = ["--deadline-ms", "3000", "--ready-timeout-ms", "3000"];
    wait_until(&format!("{step}: {want:?}"), CONVERGE, POLL, || {
        match try_run_client(
            ClientKind::Python,
            "xds:///backend",
            3,
            &args,
            Some(bootstrap),
            CONVERGE,
        ) {
            Ok(r) if outcome_of(&r) == Some(want) => Ok(()),
            Ok(r) => Err(format!("{}", r.raw)),
            Err(f) => Err(format!("no report: {}", tail(&f.stderr))),
        }
    });
    for kind in ClientKind::ALL {
        let r = run_client(kind, "xds:///backend", CALLS, &args, Some(bootstrap));
        assert_eq!(
            outcome_of(&r),
            Some(want),
            "{step}: {kind:?} client: {}\nstderr (tail):\n{}",
            r.raw,
            tail(&r.stderr)
        );
        if want == Outcome::Denied {
            let sample = r.error_samples.get("PERMISSION_DENIED").cloned().unwrap_or_default();
            assert!(!sample.is_empty(), "{step}: {kind:?}: no message for the denial");
        }
    }
}

#[test]
fn mesh_traffic_permission_is_enforced_by_an_xds_enabled_grpc_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_on(d, &d.join("global"), free_port(), free_port(), &[]);
    let join = zone_join(&global, "zone-1", &d.join("join"));
    let xds = free_port();
    let zone = start_zone_xds(d, &join, None, xds, &["--store", "memory"]);

    // The server's dataplane first: the zone admits registered proxies only,
    // and an xDS server cannot take port 0, so the port is chosen here.
    let port = free_port();
    register(&zone, SERVER, "127.0.0.1", port, "backend");
    // The clients' identity: web, at the address they call from.
    register(&zone, "web", "127.0.0.1", 1, "web");
    // A service whose only dataplane is elsewhere.
    register(&zone, "far-1", "127.0.0.9", 1, "far");

    // Each runs beside its meridian-dp, with a token for its name only.
    let ca = xds_ca(&zone, d);
    let agent = |name: &str| {
        let token = dataplane_token(&global.api, &json!({"mesh": MESH, "name": name}));
        Agent::grpc(
            d,
            &AgentSpec {
                xds_port: xds,
                ca_file: &ca,
                token: &token,
                mesh: MESH,
                name,
                dataplane: None,
                extra: &[],
                env: &[],
            },
        )
    };
    let server_agent = agent(SERVER);
    let web = agent("web");
    let server = TestServer::start_xds(SERVER, port, server_agent.bootstrap(), &[]);

    // (a) No MeshTrafficPermission selects backend (a mesh's initial
    // policies have none): every caller is served, once the server has its
    // Listener.
    expect(&web, Outcome::Served, "(a) no MeshTrafficPermission");

    // (b) Everyone denied.
    permit(&global, json!([rule(json!({"kind": "Mesh"}), "Deny")]));
    expect(&web, Outcome::Denied, "(b) from Mesh: Deny");

    // (c) web allowed over the mesh-wide deny (the later entry wins): the
    // clients call from web's address.
    permit(
        &global,
        json!([
            rule(json!({"kind": "Mesh"}), "Deny"),
            rule(json!({"kind": "MeshService", "name": "web"}), "Allow")
        ]),
    );
    expect(&web, Outcome::Served, "(c) from MeshService web: Allow");

    // (d) Only far allowed, and far's dataplanes are at 127.0.0.9 only.
    permit(
        &global,
        json!([
            rule(json!({"kind": "Mesh"}), "Deny"),
            rule(json!({"kind": "MeshService", "name": "far"}), "Allow")
        ]),
    );
    expect(&web, Outcome::Denied, "(d) from MeshService far (127.0.0.9): Allow");

    // (e) Without the policy, the server serves everyone again.
    let out = global.ctl(&["delete", "meshtrafficpermission", POLICY, "-m", MESH], None);
    assert!(out.status.success(), "delete: {}", String::from_utf8_lossy(&out.stderr));
    expect(&web, Outcome::Served, "(e) policy deleted");

    let log = server.output();
    assert!(!log.contains("Traceback"), "the server failed:\n{log}");
}
