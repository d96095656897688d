//! Leader election among the replicas of the global that share one etcd.
//!
//! Work that must happen once (creating default meshes and policies, …) runs
//! only on the leader. [`LeaderElector::start`] returns a [`LeaderHandle`]
//! whose `watch::Receiver<bool>` says "I am the leader"; the embedded and
//! memory stores use [`LeaderHandle::always`].
//!
//! # How it works: a lease and one key
//!
//! Each candidate holds an etcd lease (TTL 5 s) and renews it every TTL/3
//! (~1.7 s). In the same round it tries
//! `txn(create_revision(key) == 0 → put(key, id, lease))`; whoever's put
//! succeeds leads, and stays leader while the key carries its lease. When the
//! leader dies its lease expires, etcd deletes the key, and the next round of
//! another candidate takes it: leadership moves within TTL + one round
//! (≤ ~7 s).
//!
//! Why not etcd's election API (`campaign`/`observe`)? `Campaign` is a unary
//! call that blocks until elected, so it cannot share the short request
//! deadline that everything else here uses to notice a dead etcd quickly,
//! and a canceled campaign has to be cleaned up server-side. A lease plus a
//! compare-and-swap on one key is the same mechanism with every call short
//! and bounded, and the step-down rule below is explicit.
//!
//! # Never two leaders
//!
//! A renewal sent at local time `t` that etcd answers with TTL `T` means the
//! lease lives at least until `t + T`. A leader that cannot renew (etcd down,
//! partition) steps down at `t + T − 0.5 s`, before etcd can expire its lease
//! and let another candidate in. After an etcd restart the lease usually
//! survives (etcd restores leases with a fresh TTL), so the same replica
//! re-acquires leadership as soon as it can renew; if the lease is gone it
//! grants a new one and campaigns again.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cache::Backoff;
use crate::etcd::{classify, EtcdStore};
use crate::StoreError;

/// The default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// A leader steps down this long before its lease could expire in etcd.
const STEP_DOWN_MARGIN: Duration = Duration::from_millis(500);

/// Campaigns for leadership; see the module docs.
pub struct LeaderElector {
    client: Client,
    key: String,
    id: String,
    ttl: Duration,
    request_timeout: Duration,
}

impl LeaderElector {
    /// A candidate named `id` (shown as the key's value) competing for `key`.
    pub fn new(client: Client, key: impl Into<String>, id: impl Into<String>) -> Self {
        LeaderElector {
            client,
            key: key.into(),
            id: id.into(),
            ttl: DEFAULT_TTL,
            request_timeout: Duration::from_secs(2),
        }
    }

    /// A candidate on `store`'s etcd, competing for the store's global
    /// system record `leader`.
    pub fn for_store(store: &EtcdStore, id: impl Into<String>) -> Self {
        Self::new(store.client(), store.keys().system(None, "leader"), id)
    }

    /// The lease TTL (at least 2 s, whole seconds; default 5 s). Leadership
    /// moves within about `ttl * 4 / 3` of the leader's death.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Duration::from_secs(ttl.as_secs().max(2));
        self
    }

    /// Deadline of each etcd call (default 2 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Starts campaigning in the background (within a Tokio runtime).
    pub fn start(self) -> LeaderHandle {
        let state = Arc::new(watch::Sender::new(false));
        let (stop, stop_rx) = oneshot::channel();
        let campaign = Campaign { el: self, lease: None };
        let task = tokio::spawn(campaign.run(state.clone(), stop_rx));
        LeaderHandle {
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// "Am I the leader", for as long as the handle lives.
///
/// Dropping the handle stops campaigning at once, like a process dying: the
/// lease is left to expire, so another replica leads within the TTL.
/// [`LeaderHandle::resign`] hands over immediately.
pub struct LeaderHandle {
    state: Arc<watch::Sender<bool>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl LeaderHandle {
    /// Always the leader: for a single process on the embedded or memory
    /// store.
    pub fn always() -> Self {
        LeaderHandle {
            state: Arc::new(watch::Sender::new(true)),
            stop: None,
            task: None,
        }
    }

    /// Follows leadership.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Whether this replica leads right now.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Steps down and releases the lease (and with it the key) so another
    /// replica takes over at its next round, without waiting for the TTL.
    pub async fn resign(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.state.send_replace(false);
    }
}

impl Drop for LeaderHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.state.send_replace(false);
    }
}

struct Lease {
    id: i64,
    /// The earliest time etcd may expire the lease: send time of the last
    /// successful grant or renewal plus the TTL etcd answered.
    expires: Instant,
    /// The keepalive stream, reused across rounds while it works.
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

/// Why a round did not settle leadership.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// etcd no longer knows our lease (it expired): whatever we held is gone.
    #[error("lease {0:x} expired")]
    LeaseLost(i64),
    /// etcd did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Campaign {
    el: LeaderElector,
    lease: Option<Lease>,
}

impl Campaign {
    async fn run(mut self, state: Arc<watch::Sender<bool>>, mut stop: oneshot::Receiver<()>) {
        let tick = self.el.ttl / 3;
        let mut backoff = Backoff::new(Duration::from_millis(100), tick);
        let mut next = Instant::now();
        let set = |leader: bool| {
            state.send_if_modified(|v| {
                let changed = *v != leader;
                *v = leader;
                changed
            })
        };
        loop {
            let leading = *state.borrow();
            let step_down_at = self
                .lease
                .as_ref()
                .filter(|_| leading)
                .map(|l| l.expires.checked_sub(STEP_DOWN_MARGIN).unwrap_or(l.expires));
            tokio::select! {
                biased;
                _ = &mut stop => {
                    set(false);
                    self.release().await;
                    return;
                }
                _ = sleep_until_opt(step_down_at) => {
                    set(false);
                    tracing::warn!(key = %self.el.key, id = %self.el.id, "could not renew the leader lease in time; stepping down");
                }
                res = async { tokio::time::sleep_until(next).await; self.round().await } => {
                    let now = Instant::now();
                    match res {
                        Ok(leader) => {
                            if set(leader) {
                                tracing::info!(key = %self.el.key, id = %self.el.id, leader, "leadership changed");
                            }
                            backoff.reset();
                            next = now + tick;
                        }
                        Err(RoundError::LeaseLost(id)) => {
                            set(false);
                            tracing::warn!(key = %self.el.key, id = %self.el.id, lease = id, "leader lease expired; campaigning with a new one");
                            self.lease = None;
                            next = now + backoff.next_delay();
                        }
                        Err(RoundError::Store(e)) => {
                            // Leadership, if held, lasts until the step-down
                            // deadline: a blip shorter than the TTL is harmless.
                            tracing::warn!(key = %self.el.key, id = %self.el.id, error = %e, "leader election round failed");
                            next = now + backoff.next_delay();
                        }
                    }
                }
            }
        }
    }

    /// Renews (or grants) the lease, then claims the key or checks that it
    /// is still ours. `Ok(true)` when leading.
    async fn round(&mut self) -> Result<bool, RoundError> {
        let expires = self.renew().await?;
        let Some(lease) = self.lease.as_ref().map(|l| l.id) else {
            return Ok(false);
        };
        let key = self.el.key.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.el.id.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = self.el.client.kv_client();
        let resp = self.call("leader campaign", kv.txn(txn)).await?;
        let ours = resp.succeeded()
            || resp.op_responses().iter().any(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.lease() == lease),
                _ => false,
            });
        // Only claim leadership that outlives this moment by the margin.
        Ok(ours && Instant::now() + STEP_DOWN_MARGIN < expires)
    }

    /// Makes sure we hold a live lease; returns until when it lives.
    async fn renew(&mut self) -> Result<Instant, RoundError> {
        let sent = Instant::now();
        let Some(lease) = self.lease.as_mut() else {
            let ttl = i64::try_from(self.el.ttl.as_secs()).unwrap_or(5);
            let mut client = self.el.client.lease_client();
            let granted = call(&self.el, "leader lease grant", client.grant(ttl, None)).await?;
            let expires = sent + secs(granted.ttl());
            self.lease = Some(Lease {
                id: granted.id(),
                expires,
                keeper: None,
            });
            return Ok(expires);
        };
        let id = lease.id;
        // Taken out while in use: a round canceled midway leaves no
        // half-read stream behind.
        let ttl = match lease.keeper.take() {
            Some((mut keeper, mut stream)) => {
                let answer = call(&self.el, "leader lease keepalive", async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await?;
                let Some(answer) = answer else {
                    return Err(StoreError::Unavailable("etcd closed the lease keepalive stream".into()).into());
                };
                if answer.ttl() <= 0 {
                    return Err(RoundError::LeaseLost(id));
                }
                lease.keeper = Some((keeper, stream));
                answer.ttl()
            }
            None => {
                // Opening the stream performs one renewal and fails when the
                // lease is unknown.
                let mut client = self.el.client.lease_client();
                match call(&self.el, "leader lease keepalive", client.keep_alive(id)).await {
                    Ok(pair) => lease.keeper = Some(pair),
                    Err(StoreError::Unavailable(m) | StoreError::Internal(m)) if m.contains("lease not found") => {
                        return Err(RoundError::LeaseLost(id))
                    }
                    Err(e) => return Err(e.into()),
                }
                i64::try_from(self.el.ttl.as_secs()).unwrap_or(5)
            }
        };
        lease.expires = sent + secs(ttl);
        Ok(lease.expires)
    }

    /// Revokes the lease, which deletes the key if we held it.
    async fn release(&mut self) {
        let Some(lease) = self.lease.take() else { return };
        let mut client = self.el.client.lease_client();
        match call(&self.el, "leader lease revoke", client.revoke(lease.id)).await {
            Ok(_) => tracing::info!(key = %self.el.key, id = %self.el.id, "resigned leadership"),
            Err(e) => {
                tracing::warn!(key = %self.el.key, id = %self.el.id, error = %e, "could not revoke the leader lease; it expires by itself")
            }
        }
    }

    async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        call(&self.el, what, fut).await
    }
}

/// One etcd call under the elector's deadline.
async fn call<T>(
    el: &LeaderElector,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(el.request_timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify("", what, e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd: {what} did not answer within {:?}",
            el.request_timeout
        ))),
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
