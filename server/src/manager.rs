//! Writes and reads of resources on behalf of the API and background work.
//!
//! Writes go to the store with compare-and-swap; reads come from the cache,
//! which keeps answering while the store is down. After a write the manager
//! waits until the cache has caught up, so a client reads its own writes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use meridian_core::decode::Document;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_store::cache::Cache;
use meridian_store::{Filter, Store, StoreError};

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A mesh-scoped resource names a mesh that does not exist.
    #[error("mesh {0:?} does not exist")]
    MeshNotFound(String),
    /// The resource to delete does not exist.
    #[error("{0} not found")]
    NotFound(ResourceKey),
    /// Concurrent writers kept winning; the client may retry.
    #[error("{0} is being modified concurrently, retry")]
    Conflict(ResourceKey),
    /// The store failed or is unreachable.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(k) => WriteError::NotFound(k),
            StoreError::Conflict(k, _) => WriteError::Conflict(k),
            other => WriteError::Store(other),
        }
    }
}

/// Whether a write created a resource or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
}

/// How long a writer waits for its write to show in the cache.
const READ_YOUR_WRITES: Duration = Duration::from_secs(2);
/// How often a PUT retries after losing a compare-and-swap race.
const CAS_ATTEMPTS: usize = 5;

pub struct Manager {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
}

impl Manager {
    pub fn new(store: Arc<dyn Store>, cache: Arc<Cache>) -> Self {
        Manager { store, cache }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Creates or replaces the resource described by `doc` (PUT semantics:
    /// the last writer wins, creation time is kept).
    ///
    /// The first attempt trusts the cache for the mesh check and the current
    /// version, so a PUT costs one store round trip; a lost compare-and-swap
    /// race reads the store and retries.
    pub async fn apply(&self, doc: Document) -> Result<(Resource, Outcome), WriteError> {
        if let Some(mesh) = &doc.key.mesh {
            let mesh_key = ResourceKey::global(ResourceType::Mesh, mesh);
            if self.cache.get(&mesh_key).is_none() && self.store.get(&mesh_key).await?.is_none() {
                return Err(WriteError::MeshNotFound(mesh.clone()));
            }
        }
        let now = Utc::now();
        let mut current = self.cache.get(&doc.key);
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                current = self.store.get(&doc.key).await?;
            }
            let result = match &current {
                None => {
                    let r = Resource::new(doc.key.clone(), doc.labels.clone(), doc.spec.clone(), now);
                    self.store.create(r).await.map(|r| (r, Outcome::Created))
                }
                Some(current) => {
                    let r = Resource {
                        key: doc.key.clone(),
                        labels: doc.labels.clone(),
                        creation_time: current.creation_time,
                        modification_time: now,
                        version: current.version,
                        spec: doc.spec.clone(),
                    };
                    self.store.update(r).await.map(|r| (r, Outcome::Updated))
                }
            };
            match result {
                Ok((r, outcome)) => {
                    self.settle(r.version).await;
                    return Ok((r, outcome));
                }
                // Lost a race with another writer (or the cache was behind):
                // read the store and retry.
                Err(StoreError::Conflict(..)) | Err(StoreError::AlreadyExists(_)) | Err(StoreError::NotFound(_)) => {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(WriteError::Conflict(doc.key))
    }

    /// Creates a resource only if it does not exist yet; `Ok(false)` when it did.
    pub async fn create_if_absent(&self, doc: Document) -> Result<bool, WriteError> {
        let r = Resource::new(doc.key, doc.labels, doc.spec, Utc::now());
        match self.store.create(r).await {
            Ok(r) => {
                self.settle(r.version).await;
                Ok(true)
            }
            Err(StoreError::AlreadyExists(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a copy received from the other side: creates it, replaces it,
    /// or does nothing when the stored labels and spec are already equal.
    /// Unlike [`Manager::apply`] it does not wait for the cache: sync writes
    /// come in batches and are acknowledged to the peer, not to a user.
    pub async fn upsert_synced(&self, r: Resource) -> Result<(), StoreError> {
        let mut current = self.cache.get(&r.key);
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                current = self.store.get(&r.key).await?;
            }
            let result = match &current {
                // Unchanged in the cache: confirm with the store, whose
                // newest writes the cache may not show yet (a removal just
                // made, say). Trusting a stale copy here acknowledged a
                // re-created mesh that was in fact gone, for good.
                Some(c) if c.labels == r.labels && c.spec == r.spec && attempt == 0 => {
                    current = self.store.get(&r.key).await?;
                    match &current {
                        Some(c) if c.labels == r.labels && c.spec == r.spec => return Ok(()),
                        _ => continue,
                    }
                }
                Some(c) if c.labels == r.labels && c.spec == r.spec => return Ok(()),
                Some(c) => {
                    let mut next = r.clone();
                    next.version = c.version;
                    self.store.update(next).await.map(|_| ())
                }
                None => {
                    let mut next = r.clone();
                    next.version = 0;
                    self.store.create(next).await.map(|_| ())
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(..)) | Err(StoreError::AlreadyExists(_)) | Err(StoreError::NotFound(_)) => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(r.key, r.version))
    }

    /// Removes a synced copy; one that is already gone is not an error.
    /// Waits (bounded) until the cache shows the removal, so that what the
    /// stream does next does not read the removed copy from the cache.
    pub async fn remove_synced(&self, key: &ResourceKey) -> Result<(), StoreError> {
        match self.store.delete(key, None).await {
            Ok(revision) => {
                self.settle(revision).await;
                Ok(())
            }
            Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes a resource (a mesh takes everything in it along).
    pub async fn delete(&self, key: &ResourceKey) -> Result<(), WriteError> {
        let revision = self.store.delete(key, None).await?;
        self.settle(revision).await;
        Ok(())
    }

    pub fn get(&self, key: &ResourceKey) -> Option<Resource> {
        self.cache.get(key)
    }

    pub fn list(&self, filter: &Filter) -> Vec<Resource> {
        self.cache.list(filter)
    }

    /// Waits (bounded) until the cache reflects `revision`.
    async fn settle(&self, revision: u64) {
        if self.cache.wait_for_revision(revision, READ_YOUR_WRITES).await.is_err() {
            tracing::warn!(revision, "cache did not catch up with a write in time");
        }
    }
}
