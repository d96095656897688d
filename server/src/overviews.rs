//! Overviews computed from the cache at request time, at the paths Kuma's
//! API uses: `/mesh-insights[/{mesh}]` (dataplanes, services and policies of
//! each mesh), `/meshes/{mesh}/service-insights[/{service}]` (a service's
//! dataplanes, online or not, and the zones they are in) and
//! `/zoneingresses+insights[/{name}]` (each ingress, its zone, address and
//! services, and whether its proxy is connected where that is known).
//! Every list holds only what the caller may view.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Extension, Path, Query};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use meridian_core::resource::format_time;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_store::Filter;
use serde_json::{json, Map, Value};

use crate::api::{dataplane_is_online, paged, target_of, view_access, visible, ApiResult, ApiState, Caller, Page, St};
use crate::error::ApiError;

/// The `kuma.io/service` values a dataplane serves: its inbounds' and its
/// gateway's.
fn services_of(dp: &Resource) -> BTreeSet<String> {
    let networking = &dp.spec["networking"];
    let mut out: BTreeSet<String> = networking["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["tags"]["kuma.io/service"].as_str())
        .map(str::to_string)
        .collect();
    if let Some(s) = networking["gateway"]["tags"]["kuma.io/service"].as_str() {
        out.insert(s.to_string());
    }
    out
}

/// Whether each of `dataplanes` is online.
fn online_of(s: &ApiState, dataplanes: &[Resource]) -> Vec<bool> {
    dataplanes
        .iter()
        .map(|dp| dataplane_is_online(&s.manager, dp))
        .collect()
}

fn status(online: usize, total: usize) -> &'static str {
    match (online, total) {
        (_, 0) => "offline",
        (o, t) if o == t => "online",
        (0, _) => "offline",
        _ => "partially_degraded",
    }
}

fn mesh_insight_of(s: &ApiState, caller: &meridian_core::access::Principal, mesh: &Resource) -> Value {
    let name = &mesh.key.name;
    let dataplanes = visible(
        s,
        caller,
        s.manager.list(&Filter::in_mesh(ResourceType::Dataplane, name)),
    );
    let up = online_of(s, &dataplanes);
    let online_count = up.iter().filter(|o| **o).count();
    let services: BTreeSet<String> = dataplanes.iter().flat_map(services_of).collect();
    let mut policies = Map::new();
    let mut total = 0;
    for kind in ResourceType::policies() {
        let n = visible(s, caller, s.manager.list(&Filter::in_mesh(kind, name))).len();
        if n > 0 {
            policies.insert(kind.name().to_string(), json!({"total": n}));
        }
        total += n;
    }
    json!({
        "type": "MeshInsight",
        "name": name,
        "creationTime": format_time(&mesh.creation_time),
        "modificationTime": format_time(&mesh.modification_time),
        "dataplanes": {
            "total": dataplanes.len(),
            "online": online_count,
            "offline": dataplanes.len() - online_count,
        },
        "services": {"total": services.len()},
        "policies": policies,
        "policiesTotal": total,
        "mTLS": {"enabledBackend": mesh.spec.pointer("/mtls/enabledBackend")},
    })
}

pub(crate) async fn mesh_insights(
    axum::extract::State(s): St,
    Extension(caller): Caller,
    Query(p): Query<Page>,
    h: HeaderMap,
) -> ApiResult {
    let meshes = visible(&s, &caller, s.manager.list(&Filter::kind(ResourceType::Mesh)));
    let items = meshes.iter().map(|m| mesh_insight_of(&s, &caller, m)).collect();
    paged(items, &p, &h, "/mesh-insights")
}

pub(crate) async fn mesh_insight(
    axum::extract::State(s): St,
    Extension(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult {
    let key = ResourceKey::global(ResourceType::Mesh, &name);
    s.access.authorize(&caller, view_access(key.kind), &target_of(&key))?;
    let mesh = s
        .manager
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("{key} not found")))?;
    Ok(Json(mesh_insight_of(&s, &caller, &mesh)).into_response())
}

/// Every service of `mesh` with its dataplanes' counts and zones.
fn service_insights_of(s: &ApiState, caller: &meridian_core::access::Principal, mesh: &str) -> Vec<Value> {
    #[derive(Default)]
    struct Counts {
        total: usize,
        online: usize,
        zones: BTreeSet<String>,
    }
    let dataplanes = visible(
        s,
        caller,
        s.manager.list(&Filter::in_mesh(ResourceType::Dataplane, mesh)),
    );
    let up = online_of(s, &dataplanes);
    let local = s.mode.zone().map(str::to_string);
    let mut by_service: BTreeMap<String, Counts> = BTreeMap::new();
    for (dp, online) in dataplanes.iter().zip(up) {
        let zone = dp.labels.get("kuma.io/zone").cloned().or_else(|| local.clone());
        for service in services_of(dp) {
            let c = by_service.entry(service).or_default();
            c.total += 1;
            c.online += usize::from(online);
            c.zones.extend(zone.clone());
        }
    }
    by_service
        .into_iter()
        .map(|(name, c)| {
            json!({
                "type": "ServiceInsight",
                "mesh": mesh,
                "name": name,
                "status": status(c.online, c.total),
                "dataplanes": {"total": c.total, "online": c.online, "offline": c.total - c.online},
                "zones": c.zones,
            })
        })
        .collect()
}

pub(crate) async fn service_insights(
    axum::extract::State(s): St,
    Extension(caller): Caller,
    Path(mesh): Path<String>,
    Query(p): Query<Page>,
    h: HeaderMap,
) -> ApiResult {
    paged(
        service_insights_of(&s, &caller, &mesh),
        &p,
        &h,
        &format!("/meshes/{mesh}/service-insights"),
    )
}

pub(crate) async fn service_insight(
    axum::extract::State(s): St,
    Extension(caller): Caller,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult {
    service_insights_of(&s, &caller, &mesh)
        .into_iter()
        .find(|i| i["name"] == name.as_str())
        .map(|i| Json(i).into_response())
        .ok_or_else(|| ApiError::not_found(format!("service {name:?} has no dataplane in mesh {mesh:?}")))
}

fn ingress_overview(s: &ApiState, ingress: &Resource) -> Value {
    let spec = &ingress.spec;
    let zone = ingress
        .labels
        .get("kuma.io/zone")
        .cloned()
        .or_else(|| spec["zone"].as_str().map(str::to_string))
        .or_else(|| s.mode.zone().map(str::to_string));
    // Whether its proxy is connected is known where it connects: at its own
    // zone. Elsewhere it is not known (null), rather than guessed.
    let own = zone.is_some() && zone.as_deref() == s.mode.zone();
    let connected = own
        .then(|| s.inspector.get().and_then(|i| i.ingress_connected(&ingress.key.name)))
        .flatten();
    let networking = &spec["networking"];
    json!({
        "type": "ZoneIngressOverview",
        "name": ingress.key.name,
        "labels": ingress.labels,
        "creationTime": format_time(&ingress.creation_time),
        "modificationTime": format_time(&ingress.modification_time),
        "zone": zone,
        "online": connected,
        "address": networking["advertisedAddress"].as_str().or(networking["address"].as_str()),
        "port": networking["advertisedPort"].as_u64().or(networking["port"].as_u64()),
        "availableServices": spec["availableServices"].as_array().map_or(0, Vec::len),
        "zoneIngress": spec,
    })
}

pub(crate) async fn zone_ingress_overviews(
    axum::extract::State(s): St,
    Extension(caller): Caller,
    Query(p): Query<Page>,
    h: HeaderMap,
) -> ApiResult {
    let ingresses = visible(&s, &caller, s.manager.list(&Filter::kind(ResourceType::ZoneIngress)));
    let items = ingresses.iter().map(|i| ingress_overview(&s, i)).collect();
    paged(items, &p, &h, "/zoneingresses+insights")
}

pub(crate) async fn zone_ingress_overview(
    axum::extract::State(s): St,
    Extension(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult {
    let key = ResourceKey::global(ResourceType::ZoneIngress, &name);
    s.access.authorize(&caller, view_access(key.kind), &target_of(&key))?;
    let ingress = s
        .manager
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("{key} not found")))?;
    Ok(Json(ingress_overview(&s, &ingress)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_degraded_when_some_of_its_dataplanes_are_offline() {
        assert_eq!(status(2, 2), "online");
        assert_eq!(status(0, 2), "offline");
        assert_eq!(status(1, 2), "partially_degraded");
        assert_eq!(status(0, 0), "offline");
    }

    #[test]
    fn services_come_from_inbounds_and_the_gateway() {
        let dp = Resource::new(
            ResourceKey::in_mesh(ResourceType::Dataplane, "m", "d"),
            Default::default(),
            json!({"networking": {"address": "1.1.1.1",
                "inbound": [{"port": 1, "tags": {"kuma.io/service": "a"}},
                            {"port": 2, "tags": {"kuma.io/service": "b"}}],
                "gateway": {"tags": {"kuma.io/service": "gw"}}}}),
            chrono::Utc::now(),
        );
        let got: Vec<String> = services_of(&dp).into_iter().collect();
        assert_eq!(got, ["a", "b", "gw"]);
    }
}
