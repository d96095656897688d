//! [`EtcdStore`]: the [`Store`] on etcd, for several replicas of the global.
//!
//! Keys follow [`crate::keys`] under a configurable prefix (e.g. `/meridian`).
//! Values are [`Resource::to_stored_bytes`]; a resource's `version` is its
//! key's `mod_revision`, so etcd's own compare-and-swap does the work:
//!
//! - `create` is a txn `create_revision(key) == 0 → put`;
//! - `update` is a txn `version(key) > 0 ∧ mod_revision(key) == v → put`, else
//!   a `get` in the same txn tells `NotFound` from `Conflict`;
//! - deleting a `Mesh` is one txn deleting the mesh key, the range
//!   `mesh_resources(m)` and the range `mesh_system(m)`;
//! - `list_system` is one range read of the global system records' key range
//!   with a `limit`, started at `start_after`'s key plus a `\0` byte;
//!   `delete_system` is one txn of deletes per 128 names (etcd's default
//!   `--max-txn-ops`);
//! - `watch(rev)` is an etcd watch on `all_resources()` starting at `rev`
//!   itself, dropping the events of `rev` (the caller has them). Compacting
//!   at `c` also drops a tombstone written at `c`, and etcd only refuses
//!   watches that start *before* `c`; starting one revision early makes etcd
//!   refuse (with `Compacted`) every watch that could miss such a deletion.
//!
//! Every call is bounded by a deadline (connect + request timeout, 2 s each
//! by default): a dead or partitioned etcd answers `StoreError::Unavailable`
//! within a few seconds instead of hanging the caller. `connect` itself does
//! not touch the network (the channel connects lazily), so a global can start
//! while etcd is still coming up; [`EtcdStore::check`] probes it. With
//! several endpoints, members that stop answering are taken out of rotation
//! until they answer again (`etcd_health`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use meridian_core::{Resource, ResourceKey, ResourceType};
use tonic::Code;

use crate::etcd_health::{Prober, PROBE_TIMEOUT};
use crate::keys::{prefix_end, Keys};
use crate::{Event, EventStream, Filter, Listing, Store, StoreError};

/// How an [`EtcdStore`] talks to etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Deadline for establishing a connection to an endpoint.
    pub connect_timeout: Duration,
    /// Deadline for one request once connected.
    pub request_timeout: Duration,
    /// HTTP/2 keepalive (interval, timeout) on streams, so a silently dead
    /// etcd ends a watch instead of leaving it hanging. etcd refuses pings
    /// more often than every 5 s (`--grpc-keepalive-min-time`).
    pub keep_alive: (Duration, Duration),
    /// Items per range request when listing (the list stays consistent: all
    /// pages are read at the revision of the first).
    pub list_page_size: i64,
    /// TLS to etcd (`https://` endpoints): the CA and, for client
    /// certificate authentication, a certificate and key.
    pub tls: Option<EtcdTls>,
}

/// PEM material for TLS to etcd.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's serving certificates.
    pub ca_pem: Vec<u8>,
    /// This client's certificate and key, when etcd asks for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            keep_alive: (Duration::from_secs(10), Duration::from_secs(5)),
            list_page_size: 500,
            tls: None,
        }
    }
}

/// Largest response we accept (a page of resources, or a watch response
/// carrying a big mesh deletion). Resources are at most ~1.5 MiB each (etcd's
/// request limit).
const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// The most operations etcd accepts in one txn by default
/// (`--max-txn-ops`); larger deletes of system records are split.
const MAX_TXN_OPS: usize = 128;

/// The [`Store`] on etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    /// The endpoints, for error messages.
    endpoints: String,
    options: EtcdOptions,
    /// Steers requests away from members that do not answer (several
    /// endpoints only); shared by the clones, ends with the last one.
    prober: Option<Arc<Prober>>,
}

impl EtcdStore {
    /// A store on `endpoints` (e.g. `http://127.0.0.1:2379`) keeping its keys
    /// under `prefix` (e.g. `/meridian`), with default timeouts. Does not
    /// contact etcd; see [`EtcdStore::check`].
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, prefix, EtcdOptions::default()).await
    }

    /// Like [`EtcdStore::connect`], with explicit options.
    pub async fn connect_with(endpoints: &[String], prefix: &str, options: EtcdOptions) -> Result<Self, StoreError> {
        let joined = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(StoreError::Internal("no etcd endpoints given".into()));
        }
        let secure = endpoints.iter().filter(|e| e.starts_with("https://")).count();
        match (&options.tls, secure) {
            (None, n) if n > 0 => {
                return Err(StoreError::Internal(format!(
                    "etcd {joined}: https endpoints need a CA (--etcd-cacert)"
                )))
            }
            (Some(_), n) if n != endpoints.len() => {
                return Err(StoreError::Internal(format!(
                    "etcd {joined}: with TLS settings every endpoint must be https://"
                )))
            }
            _ => {}
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(options.keep_alive.0, options.keep_alive.1);
        if let Some(tls) = &options.tls {
            let mut config =
                etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        let deadline = options.connect_timeout + options.request_timeout;
        let client = match tokio::time::timeout(deadline, Client::connect(endpoints, Some(connect.clone()))).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(classify(&joined, "connect", e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd {joined}: connect did not finish within {deadline:?}"
                )))
            }
        };
        let prober = if endpoints.len() > 1 {
            let probe_options = connect
                .with_connect_timeout(options.connect_timeout.min(PROBE_TIMEOUT))
                .with_timeout(PROBE_TIMEOUT);
            let prober = Prober::start(client.clone(), endpoints, probe_options)
                .await
                .map_err(StoreError::Internal)?;
            Some(Arc::new(prober))
        } else {
            None
        };
        Ok(EtcdStore {
            client,
            keys: Keys::new(prefix),
            endpoints: joined,
            options,
            prober,
        })
    }

    /// The underlying client (cheap to clone), e.g. for [`crate::leader`].
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The key layout of this store.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The endpoints this store talks to, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The deadline for one call: connecting plus the request itself.
    pub fn call_deadline(&self) -> Duration {
        self.options.connect_timeout + self.options.request_timeout
    }

    /// Probes etcd: `Ok` when it answers a read, `Unavailable` otherwise.
    pub async fn check(&self) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.keys.all_resources();
        self.call(
            "health check",
            kv.get(key, Some(GetOptions::new().with_count_only().with_prefix())),
        )
        .await
        .map(|_| ())
    }

    /// Runs one etcd call under the store's deadline, mapping its errors.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        let deadline = self.call_deadline();
        let result = match tokio::time::timeout(deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&self.endpoints, what, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd {}: {what} did not answer within {deadline:?} (a write's outcome is unknown until read back)",
                self.endpoints
            ))),
        };
        if let (Err(StoreError::Unavailable(_)), Some(p)) = (&result, &self.prober) {
            p.nudge();
        }
        result
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Decodes one stored key-value into a resource; `None` (with a warning)
    /// for records that are not ours or cannot be decoded, so one foreign or
    /// corrupt record never stops a list or a watch.
    fn decode(&self, kv: &KeyValue) -> Option<Resource> {
        let key = String::from_utf8_lossy(kv.key());
        let parsed = self.keys.parse_resource(&key)?;
        match Resource::from_stored_bytes(kv.value(), rev_u64(kv.mod_revision())) {
            Ok(r) if r.key == parsed => Some(r),
            Ok(r) => {
                tracing::warn!(etcd_key = %key, stored = %r.key, "ignoring a record stored under another resource's key");
                None
            }
            Err(e) => {
                tracing::warn!(etcd_key = %key, error = %e, "ignoring an undecodable record");
                None
            }
        }
    }

    /// After a failed compare: does the key exist? Reads the `get` that the
    /// txn's failure branch ran.
    fn key_existed(resp: &etcd_client::TxnResponse) -> bool {
        resp.op_responses().iter().any(|op| match op {
            TxnOpResponse::Get(g) => !g.kvs().is_empty(),
            _ => false,
        })
    }

    async fn list_once(&self, filter: &Filter) -> Result<Listing, StoreError> {
        let prefix = self.keys.filter_prefix(filter);
        let end = prefix_end(&prefix);
        let mut kv = self.kv();
        let mut start: Vec<u8> = prefix.into_bytes();
        let mut revision: i64 = 0;
        let mut items = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.options.list_page_size);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = self.call("list", kv.get(start.clone(), Some(opts))).await?;
            if revision == 0 {
                revision = header_revision(resp.header())?;
            }
            for kv in resp.kvs() {
                if let Some(r) = self.decode(kv) {
                    if filter.matches(&r.key) {
                        items.push(r);
                    }
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing {
            items,
            revision: rev_u64(revision),
        })
    }

    /// Whether a watch after `revision` would miss history to compaction;
    /// `Some(oldest)` (the oldest revision one can watch after) when it would.
    /// Reading at `revision` fails exactly when the watch (which starts at
    /// `revision`, see the module docs) would be refused; asking first gives
    /// callers the error from `watch()` itself rather than in the stream.
    async fn compacted_since(&self, revision: u64) -> Result<Option<u64>, StoreError> {
        if revision == 0 {
            // Watching all history: etcd reports compaction in the stream.
            return Ok(None);
        }
        let mut kv = self.kv();
        let opts = GetOptions::new()
            .with_prefix()
            .with_count_only()
            .with_revision(rev_i64(revision));
        let probe = tokio::time::timeout(self.call_deadline(), kv.get(self.keys.all_resources(), Some(opts))).await;
        match probe {
            Ok(Ok(_)) => Ok(None),
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == Code::OutOfRange => {
                if s.message().contains("compacted") {
                    Ok(Some(self.compact_revision(revision).await))
                } else {
                    // "required revision is a future revision": nothing to
                    // miss yet; the watch waits for it.
                    Ok(None)
                }
            }
            Ok(Err(e)) => Err(classify(&self.endpoints, "watch", e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd {}: watch did not answer within {:?}",
                self.endpoints,
                self.call_deadline()
            ))),
        }
    }

    /// The compaction revision, learned the only way etcd 3.4 tells it: a
    /// watch from before it is canceled with it. Falls back to
    /// `revision + 1` when etcd does not say within a second.
    async fn compact_revision(&self, revision: u64) -> u64 {
        let mut client = self.client.watch_client();
        let probe = async {
            let opts = WatchOptions::new().with_prefix().with_start_revision(1);
            let mut stream = client.watch(self.keys.all_resources(), Some(opts)).await.ok()?;
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() {
                    return (resp.compact_revision() > 0).then(|| rev_u64(resp.compact_revision()));
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(1), probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(revision.saturating_add(1))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn create(&self, mut resource: Resource) -> Result<Resource, StoreError> {
        let key = self.keys.resource(&resource.key);
        let value = resource.to_stored_bytes();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let mut kv = self.kv();
        let resp = self.call("create", kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists(resource.key));
        }
        resource.version = rev_u64(header_revision(resp.header())?);
        Ok(resource)
    }

    async fn update(&self, mut resource: Resource) -> Result<Resource, StoreError> {
        let key = self.keys.resource(&resource.key);
        let value = resource.to_stored_bytes();
        let txn = Txn::new()
            .when([
                Compare::version(key.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(key.clone(), CompareOp::Equal, rev_i64(resource.version)),
            ])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
        let mut kv = self.kv();
        let resp = self.call("update", kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(if Self::key_existed(&resp) {
                StoreError::Conflict(resource.key, resource.version)
            } else {
                StoreError::NotFound(resource.key)
            });
        }
        resource.version = rev_u64(header_revision(resp.header())?);
        Ok(resource)
    }

    async fn delete(&self, key: &ResourceKey, expected_version: Option<u64>) -> Result<u64, StoreError> {
        let ekey = self.keys.resource(key);
        let mut when = vec![Compare::version(ekey.clone(), CompareOp::Greater, 0)];
        if let Some(v) = expected_version {
            when.push(Compare::mod_revision(ekey.clone(), CompareOp::Equal, rev_i64(v)));
        }
        let mut ops = vec![TxnOp::delete(ekey.clone(), None)];
        if key.kind == ResourceType::Mesh {
            let mesh = key.name.as_str();
            ops.push(TxnOp::delete(
                self.keys.mesh_resources(mesh),
                Some(DeleteOptions::new().with_prefix()),
            ));
            ops.push(TxnOp::delete(
                self.keys.mesh_system(mesh),
                Some(DeleteOptions::new().with_prefix()),
            ));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(ekey, Some(GetOptions::new().with_keys_only()))]);
        let mut kv = self.kv();
        let resp = self.call("delete", kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(match expected_version {
                Some(v) if Self::key_existed(&resp) => StoreError::Conflict(key.clone(), v),
                _ => StoreError::NotFound(key.clone()),
            });
        }
        Ok(rev_u64(header_revision(resp.header())?))
    }

    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let ekey = self.keys.resource(key);
        let mut kv = self.kv();
        let resp = self.call("get", kv.get(ekey.clone(), None)).await?;
        let Some(found) = resp.kvs().first() else {
            return Ok(None);
        };
        Resource::from_stored_bytes(found.value(), rev_u64(found.mod_revision()))
            .map(Some)
            .map_err(|e| StoreError::Internal(format!("etcd key {ekey}: {e}")))
    }

    async fn list(&self, filter: &Filter) -> Result<Listing, StoreError> {
        // A compaction between two pages makes the later pages fail; the
        // list is then simply read again at a newer revision.
        let mut attempts = 0;
        loop {
            match self.list_once(filter).await {
                Err(StoreError::Internal(msg)) if msg.contains("compacted") && attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }

    async fn watch(&self, revision: u64) -> Result<EventStream, StoreError> {
        if let Some(oldest) = self.compacted_since(revision).await? {
            return Err(StoreError::Compacted {
                requested: revision,
                oldest,
            });
        }
        // See the module docs for why the watch starts at `revision`.
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev_i64(revision.max(1)));
        let mut client = self.client.watch_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
        let stream = self
            .call("watch", client.watch(self.keys.all_resources(), Some(opts)))
            .await?;
        let state = WatchState {
            store: self.clone(),
            requested: revision,
            stream,
            pending: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, |mut st| async move {
            let item = st.next_item().await?;
            Some((item, st))
        })))
    }

    async fn get_system(&self, mesh: Option<&str>, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.keys.system(mesh, name);
        let mut kv = self.kv();
        let resp = self.call("get system record", kv.get(key, None)).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn put_system(&self, mesh: Option<&str>, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = self.keys.system(mesh, name);
        let mut kv = self.kv();
        self.call("put system record", kv.put(key, value, None::<PutOptions>))
            .await
            .map(|_| ())
    }

    async fn put_system_if_absent(
        &self,
        mesh: Option<&str>,
        name: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let key = self.keys.system(mesh, name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut kv = self.kv();
        let resp = self.call("put system record if absent", kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(value);
        }
        resp.op_responses()
            .iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            // Only a delete between the compare and the get could get here;
            // system records are deleted with their mesh only.
            .ok_or_else(|| StoreError::Internal(format!("etcd key {key}: exists but could not be read")))
    }

    /// One range read of `[start, prefix_end(range))`, ascending by key,
    /// limited to `limit`.
    async fn list_system(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let range = self.keys.global_system_prefix(prefix);
        let start = self.keys.global_system_start(prefix, start_after);
        // `range` ends in a name prefix (UTF-8, no 0xff byte) or `/`, so its
        // end is a real key, never etcd's "to the end" `\0`.
        let end = prefix_end(&range);
        if start.as_bytes() >= end.as_slice() {
            // `start_after` is past every name with this prefix.
            return Ok(Vec::new());
        }
        let opts = GetOptions::new()
            .with_range(end)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let mut kv = self.kv();
        let resp = self.call("list system records", kv.get(start, Some(opts))).await?;
        let mut records = Vec::with_capacity(resp.kvs().len().min(limit));
        for kv in resp.kvs().iter().take(limit) {
            let name = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| self.keys.parse_global_system(k))
                .ok_or_else(|| {
                    StoreError::Internal(format!(
                        "etcd key {}: not a global system record key",
                        String::from_utf8_lossy(kv.key())
                    ))
                })?;
            records.push((name.to_string(), kv.value().to_vec()));
        }
        Ok(records)
    }

    /// One txn of deletes; more than `MAX_TXN_OPS` (128) distinct names take
    /// several txns of at most that many, in name order. Each is atomic; if
    /// one fails, the earlier ones stay applied (deleting again is harmless).
    async fn delete_system(&self, names: &[String]) -> Result<(), StoreError> {
        let mut keys: Vec<String> = names.iter().map(|n| self.keys.system(None, n)).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut kv = self.kv();
        for batch in keys.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = batch.iter().map(|k| TxnOp::delete(k.as_str(), None)).collect();
            self.call("delete system records", kv.txn(Txn::new().and_then(ops)))
                .await?;
        }
        Ok(())
    }
}

/// The state behind one [`EtcdStore::watch`] stream.
struct WatchState {
    store: EtcdStore,
    requested: u64,
    /// Holds the request side too: dropping it would end the watch.
    stream: WatchStream,
    pending: VecDeque<Event>,
    done: bool,
}

impl WatchState {
    /// The next item: a buffered event, or the next response's events, or
    /// one final error item (then the end).
    async fn next_item(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            let endpoints = &self.store.endpoints;
            match self.stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        self.done = true;
                        return Some(Err(self.canceled(&resp)));
                    }
                    self.buffer(&resp);
                }
                Ok(None) => {
                    self.done = true;
                    return Some(Err(StoreError::Unavailable(format!(
                        "etcd {endpoints}: watch stream closed"
                    ))));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(classify(endpoints, "watch stream", e)));
                }
            }
        }
    }

    fn canceled(&self, resp: &WatchResponse) -> StoreError {
        if resp.compact_revision() > 0 {
            StoreError::Compacted {
                requested: self.requested,
                oldest: rev_u64(resp.compact_revision()),
            }
        } else {
            StoreError::Unavailable(format!(
                "etcd {}: watch canceled: {}",
                self.store.endpoints,
                resp.cancel_reason()
            ))
        }
    }

    fn buffer(&mut self, resp: &WatchResponse) {
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let Some(rkey) = self.store.keys.parse_resource(&key) else {
                continue;
            };
            let revision = rev_u64(kv.mod_revision());
            if revision <= self.requested {
                continue;
            }
            let event = match ev.event_type() {
                etcd_client::EventType::Put => match self.store.decode(kv) {
                    Some(r) => Event::Put(r),
                    // Listing skips undecodable records; a watcher must
                    // forget the key the same way.
                    None => Event::Delete { key: rkey, revision },
                },
                etcd_client::EventType::Delete => Event::Delete { key: rkey, revision },
            };
            self.pending.push_back(event);
        }
    }
}

/// Maps an etcd client error to the store's terms: anything that a retry
/// may fix is `Unavailable`.
pub(crate) fn classify(endpoints: &str, what: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let msg = if endpoints.is_empty() {
        format!("etcd: {what}: {e}")
    } else {
        format!("etcd {endpoints}: {what}: {e}")
    };
    match &e {
        E::GRpcStatus(s) => match s.code() {
            // etcd's quota alarm ("database space exceeded") is store-wide and
            // lifts once an operator frees space; anything else of this code
            // is a message over etcd's request limit, which no retry fixes.
            Code::ResourceExhausted if s.message().contains("space exceeded") => StoreError::Unavailable(msg),
            Code::ResourceExhausted => StoreError::TooLarge(msg),
            Code::InvalidArgument if s.message().contains("request is too large") => StoreError::TooLarge(msg),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::Unknown => {
                StoreError::Unavailable(msg)
            }
            _ => StoreError::Internal(msg),
        },
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) | E::EndpointError(_) => {
            StoreError::Unavailable(msg)
        }
        _ => StoreError::Internal(msg),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Internal("etcd response without a header".into()))
}

/// etcd revisions are positive `i64`s; ours are `u64`.
fn rev_u64(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

fn rev_i64(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}
