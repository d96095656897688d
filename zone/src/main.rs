//! `meridian-zone`: parses flags and runs a zone control plane.
//!
//! With `--global-address` the zone is federated: it receives meshes and
//! policies from the global over KDS ([`kds`]) and sends its inventory up;
//! its API is read-only for what the global owns. Without it the zone runs
//! standalone and owns meshes and policies itself (defaults included).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use meridian_core::names::check_rfc1035_label;
use meridian_server::backend::StoreKind;
use meridian_server::process;
use serde::Deserialize;
use std::time::Duration;

use meridian_zone::{kds, start, ZoneConfig};

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
    let global_addresses = args.global_address.or(file.global_address).unwrap_or_default();
    let federation = if global_addresses.is_empty() {
        None
    } else {
        let token_file = args
            .token_file
            .or(file.token_file)
            .ok_or_else(|| anyhow::anyhow!("--token-file is required with --global-address"))?;
        let ca_file = args
            .ca_file
            .or(file.ca_file)
            .ok_or_else(|| anyhow::anyhow!("--ca-file is required with --global-address"))?;
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading the zone token {}", token_file.display()))?
            .trim()
            .to_string();
        let ca_pem = std::fs::read_to_string(&ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
        for a in &global_addresses {
            if !a.starts_with("grpcs://") {
                bail!("--global-address {a:?}: must be grpcs://HOST:PORT");
            }
        }
        Some(kds::ClientSettings {
            zone: zone.clone(),
            addresses: global_addresses,
            token,
            ca_pem,
            keepalive: Duration::from_secs(10),
        })
    };
    let ingress_address = match args.ingress_address.or(file.ingress_address) {
        None => None,
        Some(a) => {
            let (host, port) = a
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("--ingress-address {a:?}: expected HOST:PORT"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| anyhow::anyhow!("--ingress-address {a:?}: bad port"))?;
            Some((host.to_string(), port))
        }
    };
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

    let xds_addr = args
        .xds_addr
        .or(file.xds_addr)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5678)));
    let zone = start(ZoneConfig {
        zone,
        api_addr,
        xds_addr,
        store,
        data_dir,
        federation,
        ingress_address,
        create_default_mesh: !skip_mesh,
    })
    .await?;
    process::shutdown_signal().await;
    zone.stop().await?;
    tracing::info!("stopped");
    Ok(())
}
