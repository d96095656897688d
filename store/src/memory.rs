//! In-memory store for tests and `--store memory`.
//!
//! Resources live in a `BTreeMap` keyed by their encoded key ([`Keys`] with an
//! empty prefix), so lists come out in the same order as from the other
//! backends. One mutex serializes writes; each write takes the next
//! store-wide revision and is published to the shared watch machinery
//! ([`crate::local_watch`]) before the lock is released.
//!
//! Deleting a `Mesh` removes the mesh, every resource in it and its
//! mesh-scoped system records in one write: all the `Delete` events of that
//! write carry the same revision, in key order (the mesh first).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use meridian_core::{Resource, ResourceKey, ResourceType};

use crate::keys::Keys;
use crate::local_watch::{Hub, DEFAULT_LOG_CAPACITY};
use crate::{Event, EventStream, Filter, Listing, Store, StoreError};

/// A [`Store`] that keeps everything in memory; nothing survives the process.
pub struct MemoryStore {
    state: Mutex<State>,
    hub: Arc<Hub>,
}

struct State {
    keys: Keys,
    resources: BTreeMap<String, Resource>,
    system: BTreeMap<String, Vec<u8>>,
    revision: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store that keeps the last 10,000 events for `watch`.
    pub fn new() -> Self {
        Self::with_log_capacity(DEFAULT_LOG_CAPACITY)
    }

    /// An empty store that keeps the last `capacity` events for `watch`;
    /// older revisions fail with [`StoreError::Compacted`].
    pub fn with_log_capacity(capacity: usize) -> Self {
        MemoryStore {
            state: Mutex::new(State {
                keys: Keys::new(""),
                resources: BTreeMap::new(),
                system: BTreeMap::new(),
                revision: 0,
            }),
            hub: Hub::new(capacity, Vec::new(), 0, 0),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Internal("memory store lock poisoned".into()))
    }

    /// Stores `resource` at the next revision and publishes its event.
    fn put(&self, state: &mut State, encoded: String, mut resource: Resource) -> Result<Resource, StoreError> {
        state.revision += 1;
        resource.version = state.revision;
        state.resources.insert(encoded, resource.clone());
        self.hub.publish(state.revision, vec![Event::Put(resource.clone())])?;
        Ok(resource)
    }
}

/// Removes every entry whose key starts with `prefix`; returns the removed
/// keys in order.
fn remove_prefix<V>(map: &mut BTreeMap<String, V>, prefix: &str) -> Vec<(String, V)> {
    let keys: Vec<String> = map
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, _)| k.clone())
        .collect();
    keys.into_iter()
        .filter_map(|k| map.remove(&k).map(|v| (k, v)))
        .collect()
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(&self, resource: Resource) -> Result<Resource, StoreError> {
        let mut state = self.lock()?;
        let encoded = state.keys.resource(&resource.key);
        if state.resources.contains_key(&encoded) {
            return Err(StoreError::AlreadyExists(resource.key));
        }
        self.put(&mut state, encoded, resource)
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        let mut state = self.lock()?;
        let encoded = state.keys.resource(&resource.key);
        match state.resources.get(&encoded) {
            None => return Err(StoreError::NotFound(resource.key)),
            Some(stored) if stored.version != resource.version => {
                return Err(StoreError::Conflict(resource.key, resource.version));
            }
            Some(_) => {}
        }
        self.put(&mut state, encoded, resource)
    }

    async fn delete(&self, key: &ResourceKey, expected_version: Option<u64>) -> Result<u64, StoreError> {
        let mut state = self.lock()?;
        let encoded = state.keys.resource(key);
        match (state.resources.get(&encoded), expected_version) {
            (None, _) => return Err(StoreError::NotFound(key.clone())),
            (Some(stored), Some(v)) if stored.version != v => {
                return Err(StoreError::Conflict(key.clone(), v));
            }
            _ => {}
        }
        state.revision += 1;
        let revision = state.revision;
        state.resources.remove(&encoded);
        let mut events = vec![Event::Delete {
            key: key.clone(),
            revision,
        }];
        if key.kind == ResourceType::Mesh && key.mesh.is_none() {
            let resources = state.keys.mesh_resources(&key.name);
            let system = state.keys.mesh_system(&key.name);
            events.extend(
                remove_prefix(&mut state.resources, &resources)
                    .into_iter()
                    .map(|(_, r)| Event::Delete { key: r.key, revision }),
            );
            remove_prefix(&mut state.system, &system);
        }
        self.hub.publish(revision, events)?;
        Ok(revision)
    }

    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let state = self.lock()?;
        Ok(state.resources.get(&state.keys.resource(key)).cloned())
    }

    async fn list(&self, filter: &Filter) -> Result<Listing, StoreError> {
        let state = self.lock()?;
        let prefix = state.keys.filter_prefix(filter);
        let items = state
            .resources
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, r)| filter.matches(&r.key))
            .map(|(_, r)| r.clone())
            .collect();
        Ok(Listing {
            items,
            revision: state.revision,
        })
    }

    async fn watch(&self, revision: u64) -> Result<EventStream, StoreError> {
        self.hub.watch(revision)
    }

    async fn get_system(&self, mesh: Option<&str>, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let state = self.lock()?;
        Ok(state.system.get(&state.keys.system(mesh, name)).cloned())
    }

    async fn put_system(&self, mesh: Option<&str>, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        let encoded = state.keys.system(mesh, name);
        state.system.insert(encoded, value);
        Ok(())
    }

    async fn put_system_if_absent(
        &self,
        mesh: Option<&str>,
        name: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let mut state = self.lock()?;
        let encoded = state.keys.system(mesh, name);
        Ok(state.system.entry(encoded).or_insert(value).clone())
    }

    async fn list_system(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let state = self.lock()?;
        let range = state.keys.global_system_prefix(prefix);
        let start = state.keys.global_system_start(prefix, start_after);
        let mut records = Vec::new();
        for (key, value) in state.system.range(start..).take_while(|(k, _)| k.starts_with(&range)) {
            let name = state
                .keys
                .parse_global_system(key)
                .ok_or_else(|| StoreError::Internal(format!("{key} is not a global system record key")))?;
            records.push((name.to_string(), value.clone()));
            if records.len() == limit {
                break;
            }
        }
        Ok(records)
    }

    async fn delete_system(&self, names: &[String]) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        for name in names {
            let encoded = state.keys.system(None, name);
            state.system.remove(&encoded);
        }
        Ok(())
    }
}
