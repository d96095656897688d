//! The boundary between the ADS server and the zone: what a stream's
//! credentials prove, who a proxy is (node id `<mesh>.<name>`), whether it
//! may connect, and a watch of the resources it should have. The zone
//! implements [`ConfigSource`]; tests use fakes.

use std::sync::Arc;

use async_trait::async_trait;
use envoy_types::pb::envoy::config::core::v3::Node;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::resources::SharedResources;

/// A proxy's identity: node id `<mesh>.<name>` (mesh names have no dots, so
/// the first dot separates them).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyId {
    pub mesh: String,
    pub name: String,
}

impl ProxyId {
    pub fn parse(node_id: &str) -> Result<Self, String> {
        match node_id.split_once('.') {
            Some((mesh, name)) if !mesh.is_empty() && !name.is_empty() => Ok(ProxyId {
                mesh: mesh.to_string(),
                name: name.to_string(),
            }),
            _ => Err(format!(
                "node id {node_id:?} is not of the form <mesh>.<dataplane name>"
            )),
        }
    }
}

impl std::fmt::Display for ProxyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.mesh, self.name)
    }
}

/// Hears how a proxy answers what it was sent (for insights).
pub trait AckReporter: Send + Sync + 'static {
    fn acked(&self, type_url: &str, version: &str);
    fn nacked(&self, type_url: &str, version: &str, message: &str);
}

/// An admitted proxy: its resources, and bookkeeping that ends with the stream.
pub struct ProxySession {
    pub id: ProxyId,
    /// The resources the proxy should have; changes when its config changes.
    pub resources: watch::Receiver<SharedResources>,
    pub reporter: Arc<dyn AckReporter>,
    /// Dropped when the stream ends (marks the proxy disconnected).
    pub guard: Box<dyn Send + Sync>,
    /// Completes when the proxy may no longer be served (its credential
    /// expired or was revoked), with the status that ends the stream.
    pub ended: BoxFuture<'static, tonic::Status>,
}

/// A session end that never comes, for sources without credentials.
pub fn never_ends() -> BoxFuture<'static, tonic::Status> {
    Box::pin(std::future::pending())
}

/// What the ADS server asks of the zone.
#[async_trait]
pub trait ConfigSource: Send + Sync + 'static {
    /// What a stream's credentials prove about its peer.
    type Peer: Send + Sync + 'static;

    /// Checks the credentials a stream opens with (its request metadata),
    /// before any request is read; a refusal ends the stream at once.
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Self::Peer, tonic::Status>;

    /// Admits the proxy that sent `node` on its first request, as `peer`,
    /// or refuses it with a status that says why (credentials that do not
    /// cover it, unknown dataplane, missing mesh, constraints, already
    /// connected).
    async fn connect(&self, node: &Node, peer: &Self::Peer) -> Result<ProxySession, tonic::Status>;
}

/// The bearer token of `authorization: Bearer <token>`, if the metadata has
/// one; `Err` when the header is there but not of that form.
pub fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, String> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "the authorization metadata is not ASCII".to_string())?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err("the authorization metadata must be \"Bearer <token>\"".to_string()),
    }
}
