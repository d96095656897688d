#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Dataplane identity end to end (DESIGN §10), with real processes: a
//! global and a zone (and a standalone zone), tokens issued through the API
//! and meridianctl, an ADS client over the zone's TLS port that shows the
//! exact status of every refusal, and `meridian-dp` with real Python grpcio
//! and Node @grpc/grpc-js-xds clients for the agent's part.
//!
//! Build the binaries first: `cargo build --workspace --bins`; the clients
//! come from `scripts/test-all.sh`.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use meridian_e2e::dp::{dataplane_token, token_id, xds_ca, Agent, AgentSpec};
use meridian_e2e::xds_clients::{run_client, try_run_client, ClientKind, TestServer};
use meridian_e2e::*;
use meridian_xds::client;
use meridian_xds::resources::LISTENER;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

const MESH: &str = "default";
const CONVERGE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// DESIGN §10: a revoked or expired token's live stream is closed within this.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// A global and a zone; the zone removes proxy-registered dataplanes 2 s
/// after their proxy is gone.
struct Deployment {
    global: Proc,
    zone: Proc,
    xds: u16,
    ca_pem: String,
    ca_file: std::path::PathBuf,
}

impl Deployment {
    fn start(dir: &Path) -> Deployment {
        let global = start_global_on(dir, &dir.join("global"), free_port(), free_port(), &[]);
        let join = zone_join(&global, "zone-1", &dir.join("join"));
        let xds = free_port();
        let zone = start_zone_xds(
            dir,
            &join,
            None,
            xds,
            &["--store", "memory", "--dataplane-cleanup-age", "2s"],
        );
        let ca_file = xds_ca(&zone, dir);
        let ca_pem = std::fs::read_to_string(&ca_file).unwrap();
        let d = Deployment {
            global,
            zone,
            xds,
            ca_pem,
            ca_file,
        };
        d.wait_zone_has(&format!("/meshes/{MESH}"));
        d
    }

    fn wait_zone_has(&self, path: &str) {
        wait_until(&format!("the zone to have {path}"), CONVERGE, POLL, || {
            match self.zone.get(path) {
                (200, v) => Ok(v),
                (s, v) => Err(format!("{s} {v}")),
            }
        });
    }

    /// A token from the global; waits until the zone has the mesh's key.
    fn token(&self, body: Value) -> String {
        let token = dataplane_token(&self.global.api, &body);
        let mesh = body["mesh"].as_str().unwrap().to_string();
        let kid = kid(&token);
        self.wait_zone_has(&format!("/meshes/{mesh}/dataplane-token-keys/{kid}"));
        token
    }

    fn dataplane_at_zone(&self, name: &str) -> Option<Value> {
        match self.zone.get(&format!("/meshes/{MESH}/dataplanes/{name}")) {
            (200, v) => Some(v),
            _ => None,
        }
    }

    fn dataplane_at_global(&self, name: &str) -> Option<Value> {
        match self.global.get(&format!("/meshes/{MESH}/dataplanes/zone-1.{name}")) {
            (200, v) => Some(v),
            _ => None,
        }
    }

    fn apply(&self, doc: Value) {
        let out = self.global.ctl(&["apply", "-f", "-"], Some(&doc.to_string()));
        assert!(
            out.status.success(),
            "apply {doc}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn agent(&self, dir: &Path, token: &str, name: &str, dataplane: Option<&Value>) -> Agent {
        Agent::grpc(
            dir,
            &AgentSpec {
                xds_port: self.xds,
                ca_file: &self.ca_file,
                token,
                mesh: MESH,
                name,
                dataplane,
                extra: &[],
                env: &[],
            },
        )
    }
}

fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn kid(token: &str) -> String {
    let part = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_string()
}

fn dataplane(name: &str, address: &str, port: u16, service: &str) -> Value {
    json!({"type": "Dataplane", "mesh": MESH, "name": name,
        "networking": {"address": address, "inbound": [{"port": port,
            "tags": {"kuma.io/service": service, "kuma.io/protocol": "grpc"}}]}})
}

/// A node; with `inline`, the dataplane definition in its metadata.
fn node(id: &str, inline: Option<&Value>) -> Node {
    let metadata = inline.map(|dp| {
        let mut fields = dp.as_object().unwrap().clone();
        for k in ["type", "mesh", "name"] {
            fields.remove(k);
        }
        let Some(Kind::StructValue(s)) = meridian_dp::to_pb(&Value::Object(fields)).kind else {
            unreachable!()
        };
        Struct {
            fields: [(
                "dataplane".to_string(),
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(Kind::StructValue(s)),
                },
            )]
            .into(),
        }
    });
    Node {
        id: id.into(),
        user_agent_name: "grpc-test".into(),
        metadata,
        ..Default::default()
    }
}

/// One state-of-the-world stream over the zone's TLS port.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Ads {
    /// Opens a stream presenting `token` (none: no credentials) and sends a
    /// first Listener request as `node`; `Err` when the zone refuses the
    /// stream before reading it.
    async fn open(d: &Deployment, token: Option<&str>, node: Node) -> Result<Ads, Status> {
        open_at(d.xds, &d.ca_pem, token, node).await
    }

    /// The next response, or the status the stream ends with.
    async fn next(&mut self, within: Duration) -> Result<DiscoveryResponse, Status> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => panic!("nothing from the zone within {within:?}"),
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(Status::ok("the stream ended")),
            Ok(Err(s)) => Err(s),
        }
    }

    /// The status the stream ends with (responses before it are skipped).
    async fn ends(&mut self, within: Duration) -> (Status, Duration) {
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            assert!(!left.is_zero(), "the stream was not closed within {within:?}");
            match self.next(left).await {
                Ok(_) => {}
                Err(s) => return (s, start.elapsed()),
            }
        }
    }
}

async fn open_at(xds: u16, ca_pem: &str, token: Option<&str>, node: Node) -> Result<Ads, Status> {
    let channel = client::endpoint(&format!("127.0.0.1:{xds}"), ca_pem)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: LISTENER.into(),
        resource_names: vec!["backend".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let stream = ReceiverStream::new(rx);
    let rx = match token {
        Some(t) => {
            client::ads_client(channel, client::Bearer::new(t).unwrap())
                .stream_aggregated_resources(stream)
                .await?
        }
        None => {
            AggregatedDiscoveryServiceClient::new(channel)
                .stream_aggregated_resources(stream)
                .await?
        }
    }
    .into_inner();
    Ok(Ads { tx, rx })
}

/// What the zone answers a stream opened with `token` as `node`: served
/// (a first response) or the refusal.
async fn verdict(d: &Deployment, token: Option<&str>, node: Node) -> Result<(), Status> {
    let mut ads = Ads::open(d, token, node).await?;
    ads.next(Duration::from_secs(10)).await.map(|_| ())
}

fn assert_refused(v: Result<(), Status>, code: Code, says: &str, what: &str) {
    match v {
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(
                s.message().contains(says),
                "{what}: {:?} does not say {says:?}",
                s.message()
            );
        }
        Ok(()) => panic!("{what}: served"),
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_proves_who_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = tokio::task::block_in_place(|| Deployment::start(dir.path()));
    tokio::task::block_in_place(|| {
        d.apply(json!({"type": "Mesh", "name": "team-b"}));
        d.wait_zone_has("/meshes/team-b");
        let (s, r) = d.zone.put_json(
            &format!("/meshes/{MESH}/dataplanes/web-1"),
            &dataplane("web-1", "127.0.0.1", 1, "web"),
        );
        assert!(s == 200 || s == 201, "{s} {r}");
    });
    let web = || node(&format!("{MESH}.web-1"), None);
    let any = tokio::task::block_in_place(|| d.token(json!({"mesh": MESH})));

    // Served with a token.
    verdict(&d, Some(&any), web()).await.unwrap();

    // No credentials, garbage, truncated, oversized, alg none, another
    // key's signature: UNAUTHENTICATED, nothing read.
    assert_refused(
        verdict(&d, None, web()).await,
        Code::Unauthenticated,
        "no dataplane token",
        "no token",
    );
    let cases: Vec<(String, &str, &str)> = vec![
        ("garbage".into(), "malformed", "garbage"),
        (any[..any.len() / 2].to_string(), "dataplane token", "truncated"),
        (
            format!("{any}{}", "A".repeat(17 * 1024)),
            "bytes, more than the limit",
            "oversized",
        ),
        (
            {
                let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"key-1"}"#);
                let parts: Vec<&str> = any.split('.').collect();
                format!("{none}.{}.{}", parts[1], parts[2])
            },
            "\"none\" is not accepted",
            "alg none",
        ),
        (
            {
                let key =
                    meridian_server::identity::jwt::load_key(&meridian_server::identity::jwt::generate_key().unwrap())
                        .unwrap();
                meridian_server::identity::jwt::sign(&key, &kid(&any), &claims(&any)).unwrap()
            },
            "signature is invalid",
            "another key",
        ),
    ];
    for (token, says, what) in &cases {
        assert_refused(verdict(&d, Some(token), web()).await, Code::Unauthenticated, says, what);
    }

    // The attack this closes: an inline registration putting an address into
    // another service's endpoints. Without a token it is refused before
    // anything is stored; with a token of another service it is refused too.
    let evil = dataplane("anything", "10.6.6.6", 8080, "backend");
    let attack = || node(&format!("{MESH}.anything"), Some(&evil));
    assert_refused(
        verdict(&d, None, attack()).await,
        Code::Unauthenticated,
        "no dataplane token",
        "inline, no token",
    );
    let web_only = tokio::task::block_in_place(|| d.token(json!({"mesh": MESH, "tags": {"kuma.io/service": ["web"]}})));
    assert_refused(
        verdict(&d, Some(&web_only), attack()).await,
        Code::PermissionDenied,
        "kuma.io/service=\"backend\", which the token does not allow",
        "inline backend with a web token",
    );
    tokio::task::block_in_place(|| {
        assert_eq!(d.dataplane_at_zone("anything"), None, "stored at the zone");
        assert_eq!(d.dataplane_at_global("anything"), None, "stored at the global");
    });

    // Another mesh's token; a token for another name.
    let team_b = tokio::task::block_in_place(|| d.token(json!({"mesh": "team-b"})));
    assert_refused(
        verdict(&d, Some(&team_b), web()).await,
        Code::PermissionDenied,
        "the dataplane token is for mesh \"team-b\"",
        "another mesh",
    );
    let named = tokio::task::block_in_place(|| d.token(json!({"mesh": MESH, "name": "web-2"})));
    assert_refused(
        verdict(&d, Some(&named), web()).await,
        Code::PermissionDenied,
        "the token is for dataplane \"web-2\"",
        "another name",
    );
    // A mesh that does not exist gets no token.
    tokio::task::block_in_place(|| {
        let (status, body) = http(
            "POST",
            &format!("{}/tokens/dataplane", d.global.api),
            Some(json!({"mesh": "nope"}).to_string()),
            None,
        )
        .unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["causes"][0]["field"], "mesh", "{body}");
    });

    // The node id cannot change within a stream.
    let mut ads = Ads::open(&d, Some(&any), web()).await.unwrap();
    ads.next(Duration::from_secs(10)).await.unwrap();
    ads.tx
        .send(DiscoveryRequest {
            node: Some(node(&format!("{MESH}.web-2"), None)),
            type_url: LISTENER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, _) = ads.ends(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("cannot change"), "{status:?}");

    // Plaintext to the TLS port: no stream at all.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", d.xds))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
        let r = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await;
        assert!(r.is_err(), "a plaintext stream was opened");
    }

    // Revocation with meridianctl: the live stream is closed within 10 s,
    // and the token opens no stream any more.
    let revoked = tokio::task::block_in_place(|| d.token(json!({"mesh": MESH, "name": "web-1"})));
    let mut live = Ads::open(&d, Some(&revoked), web()).await.unwrap();
    live.next(Duration::from_secs(10)).await.unwrap();
    let t = Instant::now();
    tokio::task::block_in_place(|| {
        let out = d.global.ctl(&["revoke", "dataplane-token", "--token", &revoked], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    });
    let (status, _) = live.ends(CLOSE_WITHIN).await;
    let took = t.elapsed();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(took < CLOSE_WITHIN, "closed {took:?} after the revocation");
    eprintln!("revocation → stream closed in {took:?}");
    assert_refused(
        verdict(&d, Some(&revoked), web()).await,
        Code::Unauthenticated,
        &token_id(&revoked),
        "revoked",
    );

    // Expiry: a token valid for 2 s is served, then its stream is closed
    // within 10 s of the expiry (plus the 5 s of tolerated clock skew).
    let short = tokio::task::block_in_place(|| d.token(json!({"mesh": MESH, "validFor": "2s"})));
    let exp = claims(&short)["exp"].as_i64().unwrap();
    let mut live = Ads::open(&d, Some(&short), web()).await.unwrap();
    live.next(Duration::from_secs(10)).await.unwrap();
    let (status, _) = live.ends(Duration::from_secs(2 + 5) + CLOSE_WITHIN).await;
    let late = chrono::Utc::now().timestamp() - exp;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    assert!((5..15).contains(&late), "closed {late} s after the expiry");
    assert_refused(
        verdict(&d, Some(&short), web()).await,
        Code::Unauthenticated,
        "expired",
        "expired",
    );

    // Rotation: the old key's tokens stay valid until it is retired, and
    // then its live streams close; the new key's stay.
    let old = any.clone();
    let mut old_stream = Ads::open(&d, Some(&old), web()).await.unwrap();
    old_stream.next(Duration::from_secs(10)).await.unwrap();
    let new = tokio::task::block_in_place(|| {
        let out = d.global.ctl(&["rotate", "dataplane-token-key", "--mesh", MESH], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        d.token(json!({"mesh": MESH}))
    });
    assert_eq!(kid(&new), "key-2");
    let web2 = dataplane("web-2", "127.0.0.1", 1, "web");
    let mut new_stream = Ads::open(&d, Some(&new), node(&format!("{MESH}.web-2"), Some(&web2)))
        .await
        .unwrap();
    new_stream.next(Duration::from_secs(10)).await.unwrap();
    tokio::task::block_in_place(|| {
        let out = d
            .global
            .ctl(&["delete", "dataplane-token-key", "key-2", "-m", MESH], None);
        assert!(!out.status.success(), "the signing key was retired");
        assert!(String::from_utf8_lossy(&out.stderr).contains("rotate first"));
        let out = d
            .global
            .ctl(&["delete", "dataplane-token-key", "key-1", "-m", MESH], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    });
    let (status, _) = old_stream.ends(CLOSE_WITHIN).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("key-1"), "{status:?}");
    new_stream
        .tx
        .send(DiscoveryRequest {
            type_url: LISTENER.into(),
            resource_names: vec!["backend".into(), "web".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    new_stream
        .next(Duration::from_secs(10))
        .await
        .expect("the new key's stream is still served");

    // 10,000 refused attempts cost the zone no memory that stays.
    let pid = d.zone.child.id();
    let warm = |n: usize| {
        let ca = d.ca_pem.clone();
        let xds = d.xds;
        async move {
            let channel = client::endpoint(&format!("127.0.0.1:{xds}"), &ca)
                .unwrap()
                .connect()
                .await
                .unwrap();
            for i in 0..n {
                let bad = format!("bad.{i}.token");
                let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
                let r = client::ads_client(channel.clone(), client::Bearer::new(&bad).unwrap())
                    .stream_aggregated_resources(ReceiverStream::new(rx))
                    .await;
                assert_eq!(r.err().map(|s| s.code()), Some(Code::Unauthenticated));
            }
        }
    };
    warm(1_000).await;
    let before = vm_rss_kib(pid);
    warm(10_000).await;
    let after = vm_rss_kib(pid);
    eprintln!("zone VmRSS around 10,000 refused streams: {before} KiB → {after} KiB");
    assert!(
        after < before + 8 * 1024,
        "the zone grew from {before} KiB to {after} KiB over 10,000 refusals"
    );
    verdict(&d, Some(&new), web()).await.expect("the zone still serves");
}

#[test]
fn the_agent_registers_holds_and_deregisters_and_says_why_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::start(dir.path());
    let dir = dir.path();

    // A backend and a client, each beside its agent, each token for its
    // service only; the agents register both dataplanes.
    let backend = TestServer::start("zone-1/backend-1", &[]);
    let backend_token = d.token(json!({"mesh": MESH, "tags": {"kuma.io/service": ["backend"]}}));
    let mut backend_agent = d.agent(
        dir,
        &backend_token,
        "backend-1",
        Some(&dataplane("backend-1", "127.0.0.1", backend.port, "backend")),
    );
    let client_token = d.token(json!({"mesh": MESH, "name": "client-1"}));
    let client_agent = d.agent(
        dir,
        &client_token,
        "client-1",
        Some(&dataplane("client-1", "127.0.0.1", 1, "client")),
    );
    for kind in ClientKind::ALL {
        let r = run_client(kind, "xds:///backend", 10, &[], Some(client_agent.bootstrap()));
        assert_eq!(r.ok_from("zone-1/backend-1"), 10, "{kind:?}: {}", r.raw);
    }
    // Registered by their proxies, synced to the global.
    for name in ["backend-1", "client-1"] {
        let dp = d.dataplane_at_zone(name).expect("registered");
        assert_eq!(dp["labels"]["meridian.io/registered-by"], "proxy", "{dp}");
        wait_until(&format!("{name} at the global"), CONVERGE, POLL, || {
            d.dataplane_at_global(name).ok_or_else(String::new)
        });
    }
    // Killed (-9): nothing deregisters; the zone removes client-1 once the
    // cleanup age (2 s) has passed with nothing of it connected.
    drop(client_agent);
    wait_until("client-1 removed after the cleanup age", CONVERGE, POLL, || {
        d.dataplane_at_zone("client-1").map_or(Ok(()), |v| Err(v.to_string()))
    });
    // backend-1's proxy never connected (nothing uses its relay), yet it
    // outlived the cleanup that removed client-1: its agent holds the
    // registration.
    assert!(
        d.dataplane_at_zone("backend-1").is_some(),
        "a held registration was removed"
    );

    // SIGTERM: deregistered at the zone, and so at the global.
    let status = backend_agent.terminate();
    assert!(status.success(), "meridian-dp exited with {status}");
    wait_until(
        "backend-1 gone from the zone and the global",
        CONVERGE,
        POLL,
        || match (d.dataplane_at_zone("backend-1"), d.dataplane_at_global("backend-1")) {
            (None, None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(
        backend_agent.log_text().contains("dataplane deregistered"),
        "{}",
        backend_agent.log_text()
    );

    // One clear line per cause of failure, however often it retries.
    let debug = [("RUST_LOG", "meridian_dp=debug")];
    let global_ca = dir.join("join").join("global-ca.pem");
    let closed = free_port();
    // (dataplane name, token, CA file, xDS port, the cause logged)
    let causes = [
        ("bad-token", "not-a-token", d.ca_file.as_path(), d.xds, "bad token"),
        (
            "wrong-ca",
            client_token.as_str(),
            global_ca.as_path(),
            d.xds,
            "wrong CA",
        ),
        (
            "unreachable",
            client_token.as_str(),
            d.ca_file.as_path(),
            closed,
            "zone unreachable",
        ),
    ];
    for (name, token, ca_file, xds_port, cause) in causes {
        let dp = dataplane(name, "127.0.0.1", 1, "client");
        let agent = Agent::grpc(
            dir,
            &AgentSpec {
                xds_port,
                ca_file,
                token,
                mesh: MESH,
                name,
                dataplane: Some(&dp),
                extra: &[],
                env: &debug,
            },
        );
        wait_until(&format!("{name}: three attempts"), CONVERGE, POLL, || {
            let log = agent.log_text();
            let attempts = log.lines().filter(|l| l.contains(cause)).count();
            (attempts >= 3).then_some(()).ok_or(log)
        });
        let log = agent.log_text();
        let logged: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("what=\"registration\""))
            .collect();
        assert_eq!(logged.len(), 1, "{name}: one error line, not one per retry:\n{log}");
        assert!(logged[0].contains(cause), "{name}: {}", logged[0]);
        // The relay, for a real client: no configuration, and one line.
        if name == "bad-token" {
            let f = try_run_client(
                ClientKind::Python,
                "xds:///backend",
                1,
                &["--ready-timeout-ms", "2000", "--deadline-ms", "1000"],
                Some(agent.bootstrap()),
                Duration::from_secs(60),
            )
            .expect_err("a bad token gets no configuration");
            assert_eq!(f.status.and_then(|s| s.code()), Some(3), "{f}");
            let relay = agent.log_text();
            let relay_errors: Vec<&str> = relay
                .lines()
                .filter(|l| l.contains("ERROR") && l.contains("what=\"xds relay\""))
                .collect();
            assert_eq!(relay_errors.len(), 1, "one relay line for the bad token:\n{relay}");
            assert!(relay_errors[0].contains("bad token"), "{}", relay_errors[0]);
        }
    }
}

#[test]
fn a_standalone_zone_issues_and_verifies_its_own_tokens_and_dp_auth_none_is_loud() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let xds = free_port();
    let port = free_port();
    let args: Vec<String> = [
        "run",
        "--zone",
        "solo",
        "--api-addr",
        &format!("127.0.0.1:{port}"),
        "--xds-addr",
        &format!("127.0.0.1:{xds}"),
        "--store",
        "memory",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut zone = Proc::spawn("meridian-zone", &args, &[], dir, port);
    zone.wait_ready(CONVERGE);
    let ca_file = xds_ca(&zone, dir);
    let backend = TestServer::start("solo/backend-1", &[]);
    let (s, r) = zone.put_json(
        &format!("/meshes/{MESH}/dataplanes/backend-1"),
        &dataplane("backend-1", "127.0.0.1", backend.port, "backend"),
    );
    assert!(s == 200 || s == 201, "{s} {r}");
    let token = dataplane_token(&zone.api, &json!({"mesh": MESH, "name": "client-1"}));
    let agent = Agent::grpc(
        dir,
        &AgentSpec {
            xds_port: xds,
            ca_file: &ca_file,
            token: &token,
            mesh: MESH,
            name: "client-1",
            dataplane: Some(&dataplane("client-1", "127.0.0.1", 1, "client")),
            extra: &[],
            env: &[],
        },
    );
    for kind in ClientKind::ALL {
        let r = run_client(kind, "xds:///backend", 5, &[], Some(agent.bootstrap()));
        assert_eq!(r.ok_from("solo/backend-1"), 5, "{kind:?}: {}", r.raw);
    }
    let out = zone.ctl(&["revoke", "dataplane-token", "--token", &token], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the agent to hear the revocation", CONVERGE, POLL, || {
        let log = agent.log_text();
        log.contains("revoked").then_some(()).ok_or(log)
    });
    drop(agent);
    zone.terminate();

    // --dp-auth none: served without a token, and the zone says it loudly.
    let port = free_port();
    let mut args = args.clone();
    args[4] = format!("127.0.0.1:{port}");
    args.extend(["--dp-auth".to_string(), "none".to_string()]);
    let mut open = Proc::spawn("meridian-zone", &args, &[], dir, port);
    open.wait_ready(CONVERGE);
    let log = open.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("NOT authenticated")),
        "{log}"
    );
    let (s, r) = open.put_json(
        &format!("/meshes/{MESH}/dataplanes/backend-1"),
        &dataplane("backend-1", "127.0.0.1", backend.port, "backend"),
    );
    assert!(s == 200 || s == 201, "{s} {r}");
    let ca = std::fs::read_to_string(xds_ca(&open, dir)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ads = open_at(xds, &ca, None, node(&format!("{MESH}.backend-1"), None))
            .await
            .unwrap();
        ads.next(Duration::from_secs(10))
            .await
            .expect("served without a token under --dp-auth none");
    });
}
