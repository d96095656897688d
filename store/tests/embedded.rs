//! The embedded (redb) store: the shared conformance suite, persistence
//! across reopen, the file lock, the persisted change log and crash safety
//! under `kill -9`.
//!
//! The crash test needs a process to kill: it re-runs this test binary with
//! `MERIDIAN_STORE_TEST_CHILD` set, which turns the `child_process` test into
//! a writer (or a lock probe) instead of a no-op.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_store::embedded::{EmbeddedOptions, EmbeddedStore, OpenError};
use meridian_store::{conformance, Event, Filter, Store, StoreError};
use serde_json::json;

const CHILD_MODE: &str = "MERIDIAN_STORE_TEST_CHILD";
const CHILD_DIR: &str = "MERIDIAN_STORE_TEST_DIR";
const CHILD_START: &str = "MERIDIAN_STORE_TEST_START";
/// Starts every protocol line a child prints.
const MARK: &str = "@@meridian@@ ";

/// The protocol lines in a child's output, without the marker.
fn protocol(line: &str) -> Option<String> {
    line.split_once(MARK).map(|(_, rest)| rest.to_string())
}

fn zone(name: &str) -> Resource {
    Resource::new(
        ResourceKey::global(ResourceType::Zone, name),
        Default::default(),
        json!({"enabled": true}),
        Utc::now(),
    )
}

fn dataplane(i: u64) -> Resource {
    // Sizes vary (1–24 KB) so writes span one or several pages.
    let padding = "x".repeat(1024 * (1 + (i as usize * 7) % 24));
    Resource::new(
        ResourceKey::in_mesh(ResourceType::Dataplane, "default", &format!("dp-{i}")),
        Default::default(),
        json!({"networking": {"address": "10.0.0.1"}, "padding": padding}),
        Utc::now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let root = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run(|| {
        n += 1;
        let store = EmbeddedStore::open(&root.path().join(format!("case-{n}"))).unwrap();
        async move { Arc::new(store) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test]
async fn reopen_keeps_data_history_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (before, base, events_before) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let base = store.list(&Filter::all()).await.unwrap().revision;
        let m = store.create(zone("z1")).await.unwrap();
        store.create(zone("z2")).await.unwrap();
        store.update(m).await.unwrap();
        store
            .delete(&ResourceKey::global(ResourceType::Zone, "z2"), None)
            .await
            .unwrap();
        store.put_system(None, "key", b"secret".to_vec()).await.unwrap();
        let listing = store.list(&Filter::all()).await.unwrap();
        let mut s = store.watch(base).await.unwrap();
        let mut events = Vec::new();
        for _ in 0..4 {
            events.push(
                tokio::time::timeout(Duration::from_secs(5), s.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap(),
            );
        }
        (listing, base, events)
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.list(&Filter::all()).await.unwrap(), before);
    assert_eq!(store.get_system(None, "key").await.unwrap(), Some(b"secret".to_vec()));
    let next = store.create(zone("z3")).await.unwrap();
    assert!(next.version > before.revision, "revision went back after reopen");

    // The change log survived: a watch from before the restart replays it.
    let mut s = store.watch(base).await.unwrap();
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(
            tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(events[..4], events_before[..]);
    assert_eq!(events[4], Event::Put(next));
}

#[tokio::test]
async fn a_second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.create(zone("z")).await.unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(OpenError::Locked { path }) => assert!(path.starts_with(dir.path())),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second open of a locked store succeeded"),
    }
    // So is one from another process.
    let out = run_child("probe", dir.path(), 0, Duration::from_secs(60));
    assert!(out.iter().any(|l| l == "LOCKED"), "child probe said {out:?}");
    drop(store);
    let out = run_child("probe", dir.path(), 0, Duration::from_secs(60));
    assert!(
        out.iter().any(|l| l == "OPENED 1"),
        "child probe after close said {out:?}"
    );
}

#[tokio::test]
async fn persisted_change_log_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        log_capacity: 5,
        ..EmbeddedOptions::default()
    };
    {
        let store = EmbeddedStore::open_with(dir.path(), options.clone()).unwrap();
        for i in 0..12 {
            store.create(zone(&format!("z{i:02}"))).await.unwrap();
        }
        assert!(matches!(
            store.watch(3).await,
            Err(StoreError::Compacted {
                requested: 3,
                oldest: 7
            })
        ));
    }
    let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
    assert!(matches!(
        store.watch(6).await,
        Err(StoreError::Compacted {
            requested: 6,
            oldest: 7
        })
    ));
    let mut s = store.watch(7).await.unwrap();
    for want in 8..=12 {
        let e = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.revision(), want);
    }
}

/// `kill -9` a writer that has acknowledged writes; every acknowledged write
/// must be there after reopening, and the store must be consistent. Three
/// rounds, each reopening what the previous crash left.
#[test]
fn kill_9_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut counter_acked = 0u64;
    let mut start = 0u64;
    for round in 0..3 {
        let lines = run_writer_and_kill(dir.path(), start, 15);
        for line in &lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["ACK", i] => {
                    acked.insert(i.parse().unwrap());
                }
                ["COUNTER", n] => counter_acked = counter_acked.max(n.parse().unwrap()),
                _ => {}
            }
        }
        let max_acked = *acked.last().expect("the writer acknowledged nothing");
        rt.block_on(check_after_crash(dir.path(), &acked, counter_acked, round));
        // The write in flight at the kill may or may not have landed: skip it.
        start = max_acked + 2;
    }
}

async fn check_after_crash(dir: &Path, acked: &BTreeSet<u64>, counter_acked: u64, round: u32) {
    let store = EmbeddedStore::open(dir).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    let listing = store.list(&Filter::kind(ResourceType::Dataplane)).await.unwrap();
    let present: BTreeSet<u64> = listing
        .items
        .iter()
        .map(|r| r.key.name.trim_start_matches("dp-").parse().unwrap())
        .collect();
    let lost: Vec<&u64> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "round {round}: acknowledged writes lost: {lost:?}");
    // Beyond the acknowledged ones, only writes in flight at a kill may appear.
    // (a write in flight follows an acknowledged one).
    for extra in present.difference(acked) {
        assert!(
            extra.checked_sub(1).is_some_and(|prev| acked.contains(&prev)),
            "round {round}: dp-{extra} was never attempted"
        );
    }
    for r in &listing.items {
        assert!(
            r.version <= listing.revision,
            "round {round}: {} at version {} above the store revision {}",
            r.key,
            r.version,
            listing.revision
        );
        assert_eq!(r, &dataplane_like(r), "round {round}: {} is damaged", r.key);
    }
    let counter = store
        .get(&ResourceKey::global(ResourceType::Zone, "counter"))
        .await
        .unwrap()
        .expect("the counter is gone");
    let n = counter.spec["n"].as_u64().unwrap();
    assert!(
        n >= counter_acked,
        "round {round}: counter {n} below the acknowledged {counter_acked}"
    );

    // The change log agrees with the data: replaying it from the start
    // rebuilds exactly what is stored.
    let all = store.list(&Filter::all()).await.unwrap();
    let mut s = store.watch(0).await.unwrap();
    let mut replayed = std::collections::BTreeMap::new();
    let mut last = 0;
    while last < all.revision {
        let e = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: replay stopped at {last} before {}", all.revision))
            .unwrap()
            .unwrap();
        assert!(e.revision() > last, "round {round}: replay out of order");
        last = e.revision();
        match e {
            Event::Put(r) => {
                replayed.insert(r.key.clone(), r);
            }
            Event::Delete { key, .. } => {
                replayed.remove(&key);
            }
        }
    }
    assert_eq!(
        last, all.revision,
        "round {round}: the change log ends elsewhere than the store revision"
    );
    let replayed: Vec<Resource> = replayed.into_values().collect();
    let mut stored = all.items.clone();
    stored.sort_by(|a, b| a.key.cmp(&b.key));
    assert!(
        replayed == stored,
        "round {round}: replaying the change log does not give the stored data"
    );
}

/// What the writer would have written for `r`'s name (times and version
/// taken from `r`).
fn dataplane_like(r: &Resource) -> Resource {
    let i = r.key.name.trim_start_matches("dp-").parse().unwrap();
    let mut want = dataplane(i);
    want.creation_time = r.creation_time;
    want.modification_time = r.modification_time;
    want.version = r.version;
    want
}

/// Starts a writer child on `dir`, waits until it has acknowledged `n`
/// resources, kills it with SIGKILL and returns everything it printed.
fn run_writer_and_kill(dir: &Path, start: u64, n: usize) -> Vec<String> {
    let mut child = child_command("writer", dir, start)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = Vec::new();
    let mut acks = 0;
    while acks < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(line) = protocol(&line) {
                    acks += usize::from(line.starts_with("ACK "));
                    lines.push(line);
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("writer: {acks} of {n} acknowledgements ({e}); it printed {lines:?}");
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the writer exited on its own: {status}");
    // Whatever it acknowledged before dying is still in the pipe.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        lines.extend(protocol(&line));
    }
    reader.join().unwrap();
    lines
}

/// Runs a child to completion and returns its stdout lines.
fn run_child(mode: &str, dir: &Path, start: u64, timeout: Duration) -> Vec<String> {
    let mut child = child_command(mode, dir, start).stdout(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {mode} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(protocol)
        .collect()
}

fn child_command(mode: &str, dir: &Path, start: u64) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_MODE, mode)
        .env(CHILD_DIR, dir)
        .env(CHILD_START, start.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Not a test of its own: the body of the child processes above. Without
/// `MERIDIAN_STORE_TEST_CHILD` it does nothing.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    let start: u64 = std::env::var(CHILD_START).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match mode.as_str() {
        "probe" => match EmbeddedStore::open(&dir) {
            Ok(store) => {
                let n = rt.block_on(store.list(&Filter::all())).unwrap().items.len();
                say(&format!("OPENED {n}"));
            }
            Err(OpenError::Locked { .. }) => say("LOCKED"),
            Err(e) => say(&format!("ERROR {e}")),
        },
        "writer" => rt.block_on(writer(&dir, start)),
        other => panic!("unknown child mode {other}"),
    }
}

/// Creates `dp-{start}`, `dp-{start+1}`, … and bumps a counter after each,
/// printing every acknowledged write, until killed.
async fn writer(dir: &Path, start: u64) {
    let store = EmbeddedStore::open(dir).unwrap();
    let counter_key = ResourceKey::global(ResourceType::Zone, "counter");
    let mut counter = match store.get(&counter_key).await.unwrap() {
        Some(c) => c,
        None => store
            .create(Resource::new(
                counter_key,
                Default::default(),
                json!({"n": 0}),
                Utc::now(),
            ))
            .await
            .unwrap(),
    };
    for i in start.. {
        store.create(dataplane(i)).await.unwrap();
        say(&format!("ACK {i}"));
        counter.spec = json!({"n": i});
        counter = store.update(counter).await.unwrap();
        say(&format!("COUNTER {i}"));
    }
}

/// Prints one line of the child protocol. libtest prints its own text on
/// the same stdout (even on the same line), so protocol lines carry a marker.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{line}").unwrap();
    out.flush().unwrap();
}
