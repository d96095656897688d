//! `meridian-dp`: parses flags and runs the agent (`meridian_dp::run`).

use clap::{Parser, Subcommand};
use meridian_dp::config::{RunArgs, Settings};

#[derive(Parser)]
#[command(
    name = "meridian-dp",
    version,
    about = "Meridian's dataplane agent: registers the workload's dataplane and connects its proxy to the zone"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run beside a workload until SIGTERM.
    Run(RunArgs),
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stopping");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let Cmd::Run(args) = Cli::parse().cmd;
    let settings = Settings::resolve(args)?;
    meridian_dp::run(settings, stop_signal()).await
}
