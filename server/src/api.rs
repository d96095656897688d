//! The HTTP API (DESIGN §4), identical paths on the global and on zones.
//!
//! Handlers resolve the path to a resource type, check that this side may
//! write it, decode and validate the body, and call the [`Manager`]. Reads
//! come from the cache. Errors become responses only in [`crate::error`].

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_core::access::{Access, Principal, Target};
use meridian_core::decode::{decode_value, parse_values, Format, MAX_RESOURCE_BYTES};
use meridian_core::resource::format_time;
use meridian_core::types::Owner;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_store::Filter;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::access::audit::{AuditEntry, Outcome as AuditOutcome};
use crate::access::AccessControl;
use crate::error::ApiError;
use crate::global_services::GlobalServices;
use crate::identity_api;
use crate::manager::{Manager, Outcome};
use crate::metrics::{ApiMetrics, KindLabel, RequestLabels};
use crate::tokens;

/// Which role this control plane plays; it decides what the API may write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The global control plane: owns meshes and policies.
    Global,
    /// A zone federated to a global: owns its inventory only.
    Zone { name: String },
    /// A zone without a global: owns everything itself.
    Standalone { zone: String },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Global => "global",
            Mode::Zone { .. } => "zone",
            Mode::Standalone { .. } => "standalone",
        }
    }

    pub(crate) fn zone(&self) -> Option<&str> {
        match self {
            Mode::Global => None,
            Mode::Zone { name } => Some(name),
            Mode::Standalone { zone } => Some(zone),
        }
    }

    /// Whether the API may write `kind` here (405 otherwise, with why).
    fn check_writable(&self, kind: ResourceType) -> Result<(), ApiError> {
        if kind.is_read_only() {
            return Err(ApiError::read_only(format!(
                "{kind} is read-only: Meridian maintains it"
            )));
        }
        match (self, kind.owner()) {
            (Mode::Global, Owner::Zone) => Err(ApiError::read_only(format!(
                "{kind} is owned by the zones; on the global it is read-only"
            ))),
            (Mode::Zone { .. }, Owner::Global) => Err(ApiError::read_only(format!(
                "{kind} comes from the global control plane; on a federated zone it is read-only"
            ))),
            (Mode::Zone { .. } | Mode::Standalone { .. }, Owner::System) => Err(ApiError::read_only(format!(
                "{kind} is kept by the global control plane"
            ))),
            _ => Ok(()),
        }
    }
}

/// A check of a resource's spec beyond its own validation: violations as
/// (field below `spec`, message).
pub type SpecCheck = fn(ResourceType, &Value) -> Vec<(String, String)>;

/// Everything the handlers share.
pub struct ApiState {
    pub manager: Arc<Manager>,
    pub mode: Mode,
    pub spec_check: Option<SpecCheck>,
    pub metrics: ApiMetrics,
    pub registry: Registry,
    /// True once the store answered and the initial work is done.
    pub ready: watch::Receiver<bool>,
    /// True while this replica leads.
    pub leader: watch::Receiver<bool>,
    /// Zone tokens and KDS join information: the global only.
    pub global: Option<Arc<GlobalServices>>,
    /// Issues dataplane tokens: the global and standalone zones.
    pub dataplane_tokens: Option<Arc<crate::identity::dataplane::DataplaneTokenIssuer>>,
    /// Ingress tokens and the xDS CA: zones only.
    pub zone: Option<Arc<crate::identity_api::ZoneServices>>,
    /// What the zone generates for its proxies, set once the zone's xDS side
    /// exists; the global has none.
    pub inspector: Arc<OnceLock<Arc<dyn DataplaneInspector>>>,
    /// Who may call the API, and the audit log.
    pub access: Arc<AccessControl>,
    /// Set once by the global: asks the zone holding a dataplane to inspect
    /// it.
    pub forwarder: Arc<OnceLock<Arc<dyn ZoneForwarder>>>,
}

/// Answers the inspection endpoints of a zone's dataplanes.
pub trait DataplaneInspector: Send + Sync + 'static {
    /// The generated xDS resources of a dataplane as Envoy's admin
    /// `ConfigDump` in proto3 JSON (endpoints with `include_eds`); `Ok(None)`
    /// when the dataplane is not known, `Err` when the dump cannot be
    /// written.
    fn xds(&self, mesh: &str, name: &str, include_eds: bool) -> Result<Option<Value>, String>;
    /// The policies matched for a dataplane, per inbound and destination.
    fn policies(&self, mesh: &str, name: &str) -> Option<Value>;
    /// The rules a dataplane's configuration is built from, per policy
    /// type, with the policies each came from (`_rules`).
    fn rules(&self, _mesh: &str, _name: &str) -> Option<Value> {
        None
    }
    /// Whether the proxy of this zone's ingress `name` is connected; `None`
    /// when this control plane cannot tell.
    fn ingress_connected(&self, _name: &str) -> Option<bool> {
        None
    }
    /// The same dump of the proxy of this zone's ingress `name`; `Ok(None)`
    /// when there is no such ingress.
    fn ingress_xds(&self, _name: &str, _include_eds: bool) -> Result<Option<Value>, String> {
        Ok(None)
    }
}

/// One inspection of a dataplane, as asked at the global and answered by
/// its zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// `xds` (the configuration dump), `rules` or `policies`.
    pub kind: &'static str,
    pub mesh: String,
    /// The dataplane's name in its zone.
    pub name: String,
    pub include_eds: bool,
}

/// How the global asks a zone (over its KDS connection) to inspect one of
/// its dataplanes: the zone's HTTP status and JSON body, or why the zone
/// could not be asked.
#[async_trait::async_trait]
pub trait ZoneForwarder: Send + Sync + 'static {
    async fn inspect(&self, zone: &str, inspection: Inspection) -> Result<(u16, Value), String>;
}

/// Builds the router over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ready", get(ready))
        .route("/healthy", get(|| async { (StatusCode::OK, "ok") }))
        .route("/metrics", get(metrics))
        .route("/global-insight", get(global_insight))
        .route("/mesh-insights", get(crate::overviews::mesh_insights))
        .route("/mesh-insights/{name}", get(crate::overviews::mesh_insight))
        .route(
            "/meshes/{mesh}/service-insights",
            get(crate::overviews::service_insights),
        )
        .route(
            "/meshes/{mesh}/service-insights/{name}",
            get(crate::overviews::service_insight),
        )
        .route("/zoneingresses+insights", get(crate::overviews::zone_ingress_overviews))
        .route(
            "/zoneingresses+insights/{name}",
            get(crate::overviews::zone_ingress_overview),
        )
        .route("/meshes", get(list_meshes))
        .route("/meshes/{name}", get(get_mesh).put(put_mesh).delete(delete_mesh))
        .route("/meshes/{mesh}/dataplanes+insights", get(list_dataplane_overviews))
        .route("/meshes/{mesh}/dataplanes+insights/{name}", get(get_dataplane_overview))
        .route("/meshes/{mesh}/dataplanes/{name}/xds", get(dataplane_xds))
        .route("/meshes/{mesh}/dataplanes/{name}/_rules", get(dataplane_rules))
        .route("/meshes/{mesh}/dataplanes/{name}/policies", get(dataplane_policies))
        .route("/zoneingresses/{name}/xds", get(zone_ingress_xds))
        .route("/meshes/{mesh}/{plural}/{name}/_resources", get(policy_resources))
        .route(
            "/meshes/{mesh}/{plural}/{name}/_resources/dataplanes",
            get(policy_resources),
        )
        .route("/meshes/{mesh}/{plural}/{name}/_rules", get(rules_of_non_dataplane))
        .route("/meshes/{mesh}/{plural}", get(list_in_mesh))
        .route(
            "/meshes/{mesh}/{plural}/{name}",
            get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh),
        )
        .route("/tokens/dataplane", post(identity_api::issue_dataplane_token))
        .route("/tokens/dataplane/revoke", post(identity_api::revoke_dataplane_token))
        .route("/tokens/dataplane/rotate", post(identity_api::rotate_dataplane_key))
        .route("/tokens/zone-ingress", post(identity_api::issue_ingress_token))
        .route("/tokens/zone-ingress/revoke", post(identity_api::revoke_ingress_token))
        .route("/xds-ca", get(identity_api::xds_ca))
        .route("/tokens/user", post(issue_user_token))
        .route("/tokens/user/revoke", post(revoke_user_token))
        .route("/audit", get(audit_log))
        .route("/tokens/zone", post(issue_zone_token))
        .route("/tokens/zone/revoke", post(revoke_zone_token))
        .route("/kds-info", get(kds_info))
        .route("/zones+insights", get(list_zone_overviews))
        .route("/zones+insights/{name}", get(get_zone_overview))
        .route("/{plural}", get(list_global))
        .route(
            "/{plural}/{name}",
            get(get_global).put(put_global).delete(delete_global),
        )
        .layer(DefaultBodyLimit::max(BODY_READ_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Bodies up to this size are read in full so that an oversized resource gets
/// a clean 413 answer instead of a connection reset mid-upload; larger ones
/// are cut off by the HTTP layer.
const BODY_READ_LIMIT: usize = 8 * MAX_RESOURCE_BYTES;

pub(crate) type St = State<Arc<ApiState>>;
/// The authenticated caller, set by [`authenticate`].
pub(crate) type Caller = Extension<Principal>;
pub(crate) type ApiResult = Result<Response, ApiError>;

/// Paths answered without a token: what probes and load balancers call.
fn is_open(path: &str, metrics_public: bool) -> bool {
    matches!(path, "/" | "/ready" | "/healthy") || (metrics_public && path == "/metrics")
}

/// Turns the bearer token into the caller ([`Principal`]) of the request,
/// or answers 401 saying what is missing.
async fn authenticate(State(state): St, mut req: Request, next: Next) -> Response {
    if !is_open(req.uri().path(), state.access.metrics_public) {
        match state.access.authenticate(req.headers().get(header::AUTHORIZATION)) {
            Ok(p) => {
                req.extensions_mut().insert(p);
            }
            Err(e) => {
                let mut resp = e.into_response();
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"meridian\""),
                );
                return resp;
            }
        }
    }
    next.run(req).await
}

/// What reading `kind` takes: `Secret`s hold keys and need `VIEW_SECRETS`.
pub(crate) fn view_access(kind: ResourceType) -> Access {
    if kind == ResourceType::Secret {
        Access::ViewSecrets
    } else {
        Access::View
    }
}

pub(crate) fn target_of(key: &ResourceKey) -> Target<'_> {
    Target::resource(key.kind, key.mesh.as_deref(), &key.name)
}

/// Only the resources `p` may read.
pub(crate) fn visible(s: &ApiState, p: &Principal, items: Vec<Resource>) -> Vec<Resource> {
    let rbac = s.access.rbac.current();
    items
        .into_iter()
        .filter(|r| rbac.allows(p, view_access(r.key.kind), &target_of(&r.key)))
        .collect()
}

/// What the audit log says about a failed request.
fn reason(e: &ApiError) -> String {
    match e.causes.first() {
        Some(c) => format!("{}: {}: {}", e.details, c.field, c.message),
        None => e.details.clone(),
    }
}

/// Records a write or a token action in the audit log and passes `result` on.
pub(crate) async fn audited(
    s: &ApiState,
    p: &Principal,
    action: &str,
    target: Target<'_>,
    result: ApiResult,
) -> ApiResult {
    if !s.access.audits {
        return result;
    }
    let (outcome, status, why) = match &result {
        Ok(r) => (AuditOutcome::Succeeded, r.status().as_u16(), None),
        Err(e) if e.status == StatusCode::FORBIDDEN => (AuditOutcome::Denied, e.status.as_u16(), Some(reason(e))),
        Err(e) => (AuditOutcome::Failed, e.status.as_u16(), Some(reason(e))),
    };
    s.access
        .audit
        .record(AuditEntry {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            user: p.name.clone(),
            groups: p
                .groups
                .iter()
                .filter(|g| *g != meridian_core::access::AUTHENTICATED_GROUP)
                .cloned()
                .collect(),
            action: action.to_string(),
            kind: target.kind.map(|k| k.name().to_string()),
            mesh: target.mesh.map(str::to_string),
            name: target.name.map(str::to_string),
            result: outcome,
            status,
            reason: why,
        })
        .await;
    result
}

async fn observe(State(state): St, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    state.metrics.request_seconds.observe(elapsed.as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            status,
        })
        .inc();
    tracing::debug!(%method, %path, status, micros = elapsed.as_micros() as u64, "request");
    resp
}

async fn root(State(state): St) -> Json<Value> {
    let mut v = json!({
        "product": "Meridian",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": state.mode.name(),
    });
    if let (Some(zone), Value::Object(m)) = (state.mode.zone(), &mut v) {
        m.insert("zone".into(), Value::String(zone.to_string()));
    }
    Json(v)
}

async fn ready(State(state): St) -> Response {
    if *state.ready.borrow() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(state): St) -> Response {
    let cache = state.manager.cache();
    for kind in ResourceType::ALL {
        let n = cache.list(&Filter::kind(kind)).len() as i64;
        state
            .metrics
            .resources
            .get_or_create(&KindLabel {
                resource_type: kind.name().to_string(),
            })
            .set(n);
    }
    state.metrics.store_revision.set(cache.revision() as i64);
    state.metrics.leader.set(i64::from(*state.leader.borrow()));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &state.registry) {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

// ---- paths to types -------------------------------------------------------

fn mesh_scoped_type(plural: &str) -> Result<ResourceType, ApiError> {
    match ResourceType::from_plural(plural) {
        Some(t) if t.is_mesh_scoped() => Ok(t),
        _ => Err(ApiError::not_found(format!(
            "unknown resource type {plural:?} in a mesh"
        ))),
    }
}

fn global_type(plural: &str) -> Result<ResourceType, ApiError> {
    match ResourceType::from_plural(plural) {
        Some(t) if !t.is_mesh_scoped() && t != ResourceType::Mesh => Ok(t),
        _ => Err(ApiError::not_found(format!("unknown path /{plural}"))),
    }
}

// ---- listing --------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct Page {
    offset: Option<String>,
    size: Option<String>,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// `(offset, size)` of a page request, checked.
fn page_bounds(page: &Page) -> Result<(usize, usize), ApiError> {
    let parse = |name: &str, v: &Option<String>, default: usize| -> Result<usize, ApiError> {
        match v {
            None => Ok(default),
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| ApiError::field(name, format!("must be a non-negative integer, got {s:?}"))),
        }
    };
    let offset = parse("offset", &page.offset, 0)?;
    let size = parse("size", &page.size, DEFAULT_PAGE)?;
    if size == 0 || size > MAX_PAGE {
        return Err(ApiError::field("size", format!("must be between 1 and {MAX_PAGE}")));
    }
    Ok((offset, size))
}

pub(crate) fn paged(items: Vec<Value>, page: &Page, headers: &HeaderMap, path: &str) -> Result<Response, ApiError> {
    let (offset, size) = page_bounds(page)?;
    let total = items.len();
    let end = offset.saturating_add(size).min(total);
    let slice: Vec<Value> = if offset < total {
        items[offset..end].to_vec()
    } else {
        Vec::new()
    };
    let next = if end < total {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        // `path` may carry filters of its own (`?tag=…`).
        let sep = if path.contains('?') { '&' } else { '?' };
        Value::String(format!("http://{host}{path}{sep}offset={end}&size={size}"))
    } else {
        Value::Null
    };
    Ok(Json(json!({"total": total, "items": slice, "next": next})).into_response())
}

fn to_json(items: Vec<Resource>) -> Vec<Value> {
    items.iter().map(Resource::to_api_json).collect()
}

async fn list_meshes(State(s): St, Extension(caller): Caller, Query(p): Query<Page>, h: HeaderMap) -> ApiResult {
    let items = visible(&s, &caller, s.manager.list(&Filter::kind(ResourceType::Mesh)));
    paged(to_json(items), &p, &h, "/meshes")
}

async fn list_in_mesh(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, plural)): Path<(String, String)>,
    Query(p): Query<Page>,
    RawQuery(raw): RawQuery,
    h: HeaderMap,
) -> ApiResult {
    let kind = mesh_scoped_type(&plural)?;
    let tags = tag_filters(raw.as_deref())?;
    if !tags.is_empty() && kind != ResourceType::Dataplane {
        return Err(ApiError::field("tag", "filters lists of dataplanes only"));
    }
    let mut items = visible(&s, &caller, s.manager.list(&Filter::in_mesh(kind, &mesh)));
    items.retain(|dp| has_tags(dp, &tags));
    paged(
        to_json(items),
        &p,
        &h,
        &format!("/meshes/{mesh}/{plural}{}", tag_query(&tags)),
    )
}

/// Kuma's `?tag=KEY:VALUE` filters of dataplane lists (repeatable; all must
/// hold).
fn tag_filters(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("the query does not decode: {e}")))?;
    pairs
        .into_iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| match v.split_once(':') {
            Some((k, value)) if !k.is_empty() => Ok((k.to_string(), value.to_string())),
            _ => Err(ApiError::field("tag", format!("expected KEY:VALUE, got {v:?}"))),
        })
        .collect()
}

/// `?tag=…` again, for the `next` link of a filtered list.
fn tag_query(tags: &[(String, String)]) -> String {
    if tags.is_empty() {
        return String::new();
    }
    let pairs: Vec<(&str, String)> = tags.iter().map(|(k, v)| ("tag", format!("{k}:{v}"))).collect();
    format!("?{}", serde_urlencoded::to_string(pairs).unwrap_or_default())
}

/// Whether dataplane `dp` has every tag of `filters` on one of its inbounds
/// or its gateway, a value matching when it contains the filter's (as
/// Kuma's fuzzy tag match).
fn has_tags(dp: &Resource, filters: &[(String, String)]) -> bool {
    if filters.is_empty() {
        return true;
    }
    let networking = &dp.spec["networking"];
    let inbound = networking["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| &i["tags"]);
    let tag_sets: Vec<&Value> = inbound.chain([&networking["gateway"]["tags"]]).collect();
    filters.iter().all(|(k, v)| {
        tag_sets
            .iter()
            .any(|t| t[k.as_str()].as_str().is_some_and(|have| have.contains(v.as_str())))
    })
}

async fn list_global(
    State(s): St,
    Extension(caller): Caller,
    Path(plural): Path<String>,
    Query(p): Query<Page>,
    h: HeaderMap,
) -> ApiResult {
    let kind = global_type(&plural)?;
    let items = visible(&s, &caller, s.manager.list(&Filter::kind(kind)));
    paged(to_json(items), &p, &h, &format!("/{plural}"))
}

/// `GET /meshes/{mesh}/{policies}/{name}/_resources[/dataplanes]`: the
/// dataplanes the policy's top-level `targetRef` selects, among those the
/// caller may view (at a global: of every zone).
async fn policy_resources(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(p): Query<Page>,
    h: HeaderMap,
) -> ApiResult {
    let kind = mesh_scoped_type(&plural)?;
    if !kind.is_policy() {
        return Err(ApiError::bad_request(format!(
            "{kind} is not a policy: _resources lists the dataplanes a policy affects"
        )));
    }
    let key = ResourceKey::in_mesh(kind, &mesh, &name);
    s.access.authorize(&caller, view_access(kind), &target_of(&key))?;
    let policy = s
        .manager
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("{key} not found")))?;
    let dataplanes = visible(
        &s,
        &caller,
        s.manager.list(&Filter::in_mesh(ResourceType::Dataplane, &mesh)),
    );
    let mut items = Vec::new();
    for dp in dataplanes {
        let decoded = serde_json::from_value::<meridian_core::dataplane::Dataplane>(dp.spec.clone())
            .map_err(|e| e.to_string())
            .and_then(|d| meridian_core::policy::matching::affects(&policy.spec, &mesh, &d));
        match decoded {
            Ok(true) => {
                let mut item = json!({"type": "Dataplane", "mesh": mesh, "name": dp.key.name});
                if let (Value::Object(m), false) = (&mut item, dp.labels.is_empty()) {
                    m.insert("labels".into(), json!(dp.labels));
                }
                items.push(item);
            }
            Ok(false) => {}
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    format!("cannot tell whether {key} affects dataplane {}: {e}", dp.key.name),
                ))
            }
        }
    }
    paged(items, &p, &h, &format!("/meshes/{mesh}/{plural}/{name}/_resources"))
}

/// `_rules` is a dataplane's: anything else gets a 400 that says so.
async fn rules_of_non_dataplane(Path((_, plural, _)): Path<(String, String, String)>) -> ApiResult {
    Err(ApiError::bad_request(format!(
        "_rules is served for dataplanes (/meshes/{{mesh}}/dataplanes/{{name}}/_rules), not for {plural}"
    )))
}

// ---- single resources -----------------------------------------------------

fn get_one(s: &ApiState, caller: &Principal, key: ResourceKey) -> ApiResult {
    s.access.authorize(caller, view_access(key.kind), &target_of(&key))?;
    match s.manager.get(&key) {
        Some(r) => Ok(Json(r.to_api_json()).into_response()),
        None => Err(ApiError::not_found(format!("{key} not found"))),
    }
}

async fn get_mesh(State(s): St, Extension(caller): Caller, Path(name): Path<String>) -> ApiResult {
    get_one(&s, &caller, ResourceKey::global(ResourceType::Mesh, &name))
}

async fn get_in_mesh(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, plural, name)): Path<(String, String, String)>,
) -> ApiResult {
    let kind = mesh_scoped_type(&plural)?;
    get_one(&s, &caller, ResourceKey::in_mesh(kind, &mesh, &name))
}

async fn get_global(
    State(s): St,
    Extension(caller): Caller,
    Path((plural, name)): Path<(String, String)>,
) -> ApiResult {
    let kind = global_type(&plural)?;
    get_one(&s, &caller, ResourceKey::global(kind, &name))
}

/// On a federated zone, copies synced from another zone (its ingresses) are
/// read-only like everything else that arrives from the global.
fn check_not_synced(s: &ApiState, key: &ResourceKey) -> Result<(), ApiError> {
    let Mode::Zone { name } = &s.mode else { return Ok(()) };
    match s.manager.get(key).and_then(|r| r.labels.get("kuma.io/zone").cloned()) {
        Some(zone) if &zone != name => Err(ApiError::read_only(format!(
            "{key} is zone {zone:?}'s, synced through the global; it is read-only here"
        ))),
        _ => Ok(()),
    }
}

async fn delete_one(s: &ApiState, caller: &Principal, key: ResourceKey) -> ApiResult {
    let result = async {
        s.access.authorize(caller, Access::Delete, &target_of(&key))?;
        s.mode.check_writable(key.kind)?;
        check_not_synced(s, &key)?;
        check_no_dataplanes(s, &key)?;
        crate::mtls::checks::check_delete(&s.manager, &key)?;
        crate::access::rbac::check_delete(&s.manager, &key)?;
        s.manager.delete(&key).await?;
        Ok(Json(json!({})).into_response())
    }
    .await;
    audited(s, caller, Access::Delete.name(), target_of(&key), result).await
}

/// As Kuma: a mesh that still has dataplanes (registered here or, at the
/// global, in any zone) is not deleted; deleting it would take the zones'
/// dataplanes along.
fn check_no_dataplanes(s: &ApiState, key: &ResourceKey) -> Result<(), ApiError> {
    if key.kind != ResourceType::Mesh {
        return Ok(());
    }
    let filter = Filter {
        kind: Some(ResourceType::Dataplane),
        mesh: Some(key.name.clone()),
    };
    let attached = s.manager.list(&filter);
    match attached.first() {
        None => Ok(()),
        Some(first) => Err(ApiError::field(
            "mesh",
            format!(
                "unable to delete mesh, there are still some dataplanes attached ({}, e.g. {:?}): delete them or stop their proxies first",
                attached.len(),
                first.key.name
            ),
        )),
    }
}

async fn delete_mesh(State(s): St, Extension(caller): Caller, Path(name): Path<String>) -> ApiResult {
    delete_one(&s, &caller, ResourceKey::global(ResourceType::Mesh, &name)).await
}

async fn delete_in_mesh(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, plural, name)): Path<(String, String, String)>,
) -> ApiResult {
    let kind = mesh_scoped_type(&plural)?;
    if kind == ResourceType::DataplaneTokenKey {
        // Retiring a key removes its private half too; the issuer does both.
        let key = ResourceKey::in_mesh(kind, &mesh, &name);
        let result = async {
            s.access.authorize(&caller, Access::Delete, &target_of(&key))?;
            identity_api::retire_dataplane_key(&s, &mesh, &name).await
        }
        .await;
        return audited(&s, &caller, Access::Delete.name(), target_of(&key), result).await;
    }
    delete_one(&s, &caller, ResourceKey::in_mesh(kind, &mesh, &name)).await
}

async fn delete_global(
    State(s): St,
    Extension(caller): Caller,
    Path((plural, name)): Path<(String, String)>,
) -> ApiResult {
    let kind = global_type(&plural)?;
    delete_one(&s, &caller, ResourceKey::global(kind, &name)).await
}

async fn put_mesh(
    State(s): St,
    Extension(caller): Caller,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    put_one(&s, &caller, ResourceKey::global(ResourceType::Mesh, &name), &h, body).await
}

async fn put_in_mesh(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let kind = mesh_scoped_type(&plural)?;
    put_one(&s, &caller, ResourceKey::in_mesh(kind, &mesh, &name), &h, body).await
}

async fn put_global(
    State(s): St,
    Extension(caller): Caller,
    Path((plural, name)): Path<(String, String)>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let kind = global_type(&plural)?;
    put_one(&s, &caller, ResourceKey::global(kind, &name), &h, body).await
}

/// PUT: authorized as CREATE or UPDATE by whether the resource exists, and
/// audited either way.
async fn put_one(
    s: &ApiState,
    caller: &Principal,
    key: ResourceKey,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let action = if s.manager.get(&key).is_some() {
        Access::Update
    } else {
        Access::Create
    };
    let result = async {
        s.access.authorize(caller, action, &target_of(&key))?;
        put_authorized(s, key.clone(), headers, body).await
    }
    .await;
    audited(s, caller, action.name(), target_of(&key), result).await
}

/// PUT: one document, in JSON or YAML by Content-Type; identity fields
/// missing from the body are taken from the path, present ones must match.
async fn put_authorized(
    s: &ApiState,
    key: ResourceKey,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    s.mode.check_writable(key.kind)?;
    check_not_synced(s, &key)?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            format!("a resource must be at most {MAX_RESOURCE_BYTES} bytes"),
        )
    };
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    if bytes.len() > MAX_RESOURCE_BYTES {
        return Err(too_large());
    }
    let format = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) if ct.contains("yaml") => Format::Yaml,
        _ => Format::Json,
    };
    let doc = {
        let key = key.clone();
        decode_off_workers(move || {
            let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
            let mut values = parse_values(text, format)?;
            if values.len() != 1 {
                return Err(ApiError::bad_request(format!(
                    "the body must hold exactly one resource, got {}",
                    values.len()
                )));
            }
            let mut value = values.remove(0);
            if let Value::Object(obj) = &mut value {
                fill_identity(obj, &key);
            }
            decode_value(value).map_err(ApiError::invalid)
        })
        .await?
    };
    if doc.key.kind != key.kind {
        return Err(ApiError::field(
            "type",
            format!("{} in the body does not match {} in the path", doc.key.kind, key.kind),
        ));
    }
    if doc.key.name != key.name {
        return Err(ApiError::field(
            "name",
            format!(
                "{:?} in the body does not match {:?} in the path",
                doc.key.name, key.name
            ),
        ));
    }
    if doc.key.mesh != key.mesh {
        return Err(ApiError::field(
            "mesh",
            format!(
                "{:?} in the body does not match {:?} in the path",
                doc.key.mesh.unwrap_or_default(),
                key.mesh.unwrap_or_default()
            ),
        ));
    }
    let mut doc = doc;
    if let (ResourceType::Dataplane, Some(zone)) = (doc.key.kind, s.mode.zone()) {
        meridian_core::dataplane::tag_zone(&mut doc.spec, zone).map_err(ApiError::invalid)?;
    }
    if let Some(check) = s.spec_check {
        let violations = check(doc.key.kind, &doc.spec);
        if !violations.is_empty() {
            let mut causes = meridian_core::error::Causes::new();
            let root = meridian_core::error::FieldPath::new("spec");
            for (field, message) in violations {
                causes.add(&root.field(&field), message);
            }
            causes.into_result().map_err(ApiError::invalid)?;
        }
    }
    crate::mtls::checks::check_write(&s.manager, &doc)?;
    crate::access::rbac::check_write(&s.manager, &doc)?;
    let (stored, outcome) = s.manager.apply(doc).await?;
    let status = match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::Updated => StatusCode::OK,
    };
    // What is stored but has no effect is said with every write: in the
    // body (`warnings`, beside the resource) and as standard `Warning`
    // headers (RFC 9111 code 299, as Kubernetes does).
    let unapplied = meridian_core::unapplied::unapplied(stored.key.kind, &stored.spec);
    let mut body = stored.to_api_json();
    if !unapplied.is_empty() {
        if let Value::Object(obj) = &mut body {
            obj.insert("warnings".into(), json!(unapplied));
        }
    }
    let mut response = (status, Json(body)).into_response();
    for u in &unapplied {
        let text = format!("299 meridian \"{}: {}\"", u.field, u.message.replace('"', "'"));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(response)
}

/// Bodies decoded at once; more wait their turn. Decoding is CPU work that
/// must not run on the async workers that serve every other request (and
/// `/ready`), so it runs on the blocking pool, a few at a time.
const CONCURRENT_DECODES: usize = 4;

/// Runs `decode` (parsing and validating a body) on the blocking pool.
async fn decode_off_workers<T: Send + 'static>(
    decode: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_DECODES);
    let _permit = PERMITS
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Stopping", "the API is stopping"))?;
    tokio::task::spawn_blocking(decode).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            format!("decoding the body failed: {e}"),
        )
    })?
}

fn fill_identity(obj: &mut Map<String, Value>, key: &ResourceKey) {
    if obj.contains_key("kind") || obj.contains_key("apiVersion") {
        return;
    }
    obj.entry("type")
        .or_insert_with(|| Value::String(key.kind.name().into()));
    obj.entry("name").or_insert_with(|| Value::String(key.name.clone()));
    if let Some(mesh) = &key.mesh {
        obj.entry("mesh").or_insert_with(|| Value::String(mesh.clone()));
    }
}

// ---- inspection -------------------------------------------------------------

fn inspector(s: &ApiState) -> Result<Arc<dyn DataplaneInspector>, ApiError> {
    s.inspector
        .get()
        .cloned()
        .ok_or_else(|| ApiError::not_found("dataplane inspection is served by zone control planes"))
}

fn authorize_inspection(
    s: &ApiState,
    caller: &Principal,
    kind: ResourceType,
    mesh: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    s.access
        .authorize(caller, Access::ViewConfigDump, &Target::resource(kind, mesh, name))
}

/// `?include_eds=true` of the configuration dumps (Envoy's and Kuma's
/// name): endpoints are left out unless asked for.
#[derive(Debug, Default, serde::Deserialize)]
struct DumpQuery {
    #[serde(default)]
    include_eds: bool,
}

fn dump_response(dump: Result<Option<Value>, String>, missing: impl FnOnce() -> String) -> ApiResult {
    match dump {
        Ok(Some(v)) => Ok(Json(v).into_response()),
        Ok(None) => Err(ApiError::not_found(missing())),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            format!("the configuration dump cannot be written: {e}"),
        )),
    }
}

/// At the global: the inspection answered by the zone the dataplane is
/// from, over its KDS connection (`None` elsewhere: answer locally).
async fn forwarded(s: &ApiState, kind: &'static str, mesh: &str, name: &str, include_eds: bool) -> Option<ApiResult> {
    if !matches!(s.mode, Mode::Global) {
        return None;
    }
    let key = ResourceKey::in_mesh(ResourceType::Dataplane, mesh, name);
    let Some(dp) = s.manager.get(&key) else {
        return Some(Err(ApiError::not_found(format!("{key} not found"))));
    };
    let Some(zone) = dp.labels.get("kuma.io/zone").cloned() else {
        return Some(Err(ApiError::not_found(format!(
            "{key} belongs to no zone: only a zone's dataplanes can be inspected"
        ))));
    };
    let in_zone = dp
        .labels
        .get("kuma.io/display-name")
        .cloned()
        .or_else(|| name.strip_prefix(&format!("{zone}.")).map(str::to_string))
        .unwrap_or_else(|| name.to_string());
    let Some(forwarder) = s.forwarder.get().cloned() else {
        return Some(Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "this global cannot forward inspections to zones yet (starting)",
        )));
    };
    let inspection = Inspection {
        kind,
        mesh: mesh.to_string(),
        name: in_zone,
        include_eds,
    };
    Some(match forwarder.inspect(&zone, inspection).await {
        Ok((status, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, Json(body)).into_response())
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            format!("zone {zone:?}, which holds {key}, did not answer the inspection: {e}"),
        )),
    })
}

async fn dataplane_xds(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, name)): Path<(String, String)>,
    Query(q): Query<DumpQuery>,
) -> ApiResult {
    authorize_inspection(&s, &caller, ResourceType::Dataplane, Some(&mesh), &name)?;
    if let Some(answer) = forwarded(&s, "xds", &mesh, &name, q.include_eds).await {
        return answer;
    }
    let i = inspector(&s)?;
    dump_response(i.xds(&mesh, &name, q.include_eds), || {
        format!("dataplane {mesh}/{name} not found")
    })
}

async fn zone_ingress_xds(
    State(s): St,
    Extension(caller): Caller,
    Path(name): Path<String>,
    Query(q): Query<DumpQuery>,
) -> ApiResult {
    authorize_inspection(&s, &caller, ResourceType::ZoneIngress, None, &name)?;
    let i = inspector(&s)?;
    dump_response(i.ingress_xds(&name, q.include_eds), || {
        format!("zone ingress {name} of this zone not found")
    })
}

async fn dataplane_rules(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult {
    authorize_inspection(&s, &caller, ResourceType::Dataplane, Some(&mesh), &name)?;
    if let Some(answer) = forwarded(&s, "rules", &mesh, &name, false).await {
        return answer;
    }
    let i = inspector(&s)?;
    i.rules(&mesh, &name)
        .map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found(format!("dataplane {mesh}/{name} not found")))
}

async fn dataplane_policies(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult {
    authorize_inspection(&s, &caller, ResourceType::Dataplane, Some(&mesh), &name)?;
    if let Some(answer) = forwarded(&s, "policies", &mesh, &name, false).await {
        return answer;
    }
    let i = inspector(&s)?;
    i.policies(&mesh, &name)
        .map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found(format!("dataplane {mesh}/{name} not found")))
}

// ---- overviews and insights ----------------------------------------------

/// A subscription list is online when one entry has no disconnect time.
fn online(insight: Option<&Resource>) -> bool {
    insight
        .and_then(|r| r.spec.get("subscriptions"))
        .and_then(Value::as_array)
        .is_some_and(|subs| subs.iter().any(|s| s.get("disconnectTime").is_none_or(Value::is_null)))
}

/// Whether a dataplane is online: its proxy's subscription is open and,
/// for a dataplane synced from a zone, that zone is connected. A zone that
/// went away stops updating its dataplanes' insights, which would otherwise
/// show them online for ever.
fn dataplane_online(insight: Option<&Resource>, zone_insight: Option<&Resource>) -> bool {
    online(insight) && zone_insight.is_none_or(|z| online(Some(z)))
}

/// Whether `dp` is online, going by its stored insight (and its zone's).
pub(crate) fn dataplane_is_online(m: &crate::manager::Manager, dp: &Resource) -> bool {
    let mesh = dp.key.mesh.as_deref().unwrap_or_default();
    let insight = m.get(&ResourceKey::in_mesh(
        ResourceType::DataplaneInsight,
        mesh,
        &dp.key.name,
    ));
    dataplane_online(insight.as_ref(), zone_insight_of(m, dp).as_ref())
}

/// The ZoneInsight of the zone `dp` came from (none for this zone's own).
fn zone_insight_of(m: &crate::manager::Manager, dp: &Resource) -> Option<Resource> {
    let zone = dp.labels.get("kuma.io/zone")?;
    m.get(&ResourceKey::global(ResourceType::ZoneInsight, zone))
}

fn dataplane_overview(m: &crate::manager::Manager, dp: &Resource, insight: Option<&Resource>) -> Value {
    let online = dataplane_online(insight, zone_insight_of(m, dp).as_ref());
    json!({
        "type": "DataplaneOverview",
        "mesh": dp.key.mesh,
        "name": dp.key.name,
        "labels": dp.labels,
        "creationTime": format_time(&dp.creation_time),
        "modificationTime": format_time(&dp.modification_time),
        "online": online,
        "dataplane": dp.spec,
        "dataplaneInsight": insight.map(|i| i.spec.clone()).unwrap_or_else(|| json!({})),
    })
}

async fn list_dataplane_overviews(
    State(s): St,
    Extension(caller): Caller,
    Path(mesh): Path<String>,
    Query(p): Query<Page>,
    RawQuery(raw): RawQuery,
    h: HeaderMap,
) -> ApiResult {
    let tags = tag_filters(raw.as_deref())?;
    let insights: BTreeMap<String, Resource> = s
        .manager
        .list(&Filter::in_mesh(ResourceType::DataplaneInsight, &mesh))
        .into_iter()
        .map(|r| (r.key.name.clone(), r))
        .collect();
    let dataplanes = visible(
        &s,
        &caller,
        s.manager.list(&Filter::in_mesh(ResourceType::Dataplane, &mesh)),
    );
    let items = dataplanes
        .iter()
        .filter(|dp| has_tags(dp, &tags))
        .map(|dp| dataplane_overview(&s.manager, dp, insights.get(&dp.key.name)))
        .collect();
    paged(
        items,
        &p,
        &h,
        &format!("/meshes/{mesh}/dataplanes+insights{}", tag_query(&tags)),
    )
}

async fn get_dataplane_overview(
    State(s): St,
    Extension(caller): Caller,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult {
    let key = ResourceKey::in_mesh(ResourceType::Dataplane, &mesh, &name);
    s.access.authorize(&caller, Access::View, &target_of(&key))?;
    let dp = s
        .manager
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("{key} not found")))?;
    let insight = s
        .manager
        .get(&ResourceKey::in_mesh(ResourceType::DataplaneInsight, &mesh, &name));
    Ok(Json(dataplane_overview(&s.manager, &dp, insight.as_ref())).into_response())
}

fn zone_overview(zone: &Resource, insight: Option<&Resource>) -> Value {
    // The newest subscription says which zone control plane connected last.
    let last = insight
        .and_then(|i| i.spec.get("subscriptions"))
        .and_then(Value::as_array)
        .and_then(|subs| {
            subs.iter()
                .max_by_key(|s| s["connectTime"].as_str().unwrap_or_default().to_string())
        });
    let field = |name: &str| last.and_then(|s| s.get(name)).cloned().unwrap_or(Value::Null);
    json!({
        "type": "ZoneOverview",
        "name": zone.key.name,
        "creationTime": format_time(&zone.creation_time),
        "modificationTime": format_time(&zone.modification_time),
        "online": online(insight),
        "version": field("zoneVersion"),
        "address": field("zoneAddress"),
        "lastConnectTime": field("connectTime"),
        "zone": zone.spec,
        "zoneInsight": insight.map(|i| i.spec.clone()).unwrap_or_else(|| json!({"subscriptions": []})),
    })
}

async fn list_zone_overviews(
    State(s): St,
    Extension(caller): Caller,
    Query(p): Query<Page>,
    h: HeaderMap,
) -> ApiResult {
    let zones = visible(&s, &caller, s.manager.list(&Filter::kind(ResourceType::Zone)));
    let items = zones
        .iter()
        .map(|z| {
            let insight = s
                .manager
                .get(&ResourceKey::global(ResourceType::ZoneInsight, &z.key.name));
            zone_overview(z, insight.as_ref())
        })
        .collect();
    paged(items, &p, &h, "/zones+insights")
}

async fn get_zone_overview(State(s): St, Extension(caller): Caller, Path(name): Path<String>) -> ApiResult {
    let key = ResourceKey::global(ResourceType::Zone, &name);
    s.access.authorize(&caller, Access::View, &target_of(&key))?;
    let zone = s
        .manager
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("{key} not found")))?;
    let insight = s.manager.get(&ResourceKey::global(ResourceType::ZoneInsight, &name));
    Ok(Json(zone_overview(&zone, insight.as_ref())).into_response())
}

/// Counts of what the caller may read.
async fn global_insight(State(s): St, Extension(caller): Caller) -> Json<Value> {
    let m = &s.manager;
    let list = |f: &Filter| visible(&s, &caller, m.list(f));
    let zones = list(&Filter::kind(ResourceType::Zone));
    let zones_online = zones
        .iter()
        .filter(|z| {
            online(
                m.get(&ResourceKey::global(ResourceType::ZoneInsight, &z.key.name))
                    .as_ref(),
            )
        })
        .count();
    let dataplanes = list(&Filter::kind(ResourceType::Dataplane));
    let dp_online = dataplanes.iter().filter(|dp| dataplane_is_online(m, dp)).count();
    let mut policies = Map::new();
    let mut policy_total = 0;
    for kind in ResourceType::policies() {
        let n = list(&Filter::kind(kind)).len();
        policy_total += n;
        policies.insert(kind.name().to_string(), json!({"total": n}));
    }
    Json(json!({
        "type": "GlobalInsight",
        "createdAt": format_time(&chrono::Utc::now()),
        "meshes": {"total": list(&Filter::kind(ResourceType::Mesh)).len()},
        "zones": {"online": zones_online, "total": zones.len()},
        "zoneIngresses": {"total": list(&Filter::kind(ResourceType::ZoneIngress)).len()},
        "dataplanes": {"online": dp_online, "total": dataplanes.len()},
        "policies": {"total": policy_total, "byType": policies},
    }))
}

// ---- zone tokens and joining (global only) --------------------------------

/// Validity of a zone token when the request names none (one year).
const DEFAULT_TOKEN_VALIDITY: &str = "8760h";

fn global_services(s: &ApiState) -> Result<&GlobalServices, ApiError> {
    s.global.as_deref().ok_or_else(|| {
        ApiError::not_found(format!(
            "zone tokens and KDS information are served by the global control plane; this is a {} control plane",
            s.mode.name()
        ))
    })
}

/// Parses a small JSON object body, naming the field that is wrong.
pub(crate) fn json_object(
    body: Result<Bytes, BytesRejection>,
    fields: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "Could not parse the body", e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Could not parse the body",
            format!("the body must be a JSON object with {}", fields.join(", ")),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ApiError::field(
            unknown,
            format!("unknown field; expected {}", fields.join(", ")),
        ));
    }
    Ok(obj)
}

pub(crate) fn string_field<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::field(field, format!("must be a string, got {other}"))),
    }
}

/// `POST /tokens/zone {"zone", "validFor"}` → the token, as text.
async fn issue_zone_token(State(s): St, Extension(caller): Caller, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let mut zone_name = None;
    let result = async {
        s.access
            .authorize(&caller, Access::GenerateZoneToken, &Target::token(None))?;
        let global = global_services(&s)?;
        let obj = json_object(body, &["zone", "validFor"])?;
        let zone = string_field(&obj, "zone")?.ok_or_else(|| ApiError::field("zone", "must be set"))?;
        zone_name = Some(zone.to_string());
        meridian_core::names::check_rfc1035_label(zone).map_err(|e| ApiError::field("zone", e))?;
        let valid_for = string_field(&obj, "validFor")?.unwrap_or(DEFAULT_TOKEN_VALIDITY);
        let valid_for =
            meridian_core::duration::Duration::parse(valid_for).map_err(|e| ApiError::field("validFor", e))?;
        let token = global.tokens.issue(zone, valid_for.as_std()).await?;
        tracing::info!(%zone, valid_for = %valid_for, "issued a zone token");
        Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response())
    }
    .await;
    let target = Target {
        kind: Some(ResourceType::Zone),
        mesh: None,
        name: zone_name.as_deref(),
    };
    audited(&s, &caller, "GENERATE_ZONE_TOKEN", target, result).await
}

/// `POST /tokens/zone/revoke {"id"}` → `{}`.
async fn revoke_zone_token(State(s): St, Extension(caller): Caller, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let mut token_id = None;
    let result = async {
        s.access
            .authorize(&caller, Access::GenerateZoneToken, &Target::token(None))?;
        let global = global_services(&s)?;
        let obj = json_object(body, &["id"])?;
        let id = string_field(&obj, "id")?.ok_or_else(|| ApiError::field("id", "must be set"))?;
        token_id = Some(id.to_string());
        tokens::check_token_id(id).map_err(|e| ApiError::field("id", e))?;
        global.tokens.revoke(id).await?;
        tracing::info!(%id, "revoked a zone token");
        Ok(Json(json!({})).into_response())
    }
    .await;
    audited(
        &s,
        &caller,
        "REVOKE_ZONE_TOKEN",
        Target::named_token(None, token_id.as_deref()),
        result,
    )
    .await
}

/// `GET /kds-info` → where zones reach KDS and the CA they verify it with.
async fn kds_info(State(s): St, Extension(caller): Caller) -> ApiResult {
    s.access
        .authorize(&caller, Access::GenerateZoneToken, &Target::token(None))?;
    let global = global_services(&s)?;
    Ok(Json(json!({"kdsAddress": global.kds_address, "caCert": global.ca_pem})).into_response())
}

// ---- user tokens and the audit log ----------------------------------------

/// Validity of a user token when the request names none.
const DEFAULT_USER_TOKEN_VALIDITY: &str = "24h";

/// `POST /tokens/user {"name", "groups"?, "validFor"?}` → the token, as
/// text; the global and standalone zones. Names and groups of
/// `mesh-system:` are given by admins only.
async fn issue_user_token(State(s): St, Extension(caller): Caller, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let mut user = None;
    let result = async {
        s.access
            .authorize(&caller, Access::GenerateUserToken, &Target::token(None))?;
        if matches!(s.mode, Mode::Zone { .. }) {
            return Err(ApiError::read_only(
                "user tokens are issued by the global control plane: ask it (meridianctl generate user-token against the global's API)",
            ));
        }
        let obj = json_object(body, &["name", "groups", "validFor"])?;
        let name = string_field(&obj, "name")?.ok_or_else(|| ApiError::field("name", "must be set"))?;
        user = Some(name.to_string());
        let groups = match obj.get("groups") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| g.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::field("groups", "must be a list of strings"))?,
            Some(_) => return Err(ApiError::field("groups", "must be a list of strings")),
        };
        let reserved = meridian_core::access::RESERVED_PREFIX;
        if !caller.is_admin() {
            if name.starts_with(reserved) {
                return Err(ApiError::field("name", format!("names starting with {reserved:?} are given by admins only")));
            }
            if groups.iter().any(|g| g.starts_with(reserved)) {
                return Err(ApiError::field("groups", format!("groups starting with {reserved:?} are given by admins only")));
            }
        }
        let valid_for = string_field(&obj, "validFor")?.unwrap_or(DEFAULT_USER_TOKEN_VALIDITY);
        let valid_for = meridian_core::duration::Duration::parse(valid_for).map_err(|e| ApiError::field("validFor", e))?;
        let token = s
            .access
            .users
            .issue(&crate::access::user_tokens::UserTokenRequest {
                name: name.to_string(),
                groups: groups.clone(),
                valid_for: valid_for.as_std(),
            })
            .await?;
        tracing::info!(user = %name, ?groups, valid_for = %valid_for, "issued a user token");
        Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response())
    }
    .await;
    audited(
        &s,
        &caller,
        "GENERATE_USER_TOKEN",
        Target::named_token(None, user.as_deref()),
        result,
    )
    .await
}

/// `POST /tokens/user/revoke {"id"}` → `{}`.
async fn revoke_user_token(State(s): St, Extension(caller): Caller, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let mut token_id = None;
    let result = async {
        s.access
            .authorize(&caller, Access::GenerateUserToken, &Target::token(None))?;
        if matches!(s.mode, Mode::Zone { .. }) {
            return Err(ApiError::read_only(
                "user tokens are revoked at the global control plane; the revocation reaches zones over KDS",
            ));
        }
        let obj = json_object(body, &["id"])?;
        let id = string_field(&obj, "id")?.ok_or_else(|| ApiError::field("id", "must be set"))?;
        token_id = Some(id.to_string());
        s.access.users.revoke(id).await?;
        tracing::info!(%id, "revoked a user token");
        Ok(Json(json!({})).into_response())
    }
    .await;
    audited(
        &s,
        &caller,
        "REVOKE_USER_TOKEN",
        Target::named_token(None, token_id.as_deref()),
        result,
    )
    .await
}

#[derive(Deserialize)]
struct AuditParams {
    offset: Option<String>,
    size: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    mesh: Option<String>,
    user: Option<String>,
    action: Option<String>,
    result: Option<String>,
    since: Option<String>,
}

/// `GET /audit?type=&mesh=&user=&action=&result=&since=&offset=&size=`:
/// the entries the caller may see (`VIEW_AUDIT` on their type and mesh),
/// oldest first.
async fn audit_log(State(s): St, Extension(caller): Caller, Query(q): Query<AuditParams>, h: HeaderMap) -> ApiResult {
    use crate::access::audit::Query as AuditQuery;
    let result = match q.result.as_deref() {
        None | Some("") => None,
        Some("succeeded") => Some(AuditOutcome::Succeeded),
        Some("denied") => Some(AuditOutcome::Denied),
        Some("failed") => Some(AuditOutcome::Failed),
        Some(other) => {
            return Err(ApiError::field(
                "result",
                format!("{other:?} is not one of succeeded, denied, failed"),
            ))
        }
    };
    let since = q
        .since
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| ApiError::field("since", format!("must be an RFC 3339 time: {e}")))
        })
        .transpose()?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let query = AuditQuery {
        kind: nonempty(q.kind),
        mesh: nonempty(q.mesh),
        user: nonempty(q.user),
        action: nonempty(q.action),
        result,
        since,
    };
    let page = Page {
        offset: q.offset,
        size: q.size,
    };
    let (offset, size) = page_bounds(&page)?;
    s.access.audit.flush().await;
    let rbac = s.access.rbac.current();
    let (total, entries) = s
        .access
        .audit
        .query(
            &query,
            |e| {
                let kind = e.kind.as_deref().and_then(|k| k.parse::<ResourceType>().ok());
                let target = Target {
                    kind,
                    mesh: e.mesh.as_deref(),
                    name: e.name.as_deref(),
                };
                rbac.allows(&caller, Access::ViewAudit, &target)
            },
            offset,
            size,
        )
        .await?;
    let items: Vec<Value> = entries
        .into_iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect();
    let end = offset.saturating_add(items.len());
    let next = if end < total {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
        let mut url = format!("http://{host}/audit?offset={end}&size={size}");
        for (k, v) in [
            ("type", &query.kind),
            ("mesh", &query.mesh),
            ("user", &query.user),
            ("action", &query.action),
        ] {
            if let Some(v) = v {
                url.push_str(&format!("&{k}={}", encode_query(v)));
            }
        }
        if let Some(r) = query.result {
            url.push_str(&format!("&result={}", r.name()));
        }
        if let Some(t) = &q.since {
            url.push_str(&format!("&since={}", encode_query(t)));
        }
        Value::String(url)
    } else {
        Value::Null
    };
    Ok(Json(json!({"total": total, "items": items, "next": next})).into_response())
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_subscription(kind: ResourceType, open: bool) -> Resource {
        let sub = if open {
            json!({"id": "1"})
        } else {
            json!({"id": "1", "disconnectTime": "2026-12-07T00:00:00Z"})
        };
        Resource::new(
            ResourceKey::global(kind, "x"),
            Default::default(),
            json!({"subscriptions": [sub]}),
            chrono::Utc::now(),
        )
    }

    #[test]
    fn a_dataplane_of_a_zone_that_went_away_is_offline() {
        let proxy_up = with_subscription(ResourceType::DataplaneInsight, true);
        let zone_up = with_subscription(ResourceType::ZoneInsight, true);
        let zone_gone = with_subscription(ResourceType::ZoneInsight, false);
        assert!(dataplane_online(Some(&proxy_up), Some(&zone_up)));
        assert!(!dataplane_online(Some(&proxy_up), Some(&zone_gone)));
        // This zone's own dataplanes: no zone insight to consult.
        assert!(dataplane_online(Some(&proxy_up), None));
        assert!(!dataplane_online(None, Some(&zone_up)));
    }
}
