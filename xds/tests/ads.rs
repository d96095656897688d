//! The ADS server over real gRPC: a tonic server on a free port, a fake
//! config source whose resources the test changes, and a tonic ADS client.
//! Every wait has a deadline; "nothing was resent" is shown by the next
//! message being the next change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use meridian_xds::ads::{serve_stream, AdsConfig, AdsServer, SotwState};
use meridian_xds::resources::{ResourceSet, SharedResources, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use meridian_xds::source::{bearer_token, AckReporter, ConfigSource, ProxyId, ProxySession};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fakes

#[derive(Clone, Debug, PartialEq)]
enum Report {
    Acked {
        type_url: String,
        version: String,
    },
    Nacked {
        type_url: String,
        version: String,
        message: String,
    },
}

struct Reporter(mpsc::UnboundedSender<Report>);

impl AckReporter for Reporter {
    fn acked(&self, type_url: &str, version: &str) {
        let _ = self.0.send(Report::Acked {
            type_url: type_url.into(),
            version: version.into(),
        });
    }
    fn nacked(&self, type_url: &str, version: &str, message: &str) {
        let _ = self.0.send(Report::Nacked {
            type_url: type_url.into(),
            version: version.into(),
            message: message.into(),
        });
    }
}

/// Counts live sessions down when a stream ends.
struct Guard(watch::Sender<usize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The only token [`FakeSource`] accepts.
const TOKEN: &str = "good-token";

struct FakeSource {
    resources: watch::Receiver<SharedResources>,
    refusal: Option<Status>,
    reporter: Arc<Reporter>,
    live: watch::Sender<usize>,
    /// Set to end every session with that status.
    end: watch::Receiver<Option<Status>>,
}

#[async_trait]
impl ConfigSource for FakeSource {
    type Peer = String;

    async fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> Result<String, Status> {
        match bearer_token(metadata) {
            Ok(Some(TOKEN)) => Ok(TOKEN.to_string()),
            Ok(Some(_)) => Err(Status::unauthenticated("bad token")),
            Ok(None) => Err(Status::unauthenticated("no token")),
            Err(e) => Err(Status::unauthenticated(e)),
        }
    }

    async fn connect(&self, node: &Node, peer: &String) -> Result<ProxySession, Status> {
        assert_eq!(peer, TOKEN, "connect sees what authenticate proved");
        if let Some(status) = &self.refusal {
            return Err(status.clone());
        }
        let id = ProxyId::parse(&node.id).map_err(Status::invalid_argument)?;
        self.live.send_modify(|n| *n += 1);
        let mut end = self.end.clone();
        Ok(ProxySession {
            id,
            resources: self.resources.clone(),
            reporter: self.reporter.clone(),
            guard: Box::new(Guard(self.live.clone())),
            ended: Box::pin(async move {
                let status = end.wait_for(Option::is_some).await.ok().and_then(|s| s.clone());
                match status {
                    Some(s) => s,
                    None => std::future::pending().await,
                }
            }),
        })
    }
}

/// An ADS client whose calls carry `authorization: Bearer <token>`.
type Client = AggregatedDiscoveryServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status>,
    >,
>;

fn with_token(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(req)
}

/// What a test holds: the resources it changes, the reports it reads, the
/// live session count, and a client.
struct Harness {
    resources: watch::Sender<SharedResources>,
    reports: mpsc::UnboundedReceiver<Report>,
    live: watch::Receiver<usize>,
    client: Client,
    /// A client that presents no credentials.
    anonymous: AggregatedDiscoveryServiceClient<Channel>,
    end: watch::Sender<Option<Status>>,
}

impl Harness {
    async fn start(initial: ResourceSet) -> Harness {
        Self::start_with(initial, None, AdsConfig::default()).await
    }

    async fn start_with(initial: ResourceSet, refusal: Option<Status>, config: AdsConfig) -> Harness {
        let (resources, rx) = watch::channel(Arc::new(initial));
        let (report_tx, reports) = mpsc::unbounded_channel();
        let (live_tx, live) = watch::channel(0);
        let (end, end_rx) = watch::channel(None);
        let source = FakeSource {
            resources: rx,
            refusal,
            reporter: Arc::new(Reporter(report_tx)),
            live: live_tx,
            end: end_rx,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let service = AdsServer::with_config(Arc::new(source), config).into_service();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = AggregatedDiscoveryServiceClient::with_interceptor(channel.clone(), with_token as fn(_) -> _);
        Harness {
            resources,
            reports,
            live,
            client,
            anonymous: AggregatedDiscoveryServiceClient::new(channel),
            end,
        }
    }

    fn set(&self, s: ResourceSet) {
        self.resources.send_replace(Arc::new(s));
    }

    async fn sotw(&mut self) -> Stream<DiscoveryRequest, DiscoveryResponse> {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap();
        Stream {
            tx,
            rx: responses.into_inner(),
        }
    }

    async fn delta(&mut self) -> Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap();
        Stream {
            tx,
            rx: responses.into_inner(),
        }
    }

    async fn report(&mut self) -> Report {
        timeout(DEADLINE, self.reports.recv())
            .await
            .expect("no ACK/NACK report before the deadline")
            .expect("reporter gone")
    }

    async fn wait_live(&mut self, n: usize) {
        let reached = timeout(DEADLINE, self.live.wait_for(|v| *v == n)).await.is_ok();
        assert!(reached, "live sessions never became {n}: {}", *self.live.borrow());
    }
}

struct Stream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

impl<Req, Resp: std::fmt::Debug> Stream<Req, Resp> {
    async fn send(&self, req: Req) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> Resp {
        match timeout(DEADLINE, self.rx.message()).await {
            Err(_) => panic!("no response before the deadline"),
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("expected a response, got {other:?}"),
        }
    }

    async fn status(&mut self) -> Status {
        match timeout(DEADLINE, self.rx.message()).await {
            Err(_) => panic!("no status before the deadline"),
            Ok(Err(status)) => status,
            Ok(other) => panic!("expected an error status, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- data

fn node() -> Node {
    Node {
        id: "default.web".into(),
        ..Default::default()
    }
}

fn cluster(name: &str, tag: &str) -> Cluster {
    Cluster {
        name: name.into(),
        alt_stat_name: tag.into(),
        ..Default::default()
    }
}

/// Clusters, each with a content tag.
fn clusters(entries: &[(&str, &str)]) -> ResourceSet {
    let mut s = ResourceSet::new();
    for (name, tag) in entries {
        s.insert(CLUSTER, name, &cluster(name, tag));
    }
    s
}

/// One resource of each type; all but the endpoints carry content tag `tag`.
fn all_types(tag: &str) -> ResourceSet {
    let mut s = clusters(&[("web", tag)]);
    // Endpoints keep their content: only the other types change.
    s.insert(
        ENDPOINT,
        "web",
        &ClusterLoadAssignment {
            cluster_name: "web".into(),
            ..Default::default()
        },
    );
    s.insert(
        LISTENER,
        "web:8080",
        &Listener {
            name: "web:8080".into(),
            stat_prefix: tag.into(),
            ..Default::default()
        },
    );
    s.insert(
        ROUTE,
        "web",
        &RouteConfiguration {
            name: "web".into(),
            internal_only_headers: vec![tag.into()],
            ..Default::default()
        },
    );
    s
}

fn sotw_req(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn sotw_first(type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node()),
        ..sotw_req(type_url, names, "")
    }
}

fn ack_of(r: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: r.version_info.clone(),
        ..sotw_req(&r.type_url, names, &r.nonce)
    }
}

fn error(message: &str) -> rpc::Status {
    rpc::Status {
        code: Code::InvalidArgument as i32,
        message: message.into(),
        details: vec![],
    }
}

fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|any| <Cluster as prost::Message>::decode(&*any.value).unwrap().name)
        .collect()
}

fn delta_req(type_url: &str, subscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

// ---------------------------------------------------------------- credentials

#[tokio::test]
async fn streams_without_valid_credentials_end_before_any_request() {
    let mut h = Harness::start(clusters(&[("a", "1")])).await;
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    let status = h
        .anonymous
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "no token");
    let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", "Basic abc".parse().unwrap());
    let status = h.anonymous.delta_aggregated_resources(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("Bearer"), "{status:?}");
    assert_eq!(*h.live.borrow(), 0, "no session was made");
    // With the token the same server serves.
    let mut s = h.sotw().await;
    s.send(sotw_first(CLUSTER, &[])).await;
    assert_eq!(cluster_names(&s.recv().await), ["a"]);
}

#[tokio::test]
async fn the_node_id_cannot_change_within_a_stream() {
    let mut h = Harness::start(clusters(&[("a", "1")])).await;
    let mut s = h.sotw().await;
    s.send(sotw_first(CLUSTER, &[])).await;
    let r = s.recv().await;
    // Repeating the node is fine.
    s.send(DiscoveryRequest {
        node: Some(node()),
        ..ack_of(&r, &[])
    })
    .await;
    s.send(DiscoveryRequest {
        node: Some(Node {
            id: "default.other".into(),
            ..Default::default()
        }),
        ..sotw_req(LISTENER, &[], "")
    })
    .await;
    let status = s.status().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("default.other"), "{status:?}");
    h.wait_live(0).await;
}

#[tokio::test]
async fn an_ended_session_closes_its_stream_with_the_reason() {
    let mut h = Harness::start(clusters(&[("a", "1")])).await;
    let mut s = h.delta().await;
    s.send(DeltaDiscoveryRequest {
        node: Some(node()),
        ..delta_req(CLUSTER, &["*"], "")
    })
    .await;
    s.recv().await;
    h.wait_live(1).await;
    h.end
        .send_replace(Some(Status::unauthenticated("the token was revoked")));
    let status = s.status().await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "the token was revoked");
    h.wait_live(0).await;
}

// ---------------------------------------------------------------- SotW

#[tokio::test]
async fn sotw_first_response_ack_change_and_nack() {
    let mut h = Harness::start(clusters(&[("a", "1"), ("b", "1")])).await;
    let mut s = h.sotw().await;
    s.send(sotw_first(CLUSTER, &[])).await;
    let r1 = s.recv().await;
    assert_eq!(r1.type_url, CLUSTER);
    assert_eq!(cluster_names(&r1), ["a", "b"]);
    assert_eq!(
        r1.version_info,
        clusters(&[("a", "1"), ("b", "1")]).type_version(CLUSTER)
    );

    // ACK: recorded, and nothing is sent again.
    s.send(ack_of(&r1, &[])).await;
    assert_eq!(
        h.report().await,
        Report::Acked {
            type_url: CLUSTER.into(),
            version: r1.version_info.clone()
        }
    );
    h.set(clusters(&[("a", "2"), ("b", "1")]));
    let r2 = s.recv().await;
    assert_ne!(r2.version_info, r1.version_info, "a change is a new version");
    assert_ne!(r2.nonce, r1.nonce);
    assert_eq!(cluster_names(&r2), ["a", "b"], "state of the world: all clusters");

    // NACK: reported, the rejected content is not sent again, a change is.
    s.send(DiscoveryRequest {
        version_info: r1.version_info.clone(),
        error_detail: Some(error("cluster a: bad alt_stat_name")),
        ..sotw_req(CLUSTER, &[], &r2.nonce)
    })
    .await;
    assert_eq!(
        h.report().await,
        Report::Nacked {
            type_url: CLUSTER.into(),
            version: r2.version_info.clone(),
            message: "cluster a: bad alt_stat_name".into()
        }
    );
    for _ in 0..20 {
        s.send(DiscoveryRequest {
            error_detail: Some(error("cluster a: bad alt_stat_name")),
            ..sotw_req(CLUSTER, &[], &r2.nonce)
        })
        .await;
    }
    let fixed = clusters(&[("a", "3")]);
    h.set(fixed.clone());
    let r3 = s.recv().await;
    assert_eq!(
        r3.version_info,
        fixed.type_version(CLUSTER),
        "the next message is the fix, not a resend"
    );
    assert_eq!(cluster_names(&r3), ["a"], "b is gone");
}

#[tokio::test]
async fn sotw_named_subscriptions_and_make_before_break_order() {
    let mut h = Harness::start(all_types("1")).await;
    let mut s = h.sotw().await;
    // A proxyless gRPC client: every type by name, listener first.
    let subscriptions = [
        (LISTENER, "web:8080"),
        (ROUTE, "web"),
        (CLUSTER, "web"),
        (ENDPOINT, "web"),
    ];
    let mut first = true;
    for (type_url, name) in subscriptions {
        let req = if first {
            sotw_first(type_url, &[name, "missing"])
        } else {
            sotw_req(type_url, &[name, "missing"], "")
        };
        first = false;
        s.send(req).await;
        let r = s.recv().await;
        assert_eq!(r.type_url, type_url);
        assert_eq!(r.resources.len(), 1, "only the one that exists: {r:?}");
        s.send(ack_of(&r, &[name, "missing"])).await;
        assert!(matches!(h.report().await, Report::Acked { .. }));
    }
    // Everything changes at once: clusters, endpoints, listeners, routes.
    h.set(all_types("2"));
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(s.recv().await.type_url);
    }
    assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE]);
}

#[tokio::test]
async fn unknown_type_is_ignored_without_ending_the_stream() {
    let mut h = Harness::start(clusters(&[("a", "1")])).await;
    let mut s = h.sotw().await;
    s.send(sotw_first("type.googleapis.com/envoy.service.runtime.v3.Runtime", &[]))
        .await;
    s.send(sotw_req(CLUSTER, &[], "")).await;
    let r = s.recv().await;
    assert_eq!(r.type_url, CLUSTER, "the first answer is for the known type");

    let mut d = h.delta().await;
    d.send(DeltaDiscoveryRequest {
        node: Some(node()),
        ..delta_req("type.googleapis.com/envoy.config.route.v3.VirtualHost", &["x"], "")
    })
    .await;
    d.send(delta_req(CLUSTER, &[], "")).await;
    assert_eq!(d.recv().await.type_url, CLUSTER);
}

#[tokio::test]
async fn too_many_names_are_refused() {
    let config = AdsConfig {
        max_resource_names: 10,
        ..AdsConfig::default()
    };
    let mut h = Harness::start_with(clusters(&[]), None, config).await;
    let names: Vec<String> = (0..11).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();

    let mut s = h.sotw().await;
    s.send(sotw_first(CLUSTER, &names)).await;
    let status = s.status().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("11 resource names"), "{status:?}");

    let mut d = h.delta().await;
    d.send(DeltaDiscoveryRequest {
        node: Some(node()),
        ..delta_req(CLUSTER, &names, "")
    })
    .await;
    assert_eq!(d.status().await.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn refusal_from_the_source_reaches_the_client_as_is() {
    let refusal = Status::permission_denied("dataplane default.web is not registered");
    let mut h = Harness::start_with(clusters(&[]), Some(refusal), AdsConfig::default()).await;
    let mut s = h.sotw().await;
    s.send(sotw_first(CLUSTER, &[])).await;
    let status = s.status().await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "dataplane default.web is not registered");

    let mut d = h.delta().await;
    d.send(DeltaDiscoveryRequest {
        node: Some(node()),
        ..delta_req(CLUSTER, &[], "")
    })
    .await;
    let status = d.status().await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "dataplane default.web is not registered");
}

#[tokio::test]
async fn a_first_request_without_node_is_invalid() {
    let mut h = Harness::start(clusters(&[])).await;
    let mut s = h.sotw().await;
    s.send(sotw_req(CLUSTER, &[], "")).await;
    let status = s.status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("node"), "{status:?}");
}

#[tokio::test]
async fn stream_ends_when_the_client_goes_away_or_the_source_closes() {
    let mut h = Harness::start(clusters(&[("a", "1")])).await;
    let mut s = h.sotw().await;
    s.send(sotw_first(CLUSTER, &[])).await;
    s.recv().await;
    h.wait_live(1).await;
    drop(s);
    h.wait_live(0).await;

    let mut s = h.sotw().await;
    s.send(sotw_first(CLUSTER, &[])).await;
    s.recv().await;
    let Harness { resources, .. } = h;
    drop(resources);
    assert_eq!(s.status().await.code(), Code::Unavailable);
}

// ---------------------------------------------------------------- delta

#[tokio::test]
async fn delta_first_response_ack_change_removal_and_nack() {
    let mut h = Harness::start(clusters(&[("a", "1"), ("b", "1")])).await;
    let mut d = h.delta().await;
    d.send(DeltaDiscoveryRequest {
        node: Some(node()),
        ..delta_req(CLUSTER, &["*"], "")
    })
    .await;
    let r1 = d.recv().await;
    assert_eq!(delta_names(&r1), ["a", "b"]);
    d.send(delta_req(CLUSTER, &[], &r1.nonce)).await;
    assert_eq!(
        h.report().await,
        Report::Acked {
            type_url: CLUSTER.into(),
            version: r1.system_version_info.clone()
        }
    );

    h.set(clusters(&[("b", "2"), ("c", "1")]));
    let r2 = d.recv().await;
    assert_eq!(delta_names(&r2), ["b", "c"], "only what changed");
    assert_eq!(r2.removed_resources, ["a"]);

    d.send(DeltaDiscoveryRequest {
        error_detail: Some(error("cluster c is invalid")),
        ..delta_req(CLUSTER, &[], &r2.nonce)
    })
    .await;
    assert!(matches!(h.report().await, Report::Nacked { message, .. } if message == "cluster c is invalid"));
    h.set(clusters(&[("b", "2"), ("c", "2")]));
    let r3 = d.recv().await;
    assert_eq!(delta_names(&r3), ["c"], "the next message is the fix, not a resend");
    assert!(r3.removed_resources.is_empty());
}

#[tokio::test]
async fn delta_resume_sends_only_the_difference() {
    let mut h = Harness::start(clusters(&[("a", "1"), ("b", "1"), ("c", "1")])).await;
    let mut d = h.delta().await;
    d.send(DeltaDiscoveryRequest {
        node: Some(node()),
        ..delta_req(CLUSTER, &[], "")
    })
    .await;
    let r1 = d.recv().await;
    let held: std::collections::HashMap<String, String> = r1
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert_eq!(held.len(), 3);
    drop(d);
    h.wait_live(0).await;

    // While the proxy is away: a unchanged, b changed, c gone, d new.
    h.set(clusters(&[("a", "1"), ("b", "2"), ("d", "1")]));
    let mut d = h.delta().await;
    d.send(DeltaDiscoveryRequest {
        node: Some(node()),
        initial_resource_versions: held,
        ..delta_req(CLUSTER, &["*"], "")
    })
    .await;
    let r2 = d.recv().await;
    assert_eq!(delta_names(&r2), ["b", "d"]);
    assert_eq!(r2.removed_resources, ["c"]);
}

// ---------------------------------------------------------------- the loop

/// A proxy that does not read: the loop blocks on the bounded channel and
/// holds only the latest resources, so what finally arrives is at most what
/// was queued, what was being sent, and the latest.
#[tokio::test]
async fn a_proxy_that_does_not_read_gets_the_latest_not_every_change() {
    let (resources, rx) = watch::channel(Arc::new(clusters(&[("a", "0")])));
    let (report_tx, _reports) = mpsc::unbounded_channel();
    let (live, _live_rx) = watch::channel(0);
    let (_end, end) = watch::channel(None);
    let source = Arc::new(FakeSource {
        resources: rx,
        refusal: None,
        reporter: Arc::new(Reporter(report_tx)),
        live,
        end,
    });
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (tx, mut out) = mpsc::channel(1);
    let config = AdsConfig {
        channel_capacity: 1,
        ..AdsConfig::default()
    };
    let task = tokio::spawn(serve_stream::<SotwState, _, _>(
        source,
        TOKEN.to_string(),
        config,
        Default::default(),
        UnboundedReceiverStream::new(req_rx).map(Ok),
        tx,
    ));
    req_tx.send(sotw_first(CLUSTER, &[])).unwrap();
    for i in 1..=200 {
        resources.send_replace(Arc::new(clusters(&[("a", &i.to_string())])));
    }
    let latest = clusters(&[("a", "200")]).type_version(CLUSTER);
    let mut received = 0;
    loop {
        let r = timeout(DEADLINE, out.recv())
            .await
            .expect("no response before the deadline")
            .expect("stream ended")
            .expect("error status");
        received += 1;
        if r.version_info == latest {
            break;
        }
    }
    assert!(received <= 3, "{received} responses for 200 changes");
    drop(out);
    timeout(DEADLINE, task)
        .await
        .expect("the loop ends when the proxy goes")
        .unwrap();
}
