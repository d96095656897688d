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
