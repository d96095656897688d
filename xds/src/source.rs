//! The boundary between the ADS server and the zone: who a proxy is (node
//! id `<mesh>.<name>`), whether it may connect, and a watch of the resources
//! it should have. The zone implements [`ConfigSource`]; tests use fakes.

use std::sync::Arc;

use async_trait::async_trait;
use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::watch;

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
}

/// What the ADS server asks of the zone.
#[async_trait]
pub trait ConfigSource: Send + Sync + 'static {
    /// Admits the proxy that sent `node` on its first request, or refuses it
    /// with a status that says why (unknown dataplane, missing mesh,
    /// constraints, already connected).
    async fn connect(&self, node: &Node) -> Result<ProxySession, tonic::Status>;
}
