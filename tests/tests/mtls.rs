#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Mesh mTLS with real processes (DESIGN §11): a real global and zone, a
//! Python grpcio xDS-enabled server and real Python grpcio and Node
//! @grpc/grpc-js-xds clients, each beside its `meridian-dp`, which writes
//! the certificate provider files their bootstraps name (gRFC A29).
//!
//! - STRICT: calls go over mTLS (the server sees the client's SPIFFE ID), a
//!   plaintext client is refused, MeshTrafficPermission matches identities
//!   (a caller whose dataplane says another address is still allowed,
//!   another service calling from the same address is denied);
//! - renewal: certificates of 10 s are renewed under a running client with
//!   no failed call;
//! - CA rotation: switching `enabledBackend` under a running client, then
//!   removing the old backend, fails no call;
//! - cross-zone: a client in zone 1 reaches zone 2's backend through an
//!   SNI-routing stand-in for zone 2's ingress, encrypted end to end, on
//!   failover and back.
//!
//! Build the binaries first: `cargo build --workspace --bins`; the clients
//! come from `scripts/test-all.sh`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_e2e::dp::{dataplane_token, xds_ca, Agent, AgentSpec};
use meridian_e2e::xds_clients::{run_client, try_run_client, ClientKind, ClientReport, TestServer, WatchClient};
use meridian_e2e::*;
use serde_json::{json, Value};

const MESH: &str = "default";
const SERVER: &str = "backend-1";
/// Changes travel global → zone → proxies: allow for slow machines.
const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// A zone on loopback: its process, xDS port and CA.
struct ZoneSide {
    zone: Proc,
    xds: u16,
    ca: std::path::PathBuf,
}

impl ZoneSide {
    /// Joins zone `name` to `global` (memory store).
    fn start(dir: &Path, global: &Proc, name: &str, extra: &[&str]) -> ZoneSide {
        let join = zone_join(global, name, &dir.join(format!("join-{name}")));
        let xds = free_port();
        let mut args = vec!["--store", "memory"];
        args.extend_from_slice(extra);
        let zone = start_zone_xds(dir, &join, None, xds, &args);
        let ca = xds_ca(&zone, dir);
        ZoneSide { zone, xds, ca }
    }

    /// Registers a dataplane at the zone (once the mesh is there).
    fn register(&self, name: &str, address: &str, port: u16, service: &str) {
        let body = json!({"type": "Dataplane", "name": name, "mesh": MESH,
            "networking": {"address": address, "inbound": [{"port": port,
                "tags": {"kuma.io/service": service, "kuma.io/protocol": "grpc"}}]}});
        wait_until(&format!("dataplane {name} registered"), CONVERGE, POLL, || {
            match self.zone.put_json(&format!("/meshes/{MESH}/dataplanes/{name}"), &body) {
                (200 | 201, _) => Ok(()),
                (status, reply) => Err(format!("{status} {reply}")),
            }
        });
    }

    /// An agent for dataplane `name`, with a token (from `global`) for that
    /// name only.
    fn agent(&self, global: &Proc, dir: &Path, name: &str) -> Agent {
        let token = dataplane_token(&global.api, &json!({"mesh": MESH, "name": name}));
        Agent::grpc(
            dir,
            &AgentSpec {
                xds_port: self.xds,
                ca_file: &self.ca,
                token: &token,
                mesh: MESH,
                name,
                dataplane: None,
                extra: &[],
                env: &[],
            },
        )
    }

    /// What the zone generates for dataplane `name` (inspection).
    fn xds_of(&self, name: &str) -> String {
        self.zone
            .get(&format!("/meshes/{MESH}/dataplanes/{name}/xds"))
            .1
            .to_string()
    }
}

/// A global and one zone.
struct Deployment {
    global: Proc,
    z: ZoneSide,
}

impl Deployment {
    fn start(dir: &Path) -> Deployment {
        let global = start_global_on(dir, &dir.join("global"), free_port(), free_port(), &[]);
        let z = ZoneSide::start(dir, &global, "zone-1", &[]);
        Deployment { global, z }
    }

    /// Applies `doc` at the global with meridianctl.
    fn apply(&self, doc: &Value) {
        apply(&self.global, doc);
    }

    /// Sets mesh `default`'s mTLS.
    fn mtls(&self, mtls: Value) {
        self.apply(&json!({"type": "Mesh", "name": MESH, "mtls": mtls}));
    }

    fn register(&self, name: &str, address: &str, port: u16, service: &str) {
        self.z.register(name, address, port, service);
    }

    fn agent(&self, dir: &Path, name: &str) -> Agent {
        self.z.agent(&self.global, dir, name)
    }

    /// backend-1 (an xDS-enabled grpcio server) and web, both on
    /// 127.0.0.1 beside their agents, once web's calls are served.
    fn backend_and_web(&self, dir: &Path) -> (Agent, Agent, TestServer) {
        let port = free_port();
        self.register(SERVER, "127.0.0.1", port, "backend");
        self.register("web", "127.0.0.1", 1, "web");
        let server_agent = self.agent(dir, SERVER);
        let web = self.agent(dir, "web");
        let server = TestServer::start_xds(SERVER, port, server_agent.bootstrap(), &[]);
        // Calls succeed in plaintext too while neither side has its first
        // certificate; mTLS is on once the server has seen web's identity
        // and both agents hold a certificate.
        wait_until("the server sees web's certificate", CONVERGE, POLL, || {
            wait_outcome(&web, Ok(SERVER), "calls answered");
            let peers = server.output();
            let seen = peers
                .lines()
                .any(|l| l.starts_with("PEER ") && l.contains("spiffe://default/web"));
            (seen && !cert_of(&web).is_empty() && !cert_of(&server_agent).is_empty())
                .then_some(())
                .ok_or_else(|| "no PEER line of web yet".to_string())
        });
        wait_outcome(&web, Ok(SERVER), "mTLS on");
        (server_agent, web, server)
    }
}

/// Applies `doc` at `global` with meridianctl.
fn apply(global: &Proc, doc: &Value) {
    let out = global.ctl(&["apply", "-f", "-"], Some(&doc.to_string()));
    assert!(
        out.status.success(),
        "apply {doc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().rev().take(12).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

const ARGS: [&str; 4] = ["--deadline-ms", "3000", "--ready-timeout-ms", "3000"];

/// Waits until the Python client beside `agent` gets `want` from every call
/// (`Ok(server)`: all answered by it; `Err(code)`: all refused with it).
fn wait_outcome(agent: &Agent, want: Result<&str, &str>, step: &str) -> ClientReport {
    wait_until(&format!("{step}: {want:?}"), CONVERGE, POLL, || {
        match try_run_client(
            ClientKind::Python,
            "xds:///backend",
            3,
            &ARGS,
            Some(agent.bootstrap()),
            CONVERGE,
        ) {
            Ok(r) if matches(&r, want) => Ok(r),
            Ok(r) => Err(r.raw.to_string()),
            Err(f) => Err(format!("no report: {}", tail(&f.stderr))),
        }
    })
}

fn matches(r: &ClientReport, want: Result<&str, &str>) -> bool {
    r.total > 0
        && match want {
            Ok(server) => r.ok_from(server) == r.total,
            Err(code) => r.errors_of(code) == r.total,
        }
}

/// Both client kinds, 10 calls each, all with outcome `want`.
fn both_clients(agent: &Agent, want: Result<&str, &str>, step: &str) {
    for kind in ClientKind::ALL {
        let r = run_client(kind, "xds:///backend", 10, &ARGS, Some(agent.bootstrap()));
        assert!(
            matches(&r, want),
            "{step}: {kind:?} client, want {want:?}: {}\nstderr (tail):\n{}",
            r.raw,
            tail(&r.stderr)
        );
    }
}

#[test]
fn strict_mtls_carries_identities_refuses_plaintext_and_permissions_match_identities() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dep = Deployment::start(d);
    dep.mtls(json!({"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}));
    let port = free_port();
    dep.register(SERVER, "127.0.0.1", port, "backend");
    // web's dataplane says 127.0.0.2, yet its client calls from 127.0.0.1:
    // with mTLS it is who its certificate says.
    dep.register("web", "127.0.0.2", 1, "web");
    // other calls from the same address as web's client.
    dep.register("other", "127.0.0.1", 2, "other");
    let server_agent = dep.agent(d, SERVER);
    let web = dep.agent(d, "web");
    let other = dep.agent(d, "other");
    for a in [&server_agent, &web] {
        assert!(
            a.bootstrap().contains("certificate_providers") && a.bootstrap().contains("file_watcher"),
            "the bootstrap names the certificate provider: {}",
            a.bootstrap()
        );
    }
    let mut server = TestServer::start_xds(SERVER, port, server_agent.bootstrap(), &[]);

    // Served, over mTLS: the server sees web's identity.
    wait_outcome(&web, Ok(SERVER), "mTLS on");
    both_clients(&web, Ok(SERVER), "mTLS on");
    wait_until("the server saw web's certificate", CONVERGE, POLL, || {
        let out = server.output();
        out.lines()
            .any(|l| {
                l.starts_with("PEER ") && l.contains("spiffe://default/web") && l.contains("kuma://kuma.io/service/web")
            })
            .then_some(())
            .ok_or_else(|| tail(&out))
    });
    // The server's Listeners terminate TLS with its certificate provider.
    let server_xds = dep.z.xds_of(SERVER);
    assert!(
        server_xds.contains("grpc/server?xds.resource.listening_address=")
            && server_xds.contains("DownstreamTlsContext"),
        "{server_xds}"
    );
    assert!(!server_xds.contains("PRIVATE KEY"), "inspection shows no key");
    // The server's insight says which backend signed its certificate.
    wait_until("the server's insight shows its certificate", CONVERGE, POLL, || {
        let (_, o) = dep.z.zone.get(&format!("/meshes/{MESH}/dataplanes+insights/{SERVER}"));
        let m = &o["dataplaneInsight"]["mTLS"];
        (m["issuedBackend"] == "ca-1" && m["certificateExpirationTime"].is_string())
            .then_some(())
            .ok_or_else(|| o.to_string())
    });

    // A plaintext client (no xDS, no certificate) is refused by the STRICT server.
    let plain = run_client(
        ClientKind::Python,
        &format!("127.0.0.1:{port}"),
        3,
        &["--deadline-ms", "3000", "--ready-timeout-ms", "0"],
        None,
    );
    assert_eq!(plain.ok_total(), 0, "a plaintext client was served: {}", plain.raw);
    assert_eq!(plain.errors_of("UNAVAILABLE"), plain.total, "{}", plain.raw);

    // MeshTrafficPermission by identity: web allowed, everyone else denied.
    dep.apply(
        &json!({"type": "MeshTrafficPermission", "name": "backend-callers", "mesh": MESH, "spec": {
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Allow"}}]}}),
    );
    wait_outcome(&other, Err("PERMISSION_DENIED"), "other is not web");
    both_clients(&other, Err("PERMISSION_DENIED"), "other is not web, from web's address");
    both_clients(
        &web,
        Ok(SERVER),
        "web allowed although its dataplane says another address",
    );

    let log = server.output();
    assert!(!log.contains("Traceback"), "the server failed:\n{log}");
    server.kill();
}

/// The certificate of the agent's files, as written.
fn cert_of(agent: &Agent) -> String {
    std::fs::read_to_string(agent.dir.join("certs").join("cert.pem")).unwrap_or_default()
}

#[test]
fn certificates_are_renewed_under_a_running_client_without_a_failed_call() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dep = Deployment::start(d);
    dep.mtls(json!({"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "10s"}}}]}));
    let (server_agent, web, mut server) = dep.backend_and_web(d);

    let mut watch = WatchClient::start(
        ClientKind::Python,
        "xds:///backend",
        25,
        &["--interval-ms", "50", "--deadline-ms", "3000"],
        Some(web.bootstrap()),
    );
    // Over 25 s, certificates of 10 s (renewed at 7.5–8 s) change at least
    // twice on both sides.
    let mut seen_client = vec![cert_of(&web)];
    let mut seen_server = vec![cert_of(&server_agent)];
    let summary = loop {
        if let Some(r) = watch.next(Duration::from_secs(40)) {
            for (seen, agent) in [(&mut seen_client, &web), (&mut seen_server, &server_agent)] {
                let c = cert_of(agent);
                if !c.is_empty() && seen.last() != Some(&c) {
                    seen.push(c);
                }
            }
            if r.summary {
                break r;
            }
        } else {
            panic!("the watch client went quiet; stderr:\n{}", watch.stderr());
        }
    };
    assert!(summary.total > 100, "too few calls: {}", summary.raw);
    assert_eq!(
        summary.ok_from(SERVER),
        summary.total,
        "a call failed across renewals: {}\nstderr:\n{}",
        summary.raw,
        tail(&watch.stderr())
    );
    assert!(
        seen_client.len() >= 3,
        "web's certificate was renewed {} times",
        seen_client.len() - 1
    );
    assert!(
        seen_server.len() >= 3,
        "the server's certificate was renewed {} times",
        seen_server.len() - 1
    );
    server.kill();
}

#[test]
fn switching_the_enabled_backend_under_a_running_client_fails_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dep = Deployment::start(d);
    let both = |enabled: &str| {
        json!({"enabledBackend": enabled, "backends": [
            {"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "builtin"}]})
    };
    dep.mtls(both("ca-1"));
    let (server_agent, web, mut server) = dep.backend_and_web(d);

    let intermediate = |backend: &str| -> String {
        let (status, body) = dep
            .z
            .zone
            .get(&format!("/meshes/{MESH}/zone-certificates/zone-1.{backend}"));
        assert_eq!(status, 200, "{body}");
        body["certificate"].as_str().unwrap().trim().to_string()
    };
    let mut watch = WatchClient::start(
        ClientKind::Python,
        "xds:///backend",
        30,
        &["--interval-ms", "50", "--deadline-ms", "3000"],
        Some(web.bootstrap()),
    );
    // The switch: new certificates chain to ca-2's intermediate.
    watch.next(Duration::from_secs(20)).expect("the watch client runs");
    dep.mtls(both("ca-2"));
    let ca2 = wait_until("both proxies hold ca-2 certificates", CONVERGE, POLL, || {
        let (status, body) = dep.z.zone.get(&format!("/meshes/{MESH}/zone-certificates/zone-1.ca-2"));
        if status != 200 {
            return Err(format!("no ca-2 intermediate yet: {status} {body}"));
        }
        let ca2 = intermediate("ca-2");
        let (c, s) = (cert_of(&web), cert_of(&server_agent));
        (c.contains(&ca2) && s.contains(&ca2))
            .then_some(ca2)
            .ok_or("not yet".to_string())
    });
    // The old backend goes: ca-1's root leaves the bundle.
    dep.mtls(json!({"enabledBackend": "ca-2", "backends": [{"name": "ca-2", "type": "builtin"}]}));
    let summary = loop {
        match watch.next(Duration::from_secs(40)) {
            Some(r) if r.summary => break r,
            Some(_) => {}
            None => panic!("the watch client went quiet; stderr:\n{}", watch.stderr()),
        }
    };
    assert!(cert_of(&web).contains(&ca2));
    assert!(summary.total > 100, "too few calls: {}", summary.raw);
    assert_eq!(
        summary.ok_from(SERVER),
        summary.total,
        "a call failed across the CA rotation: {}\nstderr:\n{}",
        summary.raw,
        tail(&watch.stderr())
    );
    // Removing the enabled backend while switching is refused.
    let out = dep.global.ctl(
        &["apply", "-f", "-"],
        Some(
            &json!({"type": "Mesh", "name": MESH, "mtls": {"enabledBackend": "ca-3", "backends": [
            {"name": "ca-3", "type": "builtin"}]}})
            .to_string(),
        ),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mtls.backends") && err.contains("ca-2"), "{err}");
    server.kill();
}

/// The server name of a TLS ClientHello at the start of `buf`, if `buf`
/// holds a whole one with a server_name extension (RFC 8446 4.1.2, RFC
/// 6066 3).
fn client_hello_sni(buf: &[u8]) -> Option<String> {
    let mut p = Reader(buf);
    // Record: handshake (22), version, length.
    if p.u8()? != 22 {
        return None;
    }
    p.skip(2)?;
    let record = p.len16()?;
    let mut h = Reader(record);
    if h.u8()? != 1 {
        return None; // not a ClientHello
    }
    let body = h.len24()?;
    let mut c = Reader(body);
    c.skip(2 + 32)?; // version, random
    let sid = c.u8()? as usize;
    c.skip(sid)?;
    let suites = c.u16()? as usize;
    c.skip(suites)?;
    let compression = c.u8()? as usize;
    c.skip(compression)?;
    let mut ext = Reader(c.len16()?);
    while let Some(kind) = ext.u16() {
        let data = ext.len16()?;
        if kind == 0 {
            let mut names = Reader(data);
            let mut list = Reader(names.len16()?);
            if list.u8()? == 0 {
                let name = list.len16()?;
                return String::from_utf8(name.to_vec()).ok();
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A field with a 2-byte length.
    fn len16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    /// A field with a 3-byte length.
    fn len24(&mut self) -> Option<&'a [u8]> {
        let n = self.u24()?;
        self.take(n)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// A stand-in for zone 2's ingress that routes as the real one does: it
/// reads the ClientHello's server name and passes the connection, bytes
/// untouched, to `routes[name]`; a connection without a known name is
/// closed. Records the names it saw.
fn sni_router(
    listener: std::net::TcpListener,
    routes: std::collections::HashMap<String, u16>,
) -> Arc<Mutex<Vec<String>>> {
    use std::io::{Read, Write};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(mut inbound) = inbound else { continue };
            let routes = routes.clone();
            let record = record.clone();
            std::thread::spawn(move || {
                let _ = inbound.set_read_timeout(Some(Duration::from_secs(5)));
                let mut hello = Vec::new();
                let mut buf = [0u8; 4096];
                let name = loop {
                    match inbound.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => hello.extend_from_slice(&buf[..n]),
                    }
                    if let Some(name) = client_hello_sni(&hello) {
                        break name;
                    }
                    if hello.len() > 16 * 1024 {
                        return;
                    }
                };
                record.lock().unwrap().push(name.clone());
                let Some(port) = routes.get(&name) else { return };
                let Ok(mut outbound) = std::net::TcpStream::connect(("127.0.0.1", *port)) else {
                    return;
                };
                let _ = inbound.set_read_timeout(None);
                if outbound.write_all(&hello).is_err() {
                    return;
                }
                splice(inbound, outbound);
            });
        }
    });
    seen
}

/// A client in zone 1 reaches backend in zone 2 through an SNI-routing
/// stand-in for zone 2's ingress, over mTLS end to end (the stand-in sees
/// only a ClientHello and encrypted bytes; the server sees the client's
/// identity); it fails over there when zone 1's backend goes, and comes back.
#[test]
fn cross_zone_over_mtls_through_an_sni_routing_ingress() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_on(
        d,
        &d.join("global"),
        free_port(),
        free_port(),
        &["--kds-keepalive", "2s"],
    );
    let ingress = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ingress_port = ingress.local_addr().unwrap().port();
    let ingress_address = format!("127.0.0.1:{ingress_port}");
    let z1 = ZoneSide::start(d, &global, "zone-1", &[]);
    let z2 = ZoneSide::start(d, &global, "zone-2", &["--ingress-address", &ingress_address]);
    apply(
        &global,
        &json!({"type": "Mesh", "name": MESH, "mtls": {"enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin"}]}}),
    );
    let agent = |z: &ZoneSide, name: &str| z.agent(&global, d, name);
    let (p1, p2) = (free_port(), free_port());
    z1.register("backend-1", "127.0.0.1", p1, "backend");
    z1.register("web", "127.0.0.1", 1, "web");
    z2.register("backend-2", "127.0.0.1", p2, "backend");
    let (a1, a2, web) = (agent(&z1, "backend-1"), agent(&z2, "backend-2"), agent(&z1, "web"));
    let mut local = TestServer::start_xds("zone-1/backend", p1, a1.bootstrap(), &[]);
    let mut remote = TestServer::start_xds("zone-2/backend", p2, a2.bootstrap(), &[]);
    let name = meridian_xds::generate::ingress::sni(MESH, "backend", &Default::default());
    let seen = sni_router(ingress, [(name.clone(), p2)].into_iter().collect());
    wait_until("zone-2's ingress offering backend in zone-1", CONVERGE, POLL, || {
        let (_, ingress) = z1.zone.get("/zoneingresses/zone-2.ingress");
        let offers = ingress["availableServices"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["tags"]["kuma.io/service"] == "backend"));
        offers.then_some(()).ok_or_else(|| ingress.to_string())
    });

    wait_outcome(&web, Ok("zone-1/backend"), "served in zone 1");
    // Until zone 1's server serves, a client may fail over to zone 2 (as it
    // should); from then on, nothing leaves zone 1.
    seen.lock().unwrap().clear();
    let r = try_run_client(
        ClientKind::Python,
        "xds:///backend",
        10,
        &ARGS,
        Some(web.bootstrap()),
        CONVERGE,
    )
    .unwrap_or_else(|f| panic!("no report: {}", tail(&f.stderr)));
    assert!(matches(&r, Ok("zone-1/backend")), "served in zone 1: {}", r.raw);
    assert!(seen.lock().unwrap().is_empty(), "nothing left zone 1 while it is up");

    let mut watch = WatchClient::start(
        ClientKind::Python,
        "xds:///backend",
        60,
        &["--interval-ms", "50", "--deadline-ms", "2000"],
        Some(web.bootstrap()),
    );
    local.kill();
    let failed_over = loop {
        let r = watch.next(Duration::from_secs(30)).expect("the watch client runs");
        if r.total > 0 && r.ok_from("zone-2/backend") == r.total {
            break r;
        }
        assert!(!r.summary, "never failed over to zone 2: {}", r.raw);
    };
    eprintln!("failed over: {}", failed_over.raw);
    let names = seen.lock().unwrap().clone();
    assert!(
        names.iter().all(|n| n == &name),
        "server names at the ingress: {names:?}"
    );
    assert!(!names.is_empty(), "zone 2 was reached through its ingress");
    wait_until("zone 2's server saw web's certificate", CONVERGE, POLL, || {
        let out = remote.output();
        out.lines()
            .any(|l| l.starts_with("PEER ") && l.contains("spiffe://default/web"))
            .then_some(())
            .ok_or_else(|| tail(&out))
    });

    let _back = TestServer::start_xds("zone-1/backend", p1, a1.bootstrap(), &[]);
    loop {
        let r = watch.next(Duration::from_secs(40)).expect("the watch client runs");
        if r.total > 0 && r.ok_from("zone-1/backend") == r.total {
            break;
        }
        assert!(!r.summary, "never came back to zone 1: {}", r.raw);
    }
    remote.kill();
}
