//! KDS benchmarks (issue 3): how fast and how cheaply the global and the
//! zones stay in sync. Every subcommand prints a table; see BENCHMARKS.md.
//!
//! - `kds-policy`: a policy PUT at the global's API → applied (in the
//!   zone's cache) in every one of 1, 10 and 100 zones, on the embedded
//!   store and on etcd, next to the raw etcd put → watch baseline.
//! - `kds-dataplane`: a Dataplane PUT at a zone's API → in the global's cache
//!   (what its API serves).
//! - `kds-reconnect`: a zone holding 10,000 unchanged policies reconnects:
//!   bytes the global sends and the time to be in sync, against a cold zone.
//! - `kds-restart`: the global process restarts under 100 connected zones;
//!   the spread of their reconnects.
//! - `kds-memory`: RSS of a real `meridian-global` process per connected zone
//!   and per 1,000 synced dataplanes.
//!
//! The global runs in this process (`meridian_global::start`) where the
//! benchmark needs to see inside it, and as the real binary where its own
//! process matters (restart, memory, and `kds-policy --global process` to
//! tell its CPU time from the zones'). Zones are in this process: by default
//! "light" zones, i.e. the real KDS client (`meridian_zone::kds::run`) over a
//! `Manager` + `Cache` + `MemoryStore`, without the zone's HTTP API;
//! `--zone-kind full` uses `meridian_zone::start` with a memory store.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::{StreamExt, TryStreamExt};
use meridian_core::decode::decode_value;
use meridian_core::{ResourceKey, ResourceType};
use meridian_global::config::GlobalConfig;
use meridian_global::RunningGlobal;
use meridian_proto as pb;
use meridian_server::backend::StoreKind;
use meridian_server::kds::stream::{run_receiver, run_sender, MAX_MESSAGE_BYTES};
use meridian_server::kds::wire::kind_of;
use meridian_server::kds::{Inbound, NoObserver, Outbound};
use meridian_server::manager::Manager;
use meridian_store::cache::Cache;
use meridian_store::memory::MemoryStore;
use meridian_store::testing::EtcdServer;
use meridian_store::{Event, Filter, Store};
use meridian_zone::kds::{ClientSettings, FromGlobal, FromThisZone};
use meridian_zone::{RunningZone, ZoneConfig};
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::{peak_rss_kib, policy, sibling_binary, summarize, Summary};

/// Which zone implementation the benchmark runs in its own process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ZoneKind {
    /// The real KDS client over a Manager + Cache + MemoryStore; no HTTP API.
    Light,
    /// `meridian_zone::start` with a memory store (API, ingress task, KDS client).
    Full,
}

const TOKEN_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const KEEPALIVE: Duration = Duration::from_secs(10);

// ---- output -------------------------------------------------------------------

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

pub(crate) fn header(first: &str) {
    println!("| {first:<52} |     n |      p50 |      p90 |      p99 |      max |");
    println!(
        "|{}|-------|----------|----------|----------|----------|",
        "-".repeat(54)
    );
}

pub(crate) fn row(name: &str, s: &Summary) {
    println!(
        "| {name:<52} | {:>5} | {:>8} | {:>8} | {:>8} | {:>8} |",
        s.n,
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
}

fn kib(bytes: u64) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// CPU time this process has used (all threads), from /proc/self/stat.
fn cpu_time() -> Duration {
    cpu_time_of("self")
}

/// CPU time process `pid` has used (all threads): utime + stime.
pub(crate) fn cpu_time_of(pid: &str) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn own_rss_kib() -> u64 {
    peak_rss_kib(std::process::id()).map(|(_, rss)| rss).unwrap_or(0)
}

// ---- HTTP -----------------------------------------------------------------------

/// An HTTP client that adds the admin token of the control plane it calls
/// (see [`register_token`]) to every request without an `Authorization`
/// header of its own.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .middleware(bearer_middleware)
            .build(),
    )
}

/// An HTTP client that sends only the headers it is given: for requests
/// whose credentials are the point of the measurement.
pub(crate) fn agent_without_tokens() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    )
}

/// Where the admin token of one control plane comes from.
enum TokenSource {
    /// A control plane in this process handed it over.
    Known(String),
    /// A spawned process writes it to this file when it starts; read at the
    /// first request that needs it (after the process is ready), and again
    /// after a 401 (a restarted process on a memory store has a new one).
    File { path: PathBuf, read: Option<String> },
}

/// The admin token of every control plane the benchmark talks to, by the
/// `host:port` of its API. Every subcommand starts its control planes in
/// its own way and sends requests from helpers, spawned tasks and plain
/// threads; one table consulted by the agents' middleware gives all of them
/// the right token without threading it through each call. A benchmark
/// binary only: the table is written when a control plane starts.
static API_TOKENS: Mutex<BTreeMap<String, TokenSource>> = Mutex::new(BTreeMap::new());

/// The `host:port` of an API base URL (`http://127.0.0.1:5681`).
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

fn tokens() -> std::sync::MutexGuard<'static, BTreeMap<String, TokenSource>> {
    API_TOKENS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Requests to `api` (a base URL) made by [`agent`]s carry `token`.
pub(crate) fn register_token(api: &str, token: &str) {
    tokens().insert(authority(api).to_string(), TokenSource::Known(token.to_string()));
}

/// Requests to `api` made by [`agent`]s carry the token the process
/// serving it writes to `file` (its `--admin-token-file`).
pub(crate) fn register_token_file(api: &str, file: &Path) {
    tokens().insert(
        authority(api).to_string(),
        TokenSource::File {
            path: file.to_path_buf(),
            read: None,
        },
    );
}

fn token_for(authority: &str) -> Option<String> {
    let mut tokens = tokens();
    match tokens.get_mut(authority)? {
        TokenSource::Known(t) => Some(t.clone()),
        TokenSource::File { path, read } => {
            if read.is_none() {
                *read = std::fs::read_to_string(&*path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty());
            }
            read.clone()
        }
    }
}

/// Adds `Authorization: Bearer <admin token>` for registered control planes.
fn bearer_middleware(
    mut req: ureq::http::Request<ureq::SendBody>,
    next: ureq::middleware::MiddlewareNext,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    if let Some(a) = &authority {
        if !req.headers().contains_key(ureq::http::header::AUTHORIZATION) {
            if let Some(value) =
                token_for(a).and_then(|t| ureq::http::HeaderValue::try_from(format!("Bearer {t}")).ok())
            {
                req.headers_mut().insert(ureq::http::header::AUTHORIZATION, value);
            }
        }
    }
    let resp = next.handle(req)?;
    if let (ureq::http::StatusCode::UNAUTHORIZED, Some(a)) = (resp.status(), &authority) {
        if let Some(TokenSource::File { read, .. }) = tokens().get_mut(a) {
            *read = None;
        }
    }
    Ok(resp)
}

/// The `Authorization` header value of `token`.
pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One blocking HTTP request on a blocking thread: status and body.
pub(crate) async fn http(
    agent: &ureq::Agent,
    method: &'static str,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)> {
    timed_http(agent, method, url, body)
        .await
        .map(|(_, _, status, text)| (status, text))
}

/// Like [`http`], stamping the moment the request starts (on the thread that
/// sends it) and how long the response took.
pub(crate) async fn timed_http(
    agent: &ureq::Agent,
    method: &'static str,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<(Instant, Duration, u16, String)> {
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(Instant, Duration, u16, String)> {
        let start = Instant::now();
        let mut resp = match (method, body) {
            ("PUT", Some(b)) => agent.put(&url).send_json(&b)?,
            ("POST", Some(b)) => agent.post(&url).send_json(&b)?,
            ("GET", None) => agent.get(&url).call()?,
            _ => bail!("unsupported request {method} {url}"),
        };
        let took = start.elapsed();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        Ok((start, took, status, text))
    })
    .await?
}

pub(crate) async fn put_ok(agent: &ureq::Agent, url: String, body: Value) -> anyhow::Result<()> {
    let (status, text) = http(agent, "PUT", url.clone(), Some(body)).await?;
    if !(200..300).contains(&status) {
        bail!("PUT {url} answered {status}: {text}");
    }
    Ok(())
}

pub(crate) async fn wait_ready(agent: &ureq::Agent, base: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http(agent, "GET", format!("{base}/ready"), None).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{base} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn mesh_doc(name: &str) -> Value {
    json!({"type": "Mesh", "name": name, "skipCreatingInitialPolicies": ["*"]})
}

fn dataplane(mesh: &str, name: &str, i: usize) -> Value {
    json!({
        "type": "Dataplane", "mesh": mesh, "name": name,
        "networking": {"address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                       "inbound": [{"port": 8080, "tags": {"kuma.io/service": format!("svc-{}", i % 50), "version": "v1"}}]}
    })
}

/// Applies a document through a manager, as the API would after decoding.
pub(crate) async fn apply(manager: &Manager, doc: Value) -> anyhow::Result<()> {
    let doc = decode_value(doc).map_err(|e| anyhow!("invalid benchmark document: {e}"))?;
    manager.apply(doc).await?;
    Ok(())
}

// ---- the global -------------------------------------------------------------------

/// Where zones reach the global's KDS server.
#[derive(Clone)]
pub(crate) struct Join {
    pub(crate) address: String,
    pub(crate) ca_pem: String,
}

/// A global replica in this process.
pub(crate) struct Global {
    pub(crate) running: RunningGlobal,
    pub(crate) api: String,
    pub(crate) join: Join,
    _dir: tempfile::TempDir,
}

impl Global {
    pub(crate) async fn start(store: &str, etcd: Option<&EtcdServer>) -> anyhow::Result<Global> {
        let dir = tempfile::tempdir()?;
        let mut config = GlobalConfig {
            api_addr: "127.0.0.1:0".parse()?,
            kds_addr: "127.0.0.1:0".parse()?,
            data_dir: dir.path().join("data"),
            defaults_skip_mesh_creation: true,
            kds_keepalive: KEEPALIVE,
            ..GlobalConfig::default()
        };
        match (store, etcd) {
            ("embedded", _) => config.store = StoreKind::Embedded,
            ("memory", _) => config.store = StoreKind::Memory,
            ("etcd", Some(etcd)) => {
                config.store = StoreKind::Etcd;
                config.etcd_endpoints = etcd.endpoints();
                config.etcd_prefix = format!("/bench-kds-{}", unique());
            }
            (other, _) => bail!("unknown store {other:?} (embedded, etcd or memory)"),
        }
        let running = meridian_global::start(config, format!("bench-global-{}", unique())).await?;
        running
            .manager
            .cache()
            .wait_ready(Duration::from_secs(30))
            .await
            .map_err(|e| anyhow!("global cache: {e}"))?;
        let api = format!("http://{}", running.api_addr);
        register_token(&api, &running.admin_token);
        let join = Join {
            address: format!("grpcs://127.0.0.1:{}", running.kds_addr.port()),
            ca_pem: running.services.ca_pem.clone(),
        };
        wait_ready(&agent(), &api, Duration::from_secs(30)).await?;
        Ok(Global {
            running,
            api,
            join,
            _dir: dir,
        })
    }

    pub(crate) async fn token(&self, zone: &str) -> anyhow::Result<String> {
        Ok(self.running.services.tokens.issue(zone, TOKEN_VALIDITY).await?)
    }
}

pub(crate) fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A `meridian-global` process (the release binary next to this one).
pub(crate) struct GlobalProcess {
    child: std::process::Child,
    args: Vec<String>,
    pub(crate) api: String,
    /// Its `--admin-token-file`.
    pub(crate) token_file: PathBuf,
}

impl GlobalProcess {
    fn spawn(args: Vec<String>, api: String, token_file: PathBuf) -> anyhow::Result<GlobalProcess> {
        let child = std::process::Command::new(sibling_binary("meridian-global")?)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        register_token_file(&api, &token_file);
        Ok(GlobalProcess {
            child,
            args,
            api,
            token_file,
        })
    }

    /// Starts one on the embedded store in `data_dir` (or on `etcd`), with
    /// fixed ports so that a restarted process is found at the same address.
    pub(crate) fn start(
        data_dir: &Path,
        store: &str,
        etcd: Option<&EtcdServer>,
    ) -> anyhow::Result<(GlobalProcess, u16)> {
        let api_port = free_port()?;
        let kds_port = free_port()?;
        // The etcd store has no data directory: name the token's file.
        let token_file = data_dir.join("admin-token");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--api-addr".into(),
            format!("127.0.0.1:{api_port}"),
            "--kds-addr".into(),
            format!("127.0.0.1:{kds_port}"),
            "--defaults-skip-mesh-creation".into(),
            "true".into(),
            "--kds-keepalive".into(),
            "10s".into(),
            "--admin-token-file".into(),
            token_file.display().to_string(),
        ];
        match (store, etcd) {
            ("embedded" | "memory", _) => args.extend([
                "--store".into(),
                store.into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
            ]),
            ("etcd", Some(etcd)) => args.extend([
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd.endpoint(),
                "--etcd-prefix".into(),
                format!("/bench-kds-{}", unique()),
            ]),
            (other, _) => bail!("unknown store {other:?} (embedded, etcd or memory)"),
        }
        let p = Self::spawn(args, format!("http://127.0.0.1:{api_port}"), token_file)?;
        Ok((p, kds_port))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) async fn join(&self, agent: &ureq::Agent) -> anyhow::Result<Join> {
        let (status, text) = http(agent, "GET", format!("{}/kds-info", self.api), None).await?;
        if status != 200 {
            bail!("GET /kds-info answered {status}: {text}");
        }
        let v: Value = serde_json::from_str(&text)?;
        Ok(Join {
            address: v["kdsAddress"]
                .as_str()
                .ok_or_else(|| anyhow!("no kdsAddress in {text}"))?
                .to_string(),
            ca_pem: v["caCert"]
                .as_str()
                .ok_or_else(|| anyhow!("no caCert in {text}"))?
                .to_string(),
        })
    }

    pub(crate) async fn token(&self, agent: &ureq::Agent, zone: &str) -> anyhow::Result<String> {
        let (status, text) = http(
            agent,
            "POST",
            format!("{}/tokens/zone", self.api),
            Some(json!({"zone": zone})),
        )
        .await?;
        if status != 200 {
            bail!("issuing a token for {zone} answered {status}: {text}");
        }
        Ok(text.trim().to_string())
    }

    /// SIGTERM, then waits (SIGKILL after 10 s); returns how long it took.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        while self.child.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("meridian-global did not stop within 10 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(start.elapsed())
    }

    /// A new process with the same arguments (same store, same ports).
    fn respawn(&self) -> anyhow::Result<GlobalProcess> {
        Self::spawn(self.args.clone(), self.api.clone(), self.token_file.clone())
    }
}

impl Drop for GlobalProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a benchmark runs the global.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GlobalKind {
    /// `meridian_global::start` in this process.
    InProcess,
    /// The real `meridian-global` binary as a child process, so that its CPU
    /// time can be told apart from the zones'.
    Process,
}

/// A global of either kind.
enum AnyGlobal {
    InProcess(Global),
    Process {
        process: GlobalProcess,
        join: Join,
        _dir: tempfile::TempDir,
    },
}

impl AnyGlobal {
    async fn start(kind: GlobalKind, store: &str, etcd: Option<&EtcdServer>) -> anyhow::Result<AnyGlobal> {
        match kind {
            GlobalKind::InProcess => Ok(AnyGlobal::InProcess(Global::start(store, etcd).await?)),
            GlobalKind::Process => {
                let dir = tempfile::tempdir()?;
                let (process, _) = GlobalProcess::start(&dir.path().join("data"), store, etcd)?;
                let agent = agent();
                wait_ready(&agent, &process.api, Duration::from_secs(60)).await?;
                let join = process.join(&agent).await?;
                Ok(AnyGlobal::Process {
                    process,
                    join,
                    _dir: dir,
                })
            }
        }
    }

    fn api(&self) -> &str {
        match self {
            AnyGlobal::InProcess(g) => &g.api,
            AnyGlobal::Process { process, .. } => &process.api,
        }
    }

    fn join(&self) -> &Join {
        match self {
            AnyGlobal::InProcess(g) => &g.join,
            AnyGlobal::Process { join, .. } => join,
        }
    }

    async fn token(&self, agent: &ureq::Agent, zone: &str) -> anyhow::Result<String> {
        match self {
            AnyGlobal::InProcess(g) => g.token(zone).await,
            AnyGlobal::Process { process, .. } => process.token(agent, zone).await,
        }
    }

    /// The store revision the global's cache is at (in-process only).
    fn revision(&self) -> Option<u64> {
        match self {
            AnyGlobal::InProcess(g) => Some(g.running.manager.cache().revision()),
            AnyGlobal::Process { .. } => None,
        }
    }

    /// CPU time of the global's own process, when it has one.
    fn cpu(&self) -> Option<Duration> {
        match self {
            AnyGlobal::InProcess(_) => None,
            AnyGlobal::Process { process, .. } => Some(cpu_time_of(&process.pid().to_string())),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            AnyGlobal::InProcess(g) => g.running.stop().await,
            AnyGlobal::Process { mut process, .. } => process.stop().await.map(|_| ()),
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---- zones ----------------------------------------------------------------------

/// A zone in this process.
struct Zone {
    manager: Arc<Manager>,
    connected: watch::Receiver<bool>,
    handle: ZoneHandle,
}

enum ZoneHandle {
    Light {
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    },
    Full {
        running: Box<RunningZone>,
        _dir: tempfile::TempDir,
    },
}

fn settings(name: &str, join: &Join, token: String) -> ClientSettings {
    ClientSettings {
        zone: name.to_string(),
        addresses: vec![join.address.clone()],
        token,
        ca_pem: join.ca_pem.clone(),
        keepalive: KEEPALIVE,
        protocol: meridian_server::kds::PROTOCOL_VERSION,
    }
}

/// A zone's replica without the zone's API: a memory store, its cache and a manager.
async fn replica() -> anyhow::Result<Arc<Manager>> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let cache = Cache::start(store.clone());
    cache
        .wait_ready(Duration::from_secs(10))
        .await
        .map_err(|e| anyhow!("zone cache: {e}"))?;
    Ok(Arc::new(Manager::new(store, cache)))
}

impl Zone {
    async fn start(kind: ZoneKind, name: &str, join: &Join, token: String) -> anyhow::Result<Zone> {
        let settings = settings(name, join, token);
        match kind {
            ZoneKind::Light => {
                let manager = replica().await?;
                let (connected_tx, connected) = watch::channel(false);
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::spawn(meridian_zone::kds::run(
                    settings,
                    manager.clone(),
                    connected_tx,
                    Default::default(),
                    Default::default(),
                    stop_rx,
                ));
                Ok(Zone {
                    manager,
                    connected,
                    handle: ZoneHandle::Light { stop, task },
                })
            }
            ZoneKind::Full => {
                let dir = tempfile::tempdir()?;
                let running = meridian_zone::start(ZoneConfig {
                    zone: name.to_string(),
                    api_addr: "127.0.0.1:0".parse()?,
                    xds_addr: "127.0.0.1:0".parse()?,
                    xds_tls: Default::default(),
                    dp_auth: meridian_zone::auth::DpAuth::Token,
                    dataplane_cleanup_age: std::time::Duration::from_secs(60),
                    offline_dataplane_cleanup_age: None,
                    xds_max_connections: meridian_zone::config::DEFAULT_XDS_MAX_CONNECTIONS,
                    store: StoreKind::Memory,
                    data_dir: dir.path().join("data"),
                    federation: Some(settings),
                    ingress_address: None,
                    create_default_mesh: false,
                    access: meridian_server::access::AccessConfig::with_token_file(dir.path().join("admin-token")),
                    api_tls: None,
                    api_limits: Default::default(),
                })
                .await?;
                register_token(&format!("http://{}", running.api_addr), &running.admin_token);
                running
                    .manager
                    .cache()
                    .wait_ready(Duration::from_secs(10))
                    .await
                    .map_err(|e| anyhow!("zone cache: {e}"))?;
                Ok(Zone {
                    manager: running.manager.clone(),
                    connected: running.connected.clone(),
                    handle: ZoneHandle::Full {
                        running: Box::new(running),
                        _dir: dir,
                    },
                })
            }
        }
    }

    fn cache(&self) -> &Arc<Cache> {
        self.manager.cache()
    }

    fn api(&self) -> Option<String> {
        match &self.handle {
            ZoneHandle::Full { running, .. } => Some(format!("http://{}", running.api_addr)),
            ZoneHandle::Light { .. } => None,
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self.handle {
            ZoneHandle::Light { stop, task } => {
                let _ = stop.send(true);
                task.await?;
            }
            ZoneHandle::Full { running, .. } => running.stop().await?,
        }
        self.manager.cache().shutdown();
        Ok(())
    }
}

/// Waits until every zone is connected and holds `key` (what the global
/// wrote before the zones joined).
async fn wait_synced(zones: &[Zone], key: &ResourceKey, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for (i, z) in zones.iter().enumerate() {
        loop {
            if *z.connected.borrow() && z.cache().get(key).is_some() {
                break;
            }
            if Instant::now() > deadline {
                bail!("zone {i} not connected and synced ({key}) within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// Resolves when `cache` holds `want` resources matching `filter`. Follows
/// the cache's events, so waiting costs nothing while nothing changes.
async fn wait_count(cache: Arc<Cache>, filter: Filter, want: usize, timeout: Duration) -> anyhow::Result<Instant> {
    let mut events = cache.subscribe();
    let list = |cache: &Cache| -> HashSet<ResourceKey> { cache.list(&filter).into_iter().map(|r| r.key).collect() };
    let mut have = list(&cache);
    let deadline = tokio::time::Instant::now() + timeout;
    while have.len() < want {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => bail!("{} of {want} {filter:?} after {timeout:?}", have.len()),
            Ok(Ok(Event::Put(r))) => {
                if filter.matches(&r.key) {
                    have.insert(r.key);
                }
            }
            Ok(Ok(Event::Delete { key, .. })) => {
                have.remove(&key);
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => have = list(&cache),
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("cache closed"),
        }
    }
    Ok(Instant::now())
}

/// Resolves when `key` is in `cache`.
async fn wait_key(cache: Arc<Cache>, key: ResourceKey, timeout: Duration) -> anyhow::Result<Instant> {
    let mut events = cache.subscribe();
    if cache.get(&key).is_some() {
        return Ok(Instant::now());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => bail!("{key} did not arrive within {timeout:?}"),
            Ok(Ok(Event::Put(r))) if r.key == key => return Ok(Instant::now()),
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                if cache.get(&key).is_some() {
                    return Ok(Instant::now());
                }
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("cache closed"),
        }
    }
}

// ---- kds-policy -------------------------------------------------------------------

/// Stamps, for zone `zone`, when each benchmark policy `w<i>` of `mesh`
/// reaches the zone's cache.
fn stamp_writes(
    zone: usize,
    cache: &Arc<Cache>,
    mesh: String,
    tx: mpsc::UnboundedSender<(usize, usize, Instant)>,
) -> JoinHandle<()> {
    let mut events = cache.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Put(r)) => {
                    if r.key.kind != ResourceType::MeshTimeout || r.key.mesh.as_deref() != Some(mesh.as_str()) {
                        continue;
                    }
                    if let Some(i) = r.key.name.strip_prefix('w').and_then(|n| n.parse().ok()) {
                        if tx.send((i, zone, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                // A missed write shows up as a timeout of that write.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Per write: (HTTP response, first zone, median zone, last zone).
type WriteTimes = (Duration, Duration, Duration, Duration);

async fn one_policy_write(
    agent: &ureq::Agent,
    api: &str,
    mesh: &str,
    i: usize,
    zones: usize,
    arrivals: &mut mpsc::UnboundedReceiver<(usize, usize, Instant)>,
) -> anyhow::Result<WriteTimes> {
    let name = format!("w{i}");
    let url = format!("{api}/meshes/{mesh}/meshtimeouts/{name}");
    let (start, took, status, text) = timed_http(agent, "PUT", url, Some(policy(mesh, &name, i))).await?;
    if status != 201 {
        bail!("PUT {name} answered {status}: {text}");
    }
    let mut at = Vec::with_capacity(zones);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while at.len() < zones {
        let (w, _zone, t) = tokio::time::timeout_at(deadline, arrivals.recv())
            .await
            .map_err(|_| anyhow!("write {name}: {} of {zones} zones applied it within 20 s", at.len()))?
            .ok_or_else(|| anyhow!("arrival channel closed"))?;
        if w == i {
            at.push(t.saturating_duration_since(start));
        }
    }
    at.sort();
    Ok((took, at[0], at[at.len() / 2], at[at.len() - 1]))
}

pub async fn policy_latency(
    writes: usize,
    zone_counts: &[usize],
    stores: &[String],
    kind: ZoneKind,
    global_kind: GlobalKind,
    preload: usize,
    pace: Duration,
) -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await.map_err(|e| anyhow!("starting etcd: {e}"))?;
    println!(
        "kds-policy: {writes} sequential MeshTimeout PUTs at the global's API per row (after 20 warm-up writes), \
         {} ms apart; {preload} other policies synced to every zone beforehand; \
         time until the policy is in the zone's cache; {kind:?} zones in this process; global {global_kind:?}; \
         times in ms\n",
        pace.as_millis()
    );
    header("path");
    let raw = super::raw_etcd(&etcd, writes).await?;
    row("raw etcd: put → watch event", &summarize(raw));
    let agent = agent();
    let mut notes = Vec::new();
    for store in stores {
        let global = AnyGlobal::start(global_kind, store, Some(&etcd)).await?;
        let api = global.api().to_string();
        let mesh = "kds-bench";
        put_ok(&agent, format!("{api}/meshes/{mesh}"), mesh_doc(mesh)).await?;
        if preload > 0 {
            let (agent, api) = (agent.clone(), api.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for i in 0..preload {
                    let name = format!("pre-{i}");
                    let url = format!("{api}/meshes/{mesh}/meshtimeouts/{name}");
                    let status = agent.put(&url).send_json(policy(mesh, &name, i))?.status().as_u16();
                    if status != 201 {
                        bail!("PUT {url} answered {status}");
                    }
                }
                Ok(())
            })
            .await??;
        }
        let mesh_key = ResourceKey::global(ResourceType::Mesh, mesh);
        let (tx, mut arrivals) = mpsc::unbounded_channel();
        let mut zones: Vec<Zone> = Vec::new();
        let mut stampers = Vec::new();
        let mut next = 0usize;
        for &n in zone_counts {
            let t = Instant::now();
            while zones.len() < n {
                let name = format!("zone-{}", zones.len());
                let token = global.token(&agent, &name).await?;
                let z = Zone::start(kind, &name, global.join(), token).await?;
                stampers.push(stamp_writes(zones.len(), z.cache(), mesh.to_string(), tx.clone()));
                zones.push(z);
            }
            wait_synced(&zones, &mesh_key, Duration::from_secs(60)).await?;
            futures::future::try_join_all(zones.iter().map(|z| {
                wait_count(
                    z.cache().clone(),
                    Filter::in_mesh(ResourceType::MeshTimeout, mesh),
                    preload + next,
                    Duration::from_secs(300),
                )
            }))
            .await?;
            notes.push(format!(
                "{store}: {n} zones connected and synced {:.2} s after starting the new ones",
                t.elapsed().as_secs_f64()
            ));
            for _ in 0..20 {
                one_policy_write(&agent, &api, mesh, next, n, &mut arrivals).await?;
                next += 1;
            }
            let (cpu_here, cpu_global, rev) = (cpu_time(), global.cpu(), global.revision());
            let mut http_times = Vec::new();
            let (mut first, mut median, mut last) = (Vec::new(), Vec::new(), Vec::new());
            let mut slowest = Vec::new();
            for _ in 0..writes {
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                let at = t.elapsed();
                let (h, f, m, l) = one_policy_write(&agent, &api, mesh, next, n, &mut arrivals).await?;
                next += 1;
                http_times.push(h);
                first.push(f);
                median.push(m);
                last.push(l);
                slowest.push((l, at));
            }
            slowest.sort();
            let slowest: Vec<String> = slowest
                .iter()
                .rev()
                .take(5)
                .map(|(l, at)| format!("{} ms at {:.1} s", ms(*l), at.as_secs_f64()))
                .collect();
            notes.push(format!(
                "{store}, {n} zones: slowest writes (time since these zones were started): {}",
                slowest.join(", ")
            ));
            let per_write = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0 / writes.max(1) as f64);
            let here = per_write(cpu_time().saturating_sub(cpu_here));
            if let (Some(before), Some(after)) = (rev, global.revision()) {
                notes.push(format!(
                    "{store}, {n} zones: the global's store took {} writes during the {writes} policy writes",
                    after.saturating_sub(before)
                ));
            }
            notes.push(match (cpu_global, global.cpu()) {
                (Some(before), Some(after)) => format!(
                    "{store}, {n} zones: CPU per write: global process {}, this process (zones, client) {here}",
                    per_write(after.saturating_sub(before))
                ),
                _ => format!("{store}, {n} zones: CPU per write (global, zones and client in this process): {here}"),
            });
            let z = if n == 1 {
                "zone".to_string()
            } else {
                format!("{n} zones")
            };
            row(&format!("{store}: PUT → HTTP response ({z})"), &summarize(http_times));
            if n > 1 {
                row(&format!("{store}: PUT → first of {n} zones"), &summarize(first));
                row(&format!("{store}: PUT → median of {n} zones"), &summarize(median));
            }
            row(&format!("{store}: PUT → applied in every zone ({z})"), &summarize(last));
        }
        for s in stampers {
            s.abort();
        }
        for z in zones {
            z.stop().await?;
        }
        global.stop().await?;
    }
    let raw = super::raw_etcd(&etcd, writes).await?;
    row("raw etcd again: put → watch event", &summarize(raw));
    println!();
    for n in notes {
        println!("- {n}");
    }
    Ok(())
}

// ---- kds-dataplane ------------------------------------------------------------------

pub async fn dataplane_latency(count: usize, stores: &[String]) -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await.map_err(|e| anyhow!("starting etcd: {e}"))?;
    println!(
        "kds-dataplane: {count} sequential Dataplane PUTs at a zone's API (a full zone, memory store) per row, \
         after 20 warm-up writes; times in ms\n"
    );
    header("path");
    let agent = agent();
    for store in stores {
        let global = Global::start(store, Some(&etcd)).await?;
        let mesh = "kds-bench";
        put_ok(&agent, format!("{}/meshes/{mesh}", global.api), mesh_doc(mesh)).await?;
        let zone_name = "dp-zone";
        let zone = Zone::start(ZoneKind::Full, zone_name, &global.join, global.token(zone_name).await?).await?;
        let zone_api = zone.api().ok_or_else(|| anyhow!("a full zone has an API"))?;
        wait_synced(
            std::slice::from_ref(&zone),
            &ResourceKey::global(ResourceType::Mesh, mesh),
            Duration::from_secs(30),
        )
        .await?;

        // Stamp each dataplane as it reaches the global's cache.
        let (tx, mut arrivals) = mpsc::unbounded_channel::<(usize, Instant)>();
        let mut events = global.running.manager.cache().subscribe();
        let prefix = format!("{zone_name}.dp-");
        let stamper = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::Put(r)) if r.key.kind == ResourceType::Dataplane => {
                        if let Some(i) = r.key.name.strip_prefix(&prefix).and_then(|n| n.parse().ok()) {
                            if tx.send((i, Instant::now())).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let (mut to_global, mut to_response) = (Vec::new(), Vec::new());
        for i in 0..count + 20 {
            let name = format!("dp-{i}");
            let url = format!("{zone_api}/meshes/{mesh}/dataplanes/{name}");
            let (start, took, status, text) = timed_http(&agent, "PUT", url, Some(dataplane(mesh, &name, i))).await?;
            if status != 201 {
                bail!("PUT {name} at the zone answered {status}: {text}");
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let at = loop {
                let (w, at) = tokio::time::timeout_at(deadline, arrivals.recv())
                    .await
                    .map_err(|_| anyhow!("{name} did not reach the global within 20 s"))?
                    .ok_or_else(|| anyhow!("arrival channel closed"))?;
                if w == i {
                    break at;
                }
            };
            if i >= 20 {
                to_global.push(at.saturating_duration_since(start));
                to_response.push(took);
            }
        }
        stamper.abort();
        // What the global's API serves.
        let url = format!("{}/meshes/{mesh}/dataplanes/{zone_name}.dp-0", global.api);
        let (status, text) = http(&agent, "GET", url, None).await?;
        if status != 200 {
            bail!("the global's API does not serve the synced dataplane: {status} {text}");
        }
        row(
            &format!("{store}: zone PUT → zone HTTP response"),
            &summarize(to_response),
        );
        row(
            &format!("{store}: zone PUT → in the global's cache/API"),
            &summarize(to_global),
        );
        zone.stop().await?;
        global.running.stop().await?;
    }
    Ok(())
}

// ---- kds-reconnect ------------------------------------------------------------------

/// What crossed a GlobalToZone stream, counted as encoded protobuf messages.
#[derive(Default)]
struct Traffic {
    inner: Mutex<TrafficCounts>,
}

#[derive(Default, Clone)]
struct TrafficCounts {
    /// type → (responses, bytes, resources + removals) sent by the global.
    down: BTreeMap<String, (u64, u64, u64)>,
    /// Requests (subscriptions, ACKs) sent by the zone: count and bytes.
    up: (u64, u64),
    /// Resource versions the zone announced in its subscriptions.
    announced: u64,
    /// When both streams were open.
    connected: Option<Instant>,
    /// When the last subscription went out (all types subscribed).
    subscribed: Option<Instant>,
}

impl TrafficCounts {
    fn down_total(&self) -> (u64, u64, u64) {
        self.down
            .values()
            .fold((0, 0, 0), |(a, b, c), (x, y, z)| (a + x, b + y, c + z))
    }
}

impl Traffic {
    fn counts(&self) -> TrafficCounts {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn down(&self, r: &pb::DeltaResponse) {
        let name = kind_of(&r.type_url)
            .map(|k| k.name().to_string())
            .unwrap_or_else(|| r.type_url.clone());
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = c.down.entry(name).or_default();
        e.0 += 1;
        e.1 += r.encoded_len() as u64;
        e.2 += (r.resources.len() + r.removed_resources.len()) as u64;
    }

    fn up(&self, r: &pb::DeltaRequest) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.up.0 += 1;
        c.up.1 += r.encoded_len() as u64;
        c.announced += r.initial_resource_versions.len() as u64;
        if r.response_nonce.is_empty() && c.up.0 == meridian_server::kds::global_to_zone_types().len() as u64 {
            c.subscribed = Some(Instant::now());
        }
    }

    fn connected(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).connected = Some(Instant::now());
    }
}

/// One KDS session of a zone, as `meridian_zone::kds` runs it (both streams,
/// the zone's `FromGlobal` / `FromThisZone`, the shared stream loops), with
/// every message of the GlobalToZone stream counted.
async fn counted_session(settings: ClientSettings, manager: Arc<Manager>, traffic: Arc<Traffic>) -> anyhow::Result<()> {
    use tonic::metadata::MetadataValue;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let rest = settings
        .addresses
        .first()
        .and_then(|a| a.strip_prefix("grpcs://"))
        .ok_or_else(|| anyhow!("no grpcs:// address"))?;
    let host = rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest).to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&settings.ca_pem))
        .domain_name(host);
    let channel = Endpoint::from_shared(format!("https://{rest}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let token: MetadataValue<_> = format!("Bearer {}", settings.token).parse()?;
    let zone: MetadataValue<_> = settings.zone.parse()?;
    let mut client = pb::kds_client::KdsClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", token.clone());
        req.metadata_mut().insert("x-meridian-zone", zone.clone());
        Ok(req)
    })
    .max_decoding_message_size(2 * MAX_MESSAGE_BYTES)
    .max_encoding_message_size(2 * MAX_MESSAGE_BYTES);

    let (req_tx, req_rx) = mpsc::channel::<pb::DeltaRequest>(64);
    let up = traffic.clone();
    let requests = ReceiverStream::new(req_rx).inspect(move |r| up.up(r));
    let mut g2z = client.clone();
    let down = traffic.clone();
    let responses = g2z
        .global_to_zone(requests)
        .await?
        .into_inner()
        .inspect_ok(move |r| down.down(r));
    let (resp_tx, resp_rx) = mpsc::channel(64);
    let acks = client.zone_to_global(ReceiverStream::new(resp_rx)).await?.into_inner();
    traffic.connected();
    let inbound: Arc<dyn Inbound> = Arc::new(FromGlobal {
        zone: settings.zone.clone(),
        manager: manager.clone(),
    });
    let outbound: Arc<dyn Outbound> = Arc::new(FromThisZone {
        zone: settings.zone.clone(),
    });
    let node = pb::Node {
        zone: settings.zone.clone(),
        version: "bench".into(),
        instance_id: format!("{}-bench", settings.zone),
    };
    let receive = run_receiver(Box::pin(responses), req_tx, inbound, node);
    let send = run_sender(
        acks,
        resp_tx,
        manager.cache().clone(),
        outbound,
        Arc::new(NoObserver),
        MAX_MESSAGE_BYTES,
    );
    tokio::select! {
        r = receive => r.map_err(|e| anyhow!("global-to-zone: {e}")),
        r = send => r.map_err(|e| anyhow!("zone-to-global: {e}")),
    }
}

struct Session {
    task: JoinHandle<anyhow::Result<()>>,
    traffic: Arc<Traffic>,
}

impl Session {
    fn start(settings: &ClientSettings, manager: &Arc<Manager>) -> Session {
        let traffic = Arc::new(Traffic::default());
        let task = tokio::spawn(counted_session(settings.clone(), manager.clone(), traffic.clone()));
        Session { task, traffic }
    }

    /// Disconnects (as a zone whose connection drops) and returns what was counted.
    async fn end(self) -> anyhow::Result<TrafficCounts> {
        if self.task.is_finished() {
            self.task.await??;
            bail!("the KDS session ended early");
        }
        self.task.abort();
        let _ = self.task.await;
        Ok(self.traffic.counts())
    }
}

/// Waits until nothing more arrives on the session for `quiet`.
async fn settle(traffic: &Traffic, quiet: Duration) {
    let mut last = traffic.counts().down_total();
    loop {
        tokio::time::sleep(quiet).await;
        let now = traffic.counts().down_total();
        if now == last {
            return;
        }
        last = now;
    }
}

pub async fn reconnect(meshes: usize, policies: usize, store: &str, idle: Duration) -> anyhow::Result<()> {
    let etcd = if store == "etcd" {
        Some(EtcdServer::start().await.map_err(|e| anyhow!("starting etcd: {e}"))?)
    } else {
        None
    };
    let global = Global::start(store, etcd.as_ref()).await?;
    let manager = global.running.manager.clone();
    let t = Instant::now();
    let mesh_names: Vec<String> = (0..meshes).map(|m| format!("mesh-{m:03}")).collect();
    for m in &mesh_names {
        apply(&manager, mesh_doc(m)).await?;
    }
    futures::stream::iter(0..policies)
        .map(|i| {
            let manager = manager.clone();
            let mesh = mesh_names[i % meshes].clone();
            async move { apply(&manager, policy(&mesh, &format!("timeout-{i}"), i)).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "kds-reconnect on {store}: {meshes} meshes and {policies} MeshTimeouts at the global (written in {:.1} s); \
         one zone (the zone's own session code with its GlobalToZone messages counted); \
         bytes are encoded protobuf messages (prost encoded_len)\n",
        t.elapsed().as_secs_f64()
    );
    let zone = "reconnect-zone";
    let settings = settings(zone, &global.join, global.token(zone).await?);
    let replica = replica().await?;
    let all = Duration::from_secs(120);

    // 1. Cold: an empty zone syncs everything.
    let cold_start = Instant::now();
    let cold_cpu = cpu_time();
    let start = cold_start;
    let session = Session::start(&settings, &replica);
    let policies_in = tokio::spawn(wait_count(
        replica.cache().clone(),
        Filter::kind(ResourceType::MeshTimeout),
        policies,
        all,
    ));
    let meshes_in = wait_count(replica.cache().clone(), Filter::kind(ResourceType::Mesh), meshes, all).await?;
    let policies_in = policies_in.await??;
    let cold_time = meshes_in.max(policies_in).duration_since(start);
    let cold_cpu = cpu_time().saturating_sub(cold_cpu);
    settle(&session.traffic, Duration::from_millis(500)).await;
    let cold = session.end().await?;

    // 2. Warm, nothing changed while it was away.
    let session = Session::start(&settings, &replica);
    let deadline = Instant::now() + all;
    while session.traffic.counts().up.0 < meridian_server::kds::global_to_zone_types().len() as u64 {
        if Instant::now() > deadline {
            bail!("the warm zone did not subscribe");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    settle(&session.traffic, Duration::from_secs(1)).await;
    let warm = session.end().await?;

    // 3. Warm, one policy created while it was away. It sorts after every
    //    other name, so it goes out only after the global has compared all
    //    10,000 held versions: its arrival marks "in sync".
    let last_mesh = mesh_names.last().ok_or_else(|| anyhow!("no meshes"))?;
    apply(&manager, policy(last_mesh, "zzz-probe", 0)).await?;
    let probe = ResourceKey::in_mesh(ResourceType::MeshTimeout, last_mesh, "zzz-probe");
    let changed_start = Instant::now();
    let changed_cpu = cpu_time();
    let start = changed_start;
    let session = Session::start(&settings, &replica);
    let probe_in = wait_key(replica.cache().clone(), probe, all).await?;
    let changed_time = probe_in.duration_since(start);
    let changed_cpu = cpu_time().saturating_sub(changed_cpu);
    settle(&session.traffic, Duration::from_secs(1)).await;
    let changed = session.traffic.counts();

    // 4. The same session, idle (nothing changes) for `idle`: what keeping
    //    in sync costs (receivers re-subscribe periodically with everything
    //    they hold).
    let idle_cpu = cpu_time();
    tokio::time::sleep(idle).await;
    let idle_cpu = cpu_time().saturating_sub(idle_cpu);
    let after_idle = session.end().await?;

    let types = meridian_server::kds::global_to_zone_types().len();
    println!(
        "| {:<40} | {:>10} | {:>9} | {:>11} | {:>12} | {:>12} | {:>10} |",
        "zone", "in sync", "responses", "resources", "global→zone", "zone→global", "announced"
    );
    println!(
        "|{}|------------|-----------|-------------|--------------|--------------|------------|",
        "-".repeat(42)
    );
    for (name, c, time) in [
        (
            format!("cold (empty store) syncs {policies} + {meshes}"),
            &cold,
            Some(cold_time),
        ),
        ("warm, nothing changed".to_string(), &warm, None),
        (
            "warm, 1 policy created while away".to_string(),
            &changed,
            Some(changed_time),
        ),
    ] {
        let (n, bytes, resources) = c.down_total();
        println!(
            "| {name:<40} | {:>10} | {n:>9} | {resources:>11} | {:>12} | {:>12} | {:>10} |",
            time.map(|t| format!("{} ms", ms(t))).unwrap_or_else(|| "—".into()),
            kib(bytes),
            kib(c.up.1),
            c.announced
        );
    }
    println!();
    for (name, c) in [("warm, nothing changed", &warm), ("warm, 1 policy created", &changed)] {
        let (_, bytes, _) = c.down_total();
        let per_type: Vec<String> = c
            .down
            .iter()
            .map(|(t, (n, b, r))| format!("{t}: {n} response(s), {r} resource(s), {b} B"))
            .collect();
        println!(
            "- {name}: {bytes} B from the global over {types} subscribed types ({:.1} B per type){}",
            bytes as f64 / types as f64,
            if per_type.is_empty() {
                String::new()
            } else {
                format!(" — {}", per_type.join("; "))
            }
        );
    }
    for (name, c, start, done, cpu) in [
        ("cold", &cold, cold_start, cold_start + cold_time, cold_cpu),
        ("warm, 1 policy created", &changed, changed_start, probe_in, changed_cpu),
    ] {
        let at = |t: Option<Instant>| {
            t.map(|t| ms(t.saturating_duration_since(start)))
                .unwrap_or_else(|| "?".into())
        };
        println!(
            "- {name}, ms from dialing: both streams open {}, all {types} subscriptions sent {}, in sync {}; \
             CPU used by this process (global and zone) until then: {} ms",
            at(c.connected),
            at(c.subscribed),
            ms(done.saturating_duration_since(start)),
            cpu.as_millis()
        );
    }
    if !idle.is_zero() {
        let (n0, b0, r0) = changed.down_total();
        let (n1, b1, r1) = after_idle.down_total();
        println!(
            "- idle for {} s afterwards (nothing changed; receivers re-subscribe every {} s): \
             zone→global {} in {} requests, {} resource versions announced; \
             global→zone {} in {} responses ({} resources); CPU used by this process {} ms",
            idle.as_secs(),
            meridian_server::kds::stream::RESYNC_INTERVAL.as_secs(),
            kib(after_idle.up.1 - changed.up.1),
            after_idle.up.0 - changed.up.0,
            after_idle.announced - changed.announced,
            kib(b1 - b0),
            n1 - n0,
            r1 - r0,
            idle_cpu.as_millis()
        );
    }
    global.running.stop().await?;
    Ok(())
}

// ---- kds-restart --------------------------------------------------------------------

pub async fn restart(zones: usize, policies: usize, store: &str) -> anyhow::Result<()> {
    let etcd = match store {
        "etcd" => Some(EtcdServer::start().await.map_err(|e| anyhow!("starting etcd: {e}"))?),
        "embedded" => None,
        other => bail!("unknown store {other:?} (embedded or etcd)"),
    };
    let dir = tempfile::tempdir()?;
    let (mut process, _) = GlobalProcess::start(&dir.path().join("data"), store, etcd.as_ref())?;
    let agent = agent();
    wait_ready(&agent, &process.api, Duration::from_secs(60)).await?;
    let join = process.join(&agent).await?;
    let mesh = "restart";
    put_ok(&agent, format!("{}/meshes/{mesh}", process.api), mesh_doc(mesh)).await?;
    for i in 0..policies {
        let name = format!("timeout-{i}");
        let url = format!("{}/meshes/{mesh}/meshtimeouts/{name}", process.api);
        put_ok(&agent, url, policy(mesh, &name, i)).await?;
    }
    let mut zs = Vec::with_capacity(zones);
    for i in 0..zones {
        let name = format!("zone-{i}");
        let token = process.token(&agent, &name).await?;
        zs.push(Zone::start(ZoneKind::Light, &name, &join, token).await?);
    }
    futures::future::try_join_all(zs.iter().map(|z| {
        wait_count(
            z.cache().clone(),
            Filter::in_mesh(ResourceType::MeshTimeout, mesh),
            policies,
            Duration::from_secs(120),
        )
    }))
    .await?;
    wait_synced(
        &zs,
        &ResourceKey::global(ResourceType::Mesh, mesh),
        Duration::from_secs(60),
    )
    .await?;

    // Per zone: when it is connected again, and when it holds the probe
    // policy written right after the new global is ready.
    let probe = ResourceKey::in_mesh(ResourceType::MeshTimeout, mesh, "restart-probe");
    let watchers: Vec<JoinHandle<anyhow::Result<(Instant, Instant)>>> = zs
        .iter()
        .map(|z| {
            let mut connected = z.connected.clone();
            let cache = z.cache().clone();
            let probe = probe.clone();
            tokio::spawn(async move {
                let timeout = Duration::from_secs(120);
                let probe_in = tokio::spawn(wait_key(cache, probe, timeout));
                tokio::time::timeout(timeout, connected.wait_for(|c| !*c))
                    .await
                    .context("never saw the disconnect")??;
                tokio::time::timeout(timeout, connected.wait_for(|c| *c))
                    .await
                    .context("did not reconnect")??;
                let back = Instant::now();
                Ok((back, probe_in.await??))
            })
        })
        .collect();

    let stop_time = process.stop().await?;
    let started = Instant::now();
    // Replacing the handle drops the old one, whose process has exited.
    process = process.respawn()?;
    wait_ready(&agent, &process.api, Duration::from_secs(60)).await?;
    let ready = started.elapsed();
    put_ok(
        &agent,
        format!("{}/meshes/{mesh}/meshtimeouts/restart-probe", process.api),
        policy(mesh, "restart-probe", 0),
    )
    .await?;
    let probe_written = started.elapsed();
    let mut back = Vec::with_capacity(zones);
    let mut in_sync = Vec::with_capacity(zones);
    for w in watchers {
        let (b, p) = w.await??;
        back.push(b.saturating_duration_since(started));
        in_sync.push(p.saturating_duration_since(started));
    }
    println!(
        "kds-restart on {store}: {zones} light zones in this process, each holding 1 mesh + {policies} policies; \
         the real meridian-global binary is stopped with SIGTERM and started again on the same store and ports\n"
    );
    println!("- old global exited {} ms after SIGTERM", ms(stop_time));
    println!("- new global's API ready {} ms after it was spawned", ms(ready));
    println!(
        "- probe policy written {} ms after spawn; 'in sync' = a zone holds it\n",
        ms(probe_written)
    );
    println!(
        "| times from the new global's spawn, ms                | zones |      min |      p50 |      p99 |      max |"
    );
    println!(
        "|------------------------------------------------------|-------|----------|----------|----------|----------|"
    );
    for (name, v) in [
        ("zone reconnected (both streams up)", &back),
        ("zone in sync (holds the probe)", &in_sync),
    ] {
        let mut v = v.clone();
        v.sort();
        let s = summarize(v.clone());
        println!(
            "| {name:<52} | {:>5} | {:>8} | {:>8} | {:>8} | {:>8} |",
            s.n,
            ms(v[0]),
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
    // Reconnects per 100 ms after spawn: a herd would show as one spike.
    let mut buckets: BTreeMap<u128, usize> = BTreeMap::new();
    for b in &back {
        *buckets.entry(b.as_millis() / 100).or_default() += 1;
    }
    let hist: Vec<String> = buckets
        .iter()
        .map(|(b, n)| format!("{}–{} ms: {n}", b * 100, b * 100 + 100))
        .collect();
    println!("\nreconnects per 100 ms window: {}", hist.join(", "));
    for z in zs {
        z.stop().await?;
    }
    process.stop().await?;
    Ok(())
}

// ---- kds-memory ---------------------------------------------------------------------

/// Waits until `GET {base}/{name}` answers 200 for every name.
pub(crate) async fn wait_present(agent: &ureq::Agent, base: &str, mut missing: Vec<String>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !missing.is_empty() {
        let (agent, url) = (agent.clone(), base.to_string());
        missing = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let mut still = Vec::new();
            for name in missing {
                if agent.get(&format!("{url}/{name}")).call()?.status().as_u16() != 200 {
                    still.push(name);
                }
            }
            Ok(still)
        })
        .await??;
        if Instant::now() > deadline {
            bail!("{} resources still missing at {base} after 300 s", missing.len());
        }
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub async fn memory(zones: usize, dataplanes: usize, steps: usize, store: &str, kind: ZoneKind) -> anyhow::Result<()> {
    let etcd = match store {
        "etcd" => Some(EtcdServer::start().await.map_err(|e| anyhow!("starting etcd: {e}"))?),
        "embedded" => None,
        other => bail!("unknown store {other:?} (embedded or etcd)"),
    };
    let dir = tempfile::tempdir()?;
    let (process, _) = GlobalProcess::start(&dir.path().join("data"), store, etcd.as_ref())?;
    let agent = agent();
    wait_ready(&agent, &process.api, Duration::from_secs(60)).await?;
    let join = process.join(&agent).await?;
    let mesh = "memory";
    put_ok(&agent, format!("{}/meshes/{mesh}", process.api), mesh_doc(mesh)).await?;
    let mut tokens = Vec::with_capacity(zones);
    for i in 0..zones {
        tokens.push(process.token(&agent, &format!("zone-{i}")).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = process.pid();
    let (_, base) = peak_rss_kib(pid)?;
    let own_base = own_rss_kib();

    let mut zs = Vec::with_capacity(zones);
    for (i, token) in tokens.into_iter().enumerate() {
        zs.push(Zone::start(kind, &format!("zone-{i}"), &join, token).await?);
    }
    wait_synced(
        &zs,
        &ResourceKey::global(ResourceType::Mesh, mesh),
        Duration::from_secs(60),
    )
    .await?;
    // Let the zone insights be written and the streams settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, with_zones) = peak_rss_kib(pid)?;
    let own_zones = own_rss_kib();

    // Dataplanes in `steps` equal steps; RSS after each, so that the
    // marginal cost shows apart from fixed buffers that fill on the way.
    let per_zone = dataplanes / zones.max(1);
    let steps = steps.clamp(1, per_zone.max(1));
    let t = Instant::now();
    let mut after_step = Vec::with_capacity(steps);
    for step in 0..steps {
        let (from, to) = (per_zone * step / steps, per_zone * (step + 1) / steps);
        futures::stream::iter(zs.iter().enumerate().flat_map(|(z, zone)| {
            (from..to).map(move |i| (zone.manager.clone(), format!("z{z}-dp-{i}"), z * per_zone + i))
        }))
        .map(|(manager, name, i)| async move { apply(&manager, dataplane(mesh, &name, i)).await })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
        let want = to * zones;
        // Checked one by one: a list, even `?size=1`, would make the global
        // materialise every dataplane as JSON and inflate its RSS.
        let names = (0..zones).flat_map(|z| (from..to).map(move |i| format!("zone-{z}.z{z}-dp-{i}")));
        wait_present(
            &agent,
            &format!("{}/meshes/{mesh}/dataplanes", process.api),
            names.collect(),
        )
        .await?;
        // Let the insights flush and the streams settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        after_step.push((want, peak_rss_kib(pid)?.1));
    }
    let synced_in = t.elapsed();
    let (hwm, _) = peak_rss_kib(pid)?;
    let total = per_zone * zones;

    println!(
        "kds-memory on {store}: the real meridian-global binary; {zones} {kind:?} zones in this process; \
         {total} dataplanes ({per_zone} per zone, in {steps} steps) created at the zones, synced to the global \
         in {:.1} s (with {} s of settling per step)\n",
        synced_in.as_secs_f64(),
        2 * steps
    );
    println!("| {:<44} | {:>14} |", "measure", "value");
    println!("|{}|{}|", "-".repeat(46), "-".repeat(16));
    let mut rows = vec![
        ("global VmRSS, no zones".to_string(), mib(base)),
        (format!("global VmRSS, {zones} zones connected"), mib(with_zones)),
        (
            "  per connected zone".to_string(),
            format!(
                "{:.0} KiB",
                with_zones.saturating_sub(base) as f64 / zones.max(1) as f64
            ),
        ),
    ];
    let mut prev = (0usize, with_zones);
    for (n, rss) in &after_step {
        rows.push((
            format!("global VmRSS, {n} dataplanes"),
            format!(
                "{} ({:+.0} KiB/1k)",
                mib(*rss),
                (*rss as f64 - prev.1 as f64) / ((n - prev.0).max(1) as f64 / 1000.0)
            ),
        ));
        prev = (*n, *rss);
    }
    let last = after_step.last().map(|(_, r)| *r).unwrap_or(with_zones);
    rows.extend([
        (
            format!("  per 1,000 dataplanes, average over {total}"),
            format!(
                "{:.0} KiB",
                last.saturating_sub(with_zones) as f64 / (total.max(1) as f64 / 1000.0)
            ),
        ),
        ("global peak RSS (VmHWM)".to_string(), mib(hwm)),
        (
            format!("this process: {zones} {kind:?} zones"),
            format!(
                "{:.0} KiB/zone",
                own_zones.saturating_sub(own_base) as f64 / zones.max(1) as f64
            ),
        ),
    ]);
    for (k, v) in rows {
        println!("| {k:<44} | {v:>14} |");
    }
    for z in zs {
        z.stop().await?;
    }
    drop(process);
    Ok(())
}
