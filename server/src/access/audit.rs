//! The audit log (DESIGN §12): every write and every token issued or
//! revoked through the API, allowed or not — who, what, when, the result.
//!
//! Each entry is logged (target `meridian::audit`) before the response is
//! sent, and stored by a writer task that batches what arrives within
//! [`BATCH_WINDOW`] into one global system record `audit/<time>-<id>`
//! holding a JSON array, so that a burst of writes costs the store one
//! write per batch. The queue is bounded and senders wait when it is full:
//! entries are never dropped. [`AuditLog::flush`] (called by `GET /audit`)
//! waits until everything recorded so far is stored.
//!
//! A pruner deletes records older than the retention period once a minute.
//! Record names sort by time, so reading and pruning walk them in order.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The prefix of the audit records.
pub const RECORD_PREFIX: &str = "audit/";
/// How long the writer gathers entries into one record.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// The most entries in one record.
const MAX_BATCH: usize = 500;
/// Entries queued before senders wait.
const QUEUE: usize = 10_000;
/// Records read from the store per step when answering a query.
const READ_CHUNK: usize = 256;
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How an audited request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Succeeded,
    /// Refused for lack of a permission (403).
    Denied,
    /// Allowed, then refused or failed (invalid, conflict, store down…).
    Failed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One audited request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// RFC 3339 with microseconds.
    pub time: String,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// `CREATE`, `UPDATE`, `DELETE`, `GENERATE_ZONE_TOKEN`, `REVOKE_USER_TOKEN`…
    pub action: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub result: Outcome,
    /// The HTTP status of the answer.
    pub status: u16,
    /// Why it was denied or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What `GET /audit` asks for; `None` matches anything.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub kind: Option<String>,
    pub mesh: Option<String>,
    pub user: Option<String>,
    pub action: Option<String>,
    pub result: Option<Outcome>,
    /// Entries at or after this time only.
    pub since: Option<DateTime<Utc>>,
}

impl Query {
    fn matches(&self, e: &AuditEntry) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        eq(&self.kind, &e.kind)
            && eq(&self.mesh, &e.mesh)
            && self.user.as_ref().is_none_or(|u| u == &e.user)
            && self.action.as_ref().is_none_or(|a| a == &e.action)
            && self.result.is_none_or(|r| r == e.result)
    }
}

enum Msg {
    Entry(AuditEntry),
    Flush(oneshot::Sender<()>),
}

/// The audit log of one control plane.
pub struct AuditLog {
    store: Arc<dyn Store>,
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

fn record_name(at: DateTime<Utc>, instance: &str, seq: u64) -> String {
    let nanos = at.timestamp_nanos_opt().unwrap_or(i64::MAX).max(0);
    format!("{RECORD_PREFIX}{nanos:020}-{instance}-{seq:010}")
}

/// The time of a record from its name; `None` for a name Meridian did not write.
fn record_time(name: &str) -> Option<i64> {
    name.strip_prefix(RECORD_PREFIX)?.get(..20)?.parse().ok()
}

impl AuditLog {
    /// Starts the writer and the pruner. `instance` tells this process's
    /// records from other replicas' on a shared store.
    pub fn start(store: Arc<dyn Store>, retention: Duration, instance: String) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        // One task writes and prunes; it ends (and lets go of the store)
        // when the log is dropped with the API.
        tokio::spawn(write_loop(store.clone(), rx, sanitize(&instance), retention));
        Arc::new(AuditLog { store, tx })
    }

    /// Logs `entry` and queues it for the store.
    pub async fn record(&self, entry: AuditEntry) {
        tracing::info!(
            target: "meridian::audit",
            user = %entry.user,
            action = %entry.action,
            r#type = entry.kind.as_deref().unwrap_or(""),
            mesh = entry.mesh.as_deref().unwrap_or(""),
            name = entry.name.as_deref().unwrap_or(""),
            result = entry.result.name(),
            status = entry.status,
            reason = entry.reason.as_deref().unwrap_or(""),
            "audit"
        );
        if self.tx.send(Msg::Entry(entry)).await.is_err() {
            tracing::error!("the audit writer stopped; this entry is only in the log");
        }
    }

    /// Waits until every entry recorded before this call is stored (or the
    /// store refused it, which the writer logs).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The stored entries matching `query`, oldest first, that `visible`
    /// accepts: `(total, entries[offset..offset+size])`.
    pub async fn query(
        &self,
        query: &Query,
        visible: impl Fn(&AuditEntry) -> bool,
        offset: usize,
        size: usize,
    ) -> Result<(usize, Vec<AuditEntry>), StoreError> {
        let mut after = query.since.map(|t| {
            // Every record of an earlier nanosecond sorts before this name.
            let nanos = t.timestamp_nanos_opt().unwrap_or(0).max(0);
            format!("{RECORD_PREFIX}{:020}", nanos.saturating_sub(1))
        });
        let since = query
            .since
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let (mut total, mut page) = (0usize, Vec::new());
        loop {
            let chunk = self
                .store
                .list_system(RECORD_PREFIX, after.as_deref(), READ_CHUNK)
                .await?;
            let Some((last, _)) = chunk.last() else { break };
            after = Some(last.clone());
            let full = chunk.len() == READ_CHUNK;
            for (name, bytes) in chunk {
                let entries: Vec<AuditEntry> = match serde_json::from_slice(&bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        // Reported, not hidden: the reader sees that entries are missing.
                        return Err(StoreError::Internal(format!(
                            "audit record {name} does not decode: {e}"
                        )));
                    }
                };
                for e in entries {
                    if since.as_ref().is_some_and(|s| &e.time < s) || !query.matches(&e) || !visible(&e) {
                        continue;
                    }
                    if total >= offset && page.len() < size {
                        page.push(e);
                    }
                    total += 1;
                }
            }
            if !full {
                break;
            }
        }
        Ok((total, page))
    }
}

fn sanitize(instance: &str) -> String {
    let s: String = instance
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .take(63)
        .collect();
    if s.is_empty() {
        "cp".into()
    } else {
        s
    }
}

async fn write_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>, instance: String, retention: Duration) {
    let mut seq: u64 = 0;
    let mut next_prune = tokio::time::Instant::now();
    loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => m,
                None => return,
            },
            _ = tokio::time::sleep_until(next_prune) => {
                if let Err(e) = prune(&store, retention).await {
                    tracing::warn!(error = %e, "pruning the audit log failed");
                }
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                continue;
            }
        };
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        match first {
            Msg::Entry(e) => batch.push(e),
            Msg::Flush(f) => flushes.push(f),
        }
        if flushes.is_empty() {
            // Gather what arrives within the window, unless someone waits.
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while batch.len() < MAX_BATCH && flushes.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Msg::Entry(e))) => batch.push(e),
                    Ok(Some(Msg::Flush(f))) => flushes.push(f),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            seq += 1;
            let name = record_name(Utc::now(), &instance, seq);
            match serde_json::to_vec(&batch) {
                Ok(bytes) => {
                    let mut delay = Duration::from_millis(50);
                    // Retried until stored: the queue holds the senders back meanwhile.
                    while let Err(e) = store.put_system(None, &name, bytes.clone()).await {
                        tracing::warn!(error = %e, entries = batch.len(), "storing audit entries failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
                Err(e) => tracing::error!(error = %e, "audit entries do not encode"),
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

/// Deletes the records older than `retention`; returns how many.
pub async fn prune(store: &Arc<dyn Store>, retention: Duration) -> Result<usize, StoreError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let cutoff = cutoff.timestamp_nanos_opt().unwrap_or(0);
    let mut deleted = 0;
    loop {
        let chunk = store.list_system(RECORD_PREFIX, None, READ_CHUNK).await?;
        let old: Vec<String> = chunk
            .into_iter()
            .map(|(n, _)| n)
            .take_while(|n| record_time(n).is_some_and(|t| t < cutoff))
            .collect();
        if old.is_empty() {
            return Ok(deleted);
        }
        let n = old.len();
        store.delete_system(&old).await?;
        deleted += n;
        if n < READ_CHUNK {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_store::memory::MemoryStore;

    fn entry(user: &str, mesh: &str, result: Outcome) -> AuditEntry {
        AuditEntry {
            time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            user: user.into(),
            groups: vec![],
            action: "CREATE".into(),
            kind: Some("MeshTimeout".into()),
            mesh: Some(mesh.into()),
            name: Some("t".into()),
            result,
            status: 201,
            reason: None,
        }
    }

    #[tokio::test]
    async fn stored_in_batches_queried_filtered_and_pruned() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::start(store.clone(), Duration::from_secs(3600), "g 1".into());
        for i in 0..1200 {
            let mesh = if i % 2 == 0 { "a" } else { "b" };
            log.record(entry(&format!("u{}", i % 3), mesh, Outcome::Succeeded))
                .await;
        }
        log.record(entry("u0", "a", Outcome::Denied)).await;
        log.flush().await;
        let records = store.list_system(RECORD_PREFIX, None, 10_000).await.unwrap();
        assert!(
            records.len() < 100,
            "{} records for 1201 entries: not batched",
            records.len()
        );
        let all = Query::default();
        let (total, page) = log.query(&all, |_| true, 0, 50).await.unwrap();
        assert_eq!((total, page.len()), (1201, 50));
        let (_, tail) = log.query(&all, |_| true, 1190, 50).await.unwrap();
        assert_eq!(tail.len(), 11);
        let q = Query {
            mesh: Some("a".into()),
            result: Some(Outcome::Denied),
            ..Query::default()
        };
        let (total, page) = log.query(&q, |_| true, 0, 10).await.unwrap();
        assert_eq!((total, page[0].user.as_str()), (1, "u0"));
        let (total, _) = log
            .query(&all, |e| e.mesh.as_deref() == Some("b"), 0, 10)
            .await
            .unwrap();
        assert_eq!(total, 600);
        // Nothing is old enough to go; with no retention, everything goes.
        assert_eq!(prune(&store, Duration::from_secs(3600)).await.unwrap(), 0);
        let n = records.len();
        assert_eq!(prune(&store, Duration::ZERO).await.unwrap(), n);
        assert_eq!(log.query(&all, |_| true, 0, 10).await.unwrap().0, 0);
    }

    #[tokio::test]
    async fn a_damaged_record_is_an_error() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store
            .put_system(None, &record_name(Utc::now(), "x", 1), b"{not json".to_vec())
            .await
            .unwrap();
        let log = AuditLog::start(store, Duration::from_secs(60), "x".into());
        assert!(log.query(&Query::default(), |_| true, 0, 10).await.is_err());
    }
}
