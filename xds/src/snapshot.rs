//! What generation reads: one mesh as a zone sees it — its spec, policies,
//! the zone's dataplanes and the other zones' ingresses — and the proxy a
//! configuration is for. Built from the zone's cache; plain data.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_core::dataplane::{Dataplane, ZoneIngress, SERVICE_TAG};
use meridian_core::mesh::{Mesh, MtlsMode};

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
    /// Mesh mTLS, when the mesh enables a backend.
    pub mtls: Option<MeshTls>,
}

/// Mesh mTLS as generation sees it (DESIGN §11).
#[derive(Clone, Debug, PartialEq)]
pub struct MeshTls {
    pub mode: MtlsMode,
    /// The CA certificates every proxy of the mesh trusts (PEM): the roots
    /// of every backend the mesh lists, so that a switch of the enabled
    /// backend keeps the proxies that still hold the old one's certificates
    /// trusted. Empty until the zone has received them.
    pub trust_bundle_pem: String,
}

/// What a proxy's own TLS depends on: its certificate (sidecars get it over
/// SDS) and, for a proxyless gRPC application, the certificate provider
/// instance its bootstrap defines (gRFC A29; its files are written by
/// `meridian-dp`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyTls {
    pub identity: Option<std::sync::Arc<ProxyIdentity>>,
    pub certificate_provider: Option<String>,
    /// A sidecar's own certificate and key files for MeshMetric's
    /// Prometheus TLS (`ProvidedTLS`), from its node metadata.
    pub metrics_files: Option<MetricsTlsFiles>,
}

/// Files on the proxy's host (absolute paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsTlsFiles {
    pub cert: String,
    pub key: String,
}

/// A proxy's workload certificate.
#[derive(Clone, Default)]
pub struct ProxyIdentity {
    /// The certificate and the chain above it, up to the root (excluded).
    pub chain_pem: String,
    pub key_pem: String,
    /// Its SDS secret, encoded once (generation fills it on first use): a
    /// certificate is the same resource in every regeneration until renewed.
    pub encoded: std::sync::OnceLock<std::sync::Arc<crate::resources::XdsResource>>,
}

impl ProxyIdentity {
    pub fn new(chain_pem: String, key_pem: String) -> Self {
        ProxyIdentity {
            chain_pem,
            key_pem,
            encoded: std::sync::OnceLock::new(),
        }
    }
}

impl PartialEq for ProxyIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.chain_pem == other.chain_pem && self.key_pem == other.key_pem
    }
}

impl std::fmt::Debug for ProxyIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyIdentity")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
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
    pub tls: ProxyTls,
}

/// One endpoint of a service, local or through another zone's ingress;
/// borrowed from the snapshot, so indexing a mesh copies no strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceEndpoint<'a> {
    pub address: &'a str,
    pub port: u32,
    /// The zone the endpoint is in (this zone for local ones).
    pub zone: &'a str,
    pub tags: &'a BTreeMap<String, String>,
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
        ServiceIndex::new(self).ports(service)
    }

    /// Endpoints of `service` whose tags include `subset`: local inbounds
    /// (zone = this zone) and other zones' ingresses that advertise it.
    pub fn endpoints(&self, service: &str, subset: &BTreeMap<String, String>) -> Vec<ServiceEndpoint<'_>> {
        ServiceIndex::new(self)
            .endpoints(service, subset)
            .into_iter()
            .copied()
            .collect()
    }
}

/// Per-service lookups over a snapshot, built once per generation so that
/// a proxy with many destinations does not rescan every dataplane for each.
pub struct ServiceIndex<'a> {
    endpoints: HashMap<&'a str, Vec<ServiceEndpoint<'a>>>,
    ports: HashMap<&'a str, BTreeSet<u32>>,
    protocols: HashMap<&'a str, Vec<&'a str>>,
}

/// The tag that declares a service's protocol.
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";

impl<'a> ServiceIndex<'a> {
    pub fn new(snapshot: &'a MeshSnapshot) -> Self {
        let mut endpoints: HashMap<&'a str, Vec<ServiceEndpoint<'a>>> = HashMap::new();
        let mut ports: HashMap<&'a str, BTreeSet<u32>> = HashMap::new();
        let mut protocols: HashMap<&'a str, Vec<&'a str>> = HashMap::new();
        for dp in &snapshot.dataplanes {
            let n = &dp.spec.networking;
            for inbound in &n.inbound {
                let Some(service) = inbound.tags.get(SERVICE_TAG) else {
                    continue;
                };
                let address = inbound
                    .address
                    .as_deref()
                    .or(n.advertised_address.as_deref())
                    .unwrap_or(&n.address);
                endpoints.entry(service).or_default().push(ServiceEndpoint {
                    address,
                    port: inbound.port,
                    zone: &snapshot.zone,
                    tags: &inbound.tags,
                    weight: 1,
                });
                ports
                    .entry(service)
                    .or_default()
                    .insert(inbound.service_port.unwrap_or(inbound.port));
                if let Some(p) = inbound.tags.get(PROTOCOL_TAG) {
                    protocols.entry(service).or_default().push(p);
                }
            }
        }
        for ingress in &snapshot.remote_ingresses {
            let net = &ingress.spec.networking;
            let (Some(address), Some(port)) = (net.advertised_address.as_ref(), net.advertised_port) else {
                continue;
            };
            for svc in ingress.spec.available_services.iter() {
                let Some(service) = svc.tags.get(SERVICE_TAG) else {
                    continue;
                };
                if svc.mesh != snapshot.mesh || svc.instances == 0 {
                    continue;
                }
                endpoints.entry(service).or_default().push(ServiceEndpoint {
                    address,
                    port,
                    zone: &ingress.zone,
                    tags: &svc.tags,
                    weight: svc.instances,
                });
                if let Some(p) = svc.tags.get(PROTOCOL_TAG) {
                    protocols.entry(service).or_default().push(p);
                }
            }
        }
        ServiceIndex {
            endpoints,
            ports,
            protocols,
        }
    }

    /// Endpoints of `service` whose tags include `subset`, in snapshot order
    /// (load assignments order them themselves).
    pub fn endpoints(&self, service: &str, subset: &BTreeMap<String, String>) -> Vec<&ServiceEndpoint<'a>> {
        self.endpoints
            .get(service)
            .into_iter()
            .flatten()
            .filter(|e| subset.iter().all(|(k, v)| e.tags.get(k) == Some(v)))
            .collect()
    }

    /// The local ports of `service`.
    pub fn ports(&self, service: &str) -> BTreeSet<u32> {
        self.ports.get(service).cloned().unwrap_or_default()
    }

    /// The `kuma.io/protocol` values the service's endpoints declare.
    pub fn protocols(&self, service: &str) -> &[&'a str] {
        self.protocols.get(service).map(Vec::as_slice).unwrap_or(&[])
    }
}
