//! The zone control plane of Meridian, as a library: [`start`] runs one
//! zone (API, KDS client when federated, ingress bookkeeping) in this
//! process; `main.rs` only turns flags into a [`ZoneConfig`].
//!
//! With federation the zone receives meshes and policies from the global over
//! KDS ([`kds`]) and sends its inventory up; its API is read-only for what the
//! global owns. Without it the zone runs standalone and owns meshes and
//! policies itself (defaults included).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use meridian_server::backend::{self, StoreKind, StoreSettings};
use meridian_server::identity::dataplane::DataplaneTokenVerifier;
use meridian_server::identity::ingress::IngressTokens;
use meridian_server::identity_api::ZoneServices;
use meridian_server::manager::Manager;
use meridian_server::{tls, Mode, ServerConfig};
use meridian_store::leader::LeaderHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod auth;
pub mod config;
pub mod dp_service;
pub mod ingress;
pub mod kds;
pub mod mtls;
pub mod policies;
pub mod rules;
pub mod xds;

/// Everything a zone needs to run.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    pub zone: String,
    pub api_addr: SocketAddr,
    /// Where the ADS server for the zone's proxies listens.
    pub xds_addr: SocketAddr,
    /// The xDS server's certificate.
    pub xds_tls: XdsTls,
    /// How proxies authenticate.
    pub dp_auth: auth::DpAuth,
    /// How long a proxy-registered dataplane outlives its proxy.
    pub dataplane_cleanup_age: Duration,
    /// How long another dataplane of this zone may stay offline before it
    /// is removed (`None`: kept).
    pub offline_dataplane_cleanup_age: Option<Duration>,
    /// Most connections the xDS server holds at once.
    pub xds_max_connections: usize,
    pub store: StoreKind,
    pub data_dir: PathBuf,
    /// How to reach the global; `None` runs standalone.
    pub federation: Option<kds::ClientSettings>,
    /// `--ingress-address`: create an ingress advertising HOST:PORT.
    pub ingress_address: Option<(String, u16)>,
    /// Standalone only: create the `default` mesh on first start.
    pub create_default_mesh: bool,
    /// Who may call the API.
    pub access: meridian_server::access::AccessConfig,
    /// Serve the API over TLS.
    pub api_tls: Option<meridian_server::api_tls::ApiTls>,
    /// Open connections and the header deadline of the API.
    pub api_limits: meridian_server::http_serve::Limits,
}

/// The xDS server's certificate: given files, or generated from the zone's
/// own CA for `names` (plus localhost, 127.0.0.1 and the bound IP).
#[derive(Clone, Debug, Default)]
pub struct XdsTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub names: Vec<String>,
}

/// A running zone.
pub struct RunningZone {
    pub api_addr: SocketAddr,
    /// The admin token of the zone's API (also in its admin token file).
    pub admin_token: String,
    pub xds_addr: SocketAddr,
    /// The CA (PEM) proxies verify the xDS server with (`GET /xds-ca`).
    pub xds_ca_pem: String,
    /// The proxies' side of the zone.
    pub xds: xds::ZoneXds,
    pub manager: Arc<Manager>,
    /// Whether the KDS streams to the global are up (always false standalone).
    pub connected: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    api: JoinHandle<anyhow::Result<()>>,
    leader: LeaderHandle,
}

/// Starts a zone.
pub async fn start(config: ZoneConfig) -> anyhow::Result<RunningZone> {
    if config.store == StoreKind::Etcd {
        anyhow::bail!("--store: a zone keeps its replica in the embedded or memory store, not etcd");
    }
    let mode = match config.federation {
        Some(_) => Mode::Zone {
            name: config.zone.clone(),
        },
        None => Mode::Standalone {
            zone: config.zone.clone(),
        },
    };
    tracing::info!(zone = %config.zone, api_addr = %config.api_addr, store = ?config.store, ?mode, "starting meridian-zone");
    let instance_id = format!("zone-{}-{}", config.zone, std::process::id());
    let backend = backend::open(&StoreSettings {
        kind: config.store,
        data_dir: &config.data_dir,
        etcd_endpoints: &[],
        etcd_prefix: "",
        instance_id: &instance_id,
        etcd_tls: &Default::default(),
    })
    .await?;
    let mut names = config.xds_tls.names.clone();
    if !config.xds_addr.ip().is_unspecified() {
        names.push(config.xds_addr.ip().to_string());
    }
    let ca_copy_dir = (config.store == StoreKind::Embedded).then_some(config.data_dir.as_path());
    let xds_tls = tls::load_or_generate(
        &tls::XDS,
        &backend.store,
        ca_copy_dir,
        config.xds_tls.cert.as_deref(),
        config.xds_tls.key.as_deref(),
        &names,
    )
    .await?;
    let ingress_tokens = Arc::new(IngressTokens::new(backend.store.clone(), &config.zone));
    let mut registry = meridian_server::metrics::Registry::default();
    let kds_metrics = meridian_server::metrics::KdsMetrics::register(&mut registry);
    let xds_metrics = Arc::new(meridian_xds::metrics::XdsMetrics::register(&mut registry));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let server = meridian_server::start(
        ServerConfig {
            api_addr: config.api_addr,
            spec_check: Some(meridian_xds::generate::patch::check_spec),
            mode,
            create_default_mesh: config.create_default_mesh,
            global: None,
            zone: Some(Arc::new(ZoneServices {
                ingress_tokens: ingress_tokens.clone(),
                xds_ca_pem: xds_tls.ca_pem.clone(),
            })),
            access: config.access.clone(),
            instance_id: instance_id.clone(),
            api_tls: config.api_tls.clone(),
            api_limits: config.api_limits,
            registry,
        },
        backend.store,
        backend.leader.subscribe(),
        async move {
            let _ = api_stop.wait_for(|s| *s).await;
        },
    )
    .await?;
    let mut tasks = Vec::new();
    let (connected_tx, connected) = watch::channel(false);
    if let Some(settings) = config.federation {
        let manager = server.manager.clone();
        tasks.push(tokio::spawn(kds::run(
            settings,
            manager,
            connected_tx,
            kds_metrics,
            server.inspector.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(ingress::run(
        server.manager.clone(),
        config.zone.clone(),
        config.ingress_address,
        stop_rx.clone(),
    )));
    if config.dp_auth == auth::DpAuth::None {
        tracing::warn!(
            "--dp-auth none: proxies are NOT authenticated; any process that reaches {} gets the configuration of any dataplane it names. Development only.",
            config.xds_addr
        );
    }
    let auth = auth::ZoneAuth::new(
        config.dp_auth,
        DataplaneTokenVerifier::new(server.manager.clone()),
        ingress_tokens,
    );
    let zone_mtls = mtls::ZoneMtls::start(server.manager.clone(), config.zone.clone(), stop_rx.clone());
    let zone_xds = xds::ZoneXds::start(
        server.manager.clone(),
        config.zone.clone(),
        policies::resolver_factory(),
        auth,
        zone_mtls,
        xds::XdsSettings {
            cleanup_age: config.dataplane_cleanup_age,
            offline_cleanup_age: config.offline_dataplane_cleanup_age,
            metrics: xds_metrics.clone(),
        },
        stop_rx.clone(),
    );
    let inspector: Arc<dyn meridian_server::api::DataplaneInspector> = Arc::new(zone_xds.clone());
    let _ = server.inspector.set(inspector);
    let xds_addr = serve_xds(
        config.xds_addr,
        config.xds_max_connections,
        &xds_tls,
        zone_xds.clone(),
        xds_metrics,
        stop_rx.clone(),
    )
    .await?;
    Ok(RunningZone {
        api_addr: server.api_addr,
        admin_token: server.admin_token,
        xds_addr,
        xds_ca_pem: xds_tls.ca_pem,
        xds: zone_xds,
        manager: server.manager,
        connected,
        stop: stop_tx,
        tasks,
        api: server.task,
        leader: backend.leader,
    })
}

/// Serves ADS and the dataplane service for the zone's proxies, over TLS,
/// until `shutdown` turns true.
async fn serve_xds(
    addr: SocketAddr,
    max_connections: usize,
    tls: &tls::TlsMaterial,
    source: xds::ZoneXds,
    metrics: Arc<meridian_xds::metrics::XdsMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding xDS to {addr}"))?;
    let bound = listener.local_addr()?;
    let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
    let tls_config = tonic::transport::ServerTlsConfig::new().identity(identity);
    let dataplanes = dp_service::DataplaneService::new(source.clone());
    let service = meridian_xds::ads::AdsServer::new(Arc::new(source))
        .with_metrics(metrics)
        .into_service();
    let router = tonic::transport::Server::builder()
        .tls_config(tls_config)
        .context("the xDS server's TLS configuration")?
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // Headers up to 64 KiB reach the token check, which refuses tokens
        // over 16 KiB with a status that says so; larger header blocks are
        // refused by HTTP/2 itself (431).
        .http2_max_header_list_size(Some(64 * 1024))
        .add_service(service)
        .add_service(dataplanes);
    // Small protocol messages must not wait for Nagle's algorithm.
    let incoming = meridian_server::conn_limit::limit(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        max_connections,
        "xds",
    );
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let result = router.serve_with_incoming_shutdown(incoming, stop).await;
        if let Err(e) = result {
            tracing::error!(error = %e, "xDS server failed");
        }
    });
    tracing::info!(%bound, "xDS (ADS, TLS) listening");
    Ok(bound)
}

impl RunningZone {
    /// Stops everything and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.api.await??;
        self.leader.resign().await;
        Ok(())
    }
}
