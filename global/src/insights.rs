//! Zone insights at the global (DESIGN §7): per zone, the KDS subscriptions
//! this and other global instances hold — connect and disconnect times,
//! which instance, per-type counts sent/acked/rejected, the last NACK.
//!
//! Each stream gets a [`Subscription`] (a [`StreamObserver`]); changes are
//! written to the zone's `ZoneInsight` resource by a flusher at most once a
//! second, and every `heartbeat` while connected, so that subscriptions of a
//! global instance that died without closing them can be swept as offline.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_core::resource::format_time;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_server::kds::StreamObserver;
use meridian_server::manager::Manager;
use meridian_server::metrics::{KdsMetrics, StreamGauge};
use meridian_store::Filter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

/// Subscriptions kept per zone (the newest ones).
const KEEP_SUBSCRIPTIONS: usize = 10;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub responses_sent: u64,
    pub responses_acknowledged: u64,
    pub responses_rejected: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub time: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub last_update_time: String,
    pub total: Counts,
    pub stat: BTreeMap<String, Counts>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRecord {
    pub id: String,
    pub global_instance_id: String,
    /// The zone control plane process holding the subscription (absent for
    /// zones that do not announce one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_instance_id: Option<String>,
    /// The zone control plane's build version and the address it connected
    /// from, as the global saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_address: Option<String>,
    pub connect_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_time: Option<String>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<Nack>,
    /// The last resource this global refused from the zone, and why (the
    /// zone gets the same reason as a NACK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refused: Option<Nack>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct InsightSpec {
    #[serde(default)]
    subscriptions: Vec<SubscriptionRecord>,
}

struct Shared {
    manager: Arc<Manager>,
    instance_id: String,
    stale_after: Duration,
    /// This instance's subscriptions by zone, written on the next flush.
    zones: Mutex<HashMap<String, BTreeMap<String, SubscriptionRecord>>>,
    dirty: Mutex<Vec<String>>,
    wake: Notify,
    next_id: std::sync::atomic::AtomicU64,
    metrics: KdsMetrics,
}

/// What the global knows of the zone control plane on a stream.
#[derive(Clone, Debug, Default)]
pub struct ZonePeer {
    pub instance: Option<String>,
    pub version: Option<String>,
    pub address: Option<String>,
}

/// Records zone subscriptions of this global instance.
#[derive(Clone)]
pub struct ZoneInsights {
    shared: Arc<Shared>,
}

fn now() -> String {
    format_time(&Utc::now())
}

impl ZoneInsights {
    /// Starts the flusher; `heartbeat` is how often connected subscriptions
    /// are re-stamped, and `stale_after` when a subscription whose instance
    /// stopped stamping it counts as disconnected.
    pub fn start(
        manager: Arc<Manager>,
        instance_id: String,
        heartbeat: Duration,
        stale_after: Duration,
        metrics: KdsMetrics,
    ) -> Self {
        let shared = Arc::new(Shared {
            manager,
            instance_id,
            stale_after,
            zones: Mutex::new(HashMap::new()),
            dirty: Mutex::new(Vec::new()),
            wake: Notify::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
            metrics,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(heartbeat);
            loop {
                let Some(s) = weak.upgrade() else { return };
                let woke = tokio::select! {
                    _ = s.wake.notified() => true,
                    _ = beat.tick() => false,
                };
                if woke {
                    // Coalesce a burst of changes into one write per zone.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let mut zones: Vec<String> = std::mem::take(&mut *lock(&s.dirty));
                if !woke {
                    zones.extend(lock(&s.zones).keys().cloned());
                    sweep(&s, stale_after).await;
                }
                zones.sort();
                zones.dedup();
                for zone in zones {
                    if let Err(e) = flush(&s, &zone).await {
                        tracing::warn!(%zone, error = %e, "writing the zone insight failed");
                        lock(&s.dirty).push(zone);
                    }
                }
            }
        });
        ZoneInsights { shared }
    }

    /// Registers a new stream of `zone`; the returned subscription records
    /// its statistics and marks itself disconnected when dropped.
    pub fn connect(&self, zone: &str, peer: &ZonePeer) -> Arc<Subscription> {
        let n = self.shared.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{}", self.shared.instance_id, n);
        let t = now();
        let record = SubscriptionRecord {
            id: id.clone(),
            global_instance_id: self.shared.instance_id.clone(),
            zone_instance_id: peer.instance.clone(),
            zone_version: peer.version.clone(),
            zone_address: peer.address.clone(),
            connect_time: t.clone(),
            disconnect_time: None,
            status: Status {
                last_update_time: t,
                total: Counts::default(),
                stat: BTreeMap::new(),
            },
            last_nack: None,
            last_refused: None,
        };
        lock(&self.shared.zones)
            .entry(zone.to_string())
            .or_default()
            .insert(id.clone(), record);
        self.mark(zone);
        Arc::new(Subscription {
            _stream: self.shared.metrics.stream_opened(zone),
            shared: self.shared.clone(),
            zone: zone.to_string(),
            id,
        })
    }

    fn mark(&self, zone: &str) {
        mark(&self.shared, zone);
    }

    /// Counts a zone-to-global stream in `meridian_kds_streams` until the
    /// guard drops (a global-to-zone stream counts through its
    /// [`Subscription`]).
    pub fn stream_opened(&self, zone: &str) -> StreamGauge {
        self.shared.metrics.stream_opened(zone)
    }

    /// Records that this global refused a resource `zone` sent (on its open
    /// subscriptions here).
    pub fn refused(&self, zone: &str, kind: ResourceType, reason: &str) {
        self.shared
            .metrics
            .resources_refused
            .get_or_create(&KdsMetrics::type_label(kind))
            .inc();
        {
            let mut zones = lock(&self.shared.zones);
            let Some(subs) = zones.get_mut(zone) else { return };
            let t = now();
            for r in subs.values_mut().filter(|r| r.disconnect_time.is_none()) {
                r.last_refused = Some(Nack {
                    kind: kind.name().to_string(),
                    message: reason.to_string(),
                    time: t.clone(),
                });
            }
        }
        self.mark(zone);
    }

    /// A live subscription of `zone` held at another global instance by a
    /// zone control plane other than `zone_instance`: open, and stamped
    /// within the staleness window. Subscriptions without a zone instance
    /// (zones that do not announce one) never count.
    pub fn held_elsewhere(&self, zone: &str, zone_instance: &str) -> Option<SubscriptionRecord> {
        let insight = self
            .shared
            .manager
            .get(&ResourceKey::global(ResourceType::ZoneInsight, zone))?;
        let spec: InsightSpec = serde_json::from_value(insight.spec.clone()).ok()?;
        let cutoff = Utc::now() - chrono::Duration::from_std(self.shared.stale_after).ok()?;
        spec.subscriptions.into_iter().find(|r| {
            r.disconnect_time.is_none()
                && r.global_instance_id != self.shared.instance_id
                && r.zone_instance_id.as_deref().is_some_and(|z| z != zone_instance)
                && parse_time(&r.status.last_update_time).is_some_and(|t| t >= cutoff)
        })
    }
}

/// Parses a stored RFC 3339 time.
pub fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

fn mark(s: &Shared, zone: &str) {
    lock(&s.dirty).push(zone.to_string());
    s.wake.notify_one();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One KDS stream of a zone, as seen by this global instance.
pub struct Subscription {
    /// Counts this stream in `meridian_kds_streams` while it lives.
    _stream: StreamGauge,
    shared: Arc<Shared>,
    zone: String,
    id: String,
}

impl Subscription {
    fn update(&self, f: impl FnOnce(&mut SubscriptionRecord)) {
        {
            let mut zones = lock(&self.shared.zones);
            if let Some(r) = zones.get_mut(&self.zone).and_then(|z| z.get_mut(&self.id)) {
                f(r);
                r.status.last_update_time = now();
            }
        }
        mark(&self.shared, &self.zone);
    }

    fn counts(r: &mut SubscriptionRecord, kind: ResourceType, f: impl Fn(&mut Counts)) {
        f(&mut r.status.total);
        f(r.status.stat.entry(kind.name().to_string()).or_default());
    }
}

impl StreamObserver for Subscription {
    fn sent(&self, kind: ResourceType, resources: usize) {
        self.shared.metrics.sent(kind, resources);
        self.update(|r| Self::counts(r, kind, |c| c.responses_sent += 1));
    }

    fn acked(&self, kind: ResourceType, applied: usize) {
        self.shared.metrics.acked(kind, applied);
        self.update(|r| Self::counts(r, kind, |c| c.responses_acknowledged += 1));
    }

    fn rejected(&self, kind: ResourceType, reason: &str) {
        self.shared.metrics.rejected(kind, reason);
        self.update(|r| {
            Self::counts(r, kind, |c| c.responses_rejected += 1);
            r.last_nack = Some(Nack {
                kind: kind.name().to_string(),
                message: reason.to_string(),
                time: now(),
            });
        });
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut zones = lock(&self.shared.zones);
            if let Some(r) = zones.get_mut(&self.zone).and_then(|z| z.get_mut(&self.id)) {
                let t = now();
                r.disconnect_time = Some(t.clone());
                r.status.last_update_time = t;
            }
        }
        mark(&self.shared, &self.zone);
    }
}

/// Merges this instance's records of `zone` into its stored ZoneInsight.
async fn flush(s: &Shared, zone: &str) -> Result<(), meridian_store::StoreError> {
    let ours: BTreeMap<String, SubscriptionRecord> = {
        let mut zones = lock(&s.zones);
        let Some(subs) = zones.get_mut(zone) else { return Ok(()) };
        let now = now();
        for r in subs.values_mut().filter(|r| r.disconnect_time.is_none()) {
            r.status.last_update_time = now.clone();
        }
        let snapshot = subs.clone();
        // Disconnected records are written once, then forgotten here.
        subs.retain(|_, r| r.disconnect_time.is_none());
        snapshot
    };
    if lock(&s.zones).get(zone).is_some_and(|z| z.is_empty()) {
        lock(&s.zones).remove(zone);
    }
    let key = ResourceKey::global(ResourceType::ZoneInsight, zone);
    let stored = s.manager.get(&key);
    let mut spec: InsightSpec = stored
        .as_ref()
        .and_then(|r| serde_json::from_value(r.spec.clone()).ok())
        .unwrap_or_default();
    spec.subscriptions.retain(|r| !ours.contains_key(&r.id));
    spec.subscriptions.extend(ours.into_values());
    spec.subscriptions.sort_by(|a, b| a.connect_time.cmp(&b.connect_time));
    let excess = spec.subscriptions.len().saturating_sub(KEEP_SUBSCRIPTIONS);
    spec.subscriptions.drain(..excess);
    write(s, key, stored, &spec).await
}

async fn write(
    s: &Shared,
    key: ResourceKey,
    stored: Option<Resource>,
    spec: &InsightSpec,
) -> Result<(), meridian_store::StoreError> {
    let value = serde_json::to_value(spec).unwrap_or(Value::Null);
    let now = Utc::now();
    let r = Resource {
        key,
        labels: Default::default(),
        creation_time: stored.as_ref().map(|r| r.creation_time).unwrap_or(now),
        modification_time: now,
        version: 0,
        spec: value,
    };
    s.manager.upsert_synced(r).await
}

/// Marks as disconnected the subscriptions that no instance has stamped for
/// `stale_after` (their global instance died without closing them).
async fn sweep(s: &Shared, stale_after: Duration) {
    let cutoff = Utc::now() - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::seconds(30));
    for insight in s.manager.list(&Filter::kind(ResourceType::ZoneInsight)) {
        let Ok(mut spec) = serde_json::from_value::<InsightSpec>(insight.spec.clone()) else {
            continue;
        };
        let mut changed = false;
        for r in spec.subscriptions.iter_mut().filter(|r| r.disconnect_time.is_none()) {
            let stamped = DateTime::parse_from_rfc3339(&r.status.last_update_time).map(|t| t.with_timezone(&Utc));
            if stamped.is_ok_and(|t| t < cutoff) && r.global_instance_id != s.instance_id {
                r.disconnect_time = Some(r.status.last_update_time.clone());
                changed = true;
            }
        }
        if changed {
            tracing::info!(zone = %insight.key.name, "marked stale subscriptions of a vanished global instance as disconnected");
            let key = insight.key.clone();
            if let Err(e) = write(s, key, Some(insight), &spec).await {
                tracing::warn!(error = %e, "sweeping zone insights failed");
            }
        }
    }
}
