//! `meridian-global`: parses flags and runs the global control plane.

use clap::{Parser, Subcommand};
use meridian_global::config::{GlobalConfig, RunArgs};
use meridian_server::process;

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
    let Cmd::Run(args) = Cli::parse().cmd;
    let kuma_skip = std::env::var("KUMA_DEFAULTS_SKIP_MESH_CREATION")
        .ok()
        .map(|v| v.eq_ignore_ascii_case("true"));
    let config = GlobalConfig::resolve(args, kuma_skip)?;
    process::init_logging(config.log_level.as_deref(), config.log_format)?;
    let open_files = meridian_server::http_serve::raise_open_files_limit();
    tracing::debug!(?open_files, "open files limit");
    let instance_id = format!("global-{}-{}", process::hostname(), std::process::id());
    let global = meridian_global::start(config, instance_id).await?;
    process::shutdown_signal().await;
    global.stop().await?;
    tracing::info!("stopped");
    Ok(())
}
