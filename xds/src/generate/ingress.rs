//! Zone ingresses: where traffic from other zones enters this one.
//!
//! A sidecar in another zone reaches a service of this zone through the
//! ingress's advertised address, over the mesh's mTLS. The ingress does not
//! terminate that TLS: it reads the server name of the ClientHello
//! (`tls_inspector`) and passes the connection, bytes untouched, to the local
//! endpoints of the service the name stands for.
//!
//! What an ingress proxy gets, from its `ZoneIngress` and the snapshots of the
//! meshes it advertises ([`generate`]):
//!
//! - one Listener `ingress:<address>:<port>` on `networking.address:port`
//!   with the `tls_inspector` listener filter;
//! - per advertised service, one filter chain for the whole service, one
//!   per advertised tag set (`availableServices[].tags` without
//!   `kuma.io/service`) and one per subset of it that the mesh's
//!   MeshHTTPRoutes and MeshTCPRoutes send to (`MeshServiceSubset`
//!   backends: other zones' clients ask for those), each matched by [`sni`]
//!   in `filter_chain_match.server_names` and holding a TCP proxy;
//! - behind each chain an EDS cluster and its ClusterLoadAssignment named by
//!   [`cluster_name`] (`<mesh>:<service>` or `<mesh>:<service>|k=v,…`, so two
//!   meshes never share a cluster), with the endpoints of **this zone only**.
//!   Endpoints other zones advertise are never routed from an ingress: traffic
//!   that entered a zone cannot leave it again, so it cannot loop.
//!
//! A chain whose service has no local endpoint left (the ingress's
//! `availableServices` lag behind the dataplanes) is left out, as is anything
//! of a mesh missing from the snapshots. An ingress with nothing to route gets
//! no resources at all: Envoy refuses a listener without filter chains, and a
//! closed port says the same as an unknown server name.
//!
//! ## Server names
//!
//! [`sni`] is the contract between the sidecars of other zones (which set it
//! as their upstream TLS server name) and this ingress. It is a lowercase DNS
//! name, valid as a TLS server name anywhere:
//!
//! ```text
//! <service>[.<subset>].<digest>.<mesh>.meridian
//! ```
//!
//! - `<service>`: the service name, lowercased, every character outside
//!   `[a-z0-9]` turned into `-`, at most 40 characters (readable only);
//! - `<subset>`: present when the subset has tags: its `key-value` pairs in
//!   key order, sanitised the same way, at most 63 characters (readable only);
//! - `<digest>`: 16 hex digits, the 64-bit FNV-1a hash of the exact mesh,
//!   service and subset (each length-prefixed, tags in key order). It is what
//!   makes names distinct where the readable labels lose information;
//! - `<mesh>`: the mesh name as is (mesh names are DNS labels).
//!
//! The function is pure and stable across releases: zones running different
//! Meridian versions must compute the same names.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use meridian_core::dataplane::{ZoneIngress, SERVICE_TAG};

use super::clusters::eds_cluster;
use super::endpoints::load_assignment;
use super::sidecar::{network_filter, socket, tcp_proxy};
use super::{any, OutboundPolicies};
use crate::resources::{hash_hex, ResourceSet, CLUSTER, ENDPOINT, LISTENER};
use crate::snapshot::{MeshSnapshot, ServiceEndpoint, ServiceIndex};

/// The last label of every ingress server name.
pub const SNI_SUFFIX: &str = "meridian";

/// The longest readable service label of a server name.
const SERVICE_LABEL_MAX: usize = 40;
/// The longest label DNS allows.
const LABEL_MAX: usize = 63;

/// `s` as a DNS label: lowercase ASCII letters and digits kept, anything else
/// `-`, no `-` at either end, at most `max` characters; `x` if nothing is left.
fn label(s: &str, max: usize) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut out: String = mapped.trim_matches('-').chars().take(max).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push('x');
    }
    out
}

/// The subset tags of `tags`: everything but `kuma.io/service`.
fn subset_of(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter(|(k, _)| k.as_str() != SERVICE_TAG)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The TLS server name under which an ingress routes `service` of `mesh`,
/// restricted to endpoints carrying `tags` (a `kuma.io/service` entry in
/// `tags` is ignored). See the module documentation for the format.
pub fn sni(mesh: &str, service: &str, tags: &BTreeMap<String, String>) -> String {
    let subset = subset_of(tags);
    let mut exact = Vec::new();
    for part in [mesh, service]
        .into_iter()
        .chain(subset.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
    {
        exact.extend_from_slice(part.len().to_string().as_bytes());
        exact.push(b':');
        exact.extend_from_slice(part.as_bytes());
    }
    let mut labels = vec![label(service, SERVICE_LABEL_MAX)];
    if !subset.is_empty() {
        let pairs: Vec<String> = subset.iter().map(|(k, v)| format!("{k}-{v}")).collect();
        labels.push(label(&pairs.join("-"), LABEL_MAX));
    }
    labels.push(hash_hex(&exact));
    labels.push(mesh.to_string());
    labels.push(SNI_SUFFIX.to_string());
    labels.join(".")
}

/// The ingress's cluster (and load assignment) for `service` of `mesh`,
/// restricted to `subset`: `<mesh>:<service>` or `<mesh>:<service>|k=v,…`.
pub fn cluster_name(mesh: &str, service: &str, subset: &BTreeMap<String, String>) -> String {
    format!("{mesh}:{}", super::cluster_name(service, &subset_of(subset)))
}

/// The name of an ingress's listener.
pub fn listener_name(ingress: &ZoneIngress) -> String {
    format!("ingress:{}:{}", ingress.networking.address, ingress.networking.port)
}

/// One routed destination: a service of a mesh, possibly a subset of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target<'a> {
    mesh: &'a str,
    service: &'a str,
    subset: BTreeMap<String, String>,
}

/// The subsets of services the routes of `snapshot` send to
/// (`MeshServiceSubset` backend references of MeshHTTPRoutes and
/// MeshTCPRoutes): other zones' clients ask the ingress for them by name.
fn routed_subsets(snapshot: &MeshSnapshot) -> BTreeSet<(String, BTreeMap<String, String>)> {
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<(String, BTreeMap<String, String>)>) {
        match v {
            serde_json::Value::Object(o) => {
                let subset = o.get("kind").and_then(|k| k.as_str()) == Some("MeshServiceSubset");
                if let (true, Some(name), Some(tags)) = (
                    subset,
                    o.get("name").and_then(|n| n.as_str()),
                    o.get("tags").and_then(|t| t.as_object()),
                ) {
                    let tags: BTreeMap<String, String> = tags
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .filter(|(k, _)| k != SERVICE_TAG)
                        .collect();
                    if !tags.is_empty() {
                        out.insert((name.to_string(), tags));
                    }
                }
                o.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for kind in ["MeshHTTPRoute", "MeshTCPRoute"] {
        for (_, spec) in snapshot.policies.get(kind).into_iter().flatten() {
            walk(spec, &mut out);
        }
    }
    out
}

/// What `ingress` advertises, restricted to the meshes it has snapshots of:
/// per service the whole service, every advertised tag set, and every
/// subset of it the mesh's routes send to.
fn targets<'a>(ingress: &'a ZoneIngress, meshes: &BTreeMap<&str, &MeshSnapshot>) -> BTreeSet<Target<'a>> {
    let mut out = BTreeSet::new();
    for available in &ingress.available_services {
        let Some(service) = available.tags.get(SERVICE_TAG) else {
            continue;
        };
        if !meshes.contains_key(available.mesh.as_str()) {
            continue;
        }
        let mesh = available.mesh.as_str();
        out.insert(Target {
            mesh,
            service,
            subset: BTreeMap::new(),
        });
        let subset = subset_of(&available.tags);
        if !subset.is_empty() {
            out.insert(Target { mesh, service, subset });
        }
    }
    for (mesh, snap) in meshes {
        let advertised: BTreeSet<&'a str> = out.iter().filter(|t| t.mesh == *mesh).map(|t| t.service).collect();
        for (service, subset) in routed_subsets(snap) {
            if let Some(service) = advertised.iter().find(|s| **s == service) {
                let mesh = out.iter().find(|t| t.mesh == *mesh).map(|t| t.mesh);
                if let Some(mesh) = mesh {
                    out.insert(Target { mesh, service, subset });
                }
            }
        }
    }
    out
}

/// The configuration of the proxy of `ingress`, from the snapshots of the
/// meshes it advertises (others may be there; a mesh appearing twice counts
/// once, the first). Each snapshot's `zone` is this zone.
pub fn generate(ingress: &ZoneIngress, meshes: &[MeshSnapshot]) -> ResourceSet {
    let mut set = ResourceSet::new();
    let mut by_mesh: BTreeMap<&str, &MeshSnapshot> = BTreeMap::new();
    for snap in meshes {
        by_mesh.entry(snap.mesh.as_str()).or_insert(snap);
    }
    let targets = targets(ingress, &by_mesh);
    let mut indexes: BTreeMap<&str, ServiceIndex<'_>> = BTreeMap::new();
    let mut chains = Vec::new();
    for target in &targets {
        let Some(snap) = by_mesh.get(target.mesh) else {
            continue;
        };
        let index = indexes.entry(target.mesh).or_insert_with(|| ServiceIndex::new(snap));
        let local: Vec<&ServiceEndpoint> = index
            .endpoints(target.service, &target.subset)
            .into_iter()
            .filter(|e| e.zone == snap.zone)
            .collect();
        if local.is_empty() {
            continue;
        }
        let cluster = cluster_name(target.mesh, target.service, &target.subset);
        set.insert(
            CLUSTER,
            &cluster,
            &eds_cluster(&cluster, &OutboundPolicies::default(), false),
        );
        set.insert(ENDPOINT, &cluster, &load_assignment(&cluster, snap, &local, None, &[]));
        chains.push(FilterChain {
            name: cluster.clone(),
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![sni(target.mesh, target.service, &target.subset)],
                ..Default::default()
            }),
            filters: vec![network_filter(
                "envoy.filters.network.tcp_proxy",
                &tcp_proxy(&cluster, &cluster, None),
            )],
            ..Default::default()
        });
    }
    if chains.is_empty() {
        return set;
    }
    let name = listener_name(ingress);
    let net = &ingress.networking;
    let listener = Listener {
        name: name.clone(),
        address: Some(socket(&net.address, net.port)),
        stat_prefix: name.clone(),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(&TlsInspector::default()))),
            ..Default::default()
        }],
        filter_chains: chains,
        ..Default::default()
    };
    set.insert(LISTENER, &name, &listener);
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::invariants;
    use crate::snapshot::{DataplaneEntry, RemoteIngress};
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy::ClusterSpecifier, TcpProxy};
    use meridian_core::dataplane::Dataplane;
    use prost::Message;
    use serde_json::json;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn dp(name: &str, address: &str, service: &str, version: &str) -> DataplaneEntry {
        let spec: Dataplane = serde_json::from_value(json!({"networking": {"address": address,
            "inbound": [{"port": 15001, "servicePort": 8080,
                         "tags": {"kuma.io/service": service, "version": version}}]}}))
        .unwrap();
        DataplaneEntry {
            name: name.into(),
            spec,
        }
    }

    fn mesh(name: &str, dataplanes: Vec<DataplaneEntry>) -> MeshSnapshot {
        MeshSnapshot {
            zone: "zone-1".into(),
            mesh: name.into(),
            dataplanes,
            ..Default::default()
        }
    }

    fn ingress(available: serde_json::Value) -> ZoneIngress {
        serde_json::from_value(json!({"networking": {"address": "10.0.0.100", "port": 10001,
            "advertisedAddress": "192.0.2.1", "advertisedPort": 30001},
            "availableServices": available}))
        .unwrap()
    }

    fn listener(set: &ResourceSet) -> Listener {
        let r = set.of_type(LISTENER).next().expect("a listener");
        Listener::decode(r.body.value.as_slice()).unwrap()
    }

    /// (server name, cluster the chain's TCP proxy sends to), per chain.
    fn chains(set: &ResourceSet) -> Vec<(String, String)> {
        listener(set)
            .filter_chains
            .iter()
            .map(|c| {
                let names = &c.filter_chain_match.as_ref().unwrap().server_names;
                assert_eq!(names.len(), 1);
                let Some(filter::ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
                    panic!("no typed config")
                };
                let tcp = TcpProxy::decode(any.value.as_slice()).unwrap();
                let Some(ClusterSpecifier::Cluster(cluster)) = tcp.cluster_specifier else {
                    panic!("no cluster")
                };
                (names[0].clone(), cluster)
            })
            .collect()
    }

    /// The addresses in a cluster's load assignment.
    fn addresses(set: &ResourceSet, cluster: &str) -> Vec<String> {
        let r = set
            .get(ENDPOINT, cluster)
            .unwrap_or_else(|| panic!("no endpoints {cluster}"));
        let cla = ClusterLoadAssignment::decode(r.body.value.as_slice()).unwrap();
        let mut out = Vec::new();
        for l in &cla.endpoints {
            for e in &l.lb_endpoints {
                let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    continue;
                };
                if let Some(address::Address::SocketAddress(s)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                    let Some(socket_address::PortSpecifier::PortValue(p)) = s.port_specifier else {
                        continue;
                    };
                    out.push(format!("{}:{p}", s.address));
                }
            }
        }
        out.sort();
        out
    }

    /// Invariants, and every cluster a chain sends to exists.
    fn sound(set: &ResourceSet) {
        assert_eq!(invariants::check(set), Vec::<String>::new());
        for (_, cluster) in chains(set) {
            assert!(set.get(CLUSTER, &cluster).is_some(), "missing cluster {cluster}");
        }
    }

    #[test]
    fn one_chain_per_service_and_advertised_subset() {
        let snap = mesh(
            "default",
            vec![
                dp("b1", "10.0.0.1", "backend", "v1"),
                dp("b2", "10.0.0.2", "backend", "v1"),
                dp("b3", "10.0.0.3", "backend", "v2"),
                dp("d1", "10.0.0.4", "db", "v1"),
            ],
        );
        let ing = ingress(json!([
            {"mesh": "default", "instances": 2, "tags": {"kuma.io/service": "backend", "version": "v1"}},
            {"mesh": "default", "instances": 1, "tags": {"kuma.io/service": "backend", "version": "v2"}},
            {"mesh": "default", "instances": 1, "tags": {"kuma.io/service": "db", "version": "v1"}},
        ]));
        let set = generate(&ing, &[snap]);
        sound(&set);
        let l = listener(&set);
        assert_eq!(l.name, "ingress:10.0.0.100:10001");
        assert_eq!(l.listener_filters.len(), 1);
        assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
        let v1 = tags(&[("version", "v1")]);
        let v2 = tags(&[("version", "v2")]);
        let none = BTreeMap::new();
        assert_eq!(
            chains(&set),
            [
                (sni("default", "backend", &none), "default:backend".to_string()),
                (sni("default", "backend", &v1), "default:backend|version=v1".to_string()),
                (sni("default", "backend", &v2), "default:backend|version=v2".to_string()),
                (sni("default", "db", &none), "default:db".to_string()),
                (sni("default", "db", &v1), "default:db|version=v1".to_string()),
            ]
        );
        assert_eq!(
            addresses(&set, "default:backend"),
            ["10.0.0.1:15001", "10.0.0.2:15001", "10.0.0.3:15001"]
        );
        assert_eq!(
            addresses(&set, "default:backend|version=v1"),
            ["10.0.0.1:15001", "10.0.0.2:15001"]
        );
        assert_eq!(addresses(&set, "default:backend|version=v2"), ["10.0.0.3:15001"]);
        assert_eq!(set.len(CLUSTER), 5);
    }

    #[test]
    fn only_local_endpoints_are_routed() {
        let mut snap = mesh("default", vec![dp("b1", "10.0.0.1", "backend", "v1")]);
        // Another zone advertises backend (and web, which this zone lacks).
        snap.remote_ingresses.push(RemoteIngress {
            zone: "zone-2".into(),
            spec: serde_json::from_value(json!({"networking": {"address": "10.2.0.1", "port": 10001,
                "advertisedAddress": "192.0.2.2", "advertisedPort": 30001},
                "availableServices": [
                  {"mesh": "default", "instances": 4, "tags": {"kuma.io/service": "backend", "version": "v1"}},
                  {"mesh": "default", "instances": 1, "tags": {"kuma.io/service": "web"}}]}))
            .unwrap(),
        });
        // This ingress's availableServices are stale: web went away here.
        let ing = ingress(json!([
            {"mesh": "default", "instances": 1, "tags": {"kuma.io/service": "backend", "version": "v1"}},
            {"mesh": "default", "instances": 1, "tags": {"kuma.io/service": "web"}},
        ]));
        let set = generate(&ing, &[snap]);
        sound(&set);
        let routed: Vec<String> = chains(&set).into_iter().map(|(_, c)| c).collect();
        assert_eq!(routed, ["default:backend", "default:backend|version=v1"]);
        assert_eq!(addresses(&set, "default:backend"), ["10.0.0.1:15001"]);
        assert!(set.get(CLUSTER, "default:web").is_none());
    }

    #[test]
    fn two_meshes_do_not_mix() {
        let a = mesh("a", vec![dp("b1", "10.0.1.1", "backend", "v1")]);
        let b = mesh("b", vec![dp("b1", "10.0.2.1", "backend", "v1")]);
        let ing = ingress(json!([
            {"mesh": "a", "instances": 1, "tags": {"kuma.io/service": "backend"}},
            {"mesh": "b", "instances": 1, "tags": {"kuma.io/service": "backend"}},
            {"mesh": "gone", "instances": 1, "tags": {"kuma.io/service": "backend"}},
        ]));
        let set = generate(&ing, &[a, b]);
        sound(&set);
        let got = chains(&set);
        let none = BTreeMap::new();
        assert_eq!(
            got,
            [
                (sni("a", "backend", &none), "a:backend".to_string()),
                (sni("b", "backend", &none), "b:backend".to_string()),
            ]
        );
        assert_ne!(got[0].0, got[1].0);
        assert_eq!(addresses(&set, "a:backend"), ["10.0.1.1:15001"]);
        assert_eq!(addresses(&set, "b:backend"), ["10.0.2.1:15001"]);
    }

    #[test]
    fn nothing_to_route_gives_no_resources() {
        let snap = mesh("default", vec![dp("b1", "10.0.0.1", "backend", "v1")]);
        assert!(generate(&ingress(json!([])), std::slice::from_ref(&snap)).is_empty());
        // Advertised in a mesh the ingress has no snapshot of.
        let other = ingress(json!([{"mesh": "other", "instances": 1, "tags": {"kuma.io/service": "backend"}}]));
        assert!(generate(&other, &[snap]).is_empty());
    }

    #[test]
    fn server_names_are_dns_names_and_tell_targets_apart() {
        let check = |name: &str| {
            assert!(name.len() <= 253, "{name}");
            for l in name.split('.') {
                assert!(!l.is_empty() && l.len() <= 63, "{name}: label {l:?}");
                assert!(
                    l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "{name}: label {l:?}"
                );
                assert!(!l.starts_with('-') && !l.ends_with('-'), "{name}: label {l:?}");
            }
        };
        let long = "Ünïcode/Value.".repeat(40);
        let cases = [
            ("default", "backend", tags(&[])),
            ("default", "backend", tags(&[("version", "v1")])),
            ("default", "backend", tags(&[("version", "v1.0")])),
            ("default", "backend", tags(&[("version", "v1-0")])),
            ("default", "backend", tags(&[("version", "V1-0")])),
            ("default", "backend", tags(&[("version-v1", "")])),
            (
                "default",
                "backend",
                tags(&[("version", "v1"), ("kuma.io/protocol", "http")]),
            ),
            ("default", "Backend", tags(&[])),
            ("default", "backend_", tags(&[])),
            ("other", "backend", tags(&[])),
            ("default", "-", tags(&[("k", &long)])),
            ("default", &long, tags(&[("k", &long)])),
        ];
        let mut seen = BTreeSet::new();
        for (m, s, t) in &cases {
            let name = sni(m, s, t);
            check(&name);
            assert!(seen.insert(name.clone()), "{name} names two targets");
            assert_eq!(name, sni(m, s, t), "deterministic");
            assert!(name.ends_with(&format!(".{m}.{SNI_SUFFIX}")), "{name}");
        }
        // The service tag in `tags` is the service itself, not a subset.
        assert_eq!(
            sni("default", "backend", &tags(&[("kuma.io/service", "backend")])),
            sni("default", "backend", &tags(&[]))
        );
        assert!(sni("default", "backend", &tags(&[("version", "v1")])).starts_with("backend.version-v1."));
    }
}
