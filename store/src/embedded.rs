//! The embedded store: the default backend, persistent and crash-safe in one
//! data directory, on [redb](https://docs.rs/redb).
//!
//! The file `meridian.redb` in the data directory holds four tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `resources` | encoded key ([`Keys`], empty prefix) | (revision of the last write, [`Resource::to_stored_bytes`]) |
//! | `system` | encoded system key | opaque bytes |
//! | `meta` | `revision`, `compacted_through`, `format` | `u64` |
//! | `changes` | (revision, index within the write) | an encoded [`Event`] |
//!
//! Every resource write is one redb write transaction committed with
//! [`Durability::Immediate`]: once a call returns `Ok`, the write survives
//! `kill -9` and power loss; a write that did not return may or may not be
//! there, but never half of it. The transaction bumps the store revision,
//! appends the write's events to `changes` and trims `changes` to the last
//! `log_capacity` events (by whole revisions, remembering in
//! `compacted_through` where it was cut).
//!
//! Watching uses the same machinery as the memory store
//! ([`crate::local_watch`]): on open the persisted change log is loaded into
//! it, so `watch(rev)` after a restart replays from disk what it needs, and a
//! revision older than what was kept fails with [`StoreError::Compacted`].
//!
//! Deleting a `Mesh` removes, in the same transaction, every resource of the
//! mesh and its mesh-scoped system records; all the `Delete` events of that
//! write carry its one revision, in key order (the mesh first).
//!
//! redb is synchronous: every transaction runs on
//! [`tokio::task::spawn_blocking`]. redb locks the file, so a second process
//! opening the same directory gets [`OpenError::Locked`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use meridian_core::{Resource, ResourceKey, ResourceType};
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};

use crate::keys::Keys;
use crate::local_watch::{Hub, DEFAULT_LOG_CAPACITY};
use crate::{Event, EventStream, Filter, Listing, Store, StoreError};

/// The database file inside the data directory.
pub const FILE_NAME: &str = "meridian.redb";

const RESOURCES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("resources");
const SYSTEM: TableDefinition<&str, &[u8]> = TableDefinition::new("system");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CHANGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("changes");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted_through";
const META_FORMAT: &str = "format";
/// The layout described above. Bump it, and migrate on open, when it changes.
const FORMAT: u64 = 1;

/// Tags of an encoded change-log entry.
const EVENT_PUT: u8 = b'P';
const EVENT_DELETE: u8 = b'D';

/// Why the embedded store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory does not exist and cannot be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another store in this process) has the database
    /// open.
    #[error("{path} is in use by another Meridian process (the database file is locked)")]
    Locked { path: PathBuf },
    /// The file was written by a newer version of Meridian.
    #[error("{path} has store format {found}; this version reads up to {FORMAT}")]
    UnsupportedFormat { path: PathBuf, found: u64 },
    /// redb could not open or initialize the file.
    #[error("cannot open {path}: {message}")]
    Database { path: PathBuf, message: String },
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How many events the change log keeps for `watch` (10,000 by default);
    /// they are kept on disk and in memory.
    pub log_capacity: usize,
    /// Memory redb may use to cache the file's pages. Reads are served by
    /// the resource cache above the store, so little is needed; redb's own
    /// default (1 GiB) let a long-running global's memory creep up with the
    /// file's pages.
    pub page_cache_bytes: usize,
}

/// Default of [`EmbeddedOptions::page_cache_bytes`].
pub const DEFAULT_PAGE_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            log_capacity: DEFAULT_LOG_CAPACITY,
            page_cache_bytes: DEFAULT_PAGE_CACHE_BYTES,
        }
    }
}

/// The redb-backed [`Store`]. Cheap to share behind an `Arc`; dropping the
/// last handle closes the file (and ends its watches).
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    keys: Keys,
    hub: Arc<Hub>,
    /// Held across commit and publish so that watchers see writes in
    /// revision order.
    write_lock: Mutex<()>,
}

/// The tables a resource write works on.
struct Tables<'t> {
    resources: Table<'t, &'static str, (u64, &'static [u8])>,
    system: Table<'t, &'static str, &'static [u8]>,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(e) => StoreError::Unavailable(format!("embedded store I/O: {e}")),
        e => StoreError::Internal(format!("embedded store: {e}")),
    }
}

fn decode_err(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("undecodable record {key}: {e}"))
}

fn encode_event(keys: &Keys, event: &Event) -> Vec<u8> {
    match event {
        Event::Put(r) => {
            let mut out = vec![EVENT_PUT];
            out.extend(r.to_stored_bytes());
            out
        }
        Event::Delete { key, .. } => {
            let mut out = vec![EVENT_DELETE];
            out.extend(keys.resource(key).into_bytes());
            out
        }
    }
}

fn decode_event(keys: &Keys, revision: u64, bytes: &[u8]) -> Result<Event, String> {
    match bytes.split_first() {
        Some((&EVENT_PUT, rest)) => Resource::from_stored_bytes(rest, revision)
            .map(Event::Put)
            .map_err(|e| e.to_string()),
        Some((&EVENT_DELETE, rest)) => std::str::from_utf8(rest)
            .ok()
            .and_then(|k| keys.parse_resource(k))
            .map(|key| Event::Delete { key, revision })
            .ok_or_else(|| "bad deleted key".to_string()),
        _ => Err("unknown change-log entry".to_string()),
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, with default options.
    /// Blocking: it may repair the file after a crash.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`.
    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db_error = |e: &dyn std::fmt::Display| OpenError::Database {
            path: path.clone(),
            message: e.to_string(),
        };
        let db = match Database::builder()
            .set_cache_size(options.page_cache_bytes)
            .create(&path)
        {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::Locked { path }),
            Err(e) => return Err(db_error(&e)),
        };

        // Create the tables and check the format.
        let txn = db.begin_write().map_err(|e| db_error(&e))?;
        {
            txn.open_table(RESOURCES).map_err(|e| db_error(&e))?;
            txn.open_table(SYSTEM).map_err(|e| db_error(&e))?;
            txn.open_table(CHANGES).map_err(|e| db_error(&e))?;
            let mut meta = txn.open_table(META).map_err(|e| db_error(&e))?;
            let found = meta.get(META_FORMAT).map_err(|e| db_error(&e))?.map(|g| g.value());
            match found {
                None => {
                    meta.insert(META_FORMAT, FORMAT).map_err(|e| db_error(&e))?;
                }
                Some(found) if found > FORMAT => {
                    return Err(OpenError::UnsupportedFormat { path, found });
                }
                Some(_) => {}
            }
        }
        txn.commit().map_err(|e| db_error(&e))?;

        // Load the change log into the watch machinery.
        let keys = Keys::new("");
        let txn = db.begin_read().map_err(|e| db_error(&e))?;
        let meta = txn.open_table(META).map_err(|e| db_error(&e))?;
        let meta_u64 = |name: &str| -> Result<u64, OpenError> {
            Ok(meta.get(name).map_err(|e| db_error(&e))?.map_or(0, |g| g.value()))
        };
        let revision = meta_u64(META_REVISION)?;
        let mut compacted_through = meta_u64(META_COMPACTED)?;
        let changes = txn.open_table(CHANGES).map_err(|e| db_error(&e))?;
        let mut history = Vec::new();
        for entry in changes.iter().map_err(|e| db_error(&e))? {
            let (k, v) = entry.map_err(|e| db_error(&e))?;
            let (rev, _) = k.value();
            match decode_event(&keys, rev, v.value()) {
                Ok(event) => history.push(event),
                Err(e) => {
                    // Unreadable history is treated as compacted: watchers
                    // from before it re-list instead of the store refusing to
                    // start.
                    tracing::warn!(revision = rev, error = %e, "dropping undecodable change-log entry");
                    history.clear();
                    compacted_through = compacted_through.max(rev);
                }
            }
        }
        history.retain(|e| e.revision() > compacted_through);
        drop((meta, changes, txn));

        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                keys,
                hub: Hub::new(options.log_capacity, history, compacted_through, revision),
                write_lock: Mutex::new(()),
            }),
        })
    }

    /// Runs `f` on a blocking thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Internal(format!("embedded store task failed: {e}")))?
    }
}

impl Inner {
    /// One resource write: `op` changes the tables for `revision` and returns
    /// its result and events; the change log, the meta table and the watchers
    /// follow, and nothing is written when `op` fails.
    fn write<T>(
        &self,
        op: impl FnOnce(&mut Tables<'_>, u64) -> Result<(T, Vec<Event>), StoreError>,
    ) -> Result<T, StoreError> {
        let _serial = self
            .write_lock
            .lock()
            .map_err(|_| StoreError::Internal("embedded store write lock poisoned".into()))?;
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let (out, events, revision) = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let mut changes = txn.open_table(CHANGES).map_err(db_err)?;
            let mut tables = Tables {
                resources: txn.open_table(RESOURCES).map_err(db_err)?,
                system: txn.open_table(SYSTEM).map_err(db_err)?,
            };
            let current = meta.get(META_REVISION).map_err(db_err)?.map_or(0, |g| g.value());
            let revision = current + 1;
            let (out, events) = op(&mut tables, revision)?;

            for (i, event) in events.iter().enumerate() {
                let index =
                    u32::try_from(i).map_err(|_| StoreError::Internal("too many events in one write".into()))?;
                changes
                    .insert((revision, index), encode_event(&self.keys, event).as_slice())
                    .map_err(db_err)?;
            }
            if let Some(cut) = self.hub.compaction_point(&events)? {
                changes.retain_in(..=(cut, u32::MAX), |_, _| false).map_err(db_err)?;
                let compacted = meta.get(META_COMPACTED).map_err(db_err)?.map_or(0, |g| g.value());
                meta.insert(META_COMPACTED, compacted.max(cut)).map_err(db_err)?;
            }
            meta.insert(META_REVISION, revision).map_err(db_err)?;
            (out, events, revision)
        };
        txn.commit().map_err(db_err)?;
        self.hub.publish(revision, events)?;
        Ok(out)
    }

    /// Stores `resource` at `revision` in `tables`.
    fn put(&self, tables: &mut Tables<'_>, mut resource: Resource, revision: u64) -> Result<Resource, StoreError> {
        let encoded = self.keys.resource(&resource.key);
        resource.version = revision;
        let bytes = resource.to_stored_bytes();
        tables
            .resources
            .insert(encoded.as_str(), (revision, bytes.as_slice()))
            .map_err(db_err)?;
        Ok(resource)
    }

    /// The version stored under `encoded`, if any.
    fn stored_version(tables: &Tables<'_>, encoded: &str) -> Result<Option<u64>, StoreError> {
        Ok(tables.resources.get(encoded).map_err(db_err)?.map(|g| g.value().0))
    }

    /// Removes every entry under `prefix` from `table`; returns their keys.
    fn remove_prefix<V: redb::Value + 'static>(
        table: &mut Table<'_, &'static str, V>,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for entry in table.range::<&str>(prefix..).map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            keys.push(k.to_string());
        }
        for k in &keys {
            table.remove(k.as_str()).map_err(db_err)?;
        }
        Ok(keys)
    }

    fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let encoded = self.keys.resource(key);
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(RESOURCES).map_err(db_err)?;
        let Some(guard) = table.get(encoded.as_str()).map_err(db_err)? else {
            return Ok(None);
        };
        let (version, bytes) = guard.value();
        Resource::from_stored_bytes(bytes, version)
            .map(Some)
            .map_err(|e| decode_err(&encoded, e))
    }

    fn list(&self, filter: &Filter) -> Result<Listing, StoreError> {
        let prefix = self.keys.filter_prefix(filter);
        let txn = self.db.begin_read().map_err(db_err)?;
        let revision = txn
            .open_table(META)
            .map_err(db_err)?
            .get(META_REVISION)
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        let table = txn.open_table(RESOURCES).map_err(db_err)?;
        let mut items = Vec::new();
        for entry in table.range::<&str>(prefix.as_str()..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            let (version, bytes) = v.value();
            let resource = Resource::from_stored_bytes(bytes, version).map_err(|e| decode_err(k, e))?;
            if filter.matches(&resource.key) {
                items.push(resource);
            }
        }
        Ok(Listing { items, revision })
    }

    fn get_system(&self, encoded: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SYSTEM).map_err(db_err)?;
        Ok(table.get(encoded).map_err(db_err)?.map(|g| g.value().to_vec()))
    }

    fn put_system(&self, encoded: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let mut table = txn.open_table(SYSTEM).map_err(db_err)?;
            table.insert(encoded, value).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Reads and, when absent, writes `encoded` in one write transaction.
    fn put_system_if_absent(&self, encoded: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let stored = {
            let mut table = txn.open_table(SYSTEM).map_err(db_err)?;
            let existing = table.get(encoded).map_err(db_err)?.map(|g| g.value().to_vec());
            match existing {
                Some(existing) => existing,
                None => {
                    table.insert(encoded, value.as_slice()).map_err(db_err)?;
                    value
                }
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(stored)
    }

    /// Up to `limit` global system records, from key `start` on while keys
    /// start with `range`, as (name, value).
    fn list_system(&self, range: &str, start: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut records = Vec::new();
        if limit == 0 {
            return Ok(records);
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SYSTEM).map_err(db_err)?;
        for entry in table.range::<&str>(start..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(range) {
                break;
            }
            let name = self
                .keys
                .parse_global_system(k)
                .ok_or_else(|| decode_err(k, "not a global system record key"))?;
            records.push((name.to_string(), v.value().to_vec()));
            if records.len() == limit {
                break;
            }
        }
        Ok(records)
    }

    /// Removes the system records `encoded` (absent ones are skipped) in one
    /// write transaction.
    fn delete_system(&self, encoded: &[String]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let mut table = txn.open_table(SYSTEM).map_err(db_err)?;
            for key in encoded {
                table.remove(key.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create(&self, resource: Resource) -> Result<Resource, StoreError> {
        self.blocking(move |inner| {
            inner.write(|tables, revision| {
                let encoded = inner.keys.resource(&resource.key);
                if Inner::stored_version(tables, &encoded)?.is_some() {
                    return Err(StoreError::AlreadyExists(resource.key));
                }
                let stored = inner.put(tables, resource, revision)?;
                Ok((stored.clone(), vec![Event::Put(stored)]))
            })
        })
        .await
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        self.blocking(move |inner| {
            inner.write(|tables, revision| {
                let encoded = inner.keys.resource(&resource.key);
                match Inner::stored_version(tables, &encoded)? {
                    None => return Err(StoreError::NotFound(resource.key)),
                    Some(v) if v != resource.version => {
                        return Err(StoreError::Conflict(resource.key, resource.version));
                    }
                    Some(_) => {}
                }
                let stored = inner.put(tables, resource, revision)?;
                Ok((stored.clone(), vec![Event::Put(stored)]))
            })
        })
        .await
    }

    async fn delete(&self, key: &ResourceKey, expected_version: Option<u64>) -> Result<u64, StoreError> {
        let key = key.clone();
        self.blocking(move |inner| {
            inner.write(|tables, revision| {
                let encoded = inner.keys.resource(&key);
                match (Inner::stored_version(tables, &encoded)?, expected_version) {
                    (None, _) => return Err(StoreError::NotFound(key)),
                    (Some(stored), Some(v)) if stored != v => return Err(StoreError::Conflict(key, v)),
                    _ => {}
                }
                tables.resources.remove(encoded.as_str()).map_err(db_err)?;
                let mut events = Vec::new();
                if key.kind == ResourceType::Mesh && key.mesh.is_none() {
                    let removed = Inner::remove_prefix(&mut tables.resources, &inner.keys.mesh_resources(&key.name))?;
                    Inner::remove_prefix(&mut tables.system, &inner.keys.mesh_system(&key.name))?;
                    events.push(Event::Delete { key, revision });
                    for k in removed {
                        let key = inner
                            .keys
                            .parse_resource(&k)
                            .ok_or_else(|| decode_err(&k, "not a resource key"))?;
                        events.push(Event::Delete { key, revision });
                    }
                } else {
                    events.push(Event::Delete { key, revision });
                }
                Ok((revision, events))
            })
        })
        .await
    }

    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let key = key.clone();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn list(&self, filter: &Filter) -> Result<Listing, StoreError> {
        let filter = filter.clone();
        self.blocking(move |inner| inner.list(&filter)).await
    }

    async fn watch(&self, revision: u64) -> Result<EventStream, StoreError> {
        self.inner.hub.watch(revision)
    }

    async fn get_system(&self, mesh: Option<&str>, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let encoded = self.inner.keys.system(mesh, name);
        self.blocking(move |inner| inner.get_system(&encoded)).await
    }

    async fn put_system(&self, mesh: Option<&str>, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let encoded = self.inner.keys.system(mesh, name);
        self.blocking(move |inner| inner.put_system(&encoded, &value)).await
    }

    async fn put_system_if_absent(
        &self,
        mesh: Option<&str>,
        name: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let encoded = self.inner.keys.system(mesh, name);
        self.blocking(move |inner| inner.put_system_if_absent(&encoded, value))
            .await
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
        let range = self.inner.keys.global_system_prefix(prefix);
        let start = self.inner.keys.global_system_start(prefix, start_after);
        self.blocking(move |inner| inner.list_system(&range, &start, limit))
            .await
    }

    async fn delete_system(&self, names: &[String]) -> Result<(), StoreError> {
        if names.is_empty() {
            return Ok(());
        }
        let encoded: Vec<String> = names.iter().map(|n| self.inner.keys.system(None, n)).collect();
        self.blocking(move |inner| inner.delete_system(&encoded)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeZone, Utc};
    use futures::StreamExt;

    use super::*;

    fn zone(name: &str) -> Resource {
        Resource::new(
            ResourceKey::global(ResourceType::Zone, name),
            Default::default(),
            serde_json::json!({"enabled": true}),
            Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        )
    }

    /// Writes raw bytes into the resource table, as corruption or a foreign
    /// writer would.
    fn poke(dir: &Path, key: &ResourceKey, bytes: &[u8]) {
        let db = Database::create(dir.join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(RESOURCES).unwrap();
            t.insert(Keys::new("").resource(key).as_str(), (99, bytes)).unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn undecodable_resource_is_an_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = ResourceKey::global(ResourceType::Zone, "bad");
        drop(EmbeddedStore::open(dir.path()).unwrap());
        poke(dir.path(), &key, b"\xff\x00not json");
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(matches!(store.get(&key).await, Err(StoreError::Internal(_))));
        assert!(matches!(store.list(&Filter::all()).await, Err(StoreError::Internal(_))));
    }

    #[tokio::test]
    async fn undecodable_history_counts_as_compacted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            for i in 0..3 {
                store.create(zone(&format!("z{i}"))).await.unwrap();
            }
        }
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(CHANGES)
                .unwrap()
                .insert((2, 0), b"?garbage".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.watch(1).await,
            Err(StoreError::Compacted {
                requested: 1,
                oldest: 2
            })
        ));
        let mut s = store.watch(2).await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("timed out")
            .expect("stream ended")
            .unwrap();
        assert_eq!(e.revision(), 3);
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(EmbeddedStore::open(dir.path()).unwrap());
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(META_FORMAT, FORMAT + 1).unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(
            EmbeddedStore::open(dir.path()),
            Err(OpenError::UnsupportedFormat { .. })
        ));
    }
}
