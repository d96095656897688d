//! Meridian's storage: the [`Store`] trait and its backends.
//!
//! - [`memory::MemoryStore`] for tests and `--store memory`,
//! - [`embedded::EmbeddedStore`] (redb, crash-safe) — the default,
//! - [`etcd::EtcdStore`] for several replicas of the global.
//!
//! Every backend passes the same [`conformance`] suite. Above them,
//! [`cache::Cache`] keeps an in-memory replica fed by `list` + `watch`, which
//! the API reads from and which keeps serving reads while the backend is down.
//!
//! Revisions are store-wide and strictly increasing; a resource's `version`
//! is the revision of its last write and is the compare-and-swap token.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use meridian_core::{Resource, ResourceKey, ResourceType};

pub mod cache;
pub mod conformance;
pub mod embedded;
pub mod etcd;
mod etcd_health;
pub mod keys;
pub mod leader;
mod local_watch;
pub mod memory;
pub mod testing;

/// Errors every backend reports in the same terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist.
    #[error("{0} not found")]
    NotFound(ResourceKey),
    /// `create` of a key that exists.
    #[error("{0} already exists")]
    AlreadyExists(ResourceKey),
    /// A compare-and-swap failed: someone else wrote first.
    #[error("{0} was modified concurrently (expected version {1})")]
    Conflict(ResourceKey, u64),
    /// The backend cannot be reached right now; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history that was compacted away; re-list.
    #[error("revision {requested} is compacted (oldest available {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    /// The backend refused this write for its size (etcd's request limit);
    /// retrying the same write cannot help.
    #[error("the store refused the write as too large: {0}")]
    TooLarge(String),
    /// Stored data cannot be decoded, or another internal failure.
    #[error("store error: {0}")]
    Internal(String),
}

/// What a list returns: the items and the store revision they reflect, from
/// which a watch continues without a gap.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub items: Vec<Resource>,
    pub revision: u64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Created or updated; `resource.version` is the revision of the write.
    Put(Resource),
    /// Deleted at `revision`.
    Delete { key: ResourceKey, revision: u64 },
}

impl Event {
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put(r) => r.version,
            Event::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &ResourceKey {
        match self {
            Event::Put(r) => &r.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// A stream of events in revision order. It ends with an error item when the
/// backend fails; the consumer re-lists and watches again.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// Which resources a list covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this type; `None` for every type.
    pub kind: Option<ResourceType>,
    /// Only this mesh; `None` for every mesh (and global-scoped types).
    pub mesh: Option<String>,
}

impl Filter {
    pub fn all() -> Self {
        Filter::default()
    }

    pub fn kind(kind: ResourceType) -> Self {
        Filter {
            kind: Some(kind),
            mesh: None,
        }
    }

    pub fn in_mesh(kind: ResourceType, mesh: &str) -> Self {
        Filter {
            kind: Some(kind),
            mesh: Some(mesh.to_string()),
        }
    }

    pub fn matches(&self, key: &ResourceKey) -> bool {
        self.kind.is_none_or(|k| k == key.kind) && self.mesh.as_deref().is_none_or(|m| key.mesh.as_deref() == Some(m))
    }
}

/// Durable storage of resources.
///
/// Invariants every backend keeps (checked by [`conformance`]):
/// - revisions are store-wide and strictly increasing across writes;
/// - `update` and `delete` with `expected_version` are compare-and-swap;
/// - deleting a `Mesh` deletes, in the same write, every resource in that
///   mesh and its mesh-scoped system records;
/// - `watch(rev)` yields every change with revision `> rev`, in order, or
///   fails with [`StoreError::Compacted`] when that history is gone.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new resource; fails with `AlreadyExists`. Returns it with its
    /// new `version`.
    async fn create(&self, resource: Resource) -> Result<Resource, StoreError>;

    /// Replaces an existing resource if its stored version still equals
    /// `resource.version`; fails with `NotFound` or `Conflict`.
    async fn update(&self, resource: Resource) -> Result<Resource, StoreError>;

    /// Deletes a resource (when `expected_version` is given, only if it
    /// still has that version). Returns the revision of the delete.
    async fn delete(&self, key: &ResourceKey, expected_version: Option<u64>) -> Result<u64, StoreError>;

    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError>;

    /// Lists the resources matching `filter`, in the order of their encoded
    /// keys (see [`keys`]).
    async fn list(&self, filter: &Filter) -> Result<Listing, StoreError>;

    /// Streams every change after `revision`.
    async fn watch(&self, revision: u64) -> Result<EventStream, StoreError>;

    /// Reads a system record (signing keys, markers), not visible as a
    /// resource. `mesh`-scoped records are deleted with their mesh.
    async fn get_system(&self, mesh: Option<&str>, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a system record.
    async fn put_system(&self, mesh: Option<&str>, name: &str, value: Vec<u8>) -> Result<(), StoreError>;

    /// Atomically stores `value` as a system record only if none exists yet,
    /// and returns the record stored afterwards: `value` when this call
    /// created it, otherwise the earlier writer's. Concurrent callers (also
    /// on other replicas of one etcd) all get the same winner, which makes it
    /// the way to create shared secrets such as signing keys.
    async fn put_system_if_absent(&self, mesh: Option<&str>, name: &str, value: Vec<u8>)
        -> Result<Vec<u8>, StoreError>;

    /// Lists global system records whose names start with `prefix`, in name
    /// (byte) order, beginning after `start_after` (exclusive) when given,
    /// at most `limit` of them. Names are returned as given to `put_system`.
    async fn list_system(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Deletes the global system records `names` in one write; names that do
    /// not exist are not an error.
    async fn delete_system(&self, names: &[String]) -> Result<(), StoreError>;
}
