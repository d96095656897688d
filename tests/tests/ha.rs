//! High availability with real processes: three globals on a three-member
//! etcd, the etcd leader killed (SIGKILL) while writes go on through all
//! three globals. Figures go to RELIABILITY.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_e2e::*;
use meridian_store::testing::EtcdCluster;
use serde_json::json;

/// One write as the client saw it.
struct Write {
    i: usize,
    at: Instant,
    took: Duration,
    status: u16,
}

fn policy(i: usize) -> serde_json::Value {
    json!({"type": "MeshTimeout", "mesh": "ha", "name": format!("p-{i}"),
           "spec": {"targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": format!("{}s", i + 1)}}]}})
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn killing_the_etcd_leader_under_writes_at_three_globals_loses_no_acknowledged_write() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = rt.block_on(EtcdCluster::start(3)).expect("a three-member etcd");
    let endpoints = cluster.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("ha");
    let globals: Vec<Proc> = (0..3)
        .map(|_| start_global_etcd_with(dir.path(), &endpoints, &prefix, &[]))
        .collect();
    let (status, body) = globals[0].put_json("/meshes/ha", &json!({"type": "Mesh", "name": "ha"}));
    assert_eq!(status, 201, "{body}");

    // Writes round-robin over the three globals until told to stop.
    let apis: Vec<String> = globals.iter().map(|g| g.api.clone()).collect();
    let log = Arc::new(Mutex::new(Vec::<Write>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let api = &apis[i % apis.len()];
                let at = Instant::now();
                let status = http(
                    "PUT",
                    &format!("{api}/meshes/ha/meshtimeouts/p-{i}"),
                    Some(policy(i).to_string()),
                    None,
                )
                .map(|(s, _)| s)
                .unwrap_or(0);
                log.lock().unwrap().push(Write {
                    i,
                    at,
                    took: at.elapsed(),
                    status,
                });
                i += 1;
            }
        })
    };
    let acked = |log: &Mutex<Vec<Write>>| log.lock().unwrap().iter().filter(|w| w.status / 100 == 2).count();
    wait_until(
        "200 acknowledged writes before the kill",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let n = acked(&log);
            (n >= 200).then_some(()).ok_or(format!("{n}"))
        },
    );

    let leader = rt.block_on(cluster.leader()).expect("etcd has a leader");
    let killed_at = Instant::now();
    cluster.members[leader].stop();
    let before_kill = acked(&log);
    wait_until(
        "200 acknowledged writes after the kill",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let n = acked(&log) - before_kill;
            (n >= 200).then_some(()).ok_or(format!("{n} since the kill"))
        },
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let writes = std::mem::take(&mut *log.lock().unwrap());
    let ok = |w: &&Write| w.status / 100 == 2;
    let before: Vec<Duration> = writes
        .iter()
        .filter(|w| w.at < killed_at)
        .filter(ok)
        .map(|w| w.took)
        .collect();
    let after: Vec<&Write> = writes.iter().filter(|w| w.at >= killed_at).collect();
    let window: Vec<Duration> = after
        .iter()
        .filter(|w| w.at < killed_at + Duration::from_secs(3))
        .map(|w| w.took)
        .collect();
    let failed = writes.iter().filter(|w| !ok(w)).count();
    // Recovered: the first of ten writes in a row acknowledged within 50 ms.
    let recovered = after
        .windows(10)
        .find(|ws| {
            ws.iter()
                .all(|w| w.status / 100 == 2 && w.took < Duration::from_millis(50))
        })
        .map(|ws| ws[0].at.duration_since(killed_at));

    // Every acknowledged write is there, at every global.
    let acknowledged: Vec<usize> = writes.iter().filter(ok).map(|w| w.i).collect();
    for g in &globals {
        wait_until(
            "every acknowledged write at this global",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let (_, list) = g.get("/meshes/ha/meshtimeouts?size=1000");
                let mut have: std::collections::BTreeSet<String> = names(&list).into_iter().collect();
                let mut next = list["next"].as_str().map(str::to_string);
                while let Some(url) = next {
                    let (_, page) = http("GET", &url, None, None)?;
                    have.extend(names(&page));
                    next = page["next"].as_str().map(str::to_string);
                }
                let lost: Vec<usize> = acknowledged
                    .iter()
                    .copied()
                    .filter(|i| !have.contains(&format!("p-{i}")))
                    .collect();
                lost.is_empty()
                    .then_some(())
                    .ok_or(format!("{} missing, e.g. {:?}", lost.len(), lost.first()))
            },
        );
    }
    // The killed member comes back and catches up.
    rt.block_on(cluster.members[leader].restart())
        .expect("the member restarts");

    let mut statuses = std::collections::BTreeMap::<(bool, u16), usize>::new();
    for w in &writes {
        *statuses.entry((w.at >= killed_at, w.status)).or_default() += 1;
    }
    eprintln!("statuses (after the kill?, status) → count: {statuses:?}");
    eprintln!(
        "RELIABILITY etcd-leader-kill: writes {}, acknowledged {}, failed {} (all after the kill: {}), lost 0; \
         write p50 {:?} / p99 {:?} before; p99 {:?} / max {:?} in the 3 s after the kill; recovered after {:?}",
        writes.len(),
        acknowledged.len(),
        failed,
        writes.iter().filter(|w| !ok(w)).all(|w| w.at >= killed_at),
        pct(before.clone(), 0.5),
        pct(before, 0.99),
        pct(window.clone(), 0.99),
        window.iter().max().copied().unwrap_or_default(),
        recovered,
    );
    let recovered = recovered.expect("writes recovered after the kill");
    assert!(
        recovered < Duration::from_secs(10),
        "recovered only after {recovered:?}"
    );
}
