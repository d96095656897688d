//! KDS end to end: real `meridian-global` and `meridian-zone` processes
//! joined with `meridianctl generate zone-join`, compared through their HTTP
//! APIs, and crashed with `kill -9` (and etcd restarted under them).
//! Build the binaries first: `cargo build --workspace --bins`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use meridian_e2e::*;
use serde_json::{json, Value};

/// How long a convergence may take (reconnect backoff included).
const CONVERGE: Duration = Duration::from_secs(30);
/// Polling interval for checks that cost several API calls.
const POLL: Duration = Duration::from_millis(100);

const POLICY_PLURALS: [&str; 14] = [
    "meshtimeouts",
    "meshretries",
    "meshcircuitbreakers",
    "meshhealthchecks",
    "meshtrafficpermissions",
    "meshhttproutes",
    "meshtcproutes",
    "meshloadbalancingstrategies",
    "meshaccesslogs",
    "meshfaultinjections",
    "meshratelimits",
    "meshtraces",
    "meshmetrics",
    "meshproxypatches",
];

/// GET that turns connection errors and non-200 answers into a message.
fn get(p: &Proc, path: &str) -> Result<Value, String> {
    match http("GET", &format!("{}{path}", p.api), None, None) {
        Ok((200, v)) => Ok(v),
        Ok((s, v)) => Err(format!("GET {path}: {s} {v}")),
        Err(e) => Err(format!("GET {path}: {e}")),
    }
}

/// An item without its times (a synced copy keeps the content, and the
/// times of an unchanged resource may differ).
fn content(mut item: Value) -> Value {
    if let Some(o) = item.as_object_mut() {
        o.remove("creationTime");
        o.remove("modificationTime");
    }
    item
}

/// Meshes and policies as "<plural> <mesh>/<name>" → item. On a zone, each
/// must carry `kuma.io/origin: global`, which is then removed so the result
/// compares with the global's.
fn global_owned(p: &Proc, on_zone: bool) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    let meshes = get(p, "/meshes")?;
    let mut items: Vec<(String, Value)> = Vec::new();
    for m in meshes["items"].as_array().cloned().unwrap_or_default() {
        let name = m["name"].as_str().unwrap_or_default().to_string();
        items.push((format!("meshes {name}"), m));
        for plural in POLICY_PLURALS {
            let list = get(p, &format!("/meshes/{name}/{plural}?size=1000"))?;
            for i in list["items"].as_array().cloned().unwrap_or_default() {
                items.push((format!("{plural} {name}/{}", i["name"].as_str().unwrap_or_default()), i));
            }
        }
    }
    for (key, mut item) in items {
        if on_zone {
            let origin = item["labels"].as_object_mut().and_then(|l| l.remove("kuma.io/origin"));
            if origin != Some(json!("global")) {
                return Err(format!("{key} at {} has origin {origin:?}", p.api));
            }
            if item["labels"].as_object().is_some_and(|l| l.is_empty()) {
                item.as_object_mut().unwrap().remove("labels");
            }
        }
        out.insert(key, content(item));
    }
    Ok(out)
}

fn diff(want: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>) -> String {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing {k}")),
            Some(g) if g != v => out.push(format!("differs {k}: want {v} got {g}")),
            Some(_) => {}
        }
    }
    out.extend(
        got.keys()
            .filter(|k| !want.contains_key(*k))
            .map(|k| format!("extra {k}")),
    );
    out.join("; ")
}

/// Waits until every zone holds exactly the global's meshes and policies.
fn converged(global: &Proc, zones: &[(&str, &Proc)], what: &str) -> BTreeMap<String, Value> {
    wait_until(what, CONVERGE, POLL, || {
        let want = global_owned(global, false)?;
        let mut problems = Vec::new();
        for (name, z) in zones {
            let got = global_owned(z, true)?;
            let d = diff(&want, &got);
            if !d.is_empty() {
                problems.push(format!("{name}: {d}"));
            }
        }
        if problems.is_empty() {
            Ok(want)
        } else {
            Err(problems.join("\n"))
        }
    })
}

/// Whether `zone` is online according to `/zones+insights`, or `None` when
/// the global does not know it.
fn online(global: &Proc, zone: &str) -> Result<Option<bool>, String> {
    let list = get(global, "/zones+insights")?;
    Ok(list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == zone))
        .map(|i| i["online"] == true))
}

fn wait_online(global: &Proc, zone: &str, want: bool, timeout: Duration) -> Duration {
    let t = Instant::now();
    wait_until(&format!("{zone} online={want}"), timeout, POLL, || {
        let seen = online(global, zone)?;
        if seen == Some(want) {
            Ok(())
        } else {
            Err(format!(
                "online={seen:?}: {}",
                get(global, &format!("/zones+insights/{zone}"))?
            ))
        }
    });
    t.elapsed()
}

/// The dataplanes of `mesh` at `p` as name → item (without times).
fn dataplanes(p: &Proc, mesh: &str) -> Result<BTreeMap<String, Value>, String> {
    let list = get(p, &format!("/meshes/{mesh}/dataplanes?size=1000"))?;
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i["name"].as_str().unwrap_or_default().to_string(), content(i)))
        .collect())
}

fn wait_dataplanes(p: &Proc, mesh: &str, want: &[&str], what: &str) -> BTreeMap<String, Value> {
    wait_until(what, CONVERGE, POLL, || {
        let got = dataplanes(p, mesh)?;
        if got.keys().map(String::as_str).eq(want.iter().copied()) {
            Ok(got)
        } else {
            Err(format!("{:?}", got.keys().collect::<Vec<_>>()))
        }
    })
}

fn dataplane(name: &str, service: &str, port: u16) -> Value {
    json!({
        "type": "Dataplane", "name": name, "mesh": "default",
        "networking": {"address": "10.0.0.7", "inbound": [
            {"port": port, "tags": {"kuma.io/service": service}}]}
    })
}

fn put_dataplane(zone: &Proc, name: &str, service: &str, port: u16) {
    let (status, body) = zone.put_json(
        &format!("/meshes/default/dataplanes/{name}"),
        &dataplane(name, service, port),
    );
    assert!(status == 201 || status == 200, "PUT dataplane {name}: {status} {body}");
}

fn ctl_ok(p: &Proc, args: &[&str], stdin: Option<&str>) {
    let out = p.ctl(args, stdin);
    assert!(
        out.status.success(),
        "meridianctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const PERMISSION: &str = "
type: MeshTrafficPermission
name: allow-web
mesh: default
labels:
  team: web
spec:
  targetRef:
    kind: MeshService
    name: web
  from:
    - targetRef:
        kind: Mesh
      default:
        action: Allow
";

fn embedded(data_dir: &Path) -> Vec<String> {
    vec![
        "--store".into(),
        "embedded".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn two_zones_join_sync_and_recover_from_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (api_port, kds_port) = (free_port(), free_port());
    let global_data = d.join("global");
    let mut global = start_global_on(d, &global_data, api_port, kds_port, &["--kds-keepalive", "2s"]);
    let join_dir = d.join("join");
    let join1 = zone_join(&global, "zone-1", &join_dir);
    let join2 = zone_join(&global, "zone-2", &join_dir);
    let (z1_data, z2_data) = (d.join("zone-1"), d.join("zone-2"));
    let mut z1_args = embedded(&z1_data);
    z1_args.extend(["--ingress-address".into(), "10.1.0.1:10001".into()]);
    let z1 = start_zone(d, &join1, None, &strs(&z1_args));
    let z2_port = free_port();
    let mut z2 = start_zone(d, &join2, Some(z2_port), &strs(&embedded(&z2_data)));
    for zone in ["zone-1", "zone-2"] {
        wait_online(&global, zone, true, CONVERGE);
    }

    // Initial sync: the default mesh and its four policies.
    let state = converged(&global, &[("zone-1", &z1), ("zone-2", &z2)], "the initial sync");
    assert_eq!(state.len(), 5, "{:?}", state.keys());

    // A policy applied at the global with meridianctl reaches both zones.
    ctl_ok(&global, &["apply", "-f", "-"], Some(PERMISSION));
    let state = converged(&global, &[("zone-1", &z1), ("zone-2", &z2)], "the applied policy");
    assert!(state.contains_key("meshtrafficpermissions default/allow-web"));
    // What the global owns is read-only in a federated zone.
    let (status, body) = z1.put_raw(
        "/meshes/default/meshtrafficpermissions/allow-web",
        PERMISSION,
        "application/yaml",
    );
    assert_eq!(status, 405, "{body}");
    let (status, body) = z1.put_json("/meshes/other", &json!({"type": "Mesh", "name": "other"}));
    assert_eq!(status, 405, "{body}");

    // A dataplane registered at zone-1 shows at the global under <zone>.<name>.
    put_dataplane(&z1, "web-1", "web", 8080);
    let at_global = wait_dataplanes(
        &global,
        "default",
        &["zone-1.web-1"],
        "zone-1's dataplane at the global",
    );
    let labels = &at_global["zone-1.web-1"]["labels"];
    assert_eq!(
        labels,
        &json!({"kuma.io/display-name": "web-1", "kuma.io/origin": "zone", "kuma.io/zone": "zone-1"})
    );
    // zone-1's ingress reaches zone-2 with the service it offers.
    wait_until("zone-1's ingress in zone-2", CONVERGE, POLL, || {
        let i = get(&z2, "/zoneingresses/zone-1.ingress")?;
        (i["availableServices"][0]["tags"]["kuma.io/service"] == "web")
            .then_some(())
            .ok_or_else(|| format!("{i}"))
    });

    // kill -9 of a zone: offline at the global quickly.
    z2.kill9();
    let took = wait_online(&global, "zone-2", false, Duration::from_secs(30));
    eprintln!("zone-2 offline after {took:?}");
    assert_eq!(online(&global, "zone-1").unwrap(), Some(true));

    // While zone-2 is down the global deletes and changes things.
    ctl_ok(
        &global,
        &["delete", "meshtrafficpermissions", "allow-web", "-m", "default"],
        None,
    );
    ctl_ok(
        &global,
        &["delete", "meshretries", "mesh-retry-all-default", "-m", "default"],
        None,
    );
    ctl_ok(
        &global,
        &["apply", "-f", "-"],
        Some("type: Mesh\nname: second\n---\ntype: Mesh\nname: default\nlabels:\n  changed: \"yes\"\n"),
    );
    wait_until("mesh second's defaults", CONVERGE, POLL, || {
        let n = global_owned(&global, false)?
            .keys()
            .filter(|k| k.contains(" second/"))
            .count();
        (n == 4).then_some(()).ok_or_else(|| format!("{n}"))
    });
    let z2 = start_zone(d, &join2, Some(z2_port), &strs(&embedded(&z2_data)));
    let state = converged(&global, &[("zone-1", &z1), ("zone-2", &z2)], "zone-2 after its restart");
    assert!(!state.contains_key("meshtrafficpermissions default/allow-web"));
    assert!(!state.contains_key("meshretries default/mesh-retry-all-default"));
    assert_eq!(state["meshes default"]["labels"]["changed"], "yes");
    wait_online(&global, "zone-2", true, CONVERGE);

    // A zone that hangs without closing its connection (SIGSTOP, like a
    // partition) is noticed by the HTTP/2 keepalive (2s here), and comes
    // back when it resumes.
    let mut z1 = z1;
    z1.pause();
    let took = wait_online(&global, "zone-1", false, Duration::from_secs(30));
    eprintln!("a hung zone-1 offline after {took:?}");
    z1.resume();
    wait_online(&global, "zone-1", true, CONVERGE);

    // kill -9 of the global; while it is down zone-1 keeps serving what it
    // has and changes its inventory.
    let before = global_owned(&global, false).unwrap();
    global.kill9();
    assert_eq!(
        diff(&before, &global_owned(&z1, true).unwrap()),
        "",
        "zone-1 serves its replica without the global"
    );
    put_dataplane(&z1, "web-2", "web", 8081);
    let (status, body) = z1.delete("/meshes/default/dataplanes/web-1");
    assert_eq!(status, 200, "{body}");
    let global = start_global_on(d, &global_data, api_port, kds_port, &["--kds-keepalive", "2s"]);
    let after = converged(&global, &[("zone-1", &z1), ("zone-2", &z2)], "the restarted global");
    assert_eq!(diff(&before, &after), "", "the global's own state survives a kill -9");
    wait_dataplanes(
        &global,
        "default",
        &["zone-1.web-2"],
        "zone-1's inventory after the restart",
    );
    for zone in ["zone-1", "zone-2"] {
        wait_online(&global, zone, true, CONVERGE);
    }
    let zones = get(&global, "/zones").unwrap();
    assert_eq!(names(&zones), ["zone-1", "zone-2"], "{zones}");
}

#[test]
fn wrong_tokens_are_refused_and_the_zone_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let global = start_global_embedded(d, &d.join("global"), &[]);
    let join2 = zone_join(&global, "zone-2", &d.join("join"));
    // zone-2's token, used by zone-1.
    let mut stolen = join2.clone();
    let zone_flag = stolen.iter().position(|a| a == "--zone").unwrap();
    stolen[zone_flag + 1] = "zone-1".into();
    let z1 = start_zone(d, &stolen, None, &["--store", "memory"]);
    // A garbage token, as zone-3.
    let garbage_file = d.join("garbage.token");
    std::fs::write(&garbage_file, "not.a.token\n").unwrap();
    let mut garbage = join2.clone();
    garbage[zone_flag + 1] = "zone-3".into();
    let token_flag = garbage.iter().position(|a| a == "--token-file").unwrap();
    garbage[token_flag + 1] = garbage_file.display().to_string();
    let z3 = start_zone(d, &garbage, None, &["--store", "memory"]);

    for (zone, p, reason) in [("zone-1", &z1, "issued for zone \"zone-2\""), ("zone-3", &z3, "token")] {
        let log = wait_until(&format!("{zone}'s log to say why"), CONVERGE, POLL, || {
            let log = p.log_text();
            let line = log
                .lines()
                .find(|l| l.contains("KDS session failed"))
                .map(str::to_string);
            match line {
                Some(l) if l.to_lowercase().contains("unauthenticated") && l.contains(reason) => Ok(l),
                _ => Err(log),
            }
        });
        eprintln!("{zone}: {log}");
        // The global says it too, once per refusal, naming the zone.
        let refusals = global.log_text();
        assert!(
            refusals.lines().any(|l| l.contains("zone refused")
                && l.contains(&format!("zone={zone}"))
                && l.contains("Unauthenticated")),
            "{refusals}"
        );
        // It never synced: no mesh, and the global has no such zone.
        assert_eq!(names(&get(p, "/meshes").unwrap()), Vec::<String>::new(), "{zone}");
        assert_eq!(online(&global, zone).unwrap(), None, "{zone}");
    }
}

/// The arguments of a zone-join line with `--global-address` set to `addresses`.
fn with_addresses(join: Vec<String>, addresses: &str) -> Vec<String> {
    let mut join = join;
    let i = join.iter().position(|a| a == "--global-address").unwrap();
    join[i + 1] = addresses.to_string();
    join
}

fn kds_address(global: &Proc) -> String {
    get(global, "/kds-info").unwrap()["kdsAddress"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn zones_converge_after_etcd_restarts_and_follow_a_failover() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut etcd = rt
        .block_on(EtcdServer::start())
        .expect("etcd must be installed (apt-get install etcd-server)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two global replicas on one etcd; zones know both addresses.
    let prefix = unique_prefix("e2e-kds");
    let keepalive = ["--kds-keepalive", "2s"];
    let mut a = start_global_etcd_with(d, &etcd.endpoint(), &prefix, &keepalive);
    let b = start_global_etcd_with(d, &etcd.endpoint(), &prefix, &keepalive);
    let addresses = format!("{},{}", kds_address(&a), kds_address(&b));
    let join = |zone: &str| with_addresses(zone_join(&a, zone, &d.join("join")), &addresses);
    let z1 = start_zone(d, &join("zone-1"), None, &["--store", "memory"]);
    let z2 = start_zone(d, &join("zone-2"), None, &["--store", "memory"]);
    let zones = [("zone-1", &z1), ("zone-2", &z2)];
    converged(&a, &zones, "the initial sync");
    put_dataplane(&z1, "before", "web", 8080);
    wait_dataplanes(
        &b,
        "default",
        &["zone-1.before"],
        "zone-1's dataplane, read at the other replica",
    );

    // etcd goes down: the zones keep their replicas, the globals cannot write.
    etcd.stop();
    put_dataplane(&z1, "during", "web", 8081);
    put_dataplane(&z2, "during", "db", 5432);
    let out = a.ctl(&["apply", "-f", "-"], Some(PERMISSION));
    assert!(!out.status.success(), "a write without etcd must fail");
    assert_eq!(names(&get(&z1, "/meshes").unwrap()), ["default"]);
    rt.block_on(etcd.restart())
        .unwrap_or_else(|e| panic!("etcd restart: {e}\n{}", etcd.log_tail()));

    // Afterwards everything converges, both ways.
    wait_until("a write through the global after etcd is back", CONVERGE, POLL, || {
        let out = a.ctl(&["apply", "-f", "-"], Some(PERMISSION));
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    let state = converged(&a, &zones, "the zones after the etcd restart");
    assert!(state.contains_key("meshtrafficpermissions default/allow-web"));
    let all = ["zone-1.before", "zone-1.during", "zone-2.during"];
    wait_dataplanes(&a, "default", &all, "the zones' dataplanes after the etcd restart");
    for zone in ["zone-1", "zone-2"] {
        wait_online(&a, zone, true, CONVERGE);
    }

    // The replica the zones use dies: they move to the other one, and the
    // dead replica's subscriptions are swept as disconnected.
    let a_instance = {
        let i = get(&a, "/zones+insights/zone-1").unwrap();
        i["zoneInsight"]["subscriptions"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s.get("disconnectTime").is_none()))
            .map(|s| s["globalInstanceId"].clone())
            .unwrap_or_else(|| panic!("{i}"))
    };
    a.kill9();
    ctl_ok(
        &b,
        &["delete", "meshtrafficpermissions", "allow-web", "-m", "default"],
        None,
    );
    let state = converged(&b, &zones, "the zones after a failover");
    assert!(!state.contains_key("meshtrafficpermissions default/allow-web"));
    put_dataplane(&z2, "after", "db", 5433);
    wait_dataplanes(
        &b,
        "default",
        &["zone-1.before", "zone-1.during", "zone-2.after", "zone-2.during"],
        "the zones' dataplanes through the other replica",
    );
    for zone in ["zone-1", "zone-2"] {
        wait_until(
            &format!("{zone} held by the surviving replica only"),
            CONVERGE,
            POLL,
            || {
                let i = get(&b, &format!("/zones+insights/{zone}"))?;
                let subs = i["zoneInsight"]["subscriptions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let open: Vec<&Value> = subs.iter().filter(|s| s.get("disconnectTime").is_none()).collect();
                (i["online"] == true && !open.is_empty() && open.iter().all(|s| s["globalInstanceId"] != a_instance))
                    .then_some(())
                    .ok_or_else(|| format!("{i}"))
            },
        );
    }
}

/// Version skew: a zone speaking a newer KDS protocol than the global is
/// refused with both versions named (and the zone keeps running, retrying);
/// a zone of the global's protocol is served.
#[test]
fn a_newer_zone_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let g = start_global_embedded(dir.path(), &dir.path().join("g"), &[]);
    let join = zone_join(&g, "zone-new", dir.path());
    let zone = start_zone(
        dir.path(),
        &join,
        None,
        &["--store", "memory", "--kds-protocol-version", "2"],
    );
    let why = wait_until(
        "the zone to log the refusal",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let log = zone.log_text();
            log.lines()
                .find(|l| l.contains("FAILED_PRECONDITION"))
                .map(str::to_string)
                .ok_or_else(|| "not yet".to_string())
        },
    );
    let ours = env!("CARGO_PKG_VERSION");
    assert!(
        why.contains("protocol 2") && why.contains("this global's 1") && why.contains(&format!("Meridian {ours}")),
        "{why}"
    );
    assert!(g.log_text().contains("version skew"), "the global logs the refusal");
    let (_, overview) = g.get("/zones+insights/zone-new");
    assert_ne!(overview["online"], true, "{overview}");
    assert_eq!(zone.get("/meshes/default").0, 404, "nothing was synced");

    // The same zone at the global's protocol is served.
    let join = zone_join(&g, "zone-same", dir.path());
    let same = start_zone(
        dir.path(),
        &join,
        None,
        &["--store", "memory", "--kds-protocol-version", "1"],
    );
    wait_until(
        "the default mesh at the zone",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let (s, _) = same.get("/meshes/default");
            (s == 200).then_some(()).ok_or(format!("{s}"))
        },
    );
}
