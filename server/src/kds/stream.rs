//! The KDS stream loops: plumbing between gRPC streams, the cache and the
//! [`SenderState`](super::sender::SenderState) / an [`Inbound`]. They know
//! nothing about which side they run on.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use meridian_core::{ResourceKey, ResourceType};
use meridian_proto as pb;
use meridian_store::cache::Cache;
use meridian_store::{Event, Filter};
use tokio::sync::{broadcast, mpsc};

use super::sender::SenderState;
use super::wire::{kind_of, parse_wire_name, type_url, wire_name, WireResource};
use super::{Inbound, Outbound, StreamObserver};

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer closed or reset the stream, or sent garbage.
    #[error("peer: {0}")]
    Peer(String),
    /// The peer used the protocol wrongly (unknown type).
    #[error("protocol: {0}")]
    Protocol(String),
    /// Our outgoing side closed.
    #[error("stream closed")]
    Closed,
}

/// Default cap on the size of one response.
pub const MAX_MESSAGE_BYTES: usize = 3 * 1024 * 1024;

fn current_names(cache: &Cache, outbound: &dyn Outbound, kind: ResourceType) -> Vec<String> {
    cache
        .list(&Filter::kind(kind))
        .iter()
        .filter_map(|r| outbound.export(r).map(|w| w.wire_name()))
        .collect()
}

fn lookup(cache: &Cache, outbound: &dyn Outbound, kind: ResourceType, wire: &str) -> Option<pb::Resource> {
    let (mesh, name) = parse_wire_name(kind, wire).ok()?;
    let r = cache.get(&ResourceKey { kind, mesh, name })?;
    outbound.export(&r).map(|w| w.to_proto())
}

/// Serves one stream as the sender: answers subscriptions from `incoming`
/// with responses on `out`, following `cache`. Returns when either side
/// closes.
pub async fn run_sender<S>(
    mut incoming: S,
    out: mpsc::Sender<pb::DeltaResponse>,
    cache: Arc<Cache>,
    outbound: Arc<dyn Outbound>,
    observer: Arc<dyn StreamObserver>,
    max_message_bytes: usize,
) -> Result<(), StreamError>
where
    S: Stream<Item = Result<pb::DeltaRequest, tonic::Status>> + Unpin,
{
    let mut state = SenderState::new(outbound.types(), max_message_bytes);
    let mut events = cache.subscribe();
    loop {
        // Send whatever can go now.
        while state.has_work() {
            let Some(resp) = state.next_response(&|k, n| lookup(&cache, outbound.as_ref(), k, n)) else {
                break;
            };
            let kind = kind_of(&resp.type_url);
            let n = resp.resources.len() + resp.removed_resources.len();
            out.send(resp).await.map_err(|_| StreamError::Closed)?;
            if let Some(kind) = kind {
                observer.sent(kind, n);
            }
        }
        tokio::select! {
            req = incoming.next() => {
                let req = match req {
                    None => return Ok(()),
                    Some(Err(status)) => return Err(StreamError::Peer(status.message().to_string())),
                    Some(Ok(req)) => req,
                };
                let names = |k| current_names(&cache, outbound.as_ref(), k);
                let outcome = state
                    .on_request(&req, &names)
                    .map_err(|e| StreamError::Protocol(e.to_string()))?;
                if let Some(kind) = outcome.kind {
                    if outcome.applied > 0 || (!req.response_nonce.is_empty() && outcome.rejected.is_empty() && outcome.error.is_none()) {
                        observer.acked(kind, outcome.applied);
                    }
                    for (name, msg) in &outcome.rejected {
                        observer.rejected(kind, &format!("{name}: {msg}"));
                    }
                    if let Some(e) = &outcome.error {
                        observer.rejected(kind, e);
                    }
                }
            }
            ev = events.recv() => match ev {
                Ok(Event::Put(r)) => {
                    state.on_change(r.key.kind, &wire_name(r.key.mesh.as_deref(), &r.key.name));
                    for (kind, name) in outbound.related(&r.key) {
                        state.on_change(kind, &name);
                    }
                }
                Ok(Event::Delete { key, .. }) => {
                    state.on_delete(key.kind, &wire_name(key.mesh.as_deref(), &key.name));
                    for (kind, name) in outbound.related(&key) {
                        state.on_change(kind, &name);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    state.on_resync(&|k| current_names(&cache, outbound.as_ref(), k));
                }
                Err(broadcast::error::RecvError::Closed) => return Err(StreamError::Closed),
            },
        }
    }
}

/// Receives on one stream: subscribes to every type of `inbound` with what
/// it holds, then applies each response and acknowledges it.
pub async fn run_receiver<S>(
    mut incoming: S,
    out: mpsc::Sender<pb::DeltaRequest>,
    inbound: Arc<dyn Inbound>,
    node: pb::Node,
) -> Result<(), StreamError>
where
    S: Stream<Item = Result<pb::DeltaResponse, tonic::Status>> + Unpin,
{
    let mut node = Some(node);
    let subscribe = |node: Option<pb::Node>, kind: ResourceType| pb::DeltaRequest {
        node,
        type_url: type_url(kind),
        initial_resource_versions: inbound.held(kind).into_iter().collect(),
        ..Default::default()
    };
    for kind in inbound.types() {
        out.send(subscribe(node.take(), kind))
            .await
            .map_err(|_| StreamError::Closed)?;
    }
    let subscribed = inbound.types();
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC_INTERVAL, RESYNC_INTERVAL);
    loop {
        tokio::select! {
            resp = incoming.next() => {
                let Some(resp) = resp else { return Ok(()) };
                let resp = resp.map_err(|s| StreamError::Peer(s.message().to_string()))?;
                let ack = apply_response(inbound.as_ref(), &subscribed, resp).await;
                out.send(ack).await.map_err(|_| StreamError::Closed)?;
            }
            _ = resync.tick() => {
                // Anti-entropy: subscribe again with what this side holds, so
                // the sender recomputes the difference from the truth. Any
                // divergence (a missed change, a race between a mesh removal
                // and its re-creation) lasts at most one interval; when in
                // sync, the cost is one request per type.
                for kind in &subscribed {
                    out.send(subscribe(None, *kind)).await.map_err(|_| StreamError::Closed)?;
                }
            }
        }
    }
}

/// How often a receiver re-subscribes with what it holds. Each
/// re-subscription carries every version the receiver holds and the sender
/// compares them all (measured: ~180 ms CPU and 580 KiB per zone at 10,000
/// resources), so this is a safety net, not a sync mechanism.
pub const RESYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Applies one response and builds its ACK (with per-resource rejections)
/// or NACK (the whole response refused).
pub async fn apply_response(
    inbound: &dyn Inbound,
    subscribed: &[ResourceType],
    resp: pb::DeltaResponse,
) -> pb::DeltaRequest {
    let mut ack = pb::DeltaRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    };
    let Some(kind) = kind_of(&resp.type_url).filter(|k| subscribed.contains(k)) else {
        ack.error_message = format!("type {:?} is not accepted on this stream", resp.type_url);
        return ack;
    };
    for r in &resp.resources {
        let result = match WireResource::from_proto(kind, r) {
            Ok(w) => inbound.upsert(w).await,
            Err(e) => Err(e),
        };
        if let Err(message) = result {
            tracing::warn!(kind = %kind, name = %r.name, %message, "rejected a synced resource");
            ack.rejected.push(pb::ResourceError {
                name: r.name.clone(),
                message,
            });
        }
    }
    for name in &resp.removed_resources {
        if let Err(message) = inbound.remove(kind, name).await {
            tracing::warn!(kind = %kind, %name, %message, "refused a synced removal");
            ack.rejected.push(pb::ResourceError {
                name: name.clone(),
                message,
            });
        }
    }
    ack
}
