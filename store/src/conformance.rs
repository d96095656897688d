//! The conformance suite every [`Store`] backend passes.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conformance() {
//!     meridian_store::conformance::run(|| async {
//!         std::sync::Arc::new(MemoryStore::new()) as std::sync::Arc<dyn Store>
//!     })
//!     .await;
//! }
//! ```
//!
//! [`run`] asks `fresh` for a new, empty store for every case, runs all the
//! cases (each in its own task, with a deadline) and then panics listing every
//! case that failed with what it saw. Run it on a multi-threaded runtime so
//! that the concurrency cases really overlap.
//!
//! The cases assume nothing about absolute revisions (a shared etcd starts
//! anywhere and may count other writes): only that they increase, and that
//! `watch` starts from a revision returned by `list` or by a write. The events
//! of one mesh delete may share one revision or take consecutive ones, as
//! long as they all lie after the previous write and no later than the
//! revision `delete` returns.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::future::BoxFuture;
use futures::StreamExt;
use meridian_core::{Resource, ResourceKey, ResourceType};
use serde_json::{json, Value};

use crate::keys::Keys;
use crate::{Event, EventStream, Filter, Store, StoreError};

/// How long one case may take before it counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a case waits for expected events.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

type Case = fn(Arc<dyn Store>) -> BoxFuture<'static, ()>;

/// Every case, by name.
const CASES: &[(&str, Case)] = &[
    ("create_get", |s| Box::pin(create_get(s))),
    ("create_existing_fails", |s| Box::pin(create_existing_fails(s))),
    ("update_is_compare_and_swap", |s| {
        Box::pin(update_is_compare_and_swap(s))
    }),
    ("update_missing_fails", |s| Box::pin(update_missing_fails(s))),
    ("delete_is_compare_and_swap", |s| {
        Box::pin(delete_is_compare_and_swap(s))
    }),
    ("list_filters_and_order", |s| Box::pin(list_filters_and_order(s))),
    ("same_name_in_two_meshes", |s| Box::pin(same_name_in_two_meshes(s))),
    ("mesh_delete_cascades", |s| Box::pin(mesh_delete_cascades(s))),
    ("revisions_strictly_increase", |s| {
        Box::pin(revisions_strictly_increase(s))
    }),
    ("watch_replays_in_order", |s| Box::pin(watch_replays_in_order(s))),
    ("watch_from_list_has_no_gap", |s| {
        Box::pin(watch_from_list_has_no_gap(s))
    }),
    ("system_records", |s| Box::pin(system_records(s))),
    ("system_record_if_absent", |s| Box::pin(system_record_if_absent(s))),
    ("list_and_delete_system_records", |s| {
        Box::pin(list_and_delete_system_records(s))
    }),
    ("large_spec_round_trips", |s| Box::pin(large_spec_round_trips(s))),
];

/// Runs every case against a fresh store from `fresh`; panics naming each
/// failed case and what it saw.
pub async fn run<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let mut failures = Vec::new();
    for (name, case) in CASES {
        let store = fresh().await;
        let outcome = tokio::spawn(tokio::time::timeout(CASE_TIMEOUT, case(store))).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => failures.push(format!("{name}: did not finish within {CASE_TIMEOUT:?}")),
            Err(e) if e.is_panic() => failures.push(format!("{name}: {}", panic_message(e.into_panic()))),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    if !failures.is_empty() {
        panic!(
            "{} of {} store conformance cases failed:\n{}",
            failures.len(),
            CASES.len(),
            failures.join("\n")
        );
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "panicked".to_string()
    }
}

// ---- fixtures ----------------------------------------------------------

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 123_000_000)
        .single()
        .unwrap_or_default()
}

fn mesh(name: &str) -> Resource {
    Resource::new(
        ResourceKey::global(ResourceType::Mesh, name),
        BTreeMap::new(),
        json!({"networking": {"outbound": {"passthrough": true}}}),
        t0(),
    )
}

fn zone(name: &str) -> Resource {
    Resource::new(
        ResourceKey::global(ResourceType::Zone, name),
        BTreeMap::new(),
        json!({"enabled": true}),
        t0(),
    )
}

fn in_mesh(kind: ResourceType, mesh: &str, name: &str, spec: Value) -> Resource {
    let labels = BTreeMap::from([("kuma.io/origin".to_string(), "global".to_string())]);
    Resource::new(ResourceKey::in_mesh(kind, mesh, name), labels, spec, t0())
}

fn retry(mesh: &str, name: &str) -> Resource {
    in_mesh(
        ResourceType::MeshRetry,
        mesh,
        name,
        json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {"maxConnectAttempt": 5}}}]}),
    )
}

/// `a` equals `b` in everything but `version`.
fn same_content(a: &Resource, b: &Resource) -> bool {
    a.key == b.key
        && a.labels == b.labels
        && a.creation_time == b.creation_time
        && a.modification_time == b.modification_time
        && a.spec == b.spec
}

/// A short form of an event for failure messages (specs can be huge).
fn brief(e: &Event) -> String {
    match e {
        Event::Put(r) => format!("Put({} @{})", r.key, r.version),
        Event::Delete { key, revision } => format!("Delete({key} @{revision})"),
    }
}

fn briefs(events: &[Event]) -> Vec<String> {
    events.iter().map(brief).collect()
}

fn must<T>(what: &str, r: Result<T, StoreError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e:?}"),
    }
}

async fn create(store: &dyn Store, r: Resource) -> Resource {
    let what = format!("create {}", r.key);
    must(&what, store.create(r).await)
}

async fn revision(store: &dyn Store) -> u64 {
    must("list (for its revision)", store.list(&Filter::all()).await).revision
}

/// Reads `n` events from `stream`, failing after [`EVENT_TIMEOUT`] with what
/// arrived.
async fn next_events(stream: &mut EventStream, n: usize, what: &str) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => panic!(
                "{what}: waited {EVENT_TIMEOUT:?} for {n} events, saw {} {:?}",
                got.len(),
                briefs(&got)
            ),
            Ok(None) => panic!("{what}: watch ended after {:?}", briefs(&got)),
            Ok(Some(Err(e))) => panic!("{what}: watch failed with {e:?} after {:?}", briefs(&got)),
            Ok(Some(Ok(e))) => got.push(e),
        }
    }
    got
}

/// Proves that `stream` holds nothing more before a new write: writes a
/// marker and expects its event next.
async fn expect_quiet(store: &dyn Store, stream: &mut EventStream, what: &str) {
    let marker = create(store, zone("zz-conformance-marker")).await;
    let got = next_events(stream, 1, what).await;
    assert!(
        matches!(&got[0], Event::Put(r) if r.key == marker.key && r.version == marker.version),
        "{what}: expected no more events before the marker {}, got {}",
        marker.key,
        brief(&got[0])
    );
}

fn encoded(key: &ResourceKey) -> String {
    Keys::new("").resource(key)
}

// ---- cases ---------------------------------------------------------------

async fn create_get(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let base = revision(store).await;
    for input in [mesh("m1"), retry("m1", "r1"), zone("z1")] {
        let created = create(store, input.clone()).await;
        assert!(
            created.version > base,
            "created {} has version {} not above the store revision {base} before it",
            created.key,
            created.version
        );
        assert!(
            same_content(&created, &input),
            "create returned {created:?} for input {input:?}"
        );
        let got = must("get", store.get(&input.key).await);
        assert_eq!(got.as_ref(), Some(&created), "get after create of {}", input.key);
    }
    let missing = ResourceKey::in_mesh(ResourceType::MeshRetry, "m1", "nope");
    assert_eq!(must("get missing", store.get(&missing).await), None);
    let missing = ResourceKey::in_mesh(ResourceType::MeshRetry, "m2", "r1");
    assert_eq!(
        must("get in another mesh", store.get(&missing).await),
        None,
        "a resource is only found in its own mesh"
    );
}

async fn create_existing_fails(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let first = create(store, retry("m1", "r1")).await;
    let mut again = retry("m1", "r1");
    again.spec = json!({"changed": true});
    match store.create(again.clone()).await {
        Err(StoreError::AlreadyExists(k)) => {
            assert_eq!(k, again.key, "AlreadyExists names the key")
        }
        other => panic!("second create of {}: expected AlreadyExists, got {other:?}", again.key),
    }
    let got = must("get", store.get(&first.key).await);
    assert_eq!(got, Some(first), "a failed create must not change the stored resource");
}

async fn update_is_compare_and_swap(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let v1 = create(store, retry("m1", "r1")).await;

    let mut change = v1.clone();
    change.spec = json!({"version": 2});
    change.labels.insert("team".into(), "a".into());
    let v2 = must("update with the current version", store.update(change.clone()).await);
    assert!(
        v2.version > v1.version,
        "update version {} not above {}",
        v2.version,
        v1.version
    );
    assert!(same_content(&v2, &change), "update returned {v2:?} for {change:?}");
    assert_eq!(must("get", store.get(&v1.key).await), Some(v2.clone()));

    for stale in [v1.version, 0, v2.version + 1000] {
        let mut late = v1.clone();
        late.version = stale;
        late.spec = json!({"stale": true});
        match store.update(late).await {
            Err(StoreError::Conflict(k, v)) => {
                assert_eq!(k, v1.key, "Conflict names the key");
                assert_eq!(v, stale, "Conflict carries the expected version");
            }
            other => panic!(
                "update with stale version {stale} (stored {}): expected Conflict, got {other:?}",
                v2.version
            ),
        }
    }
    assert_eq!(
        must("get", store.get(&v1.key).await),
        Some(v2),
        "a failed update must not change the stored resource"
    );
}

async fn update_missing_fails(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let r = retry("m1", "ghost");
    match store.update(r.clone()).await {
        Err(StoreError::NotFound(k)) => assert_eq!(k, r.key),
        other => panic!("update of a missing resource: expected NotFound, got {other:?}"),
    }
    assert_eq!(must("get", store.get(&r.key).await), None, "update must not create");
}

async fn delete_is_compare_and_swap(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let v1 = create(store, retry("m1", "r1")).await;
    let v2 = must("update", store.update(v1.clone()).await);

    match store.delete(&v1.key, Some(v1.version)).await {
        Err(StoreError::Conflict(k, v)) => {
            assert_eq!(k, v1.key);
            assert_eq!(v, v1.version);
        }
        other => panic!("delete with stale version: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        must("get after failed delete", store.get(&v1.key).await),
        Some(v2.clone())
    );

    let rev = must(
        "delete with the current version",
        store.delete(&v1.key, Some(v2.version)).await,
    );
    assert!(rev > v2.version, "delete revision {rev} not above {}", v2.version);
    assert_eq!(must("get after delete", store.get(&v1.key).await), None);

    for expected in [None, Some(v2.version)] {
        match store.delete(&v1.key, expected).await {
            Err(StoreError::NotFound(k)) => assert_eq!(k, v1.key),
            other => panic!("delete of a deleted resource ({expected:?}): expected NotFound, got {other:?}"),
        }
    }

    let other = create(store, retry("m1", "r2")).await;
    let updated = must("update", store.update(other.clone()).await);
    let rev2 = must("unconditional delete", store.delete(&other.key, None).await);
    assert!(
        rev2 > updated.version && rev2 > rev,
        "unconditional delete revision {rev2}"
    );
    assert_eq!(must("get", store.get(&other.key).await), None);
}

async fn list_filters_and_order(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let inputs = vec![
        retry("b", "r1"),
        zone("z1"),
        in_mesh(ResourceType::MeshTimeout, "a", "t1", json!({"t": 1})),
        mesh("b"),
        retry("a", "r2"),
        in_mesh(
            ResourceType::Dataplane,
            "b",
            "dp1",
            json!({"networking": {"address": "10.0.0.1"}}),
        ),
        mesh("a"),
        retry("a", "r1"),
        Resource::new(
            ResourceKey::global(ResourceType::ZoneIngress, "zi"),
            BTreeMap::new(),
            json!({}),
            t0(),
        ),
        retry("a-1", "r1"),
    ];
    let mut created = Vec::new();
    for r in inputs {
        created.push(create(store, r).await);
    }
    let last = created.iter().map(|r| r.version).max().unwrap_or_default();

    let filters = [
        Filter::all(),
        Filter::kind(ResourceType::Mesh),
        Filter::kind(ResourceType::Zone),
        Filter::kind(ResourceType::ZoneIngress),
        Filter::kind(ResourceType::MeshRetry),
        Filter::in_mesh(ResourceType::MeshRetry, "a"),
        Filter::in_mesh(ResourceType::MeshRetry, "b"),
        Filter::in_mesh(ResourceType::MeshRetry, "c"),
        Filter {
            kind: None,
            mesh: Some("a".into()),
        },
        Filter {
            kind: None,
            mesh: Some("b".into()),
        },
        Filter::kind(ResourceType::MeshHTTPRoute),
    ];
    for filter in filters {
        let mut expected: Vec<&Resource> = created.iter().filter(|r| filter.matches(&r.key)).collect();
        expected.sort_by_key(|r| encoded(&r.key));
        let listing = must(&format!("list {filter:?}"), store.list(&filter).await);
        let got_keys: Vec<String> = listing.items.iter().map(|r| r.key.to_string()).collect();
        let want_keys: Vec<String> = expected.iter().map(|r| r.key.to_string()).collect();
        assert_eq!(got_keys, want_keys, "list {filter:?}: keys or their order");
        for (got, want) in listing.items.iter().zip(expected) {
            assert_eq!(got, want, "list {filter:?}: item differs from what create returned");
        }
        assert!(
            listing.revision >= last,
            "list {filter:?} revision {} is below the last write {last}",
            listing.revision
        );
    }
}

async fn same_name_in_two_meshes(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let a = create(store, retry("a", "same")).await;
    let mut b_in = retry("b", "same");
    b_in.spec = json!({"mesh": "b"});
    let b = create(store, b_in).await;
    assert_ne!(a.key, b.key);
    assert_eq!(must("get a", store.get(&a.key).await), Some(a.clone()));
    assert_eq!(must("get b", store.get(&b.key).await), Some(b.clone()));
    let all = must("list", store.list(&Filter::kind(ResourceType::MeshRetry)).await);
    assert_eq!(
        all.items.len(),
        2,
        "two resources named alike in two meshes: {:?}",
        all.items
    );

    let mut change = a.clone();
    change.spec = json!({"changed": true});
    let a2 = must("update a", store.update(change).await);
    assert_eq!(
        must("get b", store.get(&b.key).await),
        Some(b.clone()),
        "updating a changed b"
    );
    must("delete a", store.delete(&a.key, Some(a2.version)).await);
    assert_eq!(must("get b", store.get(&b.key).await), Some(b), "deleting a removed b");
}

async fn mesh_delete_cascades(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let ma = create(store, mesh("a")).await;
    create(store, mesh("b")).await;
    create(store, mesh("a-1")).await;
    let in_a = [
        create(store, retry("a", "r1")).await,
        create(store, in_mesh(ResourceType::Dataplane, "a", "dp", json!({}))).await,
    ];
    let kept = [
        create(store, retry("b", "r1")).await,
        create(store, retry("a-1", "r1")).await,
        create(store, zone("a")).await,
    ];
    for (mesh, value) in [
        (Some("a"), b"a".to_vec()),
        (Some("a-1"), b"a1".to_vec()),
        (Some("b"), b"b".to_vec()),
        (None, b"g".to_vec()),
    ] {
        must("put_system", store.put_system(mesh, "signing-key", value).await);
    }
    // A global resource named like a mesh is not a mesh: no cascade.
    let zb = create(store, zone("b")).await;
    must("delete zone b", store.delete(&zb.key, None).await);
    assert!(
        must("get", store.get(&kept[0].key).await).is_some(),
        "deleting Zone b removed a resource of mesh b"
    );

    must("delete mesh a", store.delete(&ma.key, Some(ma.version)).await);
    assert_eq!(must("get mesh a", store.get(&ma.key).await), None);
    for r in &in_a {
        assert_eq!(
            must("get", store.get(&r.key).await),
            None,
            "{} survived the delete of its mesh",
            r.key
        );
    }
    let left = must(
        "list mesh a",
        store
            .list(&Filter {
                kind: None,
                mesh: Some("a".into()),
            })
            .await,
    );
    assert!(left.items.is_empty(), "mesh a still lists {:?}", left.items);
    for r in &kept {
        assert_eq!(
            must("get", store.get(&r.key).await).as_ref(),
            Some(r),
            "{} was touched by the delete of mesh a",
            r.key
        );
    }
    assert_eq!(
        must("get_system", store.get_system(Some("a"), "signing-key").await),
        None,
        "mesh a's system record survived"
    );
    assert_eq!(
        must("get_system", store.get_system(Some("a-1"), "signing-key").await),
        Some(b"a1".to_vec())
    );
    assert_eq!(
        must("get_system", store.get_system(Some("b"), "signing-key").await),
        Some(b"b".to_vec())
    );
    assert_eq!(
        must("get_system", store.get_system(None, "signing-key").await),
        Some(b"g".to_vec())
    );

    // A new mesh of the same name starts empty.
    create(store, mesh("a")).await;
    let left = must(
        "list mesh a",
        store
            .list(&Filter {
                kind: None,
                mesh: Some("a".into()),
            })
            .await,
    );
    assert!(left.items.is_empty(), "re-created mesh a lists {:?}", left.items);
}

async fn revisions_strictly_increase(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let mut last = revision(store).await;
    let mut step = |what: &str, rev: u64| {
        assert!(rev > last, "{what}: revision {rev} not above the previous {last}");
        last = rev;
    };
    let m = create(store, mesh("m")).await;
    step("create mesh", m.version);
    let r = create(store, retry("m", "r")).await;
    step("create", r.version);
    let r = must("update", store.update(r).await);
    step("update", r.version);
    let z = create(store, zone("z")).await;
    step("create zone", z.version);
    step("delete", must("delete", store.delete(&z.key, None).await));
    create(store, retry("m", "r2")).await;
    let rev = must("delete mesh", store.delete(&m.key, None).await);
    assert!(rev > r.version, "mesh delete revision {rev} not above {}", r.version);
    last = rev;
    let again = create(store, mesh("m")).await;
    assert!(
        again.version > last,
        "create after mesh delete: {} not above {last}",
        again.version
    );
    let listed = revision(store).await;
    assert!(
        listed >= again.version,
        "list revision {listed} below the last write {}",
        again.version
    );
}

async fn watch_replays_in_order(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let ma = create(store, mesh("a")).await;
    let keep = create(store, retry("b", "r1")).await;
    let base = revision(store).await;

    let r1 = create(store, retry("a", "r1")).await;
    let r1b = must("update", store.update(r1.clone()).await);
    let z = create(store, zone("z")).await;
    let z_del = must("delete zone", store.delete(&z.key, Some(z.version)).await);
    let r2 = create(store, in_mesh(ResourceType::MeshTimeout, "a", "t", json!({}))).await;
    let m_del = must("delete mesh", store.delete(&ma.key, None).await);

    let mut stream = must("watch", store.watch(base).await);
    let events = next_events(&mut stream, 8, "watch from before the writes").await;
    let shown = briefs(&events);
    let expect_put = |i: usize, want: &Resource| match &events[i] {
        Event::Put(got) => assert_eq!(got, want, "event {i} of {shown:?}"),
        other => panic!(
            "event {i}: expected Put({}), got {} in {shown:?}",
            want.key,
            brief(other)
        ),
    };
    expect_put(0, &r1);
    expect_put(1, &r1b);
    expect_put(2, &z);
    assert_eq!(
        events[3],
        Event::Delete {
            key: z.key.clone(),
            revision: z_del
        },
        "event 3 of {shown:?}"
    );
    expect_put(4, &r2);
    let cascade = &events[5..];
    let keys: BTreeSet<&ResourceKey> = cascade.iter().map(Event::key).collect();
    let want: BTreeSet<&ResourceKey> = [&ma.key, &r1.key, &r2.key].into_iter().collect();
    assert_eq!(keys, want, "the mesh delete's events {shown:?}");
    for e in cascade {
        assert!(
            matches!(e, Event::Delete { revision, .. } if *revision > r2.version && *revision <= m_del),
            "cascade event {} must be a Delete after {} and at most {m_del}: {shown:?}",
            brief(e),
            r2.version
        );
    }
    assert!(
        events.windows(2).all(|w| w[0].revision() <= w[1].revision()),
        "events out of revision order: {shown:?}"
    );
    expect_quiet(store, &mut stream, "watch after the replay").await;
    assert!(must("get", store.get(&keep.key).await).is_some());

    // From a revision in the middle: only what came after it.
    let mut stream = must("watch", store.watch(r1b.version).await);
    let events = next_events(&mut stream, 1, "watch from the middle").await;
    assert!(
        matches!(&events[0], Event::Put(r) if r.key == z.key),
        "watch from {} should start with Put({}), got {}",
        r1b.version,
        z.key,
        brief(&events[0])
    );
}

async fn watch_from_list_has_no_gap(store: Arc<dyn Store>) {
    const N: usize = 200;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let writer_store = Arc::clone(&store);
    let writer = tokio::spawn(async move {
        let mut written = Vec::new();
        for i in 0..N {
            let r = writer_store.create(zone(&format!("w{i:03}"))).await;
            written.push(r);
            let _ = progress_tx.send(i + 1);
            tokio::task::yield_now().await;
        }
        written
    });
    let store = store.as_ref();

    // List and watch while the writer runs.
    // (The borrow `wait_for` returns must not outlive this line: it blocks
    // the writer's `send`.)
    let started = tokio::time::timeout(EVENT_TIMEOUT, progress.wait_for(|n| *n >= N / 4))
        .await
        .map(|r| r.map(|n| *n));
    assert!(matches!(started, Ok(Ok(_))), "the writer made no progress: {started:?}");
    let listing = must("list", store.list(&Filter::kind(ResourceType::Zone)).await);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let mut stream = must("watch", store.watch(listing.revision).await);

    let written = match writer.await {
        Ok(w) => w,
        Err(e) => panic!("writer task failed: {e}"),
    };
    let mut created = Vec::new();
    for r in written {
        created.push(must("concurrent create", r));
    }
    for item in &listing.items {
        assert!(
            item.version <= listing.revision,
            "list at revision {} returned {} at version {}",
            listing.revision,
            item.key,
            item.version
        );
    }
    let listed: BTreeSet<&ResourceKey> = listing.items.iter().map(|r| &r.key).collect();
    let missing: Vec<&Resource> = created.iter().filter(|r| !listed.contains(&r.key)).collect();
    let events = next_events(&mut stream, missing.len(), "watch from the list revision").await;
    let shown = briefs(&events);
    for (e, want) in events.iter().zip(&missing) {
        assert!(
            matches!(e, Event::Put(got) if got == *want),
            "after list at {} (which had {} items) expected Put({} @{}), got {} in {shown:?}",
            listing.revision,
            listing.items.len(),
            want.key,
            want.version,
            brief(e)
        );
    }
    expect_quiet(store, &mut stream, "watch after the concurrent writes").await;
}

async fn system_records(store: Arc<dyn Store>) {
    let store = store.as_ref();
    assert_eq!(must("get_system", store.get_system(None, "k").await), None);
    must("put_system", store.put_system(None, "k", b"one".to_vec()).await);
    assert_eq!(
        must("get_system", store.get_system(None, "k").await),
        Some(b"one".to_vec())
    );
    let binary: Vec<u8> = (0..=255u8).collect();
    must("overwrite", store.put_system(None, "k", binary.clone()).await);
    assert_eq!(must("get_system", store.get_system(None, "k").await), Some(binary));
    assert_eq!(
        must("get_system in a mesh", store.get_system(Some("m"), "k").await),
        None,
        "a global record is not visible in a mesh"
    );
    must(
        "put_system in a mesh",
        store.put_system(Some("m"), "k", Vec::new()).await,
    );
    assert_eq!(
        must("get_system", store.get_system(Some("m"), "k").await),
        Some(Vec::new())
    );
    assert_eq!(must("get_system", store.get_system(Some("n"), "k").await), None);
    let all = must("list", store.list(&Filter::all()).await);
    assert!(
        all.items.is_empty(),
        "system records must not list as resources: {:?}",
        all.items
    );
}

async fn system_record_if_absent(store: Arc<dyn Store>) {
    // Racing creators of one record, in a mesh and globally: each gets the
    // one stored value back, whoever wrote it.
    for mesh in [None, Some("m")] {
        let racers: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                let mesh = mesh.map(str::to_string);
                tokio::spawn(async move {
                    store
                        .put_system_if_absent(mesh.as_deref(), "shared-key", vec![i; 32])
                        .await
                })
            })
            .collect();
        let mut winners = BTreeSet::new();
        for racer in racers {
            let got = must(
                "put_system_if_absent",
                racer.await.unwrap_or_else(|e| panic!("racer: {e}")),
            );
            winners.insert(got);
        }
        assert_eq!(
            winners.len(),
            1,
            "racers saw different records in {mesh:?}: {winners:?}"
        );
        let stored = must("get_system", store.get_system(mesh, "shared-key").await);
        assert_eq!(
            stored.as_ref(),
            winners.first(),
            "the stored record is not the winner's"
        );
        let again = must(
            "put_system_if_absent again",
            store.put_system_if_absent(mesh, "shared-key", b"late".to_vec()).await,
        );
        assert_eq!(Some(&again), winners.first(), "a late caller replaced the record");
    }
}

/// The names of a `list_system` answer.
fn names(records: &[(String, Vec<u8>)]) -> Vec<&str> {
    records.iter().map(|(n, _)| n.as_str()).collect()
}

async fn list_system(store: &dyn Store, prefix: &str, after: Option<&str>, limit: usize) -> Vec<(String, Vec<u8>)> {
    let what = format!("list_system({prefix:?}, after {after:?}, limit {limit})");
    must(&what, store.list_system(prefix, after, limit).await)
}

/// Checks the names `list_system` answers, failing with the call and both
/// lists.
async fn expect_names(store: &dyn Store, prefix: &str, after: Option<&str>, limit: usize, want: &[&str]) {
    let got = list_system(store, prefix, after, limit).await;
    assert_eq!(
        names(&got),
        want,
        "list_system({prefix:?}, after {after:?}, limit {limit}): names (left) differ from the expected (right)"
    );
}

async fn list_and_delete_system_records(store: Arc<dyn Store>) {
    let store = store.as_ref();
    assert!(
        list_system(store, "", None, 100).await.is_empty(),
        "a fresh store lists system records"
    );
    // Written out of order; each value names its record, one is binary.
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let global = [
        "audit/3", "audi", "audit/1", "auditx", "audit/10", "audit/2", "audit/4", "audit/0", "b",
    ];
    for name in global {
        must(
            "put_system",
            store.put_system(None, name, name.as_bytes().to_vec()).await,
        );
    }
    must("put_system", store.put_system(None, "audit/5", binary.clone()).await);
    // Same names in a mesh, and resources: never listed.
    for name in ["audit/1", "audit/9", "audi", "a"] {
        must(
            "put_system in a mesh",
            store.put_system(Some("m"), name, b"mesh".to_vec()).await,
        );
    }
    create(store, mesh("m")).await;
    create(store, zone("audit")).await;
    create(store, retry("m", "audit")).await;

    let value = |name: &str| {
        if name == "audit/5" {
            binary.clone()
        } else {
            name.as_bytes().to_vec()
        }
    };
    let mut all: Vec<&str> = global.iter().copied().chain(["audit/5"]).collect();
    all.sort_unstable();
    let everything = list_system(store, "", None, 100).await;
    assert_eq!(names(&everything), all, "every global record, in name order");
    for (name, got) in &everything {
        assert_eq!(got, &value(name), "the value of {name}");
    }

    // Prefix filtering: `audit/` is not `auditx` nor `audi`.
    let audit: Vec<&str> = all.iter().copied().filter(|n| n.starts_with("audit/")).collect();
    assert_eq!(
        audit,
        ["audit/0", "audit/1", "audit/10", "audit/2", "audit/3", "audit/4", "audit/5"]
    );
    expect_names(store, "audit/", None, 100, &audit).await;
    expect_names(store, "audit", None, 100, &[&audit[..], &["auditx"]].concat()).await;
    expect_names(store, "audi", None, 100, &[&["audi"][..], &audit, &["auditx"]].concat()).await;
    expect_names(store, "auditx", None, 100, &["auditx"]).await;
    assert!(
        list_system(store, "audit/9", None, 100).await.is_empty(),
        "mesh-only name listed"
    );
    assert!(list_system(store, "c", None, 100).await.is_empty());

    // Limits.
    assert!(list_system(store, "", None, 0).await.is_empty(), "limit 0");
    assert!(
        list_system(store, "audit/", Some("audit/0"), 0).await.is_empty(),
        "limit 0 with start_after"
    );
    expect_names(store, "audit/", None, 1, &["audit/0"]).await;
    expect_names(store, "audit/", None, 3, &audit[..3]).await;
    expect_names(store, "audit/", None, usize::MAX, &audit).await;

    // Paging with `start_after` over three pages reaches exactly every record.
    let mut paged: Vec<(String, Vec<u8>)> = Vec::new();
    let mut pages = 0;
    loop {
        let after = paged.last().map(|(n, _)| n.clone());
        let page = list_system(store, "audit/", after.as_deref(), 3).await;
        if page.is_empty() {
            break;
        }
        pages += 1;
        assert!(
            pages <= 3,
            "more than three pages of 3 for 7 records: {:?}",
            names(&paged)
        );
        paged.extend(page);
    }
    assert_eq!(pages, 3, "7 records in pages of 3");
    assert_eq!(names(&paged), audit, "the pages together");
    for (name, got) in &paged {
        assert_eq!(got, &value(name), "the value of {name} read by page");
    }
    // `start_after` need not exist, nor lie inside the prefix.
    expect_names(store, "audit/", Some("audit/1"), 2, &["audit/10", "audit/2"]).await;
    expect_names(store, "audit/", Some("audit/11"), 1, &["audit/2"]).await;
    expect_names(store, "audit/", Some("a"), 1, &["audit/0"]).await;
    assert!(list_system(store, "audit/", Some("audit/5"), 10).await.is_empty());
    assert!(list_system(store, "audit/", Some("b"), 10).await.is_empty());
    expect_names(store, "", Some("auditx"), 10, &["b"]).await;

    // Deleting: exactly the named ones; unknown names and mesh records are
    // left alone.
    must("delete_system of nothing", store.delete_system(&[]).await);
    let doomed: Vec<String> = ["audit/1", "audit/10", "never-written", "audi", "audit/1"]
        .into_iter()
        .map(String::from)
        .collect();
    must("delete_system", store.delete_system(&doomed).await);
    let left: Vec<&str> = all.iter().copied().filter(|n| !doomed.iter().any(|d| d == n)).collect();
    expect_names(store, "", None, 100, &left).await;
    for name in ["audit/1", "audi"] {
        assert_eq!(
            must("get_system", store.get_system(None, name).await),
            None,
            "{name} survived delete_system"
        );
        assert_eq!(
            must("get_system in a mesh", store.get_system(Some("m"), name).await),
            Some(b"mesh".to_vec()),
            "delete_system of global {name} deleted the mesh record"
        );
    }
    must(
        "delete_system of unknown names",
        store.delete_system(&["ghost".to_string()]).await,
    );
    expect_names(store, "", None, 100, &left).await;

    // More names than etcd takes in one txn.
    let many: Vec<String> = (0..300).map(|i| format!("bulk/{i:03}")).collect();
    for name in &many {
        must("put_system", store.put_system(None, name, Vec::new()).await);
    }
    let listed = list_system(store, "bulk/", None, 1000).await;
    assert_eq!(names(&listed), many.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(listed.iter().all(|(_, v)| v.is_empty()), "empty values survive");
    must("delete_system of 300", store.delete_system(&many).await);
    assert!(list_system(store, "bulk/", None, 1000).await.is_empty());
    expect_names(store, "", None, 100, &left).await;
    let all_resources = must("list", store.list(&Filter::all()).await);
    assert_eq!(all_resources.items.len(), 3, "delete_system touched resources");
}

async fn large_spec_round_trips(store: Arc<dyn Store>) {
    let store = store.as_ref();
    // ~900 KB of varied text, so compression cannot hide the size.
    let blob: String = (0..900_000u32)
        .map(|i| char::from(b'a' + ((i.wrapping_mul(2_654_435_761) >> 13) % 26) as u8))
        .collect();
    let base = revision(store).await;
    let input = in_mesh(ResourceType::MeshProxyPatch, "m", "big", json!({"blob": blob}));
    let created = create(store, input.clone()).await;
    assert!(same_content(&created, &input), "create changed the large resource");
    let got = must("get", store.get(&input.key).await);
    assert!(got.as_ref() == Some(&created), "get of the large resource differs");
    let listed = must(
        "list",
        store.list(&Filter::in_mesh(ResourceType::MeshProxyPatch, "m")).await,
    );
    assert!(
        listed.items == vec![created.clone()],
        "list of the large resource differs"
    );

    let mut change = created.clone();
    change.spec = json!({"blob": blob.chars().rev().collect::<String>()});
    let updated = must("update", store.update(change).await);
    let mut stream = must("watch", store.watch(base).await);
    let events = next_events(&mut stream, 2, "watch the large resource").await;
    assert!(
        events == vec![Event::Put(created), Event::Put(updated)],
        "watch of the large resource: {:?}",
        briefs(&events)
    );
}
