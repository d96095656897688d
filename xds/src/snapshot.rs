//! What generation reads: one mesh as a zone sees it — its spec, policies,
//! the zone's dataplanes and the other zones' ingresses — and the proxy a
//! configuration is for. Built from the zone's cache; plain data.

use std::collections::{BTreeMap, BTreeSet};

use meridian_core::dataplane::{Dataplane, ZoneIngress, SERVICE_TAG};
use meridian_core::mesh::Mesh;

/// The well-known tag carrying a dataplane's zone.
pub const ZONE_TAG: &str = "kuma.io/zone";

/// One dataplane of the mesh in this zone.
#[derive(Clone, Debug, PartialEq)]
pub struct DataplaneEntry {
    pub name: String,
    pub spec: Dataplane,
}

/// Another zone's ingress and what it advertises.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteIngress {
    pub zone: String,
    pub spec: ZoneIngress,
}

/// A mesh as one zone sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshSnapshot {
    /// The zone generating config.
    pub zone: String,
    pub mesh: String,
    pub spec: Mesh,
    pub dataplanes: Vec<DataplaneEntry>,
    pub remote_ingresses: Vec<RemoteIngress>,
    /// The mesh's policies: type name → (policy name, validated spec).
    pub policies: BTreeMap<String, Vec<(String, serde_json::Value)>>,
}

/// How a proxy consumes its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// An Envoy sidecar next to an application.
    Sidecar,
    /// A gRPC client or server speaking xDS itself (`xds:///service`).
    Proxyless,
    /// A zone ingress.
    Ingress,
}

/// The proxy a configuration is generated for.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyContext {
    pub mesh: String,
    pub name: String,
    pub kind: ProxyKind,
    pub dataplane: Dataplane,
}

/// One endpoint of a service, local or through another zone's ingress.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceEndpoint {
    pub address: String,
    pub port: u32,
    /// The zone the endpoint is in (this zone for local ones).
    pub zone: String,
    pub tags: BTreeMap<String, String>,
    /// Load-balancing weight (instances behind a remote ingress).
    pub weight: u32,
}

impl MeshSnapshot {
    /// Every service of the mesh: local inbounds and remote advertisements.
    pub fn services(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for dp in &self.dataplanes {
            for inbound in &dp.spec.networking.inbound {
                if let Some(s) = inbound.tags.get(SERVICE_TAG) {
                    out.insert(s.clone());
                }
            }
        }
        for ingress in &self.remote_ingresses {
            for svc in ingress.spec.available_services.iter().filter(|s| s.mesh == self.mesh) {
                if let Some(s) = svc.tags.get(SERVICE_TAG) {
                    out.insert(s.clone());
                }
            }
        }
        out
    }

    /// The ports a service is known to listen on locally (for `svc:port`
    /// listener names of proxyless clients).
    pub fn service_ports(&self, service: &str) -> BTreeSet<u32> {
        self.dataplanes
            .iter()
            .flat_map(|dp| dp.spec.networking.inbound.iter())
            .filter(|i| i.tags.get(SERVICE_TAG).map(String::as_str) == Some(service))
            .map(|i| i.service_port.unwrap_or(i.port))
            .collect()
    }

    /// Endpoints of `service` whose tags include `subset`: local inbounds
    /// (zone = this zone) and other zones' ingresses that advertise it.
    pub fn endpoints(&self, service: &str, subset: &BTreeMap<String, String>) -> Vec<ServiceEndpoint> {
        let selected = |tags: &BTreeMap<String, String>| {
            tags.get(SERVICE_TAG).map(String::as_str) == Some(service)
                && subset.iter().all(|(k, v)| tags.get(k) == Some(v))
        };
        let mut out = Vec::new();
        for dp in &self.dataplanes {
            let n = &dp.spec.networking;
            for inbound in n.inbound.iter().filter(|i| selected(&i.tags)) {
                let address = inbound
                    .address
                    .clone()
                    .or_else(|| n.advertised_address.clone())
                    .unwrap_or_else(|| n.address.clone());
                out.push(ServiceEndpoint {
                    address,
                    port: inbound.port,
                    zone: self.zone.clone(),
                    tags: inbound.tags.clone(),
                    weight: 1,
                });
            }
        }
        for ingress in &self.remote_ingresses {
            let net = &ingress.spec.networking;
            let (Some(address), Some(port)) = (net.advertised_address.clone(), net.advertised_port) else {
                continue;
            };
            for svc in ingress.spec.available_services.iter() {
                if svc.mesh != self.mesh || !selected(&svc.tags) || svc.instances == 0 {
                    continue;
                }
                out.push(ServiceEndpoint {
                    address: address.clone(),
                    port,
                    zone: ingress.zone.clone(),
                    tags: svc.tags.clone(),
                    weight: svc.instances,
                });
            }
        }
        out.sort();
        out
    }
}
