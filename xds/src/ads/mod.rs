//! The zone's Aggregated Discovery Service: state of the world
//! ([`sotw::SotwState`]) and incremental ([`delta::DeltaState`]) over one
//! stream loop.
//!
//! A stream's credentials are checked by [`ConfigSource::authenticate`] when
//! it opens; a refusal ends it before any request is read. The proxy is
//! admitted through [`ConfigSource::connect`] on the first request (which
//! must carry `node`; later requests may repeat it but not change it), then
//! served from the watch the source returns until the stream ends or the
//! session does (a revoked or expired credential). The loop knows nothing of the protocol: it hands requests to the
//! per-stream state, reports ACKs and NACKs, and sends what the state says is
//! due against the latest resource set. It holds only that latest set (the
//! watch coalesces changes) and sends through a bounded channel, so a proxy
//! that stops reading stalls its own stream and costs no more memory.

pub mod delta;
pub mod sotw;

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::metrics::{code_name, type_label, CodeLabel, TypeLabel, XdsMetrics};
use crate::resources::{hash_hex, ResourceSet, SharedResources, TYPES_IN_ORDER};
use crate::source::ConfigSource;

pub use delta::DeltaState;
pub use sotw::{SotwState, Subscription};

/// The name that subscribes to every resource of a type.
pub const WILDCARD: &str = "*";

/// Limits of the ADS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdsConfig {
    /// Most resource names in one request, and (delta) subscribed per type.
    pub max_resource_names: usize,
    /// Responses queued per stream before the stream waits for the proxy to
    /// read. Keep it at least the number of served types, so one change of
    /// everything is queued at once.
    pub channel_capacity: usize,
}

impl Default for AdsConfig {
    fn default() -> Self {
        AdsConfig {
            max_resource_names: 10_000,
            channel_capacity: TYPES_IN_ORDER.len(),
        }
    }
}

/// Why a stream ends with an error.
#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    /// The first request of a stream has no `node`.
    #[error("the first request of an ADS stream must carry node")]
    MissingNode,
    /// A request names more resources than allowed.
    #[error("{count} resource names for {type_url} (at most {max})")]
    TooManyNames { type_url: String, count: usize, max: usize },
    /// The config source refused the proxy; its status goes back as is.
    #[error("proxy refused: {}", .0.message())]
    Refused(Status),
    /// Reading from the proxy failed.
    #[error("receiving from the proxy: {}", .0.message())]
    Receive(Status),
    /// The config source stopped serving this proxy.
    #[error("the configuration of this proxy is no longer served")]
    SourceClosed,
    /// A later request names another node than the first.
    #[error("the node id cannot change within a stream: it was {first:?}, a request named {now:?}")]
    NodeChanged { first: String, now: String },
    /// The session ended (its credential expired or was revoked).
    #[error("{}", .0.message())]
    Ended(Status),
}

impl From<AdsError> for Status {
    fn from(e: AdsError) -> Status {
        match e {
            AdsError::Refused(status) | AdsError::Receive(status) | AdsError::Ended(status) => status,
            AdsError::NodeChanged { .. } => Status::permission_denied(e.to_string()),
            AdsError::MissingNode | AdsError::TooManyNames { .. } => Status::invalid_argument(e.to_string()),
            AdsError::SourceClosed => Status::unavailable(e.to_string()),
        }
    }
}

/// What one request meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A subscription (first request of a type, or a change) without answer.
    Request { type_url: String },
    /// The proxy applied the response of `version`.
    Acked { type_url: String, version: String },
    /// The proxy rejected the response of `version`.
    Nacked {
        type_url: String,
        version: String,
        message: String,
    },
    /// The nonce is not the latest sent: no ACK or NACK, but the
    /// subscription applied.
    StaleNonce { type_url: String, nonce: String },
    /// A type Meridian does not serve: ignored.
    UnknownType { type_url: String },
}

/// One flavour of ADS as the stream loop sees it.
pub trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// For logs: `sotw` or `delta`.
    const KIND: &'static str;

    fn new(max_names: usize) -> Self;
    fn node(req: &Self::Request) -> Option<&Node>;
    fn on_request(&mut self, req: Self::Request) -> Result<Outcome, AdsError>;
    /// The responses due against `resources`. Called again with the same
    /// set (same `Arc`), only types touched by requests since are looked at.
    fn responses(&mut self, resources: &SharedResources) -> Vec<Self::Response>;
    /// The type URL a response carries.
    fn type_url(resp: &Self::Response) -> &str;
}

/// Whether Meridian serves a type URL.
pub fn is_served(type_url: &str) -> bool {
    TYPES_IN_ORDER.contains(&type_url)
}

/// A version of exactly these resources (name, content version), in name
/// order; for all resources of a type it equals [`ResourceSet::type_version`].
pub fn content_version<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut bytes = Vec::new();
    for (name, version) in entries {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(version.as_bytes());
        bytes.push(0);
    }
    hash_hex(&bytes)
}

/// Nonces unique within a stream.
#[derive(Debug, Default)]
struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

/// The ADS gRPC service over a [`ConfigSource`].
pub struct AdsServer<S: ConfigSource> {
    source: Arc<S>,
    config: AdsConfig,
    metrics: Arc<XdsMetrics>,
}

impl<S: ConfigSource> AdsServer<S> {
    pub fn new(source: Arc<S>) -> Self {
        Self::with_config(source, AdsConfig::default())
    }

    pub fn with_config(source: Arc<S>, config: AdsConfig) -> Self {
        AdsServer {
            source,
            config,
            metrics: Arc::default(),
        }
    }

    /// Counts responses, ACKs, NACKs and refusals into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<XdsMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// Authenticates the stream, then serves it in a task of its own.
    async fn start<P, I>(
        &self,
        addr: Option<std::net::SocketAddr>,
        metadata: &tonic::metadata::MetadataMap,
        incoming: I,
    ) -> Result<ReceiverStream<Result<P::Response, Status>>, Status>
    where
        P: Protocol,
        I: Stream<Item = Result<P::Request, Status>> + Unpin + Send + 'static,
    {
        let addr = addr.map(|a| a.to_string()).unwrap_or_default();
        let peer = match self.source.authenticate(metadata).await {
            Ok(peer) => peer,
            Err(status) => {
                tracing::info!(protocol = P::KIND, peer = %addr, reason = status.message(), "stream refused");
                self.metrics
                    .refused
                    .get_or_create(&CodeLabel {
                        code: code_name(status.code()),
                    })
                    .inc();
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(self.config.channel_capacity.max(1));
        let span = tracing::info_span!("ads", protocol = P::KIND, peer = %addr, node = tracing::field::Empty);
        tokio::spawn(
            serve_stream::<P, S, I>(
                self.source.clone(),
                peer,
                self.config.clone(),
                self.metrics.clone(),
                incoming,
                tx,
            )
            .instrument(span),
        );
        Ok(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl<S: ConfigSource> AggregatedDiscoveryService for AdsServer<S> {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let addr = request.remote_addr();
        let metadata = request.metadata().clone();
        Ok(Response::new(
            self.start::<SotwState, _>(addr, &metadata, request.into_inner())
                .await?,
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let addr = request.remote_addr();
        let metadata = request.metadata().clone();
        Ok(Response::new(
            self.start::<DeltaState, _>(addr, &metadata, request.into_inner())
                .await?,
        ))
    }
}

/// Runs one stream to its end; an error goes to the proxy as the stream's
/// status.
pub async fn serve_stream<P, S, I>(
    source: Arc<S>,
    peer: S::Peer,
    config: AdsConfig,
    metrics: Arc<XdsMetrics>,
    incoming: I,
    tx: mpsc::Sender<Result<P::Response, Status>>,
) where
    P: Protocol,
    S: ConfigSource,
    I: Stream<Item = Result<P::Request, Status>> + Unpin + Send,
{
    match run::<P, S, I>(&*source, &peer, &config, &metrics, incoming, &tx).await {
        Ok(()) => tracing::debug!("stream ended"),
        Err(e) => {
            tracing::info!(error = %e, "stream ended with an error");
            // Fails only if the proxy is gone, which ends the stream too.
            let _ = tx.send(Err(e.into())).await;
        }
    }
}

async fn run<P, S, I>(
    source: &S,
    peer: &S::Peer,
    config: &AdsConfig,
    metrics: &XdsMetrics,
    mut incoming: I,
    tx: &mpsc::Sender<Result<P::Response, Status>>,
) -> Result<(), AdsError>
where
    P: Protocol,
    S: ConfigSource,
    I: Stream<Item = Result<P::Request, Status>> + Unpin + Send,
{
    let first = match incoming.next().await {
        None => return Ok(()),
        Some(Err(status)) => return Err(AdsError::Receive(status)),
        Some(Ok(req)) => req,
    };
    let node = P::node(&first).ok_or(AdsError::MissingNode)?;
    tracing::Span::current().record("node", node.id.as_str());
    let node_id = node.id.clone();
    let mut session = match source.connect(node, peer).await {
        Ok(session) => session,
        Err(status) => {
            metrics
                .refused
                .get_or_create(&CodeLabel {
                    code: code_name(status.code()),
                })
                .inc();
            return Err(AdsError::Refused(status));
        }
    };
    tracing::info!(proxy = %session.id, "proxy connected");
    let reporter = session.reporter.clone();
    let mut watch = session.resources.clone();
    let mut current = watch.borrow_and_update().clone();
    let mut state = P::new(config.max_resource_names);
    let mut unknown = UnknownTypes::default();
    let mut next = Some(first);
    let mut in_flight = InFlight::default();

    loop {
        if let Some(req) = next.take() {
            if let Some(now) = P::node(&req).filter(|n| !n.id.is_empty() && n.id != node_id) {
                return Err(AdsError::NodeChanged {
                    first: node_id,
                    now: now.id.clone(),
                });
            }
            match state.on_request(req)? {
                Outcome::Request { type_url } => tracing::debug!(%type_url, "request"),
                Outcome::Acked { type_url, version } => {
                    tracing::debug!(%type_url, %version, "ACK");
                    in_flight.answered(metrics, &type_url, &metrics.responses_acked);
                    reporter.acked(&type_url, &version);
                }
                Outcome::Nacked {
                    type_url,
                    version,
                    message,
                } => {
                    tracing::warn!(proxy = %session.id, %type_url, %version, %message, "proxy rejected configuration (NACK)");
                    in_flight.answered(metrics, &type_url, &metrics.responses_nacked);
                    reporter.nacked(&type_url, &version, &message);
                }
                Outcome::StaleNonce { type_url, nonce } => {
                    tracing::debug!(%type_url, %nonce, "request with a stale nonce: subscription only")
                }
                Outcome::UnknownType { type_url } => unknown.log(&type_url),
            }
        }
        for response in state.responses(&current) {
            let label = type_label(P::type_url(&response));
            if tx.send(Ok(response)).await.is_err() {
                return Ok(());
            }
            in_flight.sent(metrics, label);
        }
        tokio::select! {
            msg = incoming.next() => match msg {
                None => return Ok(()),
                Some(Err(status)) => return Err(AdsError::Receive(status)),
                Some(Ok(req)) => next = Some(req),
            },
            changed = watch.changed() => {
                if changed.is_err() {
                    return Err(AdsError::SourceClosed);
                }
                current = watch.borrow_and_update().clone();
            }
            () = tx.closed() => return Ok(()),
            status = &mut session.ended => return Err(AdsError::Ended(status)),
        }
    }
}

/// When the latest response of each served type went out, until the
/// proxy's ACK or NACK of that type: the push → ACK time of the metrics.
#[derive(Default)]
struct InFlight(std::collections::HashMap<&'static str, Instant>);

impl InFlight {
    fn sent(&mut self, metrics: &XdsMetrics, label: Option<TypeLabel>) {
        if let Some(label) = label {
            metrics.responses_sent.get_or_create(&label).inc();
            self.0.insert(label.r#type, Instant::now());
        }
    }

    fn answered(&mut self, metrics: &XdsMetrics, type_url: &str, counter: &Family<TypeLabel, Counter>) {
        let Some(label) = type_label(type_url) else { return };
        counter.get_or_create(&label).inc();
        if let Some(sent) = self.0.remove(label.r#type) {
            metrics
                .push_ack
                .get_or_create(&label)
                .observe(sent.elapsed().as_secs_f64());
        }
    }
}

/// Logs an unknown type once per stream (a bounded number of them), so a
/// proxy cannot flood the log.
#[derive(Default)]
struct UnknownTypes(std::collections::BTreeSet<String>);

impl UnknownTypes {
    const MAX: usize = 16;

    fn log(&mut self, type_url: &str) {
        if self.0.len() < Self::MAX && self.0.insert(type_url.to_string()) {
            tracing::warn!(%type_url, "request for a type Meridian does not serve: ignored");
        } else {
            tracing::debug!(%type_url, "request for a type Meridian does not serve: ignored");
        }
    }
}

/// Name → version of what of `type_url` a subscription covers in
/// `resources`: everything under a wildcard, else the named resources that
/// exist.
pub(crate) fn covered<'a>(
    wildcard: bool,
    names: &std::collections::BTreeSet<String>,
    resources: &'a ResourceSet,
    type_url: &str,
) -> std::collections::BTreeMap<&'a str, &'a str> {
    if wildcard {
        resources
            .of_type(type_url)
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect()
    } else {
        names
            .iter()
            .filter_map(|n| resources.get(type_url, n))
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

    use crate::resources::{ResourceSet, SharedResources, CLUSTER, ENDPOINT, LISTENER, ROUTE};

    /// A resource set from (type, name, content tag): a different tag is a
    /// different content version.
    pub fn set(entries: &[(&str, &str, &str)]) -> SharedResources {
        let mut set = ResourceSet::new();
        for (type_url, name, tag) in entries {
            let (name, tag) = (name.to_string(), tag.to_string());
            match *type_url {
                CLUSTER => set.insert(
                    CLUSTER,
                    &name,
                    &Cluster {
                        name: name.clone(),
                        alt_stat_name: tag,
                        ..Default::default()
                    },
                ),
                ENDPOINT => set.insert(
                    ENDPOINT,
                    &name,
                    &ClusterLoadAssignment {
                        cluster_name: format!("{name}/{tag}"),
                        ..Default::default()
                    },
                ),
                LISTENER => set.insert(
                    LISTENER,
                    &name,
                    &Listener {
                        name: name.clone(),
                        stat_prefix: tag,
                        ..Default::default()
                    },
                ),
                ROUTE => set.insert(
                    ROUTE,
                    &name,
                    &RouteConfiguration {
                        name: name.clone(),
                        internal_only_headers: vec![tag],
                        ..Default::default()
                    },
                ),
                other => panic!("no test message for {other}"),
            }
        }
        std::sync::Arc::new(set)
    }

    pub fn nack_status(message: &str) -> envoy_types::pb::google::rpc::Status {
        envoy_types::pb::google::rpc::Status {
            code: 3,
            message: message.to_string(),
            details: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::set;
    use super::*;
    use crate::resources::{CLUSTER, LISTENER};

    #[test]
    fn content_version_of_a_whole_type_is_its_type_version() {
        let s = set(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1"), (LISTENER, "l", "1")]);
        let all = content_version(s.of_type(CLUSTER).map(|r| (r.name.as_str(), r.version.as_str())));
        assert_eq!(all, s.type_version(CLUSTER));
    }

    #[test]
    fn errors_map_to_statuses() {
        let too_many = Status::from(AdsError::TooManyNames {
            type_url: CLUSTER.into(),
            count: 11,
            max: 10,
        });
        assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
        assert_eq!(Status::from(AdsError::MissingNode).code(), tonic::Code::InvalidArgument);
        let refused = Status::from(AdsError::Refused(Status::not_found("no dataplane default.web")));
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert_eq!(refused.message(), "no dataplane default.web");
        assert_eq!(Status::from(AdsError::SourceClosed).code(), tonic::Code::Unavailable);
    }
}
