//! xDS propagation benchmarks: how long a change takes to reach the
//! clients of a zone, with every hop on the way stamped in the same run.
//!
//! - `xds-route-latency`: a MeshTimeout PUT at the global's API → in the
//!   zone's cache (the KDS hop, the baseline) → ACKed by proxyless gRPC
//!   clients holding the route it changes.
//! - `xds-eds-latency`: a Dataplane PUT at zone 2's API → zone 2's ingress
//!   advertises one more instance (`availableServices`) → the global has that
//!   ingress → zone 1 has it → a client in zone 1 ACKs the
//!   ClusterLoadAssignment with the new weight of zone 2's locality.
//!
//! The global and the zones run in this process (`meridian_global::start`,
//! `meridian_zone::start`, as deployed: TLS and zone tokens over loopback)
//! so that their caches can be watched; the clients are
//! [`crate::ads_client`] over their own HTTP/2 connections to the zone's ADS
//! server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::{StreamExt, TryStreamExt};
use meridian_core::dataplane::{ZoneIngress, SERVICE_TAG};
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_server::backend::StoreKind;
use meridian_server::kds::labels;
use meridian_store::cache::Cache;
use meridian_store::Event as CacheEvent;
use meridian_zone::kds::ClientSettings;
use meridian_zone::{RunningZone, ZoneConfig};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::ads_client::{ClientKind, ClientSpec, Target};
use crate::kds::{agent, apply, header, put_ok, row, timed_http, Global};
use crate::summarize;
use crate::xds_scale::{dataplane, probe_policy, round_timeout, Fleet, XdsAccess, MESH, PROBE_POLICY};

fn zone_store(name: &str) -> anyhow::Result<StoreKind> {
    match name {
        "embedded" => Ok(StoreKind::Embedded),
        "memory" => Ok(StoreKind::Memory),
        other => bail!("unknown zone store {other:?} (embedded or memory)"),
    }
}

/// A full zone in this process, joined to `global`.
async fn start_zone(
    global: &Global,
    name: &str,
    store: StoreKind,
    dir: &Path,
    ingress: Option<(String, u16)>,
) -> anyhow::Result<RunningZone> {
    let token = global.token(name).await?;
    let zone = meridian_zone::start(ZoneConfig {
        zone: name.to_string(),
        api_addr: "127.0.0.1:0".parse()?,
        xds_addr: "127.0.0.1:0".parse()?,
        xds_tls: Default::default(),
        dp_auth: meridian_zone::auth::DpAuth::Token,
        dataplane_cleanup_age: std::time::Duration::from_secs(60),
        offline_dataplane_cleanup_age: None,
        xds_max_connections: meridian_zone::config::DEFAULT_XDS_MAX_CONNECTIONS,
        store,
        data_dir: dir.join(format!("{name}-data")),
        federation: Some(ClientSettings {
            zone: name.to_string(),
            addresses: vec![global.join.address.clone()],
            token,
            ca_pem: global.join.ca_pem.clone(),
            keepalive: Duration::from_secs(10),
            protocol: meridian_server::kds::PROTOCOL_VERSION,
        }),
        ingress_address: ingress,
        create_default_mesh: false,
        access: meridian_server::access::AccessConfig::with_token_file(dir.join(format!("{name}-admin-token"))),
        api_tls: None,
        api_limits: Default::default(),
    })
    .await?;
    crate::kds::register_token(&format!("http://{}", zone.api_addr), &zone.admin_token);
    zone.manager
        .cache()
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("zone cache: {e}"))?;
    Ok(zone)
}

/// What clients of `zone` present: its xDS CA and a token of [`MESH`].
async fn access(global: &Global, zone: &RunningZone) -> anyhow::Result<XdsAccess> {
    let req = meridian_server::identity::dataplane::IssueRequest {
        mesh: MESH.to_string(),
        valid_for: Duration::from_secs(24 * 3600),
        ..Default::default()
    };
    let token = global.running.dataplane_tokens.issue(&req).await?;
    // The zone verifies the token with the mesh's key, which KDS brings.
    wait_for(
        zone.manager.cache(),
        "the mesh's dataplane token key",
        Duration::from_secs(30),
        |r| r.key.mesh.as_deref() == Some(MESH),
        ResourceType::DataplaneTokenKey,
    )
    .await?;
    Ok(XdsAccess {
        ca_pem: zone.xds_ca_pem.as_str().into(),
        token: Some(token.into()),
    })
}

/// Resolves when `cache` holds a resource satisfying `pred`; follows the
/// cache's events, so waiting costs nothing while nothing changes.
async fn wait_for(
    cache: &Arc<Cache>,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Resource) -> bool,
    kind: ResourceType,
) -> anyhow::Result<()> {
    let mut events = cache.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cache.list(&meridian_store::Filter::kind(kind)).iter().any(&pred) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => bail!("{what}: not there after {timeout:?}"),
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("cache closed"),
            Ok(_) => {}
        }
    }
}

/// Per cache: forwards `(value, when)` for each Put that `extract` maps to a value.
fn stamp<F>(cache: &Arc<Cache>, tx: mpsc::UnboundedSender<(u64, Instant)>, extract: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(&Resource) -> Option<u64> + Send + 'static,
{
    let mut events = cache.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(CacheEvent::Put(r)) => {
                    if let Some(v) = extract(&r) {
                        if tx.send((v, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                // A missed event shows up as a timeout of that write.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Waits for `value` on a stamp channel (earlier values are dropped).
async fn stamped(rx: &mut mpsc::UnboundedReceiver<(u64, Instant)>, value: u64, what: &str) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => bail!("{what} never saw {value}"),
            Ok(None) => bail!("{what}: stamps closed"),
            Ok(Some((v, at))) if v == value => return Ok(at),
            Ok(Some(_)) => {}
        }
    }
}

/// The round a stored probe policy was written in (its timeout encodes it).
fn probe_round(r: &Resource) -> Option<u64> {
    if r.key.kind != ResourceType::MeshTimeout || r.key.name != PROBE_POLICY {
        return None;
    }
    let t = r.spec.pointer("/to/0/default/http/requestTimeout")?.as_str()?;
    let ms: u64 = t.strip_suffix("ms")?.parse().ok()?;
    ms.checked_sub(round_timeout(0).as_millis() as u64)
}

// ---- xds-route-latency ------------------------------------------------------------

pub struct RouteOptions {
    pub writes: usize,
    pub warmup: usize,
    pub dataplanes: usize,
    pub services: usize,
    pub clients: usize,
    pub zone_store: String,
}

pub async fn route_latency(o: RouteOptions) -> anyhow::Result<()> {
    crate::xds_scale::raise_nofile(o.clients as u64 * 2 + 1024)?;
    let store = zone_store(&o.zone_store)?;
    let global = Global::start("embedded", None).await?;
    let agent = agent();
    put_ok(
        &agent,
        format!("{}/meshes/{MESH}", global.api),
        json!({"type": "Mesh", "name": MESH}),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let zone = start_zone(&global, "zone-1", store, dir.path(), None).await?;
    let mesh_key = ResourceKey::global(ResourceType::Mesh, MESH);
    wait_for(
        zone.manager.cache(),
        "the mesh in the zone",
        Duration::from_secs(60),
        |r| r.key == mesh_key,
        ResourceType::Mesh,
    )
    .await?;
    futures::stream::iter(0..o.dataplanes)
        .map(|i| {
            let manager = zone.manager.clone();
            async move { apply(&manager, dataplane(MESH, i, o.services)).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    // Clients: proxyless, each calling two services; dataplanes of their own.
    let specs: Vec<ClientSpec> = (0..o.clients)
        .map(|i| ClientSpec {
            index: i,
            node_id: format!("{MESH}.dp-{i}"),
            kind: ClientKind::Proxyless(vec![
                format!("svc-{}", (i + 1) % o.services.max(1)),
                format!("svc-{}", (i + 2) % o.services.max(1)),
            ]),
            token: None,
        })
        .collect();
    if o.clients > o.dataplanes {
        bail!("--clients must not exceed --dataplanes (each client is one registered dataplane)");
    }
    let access = access(&global, &zone).await?;
    let (mut fleet, connected_in) = Fleet::connect(zone.xds_addr, access, specs, 100, Duration::from_secs(600)).await?;

    let (tx, mut in_zone) = mpsc::unbounded_channel();
    let stamper = stamp(zone.manager.cache(), tx, probe_round);
    let mut took = Vec::new();
    let mut to_zone = Vec::new();
    let mut first = Vec::new();
    let mut median = Vec::new();
    let mut last = Vec::new();
    let url = format!("{}/meshes/{MESH}/meshtimeouts/{PROBE_POLICY}", global.api);
    for round in 1..=(o.warmup + o.writes) as u64 {
        let timeout = round_timeout(round);
        let _ = fleet.target.send(Target::RouteTimeout { round, timeout });
        let (start, resp, status, text) =
            timed_http(&agent, "PUT", url.clone(), Some(probe_policy(MESH, timeout))).await?;
        if !(200..300).contains(&status) {
            bail!("PUT {PROBE_POLICY} answered {status}: {text}");
        }
        let zone_at = stamped(&mut in_zone, round, "the zone's cache").await?;
        let mut times: Vec<Duration> = fleet
            .wait_round(round, o.clients, start, Duration::from_secs(60))
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        times.sort();
        if round as usize > o.warmup {
            took.push(resp);
            to_zone.push(zone_at.saturating_duration_since(start));
            first.push(times[0]);
            median.push(times[times.len() / 2]);
            last.push(times[times.len() - 1]);
        }
    }
    stamper.abort();
    println!(
        "xds-route-latency: {} sequential MeshTimeout PUTs at the global's API (after {} warm-up writes), each \
         changing the request timeout of every route; zone store {}; {} dataplanes of {} services; {} proxyless \
         clients connected (all configured in {:.2} s), each holding the listeners of 2 services; times in ms \
         from the start of the PUT\n",
        o.writes,
        o.warmup,
        o.zone_store,
        o.dataplanes,
        o.services,
        o.clients,
        connected_in.as_secs_f64()
    );
    header("path");
    row("PUT → HTTP response (global)", &summarize(took));
    row("PUT → in the zone's cache (KDS: the baseline)", &summarize(to_zone));
    row("PUT → first client ACKs the new route", &summarize(first));
    row("PUT → median client ACKs it", &summarize(median));
    row(&format!("PUT → all {} clients ACK it", o.clients), &summarize(last));
    println!();
    fleet.stop();
    zone.stop().await?;
    global.running.stop().await?;
    Ok(())
}

// ---- xds-eds-latency ---------------------------------------------------------------

pub struct EdsOptions {
    pub writes: usize,
    pub warmup: usize,
    pub zone_store: String,
}

const REMOTE_SERVICE: &str = "remote-svc";

fn remote_dataplane(i: usize) -> Value {
    json!({
        "type": "Dataplane", "mesh": MESH, "name": format!("remote-{i}"),
        "networking": {"address": format!("10.2.{}.{}", (i >> 8) & 255, i & 255),
                       "inbound": [{"port": 8080, "tags": {"kuma.io/service": REMOTE_SERVICE, "kuma.io/protocol": "grpc"}}]}
    })
}

/// Instances of the remote service an ingress advertises, if `r` is an
/// ingress of zone `zone` (`own`: the zone's own copy, without a zone label).
fn advertised(r: &Resource, zone: &str, own: bool) -> Option<u64> {
    if r.key.kind != ResourceType::ZoneIngress {
        return None;
    }
    let label = r.labels.get(labels::ZONE);
    let mine = if own {
        label.is_none_or(|z| z == zone)
    } else {
        label.is_some_and(|z| z == zone)
    };
    if !mine {
        return None;
    }
    let spec: ZoneIngress = serde_json::from_value(r.spec.clone()).ok()?;
    Some(
        spec.available_services
            .iter()
            .filter(|s| s.mesh == MESH && s.tags.get(SERVICE_TAG).is_some_and(|t| t == REMOTE_SERVICE))
            .map(|s| u64::from(s.instances))
            .sum(),
    )
}

pub async fn eds_latency(o: EdsOptions) -> anyhow::Result<()> {
    let store = zone_store(&o.zone_store)?;
    let global = Global::start("embedded", None).await?;
    let agent = agent();
    put_ok(
        &agent,
        format!("{}/meshes/{MESH}", global.api),
        json!({"type": "Mesh", "name": MESH}),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let zone1 = start_zone(&global, "zone-1", store, dir.path(), None).await?;
    let zone2 = start_zone(&global, "zone-2", store, dir.path(), Some(("127.0.0.2".into(), 10001))).await?;
    let zone2_api = format!("http://{}", zone2.api_addr);
    let mesh_key = ResourceKey::global(ResourceType::Mesh, MESH);
    for z in [&zone1, &zone2] {
        wait_for(
            z.manager.cache(),
            "the mesh in a zone",
            Duration::from_secs(60),
            |r| r.key == mesh_key,
            ResourceType::Mesh,
        )
        .await?;
    }
    // One instance in zone 2 before the client starts, so that zone 1
    // knows the service; the client's own dataplane in zone 1.
    put_ok(
        &agent,
        format!("{zone2_api}/meshes/{MESH}/dataplanes/remote-0"),
        remote_dataplane(0),
    )
    .await?;
    wait_for(
        zone1.manager.cache(),
        "zone 2's ingress in zone 1",
        Duration::from_secs(60),
        |r| advertised(r, "zone-2", false) == Some(1),
        ResourceType::ZoneIngress,
    )
    .await?;
    apply(
        &zone1.manager,
        json!({"type": "Dataplane", "mesh": MESH, "name": "client",
               "networking": {"address": "10.1.0.1",
                              "inbound": [{"port": 8080, "tags": {"kuma.io/service": "client-svc"}}]}}),
    )
    .await?;
    let spec = ClientSpec {
        index: 0,
        node_id: format!("{MESH}.client"),
        kind: ClientKind::Proxyless(vec![REMOTE_SERVICE.to_string()]),
        token: None,
    };
    let access = access(&global, &zone1).await?;
    let (mut fleet, _) = Fleet::connect(zone1.xds_addr, access, vec![spec], 1, Duration::from_secs(60)).await?;

    let mut stamps: HashMap<&str, mpsc::UnboundedReceiver<(u64, Instant)>> = HashMap::new();
    let mut stampers = Vec::new();
    for (name, cache, own) in [
        ("zone-2", zone2.manager.cache(), true),
        ("global", global.running.manager.cache(), false),
        ("zone-1", zone1.manager.cache(), false),
    ] {
        let (tx, rx) = mpsc::unbounded_channel();
        stampers.push(stamp(cache, tx, move |r| advertised(r, "zone-2", own)));
        stamps.insert(name, rx);
    }
    let mut took = Vec::new();
    let mut hops: [Vec<Duration>; 4] = Default::default();
    for i in 1..=(o.warmup + o.writes) {
        let round = i as u64;
        let instances = i as u64 + 1;
        let _ = fleet.target.send(Target::ZoneWeight {
            round,
            cluster: REMOTE_SERVICE.into(),
            zone: "zone-2".into(),
            weight: instances as u32,
        });
        let url = format!("{zone2_api}/meshes/{MESH}/dataplanes/remote-{i}");
        let (start, resp, status, text) = timed_http(&agent, "PUT", url, Some(remote_dataplane(i))).await?;
        if !(200..300).contains(&status) {
            bail!("PUT remote-{i} answered {status}: {text}");
        }
        let mut at = Vec::with_capacity(4);
        for name in ["zone-2", "global", "zone-1"] {
            let rx = stamps.get_mut(name).ok_or_else(|| anyhow!("no stamps for {name}"))?;
            at.push(
                stamped(rx, instances, name)
                    .await
                    .with_context(|| format!("write {i}"))?,
            );
        }
        let client = fleet
            .wait_round(round, 1, start, Duration::from_secs(60))
            .await?
            .first()
            .map(|(_, d)| *d)
            .ok_or_else(|| anyhow!("no client time"))?;
        if i > o.warmup {
            took.push(resp);
            for (k, t) in at.iter().enumerate() {
                hops[k].push(t.saturating_duration_since(start));
            }
            hops[3].push(client);
        }
    }
    for s in stampers {
        s.abort();
    }
    println!(
        "xds-eds-latency: {} sequential Dataplane PUTs at zone 2's API (after {} warm-up writes), each one more \
         instance of {REMOTE_SERVICE}; zone stores {}; one proxyless client in zone 1 holding {REMOTE_SERVICE}'s \
         listener, route, cluster and load assignment; times in ms from the start of the PUT\n",
        o.writes, o.warmup, o.zone_store
    );
    header("path");
    row("zone-2 PUT → HTTP response", &summarize(took));
    let [z2, g, z1, c] = hops;
    row("PUT → zone 2's ingress advertises it", &summarize(z2));
    row("PUT → the global has the ingress", &summarize(g));
    row("PUT → zone 1 has the ingress (KDS both ways)", &summarize(z1));
    row("PUT → zone 1's client ACKs the new EDS weight", &summarize(c));
    println!();
    fleet.stop();
    zone1.stop().await?;
    zone2.stop().await?;
    global.running.stop().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds_scale::{client_spec, Kind};

    /// Both kinds of clients against a real zone: configured, then a policy
    /// written at the global reaches every one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sidecar_and_proxyless_clients_see_a_policy_change() {
        let global = Global::start("memory", None).await.unwrap();
        let agent = agent();
        put_ok(
            &agent,
            format!("{}/meshes/{MESH}", global.api),
            json!({"type": "Mesh", "name": MESH}),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let zone = start_zone(&global, "zone-1", StoreKind::Memory, dir.path(), None)
            .await
            .unwrap();
        let mesh_key = ResourceKey::global(ResourceType::Mesh, MESH);
        wait_for(
            zone.manager.cache(),
            "mesh",
            Duration::from_secs(30),
            |r| r.key == mesh_key,
            ResourceType::Mesh,
        )
        .await
        .unwrap();
        // More proxies than the zone regenerates on one thread (64): the
        // change reaches them through the parallel regeneration.
        let (n, services) = (150, 5);
        for i in 0..n {
            apply(&zone.manager, dataplane(MESH, i, services)).await.unwrap();
        }
        let specs = (0..n)
            .map(|i| {
                client_spec(
                    MESH,
                    i,
                    services,
                    if i % 2 == 0 { Kind::Sidecar } else { Kind::Proxyless },
                )
            })
            .collect();
        let access = access(&global, &zone).await.unwrap();
        let (mut fleet, _) = Fleet::connect(zone.xds_addr, access, specs, 10, Duration::from_secs(60))
            .await
            .unwrap();
        let timeout = round_timeout(1);
        fleet.target.send(Target::RouteTimeout { round: 1, timeout }).unwrap();
        let url = format!("{}/meshes/{MESH}/meshtimeouts/{PROBE_POLICY}", global.api);
        let (start, _, status, text) = timed_http(&agent, "PUT", url, Some(probe_policy(MESH, timeout)))
            .await
            .unwrap();
        assert_eq!(status, 201, "{text}");
        let got = fleet.wait_round(1, n, start, Duration::from_secs(60)).await.unwrap();
        let mut clients: Vec<usize> = got.iter().map(|(c, _)| *c).collect();
        clients.sort();
        assert_eq!(clients, (0..n).collect::<Vec<_>>(), "every client, once");
        fleet.stop();
        zone.stop().await.unwrap();
        global.running.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn propagation_benchmarks_run_in_a_smoke_size() {
        route_latency(RouteOptions {
            writes: 3,
            warmup: 1,
            dataplanes: 20,
            services: 5,
            clients: 5,
            zone_store: "memory".into(),
        })
        .await
        .unwrap();
        eds_latency(EdsOptions {
            writes: 3,
            warmup: 1,
            zone_store: "memory".into(),
        })
        .await
        .unwrap();
    }
}
