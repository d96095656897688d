//! The global's KDS server: authenticates zones, serves `GlobalToZone`
//! (meshes, policies, other zones' ingresses) and receives `ZoneToGlobal`
//! (the zone's dataplanes, insights and ingresses), recording insights.
//!
//! The stream loops are the shared ones in `meridian_server::kds::stream`;
//! this module decides what the global sends to a zone ([`ToZone`]), how it
//! stores what a zone sends ([`FromZone`]), and who may connect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::Stream;
use meridian_core::decode::{validate_spec, MAX_RESOURCE_BYTES};
use meridian_core::names::{check_rfc1035_label, check_subdomain};
use meridian_core::resource::format_time;
use meridian_core::{FieldPath, Resource, ResourceKey, ResourceType};
use meridian_proto as pb;
use meridian_server::global_services::GlobalServices;
use meridian_server::kds::stream::{run_receiver, run_sender, MAX_MESSAGE_BYTES};
use meridian_server::kds::wire::{content_version, parse_wire_name, wire_name};
use meridian_server::kds::{
    global_to_zone_types, labels, write_synced, Inbound, Outbound, WireResource, ZONE_TO_GLOBAL_TYPES,
};
use meridian_server::manager::Manager;
use meridian_server::tokens::{format_unix, now_unix, TokenError};
use meridian_store::Filter;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::insights::{parse_time, ZoneInsights, ZonePeer};
use crate::inspect::Inspections;

/// The metadata key naming the connecting zone.
pub const ZONE_HEADER: &str = "x-meridian-zone";

/// Settings of the KDS server.
#[derive(Clone, Debug)]
pub struct KdsSettings {
    pub addr: SocketAddr,
    pub cert_pem: String,
    pub key_pem: String,
    /// HTTP/2 keepalive interval; a dead zone is noticed within about twice this.
    pub keepalive: Duration,
    /// Most connections held at once; more are closed at once.
    pub max_connections: usize,
}

/// How often open streams are checked against their zone's token
/// (expired, revoked), the Zone's `enabled` and other globals' streams.
pub const STREAM_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Who is on the other end of a stream, as authenticated.
#[derive(Clone, Debug)]
struct ZoneCaller {
    zone: String,
    /// The zone control plane process; `None` for a zone that does not
    /// announce one (then a newer stream simply replaces an older one).
    instance: Option<String>,
    token_id: String,
    token_expires_at: i64,
    /// The zone's build version and address, for its insight.
    build: String,
    address: Option<String>,
}

/// Which streams are open: one zone control plane per zone name, and one
/// stream of each direction per zone.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    streams: Mutex<HashMap<(String, &'static str), OpenStream>>,
}

/// An open stream: who, since when, its task, and the status its peer gets
/// if the global cuts it.
struct OpenStream {
    id: u64,
    caller: ZoneCaller,
    since: DateTime<Utc>,
    task: AbortHandle,
    closing: Closing,
}

impl OpenStream {
    /// Ends the stream; its peer reads `status`.
    fn close(self, status: Status) {
        *self.closing.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        self.task.abort();
    }
}

/// The status a stream ends with when the global cuts it (none: it ends OK).
type Closing = Arc<Mutex<Option<Status>>>;

/// The refusal of a second zone control plane under one name.
fn duplicate(zone: &str, holder: &str, at: &str, since: &str) -> Status {
    Status::already_exists(format!(
        "zone {zone:?} is already connected from another zone control plane (instance {holder}, at {at}, since {since}): \
         is a second zone control plane running under this name? This one is refused while the other stays connected"
    ))
}

impl Registry {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, &'static str), OpenStream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a stream. Refused while a different zone control plane holds
    /// a stream of the same zone here (the older one stays); an older stream
    /// of the same direction from the same process (a reconnect) is replaced.
    fn open(&self, dir: &'static str, open: OpenStream) -> Result<(), Status> {
        let mut streams = self.lock();
        let zone = open.caller.zone.clone();
        if let Some(instance) = &open.caller.instance {
            let holder = streams.iter().filter(|((z, _), _)| *z == zone).find_map(|(_, s)| {
                s.caller
                    .instance
                    .as_ref()
                    .filter(|h| *h != instance)
                    .map(|h| (h, s.since))
            });
            if let Some((holder, since)) = holder {
                let status = duplicate(&zone, holder, "this global", &format_time(&since));
                tracing::warn!(%zone, instance = %instance, holder = %holder, "zone refused: another zone control plane holds this zone's streams");
                return Err(status);
            }
        }
        if let Some(old) = streams.insert((zone.clone(), dir), open) {
            tracing::info!(%zone, direction = dir, "a newer stream of this zone control plane replaces the older one");
            old.close(Status::aborted(format!(
                "replaced by a newer connection of zone {zone:?}"
            )));
        }
        Ok(())
    }

    /// Forgets a stream whose task ended (unless a newer one took its place).
    fn ended(&self, zone: &str, dir: &'static str, id: u64) {
        let mut streams = self.lock();
        if streams.get(&(zone.to_string(), dir)).is_some_and(|s| s.id == id) {
            streams.remove(&(zone.to_string(), dir));
        }
    }

    /// Closes every stream for which `verdict` gives a status.
    fn close_where(&self, mut verdict: impl FnMut(&OpenStream) -> Option<Status>) {
        let mut streams = self.lock();
        let doomed: Vec<((String, &'static str), Status)> = streams
            .iter()
            .filter_map(|(k, s)| verdict(s).map(|status| (k.clone(), status)))
            .collect();
        for (key, status) in doomed {
            if let Some(s) = streams.remove(&key) {
                tracing::warn!(zone = %key.0, direction = key.1, reason = %status.message(), "closing the zone's stream");
                s.close(status);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// The response stream of a KDS call: what the stream task sends, then the
/// closing status if the global cut the stream.
fn response_stream<T: Send + 'static>(rx: mpsc::Receiver<T>, closing: Closing) -> BoxStream<T> {
    let status = futures::stream::once(async move { closing.lock().unwrap_or_else(|p| p.into_inner()).take() });
    Box::pin(ReceiverStream::new(rx).map(Ok).chain(status.filter_map(|s| s.map(Err))))
}

pub struct KdsService {
    manager: Arc<Manager>,
    services: Arc<GlobalServices>,
    insights: ZoneInsights,
    inspections: Arc<Inspections>,
    registry: Arc<Registry>,
    /// Set by [`serve`]: open streams end when it turns true.
    shutdown: Option<watch::Receiver<bool>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl KdsService {
    pub fn new(
        manager: Arc<Manager>,
        services: Arc<GlobalServices>,
        insights: ZoneInsights,
        inspections: Arc<Inspections>,
    ) -> Self {
        KdsService {
            manager,
            services,
            insights,
            inspections,
            registry: Arc::new(Registry::default()),
            shutdown: None,
        }
    }

    /// Completes when the server stops (never without [`serve`]).
    fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let shutdown = self.shutdown.clone();
        async move {
            match shutdown {
                Some(mut s) => {
                    let _ = s.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// [`Self::authenticate`], logging every refusal once with the zone it
    /// claims, where it came from and why (the zone gets the same reason).
    async fn admit_caller<T>(&self, req: &Request<T>) -> Result<ZoneCaller, Status> {
        self.authenticate(req).await.inspect_err(|status| {
            let zone = req
                .metadata()
                .get(ZONE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("<none>");
            let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
            // Duplicates and version skew are logged where they are decided.
            if !matches!(
                status.code(),
                tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition
            ) {
                tracing::warn!(%zone, %peer, code = ?status.code(), reason = %status.message(), "zone refused");
            }
        })
    }

    /// Checks the zone name and its token; the zone must be enabled. Waits
    /// until the cache holds the store's state: computing a difference from
    /// an empty cache would tell the zone to delete everything it has.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<ZoneCaller, Status> {
        self.manager
            .cache()
            .wait_ready(Duration::from_secs(10))
            .await
            .map_err(|e| Status::unavailable(format!("the global is starting: {e}")))?;
        let zone = req
            .metadata()
            .get(ZONE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument(format!("missing {ZONE_HEADER} metadata")))?
            .to_string();
        check_rfc1035_label(&zone).map_err(|e| Status::invalid_argument(format!("zone name: {e}")))?;
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let claims = self.services.tokens.verify(token).await.map_err(|e| match e {
            TokenError::Store(_) => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        })?;
        if claims.zone != zone {
            return Err(Status::unauthenticated(format!(
                "the token was issued for zone {:?}, not {zone:?}",
                claims.zone
            )));
        }
        let text = |h: &str| req.metadata().get(h).and_then(|v| v.to_str().ok());
        let protocol = match text(meridian_server::kds::PROTOCOL_HEADER) {
            None => 1,
            Some(v) => v.parse::<u32>().map_err(|_| {
                Status::invalid_argument(format!(
                    "{}: {v:?} is not a protocol version",
                    meridian_server::kds::PROTOCOL_HEADER
                ))
            })?,
        };
        let build = text(meridian_server::kds::BUILD_HEADER).unwrap_or("unknown");
        meridian_server::kds::check_zone_protocol(protocol, build).map_err(|why| {
            tracing::warn!(%zone, protocol, build, reason = %why, "zone refused: version skew");
            Status::failed_precondition(why)
        })?;
        let instance = match text(meridian_server::kds::ZONE_INSTANCE_HEADER) {
            None => None,
            Some(v) if !v.is_empty() && v.len() <= 253 => Some(v.to_string()),
            Some(_) => {
                return Err(Status::invalid_argument(format!(
                    "{}: must be 1 to 253 characters",
                    meridian_server::kds::ZONE_INSTANCE_HEADER
                )))
            }
        };
        if let Some(instance) = &instance {
            if let Some(other) = self.insights.held_elsewhere(&zone, instance) {
                tracing::warn!(%zone, %instance, holder = ?other.zone_instance_id, global = %other.global_instance_id,
                    "zone refused: another zone control plane holds this zone's streams at another global");
                return Err(duplicate(
                    &zone,
                    other.zone_instance_id.as_deref().unwrap_or_default(),
                    &format!("global {}", other.global_instance_id),
                    &other.connect_time,
                ));
            }
        }
        self.ensure_zone(&zone).await?;
        Ok(ZoneCaller {
            zone,
            instance,
            token_id: claims.id,
            token_expires_at: claims.expires_at,
            build: build.to_string(),
            address: req.remote_addr().map(|a| a.to_string()),
        })
    }

    /// Starts a stream's task held until the registry admits it, so that a
    /// refused stream leaves no trace (no insight, nothing sent).
    fn admit(
        &self,
        caller: &ZoneCaller,
        dir: &'static str,
        span: tracing::Span,
        body: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Closing, Status> {
        let (go, admitted) = tokio::sync::oneshot::channel::<()>();
        let id = self.registry.next_id();
        let registry = self.registry.clone();
        let zone = caller.zone.clone();
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                if admitted.await.is_ok() {
                    body.await;
                    registry.ended(&zone, dir, id);
                }
            },
            span,
        ));
        let closing = Closing::default();
        let open = OpenStream {
            id,
            caller: caller.clone(),
            since: Utc::now(),
            task: task.abort_handle(),
            closing: closing.clone(),
        };
        if let Err(status) = self.registry.open(dir, open) {
            task.abort();
            return Err(status);
        }
        let _ = go.send(());
        Ok(closing)
    }

    /// Creates the Zone record on first contact; refuses disabled zones.
    async fn ensure_zone(&self, zone: &str) -> Result<(), Status> {
        let key = ResourceKey::global(ResourceType::Zone, zone);
        match self.manager.get(&key) {
            Some(z) if z.spec.get("enabled").and_then(|v| v.as_bool()) == Some(false) => {
                Err(Status::permission_denied(format!("zone {zone:?} is disabled")))
            }
            Some(_) => Ok(()),
            None => {
                let r = Resource::new(
                    key,
                    Default::default(),
                    serde_json::json!({"enabled": true}),
                    chrono::Utc::now(),
                );
                self.manager
                    .upsert_synced(r)
                    .await
                    .map_err(|e| Status::unavailable(format!("recording zone {zone:?}: {e}")))
            }
        }
    }
}

#[tonic::async_trait]
impl pb::kds_server::Kds for KdsService {
    type GlobalToZoneStream = BoxStream<pb::DeltaResponse>;
    type ZoneToGlobalStream = BoxStream<pb::DeltaRequest>;
    type InspectStream = BoxStream<pb::InspectRequest>;

    /// The zone's inspection stream: requests of inspections asked at this
    /// global flow down, the zone's answers come back (see `inspect`).
    async fn inspect(
        &self,
        request: Request<Streaming<pb::InspectResponse>>,
    ) -> Result<Response<Self::InspectStream>, Status> {
        let caller = self.admit_caller(&request).await?;
        let zone = caller.zone.clone();
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let inspections = self.inspections.clone();
        let stream = inspections.next_id();
        let answers = inspections.attach(&zone, stream, tx);
        let span = tracing::info_span!("kds", %zone, direction = "inspect");
        let stopping = self.stopping();
        let (z, i) = (zone.clone(), inspections.clone());
        let body = async move {
            tokio::select! {
                () = async {
                    while let Some(Ok(answer)) = incoming.next().await {
                        answers.complete(answer);
                    }
                } => tracing::info!("the zone closed its inspection stream"),
                () = stopping => tracing::info!("the global is stopping; closing the stream"),
            }
            i.detach(&z, stream);
        };
        match self.admit(&caller, "inspect", span, body) {
            Ok(closing) => Ok(Response::new(response_stream(rx, closing))),
            Err(status) => {
                inspections.detach(&zone, stream);
                Err(status)
            }
        }
    }

    async fn global_to_zone(
        &self,
        request: Request<Streaming<pb::DeltaRequest>>,
    ) -> Result<Response<Self::GlobalToZoneStream>, Status> {
        let caller = self.admit_caller(&request).await?;
        let zone = caller.zone.clone();
        let incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let outbound: Arc<dyn Outbound> = Arc::new(ToZone {
            zone: zone.clone(),
            manager: self.manager.clone(),
        });
        let insights = self.insights.clone();
        let instance = caller.instance.clone();
        let peer = ZonePeer {
            instance: caller.instance.clone(),
            version: Some(caller.build.clone()),
            address: caller.address.clone(),
        };
        let cache = self.manager.cache().clone();
        let span = tracing::info_span!("kds", %zone, direction = "global-to-zone");
        let stopping = self.stopping();
        let body = async move {
            tracing::info!(zone_instance = ?instance, "zone subscribed");
            let subscription = insights.connect(&zone, &peer);
            tokio::select! {
                result = run_sender(incoming, tx, cache, outbound, subscription, MAX_MESSAGE_BYTES) => match result {
                    Ok(()) => tracing::info!("zone closed the stream"),
                    Err(e) => tracing::info!(error = %e, "stream ended"),
                },
                () = stopping => tracing::info!("the global is stopping; closing the stream"),
            }
        };
        let closing = self.admit(&caller, "g2z", span, body)?;
        Ok(Response::new(response_stream(rx, closing)))
    }

    async fn zone_to_global(
        &self,
        request: Request<Streaming<pb::DeltaResponse>>,
    ) -> Result<Response<Self::ZoneToGlobalStream>, Status> {
        let caller = self.admit_caller(&request).await?;
        let zone = caller.zone.clone();
        let incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let inbound: Arc<dyn Inbound> = Arc::new(FromZone {
            zone: zone.clone(),
            manager: self.manager.clone(),
            insights: self.insights.clone(),
        });
        let node = pb::Node {
            zone: zone.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            instance_id: String::new(),
        };
        let span = tracing::info_span!("kds", %zone, direction = "zone-to-global");
        let stopping = self.stopping();
        let stream = self.insights.stream_opened(&zone);
        let body = async move {
            let _stream = stream;
            tokio::select! {
                result = run_receiver(incoming, tx, inbound, node) => if let Err(e) = result {
                    tracing::info!(error = %e, "stream ended");
                },
                () = stopping => tracing::info!("the global is stopping; closing the stream"),
            }
        };
        let closing = self.admit(&caller, "z2g", span, body)?;
        Ok(Response::new(response_stream(rx, closing)))
    }
}

/// What the global sends to one zone: meshes and policies (labelled as
/// coming from the global) and the ingresses of the other zones that are
/// online — an offline zone's endpoints leave the other zones' EDS and come
/// back when it reconnects.
pub struct ToZone {
    pub zone: String,
    pub manager: Arc<Manager>,
}

impl ToZone {
    /// Whether one of `zone`'s KDS subscriptions is open.
    fn online(&self, zone: &str) -> bool {
        self.manager
            .get(&ResourceKey::global(ResourceType::ZoneInsight, zone))
            .and_then(|i| i.spec.get("subscriptions").and_then(|s| s.as_array()).cloned())
            .is_some_and(|subs| subs.iter().any(|s| s.get("disconnectTime").is_none_or(|t| t.is_null())))
    }
}

impl Outbound for ToZone {
    fn types(&self) -> Vec<ResourceType> {
        global_to_zone_types()
    }

    fn export(&self, r: &Resource) -> Option<WireResource> {
        let kind = r.key.kind;
        if kind == ResourceType::ZoneCertificate {
            // An intermediate is of use only to the zone it was signed for.
            let for_zone = r.spec.get("zone").and_then(|z| z.as_str());
            if for_zone != Some(self.zone.as_str()) {
                return None;
            }
        }
        if kind.is_synced_to_zones() {
            let mut w = WireResource::from_resource(r);
            w.labels.insert(labels::ORIGIN.into(), "global".into());
            Some(w)
        } else if kind == ResourceType::ZoneIngress {
            let from = r.labels.get(labels::ZONE)?;
            (from != &self.zone && self.online(from)).then(|| WireResource::from_resource(r))
        } else {
            None
        }
    }

    fn related(&self, key: &ResourceKey) -> Vec<(ResourceType, String)> {
        if key.kind != ResourceType::ZoneInsight {
            return Vec::new();
        }
        self.manager
            .list(&Filter::kind(ResourceType::ZoneIngress))
            .into_iter()
            .filter(|r| r.labels.get(labels::ZONE) == Some(&key.name))
            .map(|r| (ResourceType::ZoneIngress, r.key.name))
            .collect()
    }
}

/// How the global stores what one zone sends: under `<zone>.<name>`, only
/// zone-owned types, only resources labelled for that zone.
pub struct FromZone {
    pub zone: String,
    pub manager: Arc<Manager>,
    /// Where refusals are recorded for operators (the zone's insight).
    pub insights: ZoneInsights,
}

impl FromZone {
    /// Checks what a zone sent and stores it.
    async fn store_from_zone(&self, w: WireResource) -> Result<(), String> {
        if !ZONE_TO_GLOBAL_TYPES.contains(&w.kind) {
            return Err(format!("a zone cannot write {}", w.kind));
        }
        let expect = [
            (labels::ORIGIN, "zone"),
            (labels::ZONE, self.zone.as_str()),
            (labels::DISPLAY_NAME, w.name.as_str()),
        ];
        for (label, value) in expect {
            match w.labels.get(label) {
                Some(v) if v == value => {}
                Some(v) => {
                    return Err(format!(
                        "label {label} is {v:?}; zone {:?} may only send {value:?}",
                        self.zone
                    ))
                }
                None => return Err(format!("label {label} is missing")),
            }
        }
        check_subdomain(&w.name).map_err(|e| format!("name: {e}"))?;
        if let Some(mesh) = &w.mesh {
            if self
                .manager
                .get(&ResourceKey::global(ResourceType::Mesh, mesh))
                .is_none()
            {
                return Err(format!("mesh {mesh:?} does not exist"));
            }
        }
        // The labels count too: a zone could otherwise carry megabytes past
        // the spec's limit.
        let size = serde_json::to_vec(&w.spec).map(|v| v.len()).unwrap_or(usize::MAX)
            + w.labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if size > MAX_RESOURCE_BYTES {
            return Err(format!(
                "resource is {size} bytes, more than the limit of {MAX_RESOURCE_BYTES}"
            ));
        }
        let root = FieldPath::root();
        let spec = validate_spec(w.kind, w.spec.clone(), &root).map_err(|e| e.to_string())?;
        let key = ResourceKey {
            kind: w.kind,
            mesh: w.mesh.clone(),
            name: format!("{}{}", self.prefix(), w.name),
        };
        let what = key.to_string();
        let mut resource = w.into_resource(key, 0);
        resource.spec = spec;
        write_synced(&what, || self.manager.upsert_synced(resource.clone())).await
    }

    fn prefix(&self) -> String {
        format!("{}.", self.zone)
    }
}

#[async_trait]
impl Inbound for FromZone {
    fn types(&self) -> Vec<ResourceType> {
        ZONE_TO_GLOBAL_TYPES.to_vec()
    }

    fn held(&self, kind: ResourceType) -> HashMap<String, String> {
        let prefix = self.prefix();
        self.manager
            .list(&Filter::kind(kind))
            .into_iter()
            .filter(|r| r.labels.get(labels::ZONE) == Some(&self.zone))
            .filter_map(|r| {
                let name = r.key.name.strip_prefix(&prefix)?;
                Some((
                    wire_name(r.key.mesh.as_deref(), name),
                    content_version(&r.labels, &r.spec),
                ))
            })
            .collect()
    }

    async fn upsert(&self, w: WireResource) -> Result<(), String> {
        let kind = w.kind;
        let what = wire_name(w.mesh.as_deref(), &w.name);
        let result = self.store_from_zone(w).await;
        if let Err(reason) = &result {
            tracing::warn!(zone = %self.zone, %kind, resource = %what, %reason, "refused a resource from the zone");
            self.insights.refused(&self.zone, kind, &format!("{what}: {reason}"));
        }
        result
    }

    async fn remove(&self, kind: ResourceType, wire: &str) -> Result<(), String> {
        if !ZONE_TO_GLOBAL_TYPES.contains(&kind) {
            return Err(format!("a zone cannot delete {kind}"));
        }
        let (mesh, name) = parse_wire_name(kind, wire)?;
        let key = ResourceKey {
            kind,
            mesh,
            name: format!("{}{}", self.prefix(), name),
        };
        write_synced(&key.to_string(), || self.manager.remove_synced(&key)).await
    }
}

/// Every [`STREAM_CHECK_INTERVAL`], closes the open streams whose zone may no
/// longer be connected: the token expired or was revoked, the Zone was
/// disabled, or another zone control plane under the same name connected
/// earlier at another global (two that raced past each other's admission).
async fn watch_streams(
    registry: Arc<Registry>,
    services: Arc<GlobalServices>,
    insights: ZoneInsights,
    manager: Arc<Manager>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STREAM_CHECK_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if registry.is_empty() {
            continue;
        }
        // A store that cannot answer leaves revocations unchecked this round
        // (expiry still is); streams are not cut for the store's trouble.
        let revoked = match services.tokens.revoked_ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = %e, "could not read zone token revocations");
                Default::default()
            }
        };
        let now = now_unix();
        registry.close_where(|s| {
            let c = &s.caller;
            if now >= c.token_expires_at {
                return Some(Status::unauthenticated(format!(
                    "the zone token expired at {}",
                    format_unix(c.token_expires_at)
                )));
            }
            if revoked.contains(&c.token_id) {
                return Some(Status::unauthenticated(format!(
                    "the zone token {} was revoked",
                    c.token_id
                )));
            }
            let zone = manager.get(&ResourceKey::global(ResourceType::Zone, &c.zone));
            if zone.is_some_and(|z| z.spec.get("enabled").and_then(|v| v.as_bool()) == Some(false)) {
                return Some(Status::permission_denied(format!("zone {:?} is disabled", c.zone)));
            }
            let instance = c.instance.as_deref()?;
            let other = insights.held_elsewhere(&c.zone, instance)?;
            let older = parse_time(&other.connect_time).is_some_and(|t| t < s.since);
            older.then(|| {
                duplicate(
                    &c.zone,
                    other.zone_instance_id.as_deref().unwrap_or_default(),
                    &format!("global {}", other.global_instance_id),
                    &other.connect_time,
                )
            })
        });
    }
}

/// Serves KDS over TLS until `shutdown` turns true; open streams end then
/// too (a graceful HTTP/2 shutdown alone would wait for them forever).
pub async fn serve(
    settings: KdsSettings,
    mut service: KdsService,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    service.shutdown = Some(shutdown.clone());
    tokio::spawn(watch_streams(
        service.registry.clone(),
        service.services.clone(),
        service.insights.clone(),
        service.manager.clone(),
        shutdown.clone(),
    ));
    let identity = tonic::transport::Identity::from_pem(&settings.cert_pem, &settings.key_pem);
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("binding KDS to {}", settings.addr))?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
        .context("KDS TLS configuration")?
        .http2_keepalive_interval(Some(settings.keepalive))
        .http2_keepalive_timeout(Some(settings.keepalive))
        .add_service(
            pb::kds_server::KdsServer::new(service)
                .max_decoding_message_size(2 * MAX_MESSAGE_BYTES)
                .max_encoding_message_size(2 * MAX_MESSAGE_BYTES),
        );
    // Small protocol messages must not wait for Nagle's algorithm.
    let incoming = meridian_server::conn_limit::limit(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        settings.max_connections,
        "kds",
    );
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!(error = %e, "KDS server failed");
        }
    });
    tracing::info!(%addr, "KDS listening");
    Ok(addr)
}
