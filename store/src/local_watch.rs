//! The watch machinery of the in-process backends ([`crate::memory`] and
//! [`crate::embedded`]): a bounded change log plus a broadcast channel.
//!
//! A [`Hub`] keeps the last `capacity` events in memory and sends each write's
//! events, as one batch, to every live watcher. A watcher starts by replaying
//! the log after its revision and then follows the broadcast; both are taken
//! under one lock, which is also held while a write is published, so nothing
//! falls between the replay and the live part.
//!
//! One write may produce several events (a mesh delete removes the mesh and
//! everything in it); they all carry the revision of that write, like etcd's
//! transactions. The log is only ever trimmed by whole revisions, so a watch
//! never starts in the middle of one.
//!
//! A watcher that falls behind the broadcast channel is caught up from the
//! log when the log still holds what it missed; otherwise its stream yields
//! [`StoreError::Compacted`] and ends — never a silent gap.
//!
//! Callers must publish writes in revision order: both backends publish while
//! holding the lock that serializes their writes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use futures::stream;
use tokio::sync::broadcast;

use crate::{Event, EventStream, StoreError};

/// Default number of events kept for `watch` replays.
pub(crate) const DEFAULT_LOG_CAPACITY: usize = 10_000;

/// Default number of writes a watcher may fall behind the live channel before
/// it is caught up from the log.
const BROADCAST_CAPACITY: usize = 1024;

/// The events of one write, all at the same revision.
type Batch = Arc<[Event]>;

pub(crate) struct Hub {
    state: Mutex<HubState>,
}

struct HubState {
    log: VecDeque<Event>,
    capacity: usize,
    /// Every event with a revision `<= compacted_through` has been dropped
    /// from the log: `watch(rev)` needs `rev >= compacted_through`.
    compacted_through: u64,
    /// The revision of the last published write.
    current: u64,
    tx: broadcast::Sender<Batch>,
}

impl HubState {
    /// The revision through which the log must be trimmed so that it holds at
    /// most `capacity` events once `incoming` are appended, rounded up to a
    /// whole revision. `None` when nothing needs to go.
    fn compaction_point(&self, incoming: &[Event]) -> Option<u64> {
        let total = self.log.len() + incoming.len();
        let excess = total.checked_sub(self.capacity).filter(|n| *n > 0)?;
        // The last event to drop, in the sequence `log ++ incoming`.
        let idx = excess - 1;
        let last_dropped = match self.log.get(idx) {
            Some(e) => e.revision(),
            None => incoming.get(idx - self.log.len())?.revision(),
        };
        Some(last_dropped)
    }

    fn trim_through(&mut self, revision: u64) {
        while self.log.front().is_some_and(|e| e.revision() <= revision) {
            self.log.pop_front();
        }
        self.compacted_through = self.compacted_through.max(revision);
    }

    /// The logged events after `revision`, in order.
    fn after(&self, revision: u64) -> VecDeque<Event> {
        let start = self.log.partition_point(|e| e.revision() <= revision);
        self.log.range(start..).cloned().collect()
    }
}

impl Hub {
    /// A hub whose log starts with `history` (events in revision order, e.g.
    /// loaded from disk), at store revision `current`, where history up to
    /// `compacted_through` is gone.
    pub(crate) fn new(capacity: usize, history: Vec<Event>, compacted_through: u64, current: u64) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let mut state = HubState {
            log: VecDeque::new(),
            capacity: capacity.max(1),
            compacted_through,
            current,
            tx,
        };
        if let Some(cut) = state.compaction_point(&history) {
            state.log.extend(history);
            state.trim_through(cut);
        } else {
            state.log.extend(history);
        }
        Arc::new(Hub {
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, HubState>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Internal("watch hub lock poisoned".into()))
    }

    /// Where the log will be trimmed once `incoming` is published: a
    /// persistent backend drops the same history, in the same transaction.
    pub(crate) fn compaction_point(&self, incoming: &[Event]) -> Result<Option<u64>, StoreError> {
        Ok(self.lock()?.compaction_point(incoming))
    }

    /// The revision from which `watch` is still possible.
    #[cfg(test)]
    pub(crate) fn compacted_through(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.compacted_through)
    }

    /// Records one write's events (all at `revision`) and sends them to the
    /// live watchers. Must be called in revision order.
    pub(crate) fn publish(&self, revision: u64, events: Vec<Event>) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        state.current = state.current.max(revision);
        if events.is_empty() {
            return Ok(());
        }
        let cut = state.compaction_point(&events);
        let batch: Batch = events.into();
        state.log.extend(batch.iter().cloned());
        if let Some(cut) = cut {
            state.trim_through(cut);
        }
        // No receivers is not an error: nobody is watching.
        let _ = state.tx.send(batch);
        Ok(())
    }

    /// Every event after `revision`, then live events, in order.
    pub(crate) fn watch(self: &Arc<Self>, revision: u64) -> Result<EventStream, StoreError> {
        let state = self.lock()?;
        if revision < state.compacted_through {
            return Err(StoreError::Compacted {
                requested: revision,
                oldest: state.compacted_through,
            });
        }
        let watcher = Watcher {
            hub: Arc::downgrade(self),
            rx: state.tx.subscribe(),
            pending: state.after(revision),
            through: revision.max(state.current),
            done: false,
        };
        drop(state);
        Ok(Box::pin(stream::unfold(watcher, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })))
    }
}

/// The state of one watch stream.
struct Watcher {
    /// Weak, so that dropping the store closes its watches.
    hub: Weak<Hub>,
    rx: broadcast::Receiver<Batch>,
    /// Events taken from the log or the channel, not yet yielded.
    pending: VecDeque<Event>,
    /// Every event with a revision `<= through` is in `pending` or was
    /// yielded.
    through: u64,
    done: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            match self.rx.recv().await {
                Ok(batch) => {
                    let revision = batch.first().map_or(0, Event::revision);
                    if revision > self.through {
                        self.pending.extend(batch.iter().cloned());
                        self.through = revision;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(e) = self.catch_up() {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Err(StoreError::Unavailable("store closed".into())));
                }
            }
        }
    }

    /// After falling behind the channel: re-reads what was missed from the
    /// log and subscribes again, or reports that it is gone.
    fn catch_up(&mut self) -> Result<(), StoreError> {
        let hub = self
            .hub
            .upgrade()
            .ok_or_else(|| StoreError::Unavailable("store closed".into()))?;
        let state = hub.lock()?;
        if self.through < state.compacted_through {
            return Err(StoreError::Compacted {
                requested: self.through,
                oldest: state.compacted_through,
            });
        }
        self.pending.extend(state.after(self.through));
        self.through = self.through.max(state.current);
        self.rx = state.tx.subscribe();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeZone, Utc};
    use futures::StreamExt;
    use meridian_core::{Resource, ResourceKey, ResourceType};

    use super::*;

    fn put(name: &str, rev: u64) -> Event {
        let key = ResourceKey::global(ResourceType::Zone, name);
        let mut r = Resource::new(
            key,
            Default::default(),
            serde_json::json!({}),
            Utc.timestamp_opt(0, 0).unwrap(),
        );
        r.version = rev;
        Event::Put(r)
    }

    fn del(name: &str, rev: u64) -> Event {
        Event::Delete {
            key: ResourceKey::global(ResourceType::Zone, name),
            revision: rev,
        }
    }

    async fn next(s: &mut EventStream) -> Result<Event, StoreError> {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("timed out waiting for an event")
            .expect("stream ended")
    }

    #[test]
    fn trims_whole_revisions() {
        let hub = Hub::new(3, vec![], 0, 0);
        hub.publish(1, vec![put("a", 1)]).unwrap();
        hub.publish(2, vec![del("a", 2), del("b", 2)]).unwrap();
        assert_eq!(hub.compaction_point(&[put("c", 3)]).unwrap(), Some(1));
        hub.publish(3, vec![put("c", 3)]).unwrap();
        assert_eq!(hub.compacted_through().unwrap(), 1);
        // Dropping one more event must drop all of revision 2.
        assert_eq!(hub.compaction_point(&[put("d", 4)]).unwrap(), Some(2));
        hub.publish(4, vec![put("d", 4)]).unwrap();
        assert_eq!(hub.compacted_through().unwrap(), 2);
        assert!(matches!(
            hub.watch(1),
            Err(StoreError::Compacted {
                requested: 1,
                oldest: 2
            })
        ));
        assert!(hub.watch(2).is_ok());
    }

    #[test]
    fn history_longer_than_capacity_is_trimmed_on_load() {
        let history = (1..=10).map(|i| put("x", i)).collect();
        let hub = Hub::new(4, history, 0, 10);
        assert_eq!(hub.compacted_through().unwrap(), 6);
    }

    #[tokio::test]
    async fn replay_then_live_without_duplicates() {
        let hub = Hub::new(100, vec![], 0, 0);
        hub.publish(1, vec![put("a", 1)]).unwrap();
        hub.publish(2, vec![put("b", 2)]).unwrap();
        let mut s = hub.watch(1).unwrap();
        hub.publish(3, vec![put("c", 3)]).unwrap();
        assert_eq!(next(&mut s).await.unwrap().revision(), 2);
        assert_eq!(next(&mut s).await.unwrap().revision(), 3);
        // A watch from the future skips what it asked to skip.
        let mut f = hub.watch(4).unwrap();
        hub.publish(4, vec![put("d", 4)]).unwrap();
        hub.publish(5, vec![put("e", 5)]).unwrap();
        assert_eq!(next(&mut f).await.unwrap().revision(), 5);
    }

    #[tokio::test]
    async fn lagging_watcher_is_caught_up_from_the_log() {
        let hub = Hub::new(100_000, vec![], 0, 0);
        let mut s = hub.watch(0).unwrap();
        let n = BROADCAST_CAPACITY as u64 * 3;
        for rev in 1..=n {
            hub.publish(rev, vec![put("a", rev)]).unwrap();
        }
        for rev in 1..=n {
            assert_eq!(next(&mut s).await.unwrap().revision(), rev);
        }
    }

    #[tokio::test]
    async fn lagging_watcher_beyond_the_log_gets_compacted() {
        let hub = Hub::new(10, vec![], 0, 0);
        let mut s = hub.watch(0).unwrap();
        let n = BROADCAST_CAPACITY as u64 + 5;
        for rev in 1..=n {
            hub.publish(rev, vec![put("a", rev)]).unwrap();
        }
        match next(&mut s).await {
            Err(StoreError::Compacted { requested: 0, oldest }) => assert_eq!(oldest, n - 10),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(s.next().await.is_none(), "the stream ends after the error");
    }

    #[tokio::test]
    async fn dropping_the_hub_ends_watches() {
        let hub = Hub::new(10, vec![], 0, 0);
        let mut s = hub.watch(0).unwrap();
        drop(hub);
        assert!(matches!(next(&mut s).await, Err(StoreError::Unavailable(_))));
    }
}
