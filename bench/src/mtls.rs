//! `mtls`: what mesh mTLS costs (issue 9).
//!
//! 1. **Issuance, in this process**: N workload certificates (P-256, the
//!    URI SANs of a sidecar) from a real zone intermediate, each timed;
//!    beside them, as the baseline, the RSA 2048 key a workload certificate
//!    of Kuma's type would need (key generation only, `--rsa-samples`).
//! 2. **At a zone, with the real processes** (`meridian-global`,
//!    `meridian-zone`, release builds): N dataplanes; N sidecar ADS clients
//!    connect to the mesh without mTLS, then (fresh clients) with mTLS on;
//!    each mode: the time until every client is configured (SDS secrets
//!    included with mTLS), the zone's CPU meanwhile, and R MeshTimeout
//!    changes at the global timed to each client's ACK.
//! 3. **Renewal of N certificates**: with mTLS on and certificates of
//!    `--lifetime`, the benchmark waits until every client has received a
//!    renewed certificate (an SDS response after the connect step), sampling
//!    the zone's CPU every 250 ms: the window the renewals took, the zone's
//!    CPU over it, and the busiest second against an idle one before.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use meridian_server::mtls::pki;
use serde_json::json;

use crate::ads_client::{Event, Target};
use crate::kds::{agent, cpu_time_of, put_ok, timed_http, wait_present, wait_ready, GlobalProcess};
use crate::summarize;
use crate::xds_scale::{
    client_spec, dataplane, probe_policy, put_all, raise_nofile, round_timeout, Fleet, Kind, ZoneProcess, MESH,
    PROBE_POLICY,
};

pub struct MtlsOptions {
    pub dataplanes: usize,
    pub services: usize,
    pub issue: usize,
    pub rsa_samples: usize,
    pub lifetime: Duration,
    pub rounds: usize,
    pub connect_concurrency: usize,
}

fn own_cpu() -> Duration {
    cpu_time_of(&std::process::id().to_string())
}

/// Part 1: issuance in this process.
fn issuance(n: usize, rsa_samples: usize) -> anyhow::Result<()> {
    let now = Utc::now();
    let (root, _) = pki::generate_root(MESH, 2048, Duration::from_secs(10 * 365 * 86_400), now)?;
    let (key, public) = pki::generate_intermediate_key()?;
    let (cert, _) = pki::sign_intermediate(&root, MESH, "zone-1", &public, now)?;
    let intermediate = pki::Intermediate::new(&key, &cert)?;
    let mut times = Vec::with_capacity(n);
    let cpu0 = own_cpu();
    let start = Instant::now();
    for i in 0..n {
        let service = format!("svc-{}", i % 100);
        let tags = [
            ("kuma.io/service".to_string(), vec![service.clone()]),
            ("kuma.io/protocol".to_string(), vec!["http".to_string()]),
        ]
        .into_iter()
        .collect();
        let t = Instant::now();
        let c = intermediate.issue(MESH, &[service], &tags, Duration::from_secs(86_400), now)?;
        times.push(t.elapsed());
        std::hint::black_box(c);
    }
    let wall = start.elapsed();
    let cpu = own_cpu().saturating_sub(cpu0);
    let s = summarize(times);
    let mut rsa = Vec::with_capacity(rsa_samples);
    for _ in 0..rsa_samples {
        let t = Instant::now();
        let k = rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048).context("RSA key")?;
        rsa.push(t.elapsed());
        std::hint::black_box(k);
    }
    let r = summarize(rsa);
    println!(
        "mtls, issuance: {n} workload certificates (P-256 key, URI SANs spiffe:// and kuma://, signed by a zone \
         intermediate) issued one after another in this process, each timed; baseline: {rsa_samples} RSA 2048 keys \
         (what a certificate with Kuma's key type needs before signing)\n"
    );
    println!("| {:<48} | {:>14} |", "measure", "value");
    println!("|{}|{}|", "-".repeat(50), "-".repeat(16));
    for (k, v) in [
        (
            "one certificate, p50".to_string(),
            format!("{:.1} µs", s.p50.as_secs_f64() * 1e6),
        ),
        ("  p99".into(), format!("{:.1} µs", s.p99.as_secs_f64() * 1e6)),
        ("  max".into(), format!("{:.1} µs", s.max.as_secs_f64() * 1e6)),
        (
            format!("{n} certificates, wall"),
            format!("{:.2} s", wall.as_secs_f64()),
        ),
        (
            format!("{n} certificates, CPU of this process"),
            format!("{:.2} s", cpu.as_secs_f64()),
        ),
        (
            "baseline: one RSA 2048 key, p50".into(),
            format!("{:.1} ms", r.p50.as_secs_f64() * 1e3),
        ),
        ("  p99".into(), format!("{:.1} ms", r.p99.as_secs_f64() * 1e3)),
    ] {
        println!("| {k:<48} | {v:>14} |");
    }
    println!();
    Ok(())
}

/// One mode's connect and policy rounds.
struct ModeResult {
    connected_in: Duration,
    zone_cpu: Duration,
    secrets: usize,
    rounds: Vec<crate::Summary>,
}

async fn connect_and_change(
    zone: &ZoneProcess,
    global_api: &str,
    opts: &MtlsOptions,
    round_base: u64,
) -> anyhow::Result<(Fleet, ModeResult, Instant)> {
    let agent = agent();
    let n = opts.dataplanes;
    let zpid = zone.pid().to_string();
    let cpu0 = cpu_time_of(&zpid);
    let specs = (0..n)
        .map(|i| client_spec(MESH, i, opts.services, Kind::Sidecar))
        .collect();
    let access = zone.access(&agent, global_api).await?;
    let (mut fleet, connected_in) = Fleet::connect(
        zone.xds,
        access,
        specs,
        opts.connect_concurrency,
        Duration::from_secs(3600),
    )
    .await?;
    let connected_at = Instant::now();
    let zone_cpu = cpu_time_of(&zpid).saturating_sub(cpu0);
    let mut secrets = fleet.with_secrets.clone();
    while let Ok(ev) = fleet.events.try_recv() {
        if let Event::Secret { client, .. } = ev {
            secrets.insert(client);
        }
    }
    let mut rounds = Vec::new();
    for r in 1..=opts.rounds as u64 {
        let round = round_base + r;
        let timeout = round_timeout(round);
        let _ = fleet.target.send(Target::RouteTimeout { round, timeout });
        let url = format!("{global_api}/meshes/{MESH}/meshtimeouts/{PROBE_POLICY}");
        let (start, _, status, text) = timed_http(&agent, "PUT", url, Some(probe_policy(MESH, timeout))).await?;
        if !(200..300).contains(&status) {
            bail!("PUT {PROBE_POLICY} answered {status}: {text}");
        }
        let times = fleet.wait_round(round, n, start, Duration::from_secs(600)).await?;
        rounds.push(summarize(times.into_iter().map(|(_, d)| d).collect()));
    }
    Ok((
        fleet,
        ModeResult {
            connected_in,
            zone_cpu,
            secrets: secrets.len(),
            rounds,
        },
        connected_at,
    ))
}

pub async fn mtls(opts: MtlsOptions) -> anyhow::Result<()> {
    tokio::task::spawn_blocking({
        let (n, r) = (opts.issue, opts.rsa_samples);
        move || issuance(n, r)
    })
    .await??;
    if opts.dataplanes == 0 {
        return Ok(());
    }
    let n = opts.dataplanes;
    let nofile = raise_nofile(n as u64 + 1024)?;
    let dir = tempfile::tempdir()?;
    let agent = agent();
    let (mut global, _) = GlobalProcess::start(&dir.path().join("global-data"), "embedded", None)?;
    wait_ready(&agent, &global.api, Duration::from_secs(60)).await?;
    let join = global.join(&agent).await?;
    put_ok(
        &agent,
        format!("{}/meshes/{MESH}", global.api),
        json!({"type": "Mesh", "name": MESH}),
    )
    .await?;
    let token = global.token(&agent, "zone-1").await?;
    let zone = ZoneProcess::start(dir.path(), "zone-1", &join, &token, "memory", None, &[])?;
    wait_ready(&agent, &zone.api, Duration::from_secs(60)).await?;
    wait_present(&agent, &format!("{}/meshes", zone.api), vec![MESH.to_string()]).await?;
    let docs = (0..n)
        .map(|i| {
            (
                format!("{}/meshes/{MESH}/dataplanes/dp-{i}", zone.api),
                dataplane(MESH, i, opts.services),
            )
        })
        .collect();
    put_all(docs, 8).await?;

    // Without mTLS.
    let (fleet, off, _) = connect_and_change(&zone, &global.api, &opts, 0).await?;
    fleet.stop();
    eprintln!(
        "without mTLS: {n} configured in {:.2} s",
        off.connected_in.as_secs_f64()
    );

    // With mTLS: the zone's intermediate first, then fresh clients.
    let lifetime = format!("{}s", opts.lifetime.as_secs());
    put_ok(
        &agent,
        format!("{}/meshes/{MESH}", global.api),
        json!({"type": "Mesh", "name": MESH, "mtls": {"enabledBackend": "ca-1", "backends": [
            {"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": lifetime}}}]}}),
    )
    .await?;
    wait_present(
        &agent,
        &format!("{}/meshes/{MESH}/zone-certificates", zone.api),
        vec!["zone-1.ca-1".to_string()],
    )
    .await?;
    let (mut fleet, on, connected_at) = connect_and_change(&zone, &global.api, &opts, 100).await?;
    eprintln!("with mTLS: {n} configured in {:.2} s", on.connected_in.as_secs_f64());
    if on.secrets < n {
        bail!("only {} of {n} clients received SDS secrets", on.secrets);
    }

    // Renewals: every client's identity secret again, after the connects.
    let zpid = zone.pid().to_string();
    let mut renewed: std::collections::BTreeMap<usize, Instant> = Default::default();
    let mut samples: Vec<(Instant, Duration)> = vec![(Instant::now(), cpu_time_of(&zpid))];
    let deadline = connected_at + opts.lifetime * 2;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while renewed.len() < n {
        if Instant::now() > deadline {
            bail!(
                "{} of {n} clients had a renewed certificate after {:?}",
                renewed.len(),
                opts.lifetime * 2
            );
        }
        tokio::select! {
            _ = tick.tick() => samples.push((Instant::now(), cpu_time_of(&zpid))),
            ev = fleet.events.recv() => match ev {
                Some(Event::Secret { client, at }) if at > connected_at => {
                    renewed.entry(client).or_insert(at);
                }
                Some(Event::Failed { client, error }) => bail!("client {client} failed: {error}"),
                Some(_) => {}
                None => bail!("client events closed"),
            },
        }
    }
    samples.push((Instant::now(), cpu_time_of(&zpid)));
    let first = renewed.values().min().copied().unwrap_or(connected_at);
    let last = renewed.values().max().copied().unwrap_or(connected_at);
    let cpu_at = |t: Instant| -> Duration {
        samples
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .or(samples.first())
            .map(|(_, c)| *c)
            .unwrap_or_default()
    };
    let window_cpu = cpu_at(last + Duration::from_millis(500)).saturating_sub(cpu_at(first));
    // The busiest second (over the 250 ms samples), and an idle one before.
    let per_second = |from: Instant, to: Instant| -> f64 {
        let span = to.saturating_duration_since(from).as_secs_f64().max(1e-3);
        cpu_at(to).saturating_sub(cpu_at(from)).as_secs_f64() / span
    };
    let peak = samples
        .windows(5)
        .map(|w| per_second(w[0].0, w[4].0))
        .fold(0.0_f64, f64::max);
    let idle_to = first.checked_sub(Duration::from_secs(1)).unwrap_or(first);
    let idle = per_second(idle_to.checked_sub(Duration::from_secs(4)).unwrap_or(idle_to), idle_to);

    println!(
        "mtls, at a zone: the real meridian-global (embedded) and meridian-zone (memory) processes; {n} sidecar \
         dataplanes of {} services; {n} ADS clients in this process, one HTTP/2 connection (TLS) each, at most {} \
         configuring at once; fresh clients per mode; {} MeshTimeout changes per mode; mTLS: builtin CA, \
         certificates of {}; RLIMIT_NOFILE {nofile}\n",
        opts.services, opts.connect_concurrency, opts.rounds, lifetime
    );
    println!("| {:<56} | {:>14} | {:>14} |", "measure", "without mTLS", "with mTLS");
    println!("|{}|{}|{}|", "-".repeat(58), "-".repeat(16), "-".repeat(16));
    let pct = |a: f64, b: f64| format!("{:+.1} %", (b / a.max(1e-9) - 1.0) * 100.0);
    println!(
        "| {:<56} | {:>14} | {:>14} |",
        format!("connect {n}, all configured (SDS included)"),
        format!("{:.2} s", off.connected_in.as_secs_f64()),
        format!(
            "{:.2} s ({})",
            on.connected_in.as_secs_f64(),
            pct(off.connected_in.as_secs_f64(), on.connected_in.as_secs_f64())
        )
    );
    println!(
        "| {:<56} | {:>14} | {:>14} |",
        "  zone CPU during the connects",
        format!("{:.2} s", off.zone_cpu.as_secs_f64()),
        format!(
            "{:.2} s ({})",
            on.zone_cpu.as_secs_f64(),
            pct(off.zone_cpu.as_secs_f64(), on.zone_cpu.as_secs_f64())
        )
    );
    for (i, (a, b)) in off.rounds.iter().zip(&on.rounds).enumerate() {
        println!(
            "| {:<56} | {:>14} | {:>14} |",
            format!("MeshTimeout PUT → ACK, round {}, p50 / p99 ms", i + 1),
            format!("{} / {}", crate::kds::ms(a.p50), crate::kds::ms(a.p99)),
            format!("{} / {}", crate::kds::ms(b.p50), crate::kds::ms(b.p99))
        );
    }
    println!();
    println!(
        "| {:<56} | {:>14} |",
        format!("renewal of {n} certificates ({lifetime} lifetime)"),
        "value"
    );
    println!("|{}|{}|", "-".repeat(58), "-".repeat(16));
    for (k, v) in [
        (
            "first → last renewed certificate at a client".to_string(),
            format!("{:.2} s", last.saturating_duration_since(first).as_secs_f64()),
        ),
        (
            "  first renewal after the connects ended".into(),
            format!("{:.1} s", first.saturating_duration_since(connected_at).as_secs_f64()),
        ),
        (
            "zone CPU over the renewals".into(),
            format!("{:.2} s", window_cpu.as_secs_f64()),
        ),
        (
            "  per certificate (issued, regenerated, sent)".into(),
            format!("{:.0} µs", window_cpu.as_secs_f64() * 1e6 / n as f64),
        ),
        ("zone CPU, busiest second (cores)".into(), format!("{peak:.2}")),
        (
            "zone CPU, a second before the renewals (cores)".into(),
            format!("{idle:.2}"),
        ),
    ] {
        println!("| {k:<56} | {v:>14} |");
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

    /// The benchmark end to end at a smoke size, against the debug binaries:
    /// 20 sidecars get their certificates over SDS and every one of them a
    /// renewed one within the 10 s lifetime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mtls_benchmark_runs_in_a_smoke_size() {
        mtls(MtlsOptions {
            dataplanes: 20,
            services: 4,
            issue: 50,
            rsa_samples: 1,
            lifetime: Duration::from_secs(10),
            rounds: 1,
            connect_concurrency: 10,
        })
        .await
        .unwrap();
    }
}
