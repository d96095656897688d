//! The zone's KDS client: dials the global (addresses tried in turn, TLS
//! verified against `--ca-file`, zone token in metadata), receives meshes,
//! policies and other zones' ingresses on `GlobalToZone`, and sends its own
//! dataplanes, insights and ingresses on `ZoneToGlobal`. Reconnects with
//! exponential backoff and jitter; while the global is unreachable the zone
//! keeps serving from its persisted replica.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backoff::backoff::Backoff;
use meridian_core::decode::validate_spec;
use meridian_core::names::check_subdomain;
use meridian_core::{FieldPath, Resource, ResourceKey, ResourceType};
use meridian_proto as pb;
use meridian_server::api::DataplaneInspector;
use meridian_server::kds::stream::{run_receiver, run_sender, MAX_MESSAGE_BYTES};
use meridian_server::kds::wire::{content_version, parse_wire_name, wire_name};
use meridian_server::kds::{
    global_to_zone_types, labels, write_synced, Inbound, Outbound, WireResource, ZONE_TO_GLOBAL_TYPES,
};
use meridian_server::manager::Manager;
use meridian_server::metrics::KdsMetrics;
use meridian_store::Filter;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How the zone reaches the global.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub zone: String,
    /// `grpcs://host:port` addresses, tried in turn.
    pub addresses: Vec<String>,
    pub token: String,
    pub ca_pem: String,
    pub keepalive: Duration,
    /// The KDS protocol version announced to the global
    /// ([`meridian_server::kds::PROTOCOL_VERSION`] but in version-skew tests).
    pub protocol: u32,
}

/// What the zone sends: its own dataplanes, insights and ingresses, labelled
/// with their origin.
pub struct FromThisZone {
    pub zone: String,
}

impl Outbound for FromThisZone {
    fn types(&self) -> Vec<ResourceType> {
        ZONE_TO_GLOBAL_TYPES.to_vec()
    }

    fn export(&self, r: &Resource) -> Option<WireResource> {
        if !ZONE_TO_GLOBAL_TYPES.contains(&r.key.kind) {
            return None;
        }
        // Other zones' ingresses arrive from the global; they are not ours to
        // send. Only ingresses: every dataplane (and insight) here is this
        // zone's, whatever `kuma.io/zone` label a user gave it (that label is
        // replaced below), as `FromGlobal::is_from_global` agrees.
        if r.key.kind == ResourceType::ZoneIngress && r.labels.get(labels::ZONE).is_some_and(|z| z != &self.zone) {
            return None;
        }
        let mut w = WireResource::from_resource(r);
        w.labels.insert(labels::ORIGIN.into(), "zone".into());
        w.labels.insert(labels::ZONE.into(), self.zone.clone());
        w.labels.insert(labels::DISPLAY_NAME.into(), r.key.name.clone());
        Some(w)
    }
}

/// How the zone applies what the global sends.
pub struct FromGlobal {
    pub zone: String,
    pub manager: Arc<Manager>,
}

impl FromGlobal {
    fn is_from_global(&self, r: &Resource) -> bool {
        match r.key.kind {
            ResourceType::ZoneIngress => r.labels.get(labels::ZONE).is_some_and(|z| z != &self.zone),
            k => k.is_synced_to_zones(),
        }
    }
}

#[async_trait]
impl Inbound for FromGlobal {
    fn types(&self) -> Vec<ResourceType> {
        global_to_zone_types()
    }

    fn held(&self, kind: ResourceType) -> HashMap<String, String> {
        self.manager
            .list(&Filter::kind(kind))
            .into_iter()
            .filter(|r| self.is_from_global(r))
            .map(|r| {
                (
                    wire_name(r.key.mesh.as_deref(), &r.key.name),
                    content_version(&r.labels, &r.spec),
                )
            })
            .collect()
    }

    async fn upsert(&self, w: WireResource) -> Result<(), String> {
        match w.kind {
            ResourceType::ZoneIngress => match w.labels.get(labels::ZONE) {
                Some(z) if z != &self.zone => {}
                Some(_) => return Err("the global sent this zone's own ingress back".into()),
                None => return Err(format!("label {} is missing", labels::ZONE)),
            },
            k if k.is_synced_to_zones() => {
                if w.labels.get(labels::ORIGIN).map(String::as_str) != Some("global") {
                    return Err(format!("label {} must be \"global\"", labels::ORIGIN));
                }
            }
            k => return Err(format!("the global cannot write {k} in a zone")),
        }
        check_subdomain(&w.name).map_err(|e| format!("name: {e}"))?;
        let spec = validate_spec(w.kind, w.spec.clone(), &FieldPath::root()).map_err(|e| e.to_string())?;
        let key = ResourceKey {
            kind: w.kind,
            mesh: w.mesh.clone(),
            name: w.name.clone(),
        };
        let what = key.to_string();
        let mut r = w.into_resource(key, 0);
        r.spec = spec;
        write_synced(&what, || self.manager.upsert_synced(r.clone())).await
    }

    async fn remove(&self, kind: ResourceType, wire: &str) -> Result<(), String> {
        let (mesh, name) = parse_wire_name(kind, wire)?;
        let key = ResourceKey { kind, mesh, name };
        if let Some(existing) = self.manager.get(&key) {
            if !self.is_from_global(&existing) {
                return Err(format!("{key} belongs to this zone"));
            }
        }
        write_synced(&key.to_string(), || self.manager.remove_synced(&key)).await
    }
}

/// Runs the client until `shutdown` turns true. `connected` follows whether
/// both streams are up.
pub async fn run(
    settings: ClientSettings,
    manager: Arc<Manager>,
    connected: watch::Sender<bool>,
    metrics: KdsMetrics,
    inspector: Inspector,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(200))
        .with_max_interval(Duration::from_secs(15))
        .with_randomization_factor(0.5)
        .with_max_elapsed_time(None)
        .build();
    // Never sync from an empty cache: the difference would delete the
    // zone's inventory at the global.
    let mut ready = manager.cache().ready();
    tokio::select! {
        _ = ready.wait_for(|r| *r) => {}
        _ = shutdown.wait_for(|s| *s) => return,
    }
    // One id for this run of the client, sent with every session: the
    // global tells a reconnect from a second zone control plane by it.
    let instance = zone_instance_id();
    let mut attempt = 0usize;
    loop {
        let address = &settings.addresses[attempt % settings.addresses.len()];
        attempt += 1;
        let started = Instant::now();
        let span = tracing::info_span!("kds-client", zone = %settings.zone, global = %address);
        let result = tokio::select! {
            r = tracing::Instrument::instrument(session(&settings, &instance, address, &manager, &connected, &metrics, &inspector), span) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let _ = connected.send(false);
        match result {
            Ok(()) => tracing::info!(global = %address, "KDS session ended"),
            Err(e) => match e.downcast_ref::<tonic::Status>() {
                // Say which gRPC status the global answered (UNAUTHENTICATED
                // for a bad token), not only its generic description.
                Some(status) => tracing::warn!(
                    global = %address,
                    error = %format!("{}: {}", meridian_xds::metrics::code_name(status.code()), status.message()),
                    "KDS session failed"
                ),
                None => tracing::warn!(global = %address, error = %e, "KDS session failed"),
            },
        }
        // A session that lasted is a success: start the backoff over.
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let delay = backoff.next_backoff().unwrap_or(Duration::from_secs(15));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// A fresh id for one run of the KDS client: host, process, start time and
/// a per-process counter (several zones run in one test process).
fn zone_instance_id() -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!(
        "{}-{}-{started:x}-{run}",
        meridian_server::process::hostname(),
        std::process::id()
    )
}

/// Turns `grpcs://host:port` into an endpoint with TLS verified against the CA.
fn endpoint(settings: &ClientSettings, address: &str) -> anyhow::Result<Endpoint> {
    let rest = address
        .strip_prefix("grpcs://")
        .ok_or_else(|| anyhow::anyhow!("global address {address:?} must start with grpcs://"))?;
    let host = rest
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(rest)
        .trim_matches(['[', ']']);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&settings.ca_pem))
        .domain_name(host.to_string());
    Ok(Endpoint::from_shared(format!("https://{rest}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(settings.keepalive)
        .keep_alive_timeout(settings.keepalive)
        .keep_alive_while_idle(true))
}

/// One connection: both streams, until either ends.
async fn session(
    settings: &ClientSettings,
    instance: &str,
    address: &str,
    manager: &Arc<Manager>,
    connected: &watch::Sender<bool>,
    metrics: &KdsMetrics,
    inspector: &Inspector,
) -> anyhow::Result<()> {
    let channel: Channel = endpoint(settings, address)?.connect().await?;
    let token: MetadataValue<_> = format!("Bearer {}", settings.token).parse()?;
    let zone: MetadataValue<_> = settings.zone.parse()?;
    let protocol: MetadataValue<_> = settings.protocol.to_string().parse()?;
    let build: MetadataValue<_> = env!("CARGO_PKG_VERSION").parse()?;
    let instance: MetadataValue<_> = instance.parse()?;
    let mut client = pb::kds_client::KdsClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", token.clone());
        req.metadata_mut().insert("x-meridian-zone", zone.clone());
        req.metadata_mut()
            .insert(meridian_server::kds::PROTOCOL_HEADER, protocol.clone());
        req.metadata_mut()
            .insert(meridian_server::kds::BUILD_HEADER, build.clone());
        req.metadata_mut()
            .insert(meridian_server::kds::ZONE_INSTANCE_HEADER, instance.clone());
        Ok(req)
    })
    .max_decoding_message_size(2 * MAX_MESSAGE_BYTES)
    .max_encoding_message_size(2 * MAX_MESSAGE_BYTES);

    // GlobalToZone: we receive.
    let (req_tx, req_rx) = mpsc::channel(64);
    let mut g2z_client = client.clone();
    let responses = g2z_client
        .global_to_zone(ReceiverStream::new(req_rx))
        .await?
        .into_inner();
    // ZoneToGlobal: we send.
    let (resp_tx, resp_rx) = mpsc::channel(64);
    let requests = client.zone_to_global(ReceiverStream::new(resp_rx)).await?.into_inner();
    // Inspect: the global asks, we answer. A global without it (older) or a
    // failure to open it costs inspection from the global, not the session.
    let (answer_tx, answer_rx) = mpsc::channel(4);
    let inspections = match client.inspect(ReceiverStream::new(answer_rx)).await {
        Ok(r) => Some(r.into_inner()),
        Err(status) => {
            tracing::warn!(code = meridian_xds::metrics::code_name(status.code()), reason = status.message(), "the global does not take inspection requests from this zone; inspection at the global will not reach it");
            None
        }
    };
    tracing::info!("connected to the global");
    let _ = connected.send(true);
    // Both streams live and end together, with this session.
    let _streams = (
        metrics.stream_opened(&settings.zone),
        metrics.stream_opened(&settings.zone),
    );

    let inbound: Arc<dyn Inbound> = Arc::new(FromGlobal {
        zone: settings.zone.clone(),
        manager: manager.clone(),
    });
    let outbound: Arc<dyn Outbound> = Arc::new(FromThisZone {
        zone: settings.zone.clone(),
    });
    let node = pb::Node {
        zone: settings.zone.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        instance_id: format!("{}-{}", settings.zone, std::process::id()),
    };
    let receive = run_receiver(responses, req_tx, inbound, node);
    let send = run_sender(
        requests,
        resp_tx,
        manager.cache().clone(),
        outbound,
        Arc::new(metrics.clone()),
        MAX_MESSAGE_BYTES,
    );
    let answer = async {
        if let Some(requests) = inspections {
            answer_inspections(requests, answer_tx, inspector.clone(), &settings.zone).await;
        }
        // The session lasts as long as the resource streams do.
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = receive => r.map_err(|e| anyhow::anyhow!("global-to-zone: {e}")),
        r = send => r.map_err(|e| anyhow::anyhow!("zone-to-global: {e}")),
        () = answer => Ok(()),
    }
}

/// Where the zone's inspection of its proxies lives (set once its xDS side
/// has started).
pub type Inspector = Arc<std::sync::OnceLock<Arc<dyn DataplaneInspector>>>;

/// Answers the global's inspection requests one at a time, each on the
/// blocking pool (generation is CPU work), until the stream ends.
async fn answer_inspections(
    mut requests: tonic::Streaming<pb::InspectRequest>,
    answers: mpsc::Sender<pb::InspectResponse>,
    inspector: Inspector,
    zone: &str,
) {
    while let Ok(Some(request)) = requests.message().await {
        let id = request.id;
        let inspector = inspector.get().cloned();
        let zone = zone.to_string();
        let answer = tokio::task::spawn_blocking(move || inspect(inspector.as_deref(), &zone, &request))
            .await
            .unwrap_or_else(|e| error(500, "Internal error", &format!("the inspection failed: {e}")));
        let (status, body) = answer;
        let body = match serde_json::to_vec(&body) {
            Ok(b) if b.len() <= MAX_MESSAGE_BYTES => b,
            Ok(b) => serde_json::to_vec(
                &error(
                    500,
                    "Internal error",
                    &format!(
                        "the answer is {} bytes, more than KDS carries ({MAX_MESSAGE_BYTES}); ask the zone's API",
                        b.len()
                    ),
                )
                .1,
            )
            .unwrap_or_default(),
            Err(e) => serde_json::to_vec(&error(500, "Internal error", &e.to_string()).1).unwrap_or_default(),
        };
        if answers.send(pb::InspectResponse { id, status, body }).await.is_err() {
            return;
        }
    }
}

/// An error body as the API writes them.
fn error(status: u32, title: &str, details: &str) -> (u32, serde_json::Value) {
    (
        status,
        serde_json::json!({"title": title, "details": details, "causes": []}),
    )
}

/// What this zone's API would answer to `request`.
fn inspect(inspector: Option<&dyn DataplaneInspector>, zone: &str, r: &pb::InspectRequest) -> (u32, serde_json::Value) {
    let Some(i) = inspector else {
        return error(503, "Unavailable", "the zone's proxy side is not started yet");
    };
    let found = match r.kind.as_str() {
        "xds" => i.xds(&r.mesh, &r.name, r.include_eds),
        "rules" => Ok(i.rules(&r.mesh, &r.name)),
        "policies" => Ok(i.policies(&r.mesh, &r.name)),
        other => return error(400, "Bad request", &format!("unknown inspection {other:?}")),
    };
    match found {
        Ok(Some(v)) => (200, v),
        Ok(None) => error(
            404,
            "Not found",
            &format!("dataplane {}/{} not found in zone {zone:?}", r.mesh, r.name),
        ),
        Err(e) => error(
            500,
            "Internal error",
            &format!("the configuration dump cannot be written: {e}"),
        ),
    }
}
