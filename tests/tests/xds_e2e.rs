#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Zone xDS end to end: a real global (embedded store) and two zones joined
//! with `meridianctl generate zone-join`, grpcio test servers registered as
//! Dataplanes, policies applied at the global with meridianctl, and real
//! proxyless gRPC clients (Python grpcio, Node @grpc/grpc-js-xds) showing
//! each policy's effect: reachability, weighted routes, path-prefix routes,
//! retries, timeouts, fault injection, a live policy change on a running
//! client, cross-zone failover through zone 2's ingress, and refused nodes.
//!
//! One global and two zones serve every scenario; each scenario has its own
//! services (and so its own policies' targets), and the scenarios run side by
//! side. Build the binaries first: `cargo build --workspace --bins`; the
//! clients come from `scripts/test-all.sh`.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_e2e::dp::{dataplane_token, xds_ca, Agent, AgentSpec};
use meridian_e2e::xds_clients::{run_client, try_run_client, ClientKind, ClientReport, TestServer, WatchClient};
use meridian_e2e::*;
use serde_json::{json, Value};

const MESH: &str = "default";
/// How long a policy may take from the global to a zone, or a zone to sync.
const CONVERGE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// How long a running client may take to follow a change.
const SWITCH: Duration = Duration::from_secs(20);

/// One zone: its process, its ADS port and its xDS CA file.
struct Zone {
    name: &'static str,
    proc: Proc,
    xds: u16,
    ca: std::path::PathBuf,
}

/// The shared deployment: a global and two zones; zone 2 advertises an
/// ingress at `127.0.0.1:<ingress port>`, where nothing listens until the
/// failover scenario puts a forwarder on `ingress`.
struct Deployment {
    dir: std::path::PathBuf,
    global: Proc,
    zone1: Zone,
    zone2: Zone,
    ingress: Mutex<Option<TcpListener>>,
    clients: AtomicUsize,
}

/// Log text without the ANSI colours of the tracing output.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Zone {
    fn start(dir: &Path, global: &Proc, name: &'static str, extra: &[&str]) -> Zone {
        let join = zone_join(global, name, &dir.join("join"));
        let xds = free_port();
        let mut args = vec!["--store", "memory"];
        args.extend_from_slice(extra);
        let proc = start_zone_xds(dir, &join, None, xds, &args);
        let ca = xds_ca(&proc, dir);
        Zone { name, proc, xds, ca }
    }

    fn log(&self) -> String {
        plain(&self.proc.log_text())
    }

    /// The last lines of the zone's log, for failure messages.
    fn log_tail(&self) -> String {
        format!("--- {} log (tail) ---\n{}", self.name, tail(&self.log(), 25))
    }

    /// Registers a Dataplane with one inbound on 127.0.0.1:`port`.
    fn register(&self, name: &str, port: u16, tags: Value) {
        let body = json!({"type": "Dataplane", "name": name, "mesh": MESH,
            "networking": {"address": "127.0.0.1", "inbound": [{"port": port, "tags": tags}]}});
        let (status, reply) = self.proc.put_json(&format!("/meshes/{MESH}/dataplanes/{name}"), &body);
        assert!(
            status == 200 || status == 201,
            "PUT dataplane {name} at {}: {status} {reply}",
            self.name
        );
    }

    /// GET `path` on the zone: `Ok(None)` for 404.
    fn get(&self, path: &str) -> Result<Option<Value>, String> {
        match http("GET", &format!("{}{path}", self.proc.api), None, None) {
            Ok((200, v)) => Ok(Some(v)),
            Ok((404, _)) => Ok(None),
            Ok((s, v)) => Err(format!("GET {path}: {s} {v}")),
            Err(e) => Err(format!("GET {path}: {e}")),
        }
    }
}

/// A grpcio server registered as a Dataplane of `service` with `tags`.
fn backend(zone: &Zone, name: &str, service: &str, tags: Value, flags: &[&str]) -> TestServer {
    let server = TestServer::start(&format!("{}/{name}", zone.name), flags);
    let mut all = json!({"kuma.io/service": service});
    all.as_object_mut()
        .unwrap()
        .extend(tags.as_object().cloned().unwrap_or_default());
    zone.register(name, server.port, all);
    server
}

impl Deployment {
    fn start(dir: &Path) -> Deployment {
        let global = start_global_on(
            dir,
            &dir.join("global"),
            free_port(),
            free_port(),
            &["--kds-keepalive", "2s"],
        );
        let ingress = TcpListener::bind("127.0.0.1:0").unwrap();
        let ingress_address = format!("127.0.0.1:{}", ingress.local_addr().unwrap().port());
        let zone1 = Zone::start(dir, &global, "zone-1", &[]);
        let zone2 = Zone::start(dir, &global, "zone-2", &["--ingress-address", &ingress_address]);
        for zone in [&zone1, &zone2] {
            wait_until(
                &format!("{} to receive the default mesh's policies", zone.name),
                CONVERGE,
                POLL,
                || match zone.get(&format!("/meshes/{MESH}/meshretries/mesh-retry-all-{MESH}"))? {
                    Some(_) => Ok(()),
                    None => Err(zone.log_tail()),
                },
            );
        }
        Deployment {
            dir: dir.to_path_buf(),
            global,
            zone1,
            zone2,
            ingress: Mutex::new(Some(ingress)),
            clients: AtomicUsize::new(0),
        }
    }

    /// Starts `meridian-dp` for a new client dataplane of `zone` (node id
    /// `default.client-N-<hint>`), with a token for that name only, which
    /// registers the dataplane; returns the agent (its bootstrap is what the
    /// client runs with) and the node id.
    fn client(&self, zone: &Zone, hint: &str) -> (Agent, String) {
        let n = self.clients.fetch_add(1, Ordering::SeqCst);
        let name = format!("client-{n}-{hint}");
        let token = dataplane_token(&self.global.api, &json!({"mesh": MESH, "name": name}));
        let dataplane = json!({"type": "Dataplane", "mesh": MESH, "name": name,
            "networking": {"address": "127.0.0.1",
                           "inbound": [{"port": 1, "tags": {"kuma.io/service": "client", "role": hint}}]}});
        let agent = self.agent(zone, &token, &name, Some(&dataplane));
        (agent, format!("{MESH}.{name}"))
    }

    /// `meridian-dp --proxy grpc` for dataplane `name` of `zone`.
    fn agent(&self, zone: &Zone, token: &str, name: &str, dataplane: Option<&Value>) -> Agent {
        self.agent_in(zone, token, MESH, name, dataplane)
    }

    fn agent_in(&self, zone: &Zone, token: &str, mesh: &str, name: &str, dataplane: Option<&Value>) -> Agent {
        Agent::grpc(
            &self.dir,
            &AgentSpec {
                xds_port: zone.xds,
                ca_file: &zone.ca,
                token,
                mesh,
                name,
                dataplane,
                extra: &[],
                env: &[],
            },
        )
    }

    /// Applies `doc` at the global with meridianctl, then waits until zone 1
    /// holds exactly its spec.
    fn apply(&self, doc: Value) {
        let out = self.global.ctl(&["apply", "-f", "-"], Some(&doc.to_string()));
        assert!(
            out.status.success(),
            "meridianctl apply {doc}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = format!("/meshes/{MESH}/{}/{}", plural(&doc), doc["name"].as_str().unwrap());
        wait_until(
            &format!("zone-1 to hold {path} as applied"),
            CONVERGE,
            POLL,
            || match self.zone1.get(&path)? {
                Some(item) if item["spec"] == doc["spec"] => Ok(()),
                seen => Err(format!("{seen:?}\n{}", self.zone1.log_tail())),
            },
        );
    }

    /// Deletes a policy at the global and waits until zone 1 no longer has it.
    fn delete(&self, plural: &str, name: &str) {
        let out = self.global.ctl(&["delete", plural, name, "-m", MESH], None);
        assert!(
            out.status.success(),
            "meridianctl delete {plural} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = format!("/meshes/{MESH}/{plural}/{name}");
        wait_until(&format!("zone-1 to drop {path}"), CONVERGE, POLL, || {
            match self.zone1.get(&path)? {
                None => Ok(()),
                Some(item) => Err(format!("{item}")),
            }
        });
    }
}

fn plural(doc: &Value) -> &'static str {
    let name = doc["type"].as_str().unwrap();
    name.parse::<meridian_core::ResourceType>()
        .unwrap_or_else(|e| panic!("type {name}: {e:?}"))
        .plural()
}

/// What a client saw, and the zone's log, for failure messages.
fn seen(r: &ClientReport, zone: &Zone) -> String {
    format!(
        "client report: {}\nclient stderr (tail):\n{}\n{}",
        r.raw,
        tail(&r.stderr, 10),
        zone.log_tail()
    )
}

/// `n` calls from a new client of zone 1.
fn calls(d: &Deployment, kind: ClientKind, service: &str, n: usize, args: &[&str]) -> ClientReport {
    let (agent, _) = d.client(&d.zone1, &format!("{kind:?}").to_lowercase());
    run_client(kind, &format!("xds:///{service}"), n, args, Some(agent.bootstrap()))
}

fn route(name: &str, service: &str, v1: u32, v2: u32) -> Value {
    json!({"type": "MeshHTTPRoute", "name": name, "mesh": MESH, "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": service}, "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "default": {"backendRefs": [
                {"kind": "MeshServiceSubset", "name": service, "tags": {"version": "v1"}, "weight": v1},
                {"kind": "MeshServiceSubset", "name": service, "tags": {"version": "v2"}, "weight": v2}]}}]}]}})
}

/// 1 and 2: clients reach `backend` (v1 and v2 in zone 1), then an 80/20
/// MeshHTTPRoute splits 1,000 calls accordingly.
fn reach_and_weighted_route(d: &Deployment) {
    let _v1 = backend(&d.zone1, "backend-v1", "backend", json!({"version": "v1"}), &[]);
    let _v2 = backend(&d.zone1, "backend-v2", "backend", json!({"version": "v2"}), &[]);
    let (v1, v2) = ("zone-1/backend-v1", "zone-1/backend-v2");
    for kind in ClientKind::ALL {
        let r = calls(d, kind, "backend", 50, &[]);
        let why = seen(&r, &d.zone1);
        assert_eq!(r.total, 50, "{kind:?}: {why}");
        assert_eq!(r.ok_total(), 50, "{kind:?}: every call reaches backend: {why}");
        // Round robin over the two local endpoints.
        assert!(r.ok_from(v1) >= 10 && r.ok_from(v2) >= 10, "{kind:?}: {why}");
    }

    d.apply(route("backend-split", "backend", 80, 20));
    for kind in ClientKind::ALL {
        let r = calls(d, kind, "backend", 1000, &["--concurrency", "4"]);
        let why = seen(&r, &d.zone1);
        assert_eq!(r.ok_total(), 1000, "{kind:?}: {why}");
        let share = r.share(v1);
        eprintln!("{kind:?}: 80/20 route gave v1 {} / v2 {}", r.ok_from(v1), r.ok_from(v2));
        assert!(
            (0.75..=0.85).contains(&share),
            "{kind:?}: v1 share {share} outside [0.75, 0.85]: {why}"
        );
        assert_eq!(r.ok_from(v1) + r.ok_from(v2), 1000, "{kind:?}: {why}");
    }
    prefix_matches_whole_path_elements(d, v1, v2);
}

/// 2b: a PathPrefix matches whole path elements. Over the 80/20 split, a
/// route sending `/meridian.test.Echo` to v1 takes every call of the
/// clients (`/meridian.test.Echo/Call`); changed to `/meridian.test.Ech`,
/// it takes none of them, and the split applies again.
fn prefix_matches_whole_path_elements(d: &Deployment, v1: &str, v2: &str) {
    let to_v1 = |prefix: &str| {
        json!({"type": "MeshHTTPRoute", "name": "backend-prefix", "mesh": MESH, "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "default": {"backendRefs": [
                    {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}}]}}]}]}})
    };
    d.apply(to_v1("/meridian.test.Echo"));
    for kind in ClientKind::ALL {
        let r = calls(d, kind, "backend", 50, &[]);
        assert_eq!(
            r.ok_from(v1),
            50,
            "{kind:?}: /meridian.test.Echo takes every call: {}",
            seen(&r, &d.zone1)
        );
    }
    d.apply(to_v1("/meridian.test.Ech"));
    for kind in ClientKind::ALL {
        let r = calls(d, kind, "backend", 50, &[]);
        let why = seen(&r, &d.zone1);
        assert_eq!(r.ok_total(), 50, "{kind:?}: {why}");
        assert!(
            r.ok_from(v2) > 0,
            "{kind:?}: /meridian.test.Ech took /meridian.test.Echo/Call: {why}"
        );
    }
    d.delete("meshhttproutes", "backend-prefix");
}

fn retry(name: &str, service: &str, num_retries: u32) -> Value {
    json!({"type": "MeshRetry", "name": name, "mesh": MESH, "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": service}, "default": {"grpc": {
            "numRetries": num_retries, "retryOn": ["Unavailable"],
            "backOff": {"baseInterval": "10ms", "maxInterval": "50ms"}}}}]}})
}

/// 3: a backend failing each request's first attempt. The default
/// MeshRetry gets calls through; without it, or with `numRetries: 0`, they
/// fail; a MeshRetry with retries on Unavailable gets them through again.
fn retries(d: &Deployment) {
    let server = backend(&d.zone1, "flaky", "flaky", json!({}), &["--fail-first", "1"]);
    let through = |r: &ClientReport, kind: ClientKind, what: &str| {
        let why = format!(
            "{}\nserver output (tail):\n{}",
            seen(r, &d.zone1),
            tail(&server.output(), 10)
        );
        assert_eq!(r.ok_from("zone-1/flaky"), 20, "{kind:?} {what}: {why}");
        assert_eq!(
            r.attempts.get(&2),
            Some(&20),
            "{kind:?} {what}: the server saw attempt 2: {why}"
        );
    };
    let failing = |r: &ClientReport, kind: ClientKind, what: &str| {
        let why = seen(r, &d.zone1);
        assert_eq!(r.errors_of("UNAVAILABLE"), 20, "{kind:?} {what}: {why}");
        assert!(
            r.error_samples["UNAVAILABLE"].contains("injected failure"),
            "{kind:?} {what}: the server's own failure: {why}"
        );
    };

    let r = calls(d, ClientKind::Python, "flaky", 20, &[]);
    through(&r, ClientKind::Python, "with the default MeshRetry");

    d.delete("meshretries", &format!("mesh-retry-all-{MESH}"));
    let r = calls(d, ClientKind::Python, "flaky", 20, &[]);
    failing(&r, ClientKind::Python, "without any MeshRetry");

    // numRetries 0 is "no retries", and must not cost the client its routes.
    d.apply(retry("flaky-retry", "flaky", 0));
    for kind in ClientKind::ALL {
        let r = calls(d, kind, "flaky", 20, &[]);
        failing(&r, kind, "with numRetries 0");
    }
    let nacks: Vec<String> = d
        .zone1
        .log()
        .lines()
        .filter(|l| l.contains("NACK"))
        .map(str::to_string)
        .collect();
    assert!(
        nacks.is_empty(),
        "clients rejected their configuration:\n{}",
        nacks.join("\n")
    );

    d.apply(retry("flaky-retry", "flaky", 2));
    for kind in ClientKind::ALL {
        let r = calls(d, kind, "flaky", 20, &[]);
        through(&r, kind, "with numRetries 2 on Unavailable");
    }
    inspect_sidecar(d);
}

/// `meridianctl inspect dataplane` on zone 1 shows what a sidecar calling
/// `flaky` gets: the matched MeshRetry, and a cluster and listener for it.
fn inspect_sidecar(d: &Deployment) {
    let body = json!({"type": "Dataplane", "name": "inspect-web", "mesh": MESH,
        "networking": {"address": "127.0.0.1",
            "inbound": [{"port": 1, "tags": {"kuma.io/service": "inspect-web"}}],
            "outbound": [{"port": 20001, "tags": {"kuma.io/service": "flaky"}}]}});
    let (status, reply) = d
        .zone1
        .proc
        .put_json(&format!("/meshes/{MESH}/dataplanes/inspect-web"), &body);
    assert!(status == 200 || status == 201, "PUT inspect-web: {status} {reply}");
    let inspect_with = |extra: &[&str]| -> Value {
        let mut args = vec!["inspect", "dataplane", "inspect-web", "-m", MESH, "-o", "json"];
        args.extend_from_slice(extra);
        let out = d.zone1.proc.ctl(&args, None);
        assert!(
            out.status.success(),
            "meridianctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let inspect = |view: &str| inspect_with(&["--type", view]);
    let policies = inspect("policies");
    let flaky = policies["outbounds"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["service"] == "flaky"))
        .unwrap_or_else(|| panic!("no outbound to flaky in {policies}"));
    assert_eq!(flaky["policies"]["retry"]["grpc"]["numRetries"], 2, "{policies}");
    // The rules, with the policies they came from: flaky-retry towards
    // flaky; a MeshAccessLog towards every destination, said to have no
    // effect on gRPC clients.
    d.apply(json!({"type": "MeshAccessLog", "name": "inspect-log", "mesh": MESH, "spec": {
        "targetRef": {"kind": "MeshService", "name": "inspect-web"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [{"type": "File", "file": {"path": "/dev/stdout"}}]}}]}}));
    let rules = wait_until("zone-1 to hold inspect-log", CONVERGE, POLL, || {
        let rules = inspect("rules");
        let has_log = rules["rules"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["type"] == "MeshAccessLog"));
        has_log.then_some(rules.clone()).ok_or_else(|| rules.to_string())
    });
    let of_type = |t: &str| {
        rules["rules"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["type"] == t))
            .cloned()
            .unwrap_or_else(|| panic!("no {t} rules in {rules}"))
    };
    let retry_rules = of_type("MeshRetry");
    let to_flaky = retry_rules["toRules"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["matchers"][0]["value"] == "flaky"))
        .unwrap_or_else(|| panic!("no MeshRetry rule towards flaky in {retry_rules}"));
    assert_eq!(to_flaky["conf"]["grpc"]["numRetries"], 2, "{to_flaky}");
    assert_eq!(
        to_flaky["origin"][0]["resourceMeta"],
        json!({"type": "MeshRetry", "mesh": MESH, "name": "flaky-retry"}),
        "{to_flaky}"
    );
    let log = of_type("MeshAccessLog");
    let to_any = &log["toRules"][0];
    assert_eq!(to_any["origin"][0]["resourceMeta"]["name"], "inspect-log", "{log}");
    assert_eq!(to_any["conf"]["backends"][0]["file"]["path"], "/dev/stdout", "{log}");
    assert!(
        to_any["warnings"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("proxyless") && m.contains("no effect")),
        "an access log says it does nothing for gRPC clients: {log}"
    );
    // A MeshProxyPatch that would break the sidecar's configuration (the
    // route to flaky would send to a removed cluster) is not applied, and
    // the rules say why; a sound one is.
    for (value, applied) in [("Remove", false), ("Patch", true)] {
        let modification = if value == "Remove" {
            json!({"cluster": {"operation": "Remove", "match": {"name": "flaky"}}})
        } else {
            json!({"cluster": {"operation": "Patch", "match": {"name": "flaky"}, "value": "connectTimeout: 7s"}})
        };
        d.apply(
            json!({"type": "MeshProxyPatch", "name": "inspect-patch", "mesh": MESH, "spec": {
            "targetRef": {"kind": "MeshService", "name": "inspect-web"},
            "default": {"appendModifications": [modification]}}}),
        );
        wait_until(&format!("the patch ({value}) reported"), CONVERGE, POLL, || {
            let rules = inspect("rules");
            let patch = rules["rules"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["type"] == "MeshProxyPatch"))
                .map(|r| r["proxyRule"]["patch"].clone())
                .unwrap_or_default();
            let ok = patch["applied"] == applied
                && (applied
                    || patch["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("missing cluster") && e.contains("flaky")));
            ok.then_some(()).ok_or_else(|| patch.to_string())
        });
    }
    d.delete("meshproxypatches", "inspect-patch");

    // The dataplanes a policy affects, asked at the zone and at the global
    // (which holds zone 1's dataplanes once they are synced, under their
    // zone-qualified names).
    for (cp, api, expected) in [
        ("zone-1", &d.zone1.proc.api, "inspect-web"),
        ("the global", &d.global.api, "zone-1.inspect-web"),
    ] {
        wait_until(
            &format!("{cp} to list inspect-web under inspect-log"),
            CONVERGE,
            POLL,
            || {
                let (status, body) = http(
                    "GET",
                    &format!("{api}/meshes/{MESH}/meshaccesslogs/inspect-log/_resources"),
                    None,
                    None,
                )
                .map_err(|e| e.to_string())?;
                let names: Vec<&str> = body["items"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|i| i["name"].as_str()).collect())
                    .unwrap_or_default();
                (status == 200 && names == [expected] && body["total"] == 1)
                    .then_some(())
                    .ok_or_else(|| format!("{status} {body}"))
            },
        );
    }
    d.delete("meshaccesslogs", "inspect-log");

    // Asked at the global, the zone holding the dataplane answers (over its
    // KDS connection), the same as its own API.
    let at_global = |args: &[&str]| -> Result<Value, String> {
        let out = d.global.ctl(args, None);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    };
    let global_rules = at_global(&[
        "inspect",
        "dataplane",
        "zone-1.inspect-web",
        "--type",
        "rules",
        "-m",
        MESH,
        "-o",
        "json",
    ])
    .unwrap_or_else(|e| panic!("inspect at the global: {e}"));
    assert_eq!(global_rules["name"], "inspect-web", "{global_rules}");
    assert!(
        global_rules["rules"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["type"] == "MeshRetry")),
        "{global_rules}"
    );
    let global_dump = at_global(&[
        "inspect",
        "dataplane",
        "zone-1.inspect-web",
        "--type",
        "config-dump",
        "-m",
        MESH,
        "-o",
        "json",
    ])
    .unwrap_or_else(|e| panic!("config dump at the global: {e}"));
    assert!(
        global_dump["configs"][0]["dynamic_active_clusters"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["cluster"]["name"] == "flaky")),
        "{global_dump}"
    );
    let (status, body) = http(
        "GET",
        &format!("{}/meshes/{MESH}/dataplanes/zone-1.nosuch/_rules", d.global.api),
        None,
        None,
    )
    .unwrap();
    assert_eq!(status, 404, "{body}");

    // The configuration dump: Envoy's admin ConfigDump in proto3 JSON,
    // endpoints only when asked for, as Envoy's /config_dump.
    let dump = inspect("config-dump");
    let with_eds = inspect_with(&["--include-eds"]);
    let named = |dump: &Value, list: &str, inner: &str, field: &str, name: &str| {
        dump["configs"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c[list]
                    .as_array()
                    .is_some_and(|xs| xs.iter().any(|x| x[inner][field] == name))
            })
        })
    };
    assert!(
        named(&dump, "dynamic_active_clusters", "cluster", "name", "flaky"),
        "no cluster flaky in {dump}"
    );
    assert!(
        !named(
            &dump,
            "dynamic_endpoint_configs",
            "endpoint_config",
            "cluster_name",
            "flaky"
        ),
        "endpoints without --include-eds in {dump}"
    );
    assert!(
        named(
            &with_eds,
            "dynamic_endpoint_configs",
            "endpoint_config",
            "cluster_name",
            "flaky"
        ),
        "no endpoints of flaky with --include-eds in {with_eds}"
    );
    // Protobuf's own JSON parser reads it as envoy.admin.v3.ConfigDump,
    // every Any inside expanded, and Envoy's rules hold.
    if let Err(report) = meridian_e2e::envoy_bootstrap::validate_envoy_config_dump(&with_eds.to_string()) {
        panic!("the configuration dump is not Envoy's ConfigDump: {report}");
    }
    let _ = http(
        "DELETE",
        &format!("{}/meshes/{MESH}/dataplanes/inspect-web", d.zone1.proc.api),
        None,
        None,
    );
}

/// 4: a MeshTimeout of 4s: a backend that answers after 8s fails with
/// DEADLINE_EXCEEDED well before that (the client's own deadline is 30s), one
/// answering after 0.5s succeeds.
fn timeouts(d: &Deployment) {
    let _slow = backend(&d.zone1, "slow", "slow", json!({}), &["--delay-ms", "8000"]);
    let _fast = backend(&d.zone1, "fast", "fast", json!({}), &["--delay-ms", "500"]);
    let timeout = |service: &str| {
        json!({"targetRef": {"kind": "MeshService", "name": service},
        "default": {"http": {"requestTimeout": "4s"}}})
    };
    d.apply(
        json!({"type": "MeshTimeout", "name": "slow-and-fast", "mesh": MESH, "spec": {
        "targetRef": {"kind": "Mesh"}, "to": [timeout("slow"), timeout("fast")]}}),
    );
    for kind in ClientKind::ALL {
        let args = ["--deadline-ms", "30000", "--concurrency", "2"];
        let r = calls(d, kind, "slow", 2, &args);
        let why = seen(&r, &d.zone1);
        assert_eq!(r.errors_of("DEADLINE_EXCEEDED"), 2, "{kind:?}: {why}");
        // Two calls side by side: the run lasts about one timeout.
        let elapsed = r.raw["elapsed_ms"].as_u64().unwrap();
        eprintln!("{kind:?}: requestTimeout 4s against an 8s backend: DEADLINE_EXCEEDED after {elapsed} ms");
        // grpcio 1.85 ends calls early under any method-config timeout (also a
        // plain service config's, without xDS): about 1.3-1.9 s before it.
        // @grpc/grpc-js keeps it to the millisecond.
        let low = if kind == ClientKind::Python { 1000 } else { 3800 };
        assert!(
            (low..=5500).contains(&elapsed),
            "{kind:?}: {elapsed} ms for a 4s requestTimeout: {why}"
        );
        let r = calls(d, kind, "fast", 2, &args);
        let why = seen(&r, &d.zone1);
        assert_eq!(r.ok_from("zone-1/fast"), 2, "{kind:?}: {why}");
    }
}

/// 5: MeshFaultInjection aborting 100% with 503: every call UNAVAILABLE;
/// removing it restores success.
fn fault_injection(d: &Deployment) {
    let _server = backend(&d.zone1, "faulty", "faulty", json!({}), &[]);
    let r = calls(d, ClientKind::Python, "faulty", 20, &[]);
    assert_eq!(
        r.ok_from("zone-1/faulty"),
        20,
        "before the fault: {}",
        seen(&r, &d.zone1)
    );

    d.apply(
        json!({"type": "MeshFaultInjection", "name": "faulty-abort", "mesh": MESH, "spec": {
        "targetRef": {"kind": "MeshService", "name": "faulty"},
        "from": [{"targetRef": {"kind": "Mesh"},
            "default": {"http": [{"abort": {"httpStatus": 503, "percentage": 100}}]}}]}}),
    );
    for kind in ClientKind::ALL {
        let r = calls(d, kind, "faulty", 50, &[]);
        let why = seen(&r, &d.zone1);
        assert_eq!(r.errors_of("UNAVAILABLE"), 50, "{kind:?}: every call aborted: {why}");
        eprintln!("{kind:?}: abort 503 reads {:?}", r.error_samples["UNAVAILABLE"]);
    }

    d.delete("meshfaultinjections", "faulty-abort");
    for kind in ClientKind::ALL {
        let r = calls(d, kind, "faulty", 20, &[]);
        assert_eq!(
            r.ok_from("zone-1/faulty"),
            20,
            "{kind:?}: after the fault is removed: {}",
            seen(&r, &d.zone1)
        );
    }
}

/// How many lines of the zone's log say that `node` connected.
fn connections(zone: &Zone, node: &str) -> usize {
    let needle = format!("proxy={node} ");
    zone.log()
        .lines()
        .filter(|l| l.contains("proxy connected") && format!("{l} ").contains(&needle))
        .count()
}

/// Reads a watch client's windows until `done` holds for one, failing after
/// `timeout`; returns the windows read (the last one satisfies `done`).
fn windows_until(
    w: &mut WatchClient,
    what: &str,
    timeout: Duration,
    zone: &Zone,
    done: impl Fn(&ClientReport) -> bool,
) -> Vec<ClientReport> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let shown = |seen: &[ClientReport], w: &WatchClient| {
        let raw: Vec<String> = seen.iter().map(|r| r.raw.to_string()).collect();
        format!(
            "windows:\n{}\nclient stderr (tail):\n{}\n{}",
            raw.join("\n"),
            tail(&w.stderr(), 10),
            zone.log_tail()
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {timeout:?} waiting for {what}; {}",
            shown(&seen, w)
        );
        match w.next(left.max(Duration::from_millis(1))) {
            Some(r) if r.summary => panic!("the watch client ended before {what}; {}", shown(&seen, w)),
            Some(r) => {
                let hit = r.total > 0 && done(&r);
                seen.push(r);
                if hit {
                    return seen;
                }
            }
            None => panic!("the watch client exited before {what}; {}", shown(&seen, w)),
        }
    }
}

/// 6: running clients follow route changes made at the global (100/0 to
/// 0/100 and back, twice) on their one ADS stream, without a failed call.
fn live_route_change(d: &Deployment) {
    let _v1 = backend(&d.zone1, "canary-v1", "canary", json!({"version": "v1"}), &[]);
    let _v2 = backend(&d.zone1, "canary-v2", "canary", json!({"version": "v2"}), &[]);
    let (v1, v2) = ("zone-1/canary-v1", "zone-1/canary-v2");
    d.apply(route("canary-shift", "canary", 100, 0));
    let agents: Vec<(Agent, String)> = ClientKind::ALL
        .iter()
        .map(|kind| d.client(&d.zone1, &format!("watch-{kind:?}").to_lowercase()))
        .collect();
    let mut watchers: Vec<(ClientKind, String, WatchClient)> = ClientKind::ALL
        .into_iter()
        .zip(&agents)
        .map(|(kind, (agent, node))| {
            // Calls close together, so that one lands in any gap a change
            // might leave.
            let args = ["--interval-ms", "5", "--concurrency", "2", "--deadline-ms", "2000"];
            (
                kind,
                node.clone(),
                WatchClient::start(kind, "xds:///canary", 60, &args, Some(agent.bootstrap())),
            )
        })
        .collect();
    for (kind, _, w) in &mut watchers {
        windows_until(
            w,
            &format!("{kind:?} calls all answered by v1"),
            SWITCH,
            &d.zone1,
            |r| r.ok_from(v1) == r.total,
        );
    }
    let connected: Vec<usize> = watchers
        .iter()
        .map(|(_, node, _)| connections(&d.zone1, node))
        .collect();
    assert!(
        connected.iter().all(|&n| n > 0),
        "the zone's log names the watch clients' streams: {connected:?}\n{}",
        d.zone1.log_tail()
    );
    for (to, weights) in [(v2, (0, 100)), (v1, (100, 0)), (v2, (0, 100))] {
        let changed = Instant::now();
        d.apply(route("canary-shift", "canary", weights.0, weights.1));
        for (kind, _, w) in &mut watchers {
            let what = format!("{kind:?} calls all answered by {to} after the route became {weights:?}");
            let windows = windows_until(w, &what, SWITCH, &d.zone1, |r| r.ok_from(to) == r.total);
            eprintln!("{kind:?}: route {weights:?} followed within {:?}", changed.elapsed());
            let failed: Vec<String> = windows
                .iter()
                .filter(|r| !r.errors.is_empty())
                .map(|r| r.raw.to_string())
                .collect();
            assert!(
                failed.is_empty(),
                "{kind:?}: calls failed while the route became {weights:?}:\n{}\n{}",
                failed.join("\n"),
                d.zone1.log_tail()
            );
        }
    }
    for ((kind, node, _), before) in watchers.iter().zip(connected) {
        assert_eq!(
            connections(&d.zone1, node),
            before,
            "{kind:?}: {node} kept its ADS stream (no new connection)\n{}",
            d.zone1.log_tail()
        );
    }
}

/// A stand-in for zone 2's ingress: accepts on `listener` and copies bytes
/// both ways to 127.0.0.1:`to`. Counts connections.
fn forward(listener: TcpListener, to: u16) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { continue };
            // A refused upstream closes the inbound connection (dropped).
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            splice(inbound, outbound);
        }
    });
    count
}

/// 7: `failover` runs in both zones; zone 1's clients use their local
/// endpoint, fail over to zone 2's (through its ingress) when it dies, and
/// come back when it returns on the same port.
fn cross_zone_failover(d: &Deployment) {
    let mut local = backend(&d.zone1, "failover-1", "failover", json!({}), &[]);
    let remote = backend(&d.zone2, "failover-2", "failover", json!({}), &[]);
    let listener = d.ingress.lock().unwrap().take().expect("the ingress listener");
    let ingress_port = listener.local_addr().unwrap().port();
    let forwarded = forward(listener, remote.port);
    wait_until("zone-2's ingress offering failover in zone-1", CONVERGE, POLL, || {
        let ingress = d.zone1.get("/zoneingresses/zone-2.ingress")?;
        let offers = ingress.as_ref().is_some_and(|i| {
            i["networking"]["advertisedPort"] == ingress_port
                && i["availableServices"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s["tags"]["kuma.io/service"] == "failover"))
        });
        offers
            .then_some(())
            .ok_or_else(|| format!("{ingress:?}\n{}", d.zone2.log_tail()))
    });
    let (z1, z2) = ("zone-1/failover-1", "zone-2/failover-2");
    let agents: Vec<(Agent, String)> = ClientKind::ALL
        .iter()
        .map(|kind| d.client(&d.zone1, &format!("failover-{kind:?}").to_lowercase()))
        .collect();
    let mut watchers: Vec<(ClientKind, WatchClient)> = ClientKind::ALL
        .into_iter()
        .zip(&agents)
        .map(|(kind, (agent, _))| {
            let args = ["--interval-ms", "20", "--deadline-ms", "1000"];
            (
                kind,
                WatchClient::start(kind, "xds:///failover", 90, &args, Some(agent.bootstrap())),
            )
        })
        .collect();
    for (kind, w) in &mut watchers {
        windows_until(
            w,
            &format!("{kind:?} calls answered in zone 1"),
            SWITCH,
            &d.zone1,
            |r| r.ok_from(z1) == r.total,
        );
    }
    assert_eq!(
        forwarded.load(Ordering::SeqCst),
        0,
        "no traffic leaves zone 1 while it is up"
    );

    let port = local.port;
    local.kill();
    let killed = Instant::now();
    for (kind, w) in &mut watchers {
        windows_until(
            w,
            &format!("{kind:?} calls answered by zone 2"),
            SWITCH,
            &d.zone1,
            |r| r.ok_from(z2) == r.total,
        );
        eprintln!("{kind:?}: failed over to zone 2 within {:?}", killed.elapsed());
    }
    assert!(
        forwarded.load(Ordering::SeqCst) > 0,
        "zone 2 was reached through its ingress"
    );

    let _local = TestServer::start(z1, &["--port", &port.to_string()]);
    let back = Instant::now();
    for (kind, w) in &mut watchers {
        windows_until(
            w,
            &format!("{kind:?} calls back in zone 1"),
            Duration::from_secs(40),
            &d.zone1,
            |r| r.ok_from(z1) == r.total,
        );
        eprintln!("{kind:?}: back in zone 1 within {:?}", back.elapsed());
    }
}

/// 8: proxies the zone does not serve get no configuration: the client
/// fails to set up and the zone's log says why. A dataplane that is not
/// registered (its token is valid), a token for another dataplane name, a
/// token of mesh default for a node of another mesh.
fn refusals(d: &Deployment) {
    let any = dataplane_token(&d.global.api, &json!({"mesh": MESH}));
    let other = dataplane_token(&d.global.api, &json!({"mesh": MESH, "name": "other"}));
    // (token, mesh, name, what the zone's log must say about the node)
    let cases = [
        (&any, MESH, "ghost", format!("dataplane {MESH}.ghost is not registered")),
        (
            &other,
            MESH,
            "stranger",
            "the token is for dataplane \"other\", not \"stranger\"".to_string(),
        ),
        (
            &any,
            "nomesh",
            "client",
            "the dataplane token is for mesh \"default\", not mesh \"nomesh\"".to_string(),
        ),
    ];
    std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .flat_map(|case| ClientKind::ALL.map(|kind| (case, kind)))
            .map(|((token, mesh, name, reason), kind)| {
                s.spawn(move || {
                    let agent = d.agent_in(&d.zone1, token, mesh, name, None);
                    let node = format!("{mesh}.{name}");
                    let failure = try_run_client(
                        kind,
                        "xds:///backend",
                        1,
                        &["--ready-timeout-ms", "3000", "--deadline-ms", "1000"],
                        Some(agent.bootstrap()),
                        Duration::from_secs(60),
                    )
                    .map(|r| r.raw)
                    .expect_err("a refused node gets no configuration");
                    assert_eq!(
                        failure.status.and_then(|s| s.code()),
                        Some(3),
                        "{kind:?} as {node}: {failure}"
                    );
                    eprintln!(
                        "{kind:?} as {node}: {}",
                        failure.stdout.lines().last().unwrap_or_default()
                    );
                    wait_until(&format!("zone-1's log to say {reason:?}"), CONVERGE, POLL, || {
                        d.zone1
                            .log()
                            .lines()
                            .find(|l| l.contains(node.as_str()) && l.contains(reason.as_str()))
                            .map(|l| eprintln!("zone-1 on {node}: {l}"))
                            .ok_or_else(|| d.zone1.log_tail())
                    });
                    // The agent says it too, in one line per cause.
                    let log = agent.log_text();
                    assert!(
                        log.contains(reason.as_str()),
                        "meridian-dp's log lacks {reason:?}:\n{log}"
                    );
                })
            })
            .collect();
        for r in runs {
            if let Err(e) = r.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
}

/// The control planes' Prometheus metrics after the scenarios before it in
/// its lane (refusals among them): KDS at both ends, proxies and xDS at the
/// zone, the store and the process; and every metric the Grafana dashboard
/// in `deploy/grafana` queries is one the processes declare.
fn metrics(d: &Deployment) {
    let zone = d.zone1.name;
    let positive = |text: &str, name: &str, labels: &[&str], whose: &str| {
        let v = sample(text, name, labels).unwrap_or(0.0);
        assert!(v > 0.0, "{whose}: {name}{labels:?} is {v}; the scrape:\n{text}");
        v
    };
    // A client that stays connected while the zone is scraped.
    let _backend = backend(&d.zone1, "metrics-backend", "metrics", json!({}), &[]);
    let (agent, _node) = d.client(&d.zone1, "metrics-watch");
    let mut watch = WatchClient::start(
        ClientKind::Python,
        "xds:///metrics",
        60,
        &["--interval-ms", "50"],
        Some(agent.bootstrap()),
    );
    windows_until(
        &mut watch,
        "calls answered by the metrics backend",
        SWITCH,
        &d.zone1,
        |r| r.ok_from("zone-1/metrics-backend") > 0,
    );
    let zone_text = wait_until("zone-1 to count its connected proxies", CONVERGE, POLL, || {
        let text = scrape(&d.zone1.proc.api);
        match sample(
            &text,
            "meridian_xds_connected_proxies",
            &[r#"mesh="default""#, r#"kind="proxyless""#],
        ) {
            Some(n) if n > 0.0 => Ok(text),
            other => Err(format!("connected proxyless proxies in mesh default: {other:?}")),
        }
    });
    let global_text = scrape(&d.global.api);

    let zone_label = format!("zone=\"{zone}\"");
    // The global: one pair of streams for each connected zone.
    assert_eq!(
        sample(&global_text, "meridian_kds_streams", &[&zone_label]),
        Some(2.0),
        "the global's streams of {zone}"
    );
    positive(
        &global_text,
        "meridian_kds_responses_sent_total",
        &[r#"type="Mesh""#],
        "global",
    );
    positive(
        &global_text,
        "meridian_kds_responses_acked_total",
        &[r#"type="Mesh""#],
        "global",
    );
    positive(
        &global_text,
        "meridian_store_operation_duration_seconds_count",
        &[r#"operation="list""#],
        "global",
    );
    positive(&global_text, "meridian_api_requests_total", &[], "global");
    let rss = positive(&global_text, "process_resident_memory_bytes", &[], "global");
    assert!(rss > 1e6, "the global's resident memory: {rss}");
    positive(&global_text, "process_cpu_seconds_total", &[], "global");

    // The zone: its own KDS streams, its dataplanes sent and acknowledged.
    assert_eq!(
        sample(&zone_text, "meridian_kds_streams", &[&zone_label]),
        Some(2.0),
        "{zone}'s own streams"
    );
    positive(
        &zone_text,
        "meridian_kds_responses_acked_total",
        &[r#"type="Dataplane""#],
        zone,
    );
    // Proxies: responses by type, their ACKs, how long an ACK took, how long
    // generation took, and the streams refusals() had refused.
    for t in ["Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"] {
        let label = format!("type=\"{t}\"");
        positive(&zone_text, "meridian_xds_responses_sent_total", &[&label], zone);
        positive(&zone_text, "meridian_xds_responses_acked_total", &[&label], zone);
    }
    let sent = sample(&zone_text, "meridian_xds_responses_sent_total", &[]).unwrap_or(0.0);
    let acked = sample(&zone_text, "meridian_xds_responses_acked_total", &[]).unwrap_or(0.0);
    assert!(acked <= sent, "{acked} ACKs for {sent} responses");
    positive(&zone_text, "meridian_xds_push_ack_duration_seconds_count", &[], zone);
    positive(
        &zone_text,
        "meridian_xds_generation_duration_seconds_count",
        &[r#"kind="proxyless""#],
        zone,
    );
    // refusals(), which runs before in this lane: unregistered names
    // (NOT_FOUND), tokens for another dataplane or mesh (PERMISSION_DENIED).
    let codes: &[&str] = if wanted("8 refusals") {
        &["NOT_FOUND", "PERMISSION_DENIED"]
    } else {
        &[]
    };
    for code in codes {
        let label = format!("code=\"{code}\"");
        positive(&zone_text, "meridian_xds_streams_refused_total", &[&label], zone);
    }

    // The dashboard reads nothing the processes do not declare.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/meridian-control-plane.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let wanted = dashboard_metrics(&dashboard);
    assert!(wanted.len() >= 15, "the dashboard queries only {wanted:?}");
    let declared: std::collections::BTreeSet<String> = declared_metrics(&global_text)
        .union(&declared_metrics(&zone_text))
        .cloned()
        .collect();
    let missing: Vec<&String> = wanted.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no process declares: {missing:?}"
    );
}

type Scenario = fn(&Deployment);

/// 10: MeshLoadBalancingStrategy's ring hash with a header hash policy,
/// through grpcio's own ring_hash balancer (gRFC A42): over three backends,
/// every call carrying one `x-user` reaches one backend, and different
/// users reach different backends; before the policy, round robin spreads
/// one user's calls over all of them.
fn ring_hash(d: &Deployment) {
    let _h: Vec<TestServer> = (1..=3)
        .map(|i| backend(&d.zone1, &format!("hashed-{i}"), "hashed", json!({}), &[]))
        .collect();
    // One agent for every run: each run is a new grpcio channel. A ring
    // hash channel connects only when a call picks a backend, so the client
    // does not wait for the channel to be ready first.
    let (agent, _) = d.client(&d.zone1, "hash");
    let user = |name: &str, n: usize| {
        let header = format!("x-user={name}");
        run_client(
            ClientKind::Python,
            "xds:///hashed",
            n,
            &["--metadata", &header, "--ready-timeout-ms", "0"],
            Some(agent.bootstrap()),
        )
    };
    let r = wait_until("round robin over the three backends", CONVERGE, POLL, || {
        let r = user("alice", 30);
        (r.ok_total() == 30 && r.ok.len() == 3)
            .then_some(r.clone())
            .ok_or_else(|| seen(&r, &d.zone1))
    });
    eprintln!("before the ring hash, alice's calls: {:?}", r.ok);
    d.apply(
        json!({"type": "MeshLoadBalancingStrategy", "name": "hashed-by-user", "mesh": MESH, "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "hashed"}, "default": {
            "loadBalancer": {"type": "RingHash", "ringHash": {
                "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}]}}}}]}}),
    );
    wait_until("alice's calls on one backend", CONVERGE, POLL, || {
        let r = user("alice", 30);
        (r.ok_total() == 30 && r.ok.len() == 1)
            .then_some(())
            .ok_or_else(|| seen(&r, &d.zone1))
    });
    let mut chosen = std::collections::BTreeMap::new();
    for name in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let r = user(name, 20);
        let why = seen(&r, &d.zone1);
        assert_eq!(r.ok_total(), 20, "{name}: {why}");
        assert_eq!(r.ok.len(), 1, "{name}'s calls all reach one backend: {why}");
        let server = r.ok.keys().next().cloned().unwrap_or_default();
        // The same user again: the same backend.
        let again = user(name, 10);
        assert_eq!(again.ok_from(&server), 10, "{name} again: {}", seen(&again, &d.zone1));
        chosen.insert(name, server);
    }
    eprintln!("ring hash by x-user: {chosen:?}");
    let distinct: std::collections::BTreeSet<&String> = chosen.values().collect();
    assert!(distinct.len() >= 2, "eight users all hashed to one backend: {chosen:?}");
    d.delete("meshloadbalancingstrategies", "hashed-by-user");
}

/// 11: MeshLoadBalancingStrategy's `localZone.affinityTags`, through
/// grpcio's weighted localities: the client's `role` tag is shared by one
/// of three backends, whose locality then carries 100000 to the rest's 1,
/// so the client's calls stay on it; before the policy, round robin spreads
/// them. With that backend down, the calls go to the rest of the zone.
fn affinity(d: &Deployment) {
    let mut affine = Some(backend(&d.zone1, "affine-1", "affine", json!({"role": "near"}), &[]));
    let _others: Vec<TestServer> = (2..=3)
        .map(|i| backend(&d.zone1, &format!("affine-{i}"), "affine", json!({"role": "far"}), &[]))
        .collect();
    let (agent, _) = d.client(&d.zone1, "near");
    let calls = |n: usize| run_client(ClientKind::Python, "xds:///affine", n, &[], Some(agent.bootstrap()));
    let r = wait_until("round robin over the three backends", CONVERGE, POLL, || {
        let r = calls(30);
        (r.ok_total() == 30 && r.ok.len() == 3)
            .then_some(r.clone())
            .ok_or_else(|| seen(&r, &d.zone1))
    });
    eprintln!("before affinity: {:?}", r.ok);
    d.apply(
        json!({"type": "MeshLoadBalancingStrategy", "name": "near-first", "mesh": MESH, "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "affine"}, "default": {
            "localityAwareness": {"localZone": {"affinityTags": [{"key": "role", "weight": 100000}]}}}}]}}),
    );
    let near = format!("{}/affine-1", d.zone1.name);
    wait_until(
        "every call on the backend that shares the client's role",
        CONVERGE,
        POLL,
        || {
            let r = calls(30);
            (r.ok_from(&near) == 30).then_some(()).ok_or_else(|| seen(&r, &d.zone1))
        },
    );
    let r = calls(60);
    assert_eq!(r.ok_from(&near), 60, "{}", seen(&r, &d.zone1));
    affine.take();
    wait_until(
        "the rest of the zone serving once the near backend is down",
        CONVERGE,
        POLL,
        || {
            let r = calls(20);
            (r.ok_total() == 20 && r.ok_from(&near) == 0)
                .then_some(())
                .ok_or_else(|| seen(&r, &d.zone1))
        },
    );
    d.delete("meshloadbalancingstrategies", "near-first");
}

/// Whether scenario `name` runs: XDS_E2E_ONLY=retries,failover runs only
/// the scenarios whose names contain one of the words.
fn wanted(name: &str) -> bool {
    let only = std::env::var("XDS_E2E_ONLY").unwrap_or_default();
    only.is_empty() || only.split(',').any(|w| name.contains(w.trim()))
}

#[test]
fn proxyless_clients_follow_policies_across_zones() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::start(dir.path());
    eprintln!("global and two zones up in {:?}", started.elapsed());

    // Lanes run side by side; scenarios in a lane run in order.
    let lanes: Vec<Vec<(&str, Scenario)>> = vec![
        vec![
            ("1+2 reach and weighted route", reach_and_weighted_route),
            ("5 fault injection", fault_injection),
        ],
        vec![("3 retries", retries), ("8 refusals", refusals), ("9 metrics", metrics)],
        vec![("4 timeouts", timeouts)],
        vec![("6 live route change", live_route_change)],
        vec![("7 cross-zone failover", cross_zone_failover)],
        vec![("10 ring hash", ring_hash), ("11 affinity", affinity)],
    ];
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|lane| lane.into_iter().filter(|(name, _)| wanted(name)).collect::<Vec<_>>())
            .map(|lane| {
                let d = &d;
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for (name, scenario) in lane {
                        let t = Instant::now();
                        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(d)));
                        eprintln!(
                            "scenario {name}: {} in {:?}",
                            if outcome.is_ok() { "passed" } else { "FAILED" },
                            t.elapsed()
                        );
                        if let Err(e) = outcome {
                            let msg = e
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            failed.push(format!("{name}: {msg}"));
                        }
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    eprintln!("all scenarios done in {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
