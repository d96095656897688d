//! [`Cache`]: an in-memory replica of a [`Store`], kept by list + watch.
//!
//! The API server and the KDS server read from the cache, so reads keep
//! working while the store is down. The background task is a small state
//! machine (kube-rs `watcher` style):
//!
//! ```text
//!   List ──ok──▶ Watch(from list revision) ──event──▶ apply, fan out
//!    ▲  │                    │
//!    │  └─err─┐              └─Compacted / stream error / end
//!    └──── backoff (exponential, jitter, cap 2 s) ◀──┘
//! ```
//!
//! A re-list is diffed against what the cache held, so subscribers see the
//! deletions that happened while it was disconnected as `Delete` events.
//! Subscribers get a [`broadcast`] receiver: one that falls behind receives
//! `RecvError::Lagged` and must re-read the cache ([`Cache::list`]) — never a
//! silent gap. Writers call [`Cache::wait_for_revision`] with the revision of
//! their write to read their own writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use meridian_core::{Resource, ResourceKey, ResourceType};
use rand::Rng;
use tokio::sync::{broadcast, watch};

use crate::keys::Keys;
use crate::{Event, Filter, Listing, Store, StoreError};

/// Tuning of a [`Cache`].
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Capacity of the change fan-out; a subscriber further behind than this
    /// is told it lagged.
    pub channel_capacity: usize,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            channel_capacity: 4096,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Errors of the waiting methods of [`Cache`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The cache did not reach the wanted state in time.
    #[error("cache at revision {seen} did not reach revision {wanted} within {timeout:?}")]
    RevisionTimeout { wanted: u64, seen: u64, timeout: Duration },
    /// The cache has not finished its first list in time (store unreachable?).
    #[error("cache not ready within {0:?}: the store has not been listed yet")]
    NotReady(Duration),
    /// The cache was shut down.
    #[error("cache is shut down")]
    Stopped,
}

/// What the cache holds: resources by their encoded key (the store's key
/// order), the store revision they reflect, and per type a counter of the
/// changes applied to that type (see [`Cache::kind_generation`]).
#[derive(Default)]
struct State {
    items: BTreeMap<String, Resource>,
    revision: u64,
    /// Types never changed are absent (generation 0).
    generations: HashMap<ResourceType, u64>,
}

impl State {
    fn bump(&mut self, kind: ResourceType) {
        *self.generations.entry(kind).or_insert(0) += 1;
    }
}

/// An in-memory replica of a [`Store`]; see the module docs.
pub struct Cache {
    store: Arc<dyn Store>,
    keys: Keys,
    state: RwLock<State>,
    events: broadcast::Sender<Event>,
    ready: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    revision: watch::Sender<u64>,
    /// Dropped with the cache (or set by [`Cache::shutdown`]): stops the task.
    shutdown: watch::Sender<bool>,
}

impl Cache {
    /// Starts following `store` with default options. The background task
    /// stops when the last `Arc<Cache>` is dropped or on [`Cache::shutdown`].
    /// Must be called within a Tokio runtime.
    pub fn start(store: Arc<dyn Store>) -> Arc<Cache> {
        Self::start_with(store, CacheOptions::default())
    }

    /// Like [`Cache::start`], with explicit options.
    pub fn start_with(store: Arc<dyn Store>, options: CacheOptions) -> Arc<Cache> {
        let (events, _) = broadcast::channel(options.channel_capacity.max(1));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let cache = Arc::new(Cache {
            store: store.clone(),
            keys: Keys::new(""),
            state: RwLock::new(State::default()),
            events,
            ready: watch::Sender::new(false),
            connected: watch::Sender::new(false),
            revision: watch::Sender::new(0),
            shutdown,
        });
        tokio::spawn(follow(Arc::downgrade(&cache), store, shutdown_rx, options));
        cache
    }

    /// The store this cache follows (writes go there).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// One resource, as of [`Cache::revision`].
    pub fn get(&self, key: &ResourceKey) -> Option<Resource> {
        self.read().items.get(&self.keys.resource(key)).cloned()
    }

    /// The resources matching `filter`, in the store's key order.
    pub fn list(&self, filter: &Filter) -> Vec<Resource> {
        Self::select(&self.read(), &self.keys, filter)
    }

    /// The resources matching `filter` with the revision they reflect, and a
    /// subscription that starts exactly after them (no gap, no overlap).
    pub fn snapshot_and_subscribe(&self, filter: &Filter) -> (Listing, broadcast::Receiver<Event>) {
        // Changes are applied and sent under the write lock, so holding the
        // read lock while subscribing gives an exact cut.
        let state = self.read();
        let rx = self.events.subscribe();
        let listing = Listing {
            items: Self::select(&state, &self.keys, filter),
            revision: state.revision,
        };
        (listing, rx)
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// A counter of the changes to the cached resources of type `kind`: 0
    /// until the first one, then larger after every applied change (and
    /// after every re-list that changed that type), never smaller. Derived
    /// data (compiled access roles, say) is rebuilt only when the counters
    /// of its inputs moved.
    ///
    /// It is updated with the content under one lock: a reader that sees a
    /// change also sees the counter that counts it. So read the counter
    /// first, then the content, and remember the counter read: a change in
    /// between is then either in the content or makes the counter move again.
    pub fn kind_generation(&self, kind: ResourceType) -> u64 {
        self.read().generations.get(&kind).copied().unwrap_or(0)
    }

    /// Subscribes to changes. On `RecvError::Lagged` re-read with
    /// [`Cache::list`]: the events in between are lost.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Whether the first list has completed (the cache has content).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Becomes `true` once the first list has completed; never goes back.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Whether the cache is currently following the store's watch (`false`
    /// while the store is unreachable: reads then serve the last state).
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Follows [`Cache::is_connected`].
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// Waits until the first list has completed.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), CacheError> {
        let mut rx = self.ready.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(CacheError::Stopped),
            Err(_) => Err(CacheError::NotReady(timeout)),
        }
    }

    /// Waits until the cache reflects store revision `revision` (e.g. that of
    /// the caller's own write).
    pub async fn wait_for_revision(&self, revision: u64, timeout: Duration) -> Result<(), CacheError> {
        let mut rx = self.revision.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(CacheError::Stopped),
            Err(_) if *self.shutdown.borrow() => Err(CacheError::Stopped),
            Err(_) => Err(CacheError::RevisionTimeout {
                wanted: revision,
                seen: *rx.borrow(),
                timeout,
            }),
        }
    }

    /// Stops following the store; reads keep serving the last state.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.connected.send_replace(false);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn select(state: &State, keys: &Keys, filter: &Filter) -> Vec<Resource> {
        let prefix = keys.filter_prefix(filter);
        state
            .items
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, r)| filter.matches(&r.key))
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Replaces the content with a fresh listing and sends the difference.
    fn reset(&self, listing: Listing) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let mut fresh: BTreeMap<String, Resource> = listing
            .items
            .into_iter()
            .map(|r| (self.keys.resource(&r.key), r))
            .collect();
        let old = std::mem::take(&mut state.items);
        let (mut puts, mut deletes) = (0usize, 0usize);
        let mut changed_kinds = Vec::new();
        for (k, r) in &old {
            if !fresh.contains_key(k) {
                deletes += 1;
                changed_kinds.push(r.key.kind);
                let _ = self.events.send(Event::Delete {
                    key: r.key.clone(),
                    revision: listing.revision,
                });
            }
        }
        for (k, r) in &fresh {
            if old.get(k) != Some(r) {
                puts += 1;
                changed_kinds.push(r.key.kind);
                let _ = self.events.send(Event::Put(r.clone()));
            }
        }
        changed_kinds.sort_unstable();
        changed_kinds.dedup();
        for kind in changed_kinds {
            state.bump(kind);
        }
        std::mem::swap(&mut state.items, &mut fresh);
        state.revision = listing.revision;
        tracing::debug!(
            revision = listing.revision,
            items = state.items.len(),
            puts,
            deletes,
            "cache re-listed"
        );
        self.revision.send_replace(listing.revision);
        drop(state);
        self.ready.send_replace(true);
    }

    /// Applies one watched change and sends it on.
    fn apply(&self, event: Event) {
        tracing::trace!(revision = event.revision(), key = %event.key(), put = matches!(event, Event::Put(_)), "cache applies a change");
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let rev = event.revision();
        let changed = match &event {
            Event::Put(r) => {
                state.items.insert(self.keys.resource(&r.key), r.clone());
                true
            }
            Event::Delete { key, .. } => state.items.remove(&self.keys.resource(key)).is_some(),
        };
        if changed {
            state.bump(event.key().kind);
            let _ = self.events.send(event);
        }
        if rev > state.revision {
            state.revision = rev;
            self.revision.send_replace(rev);
        }
    }
}

/// The background task: list, watch, apply; on failure back off and re-list.
async fn follow(cache: Weak<Cache>, store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>, options: CacheOptions) {
    let mut backoff = Backoff::new(options.backoff_initial, options.backoff_max);
    loop {
        match follow_once(&cache, &store, &mut shutdown, &mut backoff).await {
            Flow::Stop => return,
            Flow::Retry(err) => {
                let Some(c) = cache.upgrade() else { return };
                c.connected.send_replace(false);
                drop(c);
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?delay, "store cache lost the store; will re-list");
                tokio::select! {
                    biased;
                    _ = stopped(&mut shutdown) => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

enum Flow {
    Stop,
    Retry(StoreError),
}

/// One list + watch cycle; returns why it ended.
async fn follow_once(
    cache: &Weak<Cache>,
    store: &Arc<dyn Store>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Flow {
    let all = Filter::all();
    let listing = tokio::select! {
        biased;
        _ = stopped(shutdown) => return Flow::Stop,
        r = store.list(&all) => r,
    };
    let listing = match listing {
        Ok(l) => l,
        Err(e) => return Flow::Retry(e),
    };
    let from = listing.revision;
    tracing::debug!(
        revision = from,
        items = listing.items.len(),
        "cache listed the store; watching"
    );
    let stream = tokio::select! {
        biased;
        _ = stopped(shutdown) => return Flow::Stop,
        s = store.watch(from) => s,
    };
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => return Flow::Retry(e),
    };
    {
        let Some(c) = cache.upgrade() else { return Flow::Stop };
        // Connected first: a waiter woken by the new revision sees it.
        c.connected.send_replace(true);
        c.reset(listing);
    }
    let since = tokio::time::Instant::now();
    loop {
        let item = tokio::select! {
            biased;
            _ = stopped(shutdown) => return Flow::Stop,
            item = stream.next() => item,
        };
        let Some(c) = cache.upgrade() else { return Flow::Stop };
        match item {
            Some(Ok(event)) => {
                c.apply(event);
                backoff.reset();
            }
            Some(Err(e)) => return Flow::Retry(e),
            None => return Flow::Retry(StoreError::Unavailable("store watch ended".into())),
        }
        // A watch that stayed up for a while proves the store healthy again.
        if since.elapsed() > backoff.max {
            backoff.reset();
        }
    }
}

/// Resolves when the cache is shut down or dropped.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // `wait_for` fails when the sender (the cache) is gone: also a stop.
    let _stopped = shutdown.wait_for(|s| *s).await.is_ok();
}

/// Exponential backoff with jitter: each delay is drawn uniformly from
/// `[d/2, d]` where `d` doubles from `initial` up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    pub(crate) max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    //! Against a tiny in-test store whose failures the tests control.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use meridian_core::ResourceType;
    use serde_json::json;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;
    use crate::EventStream;

    /// A store with a controllable outage and compaction.
    #[derive(Default)]
    struct FakeStore {
        inner: Mutex<Fake>,
    }

    #[derive(Default)]
    struct Fake {
        items: BTreeMap<ResourceKey, Resource>,
        rev: u64,
        /// Changes by revision, from `compacted + 1`.
        log: Vec<Event>,
        compacted: u64,
        down: bool,
        watchers: Vec<mpsc::UnboundedSender<Result<Event, StoreError>>>,
        lists: usize,
    }

    impl FakeStore {
        fn put(&self, name: &str, mesh: &str) -> u64 {
            self.put_kind(ResourceType::MeshRetry, name, mesh)
        }

        fn put_kind(&self, kind: ResourceType, name: &str, mesh: &str) -> u64 {
            let mut f = self.inner.lock().unwrap();
            f.rev += 1;
            let mut r = Resource::new(
                ResourceKey::in_mesh(kind, mesh, name),
                Default::default(),
                json!({"rev": f.rev}),
                chrono::Utc::now(),
            );
            r.version = f.rev;
            f.items.insert(r.key.clone(), r.clone());
            f.emit(Event::Put(r));
            f.rev
        }

        fn del(&self, name: &str, mesh: &str) -> u64 {
            let mut f = self.inner.lock().unwrap();
            f.rev += 1;
            let key = ResourceKey::in_mesh(ResourceType::MeshRetry, mesh, name);
            f.items.remove(&key);
            let revision = f.rev;
            f.emit(Event::Delete { key, revision });
            revision
        }

        /// Goes down: open watches fail, calls fail.
        fn outage(&self, down: bool) {
            let mut f = self.inner.lock().unwrap();
            f.down = down;
            if down {
                for w in f.watchers.drain(..) {
                    let _ = w.send(Err(StoreError::Unavailable("fake outage".into())));
                }
            }
        }

        /// Compacts history: watches from before now fail with `Compacted`.
        fn compact(&self) {
            let mut f = self.inner.lock().unwrap();
            f.compacted = f.rev;
            f.log.clear();
        }

        /// Ends every open watch with `err` (etcd cancels a watcher that
        /// fell behind a compaction this way).
        fn fail_watches(&self, err: StoreError) {
            let mut f = self.inner.lock().unwrap();
            for w in f.watchers.drain(..) {
                let _ = w.send(Err(err.clone()));
            }
        }

        fn lists(&self) -> usize {
            self.inner.lock().unwrap().lists
        }
    }

    impl Fake {
        fn emit(&mut self, ev: Event) {
            self.log.push(ev.clone());
            if self.down {
                return;
            }
            self.watchers.retain(|w| w.send(Ok(ev.clone())).is_ok());
        }
    }

    #[async_trait]
    impl Store for FakeStore {
        async fn create(&self, _: Resource) -> Result<Resource, StoreError> {
            unimplemented!()
        }
        async fn update(&self, _: Resource) -> Result<Resource, StoreError> {
            unimplemented!()
        }
        async fn delete(&self, _: &ResourceKey, _: Option<u64>) -> Result<u64, StoreError> {
            unimplemented!()
        }
        async fn get(&self, _: &ResourceKey) -> Result<Option<Resource>, StoreError> {
            unimplemented!()
        }
        async fn list(&self, filter: &Filter) -> Result<Listing, StoreError> {
            let mut f = self.inner.lock().unwrap();
            if f.down {
                return Err(StoreError::Unavailable("fake outage".into()));
            }
            f.lists += 1;
            let keys = Keys::new("");
            let mut items: Vec<Resource> = f.items.values().filter(|r| filter.matches(&r.key)).cloned().collect();
            items.sort_by_key(|r| keys.resource(&r.key));
            Ok(Listing { items, revision: f.rev })
        }
        async fn watch(&self, revision: u64) -> Result<EventStream, StoreError> {
            let mut f = self.inner.lock().unwrap();
            if f.down {
                return Err(StoreError::Unavailable("fake outage".into()));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            if revision < f.compacted {
                let _ = tx.send(Err(StoreError::Compacted {
                    requested: revision,
                    oldest: f.compacted,
                }));
            } else {
                for ev in f.log.iter().filter(|e| e.revision() > revision) {
                    let _ = tx.send(Ok(ev.clone()));
                }
                f.watchers.push(tx);
            }
            Ok(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)))
        }
        async fn get_system(&self, _: Option<&str>, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        async fn put_system(&self, _: Option<&str>, _: &str, _: Vec<u8>) -> Result<(), StoreError> {
            Ok(())
        }
        async fn put_system_if_absent(&self, _: Option<&str>, _: &str, v: Vec<u8>) -> Result<Vec<u8>, StoreError> {
            Ok(v)
        }
        async fn list_system(&self, _: &str, _: Option<&str>, _: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            Ok(Vec::new())
        }
        async fn delete_system(&self, _: &[String]) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn fast() -> CacheOptions {
        CacheOptions {
            channel_capacity: 8,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
        }
    }

    fn key(name: &str, mesh: &str) -> ResourceKey {
        ResourceKey::in_mesh(ResourceType::MeshRetry, mesh, name)
    }

    const WAIT: Duration = Duration::from_secs(5);

    async fn next_event(rx: &mut broadcast::Receiver<Event>) -> Event {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no event within 5 s")
            .expect("channel")
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn lists_then_follows_in_key_order() {
        let store = Arc::new(FakeStore::default());
        store.put("b", "m1");
        store.put("a", "m2");
        let cache = Cache::start_with(store.clone(), fast());
        cache.wait_ready(WAIT).await.unwrap();
        assert_eq!(cache.revision(), 2);
        let rev = store.put("a", "m1");
        cache.wait_for_revision(rev, WAIT).await.unwrap();
        let names: Vec<_> = cache
            .list(&Filter::all())
            .into_iter()
            .map(|r| format!("{}/{}", r.key.mesh.unwrap(), r.key.name))
            .collect();
        assert_eq!(names, ["m1/a", "m1/b", "m2/a"]);
        assert_eq!(cache.list(&Filter::in_mesh(ResourceType::MeshRetry, "m2")).len(), 1);
        assert_eq!(cache.list(&Filter::kind(ResourceType::MeshTimeout)).len(), 0);
        assert_eq!(cache.get(&key("a", "m1")).unwrap().version, rev);
        let rev = store.del("b", "m1");
        cache.wait_for_revision(rev, WAIT).await.unwrap();
        assert!(cache.get(&key("b", "m1")).is_none());
    }

    #[tokio::test]
    async fn wait_for_revision_times_out_with_what_it_saw() {
        let store = Arc::new(FakeStore::default());
        let cache = Cache::start_with(store.clone(), fast());
        cache.wait_ready(WAIT).await.unwrap();
        let err = cache
            .wait_for_revision(10, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CacheError::RevisionTimeout {
                    wanted: 10,
                    seen: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn snapshot_and_subscribe_has_no_gap() {
        let store = Arc::new(FakeStore::default());
        store.put("a", "m");
        let cache = Cache::start_with(store.clone(), fast());
        cache.wait_ready(WAIT).await.unwrap();
        let (snap, mut rx) = cache.snapshot_and_subscribe(&Filter::all());
        assert_eq!(snap.items.len(), 1);
        assert_eq!(snap.revision, 1);
        store.put("b", "m");
        assert_eq!(next_event(&mut rx).await.revision(), 2);
    }

    #[tokio::test]
    async fn outage_keeps_reads_and_relist_reports_missed_changes() {
        let store = Arc::new(FakeStore::default());
        store.put("stays", "m");
        store.put("goes", "m");
        let cache = Cache::start_with(store.clone(), fast());
        cache.wait_ready(WAIT).await.unwrap();
        let mut rx = cache.subscribe();

        store.outage(true);
        wait_until("disconnected", || !cache.is_connected()).await;
        assert_eq!(cache.list(&Filter::all()).len(), 2, "reads keep serving");
        // Changes the cache cannot see, and history it cannot replay.
        let gone = store.del("goes", "m");
        let born = store.put("born", "m");
        store.compact();
        store.outage(false);

        let mut seen = [next_event(&mut rx).await, next_event(&mut rx).await];
        seen.sort_by_key(|e| e.key().name.clone());
        assert_eq!(seen[0].key().name, "born");
        assert!(matches!(&seen[0], Event::Put(r) if r.version == born));
        assert_eq!(
            seen[1],
            Event::Delete {
                key: key("goes", "m"),
                revision: born
            }
        );
        assert!(gone < born);
        cache.wait_for_revision(born, WAIT).await.unwrap();
        assert!(cache.is_connected());
        assert!(cache.get(&key("goes", "m")).is_none());
        assert!(cache.get(&key("stays", "m")).is_some());
        // Unchanged resources are not re-sent by the re-list.
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn compaction_during_watch_relists() {
        let store = Arc::new(FakeStore::default());
        let cache = Cache::start_with(store.clone(), fast());
        cache.wait_ready(WAIT).await.unwrap();
        let lists = store.lists();
        let x = store.put("x", "m");
        cache.wait_for_revision(x, WAIT).await.unwrap();
        store.compact();
        store.fail_watches(StoreError::Compacted {
            requested: 0,
            oldest: x,
        });
        wait_until("a re-list", || store.lists() > lists).await;
        let rev = store.put("y", "m");
        cache.wait_for_revision(rev, WAIT).await.unwrap();
        assert_eq!(cache.list(&Filter::all()).len(), 2);
    }

    #[tokio::test]
    async fn lagging_subscriber_learns_it_lagged() {
        let store = Arc::new(FakeStore::default());
        let cache = Cache::start_with(store.clone(), fast());
        cache.wait_ready(WAIT).await.unwrap();
        let mut rx = cache.subscribe();
        let mut last = 0;
        for i in 0..20 {
            last = store.put(&format!("r{i}"), "m");
        }
        cache.wait_for_revision(last, WAIT).await.unwrap();
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert!(n > 0),
            other => panic!("expected Lagged, got {other:?}"),
        }
        assert_eq!(cache.list(&Filter::all()).len(), 20, "re-reading the cache is complete");
    }

    #[tokio::test]
    async fn task_stops_when_last_handle_drops() {
        let store = Arc::new(FakeStore::default());
        let cache = Cache::start_with(store.clone(), fast());
        cache.wait_ready(WAIT).await.unwrap();
        wait_until("watching", || store.inner.lock().unwrap().watchers.len() == 1).await;
        drop(cache);
        // The task drops its watch and its store handle when it ends.
        wait_until("task end", || {
            let mut f = store.inner.lock().unwrap();
            f.watchers.retain(|w| !w.is_closed());
            f.watchers.is_empty()
        })
        .await;
        wait_until("store released", || Arc::strong_count(&store) == 1).await;
    }

    #[tokio::test]
    async fn shutdown_stops_following() {
        let store = Arc::new(FakeStore::default());
        let cache = Cache::start_with(store.clone(), fast());
        cache.wait_ready(WAIT).await.unwrap();
        cache.shutdown();
        let rev = store.put("late", "m");
        assert_eq!(
            cache.wait_for_revision(rev, Duration::from_millis(50)).await,
            Err(CacheError::Stopped)
        );
        assert!(cache.get(&key("late", "m")).is_none());
    }

    #[tokio::test]
    async fn kind_generation_moves_only_when_that_type_changes() {
        let (retry, timeout) = (ResourceType::MeshRetry, ResourceType::MeshTimeout);
        let store = Arc::new(FakeStore::default());
        store.put("a", "m");
        let cache = Cache::start_with(store.clone(), fast());
        assert_eq!(cache.kind_generation(retry), 0, "nothing cached yet");
        cache.wait_ready(WAIT).await.unwrap();
        assert_eq!(cache.kind_generation(retry), 1, "the first list put a MeshRetry");
        assert_eq!(cache.kind_generation(timeout), 0);

        // A watched put: the reader that sees it sees the counter moved.
        let rev = store.put("b", "m");
        cache.wait_for_revision(rev, WAIT).await.unwrap();
        assert!(cache.get(&key("b", "m")).is_some());
        assert_eq!(cache.kind_generation(retry), 2);
        assert_eq!(cache.kind_generation(timeout), 0, "another type's change");

        let rev = store.put_kind(timeout, "t", "m");
        cache.wait_for_revision(rev, WAIT).await.unwrap();
        assert_eq!((cache.kind_generation(retry), cache.kind_generation(timeout)), (2, 1));

        // Deleting what the cache does not hold changes nothing.
        let rev = store.del("ghost", "m");
        cache.wait_for_revision(rev, WAIT).await.unwrap();
        assert_eq!(cache.kind_generation(retry), 2);
        let rev = store.del("a", "m");
        cache.wait_for_revision(rev, WAIT).await.unwrap();
        assert_eq!(cache.kind_generation(retry), 3);

        // A re-list that finds missed changes counts once per changed type;
        // one that finds none (the unchanged timeout) counts nothing.
        store.outage(true);
        wait_until("disconnected", || !cache.is_connected()).await;
        store.del("b", "m");
        store.put("c", "m");
        let rev = store.put("d", "m");
        store.compact();
        store.outage(false);
        cache.wait_for_revision(rev, WAIT).await.unwrap();
        assert!(cache.get(&key("b", "m")).is_none());
        assert_eq!((cache.kind_generation(retry), cache.kind_generation(timeout)), (4, 1));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
