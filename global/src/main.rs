//! `meridian-global`: parses flags and runs the global control plane.

use clap::{Parser, Subcommand};

mod config;

use config::{GlobalConfig, RunArgs};
use meridian_server::backend::{self, StoreSettings};
use meridian_server::{process, Mode, ServerConfig};

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
    let server = meridian_server::start(
        ServerConfig {
            api_addr: config.api_addr,
            mode: Mode::Global,
            create_default_mesh: !config.defaults_skip_mesh_creation,
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
