//! Configuration of `meridian-zone run`: flags, `MERIDIAN_*` environment
//! variables and an optional YAML file, in that order of precedence, over
//! the defaults documented in `deploy/zone.defaults.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use meridian_core::names::check_rfc1035_label;
use meridian_server::backend::StoreKind;
use serde::Deserialize;

use crate::auth::DpAuth;
use crate::{kds, ZoneConfig};

type Dur = meridian_core::duration::Duration;

/// Flags of `meridian-zone run`; every one optional so that the file can
/// fill what the command line and the environment leave out.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Name of this zone (an RFC 1035 label)
    #[arg(long, env = "MERIDIAN_ZONE")]
    pub zone: Option<String>,
    /// KDS address(es) of the global, e.g. grpcs://127.0.0.1:5685; without
    /// it the zone runs standalone
    #[arg(long, env = "MERIDIAN_GLOBAL_ADDRESS", value_delimiter = ',')]
    pub global_address: Option<Vec<String>>,
    /// File holding the zone token issued by the global
    #[arg(long, env = "MERIDIAN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate to verify the global's KDS certificate
    #[arg(long, env = "MERIDIAN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:5681]
    #[arg(long, env = "MERIDIAN_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Address of the xDS (ADS) server, TLS [default: 127.0.0.1:5678]
    #[arg(long, env = "MERIDIAN_XDS_ADDR")]
    pub xds_addr: Option<SocketAddr>,
    /// Certificate (PEM) of the xDS server [default: generated from the
    /// zone's own CA, which GET /xds-ca serves]
    #[arg(long, env = "MERIDIAN_XDS_TLS_CERT")]
    pub xds_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the xDS server
    #[arg(long, env = "MERIDIAN_XDS_TLS_KEY")]
    pub xds_tls_key: Option<PathBuf>,
    /// Extra names (DNS or IP) for the generated xDS certificate, comma
    /// separated; localhost, 127.0.0.1 and the xds-addr IP are always in
    #[arg(long, env = "MERIDIAN_XDS_TLS_NAMES", value_delimiter = ',')]
    pub xds_tls_names: Option<Vec<String>>,
    /// How proxies authenticate: token (default) or none (development only:
    /// every process that reaches the xDS port is served)
    #[arg(long, env = "MERIDIAN_DP_AUTH", value_enum)]
    pub dp_auth: Option<DpAuth>,
    /// How long a dataplane its proxy registered outlives the proxy's last
    /// connection [default: 1m]
    #[arg(long, env = "MERIDIAN_DATAPLANE_CLEANUP_AGE")]
    pub dataplane_cleanup_age: Option<Dur>,
    /// How long any other dataplane of the zone may stay offline (after its
    /// proxy's last disconnect) before it is removed, as Kuma's dataplane
    /// cleanup age; 0s keeps them [default: 72h]
    #[arg(long, env = "MERIDIAN_OFFLINE_DATAPLANE_CLEANUP_AGE")]
    pub offline_dataplane_cleanup_age: Option<Dur>,
    /// Most connections the xDS server holds at once (a proxy keeps one);
    /// more are closed at once [default: 32768]
    #[arg(long, env = "MERIDIAN_XDS_MAX_CONNECTIONS")]
    pub xds_max_connections: Option<usize>,
    /// Directory of the embedded store [default: ./meridian-zone-data]
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store backend: embedded (default) or memory
    #[arg(long, env = "MERIDIAN_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Advertised address of this zone's ingress, HOST:PORT
    #[arg(long, env = "MERIDIAN_INGRESS_ADDRESS")]
    pub ingress_address: Option<String>,
    /// HTTP/2 keepalive of the KDS streams to the global [default: 10s]
    #[arg(long, env = "MERIDIAN_KDS_KEEPALIVE")]
    pub kds_keepalive: Option<Dur>,
    /// Do not create the `default` mesh on first start (standalone only)
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
    /// The KDS protocol version to announce (tests of version skew only)
    /// [default: this build's]
    #[arg(long, env = "MERIDIAN_KDS_PROTOCOL_VERSION", hide = true)]
    pub kds_protocol_version: Option<u32>,
    /// A YAML file with any of the settings above (kebab-case keys)
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The settings file; keys are the flag names.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub zone: Option<String>,
    pub global_address: Option<Vec<String>>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub api_addr: Option<SocketAddr>,
    pub xds_addr: Option<SocketAddr>,
    pub xds_tls_cert: Option<PathBuf>,
    pub xds_tls_key: Option<PathBuf>,
    pub xds_tls_names: Option<Vec<String>>,
    pub dp_auth: Option<DpAuth>,
    pub dataplane_cleanup_age: Option<Dur>,
    pub offline_dataplane_cleanup_age: Option<Dur>,
    pub xds_max_connections: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<StoreKind>,
    pub ingress_address: Option<String>,
    pub kds_keepalive: Option<Dur>,
    pub kds_protocol_version: Option<u32>,
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

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// The resolved settings, before any file they name is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub zone: Option<String>,
    pub global_address: Vec<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub api_addr: SocketAddr,
    pub xds_addr: SocketAddr,
    pub xds_tls_cert: Option<PathBuf>,
    pub xds_tls_key: Option<PathBuf>,
    pub xds_tls_names: Vec<String>,
    pub dp_auth: DpAuth,
    pub dataplane_cleanup_age: Duration,
    /// Zero: offline dataplanes are kept.
    pub offline_dataplane_cleanup_age: Duration,
    pub xds_max_connections: usize,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub ingress_address: Option<String>,
    pub kds_keepalive: Duration,
    pub kds_protocol_version: u32,
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

impl Default for Settings {
    fn default() -> Self {
        Settings {
            zone: None,
            global_address: Vec::new(),
            token_file: None,
            ca_file: None,
            api_addr: SocketAddr::from(([127, 0, 0, 1], 5681)),
            xds_addr: SocketAddr::from(([127, 0, 0, 1], 5678)),
            xds_tls_cert: None,
            xds_tls_key: None,
            xds_tls_names: Vec::new(),
            dp_auth: DpAuth::Token,
            dataplane_cleanup_age: Duration::from_secs(60),
            offline_dataplane_cleanup_age: Duration::from_secs(72 * 3600),
            xds_max_connections: DEFAULT_XDS_MAX_CONNECTIONS,
            data_dir: PathBuf::from("./meridian-zone-data"),
            store: StoreKind::Embedded,
            ingress_address: None,
            kds_keepalive: Duration::from_secs(10),
            kds_protocol_version: meridian_server::kds::PROTOCOL_VERSION,
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

/// Most connections a zone's xDS server holds at once by default.
pub const DEFAULT_XDS_MAX_CONNECTIONS: usize = 32_768;

fn positive(name: &str, d: Option<Dur>, default: Duration) -> anyhow::Result<Duration> {
    match d {
        Some(d) if d.is_zero() => bail!("{name} must be greater than zero"),
        Some(d) => Ok(d.as_std()),
        None => Ok(default),
    }
}

impl Settings {
    /// Flags and environment over the file over the defaults. `kuma_skip` is
    /// `KUMA_DEFAULTS_SKIP_MESH_CREATION`, honoured for existing settings.
    pub fn resolve(args: RunArgs, kuma_skip: Option<bool>) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let d = Settings::default();
        Ok(Settings {
            zone: args.zone.or(file.zone),
            global_address: args.global_address.or(file.global_address).unwrap_or_default(),
            token_file: args.token_file.or(file.token_file),
            ca_file: args.ca_file.or(file.ca_file),
            api_addr: args.api_addr.or(file.api_addr).unwrap_or(d.api_addr),
            xds_addr: args.xds_addr.or(file.xds_addr).unwrap_or(d.xds_addr),
            xds_tls_cert: args.xds_tls_cert.or(file.xds_tls_cert),
            xds_tls_key: args.xds_tls_key.or(file.xds_tls_key),
            xds_tls_names: args.xds_tls_names.or(file.xds_tls_names).unwrap_or_default(),
            dp_auth: args.dp_auth.or(file.dp_auth).unwrap_or(d.dp_auth),
            dataplane_cleanup_age: positive(
                "dataplane-cleanup-age",
                args.dataplane_cleanup_age.or(file.dataplane_cleanup_age),
                d.dataplane_cleanup_age,
            )?,
            offline_dataplane_cleanup_age: args
                .offline_dataplane_cleanup_age
                .or(file.offline_dataplane_cleanup_age)
                .map_or(d.offline_dataplane_cleanup_age, |d| d.as_std()),
            xds_max_connections: match args.xds_max_connections.or(file.xds_max_connections) {
                Some(0) => bail!("xds-max-connections must be at least 1"),
                Some(n) => n,
                None => d.xds_max_connections,
            },
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            store: args.store.or(file.store).unwrap_or(d.store),
            ingress_address: args.ingress_address.or(file.ingress_address),
            kds_keepalive: positive(
                "kds-keepalive",
                args.kds_keepalive.or(file.kds_keepalive),
                d.kds_keepalive,
            )?,
            kds_protocol_version: args
                .kds_protocol_version
                .or(file.kds_protocol_version)
                .unwrap_or(d.kds_protocol_version),
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
                header_timeout: positive(
                    "api-header-timeout",
                    args.api_header_timeout.or(file.api_header_timeout),
                    d.api_limits.header_timeout,
                )?,
            },
            log_level: args.log_level.or(file.log_level),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
        })
    }

    /// Checks the settings and reads the files they name.
    pub fn into_zone_config(self) -> anyhow::Result<ZoneConfig> {
        let Some(zone) = self.zone else {
            bail!("--zone is required");
        };
        check_rfc1035_label(&zone).map_err(|e| anyhow::anyhow!("--zone: {e}"))?;
        if self.store == StoreKind::Etcd {
            bail!("--store: a zone keeps its replica in the embedded or memory store, not etcd");
        }
        let federation = if self.global_address.is_empty() {
            None
        } else {
            let token_file = self
                .token_file
                .ok_or_else(|| anyhow::anyhow!("--token-file is required with --global-address"))?;
            let ca_file = self
                .ca_file
                .ok_or_else(|| anyhow::anyhow!("--ca-file is required with --global-address"))?;
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("reading the zone token {}", token_file.display()))?
                .trim()
                .to_string();
            let ca_pem = std::fs::read_to_string(&ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
            for a in &self.global_address {
                if !a.starts_with("grpcs://") {
                    bail!("--global-address {a:?}: must be grpcs://HOST:PORT");
                }
            }
            Some(kds::ClientSettings {
                zone: zone.clone(),
                addresses: self.global_address,
                token,
                ca_pem,
                keepalive: self.kds_keepalive,
                protocol: self.kds_protocol_version,
            })
        };
        let ingress_address = match self.ingress_address {
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
        Ok(ZoneConfig {
            zone,
            api_addr: self.api_addr,
            xds_addr: self.xds_addr,
            xds_tls: crate::XdsTls {
                cert: self.xds_tls_cert,
                key: self.xds_tls_key,
                names: self.xds_tls_names,
            },
            dp_auth: self.dp_auth,
            dataplane_cleanup_age: self.dataplane_cleanup_age,
            offline_dataplane_cleanup_age: Some(self.offline_dataplane_cleanup_age).filter(|d| !d.is_zero()),
            xds_max_connections: self.xds_max_connections,
            store: self.store,
            data_dir: self.data_dir.clone(),
            federation,
            ingress_address,
            create_default_mesh: !self.defaults_skip_mesh_creation,
            access: meridian_server::access::AccessConfig {
                admin_token_file: self
                    .admin_token_file
                    .unwrap_or_else(|| self.data_dir.join("admin-token")),
                metrics_public: self.metrics_public,
                audit_retention: self.audit_retention,
                unauthenticated: false,
            },
            api_tls: meridian_server::api_tls::ApiTls::from_paths(self.api_tls_cert, self.api_tls_key)?,
            api_limits: self.api_limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults_file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/zone.defaults.yaml")
    }

    /// The documented defaults file says exactly what `Default` does.
    #[test]
    fn defaults_file_matches_default() {
        let args = RunArgs {
            config: Some(defaults_file()),
            ..RunArgs::default()
        };
        assert_eq!(Settings::resolve(args, None).unwrap(), Settings::default());
    }

    /// Every flag has a key in the defaults file (set or commented out).
    #[test]
    fn defaults_file_names_every_flag() {
        let text = std::fs::read_to_string(defaults_file()).unwrap();
        let cmd = <RunArgs as clap::Args>::augment_args(clap::Command::new("t"));
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "config" {
                continue;
            }
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{long}:"))),
                "deploy/zone.defaults.yaml does not mention {long}"
            );
        }
    }

    #[test]
    fn flags_win_over_the_file_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zone.yaml");
        std::fs::write(&file, "zone: from-file\ndp-auth: none\ndataplane-cleanup-age: 5m\n").unwrap();
        let args = RunArgs {
            zone: Some("from-flag".into()),
            config: Some(file.clone()),
            ..RunArgs::default()
        };
        let s = Settings::resolve(args, None).unwrap();
        assert_eq!(s.zone.as_deref(), Some("from-flag"));
        assert_eq!(s.dp_auth, DpAuth::None);
        assert_eq!(s.dataplane_cleanup_age, Duration::from_secs(300));

        std::fs::write(&file, "dataplane-cleanup-age: 0s\n").unwrap();
        let err = Settings::resolve(
            RunArgs {
                config: Some(file.clone()),
                ..RunArgs::default()
            },
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("dataplane-cleanup-age"), "{err}");
        std::fs::write(&file, "dp-auth: maybe\n").unwrap();
        let err = Settings::resolve(
            RunArgs {
                config: Some(file),
                ..RunArgs::default()
            },
            None,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("dp-auth"), "{err:#}");
        let err = Settings::default().into_zone_config().unwrap_err();
        assert!(err.to_string().contains("--zone is required"), "{err}");
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
        meridian_core::reference::check_process(&root, "meridian-zone", "zone.defaults.yaml", &flags).unwrap();
    }
}
