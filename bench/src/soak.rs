//! Soak: a `meridian-global` and zone processes (release binaries) for a
//! long time, with dataplanes churning at the zones and policies changing
//! at the global. Every sample it records each process's RSS and probes
//! both directions of every stream (a policy written at the global seen by
//! every zone; a dataplane written at each zone seen by the global); at the
//! end it checks that the stores converged. Prints the samples and a
//! summary: RSS growth per process after warm-up, the slowest probe, the
//! probes that timed out (a stuck stream), convergence.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use meridian_store::testing::EtcdServer;
use serde_json::{json, Value};

use crate::kds::{agent, http, mib, put_ok, wait_ready, GlobalProcess};
use crate::xds_scale::ZoneProcess;

/// What one soak run does.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub minutes: u64,
    pub zones: usize,
    pub dataplanes: usize,
    /// The global's store: embedded or etcd.
    pub store: String,
    pub sample_secs: u64,
    /// Dataplane changes per second, over all zones.
    pub churn_per_sec: u64,
}

const MESH: &str = "soak";
/// A probe that takes longer than this counts as a stuck stream.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

fn dataplane(name: &str, service: usize) -> Value {
    json!({"type": "Dataplane", "mesh": MESH, "name": name,
           "networking": {"address": "10.1.0.1",
                          "inbound": [{"port": 8080, "tags": {"kuma.io/service": format!("svc-{service}")}}]}})
}

fn timeout_policy(name: &str, secs: u64) -> Value {
    json!({"type": "MeshTimeout", "mesh": MESH, "name": name,
           "spec": {"targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": format!("{secs}s")}}]}})
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn delete_ok(agent: &ureq::Agent, url: String) -> anyhow::Result<()> {
    let agent = agent.clone();
    let status =
        tokio::task::spawn_blocking(move || agent.delete(&url).call().map(|r| (url, r.status().as_u16()))).await??;
    if status.1 / 100 != 2 {
        bail!("DELETE {} answered {}", status.0, status.1);
    }
    Ok(())
}

/// Every item name of a list, following `next` pages.
async fn all_names(agent: &ureq::Agent, url: String) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut next = Some(format!("{url}?size=1000"));
    while let Some(u) = next {
        let (status, text) = http(agent, "GET", u.clone(), None).await?;
        if status != 200 {
            bail!("GET {u} answered {status}: {text}");
        }
        let v: Value = serde_json::from_str(&text)?;
        for item in v["items"].as_array().into_iter().flatten() {
            if let Some(n) = item["name"].as_str() {
                out.insert(n.to_string());
            }
        }
        next = v["next"].as_str().map(str::to_string);
    }
    Ok(out)
}

/// Waits until `url` answers 200 with a body containing `needle`; how long.
async fn seen(agent: &ureq::Agent, url: String, needle: &str) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < PROBE_TIMEOUT {
        if let Ok((200, body)) = http(agent, "GET", url.clone(), None).await {
            if body.contains(needle) {
                return Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub async fn soak(opts: SoakOptions) -> anyhow::Result<()> {
    let agent = agent();
    let dir = tempfile::tempdir()?;
    let etcd = match opts.store.as_str() {
        "etcd" => Some(EtcdServer::start().await?),
        _ => None,
    };
    let (global, _) = GlobalProcess::start(&dir.path().join("global"), &opts.store, etcd.as_ref())?;
    wait_ready(&agent, &global.api, Duration::from_secs(60)).await?;
    put_ok(
        &agent,
        format!("{}/meshes/{MESH}", global.api),
        json!({"type": "Mesh", "name": MESH}),
    )
    .await?;
    let join = global.join(&agent).await?;
    let mut zones = Vec::new();
    for z in 0..opts.zones {
        let name = format!("zone-{z}");
        let token = global.token(&agent, &name).await?;
        let zone = ZoneProcess::start(dir.path(), &name, &join, &token, "memory", None, &[])?;
        wait_ready(&agent, &zone.api, Duration::from_secs(60)).await?;
        zones.push((name, zone));
    }
    for (name, zone) in &zones {
        seen(&agent, format!("{}/meshes/{MESH}", zone.api), MESH)
            .await
            .ok_or_else(|| anyhow!("{name} never got mesh {MESH}"))?;
    }
    // The fleet: dataplanes spread over the zones.
    let per_zone = opts.dataplanes / opts.zones.max(1);
    let mut fleets: Vec<std::collections::VecDeque<String>> = Vec::new();
    let mut serial = 0usize;
    for (_, zone) in &zones {
        let mut fleet = std::collections::VecDeque::new();
        for _ in 0..per_zone {
            let name = format!("dp-{serial}");
            put_ok(
                &agent,
                format!("{}/meshes/{MESH}/dataplanes/{name}", zone.api),
                dataplane(&name, serial % 50),
            )
            .await?;
            fleet.push_back(name);
            serial += 1;
        }
        fleets.push(fleet);
    }
    println!(
        "soak: {} zones, {} dataplanes ({} changes/s), policies changing every 5 s, {} min on the {} store",
        opts.zones,
        per_zone * opts.zones,
        opts.churn_per_sec,
        opts.minutes,
        opts.store
    );
    let mut header = format!("| {:>6} | {:>10} |", "minute", "global MiB");
    for (name, _) in &zones {
        header.push_str(&format!(" {name:>8} |"));
    }
    header.push_str(" probe global→zones | probe zones→global |");
    println!("{header}");

    let started = Instant::now();
    let end = started + Duration::from_secs(opts.minutes * 60);
    let tick = Duration::from_millis(1000 / opts.churn_per_sec.max(1));
    let mut next_sample = started;
    let mut next_policy = started;
    let mut samples: Vec<(f64, Vec<u64>)> = Vec::new();
    let mut stuck = 0usize;
    let mut slowest = Duration::ZERO;
    let mut changes = 0u64;
    let mut policy_round = 0u64;
    let mut round = 0usize;
    while Instant::now() < end {
        // One dataplane change: the oldest of a zone goes, a new one comes.
        let z = round % zones.len();
        round += 1;
        if let Some(old) = fleets[z].pop_front() {
            delete_ok(&agent, format!("{}/meshes/{MESH}/dataplanes/{old}", zones[z].1.api)).await?;
            let name = format!("dp-{serial}");
            put_ok(
                &agent,
                format!("{}/meshes/{MESH}/dataplanes/{name}", zones[z].1.api),
                dataplane(&name, serial % 50),
            )
            .await?;
            fleets[z].push_back(name);
            serial += 1;
            changes += 1;
        }
        if Instant::now() >= next_policy {
            policy_round += 1;
            let name = format!("churn-{}", policy_round % 20);
            put_ok(
                &agent,
                format!("{}/meshes/{MESH}/meshtimeouts/{name}", global.api),
                timeout_policy(&name, policy_round),
            )
            .await?;
            next_policy += Duration::from_secs(5);
        }
        if Instant::now() >= next_sample {
            // Probes: a policy to every zone, a dataplane from every zone.
            let marker = format!("{}s", 100_000 + samples.len());
            put_ok(
                &agent,
                format!("{}/meshes/{MESH}/meshtimeouts/probe", global.api),
                json!({"type": "MeshTimeout", "mesh": MESH, "name": "probe",
                       "spec": {"targetRef": {"kind": "Mesh"},
                                "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": marker}}]}}),
            )
            .await?;
            let mut down = Duration::ZERO;
            for (name, zone) in &zones {
                match seen(
                    &agent,
                    format!("{}/meshes/{MESH}/meshtimeouts/probe", zone.api),
                    &marker,
                )
                .await
                {
                    Some(t) => down = down.max(t),
                    None => {
                        stuck += 1;
                        println!("probe: {name} did not get the probe policy within {PROBE_TIMEOUT:?}");
                    }
                }
            }
            let mut up = Duration::ZERO;
            for (name, zone) in &zones {
                let dp = format!("probe-{}", samples.len());
                put_ok(
                    &agent,
                    format!("{}/meshes/{MESH}/dataplanes/{dp}", zone.api),
                    dataplane(&dp, 0),
                )
                .await?;
                match seen(
                    &agent,
                    format!("{}/meshes/{MESH}/dataplanes/{name}.{dp}", global.api),
                    &dp,
                )
                .await
                {
                    Some(t) => up = up.max(t),
                    None => {
                        stuck += 1;
                        println!("probe: the global did not get {name}'s probe dataplane within {PROBE_TIMEOUT:?}");
                    }
                }
                delete_ok(&agent, format!("{}/meshes/{MESH}/dataplanes/{dp}", zone.api)).await?;
            }
            slowest = slowest.max(down).max(up);
            let mut rss = vec![rss_kib(global.pid())];
            rss.extend(zones.iter().map(|(_, z)| rss_kib(z.pid())));
            let minute = started.elapsed().as_secs_f64() / 60.0;
            let mut row = format!("| {minute:>6.1} | {:>10} |", mib(rss[0]));
            for r in &rss[1..] {
                row.push_str(&format!(" {:>8} |", mib(*r)));
            }
            row.push_str(&format!(
                " {:>18} | {:>18} |",
                format!("{down:.1?}"),
                format!("{up:.1?}")
            ));
            println!("{row}");
            samples.push((minute, rss));
            next_sample += Duration::from_secs(opts.sample_secs);
        }
        tokio::time::sleep(tick).await;
    }

    // Converged: the global holds exactly the zones' dataplanes, every zone
    // every policy of the global.
    let converge_start = Instant::now();
    let converged = loop {
        let global_dps = all_names(&agent, format!("{}/meshes/{MESH}/dataplanes", global.api)).await?;
        let global_policies = all_names(&agent, format!("{}/meshes/{MESH}/meshtimeouts", global.api)).await?;
        let mut want = BTreeSet::new();
        let mut zones_ok = true;
        for (name, zone) in &zones {
            for dp in all_names(&agent, format!("{}/meshes/{MESH}/dataplanes", zone.api)).await? {
                want.insert(format!("{name}.{dp}"));
            }
            let policies = all_names(&agent, format!("{}/meshes/{MESH}/meshtimeouts", zone.api)).await?;
            zones_ok &= policies == global_policies;
        }
        if zones_ok && want == global_dps {
            break Some(converge_start.elapsed());
        }
        if converge_start.elapsed() > Duration::from_secs(120) {
            println!(
                "not converged: the global has {} dataplanes, the zones {}; policies equal everywhere: {zones_ok}",
                global_dps.len(),
                want.len()
            );
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // RSS growth after warm-up: from the first sample past a tenth of the
    // run to the last.
    let warm = samples
        .iter()
        .find(|(m, _)| *m >= opts.minutes as f64 / 10.0)
        .or(samples.first())
        .cloned();
    let last = samples.last().cloned();
    if let (Some((wm, w)), Some((lm, l))) = (warm, last) {
        let names: Vec<String> = std::iter::once("global".to_string())
            .chain(zones.iter().map(|(n, _)| n.clone()))
            .collect();
        let mut worst: f64 = 0.0;
        for (i, name) in names.iter().enumerate() {
            let growth = (l[i] as f64 - w[i] as f64) / (w[i].max(1) as f64) * 100.0;
            worst = worst.max(growth);
            println!(
                "{name}: RSS {} at minute {wm:.1}, {} at minute {lm:.1} ({growth:+.1} %)",
                mib(w[i]),
                mib(l[i])
            );
        }
        println!(
            "summary: {changes} dataplane changes, {policy_round} policy writes; largest RSS growth after warm-up {worst:+.1} %; \
             slowest probe {slowest:?}; {stuck} probes timed out; converged: {}",
            converged.map(|t| format!("yes, {t:?} after the churn stopped")).unwrap_or_else(|| "NO".into())
        );
    }
    drop(zones);
    drop(global);
    drop(etcd);
    Ok(())
}
