//! The zone's ingresses and what they advertise: every ZoneIngress this zone
//! owns carries `availableServices`, computed here from the zone's
//! dataplanes (one entry per mesh and inbound tag set, with its instance
//! count), so that other zones can route to this one through the global.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_core::dataplane::{AvailableService, Dataplane, ZoneIngress};
use meridian_core::decode::MAX_RESOURCE_BYTES;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_server::kds::labels;
use meridian_server::manager::Manager;
use meridian_store::{Event, Filter};
use serde_json::json;
use tokio::sync::{broadcast, watch};

/// The name of the ingress a zone creates from `--ingress-address`.
pub const INGRESS_NAME: &str = "ingress";

/// A refresh reads every dataplane of the zone. The next one starts no
/// sooner than this many times as long as the last one took after it began:
/// a burst of registrations is coalesced and keeps the task busy a fifth of
/// the time at most, while a change after a quiet moment is advertised at once.
const REFRESH_SPACING: u32 = 5;
/// However long a refresh took, changes wait no longer than this.
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Computes the services the zone's dataplanes offer.
pub fn available_services(dataplanes: &[Resource]) -> Vec<AvailableService> {
    let mut counts: BTreeMap<(String, BTreeMap<String, String>), u32> = BTreeMap::new();
    for r in dataplanes {
        let (Some(mesh), Ok(dp)) = (r.key.mesh.as_ref(), serde_json::from_value::<Dataplane>(r.spec.clone())) else {
            continue;
        };
        for inbound in &dp.networking.inbound {
            *counts.entry((mesh.clone(), inbound.tags.clone())).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|((mesh, tags), instances)| AvailableService { tags, instances, mesh })
        .collect()
}

/// Keeps the zone's own ingresses' `availableServices` current, and creates
/// the ingress named by `--ingress-address` (HOST:PORT) if given.
pub async fn run(
    manager: Arc<Manager>,
    zone: String,
    address: Option<(String, u16)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = manager.cache().ready().wait_for(|r| *r).await;
    if let Some((host, port)) = address {
        let key = ResourceKey::global(ResourceType::ZoneIngress, INGRESS_NAME);
        if manager.get(&key).is_none() {
            let spec = json!({"networking": {"address": host, "port": port, "advertisedAddress": host, "advertisedPort": port}});
            let r = Resource::new(key, Default::default(), spec, chrono::Utc::now());
            if let Err(e) = manager.upsert_synced(r).await {
                tracing::warn!(error = %e, "creating the zone ingress failed");
            }
        }
    }
    let mut events = manager.cache().subscribe();
    loop {
        let started = tokio::time::Instant::now();
        let services = refresh(&manager, &zone).await;
        let spacing = started
            .elapsed()
            .saturating_mul(REFRESH_SPACING)
            .min(MAX_REFRESH_INTERVAL);
        // Wait for a relevant change (the ingress writes of the refresh
        // itself and other zones' ingresses are none).
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(Event::Put(r)) if r.key.kind == ResourceType::Dataplane => break,
                    Ok(Event::Put(r)) if r.key.kind == ResourceType::ZoneIngress && !up_to_date(&r, &zone, &services) => break,
                    Ok(Event::Delete { key, .. }) if matches!(key.kind, ResourceType::Dataplane | ResourceType::ZoneIngress | ResourceType::Mesh) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        tokio::time::sleep_until(started + spacing).await;
    }
}

/// Whether a stored ingress needs no refresh: another zone's, or one of this
/// zone's that already advertises `services`.
fn up_to_date(r: &Resource, zone: &str, services: &[AvailableService]) -> bool {
    if r.labels.get(labels::ZONE).is_some_and(|z| z != zone) {
        return true;
    }
    serde_json::from_value::<ZoneIngress>(r.spec.clone()).is_ok_and(|spec| spec.available_services == services)
}

/// Brings this zone's ingresses up to date; returns what they advertise.
async fn refresh(manager: &Manager, zone: &str) -> Vec<AvailableService> {
    let services = available_services(&manager.list(&Filter::kind(ResourceType::Dataplane)));
    for ingress in manager.list(&Filter::kind(ResourceType::ZoneIngress)) {
        if ingress.labels.get(labels::ZONE).is_some_and(|z| z != zone) {
            continue;
        }
        let Ok(mut spec) = serde_json::from_value::<ZoneIngress>(ingress.spec.clone()) else {
            continue;
        };
        if spec.available_services == services {
            continue;
        }
        spec.available_services = services.clone();
        let Ok(value) = serde_json::to_value(&spec) else {
            continue;
        };
        // Over the resource limit the global would refuse it (and etcd might):
        // keep advertising the last list that fitted, and say why.
        let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_RESOURCE_BYTES {
            tracing::warn!(
                ingress = %ingress.key.name,
                services = services.len(),
                bytes = size,
                limit = MAX_RESOURCE_BYTES,
                "the zone's services do not fit in one ZoneIngress; it keeps advertising the previous list"
            );
            continue;
        }
        let mut next = ingress.clone();
        next.spec = value;
        next.modification_time = chrono::Utc::now();
        if let Err(e) = manager.upsert_synced(next).await {
            tracing::warn!(ingress = %ingress.key.name, error = %e, "updating available services failed");
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(mesh: &str, name: &str, service: &str, version: &str) -> Resource {
        Resource::new(
            ResourceKey::in_mesh(ResourceType::Dataplane, mesh, name),
            Default::default(),
            json!({"networking": {"address": "127.0.0.1", "inbound": [
                {"port": 8080, "tags": {"kuma.io/service": service, "version": version}}]}}),
            chrono::Utc::now(),
        )
    }

    #[test]
    fn only_an_own_ingress_advertising_something_else_needs_a_refresh() {
        let services = available_services(&[dp("default", "a", "backend", "v1")]);
        let ingress = |labels: &[(&str, &str)], advertised: &[AvailableService]| {
            Resource::new(
                ResourceKey::global(ResourceType::ZoneIngress, "ingress"),
                labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                json!({"networking": {"address": "10.0.0.1", "port": 10001}, "availableServices": advertised}),
                chrono::Utc::now(),
            )
        };
        assert!(up_to_date(&ingress(&[], &services), "zone-1", &services));
        assert!(!up_to_date(&ingress(&[], &[]), "zone-1", &services));
        assert!(!up_to_date(
            &ingress(&[(labels::ZONE, "zone-1")], &[]),
            "zone-1",
            &services
        ));
        assert!(up_to_date(
            &ingress(&[(labels::ZONE, "zone-2")], &[]),
            "zone-1",
            &services
        ));
    }

    #[test]
    fn counts_instances_per_mesh_and_tags() {
        let s = available_services(&[
            dp("default", "a", "backend", "v1"),
            dp("default", "b", "backend", "v1"),
            dp("default", "c", "backend", "v2"),
            dp("other", "d", "backend", "v1"),
        ]);
        let got: Vec<(String, String, u32)> = s
            .iter()
            .map(|a| (a.mesh.clone(), a.tags["version"].clone(), a.instances))
            .collect();
        assert_eq!(
            got,
            [
                ("default".into(), "v1".into(), 2),
                ("default".into(), "v2".into(), 1),
                ("other".into(), "v1".into(), 1)
            ]
        );
    }
}
