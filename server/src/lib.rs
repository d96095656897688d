//! The control-plane runtime shared by `meridian-global` and `meridian-zone`:
//! the HTTP API ([`api`]), resource writes and reads ([`manager`]), mesh
//! defaults ([`defaults`]) and metrics ([`metrics`]).
//!
//! Start at [`start`]: it builds the cache over a store, starts the defaults
//! work (gated by leadership) and serves the API until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use meridian_store::cache::Cache;
use meridian_store::Store;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod access;
pub mod api;
pub mod api_tls;
pub mod backend;
pub mod conn_limit;
pub mod defaults;
pub mod error;
pub mod global_services;
pub mod http_serve;
pub mod identity;
pub mod identity_api;
pub mod kds;
pub mod manager;
pub mod metered_store;
pub mod metrics;
pub mod mtls;
mod overviews;
pub mod process;
pub mod tls;
pub mod tokens;

pub use api::Mode;

/// What the runtime needs to know.
#[derive(Debug)]
pub struct ServerConfig {
    pub api_addr: SocketAddr,
    /// Checks of a resource's spec beyond its own validation, run on every
    /// write (MeshProxyPatch values as Envoy messages, which this crate
    /// cannot parse): violations as (field below `spec`, message).
    pub spec_check: Option<api::SpecCheck>,
    pub mode: Mode,
    /// Create the `default` mesh on first start (global and standalone only).
    pub create_default_mesh: bool,
    /// Zone tokens and KDS join information; the global only.
    pub global: Option<Arc<global_services::GlobalServices>>,
    /// Ingress tokens and the xDS CA; zones only.
    pub zone: Option<Arc<identity_api::ZoneServices>>,
    /// Who may call the API (admin token file, audit retention).
    pub access: access::AccessConfig,
    /// Tells this process's audit records from other replicas'.
    pub instance_id: String,
    /// Serve the API over TLS.
    pub api_tls: Option<api_tls::ApiTls>,
    /// Open connections and the header deadline of the API.
    pub api_limits: http_serve::Limits,
    /// Where `/metrics` reads from: the caller registers its own groups
    /// (KDS, xDS) first; `start` adds the API's, the store's and the
    /// process's.
    pub registry: Registry,
}

/// A running API server.
pub struct Running {
    /// The address the API listens on (useful with port 0).
    pub api_addr: SocketAddr,
    /// Issues dataplane tokens (the global and standalone zones).
    pub dataplane_tokens: Option<Arc<identity::dataplane::DataplaneTokenIssuer>>,
    /// Set once by a zone to serve `/meshes/{mesh}/dataplanes/{name}/xds` and `/policies`.
    pub inspector: Arc<std::sync::OnceLock<Arc<dyn api::DataplaneInspector>>>,
    /// Set once by the global to forward those inspections to zones.
    pub forwarder: Arc<std::sync::OnceLock<Arc<dyn api::ZoneForwarder>>>,
    pub manager: Arc<manager::Manager>,
    /// The admin token of this control plane (also in its admin token file).
    pub admin_token: String,
    pub access: Arc<access::AccessControl>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the cache, the defaults work and the API server; serves until
/// `shutdown` completes.
pub async fn start(
    config: ServerConfig,
    store: Arc<dyn Store>,
    leader: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let mut registry = config.registry;
    let store = metered_store::MeteredStore::wrap(store, metrics::StoreMetrics::register(&mut registry));
    registry.register_collector(Box::new(metrics::ProcessCollector::default()));
    let cache = Cache::start(store.clone());
    let manager = Arc::new(manager::Manager::new(store, cache.clone()));

    // Meshes and their defaults belong to the global or a standalone zone.
    let leader_view = leader.clone();
    let (defaults_done_tx, defaults_done) = watch::channel(false);
    if matches!(config.mode, Mode::Global | Mode::Standalone { .. }) {
        let cfg = defaults::DefaultsConfig {
            create_default_mesh: config.create_default_mesh,
        };
        let m = manager.clone();
        tokio::spawn(async move {
            // The cache must hold the current meshes before the first pass.
            let _ = m.cache().ready().wait_for(|ready| *ready).await;
            defaults::run(m, cfg, leader, defaults_done_tx).await
        });
    } else {
        let _ = defaults_done_tx.send(true);
    }

    // So do the mesh CAs: their roots, and the intermediates zones ask for.
    let local_zone = match &config.mode {
        Mode::Global => None,
        Mode::Zone { .. } => None,
        Mode::Standalone { zone } => Some(zone.clone()),
    };
    if matches!(config.mode, Mode::Global | Mode::Standalone { .. }) {
        let authority = mtls::authority::Authority::new(manager.clone(), local_zone);
        let leader = leader_view.clone();
        let m = manager.clone();
        tokio::spawn(async move {
            let _ = m.cache().ready().wait_for(|ready| *ready).await;
            authority.run(leader).await
        });
    }

    let ready = readiness(cache.clone(), defaults_done);
    let metrics = metrics::ApiMetrics::register(&mut registry);
    let (access, admin_token) = access::AccessControl::start(
        manager.clone(),
        &config.access,
        config.instance_id.clone(),
        &mut registry,
    )
    .await?;
    let inspector = Arc::new(std::sync::OnceLock::new());
    let forwarder = Arc::new(std::sync::OnceLock::new());
    let dataplane_tokens = matches!(config.mode, Mode::Global | Mode::Standalone { .. })
        .then(|| Arc::new(identity::dataplane::DataplaneTokenIssuer::new(manager.clone())));
    let state = Arc::new(api::ApiState {
        manager: manager.clone(),
        mode: config.mode.clone(),
        spec_check: config.spec_check,
        metrics,
        registry,
        ready,
        leader: leader_view,
        global: config.global.clone(),
        dataplane_tokens: dataplane_tokens.clone(),
        zone: config.zone.clone(),
        inspector: inspector.clone(),
        access: access.clone(),
        forwarder: forwarder.clone(),
    });
    let acceptor = config.api_tls.as_ref().map(api_tls::ApiTls::acceptor).transpose()?;
    let listener = TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("binding the API to {}", config.api_addr))?;
    let api_addr = listener.local_addr().context("reading the API address")?;
    tracing::info!(%api_addr, mode = ?config.mode, tls = acceptor.is_some(), "API listening");
    let app = api::router(state);
    let task = tokio::spawn(http_serve::serve(listener, acceptor, app, config.api_limits, shutdown));
    Ok(Running {
        api_addr,
        dataplane_tokens,
        inspector,
        forwarder,
        manager,
        admin_token,
        access,
        task,
    })
}

/// Ready = the cache has loaded from the store and the defaults are done.
fn readiness(cache: Arc<Cache>, mut defaults_done: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let _ = cache.ready().wait_for(|ready| *ready).await;
        while !*defaults_done.borrow_and_update() {
            if defaults_done.changed().await.is_err() {
                return;
            }
        }
        let _ = tx.send(true);
        // Keep the sender alive for as long as anyone reads readiness.
        tx.closed().await;
    });
    rx
}
