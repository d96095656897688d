//! `meridian-global`: parses flags and runs the global control plane.

use clap::{Parser, Subcommand};

mod config;

use std::sync::Arc;

use config::{GlobalConfig, RunArgs};
use meridian_server::backend::{self, StoreKind, StoreSettings};
use meridian_server::global_services::GlobalServices;
use meridian_server::tokens::ZoneTokens;
use meridian_server::{process, tls, Mode, ServerConfig};

#[derive(Parser)]
#[command(name = "meridian-global", version, about = "Meridian global control plane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the global control plane.
    Run(RunArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    process::init_tracing();
    let Cmd::Run(args) = Cli::parse().cmd;
    let kuma_skip = std::env::var("KUMA_DEFAULTS_SKIP_MESH_CREATION")
        .ok()
        .map(|v| v.eq_ignore_ascii_case("true"));
    let config = GlobalConfig::resolve(args, kuma_skip)?;
    run(config).await
}

async fn run(config: GlobalConfig) -> anyhow::Result<()> {
    tracing::info!(?config, "starting meridian-global");
    let instance_id = format!("global-{}-{}", process::hostname(), std::process::id());
    let backend = backend::open(&StoreSettings {
        kind: config.store,
        data_dir: &config.data_dir,
        etcd_endpoints: &config.etcd_endpoints,
        etcd_prefix: &config.etcd_prefix,
        instance_id: &instance_id,
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
        &backend.store,
        ca_copy_dir,
        config.kds_tls_cert.as_deref(),
        config.kds_tls_key.as_deref(),
        &tls_names,
    )
    .await?;
    let global = Arc::new(GlobalServices {
        tokens: ZoneTokens::new(backend.store.clone()),
        kds_address,
        ca_pem: tls.ca_pem.clone(),
    });

    let server = meridian_server::start(
        ServerConfig {
            api_addr: config.api_addr,
            mode: Mode::Global,
            create_default_mesh: !config.defaults_skip_mesh_creation,
            global: Some(global.clone()),
        },
        backend.store,
        backend.leader.subscribe(),
        process::shutdown_signal(),
    )
    .await?;
    server.task.await??;
    // Hand leadership over at once instead of letting the lease expire.
    backend.leader.resign().await;
    tracing::info!("stopped");
    Ok(())
}
