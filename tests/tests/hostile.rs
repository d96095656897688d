//! Hostile input against real processes: deeply nested bodies, slow and
//! idle connections, durations no proxy can represent, and a resource over
//! etcd's request limit pushed by a zone. Each was found by probing; each
//! must leave the process serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use meridian_e2e::*;
use meridian_store::testing::{unique_prefix, EtcdServer};
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

fn host_port(api: &str) -> String {
    api.trim_start_matches("http://").to_string()
}

#[test]
fn deep_nesting_is_refused_at_once_and_the_api_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global_embedded(dir.path(), &dir.path().join("g"), &[]);
    let hostile = "[".repeat(500_000);
    let api = global.api.clone();
    // Two clients sending half a megabyte of brackets, five times each,
    // while /ready is probed.
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (api, body) = (api.clone(), hostile.clone());
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| {
                        let started = Instant::now();
                        let (status, reply) = http(
                            "PUT",
                            &format!("{api}/meshes/default/meshtimeouts/deep"),
                            Some(body.clone()),
                            Some("application/yaml"),
                        )
                        .unwrap();
                        (status, reply, started.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ready_worst = Duration::ZERO;
    while senders.iter().any(|s| !s.is_finished()) {
        let started = Instant::now();
        let (status, _) = http_as(None, "GET", &format!("{api}/ready"), None, None).unwrap();
        assert_eq!(status, 200);
        ready_worst = ready_worst.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut worst = Duration::ZERO;
    for s in senders {
        for (status, reply, took) in s.join().unwrap() {
            assert_eq!(status, 400, "{reply}");
            assert!(reply.to_string().contains("nesting deeper than 64"), "{reply}");
            worst = worst.max(took);
        }
    }
    eprintln!(
        "RELIABILITY deep-nesting: 10 bodies of 500,000 '[' refused, slowest {worst:?}; /ready slowest {ready_worst:?}"
    );
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    assert!(ready_worst < Duration::from_secs(1), "{ready_worst:?}");
    assert_eq!(global.get("/meshes/default/meshtimeouts/deep").0, 404, "nothing stored");
}

/// Whether the server closed `s` (a read returns end of file or a reset)
/// within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or similar before the close is fine; keep reading.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_and_idle_connections_are_capped_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global_on(
        dir.path(),
        &dir.path().join("g2"),
        free_port(),
        free_port(),
        &["--api-max-connections", "20", "--api-header-timeout", "1s"],
    );
    let addr = host_port(&global.api);
    // Thirty clients that send half a request head and then nothing; each
    // records when the server closed its connection.
    let opened = Instant::now();
    let watchers: Vec<_> = (0..30)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n").unwrap();
            std::thread::spawn(move || closed_within(&mut s, Duration::from_secs(10)).then(|| opened.elapsed()))
        })
        .collect();
    let closed: Vec<Option<Duration>> = watchers.into_iter().map(|w| w.join().unwrap()).collect();
    // Those over the cap are closed at once; the rest when their time for
    // the head (1 s) is up.
    let at_once = closed
        .iter()
        .flatten()
        .filter(|t| **t < Duration::from_millis(500))
        .count();
    let by_deadline = closed
        .iter()
        .flatten()
        .filter(|t| **t >= Duration::from_millis(900) && **t < Duration::from_secs(3))
        .count();
    let last = closed.iter().flatten().max().copied().unwrap_or_default();
    eprintln!(
        "RELIABILITY slowloris: 30 half-sent heads at a cap of 20 and a 1 s head deadline: \
         {at_once} closed at once, {by_deadline} by the deadline, the last after {last:?}"
    );
    assert!(
        closed.iter().all(Option::is_some),
        "every slow connection is closed: {closed:?}"
    );
    assert_eq!((at_once, by_deadline), (10, 20), "{closed:?}");
    // And the API answers again.
    wait_until("the API answers after the slow clients", CONVERGE, POLL, || {
        let (status, _) = http_as(None, "GET", &format!("{}/ready", global.api), None, None)?;
        (status == 200).then_some(()).ok_or(format!("{status}"))
    });
    assert!(
        global.log_text().contains("api-max-connections"),
        "the refusal is logged"
    );
}

/// Holds `cap` silent connections to `addr`, then checks that five more are
/// closed at once while the held ones stay open.
fn check_connection_cap(addr: &str, cap: usize, what: &str) {
    let mut held: Vec<TcpStream> = (0..cap).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Each held connection must be accepted (it took a permit) before the
    // extra ones arrive: the server reads nothing from it and keeps it.
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(200)),
            "{what}: a held connection was closed"
        );
    }
    let started = Instant::now();
    for i in 0..5 {
        let mut extra = TcpStream::connect(addr).unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(5)),
            "{what}: connection {} over the cap of {cap} was kept",
            i + 1
        );
    }
    eprintln!(
        "RELIABILITY {what} connection cap: {cap} held, 5 more closed in {:?}",
        started.elapsed()
    );
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(50)),
            "{what}: a held connection was closed"
        );
    }
}

/// The gRPC servers (the global's KDS, a zone's xDS) hold at most their
/// cap of connections: more are closed at once, and it is logged.
#[test]
fn grpc_servers_hold_at_most_their_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let kds = free_port();
    let global = start_global_on(
        dir.path(),
        &dir.path().join("g"),
        free_port(),
        kds,
        &["--kds-max-connections", "3"],
    );
    check_connection_cap(&format!("127.0.0.1:{kds}"), 3, "KDS");
    wait_until("the global to log the refusals", CONVERGE, POLL, || {
        let log = global.log_text();
        log.contains("server holds its maximum of connections")
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });

    let (api, xds) = (free_port(), free_port());
    let args: Vec<String> = [
        "run",
        "--zone",
        "zone-1",
        "--api-addr",
        &format!("127.0.0.1:{api}"),
        "--xds-addr",
        &format!("127.0.0.1:{xds}"),
        "--store",
        "memory",
        "--data-dir",
        dir.path().join("z").to_str().unwrap(),
        "--xds-max-connections",
        "2",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    let mut zone = Proc::spawn("meridian-zone", &args, &[], dir.path(), api);
    zone.wait_ready(Duration::from_secs(30));
    check_connection_cap(&format!("127.0.0.1:{xds}"), 2, "xDS");
    wait_until("the zone to log the refusals", CONVERGE, POLL, || {
        zone.log_text()
            .contains("server holds its maximum of connections")
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
}

#[test]
fn durations_a_proxy_cannot_represent_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global_embedded(dir.path(), &dir.path().join("g"), &[]);
    for too_long in ["99999999999h", "18446744073709551616ns", "2562048h"] {
        let (status, body) = global.put_json(
            "/meshes/default/meshtimeouts/far",
            &json!({"type": "MeshTimeout", "mesh": "default", "name": "far",
                    "spec": {"targetRef": {"kind": "Mesh"},
                             "to": [{"targetRef": {"kind": "Mesh"},
                                     "default": {"http": {"requestTimeout": too_long}}}]}}),
        );
        assert_eq!(status, 400, "{too_long}: {body}");
        let text = body.to_string();
        assert!(
            text.contains("requestTimeout") && text.contains("out of range"),
            "{text}"
        );
    }
    assert_eq!(global.get("/meshes/default/meshtimeouts/far").0, 404);
}

fn big_dataplane(name: &str, inbounds: u16) -> Value {
    let inbound: Vec<Value> = (0..inbounds)
        .map(|i| json!({"port": 10000 + i, "tags": {"kuma.io/service": format!("svc-with-a-long-name-{i:05}")}}))
        .collect();
    json!({"type": "Dataplane", "mesh": "default", "name": name,
           "networking": {"address": "10.0.0.9", "inbound": inbound}})
}

#[test]
fn a_resource_over_etcds_request_limit_is_refused_and_the_zone_stream_goes_on() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // etcd refusing requests over 256 KiB (its default is 1.5 MiB).
    let etcd = rt
        .block_on(EtcdServer::start_with(&["--max-request-bytes=262144"]))
        .expect("etcd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_etcd_with(d, &etcd.endpoint(), &unique_prefix("big"), &[]);

    // At the API: 413 at once, not a 503 retried for ever.
    let big = big_dataplane("big", 4000);
    let size = big.to_string().len();
    assert!(size > 262_144 && size < 1024 * 1024, "{size}");
    let started = Instant::now();
    let policy_big = json!({"type": "MeshProxyPatch", "mesh": "default", "name": "big",
        "spec": {"targetRef": {"kind": "Mesh"}, "default": {"appendModifications": [
            {"cluster": {"operation": "Add", "value": format!("name: big\n# {}\n", "x".repeat(300_000))}}]}}});
    let (status, body) = global.put_json("/meshes/default/meshproxypatches/big", &policy_big);
    assert_eq!(status, 413, "{body}");
    assert!(body.to_string().contains("too large"), "{body}");
    eprintln!("a 300 KB policy over etcd's limit: 413 after {:?}", started.elapsed());

    // From a zone: the global refuses the big dataplane, records why, and
    // the next dataplane of the same stream arrives.
    let join = zone_join(&global, "zone-1", &d.join("join"));
    let zone = start_zone(d, &join, None, &["--store", "memory"]);
    wait_for("the default mesh at the zone", CONVERGE, || {
        (zone.get("/meshes/default").0 == 200).then_some(())
    });
    let (status, body) = zone.put_json("/meshes/default/dataplanes/big", &big);
    assert_eq!(status / 100, 2, "the zone stores it (under its own limit): {body}");
    let (status, body) = zone.put_json("/meshes/default/dataplanes/small", &big_dataplane("small", 1));
    assert_eq!(status / 100, 2, "{body}");
    let pushed = Instant::now();
    wait_until("the small dataplane at the global", CONVERGE, POLL, || {
        let have = names(&global.get("/meshes/default/dataplanes").1);
        have.contains(&"zone-1.small".to_string())
            .then_some(())
            .ok_or(format!("{have:?}"))
    });
    let small_after = pushed.elapsed();
    let refused = wait_until("the refusal in the zone insight", CONVERGE, POLL, || {
        let (_, insight) = global.get("/zones+insights/zone-1");
        let subs = insight["zoneInsight"]["subscriptions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        subs.iter()
            .find_map(|s| s.get("lastRefused").filter(|r| !r.is_null()).cloned())
            .ok_or(insight.to_string())
    });
    eprintln!(
        "RELIABILITY oversized-from-zone: a {size}-byte dataplane over etcd's 256 KiB limit refused ({}); \
         the next dataplane of the stream at the global after {small_after:?}",
        refused["message"]
    );
    assert!(
        refused["message"].as_str().unwrap_or_default().contains("too large"),
        "{refused}"
    );
    assert!(!names(&global.get("/meshes/default/dataplanes").1).contains(&"zone-1.big".to_string()));
}

/// A dataplane offering `count` services, `first` to `first + count - 1`.
fn offering(name: &str, first: usize, count: usize) -> Value {
    let inbound: Vec<Value> = (first..first + count)
        .map(|i| json!({"port": 10000 + (i % 50000), "tags": {"kuma.io/service": format!("svc-{i:05}")}}))
        .collect();
    json!({"type": "Dataplane", "mesh": "default", "name": name,
           "networking": {"address": "10.0.0.3", "inbound": inbound}})
}

fn advertised(p: &Proc, ingress: &str) -> Result<(usize, usize), String> {
    let (status, body) = http("GET", &format!("{}/zoneingresses/{ingress}", p.api), None, None)?;
    if status != 200 {
        return Err(format!("{status}"));
    }
    let n = body["availableServices"].as_array().map(Vec::len).unwrap_or(0);
    Ok((n, body.to_string().len()))
}

#[test]
fn an_ingress_of_5000_services_fits_every_limit_and_one_too_large_is_refused_without_stalling() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(EtcdServer::start()).expect("etcd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_etcd_with(d, &etcd.endpoint(), &unique_prefix("ingress"), &[]);
    let join1 = zone_join(&global, "zone-1", &d.join("j1"));
    let zone1 = start_zone(
        d,
        &join1,
        None,
        &["--store", "memory", "--ingress-address", "127.0.0.1:10001"],
    );
    let join2 = zone_join(&global, "zone-2", &d.join("j2"));
    let zone2 = start_zone(d, &join2, None, &["--store", "memory"]);
    wait_for("the default mesh at zone-1", CONVERGE, || {
        (zone1.get("/meshes/default").0 == 200).then_some(())
    });

    let started = Instant::now();
    let (s, b) = zone1.put_json("/meshes/default/dataplanes/many", &offering("many", 0, 5000));
    assert_eq!(s, 201, "{b}");
    let bytes = wait_until("5,000 services advertised at zone-2", CONVERGE, POLL, || {
        let (n, bytes) = advertised(&zone2, "zone-1.ingress")?;
        (n == 5000).then_some(bytes).ok_or(format!("{n}"))
    });
    let reached = started.elapsed();
    assert!(bytes < 1024 * 1024, "{bytes}");

    // Ten thousand more: over the resource limit. Refused at zone-1 with a
    // reason; the last list that fitted stays; the stream goes on.
    // In one dataplane, so that no refresh advertises a list in between.
    let (s, b) = zone1.put_json("/meshes/default/dataplanes/more", &offering("more", 5000, 10000));
    assert_eq!(s, 201, "{b}");
    let warning = wait_until("zone-1 says the services do not fit", CONVERGE, POLL, || {
        zone1
            .log_text()
            .lines()
            .find(|l| l.contains("do not fit in one ZoneIngress"))
            .map(str::to_string)
            .ok_or("not yet".to_string())
    });
    let (s, b) = zone1.put_json("/meshes/default/dataplanes/tail", &offering("tail", 20000, 1));
    assert_eq!(s, 201, "{b}");
    wait_until("a later dataplane at the global", CONVERGE, POLL, || {
        let have = names(&global.get("/meshes/default/dataplanes").1);
        have.contains(&"zone-1.tail".to_string())
            .then_some(())
            .ok_or(format!("{have:?}"))
    });
    assert_eq!(
        advertised(&zone2, "zone-1.ingress").unwrap().0,
        5000,
        "the last list that fitted"
    );
    eprintln!(
        "RELIABILITY ingress-size: 5,000 services advertised in a {bytes}-byte ZoneIngress (limit 1 MiB; etcd 1.5 MiB; \
         KDS message 3 MiB), at the other zone {reached:?} after the dataplane was registered; 15,000 refused at the zone: {}",
        warning.split("WARN").nth(1).unwrap_or(&warning).trim()
    );
}
