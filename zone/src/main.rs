//! `meridian-zone`: parses flags and runs a zone control plane.
//!
//! Without `--global-address` the zone runs standalone: it owns meshes and
//! policies itself (defaults included). Federation with a global over KDS
//! is not built yet; asking for it is refused with a clear error rather than
//! silently running standalone.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use meridian_core::names::check_rfc1035_label;
use meridian_server::backend::{self, StoreKind, StoreSettings};
use meridian_server::{process, Mode, ServerConfig};
use serde::Deserialize;

#[derive(Parser)]
#[command(name = "meridian-zone", version, about = "Meridian zone control plane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a zone control plane.
    Run(RunArgs),
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// Name of this zone (an RFC 1035 label)
    #[arg(long, env = "MERIDIAN_ZONE")]
    zone: Option<String>,
    /// KDS address(es) of the global, e.g. grpcs://127.0.0.1:5685
    #[arg(long, env = "MERIDIAN_GLOBAL_ADDRESS", value_delimiter = ',')]
    global_address: Option<Vec<String>>,
    /// File holding the zone token issued by the global
    #[arg(long, env = "MERIDIAN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate to verify the global's KDS certificate
    #[arg(long, env = "MERIDIAN_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:5681]
    #[arg(long, env = "MERIDIAN_API_ADDR")]
    api_addr: Option<SocketAddr>,
    /// Address of the xDS (ADS) server [default: 127.0.0.1:5678]
    #[arg(long, env = "MERIDIAN_XDS_ADDR")]
    xds_addr: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./meridian-zone-data]
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Store backend: embedded (default) or memory
    #[arg(long, env = "MERIDIAN_STORE", value_enum)]
    store: Option<StoreKind>,
    /// Advertised address of this zone's ingress, HOST:PORT
    #[arg(long, env = "MERIDIAN_INGRESS_ADDRESS")]
    ingress_address: Option<String>,
    /// Do not create the `default` mesh on first start (standalone only)
    #[arg(long, env = "MERIDIAN_DEFAULTS_SKIP_MESH_CREATION")]
    defaults_skip_mesh_creation: Option<bool>,
    /// A YAML file with any of the settings above (kebab-case keys)
    #[arg(long, env = "MERIDIAN_CONFIG")]
    config: Option<PathBuf>,
}

// The KDS and xDS settings are accepted (so one file serves both modes) but
// only read once federation exists.
#[allow(dead_code)]
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    zone: Option<String>,
    global_address: Option<Vec<String>>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    api_addr: Option<SocketAddr>,
    xds_addr: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    store: Option<StoreKind>,
    ingress_address: Option<String>,
    defaults_skip_mesh_creation: Option<bool>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    process::init_tracing();
    let Cmd::Run(args) = Cli::parse().cmd;
    let file = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_yaml_ng::from_str::<FileConfig>(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let Some(zone) = args.zone.or(file.zone) else {
        bail!("--zone is required");
    };
    check_rfc1035_label(&zone).map_err(|e| anyhow::anyhow!("--zone: {e}"))?;
    if args.global_address.or(file.global_address).is_some() {
        bail!("--global-address: federation with a global control plane (KDS) is not available in this build yet; run without it for a standalone zone");
    }
    let store = args.store.or(file.store).unwrap_or(StoreKind::Embedded);
    if store == StoreKind::Etcd {
        bail!("--store: a zone keeps its replica in the embedded or memory store, not etcd");
    }
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./meridian-zone-data"));
    let api_addr = args
        .api_addr
        .or(file.api_addr)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5681)));
    let kuma_skip = std::env::var("KUMA_DEFAULTS_SKIP_MESH_CREATION")
        .ok()
        .map(|v| v.eq_ignore_ascii_case("true"));
    let skip_mesh = args
        .defaults_skip_mesh_creation
        .or(kuma_skip)
        .or(file.defaults_skip_mesh_creation)
        .unwrap_or(false);

    tracing::info!(%zone, %api_addr, ?store, "starting meridian-zone (standalone)");
    let instance_id = format!("zone-{zone}-{}", std::process::id());
    let backend = backend::open(&StoreSettings {
        kind: store,
        data_dir: &data_dir,
        etcd_endpoints: &[],
        etcd_prefix: "",
        instance_id: &instance_id,
    })
    .await?;
    let server = meridian_server::start(
        ServerConfig {
            api_addr,
            mode: Mode::Standalone { zone },
            create_default_mesh: !skip_mesh,
            global: None,
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
