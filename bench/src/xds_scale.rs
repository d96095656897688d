//! `xds-scale`: thousands of dataplanes connected to one zone.
//!
//! A real `meridian-global` process and a real `meridian-zone` process joined
//! to it (TLS, zone token), both release builds. The benchmark registers N
//! dataplanes of S services at the zone's API, then connects N ADS clients
//! (one HTTP/2 connection each, as N separate proxies would) that play Envoy
//! sidecars or proxyless gRPC clients ([`crate::ads_client`]). It then writes
//! a MeshTimeout at the global R times and times, per client, from the PUT to
//! the ACK of the first response that carries the new timeout. RSS of both
//! processes comes from `/proc/<pid>/status` (VmRSS, VmHWM).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::ads_client::{self, ClientKind, ClientSpec, Event, Target};
use crate::kds::{
    agent, cpu_time_of, free_port, mib, put_ok, timed_http, wait_present, wait_ready, GlobalProcess, Join,
};
use crate::{peak_rss_kib, sibling_binary, summarize};

/// Which kind of dataplane the clients play.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Envoy sidecars: wildcard CDS/LDS, each dataplane with 2 outbounds.
    Sidecar,
    /// Proxyless gRPC clients: listeners of 2 services by name.
    Proxyless,
}

/// The settings of one `xds-scale` run.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub dataplanes: usize,
    pub services: usize,
    pub kinds: Vec<Kind>,
    pub rounds: usize,
    /// Clients connecting at the same time (connected but not yet configured).
    pub connect_concurrency: usize,
    /// Zone store: embedded or memory.
    pub zone_store: String,
}

/// The mesh every run uses.
pub const MESH: &str = "scale";
/// The policy the runs rewrite; its name sorts before the mesh's default
/// MeshTimeout, so of two Mesh-wide policies it is the one that wins.
pub const PROBE_POLICY: &str = "a-bench-timeout";

/// The dataplane `i` of a mesh with `services` services: inbound
/// `svc-(i mod S)` (HTTP), outbounds to the next two services.
pub fn dataplane(mesh: &str, i: usize, services: usize) -> Value {
    let s = |k: usize| format!("svc-{}", (i + k) % services.max(1));
    json!({
        "type": "Dataplane", "mesh": mesh, "name": format!("dp-{i}"),
        "networking": {
            "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": s(0), "kuma.io/protocol": "http"}}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": s(1)}},
                         {"port": 10002, "tags": {"kuma.io/service": s(2)}}]
        }
    })
}

/// A Mesh-wide MeshTimeout whose request timeout is `timeout`.
pub fn probe_policy(mesh: &str, timeout: Duration) -> Value {
    json!({
        "type": "MeshTimeout", "mesh": mesh, "name": PROBE_POLICY,
        "spec": {"targetRef": {"kind": "Mesh"},
                 "to": [{"targetRef": {"kind": "Mesh"},
                         "default": {"http": {"requestTimeout": format!("{}ms", timeout.as_millis())}}}]}
    })
}

/// The timeout written in round `round`: unique per round.
pub fn round_timeout(round: u64) -> Duration {
    Duration::from_millis(20_000 + round)
}

/// The client of dataplane `i`.
pub fn client_spec(mesh: &str, i: usize, services: usize, kind: Kind) -> ClientSpec {
    ClientSpec {
        index: i,
        node_id: format!("{mesh}.dp-{i}"),
        kind: match kind {
            Kind::Sidecar => ClientKind::Sidecar,
            Kind::Proxyless => ClientKind::Proxyless(vec![
                format!("svc-{}", (i + 1) % services.max(1)),
                format!("svc-{}", (i + 2) % services.max(1)),
            ]),
        },
        token: None,
    }
}

/// Raises this process's open-file limit to its hard limit (children
/// inherit it) and checks that `needed` descriptors fit.
pub fn raise_nofile(needed: u64) -> anyhow::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is "unlimited".
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if limit.current.is_some_and(|soft| soft < hard) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < needed {
        bail!("RLIMIT_NOFILE is {now} (hard {hard}); {needed} descriptors are needed: raise the hard limit");
    }
    Ok(now)
}

/// A `meridian-zone` process (the release binary next to this one).
pub struct ZoneProcess {
    child: std::process::Child,
    pub api: String,
    pub xds: std::net::SocketAddr,
}

impl ZoneProcess {
    /// Starts a zone named `zone` joined to the global at `join` with `token`.
    pub fn start(
        dir: &Path,
        zone: &str,
        join: &Join,
        token: &str,
        store: &str,
        ingress: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<ZoneProcess> {
        let token_file = dir.join(format!("{zone}.token"));
        let ca_file = dir.join(format!("{zone}-ca.pem"));
        std::fs::write(&token_file, token)?;
        std::fs::write(&ca_file, &join.ca_pem)?;
        let api_port = free_port()?;
        let xds_port = free_port()?;
        let admin_token_file = dir.join(format!("{zone}-admin-token"));
        let mut args: Vec<String> = vec![
            "run".into(),
            "--zone".into(),
            zone.into(),
            "--global-address".into(),
            join.address.clone(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--ca-file".into(),
            ca_file.display().to_string(),
            "--api-addr".into(),
            format!("127.0.0.1:{api_port}"),
            "--xds-addr".into(),
            format!("127.0.0.1:{xds_port}"),
            "--store".into(),
            store.into(),
            "--data-dir".into(),
            dir.join(format!("{zone}-data")).display().to_string(),
            "--admin-token-file".into(),
            admin_token_file.display().to_string(),
        ];
        if let Some(a) = ingress {
            args.extend(["--ingress-address".into(), a.into()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = std::process::Command::new(sibling_binary("meridian-zone")?)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let api = format!("http://127.0.0.1:{api_port}");
        crate::kds::register_token_file(&api, &admin_token_file);
        Ok(ZoneProcess {
            child,
            api,
            xds: std::net::SocketAddr::from(([127, 0, 0, 1], xds_port)),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The zone's xDS CA and a dataplane token of [`MESH`] from the global
    /// at `global_api`.
    pub async fn access(&self, agent: &ureq::Agent, global_api: &str) -> anyhow::Result<XdsAccess> {
        let (status, ca) = crate::kds::http(agent, "GET", format!("{}/xds-ca", self.api), None).await?;
        if status != 200 {
            bail!("GET /xds-ca answered {status}: {ca}");
        }
        let (status, token) = crate::kds::http(
            agent,
            "POST",
            format!("{global_api}/tokens/dataplane"),
            Some(serde_json::json!({"mesh": MESH, "validFor": "24h"})),
        )
        .await?;
        if status != 200 {
            bail!("POST /tokens/dataplane answered {status}: {token}");
        }
        // The zone verifies the token with the mesh's key, which KDS brings.
        let keys = format!("{}/meshes/{MESH}/dataplane-token-keys", self.api);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = crate::kds::http(agent, "GET", keys.clone(), None).await?;
            if status == 200 && body.contains("\"key-") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the zone has no dataplane token key of {MESH} after 30 s: {status} {body}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(XdsAccess {
            ca_pem: ca.into(),
            token: Some(token.trim().into()),
        })
    }
}

impl Drop for ZoneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PUTs documents from `threads` blocking HTTP clients; returns the time taken.
pub async fn put_all(urls_and_docs: Vec<(String, Value)>, threads: usize) -> anyhow::Result<Duration> {
    let agent = agent();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let start = Instant::now();
        let chunks: Vec<Vec<(String, Value)>> = {
            let mut c: Vec<Vec<(String, Value)>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
            for (i, item) in urls_and_docs.into_iter().enumerate() {
                c[i % threads.max(1)].push(item);
            }
            c
        };
        std::thread::scope(|s| -> anyhow::Result<()> {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let agent = agent.clone();
                    s.spawn(move || -> anyhow::Result<()> {
                        for (url, doc) in chunk {
                            let mut r = agent.put(&url).send_json(&doc)?;
                            let status = r.status().as_u16();
                            if !(200..300).contains(&status) {
                                let text = r.body_mut().read_to_string().unwrap_or_default();
                                bail!("PUT {url} answered {status}: {text}");
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow!("a PUT thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(start.elapsed())
    })
    .await?
}

/// What the benchmark's clients present to the zone: the CA its xDS server
/// is verified with, and a dataplane token (`None` against a zone run with
/// `--dp-auth none`).
#[derive(Clone)]
pub struct XdsAccess {
    pub ca_pem: std::sync::Arc<str>,
    pub token: Option<std::sync::Arc<str>>,
}

/// The ADS clients of a run and the events they report.
pub struct Fleet {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub target: watch::Sender<Target>,
    /// The clients that received SDS secrets while connecting.
    pub with_secrets: std::collections::BTreeSet<usize>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Fleet {
    /// Connects one client per spec, each over its own connection, at most
    /// `concurrency` configuring at once; returns when all are ready.
    pub async fn connect(
        xds: std::net::SocketAddr,
        access: XdsAccess,
        specs: Vec<ClientSpec>,
        concurrency: usize,
        timeout: Duration,
    ) -> anyhow::Result<(Fleet, Duration)> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (target, target_rx) = watch::channel(Target::Nothing);
        let total = specs.len();
        let mut pending = specs.into_iter();
        let mut tasks = Vec::with_capacity(total);
        let mut ready = 0usize;
        let mut with_secrets = std::collections::BTreeSet::new();
        let start = Instant::now();
        let mut last_ready = start;
        let deadline = tokio::time::Instant::now() + timeout;
        while ready < total {
            while tasks.len() < total && tasks.len() - ready < concurrency.max(1) {
                let Some(spec) = pending.next() else { break };
                let (events_tx, target_rx) = (events_tx.clone(), target_rx.clone());
                let access = access.clone();
                tasks.push(tokio::spawn(async move {
                    let index = spec.index;
                    let channel = match ads_client::connect(xds, &access.ca_pem).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = events_tx.send(Event::Failed {
                                client: index,
                                error: format!("{e:#}"),
                            });
                            return Err(e);
                        }
                    };
                    let token = spec.token.clone().or(access.token.clone());
                    ads_client::run(channel, token, spec, target_rx, events_tx).await
                }));
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => bail!("{ready} of {total} clients configured after {timeout:?}"),
                Ok(None) => bail!("client events closed"),
                Ok(Some(Event::Ready { at })) => {
                    ready += 1;
                    last_ready = last_ready.max(at);
                    if total >= 1000 && ready.is_multiple_of(total / 10) {
                        eprintln!(
                            "{ready} of {total} clients configured after {:.1} s",
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
                Ok(Some(Event::Failed { client, error })) => bail!("client {client} failed: {error}"),
                Ok(Some(Event::Secret { client, .. })) => {
                    with_secrets.insert(client);
                }
                Ok(Some(Event::Matched { .. })) => {}
            }
        }
        Ok((
            Fleet {
                events,
                target,
                with_secrets,
                tasks,
            },
            last_ready.saturating_duration_since(start),
        ))
    }

    /// Waits until `want` clients matched round `round`; per-client times
    /// from `start`.
    pub async fn wait_round(
        &mut self,
        round: u64,
        want: usize,
        start: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Vec<(usize, Duration)>> {
        let mut got = Vec::with_capacity(want);
        let deadline = tokio::time::Instant::now() + timeout;
        while got.len() < want {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => bail!(
                    "round {round}: {} of {want} clients had the change after {timeout:?}",
                    got.len()
                ),
                Ok(None) => bail!("client events closed"),
                Ok(Some(Event::Matched { client, round: r, at })) if r == round => {
                    got.push((client, at.saturating_duration_since(start)))
                }
                Ok(Some(Event::Failed { client, error })) => bail!("client {client} failed: {error}"),
                Ok(Some(_)) => {}
            }
        }
        Ok(got)
    }

    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

fn kib_per(delta_kib: u64, n: usize) -> String {
    format!("{:.1} KiB", delta_kib as f64 / n.max(1) as f64)
}

/// `xds-scale`: every kind in `opts.kinds`, each with fresh processes.
pub async fn scale(opts: ScaleOptions) -> anyhow::Result<()> {
    let limit = raise_nofile(opts.dataplanes as u64 + 1024)?;
    for kind in &opts.kinds {
        run_one(&opts, *kind, limit).await?;
    }
    Ok(())
}

async fn run_one(opts: &ScaleOptions, kind: Kind, nofile: u64) -> anyhow::Result<()> {
    let n = opts.dataplanes;
    let dir = tempfile::tempdir()?;
    let agent = agent();
    let (mut global, _) = GlobalProcess::start(&dir.path().join("global-data"), "embedded", None)?;
    wait_ready(&agent, &global.api, Duration::from_secs(60)).await?;
    let join = global.join(&agent).await?;
    // The mesh with its default policies, as a user would create it.
    put_ok(
        &agent,
        format!("{}/meshes/{MESH}", global.api),
        json!({"type": "Mesh", "name": MESH}),
    )
    .await?;
    let token = global.token(&agent, "zone-1").await?;
    let zone = ZoneProcess::start(dir.path(), "zone-1", &join, &token, &opts.zone_store, None, &[])?;
    wait_ready(&agent, &zone.api, Duration::from_secs(60)).await?;
    wait_present(&agent, &format!("{}/meshes", zone.api), vec![MESH.to_string()]).await?;
    let (gpid, zpid) = (global.pid(), zone.pid());
    let rss = |pid: u32| peak_rss_kib(pid).map(|(_, rss)| rss).unwrap_or(0);
    let (zone_start, global_start) = (rss(zpid), rss(gpid));

    // Register the dataplanes at the zone's API.
    let docs: Vec<(String, Value)> = (0..n)
        .map(|i| {
            (
                format!("{}/meshes/{MESH}/dataplanes/dp-{i}", zone.api),
                dataplane(MESH, i, opts.services),
            )
        })
        .collect();
    let registered_in = put_all(docs, 8).await?;
    // Synced to the global, checked one by one (a list would inflate its RSS).
    let t = Instant::now();
    wait_present(
        &agent,
        &format!("{}/meshes/{MESH}/dataplanes", global.api),
        (0..n).map(|i| format!("zone-1.dp-{i}")).collect(),
    )
    .await?;
    let synced_in = registered_in + t.elapsed();
    let (zone_registered, global_registered) = (rss(zpid), rss(gpid));

    // Connect the clients.
    let own_before = rss(std::process::id());
    let zone_cpu0 = cpu_time_of(&zpid.to_string());
    let specs = (0..n).map(|i| client_spec(MESH, i, opts.services, kind)).collect();
    let access = zone.access(&agent, &global.api).await?;
    let (mut fleet, connected_in) = Fleet::connect(
        zone.xds,
        access,
        specs,
        opts.connect_concurrency,
        Duration::from_secs(3600),
    )
    .await?;
    let connect_cpu = cpu_time_of(&zpid.to_string()).saturating_sub(zone_cpu0);
    let (zone_connected, global_connected) = (rss(zpid), rss(gpid));
    let own_clients = rss(std::process::id()).saturating_sub(own_before);

    // Policy changes at the global.
    let mut rounds = Vec::with_capacity(opts.rounds);
    for r in 1..=opts.rounds as u64 {
        let timeout = round_timeout(r);
        let _ = fleet.target.send(Target::RouteTimeout { round: r, timeout });
        let (zc, gc) = (cpu_time_of(&zpid.to_string()), cpu_time_of(&gpid.to_string()));
        let url = format!("{}/meshes/{MESH}/meshtimeouts/{PROBE_POLICY}", global.api);
        let (start, took, status, text) = timed_http(&agent, "PUT", url, Some(probe_policy(MESH, timeout))).await?;
        if !(200..300).contains(&status) {
            bail!("PUT {PROBE_POLICY} answered {status}: {text}");
        }
        let times = fleet
            .wait_round(r, n, start, Duration::from_secs(3600))
            .await
            .with_context(|| format!("round {r}"))?;
        let all = times.iter().map(|(_, d)| *d).max().unwrap_or_default();
        // CPU until every client had it.
        let zone_cpu = cpu_time_of(&zpid.to_string()).saturating_sub(zc);
        let global_cpu = cpu_time_of(&gpid.to_string()).saturating_sub(gc);
        rounds.push((
            r,
            took,
            summarize(times.into_iter().map(|(_, d)| d).collect()),
            all,
            zone_cpu,
            global_cpu,
        ));
    }
    let (zone_hwm, zone_end) = peak_rss_kib(zpid)?;
    let (global_hwm, global_end) = peak_rss_kib(gpid)?;

    println!(
        "xds-scale, {kind:?}: the real meridian-global (embedded store) and meridian-zone ({} store) processes; \
         {n} dataplanes of {} services registered at the zone's API; {n} ADS clients in this process, one HTTP/2 \
         connection each, at most {} configuring at once; RLIMIT_NOFILE {nofile}\n",
        opts.zone_store, opts.services, opts.connect_concurrency
    );
    println!("| {:<52} | {:>16} |", "measure", "value");
    println!("|{}|{}|", "-".repeat(54), "-".repeat(18));
    let rows: Vec<(String, String)> = vec![
        (
            format!("register {n} dataplanes (zone API, 8 clients)"),
            format!("{:.2} s", registered_in.as_secs_f64()),
        ),
        (
            "  … and all of them at the global".into(),
            format!("{:.2} s", synced_in.as_secs_f64()),
        ),
        (
            format!("connect {n} clients, all configured"),
            format!("{:.2} s", connected_in.as_secs_f64()),
        ),
        (
            "  zone CPU during the connects".into(),
            format!("{:.1} s", connect_cpu.as_secs_f64()),
        ),
        ("zone VmRSS, started, mesh synced".into(), mib(zone_start)),
        (format!("zone VmRSS, {n} dataplanes registered"), mib(zone_registered)),
        (format!("zone VmRSS, {n} clients connected"), mib(zone_connected)),
        (
            "  per connected dataplane (connect step)".into(),
            kib_per(zone_connected.saturating_sub(zone_registered), n),
        ),
        (
            "  per dataplane (registration + connection)".into(),
            kib_per(zone_connected.saturating_sub(zone_start), n),
        ),
        (
            format!("zone VmRSS after {} policy changes", opts.rounds),
            mib(zone_end),
        ),
        ("zone peak RSS (VmHWM)".into(), mib(zone_hwm)),
        ("global VmRSS, started".into(), mib(global_start)),
        (format!("global VmRSS, {n} dataplanes synced"), mib(global_registered)),
        ("global VmRSS, clients connected".into(), mib(global_connected)),
        ("global VmRSS at the end".into(), mib(global_end)),
        ("global peak RSS (VmHWM)".into(), mib(global_hwm)),
        (format!("this process: {n} clients"), kib_per(own_clients, n)),
    ];
    for (k, v) in rows {
        println!("| {k:<52} | {v:>16} |");
    }
    println!();
    println!(
        "MeshTimeout PUT at the global → ACK by each client of the response carrying it (ms); \
         CPU of the zone and the global from the PUT until the last ACK:\n"
    );
    println!("| round | PUT resp |     n |      p50 |      p90 |      p99 |      max | zone CPU ms | global CPU ms |");
    println!("|-------|----------|-------|----------|----------|----------|----------|-------------|---------------|");
    for (r, took, s, all, zone_cpu, global_cpu) in &rounds {
        println!(
            "| {r:>5} | {:>8} | {:>5} | {:>8} | {:>8} | {:>8} | {:>8} | {:>11} | {:>13} |",
            crate::kds::ms(*took),
            s.n,
            crate::kds::ms(s.p50),
            crate::kds::ms(s.p90),
            crate::kds::ms(s.p99),
            crate::kds::ms(*all),
            zone_cpu.as_millis(),
            global_cpu.as_millis()
        );
    }
    println!();
    fleet.stop();
    drop(zone);
    global.stop().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_policy_is_a_valid_mesh_timeout() {
        let doc = meridian_core::decode::decode_value(probe_policy(MESH, round_timeout(3))).unwrap();
        assert_eq!(doc.key.name, PROBE_POLICY);
        let dp = meridian_core::decode::decode_value(dataplane(MESH, 258, 100)).unwrap();
        assert_eq!(dp.key.name, "dp-258");
    }
}
