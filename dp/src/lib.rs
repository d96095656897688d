//! `meridian-dp`, the agent a workload runs beside it (DESIGN §10), as a
//! library: [`run`] does everything `meridian-dp run` does; `main.rs` only
//! parses flags.
//!
//! What it does, in order:
//! 1. reads the token, the zone's CA and the dataplane definition
//!    ([`dataplane`]), and fails at once when one is unusable;
//! 2. registers the dataplane through the zone's dataplane service
//!    ([`zone`]), retrying with backoff and logging one line per cause of
//!    failure, while
//! 3. serving the proxy: with `--proxy grpc` the local xDS relay
//!    ([`relay`]) and the gRPC bootstrap that names it; with `--proxy envoy`
//!    the Envoy bootstrap ([`bootstrap`]), and Envoy itself when one is
//!    installed;
//! 4. on SIGTERM (or Ctrl-C): stops the proxy, deregisters the dataplane,
//!    and exits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use backoff::backoff::Backoff;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value as PbValue};
use serde_json::Value;

pub mod accesslog;
pub mod bootstrap;
pub mod certificates;
pub mod config;
pub mod dataplane;
pub mod metrics;
pub mod otlp;
pub mod peer;
pub mod relay;
pub mod zone;

use config::{ProxyKind, ProxyType, Settings};
use dataplane::Definition;
use zone::{FailureLog, Zone};

/// How long Envoy may take to exit after SIGTERM before it is killed.
const ENVOY_STOP: Duration = Duration::from_secs(10);
/// How long the gRPC bootstrap waits for the first word on mesh certificates.
const FIRST_CERTIFICATES: Duration = Duration::from_secs(10);
/// How long deregistering may take when the agent stops.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// The mesh and name a token names, read without verifying it (the zone
/// verifies; the agent only uses them as defaults).
pub fn token_identity(token: &str) -> (Option<String>, Option<String>) {
    let claims = token
        .trim()
        .split('.')
        .nth(1)
        .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let field = |k: &str| {
        claims
            .as_ref()
            .and_then(|c| c.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    (field("mesh"), field("name"))
}

/// JSON as a protobuf `Value` (node metadata).
pub fn to_pb(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_pb).collect(),
        }),
        Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_pb(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

fn required<T>(value: Option<T>, flag: &str) -> anyhow::Result<T> {
    value.ok_or_else(|| anyhow::anyhow!("{flag} is required"))
}

/// The dataplane definition, if one is given.
fn definition(s: &Settings) -> anyhow::Result<Option<Definition>> {
    let text = match (&s.dataplane_file, &s.dataplane) {
        (Some(_), Some(_)) => bail!("give --dataplane-file or --dataplane, not both"),
        (Some(f), None) => std::fs::read_to_string(f).with_context(|| format!("--dataplane-file {}", f.display()))?,
        (None, Some(t)) => t.clone(),
        (None, None) => return Ok(None),
    };
    let def = dataplane::parse(&text, &s.dataplane_vars, s.mesh.as_deref(), s.name.as_deref())?;
    Ok(Some(def))
}

/// Who the proxy is to the zone.
struct Identity {
    /// `None` for an ingress.
    mesh: Option<String>,
    name: String,
    node: bootstrap::NodeInfo,
    definition: Option<Definition>,
}

fn identity(s: &Settings, token: &str) -> anyhow::Result<Identity> {
    let def = definition(s)?;
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "meridian.io/agent".into(),
        Value::String(format!("meridian-dp {}", env!("CARGO_PKG_VERSION"))),
    );
    match s.proxy_type {
        ProxyType::Ingress => {
            if def.is_some() {
                bail!("--proxy-type ingress takes no dataplane definition: the zone keeps its ZoneIngress");
            }
            let name = required(s.name.clone(), "--name (the ZoneIngress) with --proxy-type ingress")?;
            metadata.insert("proxyType".into(), Value::String("ingress".into()));
            Ok(Identity {
                mesh: None,
                node: bootstrap::NodeInfo {
                    id: name.clone(),
                    cluster: Some(name.clone()),
                    metadata,
                },
                name,
                definition: None,
            })
        }
        ProxyType::Dataplane => {
            let (token_mesh, token_name) = token_identity(token);
            let mesh = s
                .mesh
                .clone()
                .or_else(|| def.as_ref().map(|d| d.mesh.clone()))
                .or(token_mesh)
                .ok_or_else(|| anyhow::anyhow!("--mesh is required (the dataplane file and the token name none)"))?;
            let name = s
                .name
                .clone()
                .or_else(|| def.as_ref().map(|d| d.name.clone()))
                .or(token_name)
                .ok_or_else(|| anyhow::anyhow!("--name is required (the dataplane file and the token name none)"))?;
            if let Some(d) = &def {
                metadata.insert("dataplane".into(), d.fields.clone());
            }
            if let (ProxyKind::Envoy, Some((cert, key))) = (s.proxy, &s.metrics_tls) {
                // Envoy reads them; the zone names them in the TLS of
                // MeshMetric's Prometheus listener (ProvidedTLS).
                for (field, file) in [("metricsCertPath", cert), ("metricsKeyPath", key)] {
                    let path = absolute(file)?;
                    anyhow::ensure!(
                        path.is_file(),
                        "{}: no such file (--metrics-cert-file/--metrics-key-file)",
                        path.display()
                    );
                    metadata.insert(field.into(), Value::String(path.display().to_string()));
                }
            }
            if s.proxy == ProxyKind::Grpc {
                // The bootstrap defines the certificate provider the zone
                // names in mesh mTLS contexts; its files are this agent's.
                metadata.insert(
                    certificates::PROVIDER_METADATA.into(),
                    Value::String(certificates::PROVIDER_INSTANCE.into()),
                );
            }
            Ok(Identity {
                node: bootstrap::NodeInfo {
                    id: format!("{mesh}.{name}"),
                    cluster: def.as_ref().and_then(|d| d.service().map(str::to_string)),
                    metadata,
                },
                mesh: Some(mesh),
                name,
                definition: def,
            })
        }
    }
}

/// Keeps `def` registered: registers it, holds the call open, and when the
/// zone goes away (a restart) or refuses, registers again with backoff.
async fn register(
    zone: Arc<Zone>,
    def: Definition,
    max_delay: Duration,
    registered: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut backoff = zone::backoff(max_delay);
    let mut log = FailureLog::new("registration");
    loop {
        match zone.register(&def).await {
            Ok((outcome, mut held)) => {
                registered.store(true, std::sync::atomic::Ordering::SeqCst);
                log.ok("dataplane registered");
                backoff.reset();
                tracing::info!(mesh = %def.mesh, name = %def.name, %outcome, zone = zone.address(), "dataplane registered");
                let end = loop {
                    match held.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break tonic::Status::unavailable("the zone ended the registration"),
                        Err(status) => break status,
                    }
                };
                log.failed(&zone.failure(&end));
            }
            Err(f) => {
                log.failed(&f);
            }
        }
        tokio::time::sleep(backoff.next_backoff().unwrap_or(max_delay)).await;
    }
}

/// `envoy` on PATH, if there is one.
fn envoy_on_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("envoy"))
            .find(|p| p.is_file())
    })
}

/// Runs the agent until `shutdown` completes (or Envoy exits).
pub async fn run(s: Settings, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let cp = required(s.cp_address.clone(), "--cp-address")?;
    let token_file = required(s.dataplane_token_file.clone(), "--dataplane-token-file")?;
    let zone = Arc::new(Zone::new(&cp, s.ca_file(), &token_file)?);
    let who = identity(&s, &zone.token())?;
    tracing::info!(node = %who.node.id, zone = %cp, proxy = ?s.proxy, "starting meridian-dp");
    let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let registration = who
        .definition
        .clone()
        .map(|def| tokio::spawn(register(zone.clone(), def, s.reconnect_max_delay, registered.clone())));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let result = match s.proxy {
        ProxyKind::Grpc => run_grpc(&s, &zone, &who, stopped(stop_rx.clone())).await,
        ProxyKind::Envoy => run_envoy(&s, &zone, &who, stopped(stop_rx.clone())).await,
    };
    if let Some(task) = registration {
        task.abort();
    }
    let was_registered = registered.load(std::sync::atomic::Ordering::SeqCst);
    if let (Some(def), Some(mesh), true) = (&who.definition, &who.mesh, was_registered) {
        match tokio::time::timeout(DEREGISTER_TIMEOUT, zone.deregister(mesh, &who.name)).await {
            Ok(Ok(true)) => tracing::info!(mesh, name = %def.name, "dataplane deregistered"),
            Ok(Ok(false)) => {
                tracing::info!(mesh, name = %def.name, "dataplane was not registered by a proxy; left as it is")
            }
            Ok(Err(f)) => tracing::warn!("deregistering the dataplane failed: {f}"),
            Err(_) => tracing::warn!("deregistering the dataplane timed out after {DEREGISTER_TIMEOUT:?}"),
        }
    }
    result
}

async fn run_grpc(
    s: &Settings,
    zone: &Arc<Zone>,
    who: &Identity,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = relay::NodeIdentity {
        id: who.node.id.clone(),
        metadata: who.node.metadata.iter().map(|(k, v)| (k.clone(), to_pb(v))).collect(),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = relay::Relay::new(zone.clone(), node, s.reconnect_max_delay);
    let (bound, task) = relay::serve(relay, s.xds_relay_address, s.relay_uids(), async move {
        let _ = done_rx.await;
    })
    .await?;
    // A dataplane's mesh mTLS files: followed for as long as the agent runs.
    // The bootstrap waits (a little) for the first answer, so that an
    // application started on it finds its certificate in place.
    let files = certificates::Files {
        dir: s.certificates_dir.clone(),
    };
    let mut providers = None;
    let mut following = None;
    if let Some(mesh) = &who.mesh {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        following = Some(tokio::spawn(certificates::follow(
            zone.clone(),
            mesh.clone(),
            who.name.clone(),
            files.clone(),
            s.reconnect_max_delay,
            first_tx,
        )));
        if tokio::time::timeout(FIRST_CERTIFICATES, first_rx).await.is_err() {
            tracing::warn!(
                "no answer about mesh certificates within {FIRST_CERTIFICATES:?}; writing the bootstrap anyway (the files follow)"
            );
        }
        providers = Some(
            files
                .providers()
                .with_context(|| format!("--certificates-dir {}", files.dir.display()))?,
        );
    }
    let b = bootstrap::grpc(&who.node, bound, providers);
    bootstrap::write(&s.grpc_bootstrap_file, &b)
        .with_context(|| format!("writing the gRPC bootstrap {}", s.grpc_bootstrap_file.display()))?;
    tracing::info!(
        bootstrap = %s.grpc_bootstrap_file.display(),
        "ready: run the application with GRPC_XDS_BOOTSTRAP={} and dial xds:///SERVICE",
        s.grpc_bootstrap_file.display()
    );
    stopped.await;
    if let Some(f) = following {
        f.abort();
    }
    let _ = done_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    Ok(())
}

async fn run_envoy(
    s: &Settings,
    zone: &Arc<Zone>,
    who: &Identity,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_, host) = meridian_xds::client::parse_address(zone.address())?;
    let port = zone
        .address()
        .rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("--cp-address {}: no port", zone.address()))?;
    let ca_file = absolute(s.ca_file())?;
    let up = bootstrap::EnvoyUpstream {
        host,
        port,
        ca_file: ca_file.display().to_string(),
        token: zone.token(),
    };
    // MeshAccessLog's tcp backends: Envoy writes their records to this
    // pipe, and this agent sends them on.
    // (A zone ingress logs nothing.)
    let _cleanup = match &who.mesh {
        Some(mesh) => {
            let pipe = PathBuf::from(meridian_xds::generate::observability::access_log_pipe(mesh, &who.name));
            accesslog::make_pipe(&pipe)?;
            let forwarding = tokio::spawn({
                let pipe = pipe.clone();
                async move {
                    if let Err(e) = accesslog::forward(pipe).await {
                        tracing::error!(error = %format!("{e:#}"), "the access-log pipe failed: tcp access logs are lost");
                    }
                }
            });
            Some(PipeCleanup(pipe, forwarding))
        }
        None => None,
    };
    // MeshMetric's Prometheus listeners send scrapes to this socket; the
    // agent answers from Envoy's admin and the applications.
    let _metrics = match &who.mesh {
        Some(mesh) => {
            let socket = PathBuf::from(meridian_xds::generate::observability::metrics_socket(mesh, &who.name));
            let listener = metrics::bind(&socket)?;
            let admin = s.envoy_admin_address;
            let serving = tokio::spawn(async move {
                if let Err(e) = metrics::serve(listener, admin).await {
                    tracing::error!(error = %format!("{e:#}"), "the metrics endpoint failed: MeshMetric scrapes fail");
                }
            });
            // MeshMetric's OpenTelemetry backends, as Envoy's configuration
            // names them.
            let exporting = tokio::spawn(otlp::run(
                meridian_xds::generate::observability::metrics_config_socket(mesh, &who.name),
                admin,
            ));
            Some((metrics::SocketCleanup(socket, serving), AbortOnDrop(exporting)))
        }
        None => None,
    };
    let b = bootstrap::envoy(&who.node, &up, s.envoy_admin_address);
    bootstrap::write(&s.envoy_bootstrap_file, &b)
        .with_context(|| format!("writing the Envoy bootstrap {}", s.envoy_bootstrap_file.display()))?;
    tracing::info!(bootstrap = %s.envoy_bootstrap_file.display(), "wrote the Envoy bootstrap");
    let Some(binary) = s.envoy_binary.clone().or_else(envoy_on_path) else {
        tracing::warn!(
            "no Envoy binary (--envoy-binary, or envoy on PATH): start Envoy with -c {} yourself; the dataplane stays registered until this agent stops",
            s.envoy_bootstrap_file.display()
        );
        stopped.await;
        return Ok(());
    };
    let mut child = tokio::process::Command::new(&binary)
        .arg("-c")
        .arg(&s.envoy_bootstrap_file)
        .arg("--drain-time-s")
        .arg("5")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting Envoy {}", binary.display()))?;
    tracing::info!(binary = %binary.display(), pid = ?child.id(), "Envoy started");
    tokio::select! {
        status = child.wait() => {
            let status = status.context("waiting for Envoy")?;
            bail!("Envoy exited: {status}");
        }
        () = stopped => {}
    }
    if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(ENVOY_STOP, child.wait()).await {
        Ok(status) => tracing::info!(?status, "Envoy stopped"),
        Err(_) => {
            tracing::warn!("Envoy did not stop within {ENVOY_STOP:?}; killing it");
            let _ = child.kill().await;
        }
    }
    Ok(())
}

/// Stops a task when the agent stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops the access-log forwarder and removes its pipe when the agent stops.
struct PipeCleanup(PathBuf, tokio::task::JoinHandle<()>);

impl Drop for PipeCleanup {
    fn drop(&mut self) {
        self.1.abort();
        let _ = std::fs::remove_file(&self.0);
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir().context("the current directory")?.join(p))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn token_identity_reads_mesh_and_name() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"mesh":"m","name":"n","exp":1}"#);
        assert_eq!(
            token_identity(&format!("h.{claims}.s\n")),
            (Some("m".into()), Some("n".into()))
        );
        assert_eq!(token_identity("garbage"), (None, None));
    }

    #[test]
    fn json_to_protobuf_values() {
        let v = to_pb(&json!({"a": [1, "x", true, null]}));
        let Some(Kind::StructValue(s)) = v.kind else { panic!() };
        let Some(Kind::ListValue(l)) = &s.fields["a"].kind else {
            panic!()
        };
        assert_eq!(l.values.len(), 4);
        assert_eq!(l.values[0].kind, Some(Kind::NumberValue(1.0)));
    }
}
