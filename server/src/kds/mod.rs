//! KDS, the protocol between the global and the zones (DESIGN §7).
//!
//! One machinery, used in both directions:
//! - the **sender** ([`stream::run_sender`], state in [`sender::SenderState`])
//!   holds resources in its cache and answers subscriptions with deltas;
//! - the **receiver** ([`stream::run_receiver`]) subscribes with what it
//!   already holds, applies each resource on its own, and acknowledges with
//!   the per-resource rejections.
//!
//! On `GlobalToZone` the global sends and the zone receives; on
//! `ZoneToGlobal` the zone sends and the global receives. What is sent and
//! how it is applied differ per side and are given by [`Outbound`] and
//! [`Inbound`]; the global's and zone's implementations live in their crates.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_store::StoreError;

pub mod sender;
pub mod stream;
pub mod wire;

pub use wire::WireResource;

/// The KDS protocol version this build speaks. A zone sends its own in the
/// [`PROTOCOL_HEADER`] metadata of every stream; the global serves zones of
/// its version and of [`OLDEST_SERVED_PROTOCOL`] up to it, and refuses a
/// newer zone with a message naming both versions (upgrade the global
/// first). A zone without the header speaks version 1.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest zone protocol the global serves.
pub const OLDEST_SERVED_PROTOCOL: u32 = 1;
/// The metadata naming the zone's KDS protocol version.
pub const PROTOCOL_HEADER: &str = "x-meridian-kds-protocol";
/// The metadata naming the zone's build version (for messages).
pub const BUILD_HEADER: &str = "x-meridian-version";
/// The metadata naming the zone control plane process (a fresh id at every
/// start), so that the global tells a reconnect of the same zone control
/// plane from a second one running under the same zone name.
pub const ZONE_INSTANCE_HEADER: &str = "x-meridian-zone-instance";

/// Whether a global of this build serves a zone speaking `protocol`
/// (`build` is the zone's build version); the refusal names both.
pub fn check_zone_protocol(protocol: u32, build: &str) -> Result<(), String> {
    let ours = env!("CARGO_PKG_VERSION");
    if protocol > PROTOCOL_VERSION {
        return Err(format!(
            "the zone (Meridian {build}) speaks KDS protocol {protocol}, newer than this global's {PROTOCOL_VERSION} (Meridian {ours}): upgrade the global control plane first"
        ));
    }
    if protocol < OLDEST_SERVED_PROTOCOL {
        return Err(format!(
            "the zone (Meridian {build}) speaks KDS protocol {protocol}; this global (Meridian {ours}) serves {OLDEST_SERVED_PROTOCOL} to {PROTOCOL_VERSION}: upgrade the zone"
        ));
    }
    Ok(())
}

/// Types the global sends to zones.
pub fn global_to_zone_types() -> Vec<ResourceType> {
    let mut v: Vec<ResourceType> = ResourceType::ALL
        .into_iter()
        .filter(|t| t.is_synced_to_zones())
        .collect();
    v.push(ResourceType::ZoneIngress);
    v
}

/// Types zones send to the global.
pub const ZONE_TO_GLOBAL_TYPES: [ResourceType; 4] = [
    ResourceType::Dataplane,
    ResourceType::DataplaneInsight,
    ResourceType::ZoneIngress,
    ResourceType::ZoneCertificateRequest,
];

/// Labels Meridian sets on synced resources (DESIGN §3).
pub mod labels {
    pub const ORIGIN: &str = "kuma.io/origin";
    pub const ZONE: &str = "kuma.io/zone";
    pub const DISPLAY_NAME: &str = "kuma.io/display-name";
}

/// What one side sends on a stream: which of its resources, in which form.
pub trait Outbound: Send + Sync + 'static {
    /// The types this side serves on the stream.
    fn types(&self) -> Vec<ResourceType>;
    /// The wire form of a local resource, or `None` when it is not for this peer.
    fn export(&self, r: &Resource) -> Option<WireResource>;
    /// Resources (type, wire name) whose export may change when `key`
    /// changes, beyond `key` itself (e.g. a zone's ingresses when its
    /// insight says it went offline).
    fn related(&self, _key: &ResourceKey) -> Vec<(ResourceType, String)> {
        Vec::new()
    }
}

/// How one side applies what it receives.
#[async_trait]
pub trait Inbound: Send + Sync + 'static {
    /// The types this side subscribes to.
    fn types(&self) -> Vec<ResourceType>;
    /// What this side holds from the peer, as wire name → version.
    fn held(&self, kind: ResourceType) -> HashMap<String, String>;
    /// Validates and stores one resource; `Err` is the reason it was refused.
    async fn upsert(&self, resource: WireResource) -> Result<(), String>;
    /// Removes one resource by wire name.
    async fn remove(&self, kind: ResourceType, wire_name: &str) -> Result<(), String>;
}

/// Writes a received resource (or its removal) with `write`, waiting out
/// outages of this side's store: an unavailable store (or a write that keeps
/// losing compare-and-swap races) says nothing about the resource, and
/// reporting it as rejected would make the sender hold it back until it
/// changes — the write would be lost. Only other errors are returned, as
/// the reason to reject. The wait ends with the stream (the caller's future
/// is dropped).
pub async fn write_synced<F, Fut>(what: &str, mut write: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e @ (StoreError::Unavailable(_) | StoreError::Conflict(..))) => {
                tracing::warn!(resource = what, error = %e, retry_in = ?delay, "cannot store a synced resource yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Hears what happens on a stream, for insights and metrics.
pub trait StreamObserver: Send + Sync + 'static {
    fn sent(&self, _kind: ResourceType, _resources: usize) {}
    fn acked(&self, _kind: ResourceType, _applied: usize) {}
    fn rejected(&self, _kind: ResourceType, _reason: &str) {}
}

/// An observer that ignores everything.
pub struct NoObserver;

impl StreamObserver for NoObserver {}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::ResourceKey;

    #[tokio::test]
    async fn synced_writes_wait_out_an_unavailable_store_and_reject_the_rest() {
        let mut attempts = 0;
        let result = write_synced("x", || {
            attempts += 1;
            let n = attempts;
            async move {
                match n {
                    1 => Err(StoreError::Unavailable("down".into())),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(attempts, 2);

        let key = ResourceKey::global(ResourceType::Mesh, "m");
        let result = write_synced("x", || async { Err(StoreError::Internal("bad bytes".into())) }).await;
        assert!(result.unwrap_err().contains("bad bytes"));
        let result = write_synced("x", || {
            let k = key.clone();
            async move { Err(StoreError::AlreadyExists(k)) }
        })
        .await;
        assert!(result.is_err());
    }
}
