//! The etcd backend, the cache and leader election against a real etcd
//! process (one per test, each test under its own key prefix).
//!
//! Needs Debian's `etcd-server` (`/usr/bin/etcd`): without it these tests
//! fail saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_store::cache::Cache;
use meridian_store::etcd::EtcdStore;
use meridian_store::leader::{LeaderElector, LeaderHandle};
use meridian_store::testing::{unique_prefix, EtcdServer};
use meridian_store::{Event, Filter, Store, StoreError};
use serde_json::json;
use tokio::time::Instant;

async fn etcd() -> EtcdServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    match EtcdServer::start().await {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

async fn store(etcd: &EtcdServer, prefix: &str) -> EtcdStore {
    EtcdStore::connect(&etcd.endpoints(), prefix).await.expect("connect")
}

fn retry(mesh: &str, name: &str) -> Resource {
    Resource::new(
        ResourceKey::in_mesh(ResourceType::MeshRetry, mesh, name),
        BTreeMap::new(),
        json!({"targetRef": {"kind": "Mesh"}}),
        chrono::Utc::now(),
    )
}

/// Polls `cond` until it holds, failing with `what` after `timeout`.
async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let etcd = etcd().await;
    let endpoints = etcd.endpoints();
    meridian_store::conformance::run(move || {
        let endpoints = endpoints.clone();
        async move {
            let s = EtcdStore::connect(&endpoints, &unique_prefix("conformance"))
                .await
                .expect("connect");
            Arc::new(s) as Arc<dyn Store>
        }
    })
    .await;
}

#[tokio::test]
async fn compare_and_swap_between_two_clients() {
    let etcd = etcd().await;
    let prefix = unique_prefix("cas");
    let (a, b) = (store(&etcd, &prefix).await, store(&etcd, &prefix).await);

    let created = a.create(retry("m", "r")).await.unwrap();
    assert_eq!(
        b.create(retry("m", "r")).await,
        Err(StoreError::AlreadyExists(created.key.clone()))
    );
    let seen_by_b = b.get(&created.key).await.unwrap().unwrap();
    assert_eq!(seen_by_b.version, created.version);

    let mut a_edit = created.clone();
    a_edit.spec = json!({"targetRef": {"kind": "Mesh"}, "by": "a"});
    let a_wrote = a.update(a_edit).await.unwrap();
    assert!(a_wrote.version > created.version);

    // b still holds the old version: both its update and its delete lose.
    let mut b_edit = seen_by_b.clone();
    b_edit.spec = json!({"by": "b"});
    assert_eq!(
        b.update(b_edit.clone()).await,
        Err(StoreError::Conflict(created.key.clone(), created.version))
    );
    assert_eq!(
        b.delete(&created.key, Some(created.version)).await,
        Err(StoreError::Conflict(created.key.clone(), created.version))
    );
    assert_eq!(b.get(&created.key).await.unwrap().unwrap().spec["by"], "a");

    // With the fresh version b wins.
    b_edit.version = a_wrote.version;
    let b_wrote = b.update(b_edit).await.unwrap();
    let rev = a.delete(&created.key, Some(b_wrote.version)).await.unwrap();
    assert!(rev > b_wrote.version);
    assert_eq!(
        a.delete(&created.key, None).await,
        Err(StoreError::NotFound(created.key.clone()))
    );
    assert_eq!(a.update(b_wrote).await, Err(StoreError::NotFound(created.key.clone())));
}

#[tokio::test]
async fn watch_from_compacted_revision_is_compacted() {
    let etcd = etcd().await;
    let s = store(&etcd, &unique_prefix("compact")).await;
    let first = s.create(retry("m", "r")).await.unwrap();
    let mut r = first.clone();
    r.spec = json!({"n": 2});
    let second = s.update(r).await.unwrap();

    let mut raw = etcd.client().await.unwrap();
    raw.compact(i64::try_from(second.version).unwrap(), None).await.unwrap();

    match s.watch(first.version - 1).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, first.version - 1);
            assert_eq!(oldest, second.version);
        }
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }

    // Starting exactly at the compaction revision could miss a tombstone
    // written there (compaction drops it): that counts as compacted too.
    assert!(matches!(
        s.watch(second.version - 1).await.err(),
        Some(StoreError::Compacted { oldest, .. }) if oldest == second.version
    ));

    // After the compaction point, history is there.
    let mut stream = s.watch(second.version).await.unwrap();
    let third = s.delete(&second.key, Some(second.version)).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut stream))
        .await
        .expect("event")
        .expect("stream item")
        .expect("ok");
    assert_eq!(
        ev,
        Event::Delete {
            key: second.key.clone(),
            revision: third
        }
    );
}

#[tokio::test]
async fn unreachable_etcd_answers_unavailable_fast() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = EtcdStore::connect(&[format!("http://127.0.0.1:{port}")], "/x")
        .await
        .unwrap();
    let start = Instant::now();
    let err = s.create(retry("m", "r")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(matches!(s.check().await, Err(StoreError::Unavailable(_))));
}

#[tokio::test]
async fn frozen_etcd_answers_unavailable_within_the_deadline() {
    let mut etcd = etcd().await;
    let s = store(&etcd, &unique_prefix("frozen")).await;
    let before = s.create(retry("m", "r")).await.unwrap();
    etcd.pause().unwrap();
    let start = Instant::now();
    let err = s.create(retry("m", "r2")).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(took < Duration::from_secs(5), "a write to a frozen etcd took {took:?}");
    let start = Instant::now();
    assert!(matches!(s.get(&before.key).await, Err(StoreError::Unavailable(_))));
    assert!(start.elapsed() < Duration::from_secs(5));
    eprintln!("a write to a frozen etcd failed after {took:?}: {err}");
    etcd.resume().unwrap();
    // Back to normal without reconnecting by hand.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.get(&before.key).await.is_err() {
        assert!(Instant::now() < deadline, "etcd did not answer after SIGCONT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_survives_etcd_restart() {
    let mut etcd = etcd().await;
    let prefix = unique_prefix("restart");
    let s = Arc::new(store(&etcd, &prefix).await);
    let cache = Cache::start(s.clone());
    cache.wait_ready(Duration::from_secs(10)).await.unwrap();

    let keep = s.create(retry("m", "keep")).await.unwrap();
    let doomed = s.create(retry("m", "doomed")).await.unwrap();
    cache
        .wait_for_revision(doomed.version, Duration::from_secs(10))
        .await
        .unwrap();
    let mut events = cache.subscribe();

    // etcd dies: writes fail fast, reads keep being served.
    etcd.stop();
    let start = Instant::now();
    let err = s.create(retry("m", "lost")).await.unwrap_err();
    let write_failed_after = start.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        write_failed_after < Duration::from_secs(5),
        "a write to a dead etcd took {write_failed_after:?}"
    );
    let mut edit = keep.clone();
    edit.spec = json!({"n": 1});
    assert!(matches!(s.update(edit).await, Err(StoreError::Unavailable(_))));
    eventually("the cache to notice", Duration::from_secs(20), || !cache.is_connected()).await;
    assert_eq!(cache.list(&Filter::all()).len(), 2);
    assert!(cache.get(&keep.key).is_some());

    // etcd comes back; meanwhile someone deletes a resource directly and
    // compacts, so a cache that was still away must re-list to notice.
    let down_at = Instant::now();
    etcd.restart().await.unwrap();
    let mut raw = etcd.client().await.unwrap();
    let deleted = raw.delete(s.keys().resource(&doomed.key), None).await.unwrap();
    let del_rev = deleted.header().unwrap().revision();
    raw.compact(del_rev, None).await.unwrap();

    // Writes work again (the client reconnects by itself).
    let after = loop {
        match s.create(retry("m", "after")).await {
            Ok(r) => break r,
            Err(StoreError::Unavailable(e)) if down_at.elapsed() < Duration::from_secs(30) => {
                eprintln!("still unavailable: {e}")
            }
            Err(e) => panic!("write after restart: {e:?}"),
        }
    };
    cache
        .wait_for_revision(after.version, Duration::from_secs(30))
        .await
        .unwrap();
    let recovered_after = down_at.elapsed();
    assert!(cache.is_connected());
    assert!(
        cache.get(&doomed.key).is_none(),
        "the deletion made while away is visible"
    );
    assert!(cache.get(&after.key).is_some());
    assert!(cache.get(&keep.key).is_some());

    // Subscribers were told both.
    let (mut saw_delete, mut saw_put) = (false, false);
    while !(saw_delete && saw_put) {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("events after the restart")
            .expect("not lagged");
        match ev {
            Event::Delete { key, .. } if key == doomed.key => saw_delete = true,
            Event::Put(r) if r.key == after.key => saw_put = true,
            other => panic!("unexpected event {other:?}"),
        }
    }
    eprintln!("write to dead etcd failed after {write_failed_after:?}; cache caught up {recovered_after:?} after restart began");
}

fn leader_count(handles: &[&LeaderHandle]) -> usize {
    handles.iter().filter(|h| h.is_leader()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_when_the_leader_dies() {
    let etcd = etcd().await;
    let key = format!("{}/leader", unique_prefix("leader"));
    let client = etcd.client().await.unwrap();
    let a = LeaderElector::new(client.clone(), key.clone(), "a").start();
    let b = LeaderElector::new(client.clone(), key.clone(), "b").start();

    eventually("one leader", Duration::from_secs(15), || {
        let n = leader_count(&[&a, &b]);
        assert!(n <= 1, "two leaders at once");
        n == 1
    })
    .await;
    // It stays one across several renewal rounds.
    let stable_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < stable_until {
        assert_eq!(leader_count(&[&a, &b]), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    drop(leader); // like the process dying: its lease is left to expire
    let took = eventually("the follower to lead", Duration::from_secs(15), || follower.is_leader()).await;
    eprintln!("leadership moved {took:?} after the leader died");

    // A clean resignation hands over without waiting for the TTL.
    let c = LeaderElector::new(client.clone(), key.clone(), "c").start();
    let start = Instant::now();
    follower.resign().await;
    let took = eventually("c to lead after a resignation", Duration::from_secs(15), || {
        c.is_leader()
    })
    .await;
    eprintln!("leadership moved {took:?} after a resignation");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_steps_down_while_etcd_is_away_and_returns() {
    let mut etcd = etcd().await;
    let key = format!("{}/leader", unique_prefix("leader-restart"));
    let client = etcd.client().await.unwrap();
    let a = LeaderElector::new(client.clone(), key.clone(), "a").start();
    eventually("a to lead", Duration::from_secs(15), || a.is_leader()).await;

    etcd.stop();
    let took = eventually("a to step down", Duration::from_secs(10), || !a.is_leader()).await;
    assert!(
        took <= Duration::from_secs(5),
        "stepped down after {took:?}, past the 5 s TTL"
    );
    eprintln!("leader stepped down {took:?} after etcd died");

    etcd.restart().await.unwrap();
    let took = eventually("a to lead again", Duration::from_secs(20), || a.is_leader()).await;
    eprintln!("leader re-elected {took:?} after etcd answered again");
}

#[tokio::test]
async fn always_leader_leads() {
    let h = LeaderHandle::always();
    let rx = h.subscribe();
    assert!(*rx.borrow());
    assert!(h.is_leader());
}
