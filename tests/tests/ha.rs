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

/// A MeshTimeout `<prefix>-<i>` in `mesh`, different for every `i`.
fn policy(mesh: &str, prefix: &str, i: usize) -> serde_json::Value {
    json!({"type": "MeshTimeout", "mesh": mesh, "name": format!("{prefix}-{i}"),
           "spec": {"targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": format!("{}s", i + 1)}}]}})
}

/// A thread PUTting MeshTimeouts `<prefix>-<i>` in `mesh` round-robin
/// through the APIs that are `Some` (a global being restarted is `None`),
/// pausing `pause` after each, until `stop`; every write is logged.
struct Writer {
    log: Arc<Mutex<Vec<Write>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(apis: Arc<Mutex<Vec<Option<String>>>>, mesh: &'static str, prefix: &'static str, pause: Duration) -> Self {
        let log = Arc::new(Mutex::new(Vec::<Write>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let api = {
                        let apis = apis.lock().unwrap();
                        apis[i % apis.len()].clone()
                    };
                    if let Some(api) = api {
                        let at = Instant::now();
                        let status = http(
                            "PUT",
                            &format!("{api}/meshes/{mesh}/meshtimeouts/{prefix}-{i}"),
                            Some(policy(mesh, prefix, i).to_string()),
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
                        std::thread::sleep(pause);
                    }
                    i += 1;
                }
            })
        };
        Writer { log, stop, thread }
    }
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
    let apis = Arc::new(Mutex::new(globals.iter().map(|g| Some(g.api.clone())).collect()));
    let Writer {
        log,
        stop,
        thread: writer,
    } = Writer::start(apis, "ha", "p", Duration::ZERO);
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

fn global_on(dir: &std::path::Path, etcd: &str, prefix: &str, api: u16, kds: u16) -> Proc {
    let args: Vec<String> = [
        "run",
        "--api-addr",
        &format!("127.0.0.1:{api}"),
        "--kds-addr",
        &format!("127.0.0.1:{kds}"),
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd,
        "--etcd-prefix",
        prefix,
        "--kds-keepalive",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = Proc::spawn("meridian-global", &args, &[], dir, api);
    p.wait_ready(Duration::from_secs(30));
    p
}

/// The global instance id of zone `zone`'s online subscription, as `g` sees it.
fn holder(g: &Proc, zone: &str) -> Option<String> {
    let (status, body) = http("GET", &format!("{}/zones+insights/{zone}", g.api), None, None).ok()?;
    if status != 200 {
        return None;
    }
    body["zoneInsight"]["subscriptions"]
        .as_array()?
        .iter()
        .find(|s| s.get("disconnectTime").is_none_or(serde_json::Value::is_null))
        .and_then(|s| s["globalInstanceId"].as_str().map(str::to_string))
}

fn g(globals: &[Option<Proc>], i: usize) -> &Proc {
    globals[i].as_ref().unwrap()
}

fn leads(g: &Proc) -> bool {
    http("GET", &format!("{}/metrics", g.api), None, None)
        .ok()
        .and_then(|(_, body)| {
            body.as_str()
                .map(|t| t.lines().any(|l| l.trim_end() == "meridian_leader 1"))
        })
        .unwrap_or(false)
}

#[test]
fn a_zone_moves_to_another_global_when_its_global_is_killed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(EtcdServer::start()).expect("etcd");
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("ha-zone");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut globals: Vec<Option<Proc>> = ports
        .iter()
        .map(|(api, kds)| Some(global_on(dir.path(), &etcd.endpoint(), &prefix, *api, *kds)))
        .collect();

    // The join line of one global, with every global's KDS address.
    let mut join = zone_join(g(&globals, 0), "zone-1", dir.path());
    let at = join.iter().position(|a| a == "--global-address").unwrap() + 1;
    join[at] = ports
        .iter()
        .map(|(_, kds)| format!("grpcs://127.0.0.1:{kds}"))
        .collect::<Vec<_>>()
        .join(",");
    let zone = start_zone(dir.path(), &join, None, &["--store", "memory", "--kds-keepalive", "1s"]);
    let dp = json!({"type": "Dataplane", "mesh": "default", "name": "dp-1",
        "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}});
    wait_until(
        "the default mesh at the zone",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let (s, _) = zone.get("/meshes/default");
            (s == 200).then_some(()).ok_or(format!("{s}"))
        },
    );
    assert_eq!(zone.put_json("/meshes/default/dataplanes/dp-1", &dp).0, 201);
    let holder_id = wait_until(
        "zone-1 online at a global",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || holder(g(&globals, 0), "zone-1").ok_or("offline".to_string()),
    );
    let victim = globals
        .iter()
        .position(|p| holder_id.ends_with(&format!("-{}", p.as_ref().unwrap().child.id())))
        .expect("the holder is one of the three");
    let survivor = (victim + 1) % 3;
    let led = leads(g(&globals, victim));

    let killed_at = Instant::now();
    globals[victim].as_mut().unwrap().kill9();
    globals[victim] = None;
    let new_holder = wait_until(
        "zone-1 online at another global",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || match holder(g(&globals, survivor), "zone-1") {
            Some(h) if h != holder_id => Ok(h),
            other => Err(format!("{other:?}")),
        },
    );
    let offline = killed_at.elapsed();
    // Changes flow both ways again.
    let mesh_policy = json!({"type": "MeshTimeout", "mesh": "default", "name": "after-failover",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1h"}}]}});
    assert_eq!(
        g(&globals, survivor)
            .put_json("/meshes/default/meshtimeouts/after-failover", &mesh_policy)
            .0,
        201
    );
    wait_until(
        "the policy at the zone",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let (s, _) = zone.get("/meshes/default/meshtimeouts/after-failover");
            (s == 200).then_some(()).ok_or(format!("{s}"))
        },
    );
    let dp2 = json!({"type": "Dataplane", "mesh": "default", "name": "dp-2",
        "networking": {"address": "10.0.0.2", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}});
    assert_eq!(zone.put_json("/meshes/default/dataplanes/dp-2", &dp2).0, 201);
    let flowing = wait_until(
        "both dataplanes at the surviving globals",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let (_, list) = g(&globals, survivor).get("/meshes/default/dataplanes");
            let n = names(&list);
            (n.iter().any(|x| x.ends_with("dp-1")) && n.iter().any(|x| x.ends_with("dp-2")))
                .then(|| killed_at.elapsed())
                .ok_or(format!("{n:?}"))
        },
    );
    // Leadership: a survivor leads within 15 s; the defaults exist once.
    let leader_after = wait_until(
        "a surviving leader",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            (0..3)
                .find(|i| globals[*i].as_ref().is_some_and(leads))
                .ok_or("none leads".to_string())
        },
    );
    let (_, roles) = g(&globals, survivor).get("/access-roles");
    assert_eq!(names(&roles), ["admin"]);
    let (_, timeouts) = g(&globals, survivor).get("/meshes/default/meshtimeouts");
    assert_eq!(timeouts["total"], 3, "two defaults and after-failover: {timeouts}");
    eprintln!(
        "RELIABILITY global-kill: the holder (global {victim}, leader: {led}) killed; zone-1 online at {new_holder} after {offline:?}; \
         a dataplane registered after the kill at the global after {flowing:?}; leader now global {leader_after}; 0 lost, defaults once"
    );
    assert!(offline < Duration::from_secs(15), "offline for {offline:?}");
}

/// The zone's periods without a KDS session, from its own log: from a
/// session's end to the next "connected to the global".
fn offline_periods(log: &str) -> Vec<Duration> {
    let time = |line: &str| {
        line.split_whitespace()
            .next()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let mut connected = false;
    let mut since: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    let mut periods = Vec::new();
    for line in log.lines() {
        let Some(t) = time(line) else { continue };
        if line.contains("connected to the global") {
            if let Some(s) = since.take() {
                periods.push((t - s).to_std().unwrap_or_default());
            }
            connected = true;
        } else if connected && (line.contains("KDS session failed") || line.contains("KDS session ended")) {
            connected = false;
            since = Some(t);
        }
    }
    periods
}

#[test]
fn a_rolling_restart_of_every_global_under_zones_and_writes_loses_nothing() {
    let zones_n: usize = std::env::var("MERIDIAN_HA_ZONES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(EtcdServer::start()).expect("etcd");
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("ha-rolling");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut globals: Vec<Proc> = ports
        .iter()
        .map(|(api, kds)| global_on(dir.path(), &etcd.endpoint(), &prefix, *api, *kds))
        .collect();
    let addresses = ports
        .iter()
        .map(|(_, kds)| format!("grpcs://127.0.0.1:{kds}"))
        .collect::<Vec<_>>()
        .join(",");
    let zones: Vec<Proc> = (0..zones_n)
        .map(|i| {
            let name = format!("zone-{i}");
            let mut join = zone_join(&globals[i % 3], &name, &dir.path().join(&name));
            let at = join.iter().position(|a| a == "--global-address").unwrap() + 1;
            join[at] = addresses.clone();
            start_zone(dir.path(), &join, None, &["--store", "memory", "--kds-keepalive", "1s"])
        })
        .collect();
    for (i, z) in zones.iter().enumerate() {
        wait_until(
            "the default mesh at the zone",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                let (s, _) = z.get("/meshes/default");
                (s == 200).then_some(()).ok_or(format!("zone-{i}: {s}"))
            },
        );
        let dp = json!({"type": "Dataplane", "mesh": "default", "name": "before",
            "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}});
        assert_eq!(z.put_json("/meshes/default/dataplanes/before", &dp).0, 201);
    }

    // Writes through whichever globals are up, until told to stop.
    let up: Arc<Mutex<Vec<Option<String>>>> =
        Arc::new(Mutex::new(globals.iter().map(|g| Some(g.api.clone())).collect()));
    let Writer {
        log,
        stop,
        thread: writer,
    } = Writer::start(up.clone(), "default", "r", Duration::from_millis(20));

    let started = Instant::now();
    for k in 0..3 {
        up.lock().unwrap()[k] = None;
        globals[k].terminate();
        let (api, kds) = ports[k];
        globals[k] = global_on(dir.path(), &etcd.endpoint(), &prefix, api, kds);
        up.lock().unwrap()[k] = Some(globals[k].api.clone());
        // One at a time: every zone back on a session before the next.
        for (i, z) in zones.iter().enumerate() {
            wait_until(
                "the zone connected again",
                Duration::from_secs(60),
                Duration::from_millis(50),
                || {
                    let log = z.log_text();
                    let last_connect = log.rfind("connected to the global");
                    let last_end = log.rfind("KDS session failed").max(log.rfind("KDS session ended"));
                    (last_connect > last_end).then_some(()).ok_or(format!("zone-{i}"))
                },
            );
        }
    }
    let restarts_took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let writes = std::mem::take(&mut *log.lock().unwrap());
    let acked: Vec<usize> = writes.iter().filter(|w| w.status / 100 == 2).map(|w| w.i).collect();
    let failed = writes.len() - acked.len();

    // Every acknowledged write at every zone, every zone's dataplanes
    // (one before, one after the restarts) at every global.
    for (i, z) in zones.iter().enumerate() {
        let dp = json!({"type": "Dataplane", "mesh": "default", "name": "after",
            "networking": {"address": "10.0.0.2", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}});
        assert_eq!(z.put_json("/meshes/default/dataplanes/after", &dp).0, 201, "zone-{i}");
    }
    for (i, z) in zones.iter().enumerate() {
        wait_until(
            "every acknowledged write at the zone",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let (_, list) = z.get("/meshes/default/meshtimeouts?size=1000");
                let have: std::collections::BTreeSet<String> = names(&list).into_iter().collect();
                let missing = acked.iter().filter(|n| !have.contains(&format!("r-{n}"))).count();
                (missing == 0)
                    .then_some(())
                    .ok_or(format!("zone-{i}: {missing} missing"))
            },
        );
    }
    for g in &globals {
        wait_until(
            "every zone's dataplanes at the global",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let (_, list) = g.get("/meshes/default/dataplanes?size=1000");
                let have = names(&list);
                let want = 2 * zones_n;
                (have.len() == want)
                    .then_some(())
                    .ok_or(format!("{} of {want}: {have:?}", have.len()))
            },
        );
    }
    let periods: Vec<Vec<Duration>> = zones.iter().map(|z| offline_periods(&z.log_text())).collect();
    let longest = periods.iter().flatten().max().copied().unwrap_or_default();
    let reconnects: usize = periods.iter().map(Vec::len).sum();
    eprintln!(
        "RELIABILITY rolling-restart: 3 globals restarted one by one (SIGTERM, start, every zone back) under {zones_n} zones \
         in {restarts_took:?}; {} writes, {} acknowledged, {failed} refused or cut (at a stopping global); \
         {reconnects} zone reconnects, the longest time without a session {longest:?}; 0 lost",
        writes.len(),
        acked.len()
    );
    assert!(longest < Duration::from_secs(10), "a zone was offline for {longest:?}");
}
