//! Several real `meridian-global` processes on one real etcd: shared API,
//! defaults done once by the leader, leader failover, and etcd outages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use meridian_e2e::*;
use serde_json::json;

fn start_etcd() -> (tokio::runtime::Runtime, EtcdServer) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt
        .block_on(EtcdServer::start())
        .expect("etcd must be installed (apt-get install etcd-server)");
    (rt, etcd)
}

fn is_leader(g: &Proc) -> Option<bool> {
    let (status, body) = http("GET", &format!("{}/metrics", g.api), None, None).ok()?;
    if status != 200 {
        return None;
    }
    let text = body.as_str()?.to_string();
    text.lines()
        .find(|l| l.starts_with("meridian_leader "))
        .map(|l| l.trim_end().ends_with(" 1"))
}

fn policy_count(g: &Proc, mesh: &str) -> usize {
    ["meshtimeouts", "meshretries", "meshcircuitbreakers"]
        .iter()
        .map(|p| names(&g.get(&format!("/meshes/{mesh}/{p}")).1).len())
        .sum()
}

#[test]
fn two_globals_share_one_etcd_and_the_leader_moves_when_it_dies() {
    let (_rt, etcd) = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("e2e-two");
    let a = start_global_etcd(dir.path(), &etcd.endpoint(), &prefix);
    let b = start_global_etcd(dir.path(), &etcd.endpoint(), &prefix);

    // Exactly one leader.
    let leaders = wait_for("one leader", Duration::from_secs(15), || {
        let (la, lb) = (is_leader(&a)?, is_leader(&b)?);
        (la != lb).then_some((la, lb))
    });

    // Defaults exist once, seen identically by both.
    for g in [&a, &b] {
        wait_for("default mesh policies", Duration::from_secs(10), || {
            (policy_count(g, "default") == 4).then_some(())
        });
    }
    let t_a = a.get("/meshes/default/meshtimeouts/mesh-timeout-all-default").1;
    let t_b = b.get("/meshes/default/meshtimeouts/mesh-timeout-all-default").1;
    assert_eq!(t_a["creationTime"], t_b["creationTime"]);

    // A write through one replica is read through the other.
    assert_eq!(
        a.put_json("/meshes/shared", &json!({"type": "Mesh", "name": "shared"}))
            .0,
        201
    );
    wait_for("mesh on the other replica", Duration::from_secs(5), || {
        (b.get("/meshes/shared").0 == 200).then_some(())
    });
    wait_for("defaults of shared", Duration::from_secs(10), || {
        (policy_count(&b, "shared") == 4).then_some(())
    });

    // Kill the leader without a clean close; the follower takes over within
    // 15 s and does the leader's work (defaults of a new mesh).
    let (mut leader, follower) = if leaders.0 { (a, b) } else { (b, a) };
    leader.kill9();
    let killed = Instant::now();
    assert_eq!(
        follower
            .put_json("/meshes/after", &json!({"type": "Mesh", "name": "after"}))
            .0,
        201
    );
    wait_for("the follower to lead", Duration::from_secs(15), || {
        is_leader(&follower).filter(|l| *l)
    });
    wait_for("defaults created by the new leader", Duration::from_secs(15), || {
        (policy_count(&follower, "after") == 4).then_some(())
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(15), "failover took {took:?}");
    eprintln!("leader failover and defaults of a new mesh in {took:?}");
}

#[test]
fn etcd_outage_reads_from_cache_writes_503_then_recovers() {
    let (rt, mut etcd) = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_etcd(dir.path(), &etcd.endpoint(), &unique_prefix("e2e-outage"));
    assert_eq!(
        g.put_json("/meshes/before", &json!({"type": "Mesh", "name": "before"}))
            .0,
        201
    );

    etcd.stop();
    let started = Instant::now();
    let (status, body) = g.put_json("/meshes/during", &json!({"type": "Mesh", "name": "during"}));
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["details"].as_str().unwrap_or_default().contains("unavailable"),
        "{body}"
    );
    assert!(
        took < Duration::from_secs(8),
        "a write to a dead etcd answered after {took:?}"
    );
    // Reads keep working from the cache.
    assert_eq!(g.get("/meshes/before").0, 200);
    assert_eq!(g.get("/meshes").1["total"], 2);

    rt.block_on(etcd.restart()).unwrap();
    // The process recovers by itself: writes succeed again and are visible.
    wait_for("writes after etcd returns", Duration::from_secs(30), || {
        (g.put_json("/meshes/after", &json!({"type": "Mesh", "name": "after"})).0 == 201).then_some(())
    });
    assert_eq!(g.get("/meshes/after").0, 200);
    assert_eq!(g.get("/meshes/during").0, 404, "the refused write was not stored");
}

/// A CA, etcd's serving certificate for 127.0.0.1 and a client
/// certificate, as PEM files in `dir`.
fn etcd_pki(dir: &std::path::Path) -> meridian_store::testing::ServerTls {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(vec!["meridian-global".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    write("client.pem", &client_cert);
    write("client-key.pem", &client_key);
    meridian_store::testing::ServerTls {
        ca_file: write("ca.pem", &ca_cert.pem()),
        cert_file: write("server.pem", &server_cert),
        key_file: write("server-key.pem", &server_key),
        client: meridian_store::etcd::EtcdTls {
            ca_pem: ca_cert.pem().into_bytes(),
            client: Some((client_cert.into_bytes(), client_key.into_bytes())),
        },
    }
}

#[test]
fn the_global_reaches_etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = etcd_pki(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt
        .block_on(meridian_store::testing::EtcdServer::start_tls(tls.clone()))
        .expect("etcd with TLS");
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let file = |n: &str| dir.path().join(n).display().to_string();
    let g = start_global_etcd_with(
        dir.path(),
        &endpoint,
        &unique_prefix("tls"),
        &[
            "--etcd-cacert",
            &file("ca.pem"),
            "--etcd-cert",
            &file("client.pem"),
            "--etcd-key",
            &file("client-key.pem"),
        ],
    );
    let (status, body) = g.put_json("/meshes/over-tls", &json!({"type": "Mesh", "name": "over-tls"}));
    assert_eq!(status, 201, "{body}");
    assert_eq!(g.get("/meshes/over-tls").0, 200);

    // etcd refuses a client without a certificate, and one that does not
    // know etcd's CA refuses etcd.
    rt.block_on(async {
        let no_cert = meridian_store::etcd::EtcdOptions {
            tls: Some(meridian_store::etcd::EtcdTls {
                ca_pem: tls.client.ca_pem.clone(),
                client: None,
            }),
            connect_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let endpoints = std::slice::from_ref(&endpoint);
        let refused = match meridian_store::etcd::EtcdStore::connect_with(endpoints, "/x", no_cert).await {
            Ok(store) => store.check().await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "etcd served a client without a certificate");
        let plain = meridian_store::etcd::EtcdStore::connect(endpoints, "/x").await;
        assert!(
            plain.is_err_and(|e| e.to_string().contains("--etcd-cacert")),
            "https without a CA must be refused by name"
        );
    });

    // The flags are checked before anything starts.
    let out = std::process::Command::new(bin("meridian-global"))
        .args([
            "run",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoint,
            "--etcd-cert",
            &file("client.pem"),
        ])
        .args(["--api-addr", "127.0.0.1:0", "--kds-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--etcd-key") || err.contains("--etcd-cacert"), "{err}");
}
