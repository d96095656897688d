//! A minimal state-of-the-world ADS client for the xDS benchmarks: one per
//! simulated dataplane, thousands per process.
//!
//! It behaves like the clients the zone serves, as far as the protocol goes:
//! - an Envoy sidecar (`node.user_agent_name = "envoy"`) subscribes to all
//!   clusters and listeners (wildcard), then to the load assignments of its
//!   EDS clusters and the route configurations its listeners name;
//! - a proxyless gRPC client subscribes to the listeners of the services it
//!   calls by name (`xds:///SERVICE`), then to the routes they name, the
//!   clusters the routes send to and those clusters' load assignments.
//!
//! A sidecar also subscribes to the SDS secrets its listeners' and clusters'
//! TLS contexts name (mesh mTLS), as Envoy does, and reports every secret
//! response ([`Event::Secret`]: a certificate issued or renewed).
//!
//! Every response is decoded (that is how the client learns the names it
//! needs next) and ACKed at once with the subscription of its type. The
//! client watches for a [`Target`] set by the benchmark — a route timeout or
//! an endpoint weight that only the change under test produces — and reports
//! the moment it has ACKed the first response that carries it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action::ClusterSpecifier, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use meridian_xds::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

/// What kind of dataplane a client plays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// An Envoy sidecar: wildcard clusters and listeners.
    Sidecar,
    /// A proxyless gRPC client calling these services (listeners by name).
    Proxyless(Vec<String>),
}

/// One simulated dataplane.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// Reported back with every event.
    pub index: usize,
    /// `<mesh>.<dataplane name>`.
    pub node_id: String,
    pub kind: ClientKind,
    /// This client's own token, instead of the fleet's.
    pub token: Option<std::sync::Arc<str>>,
}

/// What the benchmark waits for the clients to receive.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Nothing yet.
    Nothing,
    /// Some route of a RouteConfiguration the client holds has this timeout.
    RouteTimeout { round: u64, timeout: Duration },
    /// The load assignment `cluster` gives locality zone `zone` this weight.
    ZoneWeight {
        round: u64,
        cluster: String,
        zone: String,
        weight: u32,
    },
}

impl Target {
    fn round(&self) -> Option<u64> {
        match self {
            Target::Nothing => None,
            Target::RouteTimeout { round, .. } | Target::ZoneWeight { round, .. } => Some(*round),
        }
    }
}

/// What a client reports.
#[derive(Debug)]
pub enum Event {
    /// Every type the client subscribes to has been answered once.
    Ready { at: Instant },
    /// The client ACKed the first response carrying the target of `round`.
    Matched { client: usize, round: u64, at: Instant },
    /// The stream failed or ended.
    Failed { client: usize, error: String },
    /// A response of SDS secrets (mesh mTLS) was ACKed.
    Secret { client: usize, at: Instant },
}

/// Opens one HTTP/2 connection (TLS, verified with `ca_pem`) to the zone's
/// ADS server.
pub async fn connect(xds_addr: std::net::SocketAddr, ca_pem: &str) -> anyhow::Result<Channel> {
    let endpoint = meridian_xds::client::endpoint(&xds_addr.to_string(), ca_pem)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(30));
    endpoint.connect().await.context("connecting to the zone's ADS server")
}

#[derive(Default)]
struct TypeState {
    /// Subscribed at all (a request was sent).
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    version: String,
    nonce: String,
    /// A response arrived at least once.
    answered: bool,
}

struct Client {
    spec: ClientSpec,
    types: BTreeMap<&'static str, TypeState>,
    /// SDS secrets named by the listeners and by the clusters held.
    sds_listeners: BTreeSet<String>,
    sds_clusters: BTreeSet<String>,
    requests: mpsc::UnboundedSender<DiscoveryRequest>,
    node: Option<Node>,
}

impl Client {
    fn request(&mut self, type_url: &'static str) -> anyhow::Result<()> {
        let state = self.types.entry(type_url).or_default();
        state.subscribed = true;
        let req = DiscoveryRequest {
            version_info: state.version.clone(),
            response_nonce: state.nonce.clone(),
            type_url: type_url.to_string(),
            resource_names: if state.wildcard {
                Vec::new()
            } else {
                state.names.iter().cloned().collect()
            },
            // Envoy sends the node on the first request of a stream only.
            node: self.node.take(),
            ..Default::default()
        };
        self.requests.send(req).map_err(|_| anyhow!("request stream closed"))
    }

    /// Subscribes `type_url` to exactly `names` if that is new.
    fn follow(&mut self, type_url: &'static str, names: BTreeSet<String>) -> anyhow::Result<()> {
        let state = self.types.entry(type_url).or_default();
        if state.wildcard || state.names == names || (!state.subscribed && names.is_empty()) {
            return Ok(());
        }
        state.names = names;
        self.request(type_url)
    }
}

/// The SDS secret names of a TLS transport socket.
fn sds_of(socket: Option<&TransportSocket>) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context::ValidationContextType, CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
    };
    let Some(ConfigType::TypedConfig(any)) = socket.and_then(|s| s.config_type.as_ref()) else {
        return Vec::new();
    };
    let common: Option<CommonTlsContext> = if any.type_url.ends_with("UpstreamTlsContext") {
        UpstreamTlsContext::decode(any.value.as_slice())
            .ok()
            .and_then(|c| c.common_tls_context)
    } else {
        DownstreamTlsContext::decode(any.value.as_slice())
            .ok()
            .and_then(|c| c.common_tls_context)
    };
    let Some(common) = common else { return Vec::new() };
    let mut out: Vec<String> = common
        .tls_certificate_sds_secret_configs
        .into_iter()
        .map(|c| c.name)
        .collect();
    if let Some(ValidationContextType::CombinedValidationContext(v)) = common.validation_context_type {
        out.extend(v.validation_context_sds_secret_config.map(|c| c.name));
    }
    out
}

fn type_key(type_url: &str) -> Option<&'static str> {
    [LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET]
        .into_iter()
        .find(|t| *t == type_url)
}

fn decode_all<M: Message + Default>(resources: &[Any]) -> anyhow::Result<Vec<M>> {
    resources
        .iter()
        .map(|a| M::decode(a.value.as_slice()).map_err(|e| anyhow!("undecodable {}: {e}", a.type_url)))
        .collect()
}

fn rds_name(hcm: &Any) -> Option<String> {
    if !hcm.type_url.ends_with("HttpConnectionManager") {
        return None;
    }
    match HttpConnectionManager::decode(hcm.value.as_slice())
        .ok()?
        .route_specifier?
    {
        RouteSpecifier::Rds(rds) => Some(rds.route_config_name),
        _ => None,
    }
}

/// The route configurations the listeners take over RDS.
fn routes_of(listeners: &[Listener]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in listeners {
        if let Some(any) = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref()) {
            out.extend(rds_name(any));
        }
        for chain in &l.filter_chains {
            for f in &chain.filters {
                if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    out.extend(rds_name(any));
                }
            }
        }
    }
    out
}

/// The clusters the routes send to.
fn clusters_of(routes: &[RouteConfiguration]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for vh in routes.iter().flat_map(|r| &r.virtual_hosts) {
        for route in &vh.routes {
            if let Some(Action::Route(a)) = &route.action {
                match &a.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => {
                        out.insert(c.clone());
                    }
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        out.extend(w.clusters.iter().map(|c| c.name.clone()));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// The load assignments the EDS clusters take.
fn assignments_of(clusters: &[Cluster]) -> BTreeSet<String> {
    clusters
        .iter()
        .filter(|c| {
            matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
        })
        .map(|c| {
            c.eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| c.name.clone())
        })
        .collect()
}

fn has_timeout(routes: &[RouteConfiguration], timeout: Duration) -> bool {
    let want = (timeout.as_secs() as i64, timeout.subsec_nanos() as i32);
    routes
        .iter()
        .flat_map(|r| &r.virtual_hosts)
        .flat_map(|vh| &vh.routes)
        .any(|route| match &route.action {
            Some(Action::Route(a)) => a.timeout.as_ref().is_some_and(|t| (t.seconds, t.nanos) == want),
            _ => false,
        })
}

fn zone_weight(assignments: &[ClusterLoadAssignment], cluster: &str, zone: &str) -> Option<u32> {
    let cla = assignments.iter().find(|a| a.cluster_name == cluster)?;
    let locality = cla
        .endpoints
        .iter()
        .find(|l| l.locality.as_ref().is_some_and(|loc| loc.zone == zone))?;
    Some(
        locality
            .lb_endpoints
            .iter()
            .map(|e| e.load_balancing_weight.map_or(1, |w| w.value))
            .sum(),
    )
}

/// Runs one client until its stream ends; failures are reported as
/// [`Event::Failed`] as well as returned.
pub async fn run(
    channel: Channel,
    token: Option<std::sync::Arc<str>>,
    spec: ClientSpec,
    target: watch::Receiver<Target>,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let index = spec.index;
    let result = serve(channel, token, spec, target, &events).await;
    if let Err(e) = &result {
        let _ = events.send(Event::Failed {
            client: index,
            error: format!("{e:#}"),
        });
    }
    result
}

async fn serve(
    channel: Channel,
    token: Option<std::sync::Arc<str>>,
    spec: ClientSpec,
    target: watch::Receiver<Target>,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let user_agent = match spec.kind {
        ClientKind::Sidecar => "envoy",
        ClientKind::Proxyless(_) => "grpc-bench",
    };
    let mut client = Client {
        node: Some(Node {
            id: spec.node_id.clone(),
            user_agent_name: user_agent.to_string(),
            ..Default::default()
        }),
        spec,
        types: BTreeMap::new(),
        sds_listeners: BTreeSet::new(),
        sds_clusters: BTreeSet::new(),
        requests: tx,
    };
    match client.spec.kind.clone() {
        ClientKind::Sidecar => {
            for t in [CLUSTER, LISTENER] {
                client.types.entry(t).or_default().wildcard = true;
                client.request(t)?;
            }
        }
        ClientKind::Proxyless(services) => {
            client.types.entry(LISTENER).or_default().names = services.into_iter().collect();
            client.request(LISTENER)?;
        }
    }
    let requests = UnboundedReceiverStream::new(rx);
    let opened = match token {
        Some(t) => {
            let bearer = meridian_xds::client::Bearer::new(&t)?;
            meridian_xds::client::ads_client(channel, bearer)
                .stream_aggregated_resources(requests)
                .await
        }
        None => {
            AggregatedDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .stream_aggregated_resources(requests)
                .await
        }
    };
    let mut responses = opened.context("opening the ADS stream")?.into_inner();
    let mut ready = false;
    let mut matched: Option<u64> = None;
    loop {
        let resp: DiscoveryResponse = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(anyhow!("the server ended the stream")),
            Err(status) => return Err(anyhow!("stream failed: {status}")),
        };
        let Some(type_url) = type_key(&resp.type_url) else {
            continue;
        };
        // What this response means for the target, decided before the ACK.
        let goal = target.borrow().clone();
        let mut hit = false;
        let mut follow: Option<(&'static str, BTreeSet<String>)> = None;
        let mut secrets: Option<BTreeSet<String>> = None;
        match type_url {
            LISTENER => {
                let listeners = decode_all::<Listener>(&resp.resources)?;
                client.sds_listeners = listeners
                    .iter()
                    .flat_map(|l| &l.filter_chains)
                    .flat_map(|c| sds_of(c.transport_socket.as_ref()))
                    .collect();
                secrets = Some(&client.sds_listeners | &client.sds_clusters);
                follow = Some((ROUTE, routes_of(&listeners)));
            }
            ROUTE => {
                let routes = decode_all::<RouteConfiguration>(&resp.resources)?;
                if let Target::RouteTimeout { timeout, .. } = &goal {
                    hit = has_timeout(&routes, *timeout);
                }
                if !matches!(client.spec.kind, ClientKind::Sidecar) {
                    follow = Some((CLUSTER, clusters_of(&routes)));
                }
            }
            CLUSTER => {
                let clusters = decode_all::<Cluster>(&resp.resources)?;
                client.sds_clusters = clusters
                    .iter()
                    .flat_map(|c| sds_of(c.transport_socket.as_ref()))
                    .collect();
                secrets = Some(&client.sds_listeners | &client.sds_clusters);
                follow = Some((ENDPOINT, assignments_of(&clusters)));
            }
            SECRET => {
                let _ = events.send(Event::Secret {
                    client: client.spec.index,
                    at: Instant::now(),
                });
            }
            ENDPOINT => {
                if let Target::ZoneWeight {
                    cluster, zone, weight, ..
                } = &goal
                {
                    let assignments = decode_all::<ClusterLoadAssignment>(&resp.resources)?;
                    hit = zone_weight(&assignments, cluster, zone) == Some(*weight);
                }
            }
            _ => {}
        }
        let state = client.types.entry(type_url).or_default();
        state.version = resp.version_info;
        state.nonce = resp.nonce;
        state.answered = true;
        client.request(type_url)?;
        let acked_at = Instant::now();
        if hit {
            if let Some(round) = goal.round().filter(|r| matched != Some(*r)) {
                matched = Some(round);
                let _ = events.send(Event::Matched {
                    client: client.spec.index,
                    round,
                    at: acked_at,
                });
            }
        }
        if let Some((next, names)) = follow {
            client.follow(next, names)?;
        }
        if let Some(names) = secrets {
            client.follow(SECRET, names)?;
        }
        let secrets_answered = client
            .types
            .get(SECRET)
            .is_none_or(|s| s.names.is_empty() || s.answered);
        if !ready
            && secrets_answered
            && [LISTENER, ROUTE, CLUSTER, ENDPOINT]
                .iter()
                .all(|t| client.types.get(t).is_some_and(|s| s.answered))
        {
            ready = true;
            let _ = events.send(Event::Ready { at: Instant::now() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, VirtualHost};
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

    #[test]
    fn finds_timeouts_and_zone_weights() {
        let routes = vec![RouteConfiguration {
            virtual_hosts: vec![VirtualHost {
                routes: vec![Route {
                    action: Some(Action::Route(RouteAction {
                        timeout: Some(PbDuration {
                            seconds: 1,
                            nanos: 7_000_000,
                        }),
                        cluster_specifier: Some(ClusterSpecifier::Cluster("svc-1".into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }];
        assert!(has_timeout(&routes, Duration::from_millis(1007)));
        assert!(!has_timeout(&routes, Duration::from_millis(1008)));
        assert_eq!(clusters_of(&routes), BTreeSet::from(["svc-1".to_string()]));

        let endpoint = |w| LbEndpoint {
            load_balancing_weight: Some(UInt32Value { value: w }),
            ..Default::default()
        };
        let cla = ClusterLoadAssignment {
            cluster_name: "remote".into(),
            endpoints: vec![LocalityLbEndpoints {
                locality: Some(Locality {
                    zone: "zone-2".into(),
                    ..Default::default()
                }),
                lb_endpoints: vec![endpoint(3), endpoint(2)],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(zone_weight(std::slice::from_ref(&cla), "remote", "zone-2"), Some(5));
        assert_eq!(zone_weight(&[cla], "remote", "zone-1"), None);
    }
}
