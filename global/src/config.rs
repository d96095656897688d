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
    /// CA certificate (PEM) of etcd's https endpoints
    #[arg(long, env = "MERIDIAN_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client certificate authentication
    #[arg(long, env = "MERIDIAN_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of the etcd client certificate
    #[arg(long, env = "MERIDIAN_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// Certificate (PEM) of the KDS server
    #[arg(long, env = "MERIDIAN_KDS_TLS_CERT")]
    pub kds_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the KDS server
    #[arg(long, env = "MERIDIAN_KDS_TLS_KEY")]
    pub kds_tls_key: Option<PathBuf>,
    /// Address zones dial for KDS, grpcs://HOST:PORT, handed out by
    /// `meridianctl generate zone-join` [default: grpcs://127.0.0.1:<kds port>
    /// when kds-addr is a wildcard or loopback address, else grpcs://<kds-addr>]
    #[arg(long, env = "MERIDIAN_KDS_ADVERTISED_ADDRESS")]
    pub kds_advertised_address: Option<String>,
    /// HTTP/2 keepalive of KDS streams, e.g. 10s; a zone that vanishes
    /// without closing shows offline within about twice this [default: 10s]
    #[arg(long, env = "MERIDIAN_KDS_KEEPALIVE")]
    pub kds_keepalive: Option<meridian_core::duration::Duration>,
    /// Most connections the KDS server holds at once (a zone control plane
    /// keeps one); more are closed at once [default: 4096]
    #[arg(long, env = "MERIDIAN_KDS_MAX_CONNECTIONS")]
    pub kds_max_connections: Option<usize>,
    /// Do not create the `default` mesh on first start
    #[arg(long, env = "MERIDIAN_DEFAULTS_SKIP_MESH_CREATION")]
    pub defaults_skip_mesh_creation: Option<bool>,
    /// File the admin token is written to [default: <data-dir>/admin-token]
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve /metrics without a token (for a scraper without credentials)
    #[arg(long, env = "MERIDIAN_METRICS_PUBLIC")]
    pub metrics_public: Option<bool>,
    /// How long audit entries are kept [default: 720h]
    #[arg(long, env = "MERIDIAN_AUDIT_RETENTION")]
    pub audit_retention: Option<meridian_core::duration::Duration>,
    /// Certificate (PEM) to serve the HTTP API over TLS
    #[arg(long, env = "MERIDIAN_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the API's TLS certificate
    #[arg(long, env = "MERIDIAN_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Most API connections open at once; more are closed on accept [default: 1024]
    #[arg(long, env = "MERIDIAN_API_MAX_CONNECTIONS")]
    pub api_max_connections: Option<usize>,
    /// Time a client has to send a request's headers (and a TLS handshake) [default: 10s]
    #[arg(long, env = "MERIDIAN_API_HEADER_TIMEOUT")]
    pub api_header_timeout: Option<meridian_core::duration::Duration>,
    /// Log level or filter (`debug`, `meridian_global=debug,info`) [default: RUST_LOG, else info]
    #[arg(long, env = "MERIDIAN_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log lines as text or JSON objects [default: text]
    #[arg(long, env = "MERIDIAN_LOG_FORMAT", value_enum)]
    pub log_format: Option<meridian_server::process::LogFormat>,
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
    pub etcd_cacert: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub kds_tls_cert: Option<PathBuf>,
    pub kds_tls_key: Option<PathBuf>,
    pub kds_advertised_address: Option<String>,
    pub kds_keepalive: Option<meridian_core::duration::Duration>,
    pub kds_max_connections: Option<usize>,
    pub defaults_skip_mesh_creation: Option<bool>,
    pub admin_token_file: Option<PathBuf>,
    pub metrics_public: Option<bool>,
    pub audit_retention: Option<meridian_core::duration::Duration>,
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    pub api_max_connections: Option<usize>,
    pub api_header_timeout: Option<meridian_core::duration::Duration>,
    pub log_level: Option<String>,
    pub log_format: Option<meridian_server::process::LogFormat>,
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
    pub etcd_tls: meridian_server::backend::EtcdTlsFiles,
    pub kds_tls_cert: Option<PathBuf>,
    pub kds_tls_key: Option<PathBuf>,
    /// `None`: derived from `kds_addr`, see [`GlobalConfig::kds_advertised_address`].
    pub kds_advertised_address: Option<String>,
    pub kds_keepalive: std::time::Duration,
    pub kds_max_connections: usize,
    pub defaults_skip_mesh_creation: bool,
    /// `None`: `<data-dir>/admin-token`.
    pub admin_token_file: Option<PathBuf>,
    pub metrics_public: bool,
    pub audit_retention: std::time::Duration,
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    pub api_limits: meridian_server::http_serve::Limits,
    /// `None`: `RUST_LOG`, else `info`.
    pub log_level: Option<String>,
    pub log_format: meridian_server::process::LogFormat,
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
            etcd_tls: Default::default(),
            kds_tls_cert: None,
            kds_tls_key: None,
            kds_advertised_address: None,
            kds_keepalive: std::time::Duration::from_secs(10),
            kds_max_connections: 4096,
            defaults_skip_mesh_creation: false,
            admin_token_file: None,
            metrics_public: false,
            audit_retention: meridian_server::access::DEFAULT_AUDIT_RETENTION,
            api_tls_cert: None,
            api_tls_key: None,
            api_limits: meridian_server::http_serve::Limits::default(),
            log_level: None,
            log_format: meridian_server::process::LogFormat::Text,
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
    /// The address zones dial for KDS: the configured one, or one derived
    /// from `kds_addr` (a wildcard or loopback bind is advertised as
    /// 127.0.0.1, good for a single machine).
    pub fn kds_advertised_address(&self) -> String {
        if let Some(a) = &self.kds_advertised_address {
            return a.clone();
        }
        let ip = self.kds_addr.ip();
        if ip.is_unspecified() || ip.is_loopback() {
            format!("grpcs://127.0.0.1:{}", self.kds_addr.port())
        } else {
            format!("grpcs://{}", self.kds_addr)
        }
    }

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
            etcd_tls: meridian_server::backend::EtcdTlsFiles {
                cacert: args.etcd_cacert.or(file.etcd_cacert),
                cert: args.etcd_cert.or(file.etcd_cert),
                key: args.etcd_key.or(file.etcd_key),
            },
            kds_tls_cert: args.kds_tls_cert.or(file.kds_tls_cert),
            kds_tls_key: args.kds_tls_key.or(file.kds_tls_key),
            kds_advertised_address: args
                .kds_advertised_address
                .or(file.kds_advertised_address)
                .map(|a| check_advertised_address(&a).map(|_| a))
                .transpose()?,
            kds_keepalive: match args.kds_keepalive.or(file.kds_keepalive) {
                Some(d) if d.is_zero() => anyhow::bail!("kds-keepalive must be greater than zero"),
                Some(d) => d.as_std(),
                None => d.kds_keepalive,
            },
            kds_max_connections: match args.kds_max_connections.or(file.kds_max_connections) {
                Some(0) => anyhow::bail!("kds-max-connections must be at least 1"),
                Some(n) => n,
                None => d.kds_max_connections,
            },
            defaults_skip_mesh_creation: args
                .defaults_skip_mesh_creation
                .or(kuma_skip)
                .or(file.defaults_skip_mesh_creation)
                .unwrap_or(d.defaults_skip_mesh_creation),
            admin_token_file: args.admin_token_file.or(file.admin_token_file),
            metrics_public: args.metrics_public.or(file.metrics_public).unwrap_or(d.metrics_public),
            audit_retention: match args.audit_retention.or(file.audit_retention) {
                Some(r) if r.is_zero() => anyhow::bail!("audit-retention must be greater than zero"),
                Some(r) => r.as_std(),
                None => d.audit_retention,
            },
            api_tls_cert: args.api_tls_cert.or(file.api_tls_cert),
            api_tls_key: args.api_tls_key.or(file.api_tls_key),
            api_limits: meridian_server::http_serve::Limits {
                max_connections: match args.api_max_connections.or(file.api_max_connections) {
                    Some(0) => anyhow::bail!("api-max-connections must be at least 1"),
                    Some(n) => n,
                    None => d.api_limits.max_connections,
                },
                header_timeout: match args.api_header_timeout.or(file.api_header_timeout) {
                    Some(t) if t.is_zero() => anyhow::bail!("api-header-timeout must be greater than zero"),
                    Some(t) => t.as_std(),
                    None => d.api_limits.header_timeout,
                },
            },
            log_level: args.log_level.or(file.log_level),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
        })
    }
}

/// Checks `grpcs://HOST:PORT` and returns HOST (without IPv6 brackets).
pub fn check_advertised_address(address: &str) -> anyhow::Result<String> {
    let bad = |why: &str| anyhow::anyhow!("kds-advertised-address {address:?}: {why}; expected grpcs://HOST:PORT");
    let rest = address
        .strip_prefix("grpcs://")
        .ok_or_else(|| bad("KDS runs over TLS, so the scheme must be grpcs"))?;
    let (host, _) = meridian_core::names::split_host_port(rest).map_err(bad)?;
    Ok(host.to_string())
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

    /// Every flag is documented in the defaults file (set, or commented out
    /// when its default is derived or absent).
    #[test]
    fn defaults_file_names_every_flag() {
        use clap::Args as _;
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/global.defaults.yaml"))
                .unwrap();
        let cmd = RunArgs::augment_args(clap::Command::new("run"));
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long != "config" {
                assert!(
                    text.contains(&format!("{long}:")),
                    "deploy/global.defaults.yaml does not mention {long}"
                );
            }
        }
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

    #[test]
    fn advertised_kds_address() {
        let with = |kds: &str, adv: Option<&str>| GlobalConfig {
            kds_addr: kds.parse().unwrap(),
            kds_advertised_address: adv.map(str::to_string),
            ..GlobalConfig::default()
        };
        assert_eq!(
            GlobalConfig::default().kds_advertised_address(),
            "grpcs://127.0.0.1:5685"
        );
        assert_eq!(
            with("127.0.0.1:7000", None).kds_advertised_address(),
            "grpcs://127.0.0.1:7000"
        );
        assert_eq!(
            with("10.0.0.5:7000", None).kds_advertised_address(),
            "grpcs://10.0.0.5:7000"
        );
        assert_eq!(
            with("[::]:7000", None).kds_advertised_address(),
            "grpcs://127.0.0.1:7000"
        );
        assert_eq!(
            with("0.0.0.0:5685", Some("grpcs://kds.example:443")).kds_advertised_address(),
            "grpcs://kds.example:443"
        );
        assert_eq!(
            check_advertised_address("grpcs://kds.example:5685").unwrap(),
            "kds.example"
        );
        assert_eq!(check_advertised_address("grpcs://[::1]:5685").unwrap(), "::1");
        for bad in [
            "kds.example:5685",
            "http://h:1",
            "grpcs://h",
            "grpcs://h:99999",
            "grpcs://:1",
            "grpcs://a/b:1",
        ] {
            assert!(check_advertised_address(bad).is_err(), "{bad}");
        }
        let args = RunArgs {
            kds_advertised_address: Some("grpc://plain:1".into()),
            ..RunArgs::default()
        };
        let err = GlobalConfig::resolve(args, None).unwrap_err();
        assert!(format!("{err:#}").contains("grpcs"), "{err:#}");
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

    /// The configuration reference in deploy/reference/ is what the flags
    /// and the defaults file say.
    #[test]
    fn reference_is_generated_from_the_flags() {
        let cmd = <RunArgs as clap::Args>::augment_args(clap::Command::new("run"));
        let flags: Vec<meridian_core::reference::FlagDoc> = cmd
            .get_arguments()
            .filter_map(|a| {
                Some(meridian_core::reference::FlagDoc {
                    long: a.get_long()?.to_string(),
                    env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
                    help: a.get_help().map(|h| h.to_string()).unwrap_or_default(),
                })
            })
            .collect();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        meridian_core::reference::check_process(&root, "meridian-global", "global.defaults.yaml", &flags).unwrap();
    }
}
