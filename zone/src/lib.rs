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

use meridian_server::backend::{self, StoreKind, StoreSettings};
use meridian_server::manager::Manager;
use meridian_server::{Mode, ServerConfig};
use meridian_store::leader::LeaderHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod ingress;
pub mod kds;
pub mod policies;
pub mod xds;

/// Everything a zone needs to run.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    pub zone: String,
    pub api_addr: SocketAddr,
    /// Where the ADS server for the zone's proxies listens.
    pub xds_addr: SocketAddr,
    pub store: StoreKind,
    pub data_dir: PathBuf,
    /// How to reach the global; `None` runs standalone.
    pub federation: Option<kds::ClientSettings>,
    /// `--ingress-address`: create an ingress advertising HOST:PORT.
    pub ingress_address: Option<(String, u16)>,
    /// Standalone only: create the `default` mesh on first start.
    pub create_default_mesh: bool,
}

/// A running zone.
pub struct RunningZone {
    pub api_addr: SocketAddr,
    pub xds_addr: SocketAddr,
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
    })
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let server = meridian_server::start(
        ServerConfig {
            api_addr: config.api_addr,
            mode,
            create_default_mesh: config.create_default_mesh,
            global: None,
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
        tasks.push(tokio::spawn(kds::run(settings, manager, connected_tx, stop_rx.clone())));
    }
    tasks.push(tokio::spawn(ingress::run(
        server.manager.clone(),
        config.zone.clone(),
        config.ingress_address,
        stop_rx.clone(),
    )));
    let zone_xds = xds::ZoneXds::start(
        server.manager.clone(),
        config.zone.clone(),
        policies::resolver_factory(),
        stop_rx.clone(),
    );
    let inspector: Arc<dyn meridian_server::api::DataplaneInspector> = Arc::new(zone_xds.clone());
    let _ = server.inspector.set(inspector);
    let xds_addr = serve_xds(config.xds_addr, zone_xds.clone(), stop_rx.clone()).await?;
    Ok(RunningZone {
        api_addr: server.api_addr,
        xds_addr,
        xds: zone_xds,
        manager: server.manager,
        connected,
        stop: stop_tx,
        tasks,
        api: server.task,
        leader: backend.leader,
    })
}

/// Serves ADS for the zone's proxies until `shutdown` turns true.
async fn serve_xds(
    addr: SocketAddr,
    source: xds::ZoneXds,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding xDS to {addr}"))?;
    let bound = listener.local_addr()?;
    let service = meridian_xds::ads::AdsServer::new(Arc::new(source)).into_service();
    // Small protocol messages must not wait for Nagle's algorithm.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "xDS server failed");
        }
    });
    tracing::info!(%bound, "xDS (ADS) listening");
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
