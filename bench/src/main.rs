//! Meridian's benchmark programs. Each prints a table of numbers; see
//! BENCHMARKS.md for the commands and recorded results.
//!
//! - `latency`: HTTP PUT of a policy at the global → store → watch event
//!   delivered to a subscriber inside the global, on the embedded store and
//!   on etcd, next to the raw etcd baseline (etcd put → etcd watch event)
//!   measured by the same program against the same etcd.
//! - `bulk`: applies N policies across M meshes to a real `meridian-global`
//!   process and reports the time taken and the process's peak RSS.
//! - `kds-policy`, `kds-dataplane`, `kds-reconnect`, `kds-restart`,
//!   `kds-memory`: sync between the global and zones, see [`kds`].
//! - `xds-scale`: thousands of ADS clients on one real zone process: RSS,
//!   connect time, policy change → ACKed by every client; see [`xds_scale`].
//! - `xds-auth`: N clients connecting to one zone with dataplane tokens
//!   against the same with `--dp-auth none` (time, zone CPU), and
//!   revocation → stream closed; see [`xds_auth`].
//! - `access`: HTTP PUT → watch event without access control, with the
//!   admin token and with a user token among 100 roles; `--failed-auth`:
//!   RSS of a real global answering 401s; see [`access`].
//! - `xds-route-latency`, `xds-eds-latency`: a change at the global (a
//!   policy) or in another zone (a dataplane) → the new route or endpoints
//!   ACKed by a zone's clients, every hop stamped; see [`xds_latency`].

mod access;
mod ads_client;
mod kds;
mod metrics_overhead;
mod mtls;
mod soak;
mod xds_auth;
mod xds_latency;
mod xds_scale;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use etcd_client::{EventType, WatchOptions};
use meridian_core::ResourceType;
use meridian_server::access::AccessConfig;
use meridian_server::{Mode, ServerConfig};
use meridian_store::embedded::EmbeddedStore;
use meridian_store::etcd::EtcdStore;
use meridian_store::testing::EtcdServer;
use meridian_store::{Event, Store};
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "meridian-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// What the Prometheus metrics add to store operations and to the ADS
    /// loop, beside the same work without them.
    MetricsOverhead {
        #[arg(long, default_value_t = 1_000_000)]
        ops: usize,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// Write-to-watch latency on the embedded store and etcd, with the raw etcd baseline.
    Latency {
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Bulk apply to a real meridian-global process; time and peak RSS.
    Bulk {
        #[arg(long, default_value_t = 100)]
        meshes: usize,
        #[arg(long, default_value_t = 10_000)]
        policies: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// embedded or etcd
        #[arg(long, default_value = "embedded")]
        store: String,
    },
    /// KDS: policy PUT at the global → applied in every zone (1, 10, 100 zones).
    KdsPolicy {
        #[arg(long, default_value_t = 200)]
        writes: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        zones: Vec<usize>,
        /// Stores of the global, in order: embedded, etcd, memory
        #[arg(long, value_delimiter = ',', default_value = "embedded,etcd")]
        stores: Vec<String>,
        /// light: the real KDS client over a memory replica; full: meridian_zone::start
        #[arg(long = "zone-kind", value_enum, default_value = "light")]
        zone_kind: kds::ZoneKind,
        /// in-process: meridian_global::start here; process: the meridian-global binary
        #[arg(long = "global", value_enum, default_value = "in-process")]
        global: kds::GlobalKind,
        /// Policies created (and synced to every zone) before the measured writes
        #[arg(long, default_value_t = 0)]
        preload: usize,
        /// Pause between measured writes, in ms (spread the writes over time)
        #[arg(long = "pace-ms", default_value_t = 0)]
        pace_ms: u64,
    },
    /// KDS: Dataplane PUT at a zone's API → visible at the global.
    KdsDataplane {
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, value_delimiter = ',', default_value = "embedded,etcd")]
        stores: Vec<String>,
    },
    /// KDS: bytes and time of a zone reconnecting with 10,000 unchanged policies, against a cold zone.
    KdsReconnect {
        #[arg(long, default_value_t = 100)]
        meshes: usize,
        #[arg(long, default_value_t = 10_000)]
        policies: usize,
        /// embedded, etcd or memory
        #[arg(long, default_value = "embedded")]
        store: String,
        /// Then keep the synced zone connected and idle this long (0: skip)
        #[arg(long = "idle-secs", default_value_t = 35)]
        idle_secs: u64,
    },
    /// Soak: a global and zone processes for a long time, dataplanes churning, policies changing; RSS, probes, convergence.
    Soak {
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        #[arg(long, default_value_t = 10)]
        zones: usize,
        #[arg(long, default_value_t = 1000)]
        dataplanes: usize,
        /// embedded or etcd
        #[arg(long, default_value = "embedded")]
        store: String,
        /// Seconds between samples (RSS and probes)
        #[arg(long = "sample-secs", default_value_t = 60)]
        sample_secs: u64,
        /// Dataplane changes per second over all zones
        #[arg(long = "churn-per-sec", default_value_t = 5)]
        churn_per_sec: u64,
    },
    /// KDS: restart of a real meridian-global process under N connected zones.
    KdsRestart {
        #[arg(long, default_value_t = 100)]
        zones: usize,
        #[arg(long, default_value_t = 100)]
        policies: usize,
        /// embedded or etcd
        #[arg(long, default_value = "embedded")]
        store: String,
    },
    /// KDS: RSS of a real meridian-global process per zone and per 1,000 dataplanes.
    KdsMemory {
        #[arg(long, default_value_t = 100)]
        zones: usize,
        #[arg(long, default_value_t = 10_000)]
        dataplanes: usize,
        /// Dataplanes are created in this many equal steps, RSS read after each
        #[arg(long, default_value_t = 4)]
        steps: usize,
        /// embedded or etcd
        #[arg(long, default_value = "embedded")]
        store: String,
        #[arg(long = "zone-kind", value_enum, default_value = "light")]
        zone_kind: kds::ZoneKind,
    },
    /// xDS: N dataplanes connected to a real zone process; RSS, connect time, policy change → ACK by all.
    XdsScale {
        #[arg(long, default_value_t = 10_000)]
        dataplanes: usize,
        #[arg(long, default_value_t = 100)]
        services: usize,
        /// Which clients, one run each with fresh processes: sidecar, proxyless
        #[arg(long, value_enum, value_delimiter = ',', default_value = "sidecar,proxyless")]
        kinds: Vec<xds_scale::Kind>,
        /// Policy changes written at the global, each timed to the last ACK
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Clients connecting (not yet configured) at the same time
        #[arg(long = "connect-concurrency", default_value_t = 100)]
        connect_concurrency: usize,
        /// The zone's store: embedded or memory
        #[arg(long = "zone-store", default_value = "embedded")]
        zone_store: String,
    },
    /// xDS: N clients connecting with dataplane tokens vs --dp-auth none; revocation → stream closed.
    XdsAuth {
        #[arg(long, default_value_t = 10_000)]
        dataplanes: usize,
        #[arg(long, default_value_t = 100)]
        services: usize,
        #[arg(long, value_enum, default_value = "sidecar")]
        kind: xds_scale::Kind,
        /// Rounds of (none, token) runs, counted
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Rounds before them, not counted
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 100)]
        revocations: usize,
        #[arg(long = "connect-concurrency", default_value_t = 100)]
        connect_concurrency: usize,
    },
    /// Mesh mTLS: certificate issuance; 10,000 sidecars with and without mTLS; renewal of every certificate.
    Mtls {
        /// Sidecars at the zone (0: issuance only)
        #[arg(long, default_value_t = 10_000)]
        dataplanes: usize,
        #[arg(long, default_value_t = 100)]
        services: usize,
        /// Certificates issued in this process
        #[arg(long, default_value_t = 10_000)]
        issue: usize,
        /// RSA 2048 keys generated as the baseline
        #[arg(long = "rsa-samples", default_value_t = 20)]
        rsa_samples: usize,
        /// Workload certificate lifetime (seconds)
        #[arg(long = "lifetime-s", default_value_t = 120)]
        lifetime_s: u64,
        /// MeshTimeout changes per mode
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long = "connect-concurrency", default_value_t = 100)]
        connect_concurrency: usize,
    },
    /// Access control: PUT → watch event unauthenticated / admin token / user token among 100 roles.
    Access {
        /// PUTs measured per mode
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Rounds of (a, b, c) the count is split into, the order rotating
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// PUTs per mode before the rounds, not counted
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// AccessRoles and AccessRoleBindings of mode c
        #[arg(long, default_value_t = 100)]
        roles: usize,
        /// Instead: bad credentials to a real meridian-global process; its RSS and the time of a 401
        #[arg(long = "failed-auth")]
        failed_auth: bool,
        /// With --failed-auth: requests per step (RSS after 1,000, this many, twice this many)
        #[arg(long = "failed-requests", default_value_t = 10_000)]
        failed_requests: usize,
    },
    /// xDS: MeshTimeout PUT at the global → in the zone's cache → ACKed by proxyless clients.
    XdsRouteLatency {
        #[arg(long, default_value_t = 200)]
        writes: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        #[arg(long, default_value_t = 1000)]
        dataplanes: usize,
        #[arg(long, default_value_t = 100)]
        services: usize,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// The zone's store: embedded or memory
        #[arg(long = "zone-store", default_value = "embedded")]
        zone_store: String,
    },
    /// xDS: Dataplane PUT in zone 2 → zone 2's ingress → global → zone 1 → zone 1 client's EDS.
    XdsEdsLatency {
        #[arg(long, default_value_t = 200)]
        writes: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// The zones' store: embedded or memory
        #[arg(long = "zone-store", default_value = "embedded")]
        zone_store: String,
    },
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match Cli::parse().cmd {
        Cmd::Latency { count } => rt.block_on(latency(count)),
        Cmd::Bulk {
            meshes,
            policies,
            clients,
            store,
        } => rt.block_on(bulk(meshes, policies, clients, &store)),
        Cmd::KdsPolicy {
            writes,
            zones,
            stores,
            zone_kind,
            global,
            preload,
            pace_ms,
        } => rt.block_on(kds::policy_latency(
            writes,
            &zones,
            &stores,
            zone_kind,
            global,
            preload,
            std::time::Duration::from_millis(pace_ms),
        )),
        Cmd::KdsDataplane { count, stores } => rt.block_on(kds::dataplane_latency(count, &stores)),
        Cmd::KdsReconnect {
            meshes,
            policies,
            store,
            idle_secs,
        } => rt.block_on(kds::reconnect(
            meshes,
            policies,
            &store,
            std::time::Duration::from_secs(idle_secs),
        )),
        Cmd::MetricsOverhead { ops, rounds } => rt.block_on(metrics_overhead::run(ops, rounds)),
        Cmd::Soak {
            minutes,
            zones,
            dataplanes,
            store,
            sample_secs,
            churn_per_sec,
        } => rt.block_on(soak::soak(soak::SoakOptions {
            minutes,
            zones,
            dataplanes,
            store,
            sample_secs,
            churn_per_sec,
        })),
        Cmd::KdsRestart { zones, policies, store } => rt.block_on(kds::restart(zones, policies, &store)),
        Cmd::KdsMemory {
            zones,
            dataplanes,
            steps,
            store,
            zone_kind,
        } => rt.block_on(kds::memory(zones, dataplanes, steps, &store, zone_kind)),
        Cmd::XdsScale {
            dataplanes,
            services,
            kinds,
            rounds,
            connect_concurrency,
            zone_store,
        } => rt.block_on(xds_scale::scale(xds_scale::ScaleOptions {
            dataplanes,
            services,
            kinds,
            rounds,
            connect_concurrency,
            zone_store,
        })),
        Cmd::XdsAuth {
            dataplanes,
            services,
            kind,
            rounds,
            warmup,
            revocations,
            connect_concurrency,
        } => rt.block_on(xds_auth::auth(xds_auth::AuthOptions {
            dataplanes,
            warmup,
            services,
            kind,
            rounds,
            revocations,
            connect_concurrency,
        })),
        Cmd::Mtls {
            dataplanes,
            services,
            issue,
            rsa_samples,
            lifetime_s,
            rounds,
            connect_concurrency,
        } => rt.block_on(mtls::mtls(mtls::MtlsOptions {
            dataplanes,
            services,
            issue,
            rsa_samples,
            lifetime: std::time::Duration::from_secs(lifetime_s),
            rounds,
            connect_concurrency,
        })),
        Cmd::Access {
            failed_auth: true,
            failed_requests,
            ..
        } => rt.block_on(access::failed_auth(failed_requests)),
        Cmd::Access {
            count,
            rounds,
            warmup,
            roles,
            ..
        } => rt.block_on(access::access(access::AccessOptions {
            count,
            rounds,
            warmup,
            roles,
        })),
        Cmd::XdsRouteLatency {
            writes,
            warmup,
            dataplanes,
            services,
            clients,
            zone_store,
        } => rt.block_on(xds_latency::route_latency(xds_latency::RouteOptions {
            writes,
            warmup,
            dataplanes,
            services,
            clients,
            zone_store,
        })),
        Cmd::XdsEdsLatency {
            writes,
            warmup,
            zone_store,
        } => rt.block_on(xds_latency::eds_latency(xds_latency::EdsOptions {
            writes,
            warmup,
            zone_store,
        })),
    }
}

// ---- statistics -------------------------------------------------------------

struct Summary {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Summary {
        n: samples.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: samples[samples.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn print_row(name: &str, s: &Summary) {
    println!(
        "| {name:<44} | {:>5} | {:>8} | {:>8} | {:>8} | {:>8} |",
        s.n,
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
}

// ---- latency ----------------------------------------------------------------

async fn latency(count: usize) -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await.map_err(|e| anyhow!("starting etcd: {e}"))?;
    println!("latency: {count} sequential writes each; times in ms\n");
    println!("| path                                         |     n |      p50 |      p90 |      p99 |      max |");
    println!("|----------------------------------------------|-------|----------|----------|----------|----------|");

    let raw = raw_etcd(&etcd, count).await?;
    print_row("raw etcd: put → watch event", &summarize(raw));

    let dir = tempfile::tempdir()?;
    let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("data"))?);
    let (event, response) = through_api(embedded, dir.path().join("admin-token"), count).await?;
    print_row("embedded: API PUT → watch event in global", &summarize(event));
    print_row("embedded: API PUT → HTTP response", &summarize(response));

    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&etcd.endpoints(), "/bench-api").await?);
    let (event, response) = through_api(store, dir.path().join("etcd-admin-token"), count).await?;
    print_row("etcd: API PUT → watch event in global", &summarize(event));
    print_row("etcd: API PUT → HTTP response", &summarize(response));

    // The baseline again, to show the etcd itself did not drift during the run.
    let raw = raw_etcd(&etcd, count).await?;
    print_row("raw etcd again: put → watch event", &summarize(raw));
    Ok(())
}

/// etcd put → the watch event for that key, sequentially.
async fn raw_etcd(etcd: &EtcdServer, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut client = etcd.client().await?;
    let prefix = format!("/bench-raw-{}/", std::process::id());
    let mut stream = client
        .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let body = vec![b'x'; 400];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{prefix}{i}");
        let start = Instant::now();
        client.put(key.clone(), body.clone(), None).await?;
        'wait: loop {
            let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .context("raw watch timed out")??
                .ok_or_else(|| anyhow!("raw watch ended"))?;
            for ev in resp.events() {
                if ev.event_type() == EventType::Put && ev.kv().is_some_and(|kv| kv.key() == key.as_bytes()) {
                    break 'wait;
                }
            }
        }
        out.push(start.elapsed());
    }
    Ok(out)
}

fn policy(mesh: &str, name: &str, i: usize) -> Value {
    json!({
        "type": "MeshTimeout", "mesh": mesh, "name": name,
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": format!("svc-{i}")},
                 "default": {"idleTimeout": "1h", "http": {"requestTimeout": format!("{}s", 1 + i % 30)}}}]}
    })
}

/// A real API server in this process (global mode, the leader) on a
/// store, a mesh to write policies in, and the global's cache to watch:
/// what `latency` and `access` measure HTTP PUT → watch event with.
pub(crate) struct ApiProbe {
    pub(crate) running: meridian_server::Running,
    pub(crate) base: String,
    /// The mesh [`ApiProbe::writes`] writes in.
    pub(crate) mesh: String,
    /// Sends only the headers it is given.
    pub(crate) agent: ureq::Agent,
    stop: watch::Sender<bool>,
}

impl ApiProbe {
    /// Starts the server with `access` and waits for its cache.
    pub(crate) async fn start(store: Arc<dyn Store>, access: AccessConfig) -> anyhow::Result<ApiProbe> {
        let (stop, mut stop_rx) = watch::channel(false);
        let running = meridian_server::start(
            ServerConfig {
                api_addr: "127.0.0.1:0".parse()?,
                spec_check: Some(meridian_xds::generate::patch::check_spec),
                mode: Mode::Global,
                create_default_mesh: false,
                global: None,
                zone: None,
                access,
                instance_id: "bench".into(),
                api_tls: None,
                api_limits: Default::default(),
                registry: Default::default(),
            },
            store,
            watch::channel(true).1,
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        )
        .await?;
        running
            .manager
            .cache()
            .wait_ready(Duration::from_secs(10))
            .await
            .map_err(|e| anyhow!("cache not ready: {e}"))?;
        Ok(ApiProbe {
            base: format!("http://{}", running.api_addr),
            mesh: "bench".into(),
            agent: kds::agent_without_tokens(),
            running,
            stop,
        })
    }

    /// One request with `token` (none: no `Authorization` header); the
    /// status and the body.
    pub(crate) async fn call(
        &self,
        token: Option<&str>,
        method: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, String)> {
        let (agent, url) = (self.agent.clone(), format!("{}{path}", self.base));
        let auth = token.map(kds::bearer);
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u16, String)> {
            let mut resp = match (method, body) {
                ("PUT", Some(b)) => with_auth(agent.put(&url), auth.as_deref()).send_json(&b)?,
                ("POST", Some(b)) => with_auth(agent.post(&url), auth.as_deref()).send_json(&b)?,
                ("GET", None) => with_auth(agent.get(&url), auth.as_deref()).call()?,
                _ => bail!("unsupported request {method} {url}"),
            };
            Ok((resp.status().as_u16(), resp.body_mut().read_to_string()?))
        })
        .await?
    }

    /// PUTs `doc` at `path` with `token`; fails unless the answer is 2xx.
    pub(crate) async fn put_ok(&self, token: Option<&str>, path: &str, doc: Value) -> anyhow::Result<()> {
        let (status, text) = self.call(token, "PUT", path, Some(doc)).await?;
        if !(200..300).contains(&status) {
            bail!("PUT {path} answered {status}: {text}");
        }
        Ok(())
    }

    /// PUTs the MeshTimeouts `p{i}` for `i` in `names`, one after the
    /// other, with `token`: for each, the time to the event in a
    /// subscriber of the global's cache (what KDS follows) and to the HTTP
    /// response.
    pub(crate) async fn writes(
        &self,
        token: Option<&str>,
        names: std::ops::Range<usize>,
    ) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let count = names.len();
        // The client runs on its own thread and stamps each request as it
        // sends it; this task stamps each event as it arrives.
        let mut events = self.running.manager.cache().subscribe();
        let (sent_tx, sent_rx) = mpsc::channel::<(usize, Instant, Duration)>();
        let (agent, base, mesh) = (self.agent.clone(), self.base.clone(), self.mesh.clone());
        let auth = token.map(kds::bearer);
        let first = names.start;
        let client = std::thread::spawn(move || -> anyhow::Result<()> {
            for i in names {
                let name = format!("p{i}");
                let url = format!("{base}/meshes/{mesh}/meshtimeouts/{name}");
                let body = policy(&mesh, &name, i);
                let start = Instant::now();
                let resp = with_auth(agent.put(&url), auth.as_deref()).send_json(&body)?;
                let took = start.elapsed();
                if resp.status().as_u16() != 201 {
                    bail!("PUT {url} answered {}", resp.status());
                }
                sent_tx.send((i, start, took))?;
            }
            Ok(())
        });
        let mut arrived = vec![None; count];
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen < count {
            let ev = match tokio::time::timeout_at(deadline.into(), events.recv()).await {
                Ok(ev) => ev?,
                // The client's error says more than the missing event.
                Err(_) if client.is_finished() => {
                    client.join().map_err(|_| anyhow!("client thread panicked"))??;
                    bail!("events did not arrive in time");
                }
                Err(_) => bail!("events did not arrive in time"),
            };
            if let Event::Put(r) = ev {
                if r.key.kind == ResourceType::MeshTimeout && r.key.mesh.as_deref() == Some(&self.mesh) {
                    if let Some(i) = r.key.name.strip_prefix('p').and_then(|n| n.parse::<usize>().ok()) {
                        if let Some(slot) = i.checked_sub(first).and_then(|k| arrived.get_mut(k)) {
                            if slot.is_none() {
                                *slot = Some(Instant::now());
                                seen += 1;
                            }
                        }
                    }
                }
            }
        }
        client.join().map_err(|_| anyhow!("client thread panicked"))??;
        let mut to_event = Vec::with_capacity(count);
        let mut to_response = Vec::with_capacity(count);
        for (i, start, took) in sent_rx.try_iter() {
            let at = arrived[i - first].ok_or_else(|| anyhow!("no event for p{i}"))?;
            to_event.push(at.saturating_duration_since(start));
            to_response.push(took);
        }
        Ok((to_event, to_response))
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.running.task.await;
    }
}

/// `req` with `Authorization: <auth>` when there is one.
fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("Authorization", a),
        None => req,
    }
}

/// HTTP PUT through a real in-process API server, with its admin token →
/// the event reaching a subscriber of the global's cache.
async fn through_api(
    store: Arc<dyn Store>,
    token_file: PathBuf,
    count: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let probe = ApiProbe::start(store, AccessConfig::with_token_file(token_file)).await?;
    let token = probe.running.admin_token.clone();
    probe
        .put_ok(
            Some(&token),
            &format!("/meshes/{}", probe.mesh),
            kds::mesh_doc(&probe.mesh),
        )
        .await?;
    let result = probe.writes(Some(&token), 0..count).await;
    probe.stop().await;
    result
}

// ---- bulk ---------------------------------------------------------------------

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    let p = dir.join(name);
    // A test executable lives in deps/, beside the directory of the binaries.
    let p = match dir.parent().map(|up| up.join(name)) {
        Some(up) if !p.exists() && dir.ends_with("deps") && up.exists() => up,
        _ => p,
    };
    if !p.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bins`",
            p.display()
        );
    }
    Ok(p)
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmHWM:"), field("VmRSS:")))
}

async fn bulk(meshes: usize, policies: usize, clients: usize, store: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let token_file = dir.path().join("admin-token");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--api-addr".into(),
        format!("127.0.0.1:{port}"),
        "--kds-addr".into(),
        "127.0.0.1:0".into(),
        "--defaults-skip-mesh-creation".into(),
        "true".into(),
        "--admin-token-file".into(),
        path_str(&token_file),
    ];
    let _etcd = match store {
        "embedded" => {
            args.extend([
                "--store".into(),
                "embedded".into(),
                "--data-dir".into(),
                path_str(&dir.path().join("d")),
            ]);
            None
        }
        "etcd" => {
            let etcd = EtcdServer::start().await.map_err(|e| anyhow!("starting etcd: {e}"))?;
            args.extend([
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd.endpoint(),
            ]);
            Some(etcd)
        }
        other => bail!("unknown store {other:?}"),
    };
    let mut child = std::process::Command::new(sibling_binary("meridian-global")?)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    kds::register_token_file(&base, &token_file);
    let result = tokio::task::spawn_blocking(move || run_bulk(&base, meshes, policies, clients)).await?;
    let (hwm, rss) = peak_rss_kib(pid)?;
    let _ = child.kill();
    let _ = child.wait();
    let (mesh_time, policy_time, total) = result?;
    println!("bulk on {store}: {meshes} meshes, {policies} policies, {clients} concurrent clients");
    let rows = [
        (
            format!("create {meshes} meshes"),
            format!("{:.2} s", mesh_time.as_secs_f64()),
        ),
        (
            format!("apply {policies} policies"),
            format!("{:.2} s", policy_time.as_secs_f64()),
        ),
        (
            "policies per second".into(),
            format!("{:.0}", policies as f64 / policy_time.as_secs_f64()),
        ),
        ("policies listed afterwards".into(), total.to_string()),
        (
            "global peak RSS (VmHWM)".into(),
            format!("{:.1} MiB", hwm as f64 / 1024.0),
        ),
        (
            "global RSS at the end".into(),
            format!("{:.1} MiB", rss as f64 / 1024.0),
        ),
    ];
    println!("| {:<32} | {:>10} |", "measure", "value");
    println!("|{}|{}|", "-".repeat(34), "-".repeat(12));
    for (k, v) in rows {
        println!("| {k:<32} | {v:>10} |");
    }
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn run_bulk(base: &str, meshes: usize, policies: usize, clients: usize) -> anyhow::Result<(Duration, Duration, u64)> {
    let agent = kds::agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = agent.get(&format!("{base}/ready")).call() {
            if r.status().as_u16() == 200 {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("global not ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    for m in 0..meshes {
        let body = json!({"type": "Mesh", "name": format!("mesh-{m}"), "skipCreatingInitialPolicies": ["*"]});
        let r = agent.put(&format!("{base}/meshes/mesh-{m}")).send_json(&body)?;
        if r.status().as_u16() != 201 {
            bail!("mesh-{m}: {}", r.status());
        }
    }
    let mesh_time = start.elapsed();
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let agent = agent.clone();
                s.spawn(move || -> anyhow::Result<()> {
                    for i in (c..policies).step_by(clients) {
                        let mesh = format!("mesh-{}", i % meshes);
                        let name = format!("timeout-{i}");
                        let url = format!("{base}/meshes/{mesh}/meshtimeouts/{name}");
                        let r = agent.put(&url).send_json(policy(&mesh, &name, i))?;
                        if r.status().as_u16() != 201 {
                            bail!("{url}: {}", r.status());
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("client panicked"))??;
        }
        Ok(())
    })?;
    let policy_time = start.elapsed();
    let mut total = 0;
    for m in 0..meshes {
        let mut r = agent
            .get(&format!("{base}/meshes/mesh-{m}/meshtimeouts?size=1"))
            .call()?;
        let v: Value = r.body_mut().read_json()?;
        total += v["total"].as_u64().unwrap_or(0);
    }
    Ok((mesh_time, policy_time, total))
}
