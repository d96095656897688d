//! `meridian-zone`: parses flags and runs a zone control plane.
//!
//! With `--global-address` the zone is federated: it receives meshes and
//! policies from the global over KDS and sends its inventory up; its API is
//! read-only for what the global owns. Without it the zone runs standalone
//! and owns meshes and policies itself (defaults included). Flags,
//! environment and the `--config` file: `meridian_zone::config`.

use clap::{Parser, Subcommand};
use meridian_server::process;
use meridian_zone::config::{RunArgs, Settings};
use meridian_zone::start;

#[derive(Parser)]
#[command(name = "meridian-zone", version, about = "Meridian zone control plane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a zone control plane. A flag given twice takes its last value,
    /// so a line printed by `meridianctl generate zone-join` can be run
    /// with flags of one's own after it.
    #[command(args_override_self = true)]
    Run(RunArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cmd::Run(args) = Cli::parse().cmd;
    let kuma_skip = std::env::var("KUMA_DEFAULTS_SKIP_MESH_CREATION")
        .ok()
        .map(|v| v.eq_ignore_ascii_case("true"));
    let settings = Settings::resolve(args, kuma_skip)?;
    process::init_logging(settings.log_level.as_deref(), settings.log_format)?;
    let open_files = meridian_server::http_serve::raise_open_files_limit();
    tracing::debug!(?open_files, "open files limit");
    let config = settings.into_zone_config()?;
    let zone = start(config).await?;
    process::shutdown_signal().await;
    zone.stop().await?;
    tracing::info!("stopped");
    Ok(())
}
