#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A zone's ingress proxy over real ADS: an in-process standalone zone with
//! two meshes, its own ZoneIngress and another zone's, and a tonic ADS client
//! that connects with the ingress's node id. The client receives the SNI
//! listener, the mesh-qualified clusters and load assignments with only this
//! zone's endpoints, follows changes of dataplanes and of the ingress, and the
//! zone refuses nodes that are not one of its ingresses. The zone API shows
//! the same configuration at `GET /zoneingresses/{name}/xds`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy::ClusterSpecifier, TcpProxy};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use meridian_core::decode::decode_value;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_server::backend::StoreKind;
use meridian_server::manager::Manager;
use meridian_xds::client;
use meridian_xds::generate::ingress::sni;
use meridian_xds::resources::{CLUSTER, ENDPOINT, LISTENER};
use meridian_zone::xds::ingress_proxy_id;
use meridian_zone::{RunningZone, ZoneConfig};
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(20);
const ZONE: &str = "zone-1";
const INGRESS: &str = "ingress";
const INGRESS_PORT: u32 = 10001;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start_zone(dir: &std::path::Path) -> RunningZone {
    let z = meridian_zone::start(ZoneConfig {
        zone: ZONE.into(),
        api_addr: loopback(),
        xds_addr: loopback(),
        xds_tls: Default::default(),
        dp_auth: meridian_zone::auth::DpAuth::Token,
        dataplane_cleanup_age: std::time::Duration::from_secs(60),
        offline_dataplane_cleanup_age: None,
        xds_max_connections: meridian_zone::config::DEFAULT_XDS_MAX_CONNECTIONS,
        store: StoreKind::Memory,
        data_dir: dir.to_path_buf(),
        federation: None,
        ingress_address: None,
        create_default_mesh: false,
        access: meridian_server::access::AccessConfig::with_token_file(dir.join("admin-token")),
        api_tls: None,
        api_limits: Default::default(),
    })
    .await
    .unwrap();
    z.manager.cache().wait_ready(DEADLINE).await.unwrap();
    z
}

async fn apply(manager: &Manager, doc: Value) {
    let doc = decode_value(doc.clone()).unwrap_or_else(|e| panic!("{doc}: {e}"));
    manager.apply(doc).await.unwrap();
}

/// A dataplane with one inbound of `backend`, `version`.
async fn backend(manager: &Manager, mesh: &str, name: &str, address: &str, version: &str) {
    apply(
        manager,
        json!({"type": "Dataplane", "mesh": mesh, "name": name, "networking": {"address": address,
            "inbound": [{"port": 15001, "servicePort": 8080,
                         "tags": {"kuma.io/service": "backend", "version": version}}]}}),
    )
    .await;
}

// ---------------------------------------------------------------------------
// A state-of-the-world ADS client that keeps what it was last sent.

fn node(id: &str, ingress_flag: bool) -> Node {
    let metadata = ingress_flag.then(|| Struct {
        fields: [(
            "proxyType".to_string(),
            PbValue {
                kind: Some(Kind::StringValue("ingress".into())),
            },
        )]
        .into(),
    });
    Node {
        id: id.into(),
        user_agent_name: "envoy".into(),
        metadata,
        ..Default::default()
    }
}

struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    /// type URL → the resources of the last response of that type.
    state: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Ads {
    /// Opens a stream as `node` subscribed (wildcard) to clusters, endpoints
    /// and listeners, presenting `token`.
    async fn connect(zone: &RunningZone, token: &str, node: Node) -> Ads {
        match Self::try_connect(zone, Some(token), node).await {
            Ok(ads) => ads,
            Err(status) => panic!("the stream was refused at once: {status:?}"),
        }
    }

    /// [`Ads::connect`], or the status the zone refuses the stream with
    /// before any request (missing or invalid credentials).
    async fn try_connect(zone: &RunningZone, token: Option<&str>, node: Node) -> Result<Ads, Status> {
        let channel = client::endpoint(&zone.xds_addr.to_string(), &zone.xds_ca_pem)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        for (i, type_url) in [CLUSTER, ENDPOINT, LISTENER].into_iter().enumerate() {
            tx.send(DiscoveryRequest {
                node: (i == 0).then(|| node.clone()),
                type_url: type_url.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let stream = ReceiverStream::new(rx);
        let rx = match token {
            Some(t) => client::ads_client(channel, client::Bearer::new(t).unwrap())
                .stream_aggregated_resources(stream)
                .await?
                .into_inner(),
            None => AggregatedDiscoveryServiceClient::new(channel)
                .stream_aggregated_resources(stream)
                .await?
                .into_inner(),
        };
        Ok(Ads {
            tx,
            rx,
            state: BTreeMap::new(),
        })
    }

    /// The status the zone ends the stream with (responses before it, such
    /// as those of a stream that was served until it was closed, are skipped).
    async fn refusal(&mut self) -> Status {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Err(_) => panic!("no status before the deadline"),
                Ok(Err(status)) => return status,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => panic!("the stream ended without a status"),
            }
        }
    }

    /// Reads (and ACKs) responses until `done` holds for what the client
    /// has; panics at the deadline with what it had.
    async fn until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let seen = Seen::of(&self.state);
            if done(&seen) {
                return seen;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let r = match timeout(left, self.rx.message()).await {
                Err(_) => panic!("timed out waiting for {what}; the ingress proxy has:\n{seen:#?}"),
                Ok(Ok(Some(r))) => r,
                Ok(other) => panic!("stream ended waiting for {what}: {other:?}"),
            };
            self.state.insert(
                r.type_url.clone(),
                r.resources.iter().map(|a| a.value.clone()).collect(),
            );
            self.tx
                .send(DiscoveryRequest {
                    type_url: r.type_url.clone(),
                    version_info: r.version_info.clone(),
                    response_nonce: r.nonce.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
}

/// What the ingress proxy holds, decoded.
#[derive(Debug, Default)]
struct Seen {
    clusters: BTreeSet<String>,
    /// cluster → endpoint addresses.
    endpoints: BTreeMap<String, Vec<String>>,
    listeners: Vec<Listener>,
}

impl Seen {
    fn of(state: &BTreeMap<String, Vec<Vec<u8>>>) -> Seen {
        let all = |t: &str| state.get(t).cloned().unwrap_or_default();
        let clusters = all(CLUSTER)
            .iter()
            .map(|b| Cluster::decode(b.as_slice()).unwrap().name)
            .collect();
        let mut endpoints = BTreeMap::new();
        for b in all(ENDPOINT) {
            let cla = ClusterLoadAssignment::decode(b.as_slice()).unwrap();
            let mut addrs = Vec::new();
            for l in &cla.endpoints {
                for e in &l.lb_endpoints {
                    let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                        continue;
                    };
                    if let Some(address::Address::SocketAddress(s)) =
                        ep.address.as_ref().and_then(|a| a.address.as_ref())
                    {
                        if let Some(socket_address::PortSpecifier::PortValue(p)) = s.port_specifier {
                            addrs.push(format!("{}:{p}", s.address));
                        }
                    }
                }
            }
            addrs.sort();
            endpoints.insert(cla.cluster_name, addrs);
        }
        let listeners = all(LISTENER)
            .iter()
            .map(|b| Listener::decode(b.as_slice()).unwrap())
            .collect();
        Seen {
            clusters,
            endpoints,
            listeners,
        }
    }

    /// (server name, cluster) of every filter chain of the one listener.
    fn chains(&self) -> Vec<(String, String)> {
        let Some(l) = self.listeners.first() else {
            return Vec::new();
        };
        l.filter_chains
            .iter()
            .map(|c| {
                let names = &c.filter_chain_match.as_ref().unwrap().server_names;
                let Some(filter::ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
                    panic!("a chain without a typed filter")
                };
                let Some(ClusterSpecifier::Cluster(cluster)) =
                    TcpProxy::decode(any.value.as_slice()).unwrap().cluster_specifier
                else {
                    panic!("a TCP proxy without a cluster")
                };
                (names.join(","), cluster)
            })
            .collect()
    }

    fn addresses(&self, cluster: &str) -> Vec<String> {
        self.endpoints.get(cluster).cloned().unwrap_or_default()
    }
}

fn subset(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_proxy_is_admitted_and_gets_sni_routes_to_local_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let zone = start_zone(dir.path()).await;
    let m = zone.manager.clone();
    for mesh in ["default", "payments"] {
        apply(&m, json!({"type": "Mesh", "name": mesh})).await;
    }
    backend(&m, "default", "backend-1", "10.0.0.1", "v1").await;
    backend(&m, "default", "backend-2", "10.0.0.2", "v2").await;
    backend(&m, "payments", "backend-1", "10.0.1.1", "v1").await;
    // Another zone's ingress advertises backend too: never routed from here.
    m.upsert_synced(Resource::new(
        ResourceKey::global(ResourceType::ZoneIngress, "zone-2.ingress"),
        [("kuma.io/zone".to_string(), "zone-2".to_string())].into(),
        json!({"networking": {"address": "10.2.0.1", "port": 10001,
            "advertisedAddress": "192.0.2.2", "advertisedPort": 30001},
            "availableServices": [{"mesh": "default", "instances": 5,
                                   "tags": {"kuma.io/service": "backend", "version": "v1"}}]}),
        chrono::Utc::now(),
    ))
    .await
    .unwrap();
    // This zone's ingress; the zone fills in its availableServices.
    apply(
        &m,
        json!({"type": "ZoneIngress", "name": INGRESS, "networking": {"address": "127.0.0.1",
            "port": INGRESS_PORT, "advertisedAddress": "192.0.2.1", "advertisedPort": 30001}}),
    )
    .await;

    // Without a token, with a dataplane token, with another ingress's token:
    // refused.
    let status = Ads::try_connect(&zone, None, node(INGRESS, false)).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = Ads::try_connect(&zone, Some("a.b.c"), node(INGRESS, false))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let dp_token = issue(&zone, "/tokens/dataplane", json!({"mesh": "default"})).await;
    let mut as_dataplane = Ads::connect(&zone, &dp_token, node(INGRESS, false)).await;
    let status = as_dataplane.refusal().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("a dataplane token cannot connect zone ingress"),
        "{status:?}"
    );
    let other = issue(&zone, "/tokens/zone-ingress", json!({"name": "other-ingress"})).await;
    let mut wrong_name = Ads::connect(&zone, &other, node(INGRESS, false)).await;
    let status = wrong_name.refusal().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"other-ingress\""), "{status:?}");

    let token = issue(&zone, "/tokens/zone-ingress", json!({"validFor": "1h"})).await;
    let mut ads = Ads::connect(&zone, &token, node(INGRESS, false)).await;
    let want_clusters = names(&[
        "default:backend",
        "default:backend|version=v1",
        "default:backend|version=v2",
        "payments:backend",
        "payments:backend|version=v1",
    ]);
    let seen = ads
        .until("the clusters, endpoints and listener of both meshes", |s| {
            s.clusters == want_clusters && s.endpoints.len() == 5 && s.chains().len() == 5
        })
        .await;
    let l = &seen.listeners[0];
    assert_eq!(seen.listeners.len(), 1);
    assert_eq!(l.name, format!("ingress:127.0.0.1:{INGRESS_PORT}"));
    assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
    let v1 = subset(&[("version", "v1")]);
    let v2 = subset(&[("version", "v2")]);
    let all = BTreeMap::new();
    assert_eq!(
        seen.chains(),
        [
            (sni("default", "backend", &all), "default:backend".to_string()),
            (sni("default", "backend", &v1), "default:backend|version=v1".to_string()),
            (sni("default", "backend", &v2), "default:backend|version=v2".to_string()),
            (sni("payments", "backend", &all), "payments:backend".to_string()),
            (
                sni("payments", "backend", &v1),
                "payments:backend|version=v1".to_string()
            ),
        ]
    );
    // Only this zone's endpoints; the two meshes keep their own.
    assert_eq!(seen.addresses("default:backend"), ["10.0.0.1:15001", "10.0.0.2:15001"]);
    assert_eq!(seen.addresses("default:backend|version=v1"), ["10.0.0.1:15001"]);
    assert_eq!(seen.addresses("payments:backend"), ["10.0.1.1:15001"]);
    assert!(
        !seen.endpoints.values().flatten().any(|a| a.starts_with("192.0.2.")),
        "another zone's ingress is routed: {seen:#?}"
    );

    // A dataplane of an advertised mesh moves (the ingress itself does not
    // change): the proxy follows.
    backend(&m, "payments", "backend-1", "10.0.1.9", "v1").await;
    ads.until("payments' backend at its new address", |s| {
        s.addresses("payments:backend") == ["10.0.1.9:15001"]
    })
    .await;
    // A new tag set is advertised: a new chain and cluster.
    backend(&m, "default", "backend-3", "10.0.0.3", "v3").await;
    let seen = ads
        .until("a chain for backend v3", |s| {
            s.addresses("default:backend|version=v3") == ["10.0.0.3:15001"] && s.chains().len() == 6
        })
        .await;
    assert!(seen.chains().contains(&(
        sni("default", "backend", &subset(&[("version", "v3")])),
        "default:backend|version=v3".into()
    )));

    // The zone API shows what the proxy gets.
    let api = zone.api_addr;
    meridian_e2e::register_token(&format!("http://{api}"), &zone.admin_token);
    let (status, body) = tokio::task::spawn_blocking(move || {
        meridian_e2e::http("GET", &format!("http://{api}/zoneingresses/{INGRESS}/xds"), None, None).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // Envoy's admin ConfigDump: one listener, six clusters.
    let count = |list: &str, inner: &str, type_url: &str| {
        body["configs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c[list].as_array())
            .flatten()
            .filter(|x| x[inner]["@type"] == type_url)
            .count()
    };
    let listeners: usize = body["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["dynamic_listeners"].as_array())
        .flatten()
        .filter(|l| l["active_state"]["listener"]["@type"] == LISTENER)
        .count();
    assert_eq!(listeners, 1, "{body}");
    assert_eq!(count("dynamic_active_clusters", "cluster", CLUSTER), 6, "{body}");
    let (status, _) = tokio::task::spawn_blocking(move || {
        meridian_e2e::http("GET", &format!("http://{api}/zoneingresses/nosuch/xds"), None, None).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status, 404);

    // Refused: a second proxy of the same ingress, an unknown ingress, and
    // another zone's ingress (dotted name, so flagged in the metadata).
    let mut again = Ads::connect(&zone, &token, node(INGRESS, false)).await;
    let status = again.refusal().await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let mut unknown = Ads::connect(&zone, &token, node("nosuch", false)).await;
    let status = unknown.refusal().await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("zone ingress \"nosuch\" is not registered"),
        "{status:?}"
    );
    let mut foreign = Ads::connect(&zone, &token, node("zone-2.ingress", true)).await;
    let status = foreign.refusal().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("zone-2"), "{status:?}");

    // The ingress goes away: its proxy is left with nothing.
    zone.manager
        .delete(&ResourceKey::global(ResourceType::ZoneIngress, INGRESS))
        .await
        .unwrap();
    ads.until("an empty configuration", |s| {
        s.clusters.is_empty() && s.endpoints.is_empty() && s.listeners.is_empty()
    })
    .await;

    // Revoking the token closes the live stream with the reason.
    let jti = meridian_server::identity::jwt::parse(&token)
        .unwrap()
        .claims::<Value>()
        .unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_string();
    issue(&zone, "/tokens/zone-ingress/revoke", json!({"id": jti})).await;
    let status = ads.refusal().await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let id = ingress_proxy_id(INGRESS);
    let t = Instant::now();
    while zone.xds.resources_of(&id).is_some() {
        assert!(t.elapsed() < DEADLINE, "the ingress proxy never disconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The revoked token opens no stream any more.
    let status = Ads::try_connect(&zone, Some(&token), node(INGRESS, false))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    zone.stop().await.unwrap();
}

/// POSTs `body` to the zone's API at `path`; the reply text (a token, or JSON).
async fn issue(zone: &RunningZone, path: &str, body: Value) -> String {
    let url = format!("http://{}{path}", zone.api_addr);
    let auth = format!("Bearer {}", zone.admin_token);
    tokio::task::spawn_blocking(move || {
        let mut resp = ureq::post(&url)
            .header("authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&body)
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        assert_eq!(status, 200, "POST {url}: {text}");
        text
    })
    .await
    .unwrap()
}
