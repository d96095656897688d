//! `xds-auth`: what dataplane authentication costs, and how fast a
//! revocation ends a live stream.
//!
//! One real `meridian-global` and one `meridian-zone` process (release
//! builds, the zone on its embedded store with N dataplanes registered at
//! its API). The zone is restarted on the same data between runs, with
//! `--dp-auth none` and `--dp-auth token` alternately (none first in even
//! rounds, token first in odd ones), and N ADS clients connect each time:
//! with `token`, each presents its own dataplane token (issued at the
//! global for its dataplane name). Before each run the benchmark waits until
//! the zone (and the global) are idle; the first round is a warm-up and not
//! counted. Reported per mode: the time until every client is configured and
//! the zone's CPU time meanwhile, each the median of the rounds, and the
//! difference; and, as a floor for what authentication can cost, the time
//! of one token verification as the zone does it, measured in this process.
//!
//! Then revocation: R clients connected with their own tokens; one at a
//! time, `POST /tokens/dataplane/revoke` at the global, timed from the start
//! of the request to the end of that client's stream (global → store →
//! KDS → the zone's replica → the zone closes the stream → the client sees
//! the status).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::ads_client::{ClientSpec, Event};
use crate::kds::{agent, cpu_time_of, header, http, put_ok, row, wait_present, wait_ready, GlobalProcess, Join};
use crate::summarize;
use crate::xds_scale::{client_spec, dataplane, put_all, raise_nofile, Fleet, Kind, XdsAccess, ZoneProcess, MESH};

pub struct AuthOptions {
    pub dataplanes: usize,
    /// Rounds not counted, before `rounds`.
    pub warmup: usize,
    pub services: usize,
    pub kind: Kind,
    pub rounds: usize,
    pub revocations: usize,
    pub connect_concurrency: usize,
}

/// Issues one token per dataplane name at the global, from `threads`
/// blocking HTTP clients.
async fn issue_tokens(api: &str, names: Vec<String>, threads: usize) -> anyhow::Result<Vec<Arc<str>>> {
    let agent = agent();
    let api = api.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Arc<str>>> {
        let threads = threads.max(1);
        let mut out: Vec<Option<Arc<str>>> = vec![None; names.len()];
        std::thread::scope(|s| -> anyhow::Result<()> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (agent, api, names) = (agent.clone(), api.clone(), &names);
                    s.spawn(move || -> anyhow::Result<Vec<(usize, Arc<str>)>> {
                        let mut got = Vec::new();
                        for (i, name) in names.iter().enumerate().skip(t).step_by(threads) {
                            let mut r = agent
                                .post(&format!("{api}/tokens/dataplane"))
                                .send_json(json!({"mesh": MESH, "name": name, "validFor": "24h"}))?;
                            let status = r.status().as_u16();
                            let text = r.body_mut().read_to_string()?;
                            if status != 200 {
                                bail!("POST /tokens/dataplane for {name} answered {status}: {text}");
                            }
                            got.push((i, Arc::from(text.trim())));
                        }
                        Ok(got)
                    })
                })
                .collect();
            for h in handles {
                for (i, t) in h.join().map_err(|_| anyhow::anyhow!("a token thread panicked"))?? {
                    out[i] = Some(t);
                }
            }
            Ok(())
        })?;
        out.into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| anyhow::anyhow!("no token for dataplane {i}")))
            .collect()
    })
    .await?
}

/// The zone's xDS CA; with `key`, waits until the zone has the mesh's
/// token key.
async fn zone_ca(agent: &ureq::Agent, zone: &ZoneProcess, key: bool) -> anyhow::Result<Arc<str>> {
    let (status, ca) = http(agent, "GET", format!("{}/xds-ca", zone.api), None).await?;
    if status != 200 {
        bail!("GET /xds-ca answered {status}: {ca}");
    }
    if key {
        let keys = format!("{}/meshes/{MESH}/dataplane-token-keys", zone.api);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = http(agent, "GET", keys.clone(), None).await?;
            if status == 200 && body.contains("\"key-") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the zone has no token key of {MESH}: {status} {body}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(ca.into())
}

struct Zone<'a> {
    dir: &'a Path,
    join: &'a Join,
    zone_token: &'a str,
}

impl Zone<'_> {
    /// The zone process on its data dir, with `--dp-auth mode`.
    async fn start(&self, agent: &ureq::Agent, mode: &str) -> anyhow::Result<ZoneProcess> {
        let zone = ZoneProcess::start(
            self.dir,
            "zone-1",
            self.join,
            self.zone_token,
            "embedded",
            None,
            &["--dp-auth", mode],
        )?;
        wait_ready(agent, &zone.api, Duration::from_secs(60)).await?;
        wait_present(agent, &format!("{}/meshes", zone.api), vec![MESH.to_string()]).await?;
        Ok(zone)
    }
}

/// Waits until the processes `pids` have used less than 5 % of one core for
/// two consecutive half seconds (at most a minute).
async fn settle(pids: &[u32]) {
    let cpu = || -> Duration { pids.iter().map(|p| cpu_time_of(&p.to_string())).sum() };
    let step = Duration::from_millis(500);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet = 0;
    let mut last = cpu();
    while quiet < 2 && Instant::now() < deadline {
        tokio::time::sleep(step).await;
        let now = cpu();
        quiet = if now.saturating_sub(last) < step / 20 {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
}

/// One verification as the zone does it (`DataplaneTokenVerifier` over a
/// replica holding the mesh's key), over `n` distinct tokens: p50 and p99
/// per token.
async fn verification_cost(n: usize) -> anyhow::Result<(Duration, Duration)> {
    use meridian_server::identity::dataplane::{DataplaneTokenIssuer, DataplaneTokenVerifier, IssueRequest};
    use meridian_store::Store;
    let store: Arc<dyn Store> = Arc::new(meridian_store::memory::MemoryStore::new());
    let cache = meridian_store::cache::Cache::start(store.clone());
    cache
        .wait_ready(Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let manager = Arc::new(meridian_server::manager::Manager::new(store, cache));
    let mesh = meridian_core::decode::decode_value(json!({"type": "Mesh", "name": MESH}))?;
    manager.apply(mesh).await?;
    let issuer = DataplaneTokenIssuer::new(manager.clone());
    let verifier = DataplaneTokenVerifier::new(manager);
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let req = IssueRequest {
            mesh: MESH.into(),
            name: Some(format!("dp-{i}")),
            valid_for: Duration::from_secs(3600),
            ..Default::default()
        };
        tokens.push(issuer.issue(&req).await?);
    }
    let mut each = Vec::with_capacity(n);
    for t in &tokens {
        let start = Instant::now();
        verifier.verify(t)?;
        each.push(start.elapsed());
    }
    let s = summarize(each);
    Ok((s.p50, s.p99))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "n/a".into();
    }
    format!("{:+.1} %", (a.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0)
}

pub async fn auth(opts: AuthOptions) -> anyhow::Result<()> {
    let n = opts.dataplanes;
    let nofile = raise_nofile(n as u64 + 2048)?;
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
    let zone_token = global.token(&agent, "zone-1").await?;
    let z = Zone {
        dir: dir.path(),
        join: &join,
        zone_token: &zone_token,
    };

    // The dataplanes, registered once; the tokens, one per dataplane.
    let zone = z.start(&agent, "token").await?;
    let docs: Vec<(String, Value)> = (0..n)
        .map(|i| {
            (
                format!("{}/meshes/{MESH}/dataplanes/dp-{i}", zone.api),
                dataplane(MESH, i, opts.services),
            )
        })
        .collect();
    let registered_in = put_all(docs, 8).await?;
    wait_present(
        &agent,
        &format!("{}/meshes/{MESH}/dataplanes", global.api),
        (0..n).map(|i| format!("zone-1.dp-{i}")).collect(),
    )
    .await?;
    let t = Instant::now();
    let tokens = issue_tokens(&global.api, (0..n).map(|i| format!("dp-{i}")).collect(), 8).await?;
    let issued_in = t.elapsed();
    drop(zone);

    let mut runs: Vec<(&str, Duration, Duration)> = Vec::new();
    for round in 0..opts.warmup + opts.rounds {
        let counted = round >= opts.warmup;
        let order = if round % 2 == 0 {
            ["none", "token"]
        } else {
            ["token", "none"]
        };
        for mode in order {
            let zone = z.start(&agent, mode).await?;
            let with_token = mode == "token";
            let access = XdsAccess {
                ca_pem: zone_ca(&agent, &zone, with_token).await?,
                token: None,
            };
            let specs: Vec<ClientSpec> = (0..n)
                .map(|i| ClientSpec {
                    token: with_token.then(|| tokens[i].clone()),
                    ..client_spec(MESH, i, opts.services, opts.kind)
                })
                .collect();
            settle(&[zone.pid(), global.pid()]).await;
            let zpid = zone.pid().to_string();
            let cpu0 = cpu_time_of(&zpid);
            let (fleet, connected_in) = Fleet::connect(
                zone.xds,
                access,
                specs,
                opts.connect_concurrency,
                Duration::from_secs(3600),
            )
            .await
            .with_context(|| format!("round {round}, --dp-auth {mode}"))?;
            let cpu = cpu_time_of(&zpid).saturating_sub(cpu0);
            eprintln!(
                "round {round}{}, --dp-auth {mode}: {n} clients configured in {:.2} s, zone CPU {:.2} s",
                if counted { "" } else { " (warm-up)" },
                connected_in.as_secs_f64(),
                cpu.as_secs_f64()
            );
            if counted {
                runs.push((mode, connected_in, cpu));
            }
            fleet.stop();
            drop(zone);
        }
    }

    // Revocations, against the zone with tokens.
    let r = opts.revocations.min(n);
    let zone = z.start(&agent, "token").await?;
    let access = XdsAccess {
        ca_pem: zone_ca(&agent, &zone, true).await?,
        token: None,
    };
    let specs: Vec<ClientSpec> = (0..r)
        .map(|i| ClientSpec {
            token: Some(tokens[i].clone()),
            ..client_spec(MESH, i, opts.services, opts.kind)
        })
        .collect();
    let (mut fleet, _) = Fleet::connect(zone.xds, access, specs, 100, Duration::from_secs(600)).await?;
    let mut closed = Vec::with_capacity(r);
    for (i, token) in tokens.iter().enumerate().take(r) {
        let id = jti(token)?;
        let start = Instant::now();
        let (status, text) = http(
            &agent,
            "POST",
            format!("{}/tokens/dataplane/revoke", global.api),
            Some(json!({"mesh": MESH, "id": id})),
        )
        .await?;
        if status != 200 {
            bail!("revoking {id} answered {status}: {text}");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, fleet.events.recv()).await {
                Err(_) => bail!("client {i}'s stream still open 30 s after its token was revoked"),
                Ok(None) => bail!("client events closed"),
                Ok(Some(Event::Failed { client, error })) if client == i => {
                    if !error.contains("revoked") {
                        bail!("client {i} ended, but not for the revocation: {error}");
                    }
                    closed.push(start.elapsed());
                    break;
                }
                Ok(Some(Event::Failed { client, error })) => bail!("client {client} ended: {error}"),
                Ok(Some(_)) => {}
            }
        }
    }
    fleet.stop();
    drop(zone);
    global.stop().await?;
    let (verify_p50, verify_p99) = verification_cost(n.min(10_000)).await?;

    println!(
        "xds-auth, {:?}: the real meridian-global (embedded) and meridian-zone (embedded) processes (the binaries beside this program); \
         {n} dataplanes of {} services; {n} ADS clients in this process, one HTTP/2 connection (TLS) each, at most {} \
         configuring at once; the zone restarted on its data for each run, --dp-auth none and token alternately, \
         {} rounds after {} of warm-up, each run started once both processes were idle; RLIMIT_NOFILE {nofile}\n",
        opts.kind, opts.services, opts.connect_concurrency, opts.rounds, opts.warmup
    );
    println!("| {:<52} | {:>16} |", "measure", "value");
    println!("|{}|{}|", "-".repeat(54), "-".repeat(18));
    let of = |mode: &str, f: fn(&(&str, Duration, Duration)) -> Duration| {
        median(runs.iter().filter(|x| x.0 == mode).map(f).collect())
    };
    let (none_t, token_t) = (of("none", |x| x.1), of("token", |x| x.1));
    let (none_c, token_c) = (of("none", |x| x.2), of("token", |x| x.2));
    let rows = [
        (
            format!("register {n} dataplanes (zone API, 8 clients)"),
            format!("{:.2} s", registered_in.as_secs_f64()),
        ),
        (
            format!("issue {n} dataplane tokens (global API, 8 clients)"),
            format!("{:.2} s", issued_in.as_secs_f64()),
        ),
        (
            format!("connect {n}, all configured, --dp-auth none"),
            format!("{:.2} s", none_t.as_secs_f64()),
        ),
        (
            format!("connect {n}, all configured, --dp-auth token"),
            format!("{:.2} s", token_t.as_secs_f64()),
        ),
        ("  difference".into(), pct(token_t, none_t)),
        (
            "zone CPU during the connects, none".into(),
            format!("{:.2} s", none_c.as_secs_f64()),
        ),
        (
            "zone CPU during the connects, token".into(),
            format!("{:.2} s", token_c.as_secs_f64()),
        ),
        ("  difference".into(), pct(token_c, none_c)),
        (
            "one token verification (zone's verifier), p50".into(),
            format!("{:.1} µs", verify_p50.as_secs_f64() * 1e6),
        ),
        ("  p99".into(), format!("{:.1} µs", verify_p99.as_secs_f64() * 1e6)),
        (
            format!("  × {n} tokens (p50), over the none run's zone CPU"),
            format!(
                "{:.2} s, {:.1} %",
                verify_p50.as_secs_f64() * n as f64,
                verify_p50.as_secs_f64() * n as f64 / none_c.as_secs_f64().max(1e-9) * 100.0
            ),
        ),
    ];
    for (k, v) in rows {
        println!("| {k:<52} | {v:>16} |");
    }
    println!("\nEach run (mode, all configured, zone CPU):");
    for (mode, t, c) in &runs {
        println!("- {mode}: {:.2} s, {:.2} s", t.as_secs_f64(), c.as_secs_f64());
    }
    println!();
    header(&format!("revocation POST at the global → stream closed (ms), {r}"));
    row("one client's token revoked at a time", &summarize(closed));
    Ok(())
}

fn jti(token: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let part = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?;
    let v: Value = serde_json::from_slice(&bytes)?;
    Ok(v["jti"].as_str().context("no jti")?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark end to end at a smoke size, against the debug binaries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auth_benchmark_runs_in_a_smoke_size() {
        auth(AuthOptions {
            dataplanes: 20,
            warmup: 0,
            services: 4,
            kind: Kind::Sidecar,
            rounds: 1,
            revocations: 5,
            connect_concurrency: 10,
        })
        .await
        .unwrap();
    }
}
