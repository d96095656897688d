//! Configuration of `meridian-global run`: flags, `MERIDIAN_*` environment
//! variables and an optional YAML file, in that order of precedence, over
//! the defaults documented in `deploy/global.defaults.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use meridian_server::backend::StoreKind;
use serde::Deserialize;

/// Flags of `meridian-global run`. Every flag is optional here so that the
/// file can fill what the command line and the environment leave out.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Address of the HTTP API [default: 127.0.0.1:5681]
    #[arg(long, env = "MERIDIAN_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Address of the KDS gRPC server for zones [default: 0.0.0.0:5685]
    #[arg(long, env = "MERIDIAN_KDS_ADDR")]
    pub kds_addr: Option<SocketAddr>,
    /// Store backend: embedded (default), memory or etcd
    #[arg(long, env = "MERIDIAN_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Directory of the embedded store [default: ./meridian-data]
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// etcd endpoints, comma separated [default: http://127.0.0.1:2379]
    #[arg(long, env = "MERIDIAN_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Key prefix in etcd [default: /meridian]
    #[arg(long, env = "MERIDIAN_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Certificate (PEM) of the KDS server
    #[arg(long, env = "MERIDIAN_KDS_TLS_CERT")]
    pub kds_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the KDS server
    #[arg(long, env = "MERIDIAN_KDS_TLS_KEY")]
    pub kds_tls_key: Option<PathBuf>,
    /// Do not create the `default` mesh on first start
    #[arg(long, env = "MERIDIAN_DEFAULTS_SKIP_MESH_CREATION")]
    pub defaults_skip_mesh_creation: Option<bool>,
    /// A YAML file with any of the settings above (kebab-case keys)
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The settings file; keys are the flag names.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub api_addr: Option<SocketAddr>,
    pub kds_addr: Option<SocketAddr>,
    pub store: Option<StoreKind>,
    pub data_dir: Option<PathBuf>,
    pub etcd_endpoints: Option<Vec<String>>,
    pub etcd_prefix: Option<String>,
    pub kds_tls_cert: Option<PathBuf>,
    pub kds_tls_key: Option<PathBuf>,
    pub defaults_skip_mesh_creation: Option<bool>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    pub api_addr: SocketAddr,
    pub kds_addr: SocketAddr,
    pub store: StoreKind,
    pub data_dir: PathBuf,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub kds_tls_cert: Option<PathBuf>,
    pub kds_tls_key: Option<PathBuf>,
    pub defaults_skip_mesh_creation: bool,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            api_addr: SocketAddr::from(([127, 0, 0, 1], 5681)),
            kds_addr: SocketAddr::from(([0, 0, 0, 0], 5685)),
            store: StoreKind::Embedded,
            data_dir: PathBuf::from("./meridian-data"),
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            etcd_prefix: "/meridian".into(),
            kds_tls_cert: None,
            kds_tls_key: None,
            defaults_skip_mesh_creation: false,
        }
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

impl GlobalConfig {
    /// Resolves flags/env over the file over the defaults. `kuma_skip` is the
    /// value of `KUMA_DEFAULTS_SKIP_MESH_CREATION`, honoured for users coming
    /// with existing settings.
    pub fn resolve(args: RunArgs, kuma_skip: Option<bool>) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let d = GlobalConfig::default();
        Ok(GlobalConfig {
            api_addr: args.api_addr.or(file.api_addr).unwrap_or(d.api_addr),
            kds_addr: args.kds_addr.or(file.kds_addr).unwrap_or(d.kds_addr),
            store: args.store.or(file.store).unwrap_or(d.store),
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            etcd_endpoints: args.etcd_endpoints.or(file.etcd_endpoints).unwrap_or(d.etcd_endpoints),
            etcd_prefix: args.etcd_prefix.or(file.etcd_prefix).unwrap_or(d.etcd_prefix),
            kds_tls_cert: args.kds_tls_cert.or(file.kds_tls_cert),
            kds_tls_key: args.kds_tls_key.or(file.kds_tls_key),
            defaults_skip_mesh_creation: args
                .defaults_skip_mesh_creation
                .or(kuma_skip)
                .or(file.defaults_skip_mesh_creation)
                .unwrap_or(d.defaults_skip_mesh_creation),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented defaults file says exactly what `Default` does.
    #[test]
    fn defaults_file_matches_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/global.defaults.yaml");
        let args = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        assert_eq!(GlobalConfig::resolve(args, None).unwrap(), GlobalConfig::default());
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile_dir();
        let file = dir.join("c.yaml");
        std::fs::write(&file, "store: memory\napi-addr: 127.0.0.1:9999\n").unwrap();
        let args = RunArgs {
            config: Some(file),
            api_addr: Some("127.0.0.1:1234".parse().unwrap()),
            ..RunArgs::default()
        };
        let c = GlobalConfig::resolve(args, None).unwrap();
        assert_eq!(c.api_addr.port(), 1234);
        assert_eq!(c.store, StoreKind::Memory);
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let dir = tempfile_dir();
        let file = dir.join("c.yaml");
        std::fs::write(&file, "stor: memory\n").unwrap();
        let args = RunArgs {
            config: Some(file),
            ..RunArgs::default()
        };
        let err = GlobalConfig::resolve(args, None).unwrap_err();
        assert!(format!("{err:#}").contains("stor"), "{err:#}");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "meridian-cfg-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
