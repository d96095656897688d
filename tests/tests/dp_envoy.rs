#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `meridian-dp --proxy envoy` end to end (DESIGN §10), with real processes:
//! a global and a zone, a token for the service `web`, and the agent writing
//! an Envoy bootstrap that is held against Envoy's own protos
//! (`validate_envoy.py --bootstrap`: strict JSON parsing into
//! `envoy.config.bootstrap.v3.Bootstrap`, protoc-gen-validate on it and on
//! every `Any` inside it). No Envoy binary can be installed here: where the
//! agent would run Envoy, a stand-in shell script shows what the agent does
//! with the process — it proves the supervision, not Envoy's behaviour.
//!
//! Build the binaries first: `cargo build --workspace --bins`; the validator's
//! venv comes from `scripts/test-all.sh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use meridian_e2e::dp::{dataplane_token, xds_ca};
use meridian_e2e::envoy_bootstrap::validate_envoy_bootstrap;
use meridian_e2e::*;
use serde_json::{json, Value};

const MESH: &str = "default";
const ZONE: &str = "zone-1";
const CONVERGE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// Well below the zone's default cleanup age (60 s): a dataplane gone
/// within this after SIGTERM was deregistered by its agent, not cleaned up.
const DEREGISTERED_WITHIN: Duration = Duration::from_secs(20);

/// A global (its embedded store in the test's directory) and a zone on a
/// memory store.
struct Deployment {
    global: Proc,
    zone: Proc,
    xds: u16,
    ca_file: PathBuf,
}

impl Deployment {
    fn start(dir: &Path) -> Deployment {
        let global = start_global_on(dir, &dir.join("global"), free_port(), free_port(), &[]);
        let join = zone_join(&global, ZONE, &dir.join("join"));
        let xds = free_port();
        let zone = start_zone_xds(dir, &join, None, xds, &["--store", "memory"]);
        let ca_file = xds_ca(&zone, dir);
        let d = Deployment {
            global,
            zone,
            xds,
            ca_file,
        };
        d.wait_zone_has(&format!("/meshes/{MESH}"));
        d
    }

    fn wait_zone_has(&self, path: &str) -> Value {
        wait_until(&format!("the zone to have {path}"), CONVERGE, POLL, || {
            match self.zone.get(path) {
                (200, v) => Ok(v),
                (s, v) => Err(format!("{s} {v}")),
            }
        })
    }

    /// A token for the service `web` only; waits until the zone has the
    /// mesh's signing key, so the zone can verify it.
    fn web_token(&self) -> String {
        let token = dataplane_token(
            &self.global.api,
            &json!({"mesh": MESH, "tags": {"kuma.io/service": ["web"]}}),
        );
        self.wait_zone_has(&format!("/meshes/{MESH}/dataplane-token-keys/{}", kid(&token)));
        token
    }

    /// `(at the zone, at the global)`: the dataplane `name`, if each has it.
    fn dataplane(&self, name: &str) -> (Option<Value>, Option<Value>) {
        let found = |(status, v): (u16, Value)| (status == 200).then_some(v);
        (
            found(self.zone.get(&format!("/meshes/{MESH}/dataplanes/{name}"))),
            found(self.global.get(&format!("/meshes/{MESH}/dataplanes/{ZONE}.{name}"))),
        )
    }
}

fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_string()
}

/// A `meridian-dp run --proxy envoy`, killed on drop.
struct EnvoyAgent {
    child: Child,
    log: PathBuf,
    bootstrap_file: PathBuf,
    admin_port: u16,
}

impl EnvoyAgent {
    /// Starts the agent for the dataplane `name` (an inbound of `web`) in
    /// `own`, with `path` as its whole PATH (where it looks for `envoy`).
    fn start(d: &Deployment, own: &Path, token: &str, name: &str, path: &Path) -> EnvoyAgent {
        std::fs::create_dir_all(own).unwrap();
        let token_file = own.join("token");
        std::fs::write(&token_file, token).unwrap();
        let dataplane_file = own.join("dataplane.json");
        let dataplane = json!({"type": "Dataplane", "mesh": MESH, "name": name,
            "networking": {"address": "127.0.0.1", "inbound": [{"port": free_port(),
                "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}]}});
        std::fs::write(&dataplane_file, dataplane.to_string()).unwrap();
        let bootstrap_file = own.join("envoy-bootstrap.json");
        let admin_port = free_port();
        let log = own.join("meridian-dp.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(bin("meridian-dp"));
        for (k, _) in std::env::vars() {
            if k.starts_with("MERIDIAN_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["run", "--proxy", "envoy", "--reconnect-max-delay", "1s"])
            .arg("--cp-address")
            .arg(format!("https://127.0.0.1:{}", d.xds))
            .arg("--ca-cert-file")
            .arg(&d.ca_file)
            .arg("--dataplane-token-file")
            .arg(&token_file)
            .arg("--dataplane-file")
            .arg(&dataplane_file)
            .arg("--envoy-bootstrap-file")
            .arg(&bootstrap_file)
            .arg("--envoy-admin-address")
            .arg(format!("127.0.0.1:{admin_port}"))
            .env("PATH", path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn meridian-dp");
        EnvoyAgent {
            child,
            log,
            bootstrap_file,
            admin_port,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the log if the agent has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("meridian-dp exited with {status}; log:\n{}", self.log_text());
        }
    }

    /// The bootstrap, once the agent has written it.
    fn wait_bootstrap(&mut self) -> String {
        let file = self.bootstrap_file.clone();
        wait_until("the Envoy bootstrap", CONVERGE, POLL, || {
            self.assert_running();
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))
        })
    }

    /// SIGTERM, and the exit status (within a deadline).
    fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}: {status}", self.child.id());
        let log = self.log.clone();
        wait_until("meridian-dp to exit after SIGTERM", CONVERGE, POLL, || {
            match self.child.try_wait() {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err(std::fs::read_to_string(&log).unwrap_or_default()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl Drop for EnvoyAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A change to a valid bootstrap that Envoy would refuse.
struct Mutation {
    what: &'static str,
    /// Where the validator must report it (a prefix of the violation's path).
    path: &'static str,
    apply: fn(&mut Value),
}

const MUTATIONS: [Mutation; 4] = [
    Mutation {
        what: "a negative port",
        path: "admin.address",
        apply: |b| b["admin"]["address"]["socket_address"]["port_value"] = json!(-1),
    },
    Mutation {
        what: "an unknown field",
        path: "static_resources.clusters[0]",
        apply: |b| b["static_resources"]["clusters"][0]["meridian_extra"] = json!(true),
    },
    Mutation {
        what: "an unspecified SAN type inside the TLS context's Any",
        path: concat!(
            "static_resources.clusters[0].transport_socket.typed_config",
            "<envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext>",
            ".common_tls_context.validation_context.match_typed_subject_alt_names[0].san_type",
        ),
        apply: |b| {
            b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]
                ["validation_context"]["match_typed_subject_alt_names"][0]["san_type"] = json!("SAN_TYPE_UNSPECIFIED")
        },
    },
    Mutation {
        what: "ADS naming no static cluster",
        path: "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
        apply: |b| {
            b["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] = json!("elsewhere")
        },
    },
];

#[test]
fn the_agent_writes_a_valid_private_envoy_bootstrap_and_deregisters_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let d = Deployment::start(dir);
    let token = d.web_token();
    // An empty PATH: no `envoy` to find, so the agent only writes the bootstrap.
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut agent = EnvoyAgent::start(&d, &dir.join("dp-web-1"), &token, "web-1", &empty);
    let text = agent.wait_bootstrap();

    // It holds the token: readable by its owner only.
    let mode = std::fs::metadata(&agent.bootstrap_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "bootstrap mode {mode:o}");

    // Envoy's own protos accept it, as they are.
    if let Err(report) = validate_envoy_bootstrap(&text) {
        panic!("the agent's Envoy bootstrap is invalid:\n{report}\nbootstrap:\n{text}");
    }

    // Who it is and how it reaches the zone.
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["node"]["id"], format!("{MESH}.web-1"), "{b:#}");
    assert_eq!(b["node"]["cluster"], "web", "{b:#}");
    assert_eq!(
        b["admin"]["address"]["socket_address"]["port_value"], agent.admin_port,
        "{b:#}"
    );
    let ads = &b["dynamic_resources"]["ads_config"];
    assert_eq!(ads["api_type"], "GRPC", "{ads:#}");
    let service = &ads["grpc_services"][0];
    assert_eq!(
        service["initial_metadata"],
        json!([{"key": "authorization", "value": format!("Bearer {token}")}]),
        "{ads:#}"
    );
    let clusters = b["static_resources"]["clusters"].as_array().unwrap();
    let xds = clusters
        .iter()
        .find(|c| c["name"] == service["envoy_grpc"]["cluster_name"])
        .unwrap_or_else(|| panic!("no static cluster for ADS: {b:#}"));
    let endpoint = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(endpoint["address"], "127.0.0.1", "{xds:#}");
    assert_eq!(endpoint["port_value"], d.xds, "{xds:#}");
    let tls = &xds["transport_socket"]["typed_config"];
    assert_eq!(
        tls["@type"], "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "{tls:#}"
    );
    // An IP address is verified by the SAN matcher; SNI names hosts only.
    assert_eq!(tls.get("sni"), None, "{tls:#}");
    let validation = &tls["common_tls_context"]["validation_context"];
    assert_eq!(
        validation["trusted_ca"]["filename"],
        d.ca_file.display().to_string(),
        "{tls:#}"
    );
    assert_eq!(
        validation["match_typed_subject_alt_names"],
        json!([{"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}]),
        "{tls:#}"
    );

    // The validator can fail: mutations of this very bootstrap are refused,
    // each with a violation at the field it broke.
    for m in MUTATIONS {
        let mut bad = b.clone();
        (m.apply)(&mut bad);
        let report = validate_envoy_bootstrap(&bad.to_string())
            .expect_err(&format!("a bootstrap with {} passed the validator", m.what));
        let report: Value = serde_json::from_str(&report).unwrap();
        let paths: Vec<&str> = report["violations"]
            .as_array()
            .map(|v| v.iter().filter_map(|v| v["path"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            paths.iter().any(|p| p.starts_with(m.path)),
            "{}: no violation at {}; {report:#}",
            m.what,
            m.path
        );
    }

    // Registered by its agent at the zone, and so at the global as <zone>.<name>.
    let at_zone = d.wait_zone_has(&format!("/meshes/{MESH}/dataplanes/web-1"));
    assert_eq!(at_zone["labels"]["meridian.io/registered-by"], "proxy", "{at_zone:#}");
    wait_until("web-1 at the global", CONVERGE, POLL, || {
        d.dataplane("web-1").1.ok_or_else(|| "not yet".to_string())
    });
    agent.assert_running();
    assert!(
        agent.log_text().contains("no Envoy binary"),
        "the agent should say it runs no Envoy:\n{}",
        agent.log_text()
    );

    // SIGTERM: a clean exit, and the dataplane removed by its agent.
    let status = agent.terminate();
    assert!(
        status.success(),
        "meridian-dp exited with {status}:\n{}",
        agent.log_text()
    );
    wait_until(
        "web-1 gone from the zone and the global",
        DEREGISTERED_WITHIN,
        POLL,
        || match d.dataplane("web-1") {
            (None, None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(
        agent.log_text().contains("dataplane deregistered"),
        "{}",
        agent.log_text()
    );
}

/// A stand-in for Envoy, for the agent's process supervision only (it proves
/// nothing about Envoy itself): `envoy` in a directory of its own records its
/// arguments, waits for SIGTERM, records that it got it, and exits 0.
struct StandInEnvoy {
    bin_dir: PathBuf,
    args_file: PathBuf,
    signals_file: PathBuf,
    pid_file: PathBuf,
}

impl StandInEnvoy {
    fn write(dir: &Path) -> StandInEnvoy {
        let s = StandInEnvoy {
            bin_dir: dir.join("stand-in-bin"),
            args_file: dir.join("envoy.args"),
            signals_file: dir.join("envoy.signals"),
            pid_file: dir.join("envoy.pid"),
        };
        std::fs::create_dir_all(&s.bin_dir).unwrap();
        // The pid file lives while the script does (for the test's clean-up);
        // the arguments appear whole, once the trap is set.
        let script = format!(
            r#"#!/bin/sh
PATH=/usr/bin:/bin
trap 'echo TERM >> "{signals}"; kill "$sleeper" 2>/dev/null; rm -f "{pid}"; exit 0' TERM
echo $$ > "{pid}"
sleep 3600 &
sleeper=$!
printf '%s\n' "$@" > "{args}.tmp" && mv "{args}.tmp" "{args}"
wait "$sleeper"
"#,
            signals = s.signals_file.display(),
            args = s.args_file.display(),
            pid = s.pid_file.display(),
        );
        let path = s.bin_dir.join("envoy");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        s
    }
}

impl Drop for StandInEnvoy {
    /// A failed test kills its agent with SIGKILL, which leaves the stand-in
    /// running: end it.
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg("-TERM").arg(pid.trim()).status();
        }
    }
}

#[test]
fn the_agent_runs_envoy_with_its_bootstrap_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let d = Deployment::start(dir);
    let token = d.web_token();
    let envoy = StandInEnvoy::write(dir);
    let (args_file, signals_file) = (&envoy.args_file, &envoy.signals_file);
    let mut agent = EnvoyAgent::start(&d, &dir.join("dp-web-2"), &token, "web-2", &envoy.bin_dir);

    // Started as `envoy -c <bootstrap> …`, once the bootstrap is written.
    let args = wait_until("the stand-in Envoy to start", CONVERGE, POLL, || {
        agent.assert_running();
        std::fs::read_to_string(args_file).map_err(|e| e.to_string())
    });
    let args: Vec<&str> = args.lines().collect();
    let bootstrap = agent.bootstrap_file.display().to_string();
    assert_eq!(args.get(..2), Some(&["-c", bootstrap.as_str()][..]), "{args:?}");
    let text = std::fs::read_to_string(&agent.bootstrap_file).unwrap();
    validate_envoy_bootstrap(&text).unwrap_or_else(|r| panic!("{r}"));
    d.wait_zone_has(&format!("/meshes/{MESH}/dataplanes/web-2"));
    assert!(
        !signals_file.exists(),
        "the stand-in was signalled before the agent was"
    );

    // SIGTERM to the agent: it passes SIGTERM on (the stand-in records it and
    // exits), waits for it to end, deregisters, and exits 0.
    let status = agent.terminate();
    assert!(
        status.success(),
        "meridian-dp exited with {status}:\n{}",
        agent.log_text()
    );
    let signals = std::fs::read_to_string(signals_file).unwrap_or_default();
    assert_eq!(
        signals.lines().collect::<Vec<_>>(),
        ["TERM"],
        "the stand-in Envoy should get one SIGTERM; log:\n{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("Envoy stopped"), "{}", agent.log_text());
    wait_until("web-2 gone from the zone", DEREGISTERED_WITHIN, POLL, || {
        match d.dataplane("web-2").0 {
            None => Ok(()),
            Some(v) => Err(v.to_string()),
        }
    });
}

/// The value of the first `{"key": key, "value": …}` object inside `v`.
fn header_value(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::Object(m) => {
            if m.get("key").and_then(Value::as_str) == Some(key) {
                if let Some(value) = m.get("value").and_then(Value::as_str) {
                    return Some(value.to_string());
                }
            }
            m.values().find_map(|x| header_value(x, key))
        }
        Value::Array(a) => a.iter().find_map(|x| header_value(x, key)),
        _ => None,
    }
}

/// Answers one HTTP request on `conn` with `body`.
fn answer<S: std::io::Read + std::io::Write>(mut conn: S, content_type: &str, body: &str) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A plain HTTP server on `listener` answering every request with `body`.
fn serve_text(listener: std::net::TcpListener, body: &'static str) {
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            answer(conn, "text/plain", body);
        }
    });
}

/// Starts the agent of a new sidecar `name` of `web` after `policy` (a
/// MeshMetric) reached the zone, with Envoy's admin port answering
/// `admin_text` (a stand-in: no Envoy binary here).
fn metrics_agent(d: &Deployment, dir: &Path, name: &str, policy: &Value, admin_text: &'static str) -> EnvoyAgent {
    let policy_name = policy["name"].as_str().unwrap();
    let (status, body) = d
        .global
        .put_json(&format!("/meshes/{MESH}/meshmetrics/{policy_name}"), policy);
    assert!(status == 200 || status == 201, "{status} {body}");
    d.wait_zone_has(&format!("/meshes/{MESH}/meshmetrics/{policy_name}"));
    let token = d.web_token();
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut agent = EnvoyAgent::start(d, &dir.join(format!("dp-{name}")), &token, name, &empty);
    agent.wait_bootstrap();
    serve_text(
        std::net::TcpListener::bind(("127.0.0.1", agent.admin_port)).unwrap(),
        admin_text,
    );
    agent
}

/// MeshMetric through the agent: the zone's generated Prometheus route
/// carries the policy's profiles and applications in a header; the agent,
/// asked on its metrics socket with that header (what Envoy's route sends;
/// no Envoy binary here), answers from Envoy's admin (a stand-in serving
/// Envoy's Prometheus text on the admin port) filtered by the profile, plus
/// a real HTTP application's metrics, every series labelled.
#[test]
fn the_agent_serves_meshmetric_scrapes_from_envoys_admin_and_the_applications() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let d = Deployment::start(dir);
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    serve_text(app, "# TYPE app_orders_total counter\napp_orders_total 42\n");
    let metric = json!({"type": "MeshMetric", "mesh": MESH, "name": "metrics", "spec": {
        "targetRef": {"kind": "Mesh"},
        "default": {
            "sidecar": {"profiles": {"appendProfiles": [{"name": "None"}],
                                     "include": [{"type": "Regex", "match": "^envoy_server_(uptime|live)$"}]}},
            "applications": [{"name": "orders", "address": "127.0.0.1", "port": app_port, "path": "/metrics"}],
            "backends": [{"type": "Prometheus", "prometheus": {"port": free_port()}}]}}});
    let name = format!("mm-{}", std::process::id());
    let mut agent = metrics_agent(
        &d,
        dir,
        &name,
        &metric,
        "# TYPE envoy_server_uptime gauge\nenvoy_server_uptime 17\n\
         # TYPE envoy_server_live gauge\nenvoy_server_live 1\n\
         # TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 3\n",
    );
    // The header the zone generated for this proxy's Prometheus route.
    let header = wait_until("the Prometheus route's request header", CONVERGE, POLL, || {
        agent.assert_running();
        match d.zone.get(&format!("/meshes/{MESH}/dataplanes/{name}/xds")) {
            (200, v) => header_value(&v, "x-meridian-meshmetric").ok_or_else(|| "no header yet".to_string()),
            (s, v) => Err(format!("{s} {v}")),
        }
    });
    // Envoy reads `%%` as `%` in added headers.
    let header = header.replace("%%", "%");
    let socket = format!("/tmp/meridian-mm-{MESH}-{name}.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        conn,
        "GET /meshmetric HTTP/1.1\r\nHost: envoy\r\nx-meridian-meshmetric: {header}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let labels = format!("mesh=\"{MESH}\",dataplane=\"{name}\",service=\"web\"");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("envoy_server_uptime{{{labels}}} 17")),
        "{answer}"
    );
    assert!(answer.contains(&format!("envoy_server_live{{{labels}}} 1")), "{answer}");
    assert!(
        !answer.contains("envoy_cluster_upstream_rq_total"),
        "the profile None keeps only what include names: {answer}"
    );
    assert!(answer.contains(&format!("app_orders_total{{{labels}}} 42")), "{answer}");
    // The socket goes with the agent.
    let status = agent.terminate();
    assert!(status.success(), "{status}\n{}", agent.log_text());
    assert!(!Path::new(&socket).exists(), "{socket} left behind");
}

/// The first string under a key named `key` inside `v`.
fn string_under(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| m.values().find_map(|x| string_under(x, key))),
        Value::Array(a) => a.iter().find_map(|x| string_under(x, key)),
        _ => None,
    }
}

/// An HTTP server on the Unix socket `path` answering every request with
/// `body`: what Envoy's direct-response listener would serve there.
fn serve_unix_text(path: &str, body: String) {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            answer(conn, "application/json", &body);
        }
    });
}

/// MeshMetric's OpenTelemetry backend through the agent: the zone generates
/// the dynamic configuration listener's body (what to push, how often) and
/// the Unix socket Envoy takes OTLP on. Standing in for Envoy (no binary
/// here), the test serves that body on the configuration socket, and a real
/// OTLP receiver (grpcio with the OpenTelemetry project's protos) listens
/// on the OTLP socket. The agent polls the configuration, then pushes
/// Envoy's admin metrics (filtered by the profile) and the application's,
/// labelled, every second.
#[test]
fn the_agent_pushes_meshmetric_to_an_opentelemetry_collector() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let d = Deployment::start(dir);
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    serve_text(app, "# TYPE app_orders counter\napp_orders_total 42\n");
    let metric = json!({"type": "MeshMetric", "mesh": MESH, "name": "otel", "spec": {
        "targetRef": {"kind": "Mesh"},
        "default": {
            "sidecar": {"profiles": {"appendProfiles": [{"name": "None"}],
                                     "include": [{"type": "Prefix", "match": "envoy_server_"}]}},
            "applications": [{"name": "orders", "address": "127.0.0.1", "port": app_port, "path": "/metrics"}],
            "backends": [{"type": "OpenTelemetry",
                          "openTelemetry": {"endpoint": "otel-collector.test:4317", "refreshInterval": "1s"}}]}}});
    let name = format!("mo-{}", std::process::id());
    let mut agent = metrics_agent(
        &d,
        dir,
        &name,
        &metric,
        "# TYPE envoy_server_uptime gauge\nenvoy_server_uptime 17\n\
         # TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 3\n",
    );
    // The dynamic configuration the zone generated for this proxy.
    let config = wait_until("the metrics configuration listener", CONVERGE, POLL, || {
        agent.assert_running();
        match d.zone.get(&format!("/meshes/{MESH}/dataplanes/{name}/xds")) {
            (200, v) => string_under(&v, "inlineString")
                .or_else(|| string_under(&v, "inline_string"))
                .ok_or_else(|| "no configuration body yet".to_string()),
            (s, v) => Err(format!("{s} {v}")),
        }
    });
    let parsed: Value = serde_json::from_str(&config).unwrap();
    let otlp_socket = parsed["openTelemetry"][0]["socket"].as_str().unwrap().to_string();
    assert_eq!(parsed["openTelemetry"][0]["refreshIntervalSeconds"], 1, "{parsed}");
    let _ = std::fs::remove_file(&otlp_socket);
    let mut receiver = Command::new(meridian_e2e::xds_clients::python())
        .arg(meridian_e2e::xds_clients::clients_dir().join("otlp_receiver.py"))
        .arg("--listen")
        .arg(format!("unix:{otlp_socket}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = std::io::BufReader::new(receiver.stdout.take().unwrap());
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    wait_until("the OTLP receiver to listen", CONVERGE, POLL, || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "READY")
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    let config_socket = format!("/tmp/meridian-dc-{MESH}-{name}.sock");
    serve_unix_text(&config_socket, config);

    // Within the agent's poll (10 s) and one refresh interval: an export
    // with what the profile keeps and the application's counter.
    let export = wait_until(
        "an export with Envoy's and the application's metrics",
        CONVERGE,
        POLL,
        || {
            agent.assert_running();
            let seen = lines.lock().unwrap().clone();
            seen.iter()
                .filter(|l| l.starts_with('{'))
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|e| {
                    let text = e.to_string();
                    text.contains("envoy_server_uptime") && text.contains("app_orders")
                })
                .ok_or_else(|| format!("received so far: {seen:?}\nagent log:\n{}", agent.log_text()))
        },
    );
    let metrics: Vec<&Value> = export["resourceMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["scopeMetrics"].as_array().unwrap())
        .flat_map(|s| s["metrics"].as_array().unwrap())
        .collect();
    let names: Vec<&str> = metrics.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["app_orders", "envoy_server_uptime"], "{export}");
    let uptime = &metrics[1]["gauge"]["dataPoints"][0];
    assert_eq!(uptime["asDouble"], 17.0, "{export}");
    let attrs: std::collections::BTreeMap<&str, &str> = uptime["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["key"].as_str().unwrap(), a["value"]["stringValue"].as_str().unwrap()))
        .collect();
    assert_eq!(attrs.get("dataplane"), Some(&name.as_str()), "{export}");
    assert_eq!(attrs.get("mesh"), Some(&MESH), "{export}");
    let orders = &metrics[0]["sum"];
    assert_eq!(orders["isMonotonic"], true, "{export}");
    assert_eq!(
        orders["aggregationTemporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE",
        "{export}"
    );
    assert_eq!(orders["dataPoints"][0]["asDouble"], 42.0, "{export}");
    let _ = receiver.kill();
    let _ = receiver.wait();
    let _ = std::fs::remove_file(&otlp_socket);
    let _ = std::fs::remove_file(&config_socket);
}
