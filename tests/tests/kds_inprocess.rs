//! KDS in one process: a global and several zones on memory (or embedded)
//! stores and port 0, talking real gRPC over TLS with zone tokens. Each test
//! waits for the stores to converge and compares them, failing with the
//! difference it saw last.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use meridian_core::decode::decode_value;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_global::config::GlobalConfig;
use meridian_global::RunningGlobal;
use meridian_server::backend::StoreKind;
use meridian_server::kds::wire::wire_name;
use meridian_server::kds::{global_to_zone_types, labels};
use meridian_server::manager::Manager;
use meridian_store::Filter;
use meridian_zone::{kds::ClientSettings, RunningZone, ZoneConfig};
use serde_json::{json, Value};

/// How long any convergence may take.
const DEADLINE: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns `Ok`, or panics after `timeout` with what
/// it saw last.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Starting things

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn global_config(store: StoreKind, data_dir: &Path) -> GlobalConfig {
    GlobalConfig {
        api_addr: loopback(),
        kds_addr: loopback(),
        store,
        data_dir: data_dir.to_path_buf(),
        kds_keepalive: Duration::from_secs(1),
        ..GlobalConfig::default()
    }
}

/// Starts a global and waits until its `default` mesh and that mesh's four
/// default policies exist (the defaults are created in the background).
async fn start_global(config: GlobalConfig, instance: &str) -> RunningGlobal {
    let g = meridian_global::start(config, instance.to_string()).await.unwrap();
    g.manager.cache().wait_ready(Duration::from_secs(10)).await.unwrap();
    mesh_defaults(&g.manager, "default").await;
    g
}

/// How zone `zone` joins `g`: a fresh token, the CA, the KDS address.
async fn join(g: &RunningGlobal, zone: &str) -> ClientSettings {
    ClientSettings {
        zone: zone.to_string(),
        addresses: vec![format!("grpcs://127.0.0.1:{}", g.kds_addr.port())],
        token: g.services.tokens.issue(zone, Duration::from_secs(3600)).await.unwrap(),
        ca_pem: g.services.ca_pem.clone(),
        keepalive: Duration::from_secs(1),
        protocol: meridian_server::kds::PROTOCOL_VERSION,
    }
}

fn zone_config(join: ClientSettings, store: StoreKind, data_dir: &Path) -> ZoneConfig {
    ZoneConfig {
        zone: join.zone.clone(),
        api_addr: loopback(),
        xds_addr: loopback(),
        xds_tls: Default::default(),
        dp_auth: meridian_zone::auth::DpAuth::Token,
        dataplane_cleanup_age: std::time::Duration::from_secs(60),
        offline_dataplane_cleanup_age: None,
        xds_max_connections: meridian_zone::config::DEFAULT_XDS_MAX_CONNECTIONS,
        store,
        data_dir: data_dir.to_path_buf(),
        federation: Some(join),
        ingress_address: None,
        create_default_mesh: false,
        access: meridian_server::access::AccessConfig::with_token_file(data_dir.join("admin-token")),
        api_tls: None,
        api_limits: Default::default(),
    }
}

async fn start_zone(config: ZoneConfig) -> RunningZone {
    // A store just closed by a stopped instance may still be locked for a moment.
    let t = Instant::now();
    let z = loop {
        match meridian_zone::start(config.clone()).await {
            Ok(z) => break z,
            Err(e) if t.elapsed() < Duration::from_secs(5) && format!("{e:#}").contains("locked") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    z.manager.cache().wait_ready(Duration::from_secs(10)).await.unwrap();
    z
}

/// A global on a memory store and zones `zone-1`…`zone-n`, each with its own
/// memory store; `ingress(i)` gives zone i an ingress address.
struct Cluster {
    global: RunningGlobal,
    zones: Vec<(String, RunningZone)>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: usize, ingress: impl Fn(usize) -> Option<(String, u16)>) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let global = start_global(global_config(StoreKind::Memory, &dir.path().join("global")), "global-1").await;
        let mut zones = Vec::new();
        for i in 1..=n {
            let name = format!("zone-{i}");
            let mut cfg = zone_config(join(&global, &name).await, StoreKind::Memory, &dir.path().join(&name));
            cfg.ingress_address = ingress(i);
            zones.push((name, start_zone(cfg).await));
        }
        Cluster {
            global,
            zones,
            _dir: dir,
        }
    }

    fn managers(&self) -> Vec<(&str, &Manager)> {
        self.zones
            .iter()
            .map(|(n, z)| (n.as_str(), z.manager.as_ref()))
            .collect()
    }

    async fn converged(&self, what: &str) -> View {
        converged(&self.global.manager, &self.managers(), what).await
    }
}

// ---------------------------------------------------------------------------
// Comparing stores

/// What the global sends, as "<Type> <wire name>" → {labels, spec}.
type View = BTreeMap<String, Value>;

fn is_global_owned(kind: ResourceType) -> bool {
    kind.is_synced_to_zones()
}

/// The meshes and policies of a store. With `as_sent`, the labels carry
/// the origin the global adds when it sends them.
fn global_owned_view(m: &Manager, as_sent: bool) -> View {
    let mut view = View::new();
    for kind in global_to_zone_types().into_iter().filter(|k| is_global_owned(*k)) {
        for r in m.list(&Filter::kind(kind)) {
            let mut l = r.labels.clone();
            if as_sent {
                l.insert(labels::ORIGIN.into(), "global".into());
            }
            view.insert(
                format!("{kind} {}", wire_name(r.key.mesh.as_deref(), &r.key.name)),
                json!({"labels": l, "spec": r.spec}),
            );
        }
    }
    view
}

/// What differs between `want` and `got`, readably.
fn diff(want: &View, got: &View) -> String {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing {k}")),
            Some(g) if g != v => out.push(format!("differs {k}: want {v} got {g}")),
            Some(_) => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("extra {k}"));
    }
    out.join("; ")
}

/// Waits until every zone holds exactly the global's meshes and policies;
/// returns that view.
async fn converged(global: &Manager, zones: &[(&str, &Manager)], what: &str) -> View {
    eventually(what, DEADLINE, || {
        let want = global_owned_view(global, true);
        let mut problems = Vec::new();
        for (name, z) in zones {
            let d = diff(&want, &global_owned_view(z, false));
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
    .await
}

fn names_of(view: &View) -> Vec<&str> {
    view.keys().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------
// Writing

async fn apply(m: &Manager, doc: Value) {
    let doc = decode_value(doc.clone()).unwrap_or_else(|e| panic!("{doc}: {e}"));
    m.apply(doc).await.unwrap();
}

async fn delete(m: &Manager, kind: ResourceType, mesh: Option<&str>, name: &str) {
    m.delete(&ResourceKey::new(kind, mesh, name)).await.unwrap();
}

fn timeout_policy(name: &str, mesh: &str, idle: &str) -> Value {
    json!({
        "type": "MeshTimeout", "name": name, "mesh": mesh,
        "labels": {"team": "payments"},
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                 "default": {"idleTimeout": idle}}]}
    })
}

fn dataplane(name: &str, mesh: &str, service: &str, port: u16) -> Value {
    json!({
        "type": "Dataplane", "name": name, "mesh": mesh,
        "networking": {"address": "10.0.0.1", "inbound": [
            {"port": port, "tags": {"kuma.io/service": service, "version": "v1"}}]}
    })
}

/// The names of the dataplanes in `m`'s store (not its cache).
async fn stored_dataplanes(m: &Manager) -> Vec<String> {
    let listing = m.store().list(&Filter::kind(ResourceType::Dataplane)).await.unwrap();
    listing.items.into_iter().map(|r| r.key.name).collect()
}

/// Waits until the dataplanes in `m` are exactly `want` (synced writes are
/// acknowledged before the cache has them).
async fn wait_dataplane_names(m: &Manager, want: &[&str], what: &str) {
    eventually(what, DEADLINE, || {
        let got: Vec<String> = m
            .list(&Filter::kind(ResourceType::Dataplane))
            .into_iter()
            .map(|r| r.key.name)
            .collect();
        (got == want).then_some(()).ok_or_else(|| format!("{got:?}"))
    })
    .await;
}

/// Waits until the global has created the four default policies of `mesh`.
async fn mesh_defaults(g: &Manager, mesh: &str) {
    eventually(&format!("the defaults of mesh {mesh}"), DEADLINE, || {
        let n = ResourceType::policies()
            .flat_map(|k| g.list(&Filter::in_mesh(k, mesh)))
            .filter(|r| r.key.name.ends_with(&format!("-all-{mesh}")))
            .count();
        (n == 4).then_some(()).ok_or_else(|| format!("{n} defaults"))
    })
    .await;
}

/// The zone insight of `zone` at the global, as stored.
fn zone_insight(g: &Manager, zone: &str) -> Option<Value> {
    g.get(&ResourceKey::global(ResourceType::ZoneInsight, zone))
        .map(|r| r.spec)
}

fn subscriptions(g: &Manager, zone: &str) -> Vec<Value> {
    zone_insight(g, zone)
        .and_then(|s| s["subscriptions"].as_array().cloned())
        .unwrap_or_default()
}

fn online_subscriptions(g: &Manager, zone: &str) -> usize {
    subscriptions(g, zone)
        .iter()
        .filter(|s| s.get("disconnectTime").is_none())
        .count()
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshes_and_policies_reach_every_zone_and_follow_every_change() {
    let c = Cluster::start(3, |_| None).await;
    let g = &c.global.manager;

    // Initial sync: the admin role and binding, the default mesh and its
    // four default policies.
    let view = c.converged("the initial sync").await;
    assert_eq!(
        names_of(&view),
        [
            "AccessRole admin",
            "AccessRoleBinding admin",
            "Mesh default",
            "MeshCircuitBreaker default/mesh-circuit-breaker-all-default",
            "MeshRetry default/mesh-retry-all-default",
            "MeshTimeout default/mesh-gateways-timeout-all-default",
            "MeshTimeout default/mesh-timeout-all-default",
        ]
    );
    for (name, z) in c.managers() {
        let mesh = z.get(&ResourceKey::global(ResourceType::Mesh, "default")).unwrap();
        assert_eq!(
            mesh.labels.get(labels::ORIGIN).map(String::as_str),
            Some("global"),
            "{name}: {mesh:?}"
        );
    }

    // Create, update, delete a policy.
    apply(g, timeout_policy("payments", "default", "10s")).await;
    let view = c.converged("a created policy").await;
    assert!(view.contains_key("MeshTimeout default/payments"));
    apply(g, timeout_policy("payments", "default", "20s")).await;
    let view = c.converged("an updated policy").await;
    assert_eq!(
        view["MeshTimeout default/payments"]["spec"]["to"][0]["default"]["idleTimeout"],
        "20s"
    );
    delete(g, ResourceType::MeshTimeout, Some("default"), "payments").await;
    let view = c.converged("a deleted policy").await;
    assert!(!view.contains_key("MeshTimeout default/payments"));

    // A new mesh comes with its defaults; deleting it takes everything in it
    // away in every zone.
    apply(g, json!({"type": "Mesh", "name": "other", "labels": {"env": "test"}})).await;
    apply(
        g,
        json!({"type": "MeshRetry", "name": "retry-other", "mesh": "other",
               "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                        "default": {"tcp": {"maxConnectAttempt": 3}}}]}}),
    )
    .await;
    mesh_defaults(g, "other").await;
    let view = c.converged("a new mesh with its defaults").await;
    let in_other = view.keys().filter(|k| k.contains(" other/")).count();
    assert_eq!(in_other, 5, "4 defaults + 1: {:?}", names_of(&view));
    delete(g, ResourceType::Mesh, None, "other").await;
    let view = c.converged("a deleted mesh").await;
    assert!(view.keys().all(|k| !k.contains("other")), "{:?}", names_of(&view));
    for (name, z) in c.managers() {
        let left: Vec<_> = z
            .list(&Filter::all())
            .into_iter()
            .filter(|r| r.key.mesh.as_deref() == Some("other") || r.key.name == "other")
            .map(|r| r.key.to_string())
            .collect();
        assert!(left.is_empty(), "{name} still holds {left:?}");
    }

    // A mesh re-created under the same name gets fresh, identical defaults;
    // zones that saw the old ones must receive them again.
    apply(g, json!({"type": "Mesh", "name": "other"})).await;
    mesh_defaults(g, "other").await;
    let view = c.converged("a re-created mesh").await;
    assert_eq!(view.keys().filter(|k| k.contains(" other/")).count(), 4);

    // Each zone is online with one subscription and acknowledged everything.
    for (name, _) in c.managers() {
        eventually("the zone insight", DEADLINE, || {
            let subs = subscriptions(g, name);
            let s = subs.first().ok_or("no subscription")?;
            let total = &s["status"]["total"];
            let sent = total["responsesSent"].as_u64().unwrap_or(0);
            let acked = total["responsesAcknowledged"].as_u64().unwrap_or(0);
            (subs.len() == 1
                && s.get("disconnectTime").is_none()
                && sent > 0
                && sent == acked
                && total["responsesRejected"] == 0
                && s["globalInstanceId"] == "global-1")
                .then_some(())
                .ok_or_else(|| format!("{subs:?}"))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_send_their_dataplanes_and_ingresses() {
    let c = Cluster::start(3, |i| Some((format!("10.0.{i}.1"), 10000 + i as u16))).await;
    let g = &c.global.manager;
    c.converged("the initial sync").await;

    // Two dataplanes per zone, same local names in every zone.
    for (name, z) in c.managers() {
        apply(z, dataplane("web", "default", &format!("web-{name}"), 8080)).await;
        apply(z, dataplane("db", "default", "db", 5432)).await;
    }
    let dataplanes = |m: &Manager| -> BTreeMap<String, BTreeMap<String, String>> {
        m.list(&Filter::kind(ResourceType::Dataplane))
            .into_iter()
            .map(|r| (r.key.name.clone(), r.labels.clone()))
            .collect()
    };
    let at_global = eventually("the dataplanes at the global", DEADLINE, || {
        let got = dataplanes(g);
        (got.len() == 6).then(|| got.clone()).ok_or_else(|| format!("{got:?}"))
    })
    .await;
    for (zone, _) in c.managers() {
        for dp in ["web", "db"] {
            let l = &at_global[&format!("{zone}.{dp}")];
            assert_eq!(l.get(labels::ORIGIN).map(String::as_str), Some("zone"), "{l:?}");
            assert_eq!(l.get(labels::ZONE).map(String::as_str), Some(zone), "{l:?}");
            assert_eq!(l.get(labels::DISPLAY_NAME).map(String::as_str), Some(dp), "{l:?}");
        }
    }
    // The content is the zone's.
    let web = g
        .get(&ResourceKey::in_mesh(ResourceType::Dataplane, "default", "zone-2.web"))
        .unwrap();
    assert_eq!(
        web.spec["networking"]["inbound"][0]["tags"]["kuma.io/service"],
        "web-zone-2"
    );
    // Dataplanes are not sent to other zones.
    for (zone, z) in c.managers() {
        let got: Vec<String> = dataplanes(z).into_keys().collect();
        assert_eq!(got, ["db", "web"], "{zone}");
    }

    // Every zone's ingress reaches the other zones, never its own, and
    // advertises its zone's services.
    let ingress_names = |m: &Manager| -> Vec<String> {
        m.list(&Filter::kind(ResourceType::ZoneIngress))
            .into_iter()
            .map(|r| r.key.name)
            .collect()
    };
    for (zone, z) in c.managers() {
        eventually("other zones' ingresses", DEADLINE, || {
            let got = ingress_names(z);
            let want: Vec<String> = c
                .managers()
                .iter()
                .map(|(n, _)| {
                    if *n == zone {
                        "ingress".to_string()
                    } else {
                        format!("{n}.ingress")
                    }
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            // Each zone's ingress must advertise two services.
            let complete = z
                .list(&Filter::kind(ResourceType::ZoneIngress))
                .iter()
                .all(|r| r.spec["availableServices"].as_array().map(Vec::len) == Some(2));
            (got == want && complete)
                .then_some(())
                .ok_or_else(|| format!("{zone}: {:?}", z.list(&Filter::kind(ResourceType::ZoneIngress))))
        })
        .await;
    }
    let z1_at_z3 = c.zones[2]
        .1
        .manager
        .get(&ResourceKey::global(ResourceType::ZoneIngress, "zone-1.ingress"))
        .unwrap();
    assert_eq!(z1_at_z3.labels.get(labels::ZONE).map(String::as_str), Some("zone-1"));
    assert_eq!(z1_at_z3.spec["networking"]["advertisedAddress"], "10.0.1.1");
    let services: Vec<&str> = z1_at_z3.spec["availableServices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tags"]["kuma.io/service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["db", "web-zone-1"]);
    assert_eq!(ingress_names(g).len(), 3, "{:?}", ingress_names(g));

    // Deleted dataplanes leave the global, and the ingresses follow.
    delete(&c.zones[0].1.manager, ResourceType::Dataplane, Some("default"), "web").await;
    eventually("zone-1.web gone at the global", DEADLINE, || {
        let got = dataplanes(g);
        (!got.contains_key("zone-1.web") && got.len() == 5)
            .then_some(())
            .ok_or_else(|| format!("{:?}", got.keys()))
    })
    .await;
    eventually("zone-1's ingress shrinking in zone-2", DEADLINE, || {
        let r = c.zones[1]
            .1
            .manager
            .get(&ResourceKey::global(ResourceType::ZoneIngress, "zone-1.ingress"));
        let n = r
            .as_ref()
            .and_then(|r| r.spec["availableServices"].as_array().map(Vec::len));
        (n == Some(1)).then_some(()).ok_or_else(|| format!("{r:?}"))
    })
    .await;

    // The global's copy carries exactly the three labels.
    let db = g
        .get(&ResourceKey::in_mesh(ResourceType::Dataplane, "default", "zone-3.db"))
        .unwrap();
    assert_eq!(db.labels.len(), 3, "{:?}", db.labels);

    // A dataplane whose user labels claim another zone and origin is still
    // this zone's: it is sent, labelled with the truth.
    let mut doc = dataplane("claims", "default", "claims", 7070);
    doc["labels"] = json!({"kuma.io/zone": "zone-2", "kuma.io/origin": "global", "app": "x"});
    apply(&c.zones[0].1.manager, doc).await;
    let claims = eventually("a dataplane labelled for another zone", DEADLINE, || {
        g.get(&ResourceKey::in_mesh(
            ResourceType::Dataplane,
            "default",
            "zone-1.claims",
        ))
        .ok_or_else(|| format!("{:?}", dataplanes(g).keys()))
    })
    .await;
    assert_eq!(
        serde_json::to_value(&claims.labels).unwrap(),
        json!({"app": "x", "kuma.io/display-name": "claims", "kuma.io/origin": "zone", "kuma.io/zone": "zone-1"})
    );
    assert!(g
        .get(&ResourceKey::in_mesh(
            ResourceType::Dataplane,
            "default",
            "zone-2.claims"
        ))
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_zone_catches_up_exactly_when_it_starts_again() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(global_config(StoreKind::Memory, &dir.path().join("global")), "global-1").await;
    let g = &global.manager;
    let zone_dir = dir.path().join("zone-1");
    let settings = join(&global, "zone-1").await;
    let zone = start_zone(zone_config(settings.clone(), StoreKind::Embedded, &zone_dir)).await;
    // A second, always-connected zone as a reference.
    let other = start_zone(zone_config(
        join(&global, "zone-2").await,
        StoreKind::Memory,
        &dir.path().join("z2"),
    ))
    .await;

    apply(g, timeout_policy("keep", "default", "1s")).await;
    apply(g, timeout_policy("change", "default", "1s")).await;
    apply(g, timeout_policy("drop", "default", "1s")).await;
    apply(g, json!({"type": "Mesh", "name": "doomed"})).await;
    apply(g, timeout_policy("in-doomed", "doomed", "1s")).await;
    converged(
        g,
        &[("zone-1", &zone.manager), ("zone-2", &other.manager)],
        "the first sync",
    )
    .await;
    apply(&zone.manager, dataplane("dp-1", "default", "web", 80)).await;
    let dp_key = ResourceKey::in_mesh(ResourceType::Dataplane, "default", "zone-1.dp-1");
    eventually("zone-1's dataplane at the global", DEADLINE, || {
        g.get(&dp_key).map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await;

    zone.stop().await.unwrap();
    eventually("zone-1 offline", DEADLINE, || {
        (online_subscriptions(g, "zone-1") == 0)
            .then_some(())
            .ok_or_else(|| format!("{:?}", subscriptions(g, "zone-1")))
    })
    .await;

    // While it is away: deletions, changes, creations, a mesh delete.
    delete(g, ResourceType::MeshTimeout, Some("default"), "drop").await;
    apply(g, timeout_policy("change", "default", "2s")).await;
    apply(g, timeout_policy("new", "default", "3s")).await;
    delete(g, ResourceType::Mesh, None, "doomed").await;
    delete(g, ResourceType::MeshRetry, Some("default"), "mesh-retry-all-default").await;
    apply(g, json!({"type": "Mesh", "name": "born"})).await;
    let want = converged(g, &[("zone-2", &other.manager)], "the connected zone").await;

    // The replica survived the restart: before it reconnects, the zone
    // still serves what it had.
    let mut cfg = zone_config(settings.clone(), StoreKind::Embedded, &zone_dir);
    cfg.federation = None; // standalone for a moment: read only what is on disk
    cfg.create_default_mesh = false;
    let offline = start_zone(cfg).await;
    let before = global_owned_view(&offline.manager, false);
    assert!(
        before.contains_key("MeshTimeout default/drop"),
        "{:?}",
        names_of(&before)
    );
    assert!(before.contains_key("Mesh doomed"), "{:?}", names_of(&before));
    offline.stop().await.unwrap();

    let zone = start_zone(zone_config(settings, StoreKind::Embedded, &zone_dir)).await;
    let view = converged(
        g,
        &[("zone-1", &zone.manager), ("zone-2", &other.manager)],
        "the restarted zone",
    )
    .await;
    assert_eq!(view, want);
    for gone in [
        "MeshTimeout default/drop",
        "Mesh doomed",
        "MeshTimeout doomed/in-doomed",
    ] {
        assert!(!view.contains_key(gone), "{gone}");
    }
    let leftovers: Vec<String> = zone
        .manager
        .list(&Filter::all())
        .into_iter()
        .filter(|r| r.key.mesh.as_deref() == Some("doomed"))
        .map(|r| r.key.to_string())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The zone's own dataplane is still there, at both ends, once.
    assert!(zone
        .manager
        .get(&ResourceKey::in_mesh(ResourceType::Dataplane, "default", "dp-1"))
        .is_some());
    eventually("zone-1 online again", DEADLINE, || {
        (online_subscriptions(g, "zone-1") == 1)
            .then_some(())
            .ok_or_else(|| format!("{:?}", subscriptions(g, "zone-1")))
    })
    .await;
    wait_dataplane_names(g, &["zone-1.dp-1"], "zone-1's dataplane, once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resource_is_rejected_alone_and_reported() {
    let c = Cluster::start(2, |_| None).await;
    let g = &c.global.manager;
    c.converged("the initial sync").await;

    // Bypass validation: write straight to the global's store.
    let bad_key = ResourceKey::in_mesh(ResourceType::MeshTimeout, "default", "bad");
    let bad = Resource::new(
        bad_key.clone(),
        Default::default(),
        json!({"targetRef": {"kind": "NoSuchKind"}, "to": []}),
        chrono::Utc::now(),
    );
    g.store().create(bad).await.unwrap();
    apply(g, timeout_policy("good", "default", "5s")).await;

    for (zone, z) in c.managers() {
        eventually("the valid policy", DEADLINE, || {
            z.get(&ResourceKey::in_mesh(ResourceType::MeshTimeout, "default", "good"))
                .map(|_| ())
                .ok_or_else(|| format!("{zone}: absent"))
        })
        .await;
        eventually("a NACK naming the invalid policy", DEADLINE, || {
            let subs = subscriptions(g, zone);
            let nack = subs.iter().find_map(|s| s.get("lastNack")).cloned();
            match &nack {
                Some(n)
                    if n["type"] == "MeshTimeout"
                        && n["message"].as_str().is_some_and(|m| m.contains("default/bad")) =>
                {
                    Ok(())
                }
                _ => Err(format!("{zone}: {subs:?}")),
            }
        })
        .await;
        assert!(z.get(&bad_key).is_none(), "{zone} stored the invalid policy");
    }
    // Everything else is in sync: the views differ by the bad one only.
    let mut want = global_owned_view(g, true);
    want.remove("MeshTimeout default/bad");
    for (zone, z) in c.managers() {
        assert_eq!(diff(&want, &global_owned_view(z, false)), "", "{zone}");
    }
    let rejected = |zone: &str| -> u64 {
        subscriptions(g, zone)[0]["status"]["stat"]["MeshTimeout"]["responsesRejected"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(rejected("zone-1") >= 1);

    // Later changes of the same type still flow, and once fixed it arrives.
    apply(g, timeout_policy("later", "default", "6s")).await;
    apply(g, timeout_policy("bad", "default", "7s")).await;
    let view = c.converged("the fixed policy").await;
    assert!(view.contains_key("MeshTimeout default/bad"));
    assert!(view.contains_key("MeshTimeout default/later"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_zone_control_plane_under_one_name_does_not_displace_the_first() {
    let c = Cluster::start(2, |_| None).await;
    let g = &c.global.manager;
    c.converged("the initial sync").await;
    eventually("zone-1 online", DEADLINE, || {
        (online_subscriptions(g, "zone-1") == 1)
            .then_some(())
            .ok_or_else(|| format!("{:?}", subscriptions(g, "zone-1")))
    })
    .await;
    let first_id = subscriptions(g, "zone-1")[0]["id"].clone();

    // Same name, same token, another zone control plane (its own instance
    // id): refused while the first lives (tests/zone_identity.rs checks the
    // refusal's message with real processes).
    let dir = tempfile::tempdir().unwrap();
    let twin_settings = join(&c.global, "zone-1").await;
    let twin = start_zone(zone_config(twin_settings, StoreKind::Memory, dir.path())).await;

    // The first and zone-2 keep receiving; the twin gets nothing.
    apply(g, timeout_policy("after-twin", "default", "9s")).await;
    converged(
        g,
        &[("zone-1", &c.zones[0].1.manager), ("zone-2", &c.zones[1].1.manager)],
        "the first instance and zone-2",
    )
    .await;
    let subs = subscriptions(g, "zone-1");
    let open: Vec<&Value> = subs.iter().filter(|s| s.get("disconnectTime").is_none()).collect();
    assert_eq!(open.len(), 1, "{subs:?}");
    assert_eq!(open[0]["id"], first_id, "the first keeps the zone: {subs:?}");
    assert!(
        twin.manager.list(&Filter::kind(ResourceType::Mesh)).is_empty(),
        "nothing was synced to the refused twin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_reconnect_to_a_restarted_global_and_nothing_is_lost() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut config = global_config(StoreKind::Embedded, &dir.path().join("global"));
    config.api_addr = SocketAddr::from(([127, 0, 0, 1], meridian_e2e::free_port()));
    config.kds_addr = SocketAddr::from(([127, 0, 0, 1], meridian_e2e::free_port()));
    let global = start_global(config.clone(), "global-a").await;
    let z1 = start_zone(zone_config(
        join(&global, "zone-1").await,
        StoreKind::Memory,
        &dir.path().join("z1"),
    ))
    .await;
    let z2 = start_zone(zone_config(
        join(&global, "zone-2").await,
        StoreKind::Memory,
        &dir.path().join("z2"),
    ))
    .await;
    let zones = [("zone-1", z1.manager.as_ref()), ("zone-2", z2.manager.as_ref())];
    apply(&global.manager, timeout_policy("before", "default", "1s")).await;
    converged(&global.manager, &zones, "the first sync").await;
    apply(&z1.manager, dataplane("kept", "default", "web", 80)).await;
    apply(&z1.manager, dataplane("removed", "default", "web", 81)).await;
    let dp_names = |m: &Manager| -> Vec<String> {
        m.list(&Filter::kind(ResourceType::Dataplane))
            .into_iter()
            .map(|r| r.key.name)
            .collect()
    };
    eventually("the dataplanes at the global", DEADLINE, || {
        let got = dp_names(&global.manager);
        (got == ["zone-1.kept", "zone-1.removed"])
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    })
    .await;

    global.stop().await.unwrap();
    let mut z1_connected = z1.connected.clone();
    tokio::time::timeout(DEADLINE, z1_connected.wait_for(|c| !*c))
        .await
        .expect("zone-1 notices that the global stopped")
        .unwrap();
    // While the global is away, zone-1 changes its inventory.
    delete(&z1.manager, ResourceType::Dataplane, Some("default"), "removed").await;
    apply(&z1.manager, dataplane("added", "default", "web", 82)).await;

    let global = start_global_retrying(config, "global-b").await;
    let g = &global.manager;
    apply(g, timeout_policy("after", "default", "2s")).await;
    let view = converged(g, &zones, "after the restart").await;
    assert!(view.contains_key("MeshTimeout default/before") && view.contains_key("MeshTimeout default/after"));
    eventually("zone-1's inventory at the restarted global", DEADLINE, || {
        let got = dp_names(g);
        (got == ["zone-1.added", "zone-1.kept"])
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    })
    .await;
    for zone in ["zone-1", "zone-2"] {
        eventually("a subscription held by the new instance", DEADLINE, || {
            let subs = subscriptions(g, zone);
            subs.iter()
                .any(|s| s["globalInstanceId"] == "global-b" && s.get("disconnectTime").is_none())
                .then_some(())
                .ok_or_else(|| format!("{subs:?}"))
        })
        .await;
    }
}

/// Starts a global on a data dir a stopped instance may still hold for a moment.
async fn start_global_retrying(config: GlobalConfig, instance: &str) -> RunningGlobal {
    let t = Instant::now();
    loop {
        match meridian_global::start(config.clone(), instance.to_string()).await {
            Ok(g) => {
                g.manager.cache().wait_ready(Duration::from_secs(10)).await.unwrap();
                return g;
            }
            Err(e) if t.elapsed() < Duration::from_secs(5) => {
                tracing::info!(error = %format!("{e:#}"), "global not startable yet");
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

// ---------------------------------------------------------------------------
// A hand-driven zone: raw KDS streams, to hold the global to the protocol.

mod raw {
    use super::*;
    use meridian_proto as pb;
    use meridian_server::kds::wire::type_url;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

    pub async fn client(g: &RunningGlobal) -> pb::kds_client::KdsClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&g.services.ca_pem))
            .domain_name("127.0.0.1");
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", g.kds_addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::kds_client::KdsClient::new(channel)
    }

    pub fn authorized<T>(msg: T, zone: &str, token: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r.metadata_mut().insert("x-meridian-zone", zone.parse().unwrap());
        r
    }

    /// The zone side of `ZoneToGlobal`, driven by hand.
    pub struct Pusher {
        tx: mpsc::Sender<pb::DeltaResponse>,
        acks: tonic::Streaming<pb::DeltaRequest>,
        nonce: u64,
    }

    impl Pusher {
        /// Opens the stream and returns it with the global's subscriptions.
        pub async fn open(g: &RunningGlobal, zone: &str) -> (Pusher, Vec<pb::DeltaRequest>) {
            let token = g.services.tokens.issue(zone, Duration::from_secs(600)).await.unwrap();
            let (tx, rx) = mpsc::channel(16);
            let mut acks = client(g)
                .await
                .zone_to_global(authorized(ReceiverStream::new(rx), zone, &token))
                .await
                .unwrap()
                .into_inner();
            let mut subs = Vec::new();
            for _ in 0..meridian_server::kds::ZONE_TO_GLOBAL_TYPES.len() {
                subs.push(next(&mut acks).await);
            }
            (Pusher { tx, acks, nonce: 0 }, subs)
        }

        /// Sends one response and returns the global's answer to it.
        pub async fn push(&mut self, kind: &str, resources: Vec<pb::Resource>, removed: &[&str]) -> pb::DeltaRequest {
            self.nonce += 1;
            let nonce = self.nonce.to_string();
            self.tx
                .send(pb::DeltaResponse {
                    type_url: format!("{}{kind}", pb::TYPE_URL_PREFIX),
                    resources,
                    removed_resources: removed.iter().map(|s| s.to_string()).collect(),
                    nonce: nonce.clone(),
                })
                .await
                .unwrap();
            let ack = next(&mut self.acks).await;
            assert_eq!(ack.response_nonce, nonce, "{ack:?}");
            ack
        }
    }

    async fn next<T>(s: &mut tonic::Streaming<T>) -> T {
        tokio::time::timeout(DEADLINE, s.message())
            .await
            .expect("a message from the global in time")
            .expect("a well-formed stream")
            .expect("the stream stays open")
    }

    /// A zone that subscribes to everything on `GlobalToZone` and then
    /// neither acknowledges nor reads.
    pub async fn stuck_zone(
        g: &RunningGlobal,
        zone: &str,
    ) -> (mpsc::Sender<pb::DeltaRequest>, tonic::Streaming<pb::DeltaResponse>) {
        let token = g.services.tokens.issue(zone, Duration::from_secs(600)).await.unwrap();
        let (tx, rx) = mpsc::channel(64);
        for kind in global_to_zone_types() {
            tx.send(pb::DeltaRequest {
                node: Some(pb::Node {
                    zone: zone.into(),
                    version: "test".into(),
                    instance_id: "stuck".into(),
                }),
                type_url: type_url(kind),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let responses = client(g)
            .await
            .global_to_zone(authorized(ReceiverStream::new(rx), zone, &token))
            .await
            .unwrap()
            .into_inner();
        (tx, responses)
    }
}

/// A wire resource as a zone would send it, with `labels` and `spec`.
fn wire(name: &str, labels: Value, spec: Value) -> meridian_proto::Resource {
    let payload = serde_json::to_vec(&json!({"labels": labels, "spec": spec})).unwrap();
    meridian_proto::Resource {
        name: name.into(),
        version: format!("v-{name}"),
        payload,
    }
}

fn zone_labels(zone: &str, name: &str) -> Value {
    json!({"kuma.io/origin": "zone", "kuma.io/zone": zone, "kuma.io/display-name": name})
}

fn dp_spec() -> Value {
    json!({"networking": {"address": "10.0.0.9", "inbound": [{"port": 80, "tags": {"kuma.io/service": "web"}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_can_push_only_its_own_resources_and_each_bad_one_is_rejected_alone() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(global_config(StoreKind::Memory, dir.path()), "global-1").await;
    let g = &global.manager;
    let (mut zone, subs) = raw::Pusher::open(&global, "zone-1").await;
    let mut subscribed: Vec<&str> = subs.iter().map(|s| s.type_url.as_str()).collect();
    subscribed.sort();
    assert_eq!(
        subscribed,
        [
            "meridian.kds/Dataplane",
            "meridian.kds/DataplaneInsight",
            "meridian.kds/ZoneCertificateRequest",
            "meridian.kds/ZoneIngress"
        ]
    );

    // A type the zone does not own: the whole response is refused.
    let ack = zone
        .push(
            "Mesh",
            vec![wire("evil", json!({"kuma.io/origin": "zone"}), json!({}))],
            &[],
        )
        .await;
    assert!(ack.error_message.contains("Mesh"), "{ack:?}");
    let ack = zone.push("NoSuchType", vec![], &[]).await;
    assert!(!ack.error_message.is_empty(), "{ack:?}");

    // One response mixing a good dataplane with bad ones: only the bad ones
    // are rejected, each with its reason.
    let ack = zone
        .push(
            "Dataplane",
            vec![
                wire("default/good", zone_labels("zone-1", "good"), dp_spec()),
                wire("default/spoofed", zone_labels("zone-2", "spoofed"), dp_spec()),
                wire("default/renamed", zone_labels("zone-1", "other-name"), dp_spec()),
                wire("default/unlabelled", json!({}), dp_spec()),
                wire("no-mesh", zone_labels("zone-1", "no-mesh"), dp_spec()),
                wire("nowhere/dp", zone_labels("zone-1", "dp"), dp_spec()),
                wire(
                    "default/invalid",
                    zone_labels("zone-1", "invalid"),
                    json!({"networking": {}}),
                ),
                meridian_proto::Resource {
                    name: "default/garbage".into(),
                    version: "1".into(),
                    payload: b"\x00\xffnot json".to_vec(),
                },
            ],
            &[],
        )
        .await;
    assert!(ack.error_message.is_empty(), "{ack:?}");
    let mut rejected: Vec<&str> = ack.rejected.iter().map(|r| r.name.as_str()).collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            "default/garbage",
            "default/invalid",
            "default/renamed",
            "default/spoofed",
            "default/unlabelled",
            "no-mesh",
            "nowhere/dp"
        ],
        "{ack:?}"
    );
    let spoofed = ack.rejected.iter().find(|r| r.name == "default/spoofed").unwrap();
    assert!(spoofed.message.contains("kuma.io/zone"), "{spoofed:?}");
    // The global answered after writing: its store (not yet its cache) has it all.
    assert_eq!(stored_dataplanes(g).await, ["zone-1.good"]);

    // Removals only ever touch the zone's own resources: "good" here is
    // zone-1.good, and a name of another zone's resource is just absent.
    let other = ResourceKey::in_mesh(ResourceType::Dataplane, "default", "zone-2.web");
    let mut r = Resource::new(other.clone(), Default::default(), dp_spec(), chrono::Utc::now());
    r.labels = serde_json::from_value(zone_labels("zone-2", "web")).unwrap();
    g.store().create(r).await.unwrap();
    let ack = zone
        .push(
            "Dataplane",
            vec![],
            &["default/good", "default/zone-2.web", "bad/name/x"],
        )
        .await;
    let rejected: Vec<&str> = ack.rejected.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(rejected, ["bad/name/x"], "{ack:?}");
    // The global answered after writing: its store (not yet its cache) has it all.
    assert_eq!(stored_dataplanes(g).await, ["zone-2.web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_zone_holds_back_no_one() {
    let c = Cluster::start(1, |_| None).await;
    let g = &c.global.manager;
    c.converged("the initial sync").await;
    let (_requests, mut responses) = raw::stuck_zone(&c.global, "stuck").await;
    // It receives the initial state, one response per type with content,
    // and then acknowledges nothing.
    let first = tokio::time::timeout(DEADLINE, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.resources.is_empty(), "{first:?}");

    // Many changes while it is stuck: the healthy zone keeps up.
    let started = Instant::now();
    for i in 0..100 {
        apply(g, timeout_policy(&format!("p-{i}"), "default", &format!("{}s", i + 1))).await;
    }
    for i in 0..100 {
        apply(
            g,
            timeout_policy(&format!("p-{i}"), "default", &format!("{}s", i + 101)),
        )
        .await;
    }
    let view = c.converged("the healthy zone, next to a stuck one").await;
    // 100 policies, the 5 of the default mesh, the admin role and binding.
    assert_eq!(view.len(), 107);
    eprintln!("200 writes synced in {:?}", started.elapsed());

    // The stuck stream got nothing beyond one unacknowledged response per
    // type: what is waiting for it now is at most one message per type.
    let mut per_type: BTreeMap<String, usize> = BTreeMap::new();
    *per_type.entry(first.type_url.clone()).or_default() += 1;
    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(300), responses.message()).await {
        *per_type.entry(r.type_url.clone()).or_default() += 1;
    }
    assert!(per_type.values().all(|n| *n == 1), "{per_type:?}");
    // Insights are written at most once a second.
    let subs = eventually("the stuck zone's insight", DEADLINE, || {
        let subs = subscriptions(g, "stuck");
        (!subs.is_empty())
            .then_some(subs)
            .ok_or_else(|| "no subscription yet".to_string())
    })
    .await;
    let total = &subs[0]["status"]["total"];
    assert_eq!(total["responsesAcknowledged"], 0, "{subs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_tries_every_global_address_in_turn() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(global_config(StoreKind::Memory, dir.path()), "global-1").await;
    let mut settings = join(&global, "zone-1").await;
    let dead = meridian_e2e::free_port();
    settings.addresses.insert(0, format!("grpcs://127.0.0.1:{dead}"));
    let zone = start_zone(zone_config(settings, StoreKind::Memory, &dir.path().join("z"))).await;
    converged(
        &global.manager,
        &[("zone-1", &zone.manager)],
        "a zone whose first address is dead",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_valid_token_for_the_zone_opens_a_stream() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(global_config(StoreKind::Memory, dir.path()), "global-1").await;
    let tokens = &global.services.tokens;
    let hour = Duration::from_secs(3600);
    let now = chrono::Utc::now().timestamp();
    let valid = tokens.issue("zone-1", hour).await.unwrap();
    let other_zone = tokens.issue("zone-2", hour).await.unwrap();
    let expired = tokens
        .issue_at("zone-1", Duration::from_secs(60), now - 3600)
        .await
        .unwrap();
    let revoked = tokens.issue("zone-1", hour).await.unwrap();
    tokens.revoke(&tokens.verify(&revoked).await.unwrap().id).await.unwrap();
    // Another signature: one character changed well inside it.
    let at = valid.len() - 10;
    let flipped = if &valid[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &valid[..at], &valid[at + 1..]);

    let open = |zone: Option<&'static str>, token: Option<String>| {
        let global = &global;
        async move {
            let (_tx, rx) = tokio::sync::mpsc::channel::<meridian_proto::DeltaRequest>(1);
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            if let Some(z) = zone {
                req.metadata_mut().insert("x-meridian-zone", z.parse().unwrap());
            }
            raw::client(global).await.global_to_zone(req).await.map(|_| ())
        }
    };
    open(Some("zone-1"), Some(valid.clone())).await.unwrap();
    let refused = [
        (Some("zone-1"), Some(other_zone), tonic::Code::Unauthenticated, "zone-2"),
        (Some("zone-1"), Some(expired), tonic::Code::Unauthenticated, "expired"),
        (Some("zone-1"), Some(revoked), tonic::Code::Unauthenticated, "revoked"),
        (
            Some("zone-1"),
            Some(tampered),
            tonic::Code::Unauthenticated,
            "signature",
        ),
        (
            Some("zone-1"),
            Some("garbage".into()),
            tonic::Code::Unauthenticated,
            "token",
        ),
        (Some("zone-1"), None, tonic::Code::Unauthenticated, "token"),
        (
            None,
            Some(valid.clone()),
            tonic::Code::InvalidArgument,
            "x-meridian-zone",
        ),
        (
            Some("Not_A_Zone"),
            Some(valid),
            tonic::Code::InvalidArgument,
            "zone name",
        ),
    ];
    for (zone, token, code, reason) in refused {
        let status = open(zone, token.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{zone:?} {token:?}: {status:?}");
        assert!(status.message().contains(reason), "{zone:?}: {status:?}");
    }
    // Refused zones leave no trace at the global.
    let zones: Vec<String> = global
        .manager
        .list(&Filter::kind(ResourceType::Zone))
        .into_iter()
        .map(|r| r.key.name)
        .collect();
    assert_eq!(zones, ["zone-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_near_the_size_limit_arrive_split_over_several_responses() {
    let c = Cluster::start(2, |_| None).await;
    let g = &c.global.manager;
    c.converged("the initial sync").await;
    // Five patches of ~900 KiB each: about 4.4 MiB, more than one response
    // (3 MiB at most) and more than gRPC's default 4 MiB message.
    let filler = "x".repeat(900 * 1024);
    for i in 0..5 {
        apply(
            g,
            json!({
                "type": "MeshProxyPatch", "name": format!("big-{i}"), "mesh": "default",
                "spec": {"targetRef": {"kind": "Mesh"}, "default": {"appendModifications": [
                    {"cluster": {"operation": "Add", "value": format!("name: big-{i}\nfiller: {filler}\n")}}
                ]}}
            }),
        )
        .await;
    }
    let view = c.converged("five large patches").await;
    assert_eq!(view.keys().filter(|k| k.starts_with("MeshProxyPatch ")).count(), 5);
    let sent = subscriptions(g, "zone-1")[0]["status"]["stat"]["MeshProxyPatch"]["responsesSent"]
        .as_u64()
        .unwrap_or(0);
    assert!(sent >= 2, "4.4 MiB must take at least two responses, took {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_stream_is_told_why() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(global_config(StoreKind::Memory, dir.path()), "global-1").await;
    let (_a_tx, mut older) = raw::stuck_zone(&global, "dup").await;
    older.message().await.unwrap().unwrap();
    let (_b_tx, mut newer) = raw::stuck_zone(&global, "dup").await;
    // The newer stream is served: its initial state arrives.
    newer.message().await.unwrap().unwrap();
    let status = tokio::time::timeout(DEADLINE, async {
        loop {
            match older.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the older stream ended without a status"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the older stream to be closed");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("newer connection of zone \"dup\""),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_deleted_and_recreated_takes_the_zones_dataplanes_along_everywhere() {
    let c = Cluster::start(2, |_| None).await;
    let g = &c.global.manager;
    apply(g, json!({"type": "Mesh", "name": "m"})).await;
    mesh_defaults(g, "m").await;
    c.converged("mesh m").await;
    let (z1, z2) = (&c.zones[0].1.manager, &c.zones[1].1.manager);
    let in_m = |m: &Manager| -> Vec<String> {
        m.list(&Filter::in_mesh(ResourceType::Dataplane, "m"))
            .into_iter()
            .map(|r| r.key.name)
            .collect()
    };
    for round in 0..5 {
        apply(z1, dataplane("web", "m", "web", 80)).await;
        apply(z2, dataplane("db", "m", "db", 5432)).await;
        eventually("the dataplanes at the global", DEADLINE, || {
            let got = in_m(g);
            (got == ["zone-1.web", "zone-2.db"])
                .then_some(())
                .ok_or_else(|| format!("round {round}: {got:?}"))
        })
        .await;
        // Deleted and at once re-created, identical: the deletion took the
        // dataplanes along at the global, so it must in the zones too.
        delete(g, ResourceType::Mesh, None, "m").await;
        apply(g, json!({"type": "Mesh", "name": "m"})).await;
        mesh_defaults(g, "m").await;
        eventually("no dataplane left in m anywhere", DEADLINE, || {
            let seen = (in_m(g), in_m(z1), in_m(z2));
            (seen.0.is_empty() && seen.1.is_empty() && seen.2.is_empty())
                .then_some(())
                .ok_or_else(|| format!("round {round}: global, zone-1, zone-2: {seen:?}"))
        })
        .await;
        c.converged("the re-created mesh").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_zones_ingress_leaves_the_other_zones_and_comes_back() {
    let mut c = Cluster::start(2, |i| Some((format!("10.0.{i}.1"), 10000 + i as u16))).await;
    c.converged("the initial sync").await;
    let in_zone_1 = |c: &Cluster| {
        c.zones[0]
            .1
            .manager
            .get(&ResourceKey::global(ResourceType::ZoneIngress, "zone-2.ingress"))
    };
    eventually("zone-2's ingress in zone-1", DEADLINE, || {
        in_zone_1(&c).map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await;

    // Zone-1's API cannot overwrite or delete the copy synced from zone-2.
    let api = format!("http://{}", c.zones[0].1.api_addr);
    meridian_e2e::register_token(&api, &c.zones[0].1.admin_token);
    let (put, delete) = tokio::task::spawn_blocking(move || {
        let body = json!({"type": "ZoneIngress", "name": "zone-2.ingress",
            "networking": {"address": "1.2.3.4", "port": 1}});
        let put = meridian_e2e::http(
            "PUT",
            &format!("{api}/zoneingresses/zone-2.ingress"),
            Some(body.to_string()),
            None,
        );
        let delete = meridian_e2e::http("DELETE", &format!("{api}/zoneingresses/zone-2.ingress"), None, None);
        (put, delete)
    })
    .await
    .unwrap();
    assert_eq!(put.unwrap().0, 405);
    assert_eq!(delete.unwrap().0, 405);

    // zone-2 goes away: the global stops relaying its ingress.
    let (name, zone2) = c.zones.remove(1);
    // A memory store: the data dir holds only the admin token.
    let data_dir = c._dir.path().join("zone-2-again");
    zone2.stop().await.unwrap();
    eventually("zone-2's ingress gone from zone-1", DEADLINE, || match in_zone_1(&c) {
        None => Ok(()),
        Some(r) => Err(format!("still there: {:?}", r.labels)),
    })
    .await;
    // The global keeps the ingress itself: it is zone-2's, not the global's to delete.
    assert!(c
        .global
        .manager
        .get(&ResourceKey::global(ResourceType::ZoneIngress, "zone-2.ingress"))
        .is_some());

    // zone-2 returns: its ingress comes back to zone-1.
    let mut cfg = zone_config(join(&c.global, &name).await, StoreKind::Memory, &data_dir);
    cfg.ingress_address = Some(("10.0.2.1".into(), 10002));
    c.zones.push((name, start_zone(cfg).await));
    eventually("zone-2's ingress back in zone-1", DEADLINE, || {
        in_zone_1(&c).map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await;
}
