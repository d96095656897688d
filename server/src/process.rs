//! Process plumbing shared by the binaries: logging, signals, identity.

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs through `tracing` at `level` (an `EnvFilter` directive such as
/// `info` or `meridian_global=debug,info`; without one `RUST_LOG`, else
/// `info`), in `format`; colours only on a terminal, and never with
/// `NO_COLOR` set, so log files and collectors get plain text.
pub fn init_logging(level: Option<&str>, format: LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::try_new(l)
            .map_err(|e| anyhow::anyhow!("log-level {l:?} is not a level or filter: {e}"))?,
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
    Ok(())
}

/// [`init_logging`] from `RUST_LOG`, as text.
pub fn init_tracing() {
    // Without a level there is nothing to refuse.
    let _ = init_logging(None, LogFormat::Text);
}

/// The machine's host name, for instance ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down");
}
