//! The global control plane of Meridian, as a library: [`start`] runs one
//! global replica (API, KDS server, mesh defaults, zone insights) in this
//! process; `main.rs` only turns flags into a [`config::GlobalConfig`].

use std::net::SocketAddr;
use std::sync::Arc;

use meridian_server::backend::{self, StoreKind, StoreSettings};
use meridian_server::global_services::GlobalServices;
use meridian_server::manager::Manager;
use meridian_server::metrics::KdsMetrics;
use meridian_server::tokens::ZoneTokens;
use meridian_server::{process, tls, Mode, ServerConfig};
use meridian_store::leader::LeaderHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod config;
pub mod insights;
pub mod inspect;
pub mod kds;

use config::GlobalConfig;

/// A running global replica.
pub struct RunningGlobal {
    pub api_addr: SocketAddr,
    pub kds_addr: SocketAddr,
    pub manager: Arc<Manager>,
    /// Tokens, the advertised KDS address and the CA zones verify it with.
    pub services: Arc<GlobalServices>,
    /// Issues dataplane tokens (what `POST /tokens/dataplane` calls).
    pub dataplane_tokens: Arc<meridian_server::identity::dataplane::DataplaneTokenIssuer>,
    /// The admin token of the API (also in the admin token file).
    pub admin_token: String,
    stop: watch::Sender<bool>,
    api: JoinHandle<anyhow::Result<()>>,
    leader: LeaderHandle,
}

/// Starts a global replica with the id `instance_id` (unique per process).
pub async fn start(config: GlobalConfig, instance_id: String) -> anyhow::Result<RunningGlobal> {
    tracing::info!(?config, %instance_id, "starting meridian-global");
    let backend = backend::open(&StoreSettings {
        kind: config.store,
        data_dir: &config.data_dir,
        etcd_endpoints: &config.etcd_endpoints,
        etcd_prefix: &config.etcd_prefix,
        instance_id: &instance_id,
        etcd_tls: &config.etcd_tls,
    })
    .await?;

    // KDS TLS material and zone tokens, shared by every replica on the store.
    let kds_address = config.kds_advertised_address();
    let mut tls_names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    tls_names.extend(config::check_advertised_address(&kds_address).ok());
    let host = process::hostname();
    if tls::check_name(&host).is_ok() {
        tls_names.push(host);
    }
    // The CA copy for operators goes next to the embedded store; on etcd the
    // data dir may not be meant for files (the API and zone-join serve the CA).
    let ca_copy_dir = (config.store == StoreKind::Embedded).then_some(config.data_dir.as_path());
    let tls = tls::load_or_generate(
        &tls::KDS,
        &backend.store,
        ca_copy_dir,
        config.kds_tls_cert.as_deref(),
        config.kds_tls_key.as_deref(),
        &tls_names,
    )
    .await?;
    let services = Arc::new(GlobalServices {
        tokens: ZoneTokens::new(backend.store.clone()),
        kds_address,
        ca_pem: tls.ca_pem.clone(),
    });

    let mut registry = meridian_server::metrics::Registry::default();
    let kds_metrics = KdsMetrics::register(&mut registry);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let server = meridian_server::start(
        ServerConfig {
            api_addr: config.api_addr,
            spec_check: Some(meridian_xds::generate::patch::check_spec),
            mode: Mode::Global,
            create_default_mesh: !config.defaults_skip_mesh_creation,
            global: Some(services.clone()),
            zone: None,
            access: meridian_server::access::AccessConfig {
                admin_token_file: config
                    .admin_token_file
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("admin-token")),
                metrics_public: config.metrics_public,
                audit_retention: config.audit_retention,
                unauthenticated: false,
            },
            instance_id: instance_id.clone(),
            api_tls: meridian_server::api_tls::ApiTls::from_paths(
                config.api_tls_cert.clone(),
                config.api_tls_key.clone(),
            )?,
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

    let insights = insights::ZoneInsights::start(
        server.manager.clone(),
        instance_id,
        config.kds_keepalive,
        config.kds_keepalive * 3,
        kds_metrics,
    );
    let inspections = Arc::new(inspect::Inspections::default());
    let forwarder: Arc<dyn meridian_server::api::ZoneForwarder> = inspections.clone();
    let _ = server.forwarder.set(forwarder);
    let service = kds::KdsService::new(server.manager.clone(), services.clone(), insights, inspections);
    let kds_addr = kds::serve(
        kds::KdsSettings {
            addr: config.kds_addr,
            cert_pem: tls.cert_pem,
            key_pem: tls.key_pem,
            keepalive: config.kds_keepalive,
            max_connections: config.kds_max_connections,
        },
        service,
        stop_rx,
    )
    .await?;
    let dataplane_tokens = server
        .dataplane_tokens
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the global's API has no dataplane token issuer"))?;
    Ok(RunningGlobal {
        api_addr: server.api_addr,
        kds_addr,
        manager: server.manager,
        services,
        dataplane_tokens,
        admin_token: server.admin_token,
        stop: stop_tx,
        api: server.task,
        leader: backend.leader,
    })
}

impl RunningGlobal {
    /// Stops serving and hands leadership over at once.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.api.await??;
        self.leader.resign().await;
        Ok(())
    }
}
