//! The local xDS relay of `--proxy grpc`.
//!
//! gRPC's xDS clients cannot present a dataplane token to their xDS server:
//! @grpc/grpc-js-xds 1.14 accepts only `insecure` and `google_default`
//! channel credentials and no call credentials in its bootstrap (gRFC A97's
//! `call_creds` is not implemented there). So the application's bootstrap
//! names this relay, on a Unix socket only local processes with access to
//! the file can reach, and the relay opens the real stream to the zone: TLS,
//! the zone's CA, `authorization: Bearer <token>`, and the node pinned to the
//! agent's dataplane (its id, and its definition in the metadata so that a
//! zone that lost it registers it again).
//!
//! State of the world (what gRPC clients use) is relayed across zone
//! restarts: the relay keeps the application's latest subscription per type,
//! and when the zone's stream fails it reconnects with backoff and replays
//! them, while the application keeps its stream to the relay and its last
//! configuration. Incremental xDS is passed through as one stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Value as PbValue;
use futures::StreamExt;
use meridian_xds::client;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::zone::{self, FailureLog, Zone};

/// Who the relayed node is: its id, and metadata fields it always carries.
#[derive(Clone, Debug, Default)]
pub struct NodeIdentity {
    pub id: String,
    pub metadata: BTreeMap<String, PbValue>,
}

impl NodeIdentity {
    /// Pins `node` to this identity.
    pub fn apply(&self, node: &mut Node) {
        node.id = self.id.clone();
        let md = node.metadata.get_or_insert_with(Default::default);
        for (k, v) in &self.metadata {
            md.fields.insert(k.clone(), v.clone());
        }
    }
}

/// The relay service.
#[derive(Clone)]
pub struct Relay {
    zone: Arc<Zone>,
    node: NodeIdentity,
    max_delay: Duration,
}

impl Relay {
    pub fn new(zone: Arc<Zone>, node: NodeIdentity, max_delay: Duration) -> Self {
        Relay { zone, node, max_delay }
    }
}

/// Binds `addr` (a loopback address), then serves the relay on it until
/// `shutdown` completes, to connections of the users `allowed` (and root)
/// only. Returns the bound address and the serving task.
pub async fn serve(
    relay: Relay,
    addr: std::net::SocketAddr,
    allowed: Vec<u32>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use anyhow::Context;
    if !addr.ip().is_loopback() {
        anyhow::bail!("--xds-relay-address {addr}: the relay serves local applications only; give a loopback address");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the xDS relay to {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, zone = relay.zone.address(), allowed_uids = ?allowed, "xDS relay listening");
    let service = AggregatedDiscoveryServiceServer::new(relay).max_decoding_message_size(64 * 1024 * 1024);
    let incoming = futures::stream::unfold(
        (listener, allowed, std::collections::BTreeSet::new()),
        move |(listener, allowed, mut logged)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "the xDS relay could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let verdict = crate::peer::uid_of(local, peer);
                match verdict {
                    Ok(Some(uid)) if uid == 0 || allowed.contains(&uid) => {
                        let _ = stream.set_nodelay(true);
                        return Some((Ok::<_, std::io::Error>(stream), (listener, allowed, logged)));
                    }
                    Ok(Some(uid)) => {
                        if logged.insert(uid) {
                            tracing::warn!(uid, %peer, "refused a connection to the xDS relay from a user that is not allowed (--xds-relay-allowed-uid)");
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(%peer, "refused a connection to the xDS relay: the kernel lists no owner for it")
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "refused a connection to the xDS relay: cannot tell who opened it")
                    }
                }
            }
        },
    );
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the xDS relay failed");
        }
    });
    Ok((local, task))
}

type Down<T> = mpsc::Sender<Result<T, Status>>;

/// Records the subscription a request states.
fn record(subs: &mut BTreeMap<String, Vec<String>>, req: &DiscoveryRequest) {
    if !req.type_url.is_empty() {
        subs.insert(req.type_url.clone(), req.resource_names.clone());
    }
}

/// What ended one upstream stream.
enum Ended {
    /// The application went away: the relay stream is over.
    Downstream,
    /// The zone's stream failed (or never opened): reconnect.
    Upstream(Status),
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Relay {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = futures::stream::BoxStream<'static, Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(relay_sotw(self.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        if let Err(f) = self.zone.refresh_token() {
            return Err(Status::unavailable(f.to_string()));
        }
        let node = self.node.clone();
        let up = tokio_stream::StreamExt::map_while(request.into_inner(), |r| r.ok()).map(move |mut req| {
            if let Some(n) = req.node.as_mut() {
                node.apply(n);
            }
            req
        });
        match client::ads_client(self.zone.channel(), self.zone.bearer())
            .delta_aggregated_resources(up)
            .await
        {
            Ok(resp) => Ok(Response::new(resp.into_inner().boxed())),
            Err(status) => {
                tracing::error!("xDS relay (delta): {}", self.zone.failure(&status));
                Err(status)
            }
        }
    }
}

/// Waits `delay`, still taking the application's requests; `false` when it
/// went away meanwhile.
async fn pause(
    delay: Duration,
    down: &mut Streaming<DiscoveryRequest>,
    subs: &mut BTreeMap<String, Vec<String>>,
    tx: &Down<DiscoveryResponse>,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            d = down.message() => match d {
                Ok(Some(req)) => record(subs, &req),
                Ok(None) | Err(_) => return false,
            },
            () = tx.closed() => return false,
        }
    }
}

/// Relays one state-of-the-world stream of the application (see the module
/// docs).
async fn relay_sotw(relay: Relay, mut down: Streaming<DiscoveryRequest>, tx: Down<DiscoveryResponse>) {
    let mut subs = BTreeMap::new();
    let mut node = match down.message().await {
        Ok(Some(first)) => {
            record(&mut subs, &first);
            first.node.unwrap_or_default()
        }
        Ok(None) | Err(_) => return,
    };
    relay.node.apply(&mut node);
    let mut backoff = zone::backoff(relay.max_delay);
    let mut log = FailureLog::new("xds relay");
    loop {
        match relay_once(&relay, &node, &mut down, &mut subs, &tx, &mut log, &mut backoff).await {
            Ended::Downstream => return,
            Ended::Upstream(status) => {
                log.failed(&relay.zone.failure(&status));
            }
        }
        let delay = backoff.next_backoff().unwrap_or(relay.max_delay);
        if !pause(delay, &mut down, &mut subs, &tx).await {
            return;
        }
    }
}

/// One upstream stream: open it, replay the subscriptions, then relay both
/// ways until one side ends.
async fn relay_once(
    relay: &Relay,
    node: &Node,
    down: &mut Streaming<DiscoveryRequest>,
    subs: &mut BTreeMap<String, Vec<String>>,
    tx: &Down<DiscoveryResponse>,
    log: &mut FailureLog,
    backoff: &mut backoff::ExponentialBackoff,
) -> Ended {
    if let Err(f) = relay.zone.refresh_token() {
        log.failed(&f);
        return Ended::Upstream(Status::unavailable(f.to_string()));
    }
    let (up_tx, up_rx) = mpsc::channel(16);
    for (i, (type_url, names)) in subs.iter().enumerate() {
        let req = DiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: type_url.clone(),
            resource_names: names.clone(),
            ..Default::default()
        };
        // The channel holds 16 and there are at most a handful of types.
        if up_tx.try_send(req).is_err() {
            break;
        }
    }
    let mut client = client::ads_client(relay.zone.channel(), relay.zone.bearer());
    let call = client.stream_aggregated_resources(ReceiverStream::new(up_rx));
    tokio::pin!(call);
    let mut up = loop {
        tokio::select! {
            r = &mut call => match r {
                Ok(resp) => break resp.into_inner(),
                Err(status) => return Ended::Upstream(status),
            },
            d = down.message() => match d {
                // Not sent yet: the replay will carry it once the stream opens.
                Ok(Some(req)) => {
                    record(subs, &req);
                    let _ = up_tx.try_send(strip_node(req));
                }
                Ok(None) | Err(_) => return Ended::Downstream,
            },
        }
    };
    let mut served = false;
    loop {
        tokio::select! {
            d = down.message() => match d {
                Ok(Some(req)) => {
                    record(subs, &req);
                    if up_tx.send(strip_node(req)).await.is_err() {
                        return Ended::Upstream(Status::unavailable("the zone's stream is gone"));
                    }
                }
                Ok(None) | Err(_) => return Ended::Downstream,
            },
            u = up.message() => match u {
                Ok(Some(resp)) => {
                    if !served {
                        served = true;
                        backoff.reset();
                        log.ok("xDS stream to the zone is open");
                        tracing::debug!(zone = relay.zone.address(), "xDS stream to the zone is open");
                    }
                    if tx.send(Ok(resp)).await.is_err() {
                        return Ended::Downstream;
                    }
                }
                Ok(None) => return Ended::Upstream(Status::unavailable("the zone ended the xDS stream")),
                Err(status) => return Ended::Upstream(status),
            },
            () = tx.closed() => return Ended::Downstream,
        }
    }
}

/// Later requests need no node (the zone has it from the first, and a
/// different one would be refused).
fn strip_node(mut req: DiscoveryRequest) -> DiscoveryRequest {
    req.node = None;
    req
}
