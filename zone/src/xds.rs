//! The zone's side of xDS: admitting proxies, building mesh snapshots from
//! the zone's cache, regenerating the configuration of the proxies a change
//! affects, and recording DataplaneInsights.
//!
//! The ADS protocol itself is `meridian_xds::ads`; generation is
//! `meridian_xds::generate`. This module connects them to the zone's store.
//!
//! Node ids: a dataplane is `<mesh>.<name>`. A ZoneIngress proxy is the bare
//! ingress name (`ingress`; no dot, since mesh names cannot be empty), or
//! any node id with node metadata `proxyType: "ingress"` (for ingress names
//! that contain dots); it must name a ZoneIngress of this zone. An ingress
//! session's [`ProxyId`] has an empty mesh. Its configuration comes from
//! `generate::ingress` over the snapshots of every mesh it advertises, and is
//! regenerated when the ingress or any of those meshes changes. Ingresses have
//! no insight record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use meridian_core::dataplane::{Dataplane, ZoneIngress};
use meridian_core::decode::validate_spec;
use meridian_core::mesh::Mesh;
use meridian_core::resource::format_time;
use meridian_core::{FieldPath, Resource, ResourceKey, ResourceType};
use meridian_server::kds::labels;
use meridian_server::manager::Manager;
use meridian_store::{Event, Filter};
use meridian_xds::generate::{proxyless, sidecar, PolicyResolver};
use meridian_xds::metrics::XdsMetrics;
use meridian_xds::resources::{ResourceSet, SharedResources};
use meridian_xds::snapshot::{DataplaneEntry, MeshSnapshot, ProxyContext, ProxyKind, ProxyTls, RemoteIngress};
use meridian_xds::source::{AckReporter, ConfigSource, ProxyId, ProxySession};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, watch, Notify};
use tonic::Status;

use crate::auth::{Credential, ZoneAuth};
use crate::mtls::{self as zone_mtls, ZoneMtls};

/// The label of a dataplane its proxy registered (inline in its node
/// metadata, or through the dataplane service of `meridian-dp`); such a
/// dataplane is removed when its proxy has been gone for the cleanup age.
pub const REGISTERED_BY_LABEL: &str = "meridian.io/registered-by";
/// The value of [`REGISTERED_BY_LABEL`].
pub const REGISTERED_BY_PROXY: &str = "proxy";

/// Builds the snapshot of `mesh` as zone `zone` sees it; `None` when the
/// mesh does not exist.
pub fn snapshot(manager: &Manager, zone: &str, mesh: &str) -> Option<MeshSnapshot> {
    let mesh_res = manager.get(&ResourceKey::global(ResourceType::Mesh, mesh))?;
    // A mesh that does not decode is served as absent, never as a mesh
    // without its settings (its mTLS among them): fail closed.
    let spec: Mesh = match serde_json::from_value(mesh_res.spec) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(mesh, error = %e, "stored mesh does not decode; its proxies get nothing");
            return None;
        }
    };
    let mtls = zone_mtls::mesh_tls(manager, mesh, &spec);
    let dataplanes = manager
        .list(&Filter::in_mesh(ResourceType::Dataplane, mesh))
        .into_iter()
        .filter(|r| r.labels.get(labels::ZONE).is_none_or(|z| z == zone))
        .filter_map(|r| {
            let spec: Dataplane = serde_json::from_value(r.spec).ok()?;
            Some(DataplaneEntry { name: r.key.name, spec })
        })
        .collect();
    let remote_ingresses = manager
        .list(&Filter::kind(ResourceType::ZoneIngress))
        .into_iter()
        .filter_map(|r| {
            let from = r.labels.get(labels::ZONE)?.clone();
            if from == zone {
                return None;
            }
            let spec: ZoneIngress = serde_json::from_value(r.spec).ok()?;
            Some(RemoteIngress { zone: from, spec })
        })
        .collect();
    let mut policies: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for kind in ResourceType::policies() {
        let list: Vec<(String, Value)> = manager
            .list(&Filter::in_mesh(kind, mesh))
            .into_iter()
            .map(|r| (r.key.name, r.spec))
            .collect();
        if !list.is_empty() {
            policies.insert(kind.name().to_string(), list);
        }
    }
    Some(MeshSnapshot {
        zone: zone.to_string(),
        mesh: mesh.to_string(),
        spec,
        dataplanes,
        remote_ingresses,
        policies,
        mtls,
    })
}

/// Makes the policy resolver for a snapshot.
pub type ResolverFactory = Arc<dyn Fn(&MeshSnapshot) -> Box<dyn PolicyResolver + Send + Sync> + Send + Sync>;

/// A mesh's snapshot and resolver as of an epoch: proxies that connect
/// between two changes of the mesh share them (and so the resolver's cache
/// of generated resources) instead of re-reading the mesh each.
struct MeshContext {
    snapshot: MeshSnapshot,
    resolver: Box<dyn PolicyResolver + Send + Sync>,
}

/// The configuration of one proxy, timed into `metrics`.
pub fn generate(
    snapshot: &MeshSnapshot,
    proxy: &ProxyContext,
    resolver: &dyn PolicyResolver,
    metrics: &XdsMetrics,
) -> ResourceSet {
    let start = std::time::Instant::now();
    let set = match proxy.kind {
        ProxyKind::Sidecar => sidecar::generate(snapshot, proxy, resolver),
        // Ingress proxies span meshes: `ingress_config` generates theirs and
        // they never reach this function.
        ProxyKind::Proxyless | ProxyKind::Ingress => proxyless::generate(snapshot, proxy, resolver),
    };
    metrics.generated(proxy.kind, start.elapsed());
    set
}

struct Connected {
    kind: ProxyKind,
    /// What the node's bootstrap says about its TLS files.
    node_tls: NodeTls,
    tx: watch::Sender<SharedResources>,
    insight: InsightRecord,
    /// What the proxy's stream proved; rechecked on revocations.
    credential: Credential,
    /// Set to end the stream with that status.
    end: watch::Sender<Option<Status>>,
}

#[derive(Clone, Default)]
struct InsightRecord {
    id: String,
    connect_time: String,
    disconnect_time: Option<String>,
    acked: BTreeMap<String, String>,
    nacked: BTreeMap<String, (String, String)>,
    dirty: bool,
}

struct Shared {
    manager: Arc<Manager>,
    zone: String,
    instance_id: String,
    resolver: ResolverFactory,
    auth: ZoneAuth,
    mtls: ZoneMtls,
    /// How long a proxy-registered dataplane outlives its proxy.
    cleanup_age: Duration,
    offline_cleanup_age: Option<Duration>,
    proxies: Mutex<HashMap<ProxyId, Connected>>,
    /// Current contexts of meshes, valid while `epoch` has not moved.
    contexts: Mutex<HashMap<String, Arc<MeshContext>>>,
    /// Bumped by the regeneration loop before it reads a batch of changes.
    epoch: AtomicU64,
    /// Registrations held open by agents (the dataplane service), by id.
    holds: Mutex<HashMap<u64, Hold>>,
    next_hold: AtomicU64,
    /// Proxies that disconnected and whose insight still has to be written.
    gone: Mutex<Vec<(ProxyId, InsightRecord)>>,
    wake_insights: Notify,
    metrics: Arc<XdsMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the proxy side of a zone runs.
pub struct XdsSettings {
    /// How long a proxy-registered dataplane outlives its proxy.
    pub cleanup_age: Duration,
    /// How long any other dataplane of this zone may stay offline (by its
    /// insight's last disconnect) before it is removed; `None`: kept.
    pub offline_cleanup_age: Option<Duration>,
    /// Where connections, responses and generation times are counted.
    pub metrics: Arc<XdsMetrics>,
}

/// The zone's [`ConfigSource`]: admits proxies and keeps their resources
/// current.
#[derive(Clone)]
pub struct ZoneXds {
    shared: Arc<Shared>,
}

impl ZoneXds {
    /// Starts the regeneration, insight, revocation and cleanup tasks; they
    /// end with `shutdown`.
    pub fn start(
        manager: Arc<Manager>,
        zone: String,
        resolver: ResolverFactory,
        auth: ZoneAuth,
        mtls: ZoneMtls,
        settings: XdsSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let XdsSettings {
            cleanup_age,
            offline_cleanup_age,
            metrics,
        } = settings;
        let shared = Arc::new(Shared {
            manager,
            instance_id: format!("zone-{zone}-{}", std::process::id()),
            zone,
            resolver,
            auth,
            mtls,
            cleanup_age,
            offline_cleanup_age,
            proxies: Mutex::new(HashMap::new()),
            contexts: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            holds: Mutex::new(HashMap::new()),
            next_hold: AtomicU64::new(0),
            gone: Mutex::new(Vec::new()),
            wake_insights: Notify::new(),
            metrics,
        });
        tokio::spawn(regenerate_loop(shared.clone(), shutdown.clone()));
        tokio::spawn(insight_loop(shared.clone(), shutdown.clone()));
        tokio::spawn(revocation_loop(shared.clone(), shutdown.clone()));
        tokio::spawn(cleanup_loop(shared.clone(), shutdown));
        ZoneXds { shared }
    }

    /// How proxies authenticate to this zone.
    pub fn auth(&self) -> &ZoneAuth {
        &self.shared.auth
    }

    /// Mesh mTLS of this zone: intermediates and workload certificates.
    pub fn mtls(&self) -> &ZoneMtls {
        &self.shared.mtls
    }

    /// How many proxies are connected.
    pub fn connected(&self) -> usize {
        lock(&self.shared.proxies).len()
    }

    /// The current configuration of a connected proxy.
    pub fn resources_of(&self, id: &ProxyId) -> Option<SharedResources> {
        lock(&self.shared.proxies).get(id).map(|c| c.tx.borrow().clone())
    }
}

fn pb_to_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                json!(*n as i64)
            } else {
                json!(n)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(pb_to_json).collect()),
    }
}

fn struct_to_json(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), pb_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

/// How a node says what it is: Envoy identifies itself as `envoy`; anything
/// else speaking ADS is a proxyless gRPC client or server.
fn kind_of(node: &Node) -> ProxyKind {
    if node.user_agent_name.eq_ignore_ascii_case("envoy") {
        ProxyKind::Sidecar
    } else {
        ProxyKind::Proxyless
    }
}

/// What a node's bootstrap says about TLS files of its own.
#[derive(Clone, Debug, Default)]
struct NodeTls {
    /// A proxyless node's certificate provider instance.
    certificate_provider: Option<String>,
    /// A sidecar's certificate and key for MeshMetric's Prometheus TLS.
    metrics_files: Option<meridian_xds::snapshot::MetricsTlsFiles>,
}

fn node_tls(node: &Node) -> NodeTls {
    NodeTls {
        certificate_provider: certificate_provider_of(node),
        metrics_files: metrics_files_of(node),
    }
}

/// The certificate and key files `meridian-dp --metrics-cert-file
/// --metrics-key-file` names in node metadata (`metricsCertPath`,
/// `metricsKeyPath`, as Kuma's agent names them): absolute paths, both.
fn metrics_files_of(node: &Node) -> Option<meridian_xds::snapshot::MetricsTlsFiles> {
    let fields = &node.metadata.as_ref()?.fields;
    let path = |key: &str| match fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(p)) if p.starts_with('/') && p.len() <= 4096 && !p.contains('\0') => Some(p.clone()),
        _ => None,
    };
    Some(meridian_xds::snapshot::MetricsTlsFiles {
        cert: path("metricsCertPath")?,
        key: path("metricsKeyPath")?,
    })
}

/// The certificate provider instance a proxyless node's bootstrap defines
/// for mesh mTLS (node metadata [`CERTIFICATE_PROVIDER_METADATA`], written
/// by `meridian-dp`); without one the zone sends it no TLS settings, which
/// it could not use (gRFC A29: an unknown instance is a NACK).
fn certificate_provider_of(node: &Node) -> Option<String> {
    let v = node.metadata.as_ref()?.fields.get(CERTIFICATE_PROVIDER_METADATA)?;
    match &v.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
        _ => None,
    }
}

pub use meridian_xds::generate::tls::CERTIFICATE_PROVIDER_METADATA;

/// What a proxy's TLS needs: a sidecar's workload certificate (none while
/// the zone's intermediate is not signed yet: its listeners then wait for
/// the SDS secret), a proxyless node's provider instance.
fn proxy_tls(
    s: &Shared,
    id: &ProxyId,
    kind: ProxyKind,
    node: &NodeTls,
    mesh: &Mesh,
    dataplane: &Dataplane,
) -> ProxyTls {
    let provider = node.certificate_provider.as_ref();
    let identity = match (kind, mesh.mtls_enabled()) {
        (ProxyKind::Sidecar, Some(_)) => match s.mtls.identity(id, mesh, dataplane) {
            Ok(identity) => Some(identity),
            Err(e) => {
                tracing::debug!(proxy = %id, reason = %e, "no workload certificate yet");
                None
            }
        },
        _ => None,
    };
    // A proxyless node's TLS settings name files its agent writes: only
    // once the zone has issued the certificate those files hold.
    let provider = match kind {
        ProxyKind::Proxyless => provider.filter(|_| s.mtls.issued(id).is_some()).cloned(),
        _ => provider.cloned(),
    };
    ProxyTls {
        identity,
        certificate_provider: provider,
        metrics_files: node.metrics_files.clone(),
    }
}

struct Disconnect {
    shared: Arc<Shared>,
    id: ProxyId,
}

impl Drop for Disconnect {
    fn drop(&mut self) {
        let removed = lock(&self.shared.proxies).remove(&self.id);
        if let Some(mut c) = removed {
            c.insight.disconnect_time = Some(format_time(&Utc::now()));
            lock(&self.shared.gone).push((self.id.clone(), c.insight));
            self.shared.wake_insights.notify_one();
        }
        tracing::info!(proxy = %self.id, "proxy disconnected");
    }
}

struct Reporter {
    shared: Arc<Shared>,
    id: ProxyId,
}

impl AckReporter for Reporter {
    fn acked(&self, type_url: &str, version: &str) {
        if let Some(c) = lock(&self.shared.proxies).get_mut(&self.id) {
            c.insight.acked.insert(type_url.to_string(), version.to_string());
            c.insight.nacked.remove(type_url);
            c.insight.dirty = true;
        }
        self.shared.wake_insights.notify_one();
    }

    fn nacked(&self, type_url: &str, version: &str, message: &str) {
        tracing::warn!(proxy = %self.id, type_url, version, message, "proxy rejected its configuration");
        if let Some(c) = lock(&self.shared.proxies).get_mut(&self.id) {
            c.insight
                .nacked
                .insert(type_url.to_string(), (version.to_string(), message.to_string()));
            c.insight.dirty = true;
        }
        self.shared.wake_insights.notify_one();
    }
}

#[async_trait]
impl ConfigSource for ZoneXds {
    type Peer = Credential;

    async fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Credential, Status> {
        self.shared.auth.authenticate(metadata).await
    }

    async fn connect(&self, node: &Node, credential: &Credential) -> Result<ProxySession, Status> {
        if let Some(name) = ingress_node(node) {
            self.shared.auth.authorize_ingress(credential, name)?;
            return self.connect_ingress(name, credential).await;
        }
        let s = &self.shared;
        let id = ProxyId::parse(&node.id).map_err(Status::invalid_argument)?;
        s.auth.authorize_name(credential, &id)?;
        let inline = node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("dataplane"))
            .map(pb_to_json);
        let dataplane = match inline {
            Some(inline) => {
                self.register_from_proxy(credential, &id, inline, &FieldPath::new("metadata.dataplane"))
                    .await?
                    .0
            }
            None => {
                let mesh = self.mesh_spec(&id.mesh)?;
                let dataplane = self.registered(&id)?.ok_or_else(|| {
                    Status::not_found(format!(
                        "dataplane {id} is not registered: register it through the zone API, with meridian-dp run --dataplane-file, or put its definition in the node metadata field \"dataplane\""
                    ))
                })?;
                s.auth.authorize_dataplane(credential, &id, &dataplane)?;
                check_constraints(&mesh, &id, &dataplane)?;
                dataplane
            }
        };
        let kind = kind_of(node);
        let node_tls = node_tls(node);
        let epoch = s.epoch.load(Ordering::SeqCst);
        let ctx = mesh_context(s, &id.mesh, epoch)
            .ok_or_else(|| Status::not_found(format!("mesh {:?} does not exist", id.mesh)))?;
        let tls = proxy_tls(s, &id, kind, &node_tls, &ctx.snapshot.spec, &dataplane);
        let proxy = ProxyContext {
            mesh: id.mesh.clone(),
            name: id.name.clone(),
            kind,
            dataplane,
            tls,
        };
        let resources = Arc::new(generate(&ctx.snapshot, &proxy, ctx.resolver.as_ref(), &s.metrics));
        let (tx, rx) = watch::channel(resources);
        let (end, ended) = session_end(credential);
        {
            let mut proxies = lock(&s.proxies);
            if proxies.contains_key(&id) {
                return Err(Status::already_exists(format!("dataplane {id} is already connected")));
            }
            proxies.insert(
                id.clone(),
                Connected {
                    kind,
                    node_tls,
                    tx,
                    insight: InsightRecord {
                        id: format!("{}-{}", s.instance_id, Utc::now().timestamp_micros()),
                        connect_time: format_time(&Utc::now()),
                        dirty: true,
                        ..Default::default()
                    },
                    credential: credential.clone(),
                    end,
                },
            );
        }
        let guard = Disconnect {
            shared: s.clone(),
            id: id.clone(),
        };
        // A revocation that landed between the verification and the listing
        // above was not seen by the revocation loop: check once more.
        s.auth.recheck(credential)?;
        // A batch of changes the regeneration loop took up while this proxy
        // was not yet listed did not include it: catch up.
        let now = s.epoch.load(Ordering::SeqCst);
        if now != epoch {
            if let Some(ctx) = mesh_context(s, &id.mesh, now) {
                let next = generate(&ctx.snapshot, &proxy, ctx.resolver.as_ref(), &s.metrics);
                if let Some(c) = lock(&s.proxies).get(&id) {
                    c.tx.send_if_modified(|cur| {
                        let changed = **cur != next;
                        if changed {
                            *cur = Arc::new(next);
                        }
                        changed
                    });
                }
            }
        }
        s.wake_insights.notify_one();
        let connected_gauge = s.metrics.proxy_connected(&id.mesh, kind);
        tracing::info!(proxy = %id, ?kind, "proxy connected");
        Ok(ProxySession {
            id: id.clone(),
            resources: rx,
            reporter: Arc::new(Reporter { shared: s.clone(), id }),
            guard: Box::new((guard, connected_gauge)),
            ended,
        })
    }
}

/// A session's end: the credential's expiry, or a status set on the sender
/// (a revocation).
fn session_end(
    credential: &Credential,
) -> (
    watch::Sender<Option<Status>>,
    futures::future::BoxFuture<'static, Status>,
) {
    let (tx, mut rx) = watch::channel(None::<Status>);
    let until = credential.valid_until();
    let ended = Box::pin(async move {
        let expiry = async {
            match until {
                Some(t) => {
                    let left = t.saturating_sub(Utc::now().timestamp()).max(0) as u64;
                    tokio::time::sleep(Duration::from_secs(left)).await;
                    Status::unauthenticated(format!(
                        "the token expired at {}",
                        meridian_server::identity::jwt::format_unix(
                            t - meridian_server::identity::jwt::CLOCK_SKEW_SECS
                        )
                    ))
                }
                None => std::future::pending().await,
            }
        };
        let revoked = async {
            let status = rx.wait_for(Option::is_some).await.ok().and_then(|s| s.clone());
            match status {
                Some(status) => status,
                // The zone dropped the sender: the session is over anyway.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = expiry => s,
            s = revoked => s,
        }
    });
    (tx, ended)
}

fn check_constraints(mesh: &Mesh, id: &ProxyId, dataplane: &Dataplane) -> Result<(), Status> {
    if mesh.admits(&dataplane.all_tags()) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "dataplane {id} does not satisfy the constraints of mesh {:?} (constraints.dataplaneProxy)",
            id.mesh
        )))
    }
}

/// An agent's open registration call.
struct Hold {
    id: ProxyId,
    credential: Credential,
    end: watch::Sender<Option<Status>>,
}

/// Ends a hold when dropped.
pub struct HoldGuard {
    shared: Arc<Shared>,
    key: u64,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.shared.holds).remove(&self.key) {
            tracing::debug!(proxy = %h.id, "registration released");
        }
    }
}

/// What [`ZoneXds::register_from_proxy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Created,
    Updated,
    Unchanged,
    /// Registered through the zone's API: kept as it is.
    Kept,
}

impl Registration {
    pub fn as_str(self) -> &'static str {
        match self {
            Registration::Created => "created",
            Registration::Updated => "updated",
            Registration::Unchanged => "unchanged",
            Registration::Kept => "kept",
        }
    }
}

impl ZoneXds {
    fn mesh_spec(&self, mesh: &str) -> Result<Mesh, Status> {
        let r = self
            .shared
            .manager
            .get(&ResourceKey::global(ResourceType::Mesh, mesh))
            .ok_or_else(|| Status::not_found(format!("mesh {mesh:?} does not exist")))?;
        serde_json::from_value(r.spec)
            .map_err(|e| Status::internal(format!("stored mesh {mesh:?} does not decode: {e}")))
    }

    /// The registered dataplane `id`, if any.
    fn registered(&self, id: &ProxyId) -> Result<Option<Dataplane>, Status> {
        let key = ResourceKey::in_mesh(ResourceType::Dataplane, &id.mesh, &id.name);
        self.shared
            .manager
            .get(&key)
            .map(|r| {
                serde_json::from_value::<Dataplane>(r.spec)
                    .map_err(|e| Status::internal(format!("stored dataplane {id} does not decode: {e}")))
            })
            .transpose()
    }

    /// Registers dataplane `id` as its proxy defines it (`fields`: the
    /// universal form's fields, found at `at` in the request), if
    /// `credential` allows it and the mesh admits it. A dataplane registered
    /// through the API is kept as it is (and checked instead). Returns what
    /// the proxy is served as.
    pub async fn register_from_proxy(
        &self,
        credential: &Credential,
        id: &ProxyId,
        fields: Value,
        at: &FieldPath,
    ) -> Result<(Dataplane, Registration), Status> {
        let s = &self.shared;
        s.auth.authorize_name(credential, id)?;
        meridian_core::names::check_subdomain(&id.name)
            .map_err(|e| Status::invalid_argument(format!("dataplane name {:?}: {e}", id.name)))?;
        let mesh = self.mesh_spec(&id.mesh)?;
        let mut spec = validate_spec(ResourceType::Dataplane, fields, at)
            .map_err(|e| Status::invalid_argument(format!("dataplane {id}: {e}")))?;
        meridian_core::dataplane::tag_zone(&mut spec, &s.zone)
            .map_err(|e| Status::invalid_argument(format!("dataplane {id}: {e}")))?;
        let dataplane: Dataplane =
            serde_json::from_value(spec.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = ResourceKey::in_mesh(ResourceType::Dataplane, &id.mesh, &id.name);
        let existing = s.manager.get(&key);
        if let Some(r) = existing.as_ref().filter(|r| !is_proxy_registered(r)) {
            let kept: Dataplane = serde_json::from_value(r.spec.clone())
                .map_err(|e| Status::internal(format!("stored dataplane {id} does not decode: {e}")))?;
            s.auth.authorize_dataplane(credential, id, &kept)?;
            check_constraints(&mesh, id, &kept)?;
            return Ok((kept, Registration::Kept));
        }
        s.auth.authorize_dataplane(credential, id, &dataplane)?;
        check_constraints(&mesh, id, &dataplane)?;
        let outcome = match &existing {
            None => Registration::Created,
            Some(r) if r.spec == spec => Registration::Unchanged,
            Some(_) => Registration::Updated,
        };
        if outcome != Registration::Unchanged {
            let labels = [(REGISTERED_BY_LABEL.to_string(), REGISTERED_BY_PROXY.to_string())].into();
            let r = Resource::new(key, labels, spec, Utc::now());
            s.manager
                .upsert_synced(r)
                .await
                .map_err(|e| Status::unavailable(format!("registering dataplane {id}: {e}")))?;
            tracing::info!(proxy = %id, outcome = outcome.as_str(), "dataplane registered by its proxy");
        }
        Ok((dataplane, outcome))
    }

    /// Counts dataplane `id` as present until the guard drops; the future
    /// completes, with the reason, when `credential` is no longer valid.
    pub fn hold(
        &self,
        id: ProxyId,
        credential: &Credential,
    ) -> (HoldGuard, futures::future::BoxFuture<'static, Status>) {
        let s = &self.shared;
        let key = s.next_hold.fetch_add(1, Ordering::Relaxed);
        let (end, ended) = session_end(credential);
        lock(&s.holds).insert(
            key,
            Hold {
                id,
                credential: credential.clone(),
                end,
            },
        );
        (HoldGuard { shared: s.clone(), key }, ended)
    }

    /// Checks that `credential` may act as the registered dataplane `id`.
    pub fn authorize_registered(&self, credential: &Credential, id: &ProxyId) -> Result<(), Status> {
        self.shared.auth.authorize_name(credential, id)?;
        let dataplane = self
            .registered(id)?
            .ok_or_else(|| Status::not_found(format!("dataplane {id} is not registered")))?;
        self.shared.auth.authorize_dataplane(credential, id, &dataplane)
    }

    /// The mesh mTLS material of dataplane `id` as its agent gets it
    /// (`dp.proto` `Certificates`): issued (or renewed) now if due.
    pub fn certificate_bundle(&self, id: &ProxyId) -> Result<meridian_proto::dp::CertificateBundle, Status> {
        let mesh = self.mesh_spec(&id.mesh)?;
        let dataplane = self
            .registered(id)?
            .ok_or_else(|| Status::not_found(format!("dataplane {id} is not registered")))?;
        let off = |reason: String| meridian_proto::dp::CertificateBundle {
            enabled: false,
            reason,
            ..Default::default()
        };
        let Some(tls) = zone_mtls::mesh_tls(&self.shared.manager, &id.mesh, &mesh) else {
            return Ok(off(format!("mesh {:?} has no mTLS enabled", id.mesh)));
        };
        match self.shared.mtls.identity_for_agent(id, &mesh, &dataplane) {
            Ok(identity) => Ok(meridian_proto::dp::CertificateBundle {
                enabled: true,
                certificate_chain_pem: identity.chain_pem.clone(),
                private_key_pem: identity.key_pem.clone(),
                trust_bundle_pem: tls.trust_bundle_pem,
                not_after: self.shared.mtls.issued(id).map_or(0, |c| c.not_after.timestamp()),
                reason: String::new(),
            }),
            Err(crate::mtls::IdentityError::Pki(e)) => {
                Err(Status::internal(format!("issuing the certificate of {id}: {e}")))
            }
            Err(e) => Ok(off(e.to_string())),
        }
    }

    /// The zone's store, for what watches it.
    pub fn manager(&self) -> &Arc<Manager> {
        &self.shared.manager
    }

    /// Removes dataplane `id` (and its insight) if its proxy registered it
    /// and `credential` may act for it; `Ok(false)` when there was none to
    /// remove (absent, or registered through the API).
    pub async fn deregister(&self, credential: &Credential, id: &ProxyId) -> Result<bool, Status> {
        self.shared.auth.authorize_name(credential, id)?;
        let key = ResourceKey::in_mesh(ResourceType::Dataplane, &id.mesh, &id.name);
        match self.shared.manager.get(&key) {
            Some(r) if is_proxy_registered(&r) => {
                let dataplane: Dataplane = serde_json::from_value(r.spec)
                    .map_err(|e| Status::internal(format!("stored dataplane {id} does not decode: {e}")))?;
                self.shared.auth.authorize_dataplane(credential, id, &dataplane)?;
                remove_dataplane(&self.shared, id)
                    .await
                    .map_err(|e| Status::unavailable(format!("removing dataplane {id}: {e}")))?;
                tracing::info!(proxy = %id, "dataplane deregistered by its proxy");
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

fn is_proxy_registered(r: &Resource) -> bool {
    r.labels.get(REGISTERED_BY_LABEL).map(String::as_str) == Some(REGISTERED_BY_PROXY)
}

async fn remove_dataplane(s: &Shared, id: &ProxyId) -> Result<(), meridian_store::StoreError> {
    for kind in [ResourceType::Dataplane, ResourceType::DataplaneInsight] {
        s.manager
            .remove_synced(&ResourceKey::in_mesh(kind, &id.mesh, &id.name))
            .await?;
    }
    Ok(())
}

/// Which meshes a change touches (`None`: every mesh).
fn affected_mesh(ev: &Event) -> Option<Option<String>> {
    let key = ev.key();
    match key.kind {
        ResourceType::Mesh => Some(Some(key.name.clone())),
        ResourceType::ZoneIngress => Some(None),
        ResourceType::DataplaneInsight
        | ResourceType::ZoneInsight
        | ResourceType::Zone
        | ResourceType::DataplaneTokenKey
        | ResourceType::DataplaneTokenRevocation => None,
        _ => key.mesh.clone().map(Some),
    }
}

/// The context of `mesh` as of `epoch`: the stored one, or one built from
/// the cache now (and stored, unless the epoch moved meanwhile); `None` when
/// the mesh does not exist.
fn mesh_context(s: &Shared, mesh: &str, epoch: u64) -> Option<Arc<MeshContext>> {
    if let Some(ctx) = lock(&s.contexts).get(mesh) {
        return Some(ctx.clone());
    }
    let snapshot = snapshot(&s.manager, &s.zone, mesh)?;
    let resolver = (s.resolver)(&snapshot);
    let ctx = Arc::new(MeshContext { snapshot, resolver });
    let mut contexts = lock(&s.contexts);
    if s.epoch.load(Ordering::SeqCst) == epoch {
        contexts.insert(mesh.to_string(), ctx.clone());
    }
    Some(ctx)
}

/// A proxy to regenerate.
struct Target {
    id: ProxyId,
    kind: ProxyKind,
    node_tls: NodeTls,
}

/// What a burst of changes asks to regenerate.
#[derive(Default)]
struct Dirty {
    all: bool,
    meshes: BTreeSet<String>,
    /// Proxies whose workload certificates are due.
    proxies: BTreeSet<ProxyId>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        !self.all && self.meshes.is_empty() && self.proxies.is_empty()
    }

    fn event(&mut self, ev: &Event) {
        match affected_mesh(ev) {
            Some(Some(m)) => {
                self.meshes.insert(m);
            }
            Some(None) => self.all = true,
            None => {}
        }
    }

    fn mtls(&mut self, c: zone_mtls::Changes) {
        self.meshes.extend(c.meshes);
        self.proxies.extend(c.proxies);
    }
}

async fn regenerate_loop(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut events = s.manager.cache().subscribe();
    let mut mtls = s.mtls.changed();
    loop {
        let mut dirty = Dirty::default();
        // Wait for the first relevant change, then gather the burst.
        while dirty.is_empty() {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => dirty.event(&ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => dirty.all = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                changed = mtls.recv() => match changed {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => dirty.mtls(s.mtls.take_changes()),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
        let settle = tokio::time::sleep(Duration::from_millis(5));
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                ev = events.recv() => match ev {
                    Ok(ev) => dirty.event(&ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => dirty.all = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                changed = mtls.recv() => match changed {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => dirty.mtls(s.mtls.take_changes()),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
        // Contexts of the changed meshes are stale from here on; a proxy
        // connecting meanwhile sees the new epoch and catches up itself.
        let epoch = s.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut contexts = lock(&s.contexts);
            if dirty.all {
                contexts.clear();
            } else {
                contexts.retain(|mesh, _| !dirty.meshes.contains(mesh));
            }
        }
        regenerate_ingresses(&s, &dirty.meshes, dirty.all);
        // Renewed certificates show in the proxies' insights.
        if !dirty.proxies.is_empty() {
            let mut proxies = lock(&s.proxies);
            for id in &dirty.proxies {
                if let Some(c) = proxies.get_mut(id) {
                    c.insight.dirty = true;
                }
            }
            drop(proxies);
            s.wake_insights.notify_one();
        }
        let targets: Vec<Target> = lock(&s.proxies)
            .iter()
            .filter(|(_, c)| c.kind != ProxyKind::Ingress)
            .filter(|(id, _)| dirty.all || dirty.meshes.contains(&id.mesh) || dirty.proxies.contains(*id))
            .map(|(id, c)| Target {
                id: id.clone(),
                kind: c.kind,
                node_tls: c.node_tls.clone(),
            })
            .collect();
        // Generation is CPU work: off the async workers, over every core.
        let shared = s.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || regenerate_proxies(&shared, &targets, epoch)).await {
            tracing::error!(error = %e, "regenerating proxies failed");
        }
    }
}

/// Below this many proxies of a mesh, one thread regenerates them all.
const PARALLEL_FROM: usize = 64;

/// Regenerates `targets` against their meshes' contexts as of `epoch` and
/// hands each proxy its new set if it changed; the proxies of a mesh are
/// split over the machine's cores.
fn regenerate_proxies(s: &Shared, targets: &[Target], epoch: u64) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let meshes: BTreeSet<&str> = targets.iter().map(|t| t.id.mesh.as_str()).collect();
    for mesh in meshes {
        let ctx = mesh_context(s, mesh, epoch);
        let ctx = ctx.as_deref();
        let proxies: Vec<&Target> = targets.iter().filter(|t| t.id.mesh == mesh).collect();
        if workers < 2 || proxies.len() < PARALLEL_FROM {
            for t in proxies {
                regenerate_one(s, ctx, t);
            }
            continue;
        }
        std::thread::scope(|scope| {
            for part in proxies.chunks(proxies.len().div_ceil(workers)) {
                let work = move || {
                    for t in part {
                        regenerate_one(s, ctx, t);
                    }
                };
                // Without a thread (resources exhausted) the work is done
                // here instead.
                if let Err(e) = std::thread::Builder::new()
                    .name("xds-regenerate".into())
                    .spawn_scoped(scope, work)
                {
                    tracing::warn!(error = %e, "no thread for regeneration; regenerating inline");
                    for t in part {
                        regenerate_one(s, ctx, t);
                    }
                }
            }
        });
    }
}

/// Regenerates one proxy; `ctx` is `None` when its mesh is gone.
fn regenerate_one(s: &Shared, ctx: Option<&MeshContext>, t: &Target) {
    let id = &t.id;
    let key = ResourceKey::in_mesh(ResourceType::Dataplane, &id.mesh, &id.name);
    let next = match (ctx, s.manager.get(&key)) {
        (Some(ctx), Some(dp)) => {
            let Ok(dataplane) = serde_json::from_value::<Dataplane>(dp.spec) else {
                return;
            };
            let tls = proxy_tls(s, id, t.kind, &t.node_tls, &ctx.snapshot.spec, &dataplane);
            let proxy = ProxyContext {
                mesh: id.mesh.clone(),
                name: id.name.clone(),
                kind: t.kind,
                dataplane,
                tls,
            };
            generate(&ctx.snapshot, &proxy, ctx.resolver.as_ref(), &s.metrics)
        }
        // The mesh or the dataplane is gone: the proxy gets nothing.
        _ => ResourceSet::new(),
    };
    if let Some(c) = lock(&s.proxies).get(id) {
        c.tx.send_if_modified(|cur| {
            if **cur == next {
                false
            } else {
                *cur = Arc::new(next);
                true
            }
        });
    }
}

/// Closes the streams whose credential `affected` picks and that no longer
/// verify, each with the reason.
fn close_invalid(s: &Shared, affected: impl Fn(&Credential) -> bool) {
    let close = |id: &ProxyId, credential: &Credential, end: &watch::Sender<Option<Status>>| {
        if !affected(credential) {
            return;
        }
        if let Err(status) = s.auth.recheck(credential) {
            tracing::info!(proxy = %id, reason = status.message(), "closing the stream of a proxy whose token is no longer valid");
            end.send_replace(Some(status));
        }
    };
    for (id, c) in lock(&s.proxies).iter() {
        close(id, &c.credential, &c.end);
    }
    for h in lock(&s.holds).values() {
        close(&h.id, &h.credential, &h.end);
    }
}

/// Ends the live streams of revoked tokens, retired keys and deleted meshes
/// as soon as the zone's replica has the change (DESIGN §10: within 10 s;
/// expiry is each stream's own timer).
async fn revocation_loop(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut events = s.manager.cache().subscribe();
    let mut ingress = s.auth.ingress_tokens().subscribe();
    loop {
        let mut ingress_lagged = false;
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(Event::Put(r)) if r.key.kind == ResourceType::DataplaneTokenRevocation => {
                    let (mesh, jti) = (r.key.mesh.unwrap_or_default(), r.key.name);
                    close_invalid(&s, |c| matches!(c, Credential::Dataplane(v) if v.claims.mesh == mesh && v.claims.jti == jti));
                }
                Ok(Event::Delete { key, .. }) if key.kind == ResourceType::DataplaneTokenKey => {
                    let mesh = key.mesh.unwrap_or_default();
                    close_invalid(&s, |c| matches!(c, Credential::Dataplane(v) if v.claims.mesh == mesh && v.kid == key.name));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => close_invalid(&s, |_| true),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            id = ingress.recv() => match id {
                Ok(id) => {
                    for c in lock(&s.proxies).values() {
                        if matches!(&c.credential, Credential::Ingress(claims) if claims.jti == id) {
                            c.end.send_replace(Some(Status::unauthenticated(format!("zone ingress token {id} has been revoked"))));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => ingress_lagged = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.wait_for(|v| *v) => return,
        }
        if ingress_lagged {
            recheck_ingresses(&s).await;
        }
    }
}

/// Rechecks every ingress stream's token against the revocation records.
async fn recheck_ingresses(s: &Shared) {
    let ids: Vec<(ProxyId, String)> = lock(&s.proxies)
        .iter()
        .filter_map(|(id, c)| match &c.credential {
            Credential::Ingress(claims) => Some((id.clone(), claims.jti.clone())),
            _ => None,
        })
        .collect();
    for (id, jti) in ids {
        if let Ok(true) = s.auth.ingress_tokens().is_revoked(&jti).await {
            if let Some(c) = lock(&s.proxies).get(&id) {
                c.end.send_replace(Some(Status::unauthenticated(format!(
                    "zone ingress token {jti} has been revoked"
                ))));
            }
        }
    }
}

/// Removes the dataplanes their proxies registered once nothing of them has
/// been connected to this zone (no xDS stream, no agent holding the
/// registration) for the cleanup age. A zone that restarts counts from its
/// start.
async fn cleanup_loop(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let period = (s.cleanup_age / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gone: HashMap<ProxyId, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let now = tokio::time::Instant::now();
        let registered: BTreeSet<ProxyId> = s
            .manager
            .list(&Filter::kind(ResourceType::Dataplane))
            .into_iter()
            .filter(|r| is_proxy_registered(r) && r.labels.get(labels::ZONE).is_none_or(|z| z == &s.zone))
            .filter_map(|r| {
                Some(ProxyId {
                    mesh: r.key.mesh?,
                    name: r.key.name,
                })
            })
            .collect();
        gone.retain(|id, _| registered.contains(id));
        // Certificates of dataplanes that are gone are never renewed.
        let present: BTreeSet<ProxyId> = s
            .manager
            .list(&Filter::kind(ResourceType::Dataplane))
            .into_iter()
            .filter_map(|r| {
                Some(ProxyId {
                    mesh: r.key.mesh?,
                    name: r.key.name,
                })
            })
            .collect();
        s.mtls.retain(|id| present.contains(id));
        let connected: BTreeSet<ProxyId> = {
            let proxies = lock(&s.proxies);
            let holds = lock(&s.holds);
            let held: BTreeSet<&ProxyId> = holds.values().map(|h| &h.id).collect();
            registered
                .iter()
                .filter(|id| proxies.contains_key(*id) || held.contains(id))
                .cloned()
                .collect()
        };
        for id in registered {
            if connected.contains(&id) {
                gone.remove(&id);
                continue;
            }
            let since = *gone.entry(id.clone()).or_insert(now);
            if now.duration_since(since) < s.cleanup_age {
                continue;
            }
            match remove_dataplane(&s, &id).await {
                Ok(()) => {
                    gone.remove(&id);
                    tracing::info!(proxy = %id, after = ?s.cleanup_age, "removed a dataplane whose proxy is gone");
                }
                Err(e) => tracing::warn!(proxy = %id, error = %e, "removing a dataplane whose proxy is gone failed"),
            }
        }
        if let Some(age) = s.offline_cleanup_age {
            remove_long_offline(&s, age).await;
        }
    }
}

/// The latest disconnect of an insight whose every subscription has ended;
/// `None` while one is open, or when there is none (a dataplane whose proxy
/// never connected is not "offline since" anything).
fn offline_since(insight: &Value) -> Option<DateTime<Utc>> {
    let subs = insight.get("subscriptions")?.as_array()?;
    let mut latest: Option<DateTime<Utc>> = None;
    for sub in subs {
        let t = sub.get("disconnectTime")?.as_str()?;
        let t = DateTime::parse_from_rfc3339(t).ok()?.with_timezone(&Utc);
        latest = Some(latest.map_or(t, |l| l.max(t)));
    }
    latest
}

/// Removes this zone's dataplanes (other than proxy-registered ones, which
/// the loop above handles) whose proxies have been offline longer than
/// `age`, as Kuma's dataplane cleanup does (72 h by default).
async fn remove_long_offline(s: &Shared, age: Duration) {
    let Ok(age) = chrono::Duration::from_std(age) else {
        return;
    };
    let now = Utc::now();
    let candidates: Vec<(ProxyId, DateTime<Utc>)> = s
        .manager
        .list(&Filter::kind(ResourceType::Dataplane))
        .into_iter()
        .filter(|r| !is_proxy_registered(r) && r.labels.get(labels::ZONE).is_none_or(|z| z == &s.zone))
        .filter_map(|r| {
            let mesh = r.key.mesh?;
            let insight = s.manager.get(&ResourceKey::in_mesh(
                ResourceType::DataplaneInsight,
                &mesh,
                &r.key.name,
            ))?;
            let since = offline_since(&insight.spec)?;
            (now - since > age).then_some((ProxyId { mesh, name: r.key.name }, since))
        })
        .collect();
    for (id, since) in candidates {
        if lock(&s.proxies).contains_key(&id) {
            continue;
        }
        match remove_dataplane(s, &id).await {
            Ok(()) => {
                tracing::info!(proxy = %id, offline_since = %since, after = ?age.to_std().unwrap_or_default(), "removed a dataplane that stayed offline")
            }
            Err(e) => tracing::warn!(proxy = %id, error = %e, "removing a long-offline dataplane failed"),
        }
    }
}

fn insight_spec(r: &InsightRecord, instance: &str, mtls: Option<Value>) -> Value {
    let mut stat = Map::new();
    for (t, v) in &r.acked {
        stat.insert(short_type(t), json!({"acknowledgedVersion": v}));
    }
    for (t, (v, msg)) in &r.nacked {
        stat.insert(short_type(t), json!({"rejectedVersion": v, "lastNack": msg}));
    }
    let mut sub = json!({
        "id": r.id,
        "controlPlaneInstanceId": instance,
        "connectTime": r.connect_time,
        "status": {"lastUpdateTime": format_time(&Utc::now()), "stat": stat},
    });
    if let (Some(t), Value::Object(m)) = (&r.disconnect_time, &mut sub) {
        m.insert("disconnectTime".into(), Value::String(t.clone()));
    }
    let mut spec = json!({"subscriptions": [sub]});
    if let (Some(m), Value::Object(o)) = (mtls, &mut spec) {
        o.insert("mTLS".into(), m);
    }
    spec
}

fn short_type(type_url: &str) -> String {
    type_url.rsplit('.').next().unwrap_or(type_url).to_string()
}

async fn insight_loop(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = s.wake_insights.notified() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        // Coalesce bursts (a stream's first ACKs come together).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut writes: Vec<(ProxyId, InsightRecord)> = std::mem::take(&mut *lock(&s.gone));
        for (id, c) in lock(&s.proxies).iter_mut() {
            if c.insight.dirty {
                c.insight.dirty = false;
                writes.push((id.clone(), c.insight.clone()));
            }
        }
        for (id, record) in writes {
            let key = ResourceKey::in_mesh(ResourceType::DataplaneInsight, &id.mesh, &id.name);
            let r = Resource::new(
                key,
                Default::default(),
                insight_spec(&record, &s.instance_id, s.mtls.status(&id)),
                Utc::now(),
            );
            if let Err(e) = s.manager.upsert_synced(r).await {
                tracing::warn!(proxy = %id, error = %e, "writing the dataplane insight failed");
            }
        }
    }
}

impl ZoneXds {
    /// The snapshot and proxy context of a dataplane, as generation sees it.
    fn context(&self, mesh: &str, name: &str) -> Option<(MeshSnapshot, ProxyContext, bool)> {
        let s = &self.shared;
        let dp = s
            .manager
            .get(&ResourceKey::in_mesh(ResourceType::Dataplane, mesh, name))?;
        let dataplane: Dataplane = serde_json::from_value(dp.spec).ok()?;
        let id = ProxyId {
            mesh: mesh.to_string(),
            name: name.to_string(),
        };
        let connected = lock(&s.proxies).get(&id).map(|c| (c.kind, c.node_tls.clone()));
        let (kind, node_tls) = connected.clone().unwrap_or((ProxyKind::Sidecar, NodeTls::default()));
        let snap = snapshot(&s.manager, &s.zone, mesh)?;
        // Inspection shows what the proxy has; it issues nothing.
        let tls = ProxyTls {
            identity: s.mtls.current(&id),
            certificate_provider: node_tls.certificate_provider.filter(|_| s.mtls.issued(&id).is_some()),
            metrics_files: node_tls.metrics_files,
        };
        let proxy = ProxyContext {
            mesh: mesh.to_string(),
            name: name.to_string(),
            kind,
            dataplane,
            tls,
        };
        Some((snap, proxy, connected.is_some()))
    }
}

impl meridian_server::api::DataplaneInspector for ZoneXds {
    fn xds(&self, mesh: &str, name: &str, include_eds: bool) -> Result<Option<Value>, String> {
        let Some((snap, proxy, _)) = self.context(mesh, name) else {
            return Ok(None);
        };
        let resolver = (self.shared.resolver)(&snap);
        let set = generate(&snap, &proxy, resolver.as_ref(), &self.shared.metrics);
        meridian_xds::config_dump::config_dump_json(&set, include_eds)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn ingress_xds(&self, name: &str, include_eds: bool) -> Result<Option<Value>, String> {
        let Ok(set) = self.ingress_resources(name) else {
            return Ok(None);
        };
        meridian_xds::config_dump::config_dump_json(&set, include_eds)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn policies(&self, mesh: &str, name: &str) -> Option<Value> {
        let (snap, proxy, _) = self.context(mesh, name)?;
        let resolver = (self.shared.resolver)(&snap);
        let inbounds: Vec<Value> = proxy
            .dataplane
            .networking
            .inbound
            .iter()
            .enumerate()
            .map(|(i, inbound)| {
                json!({"port": inbound.port, "tags": inbound.tags,
                       "policies": resolver.inbound(&snap, &proxy, i)})
            })
            .collect();
        let outbounds: Vec<Value> = destinations(&snap, &proxy)
            .iter()
            .map(|d| json!({"service": d, "policies": resolver.outbound(&snap, &proxy, d)}))
            .collect();
        let whole = resolver.proxy(&snap, &proxy);
        Some(json!({"mesh": mesh, "name": name, "proxy": whole, "inbounds": inbounds, "outbounds": outbounds}))
    }

    fn ingress_connected(&self, name: &str) -> Option<bool> {
        Some(lock(&self.shared.proxies).contains_key(&ingress_proxy_id(name)))
    }

    fn rules(&self, mesh: &str, name: &str) -> Option<Value> {
        let (snap, proxy, _) = self.context(mesh, name)?;
        let mut out = crate::rules::rules(&snap, &proxy, &destinations(&snap, &proxy));
        // Whether the proxy's MeshProxyPatch applies: generation says why
        // not (the proxy then gets its configuration without it).
        let patched = out["rules"]
            .as_array_mut()
            .and_then(|rules| rules.iter_mut().find(|r| r["type"] == "MeshProxyPatch"));
        if let Some(rule) = patched {
            let state = if proxy.kind == ProxyKind::Sidecar {
                let resolver = (self.shared.resolver)(&snap);
                match meridian_xds::generate::sidecar::generate_reporting(&snap, &proxy, resolver.as_ref()).1 {
                    Some(e) => json!({"applied": false, "error": e.to_string()}),
                    None => json!({"applied": true}),
                }
            } else {
                json!({"applied": false, "error": "MeshProxyPatch applies to Envoy sidecars only"})
            };
            rule["proxyRule"]["patch"] = state;
        }
        Some(out)
    }
}

/// The services inspection shows a proxy's configuration towards: a
/// sidecar's outbounds, every service of the mesh for a gRPC client.
fn destinations(snap: &MeshSnapshot, proxy: &ProxyContext) -> Vec<String> {
    match proxy.kind {
        ProxyKind::Sidecar => proxy
            .dataplane
            .networking
            .outbound
            .iter()
            .filter_map(|o| o.tags.get(meridian_core::dataplane::SERVICE_TAG).cloned())
            .collect(),
        _ => snap.services().into_iter().collect(),
    }
}

// ---- zone ingress proxies ---------------------------------------------------

/// The id under which the proxy of ingress `name` is connected: the ingress
/// name with an empty mesh (no dataplane's id looks like this).
pub fn ingress_proxy_id(name: &str) -> ProxyId {
    ProxyId {
        mesh: String::new(),
        name: name.to_string(),
    }
}

/// The ingress a node connects as, if it is an ingress proxy: a node id
/// without a dot, or node metadata `proxyType: "ingress"`.
fn ingress_node(node: &Node) -> Option<&str> {
    let flagged = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("proxyType"))
        .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(t)) if t == "ingress"));
    let named = !node.id.is_empty() && (flagged || !node.id.contains('.'));
    named.then_some(node.id.as_str())
}

/// This zone's ingress `name`; the error says why a proxy cannot be it.
fn own_ingress(manager: &Manager, zone: &str, name: &str) -> Result<ZoneIngress, Status> {
    let r = manager
        .get(&ResourceKey::global(ResourceType::ZoneIngress, name))
        .ok_or_else(|| {
            Status::not_found(format!(
                "zone ingress {name:?} is not registered in zone {zone:?}: create it through the zone API (PUT /zoneingresses/{name}); a dataplane's node id is <mesh>.<name>"
            ))
        })?;
    if let Some(other) = r.labels.get(labels::ZONE).filter(|z| z.as_str() != zone) {
        return Err(Status::permission_denied(format!(
            "zone ingress {name:?} belongs to zone {other:?}, not to this zone ({zone:?})"
        )));
    }
    serde_json::from_value(r.spec)
        .map_err(|e| Status::internal(format!("stored zone ingress {name:?} does not decode: {e}")))
}

/// The meshes whose services an ingress advertises.
fn advertised_meshes(ingress: &ZoneIngress) -> BTreeSet<String> {
    ingress.available_services.iter().map(|a| a.mesh.clone()).collect()
}

/// An ingress proxy's configuration, over the snapshots of the meshes it
/// advertises (a mesh that no longer exists contributes nothing).
fn ingress_config(manager: &Manager, zone: &str, ingress: &ZoneIngress) -> ResourceSet {
    let snapshots: Vec<MeshSnapshot> = advertised_meshes(ingress)
        .iter()
        .filter_map(|mesh| snapshot(manager, zone, mesh))
        .collect();
    meridian_xds::generate::ingress::generate(ingress, &snapshots)
}

/// Regenerates the connected ingress proxies that advertise a mesh in
/// `dirty` (every one when `all`).
fn regenerate_ingresses(s: &Shared, dirty: &BTreeSet<String>, all: bool) {
    let ids: Vec<ProxyId> = lock(&s.proxies)
        .iter()
        .filter(|(_, c)| c.kind == ProxyKind::Ingress)
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        let next = match own_ingress(&s.manager, &s.zone, &id.name) {
            Ok(ingress) if all || !advertised_meshes(&ingress).is_disjoint(dirty) => {
                ingress_config(&s.manager, &s.zone, &ingress)
            }
            Ok(_) => continue,
            // The ingress is gone (or no longer this zone's): the proxy gets nothing.
            Err(_) => ResourceSet::new(),
        };
        if let Some(c) = lock(&s.proxies).get(&id) {
            c.tx.send_if_modified(|cur| {
                if **cur == next {
                    false
                } else {
                    *cur = Arc::new(next);
                    true
                }
            });
        }
    }
}

/// Logs what an ingress proxy rejects (ingresses have no insight record).
struct IngressReporter(ProxyId);

impl AckReporter for IngressReporter {
    fn acked(&self, type_url: &str, version: &str) {
        tracing::debug!(ingress = %self.0.name, type_url, version, "ingress proxy acknowledged");
    }

    fn nacked(&self, type_url: &str, version: &str, message: &str) {
        tracing::warn!(ingress = %self.0.name, type_url, version, message, "ingress proxy rejected its configuration");
    }
}

/// Forgets an ingress proxy when its stream ends.
struct IngressDisconnect {
    shared: Arc<Shared>,
    id: ProxyId,
}

impl Drop for IngressDisconnect {
    fn drop(&mut self) {
        lock(&self.shared.proxies).remove(&self.id);
        tracing::info!(ingress = %self.id.name, "ingress proxy disconnected");
    }
}

impl ZoneXds {
    /// Admits the proxy of this zone's ingress `name`, once.
    async fn connect_ingress(&self, name: &str, credential: &Credential) -> Result<ProxySession, Status> {
        let s = &self.shared;
        let ingress = own_ingress(&s.manager, &s.zone, name)?;
        let id = ingress_proxy_id(name);
        let (tx, rx) = watch::channel(Arc::new(ingress_config(&s.manager, &s.zone, &ingress)));
        let (end, ended) = session_end(credential);
        {
            let mut proxies = lock(&s.proxies);
            if proxies.contains_key(&id) {
                return Err(Status::already_exists(format!(
                    "zone ingress {name:?} is already connected"
                )));
            }
            proxies.insert(
                id.clone(),
                Connected {
                    node_tls: NodeTls::default(),
                    kind: ProxyKind::Ingress,
                    tx,
                    insight: InsightRecord::default(),
                    credential: credential.clone(),
                    end,
                },
            );
        }
        let guard = IngressDisconnect {
            shared: s.clone(),
            id: id.clone(),
        };
        // A revocation published between the verification and the listing
        // above reached no stream: check once more.
        if let Credential::Ingress(claims) = credential {
            if s.auth.ingress_tokens().is_revoked(&claims.jti).await.unwrap_or(true) {
                return Err(Status::unauthenticated(format!(
                    "zone ingress token {} has been revoked",
                    claims.jti
                )));
            }
        }
        tracing::info!(ingress = name, "ingress proxy connected");
        let connected_gauge = s.metrics.proxy_connected(&id.mesh, ProxyKind::Ingress);
        Ok(ProxySession {
            id: id.clone(),
            resources: rx,
            reporter: Arc::new(IngressReporter(id)),
            guard: Box::new((guard, connected_gauge)),
            ended,
        })
    }

    /// What the proxy of this zone's ingress `name` is (or would be) sent.
    pub fn ingress_resources(&self, name: &str) -> Result<ResourceSet, Status> {
        let s = &self.shared;
        let ingress = own_ingress(&s.manager, &s.zone, name)?;
        Ok(ingress_config(&s.manager, &s.zone, &ingress))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value as PbValue};

    fn node(fields: &[(&str, &str)]) -> Node {
        Node {
            metadata: Some(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            PbValue {
                                kind: Some(Kind::StringValue(v.to_string())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn metrics_tls_files_are_absolute_and_both_given() {
        let both = node(&[
            ("metricsCertPath", "/etc/m/tls.crt"),
            ("metricsKeyPath", "/etc/m/tls.key"),
        ]);
        assert_eq!(
            metrics_files_of(&both),
            Some(meridian_xds::snapshot::MetricsTlsFiles {
                cert: "/etc/m/tls.crt".into(),
                key: "/etc/m/tls.key".into()
            })
        );
        assert_eq!(metrics_files_of(&node(&[("metricsCertPath", "/etc/m/tls.crt")])), None);
        assert_eq!(
            metrics_files_of(&node(&[
                ("metricsCertPath", "tls.crt"),
                ("metricsKeyPath", "/etc/m/tls.key")
            ])),
            None,
            "a relative path means nothing to Envoy's working directory"
        );
        assert_eq!(metrics_files_of(&Node::default()), None);
    }
}
