//! Configuration of `meridian-dp run`: flags, `MERIDIAN_*` environment
//! variables and an optional YAML file, in that order of precedence, over
//! the defaults documented in `deploy/dp.defaults.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

type Dur = meridian_core::duration::Duration;

/// What runs beside the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    /// A proxyless gRPC application: the agent writes its xDS bootstrap and
    /// relays its xDS stream to the zone with the token.
    Grpc,
    /// An Envoy sidecar: the agent writes its bootstrap and runs it.
    Envoy,
}

/// What the proxy is to the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyType {
    /// A dataplane of a mesh (`--mesh`, `--name`).
    Dataplane,
    /// The zone's ingress (`--name` is the ZoneIngress; the token is a zone
    /// ingress token).
    Ingress,
}

/// Flags of `meridian-dp run`; every one optional so that the file can fill
/// what the command line and the environment leave out.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// The zone's xDS address, https://HOST:PORT
    #[arg(long, env = "MERIDIAN_CP_ADDRESS")]
    pub cp_address: Option<String>,
    /// CA certificate (PEM) the zone's xDS server is verified with (the
    /// zone serves it at GET /xds-ca) [default: the system's CA bundle]
    #[arg(long, env = "MERIDIAN_CA_CERT_FILE")]
    pub ca_cert_file: Option<PathBuf>,
    /// The dataplane token (meridianctl generate dataplane-token); read
    /// again at every reconnection
    #[arg(long, env = "MERIDIAN_DATAPLANE_TOKEN_FILE")]
    pub dataplane_token_file: Option<PathBuf>,
    /// Mesh of the dataplane [default: from the dataplane file, else the token]
    #[arg(long, env = "MERIDIAN_MESH")]
    pub mesh: Option<String>,
    /// Name of the dataplane (of the ZoneIngress with --proxy-type ingress)
    /// [default: from the dataplane file, else the token]
    #[arg(long, env = "MERIDIAN_NAME")]
    pub name: Option<String>,
    /// A Dataplane resource (YAML or JSON) to register; without it (and
    /// without --dataplane) the dataplane must be registered already
    #[arg(long, env = "MERIDIAN_DATAPLANE_FILE")]
    pub dataplane_file: Option<PathBuf>,
    /// The Dataplane resource inline, instead of --dataplane-file
    #[arg(long, env = "MERIDIAN_DATAPLANE")]
    pub dataplane: Option<String>,
    /// A value for `{{ NAME }}` in the dataplane definition, NAME=VALUE;
    /// repeat for several
    #[arg(long = "dataplane-var", env = "MERIDIAN_DATAPLANE_VAR", value_delimiter = ',')]
    pub dataplane_var: Option<Vec<String>>,
    /// grpc (proxyless application) or envoy (sidecar)
    #[arg(long, env = "MERIDIAN_PROXY", value_enum)]
    pub proxy: Option<ProxyKind>,
    /// dataplane (default) or ingress
    #[arg(long, env = "MERIDIAN_PROXY_TYPE", value_enum)]
    pub proxy_type: Option<ProxyType>,
    /// Where to write the gRPC xDS bootstrap (the application's
    /// GRPC_XDS_BOOTSTRAP) [default: ./meridian-dp-grpc-bootstrap.json]
    #[arg(long, env = "MERIDIAN_GRPC_BOOTSTRAP_FILE")]
    pub grpc_bootstrap_file: Option<PathBuf>,
    /// Where the agent writes a gRPC application's mesh mTLS files
    /// (cert.pem, key.pem, ca.pem), which its bootstrap's certificate
    /// provider reads [default: ./meridian-dp-certs]
    #[arg(long, env = "MERIDIAN_CERTIFICATES_DIR")]
    pub certificates_dir: Option<PathBuf>,
    /// The loopback address the agent's xDS relay listens on for the
    /// application; port 0 lets the kernel pick [default: 127.0.0.1:0]
    #[arg(long, env = "MERIDIAN_XDS_RELAY_ADDRESS")]
    pub xds_relay_address: Option<SocketAddr>,
    /// Users (uids) whose processes may use the relay, besides root
    /// [default: the agent's own]
    #[arg(
        long = "xds-relay-allowed-uid",
        env = "MERIDIAN_XDS_RELAY_ALLOWED_UID",
        value_delimiter = ','
    )]
    pub xds_relay_allowed_uid: Option<Vec<u32>>,
    /// The Envoy binary [default: envoy on PATH, if any]
    #[arg(long, env = "MERIDIAN_ENVOY_BINARY")]
    pub envoy_binary: Option<PathBuf>,
    /// Where to write the Envoy bootstrap [default: ./meridian-dp-envoy-bootstrap.json]
    #[arg(long, env = "MERIDIAN_ENVOY_BOOTSTRAP_FILE")]
    pub envoy_bootstrap_file: Option<PathBuf>,
    /// Envoy's admin address [default: 127.0.0.1:9901]
    #[arg(long, env = "MERIDIAN_ENVOY_ADMIN_ADDRESS")]
    pub envoy_admin_address: Option<SocketAddr>,
    /// The certificate (PEM) of MeshMetric's Prometheus listener with
    /// `tls.mode: ProvidedTLS` (Envoy); with --metrics-key-file
    #[arg(long, env = "MERIDIAN_METRICS_CERT_FILE")]
    pub metrics_cert_file: Option<PathBuf>,
    /// Its private key (PEM)
    #[arg(long, env = "MERIDIAN_METRICS_KEY_FILE")]
    pub metrics_key_file: Option<PathBuf>,
    /// Longest wait between two attempts to reach the zone [default: 5s]
    #[arg(long, env = "MERIDIAN_RECONNECT_MAX_DELAY")]
    pub reconnect_max_delay: Option<Dur>,
    /// A YAML file with any of the settings above (kebab-case keys)
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The settings file; keys are the flag names.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub cp_address: Option<String>,
    pub ca_cert_file: Option<PathBuf>,
    pub dataplane_token_file: Option<PathBuf>,
    pub mesh: Option<String>,
    pub name: Option<String>,
    pub dataplane_file: Option<PathBuf>,
    pub dataplane: Option<String>,
    pub dataplane_var: Option<Vec<String>>,
    pub proxy: Option<ProxyKind>,
    pub proxy_type: Option<ProxyType>,
    pub grpc_bootstrap_file: Option<PathBuf>,
    pub certificates_dir: Option<PathBuf>,
    pub xds_relay_address: Option<SocketAddr>,
    pub xds_relay_allowed_uid: Option<Vec<u32>>,
    pub envoy_binary: Option<PathBuf>,
    pub envoy_bootstrap_file: Option<PathBuf>,
    pub envoy_admin_address: Option<SocketAddr>,
    pub metrics_cert_file: Option<PathBuf>,
    pub metrics_key_file: Option<PathBuf>,
    pub reconnect_max_delay: Option<Dur>,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub cp_address: Option<String>,
    pub ca_cert_file: Option<PathBuf>,
    pub dataplane_token_file: Option<PathBuf>,
    pub mesh: Option<String>,
    pub name: Option<String>,
    pub dataplane_file: Option<PathBuf>,
    pub dataplane: Option<String>,
    pub dataplane_vars: Vec<(String, String)>,
    pub proxy: ProxyKind,
    pub proxy_type: ProxyType,
    pub grpc_bootstrap_file: PathBuf,
    pub certificates_dir: PathBuf,
    pub xds_relay_address: SocketAddr,
    /// Empty: the agent's own uid.
    pub xds_relay_allowed_uids: Vec<u32>,
    pub envoy_binary: Option<PathBuf>,
    pub envoy_bootstrap_file: PathBuf,
    pub envoy_admin_address: SocketAddr,
    /// MeshMetric's Prometheus TLS files (certificate, key), both or none.
    pub metrics_tls: Option<(PathBuf, PathBuf)>,
    pub reconnect_max_delay: Duration,
}

/// Where the system's CA bundle is on Debian and most distributions.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cp_address: None,
            ca_cert_file: None,
            dataplane_token_file: None,
            mesh: None,
            name: None,
            dataplane_file: None,
            dataplane: None,
            dataplane_vars: Vec::new(),
            proxy: ProxyKind::Grpc,
            proxy_type: ProxyType::Dataplane,
            grpc_bootstrap_file: PathBuf::from("./meridian-dp-grpc-bootstrap.json"),
            certificates_dir: PathBuf::from("./meridian-dp-certs"),
            xds_relay_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            xds_relay_allowed_uids: Vec::new(),
            envoy_binary: None,
            envoy_bootstrap_file: PathBuf::from("./meridian-dp-envoy-bootstrap.json"),
            envoy_admin_address: SocketAddr::from(([127, 0, 0, 1], 9901)),
            metrics_tls: None,
            reconnect_max_delay: Duration::from_secs(5),
        }
    }
}

fn parse_vars(vars: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    vars.iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.trim().is_empty() => Ok((k.trim().to_string(), val.to_string())),
            _ => bail!("--dataplane-var {v:?}: expected NAME=VALUE"),
        })
        .collect()
}

impl Settings {
    /// Flags and environment over the file over the defaults.
    pub fn resolve(args: RunArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                serde_yaml_ng::from_str::<FileConfig>(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let d = Settings::default();
        let max_delay = match args.reconnect_max_delay.or(file.reconnect_max_delay) {
            Some(x) if x.is_zero() => bail!("reconnect-max-delay must be greater than zero"),
            Some(x) => x.as_std(),
            None => d.reconnect_max_delay,
        };
        let metrics_tls = match (
            args.metrics_cert_file.or(file.metrics_cert_file),
            args.metrics_key_file.or(file.metrics_key_file),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("metrics-cert-file and metrics-key-file go together: give both or neither"),
        };
        Ok(Settings {
            cp_address: args.cp_address.or(file.cp_address),
            ca_cert_file: args.ca_cert_file.or(file.ca_cert_file),
            dataplane_token_file: args.dataplane_token_file.or(file.dataplane_token_file),
            mesh: args.mesh.or(file.mesh),
            name: args.name.or(file.name),
            dataplane_file: args.dataplane_file.or(file.dataplane_file),
            dataplane: args.dataplane.or(file.dataplane),
            dataplane_vars: parse_vars(&args.dataplane_var.or(file.dataplane_var).unwrap_or_default())?,
            proxy: args.proxy.or(file.proxy).unwrap_or(d.proxy),
            proxy_type: args.proxy_type.or(file.proxy_type).unwrap_or(d.proxy_type),
            grpc_bootstrap_file: args
                .grpc_bootstrap_file
                .or(file.grpc_bootstrap_file)
                .unwrap_or(d.grpc_bootstrap_file),
            certificates_dir: args
                .certificates_dir
                .or(file.certificates_dir)
                .unwrap_or(d.certificates_dir),
            xds_relay_address: args
                .xds_relay_address
                .or(file.xds_relay_address)
                .unwrap_or(d.xds_relay_address),
            xds_relay_allowed_uids: args
                .xds_relay_allowed_uid
                .or(file.xds_relay_allowed_uid)
                .unwrap_or_default(),
            envoy_binary: args.envoy_binary.or(file.envoy_binary),
            envoy_bootstrap_file: args
                .envoy_bootstrap_file
                .or(file.envoy_bootstrap_file)
                .unwrap_or(d.envoy_bootstrap_file),
            envoy_admin_address: args
                .envoy_admin_address
                .or(file.envoy_admin_address)
                .unwrap_or(d.envoy_admin_address),
            metrics_tls,
            reconnect_max_delay: max_delay,
        })
    }

    /// The CA file the zone is verified with.
    pub fn ca_file(&self) -> &Path {
        self.ca_cert_file.as_deref().unwrap_or(Path::new(SYSTEM_CA_BUNDLE))
    }

    /// The uids the relay serves (besides root).
    pub fn relay_uids(&self) -> Vec<u32> {
        if self.xds_relay_allowed_uids.is_empty() {
            vec![crate::peer::own_uid()]
        } else {
            self.xds_relay_allowed_uids.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults_file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dp.defaults.yaml")
    }

    /// The documented defaults file says exactly what `Default` does.
    #[test]
    fn defaults_file_matches_default() {
        let args = RunArgs {
            config: Some(defaults_file()),
            ..RunArgs::default()
        };
        assert_eq!(Settings::resolve(args).unwrap(), Settings::default());
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
                "deploy/dp.defaults.yaml does not mention {long}"
            );
        }
    }

    #[test]
    fn metrics_tls_files_go_together() {
        let one = RunArgs {
            metrics_cert_file: Some(PathBuf::from("/tls.crt")),
            ..RunArgs::default()
        };
        let e = Settings::resolve(one).unwrap_err().to_string();
        assert!(e.contains("give both or neither"), "{e}");
        let both = RunArgs {
            metrics_cert_file: Some(PathBuf::from("/tls.crt")),
            metrics_key_file: Some(PathBuf::from("/tls.key")),
            ..RunArgs::default()
        };
        assert_eq!(
            Settings::resolve(both).unwrap().metrics_tls,
            Some((PathBuf::from("/tls.crt"), PathBuf::from("/tls.key")))
        );
    }

    #[test]
    fn vars_and_derived_paths() {
        assert_eq!(
            parse_vars(&["address=10.0.0.1".into(), "port=80=x".into()]).unwrap(),
            [("address".into(), "10.0.0.1".into()), ("port".into(), "80=x".into())]
        );
        assert!(parse_vars(&["novalue".into()]).is_err());
        assert!(parse_vars(&["=x".into()]).is_err());
        let s = Settings::default();
        assert_eq!(s.relay_uids(), vec![crate::peer::own_uid()]);
        assert_eq!(s.ca_file(), Path::new(SYSTEM_CA_BUNDLE));
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
        meridian_core::reference::check_process(&root, "meridian-dp", "dp.defaults.yaml", &flags).unwrap();
    }
}
