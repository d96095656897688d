//! A [`Store`] that times every operation and counts its failures in
//! [`StoreMetrics`], then hands it to the store underneath unchanged.
//! `NotFound`, `AlreadyExists` and `Conflict` are answers rather than
//! faults, but they are counted too (by kind), so an operator can tell a
//! burst of conflicts from an unavailable etcd.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use meridian_core::{Resource, ResourceKey};
use meridian_store::{EventStream, Filter, Listing, Store, StoreError};

use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{OperationErrorLabel, OperationLabel, StoreMetrics, STORE_OPERATIONS};

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
    /// Each operation's histogram, looked up once (a family lookup takes a
    /// lock and hashes the labels: more than the memory store's `get`).
    durations: [Histogram; STORE_OPERATIONS.len()],
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn Store>, metrics: StoreMetrics) -> Arc<dyn Store> {
        let durations =
            STORE_OPERATIONS.map(|operation| metrics.duration.get_or_create(&OperationLabel { operation }).clone());
        Arc::new(MeteredStore {
            inner,
            metrics,
            durations,
        })
    }

    async fn timed<T>(
        &self,
        op: Op,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = f.await;
        self.durations[op as usize].observe(start.elapsed().as_secs_f64());
        let operation = STORE_OPERATIONS[op as usize];
        if let Err(e) = &result {
            self.metrics
                .errors
                .get_or_create(&OperationErrorLabel {
                    operation,
                    error: error_kind(e),
                })
                .inc();
        }
        result
    }
}

/// A store operation, in the order of [`STORE_OPERATIONS`] (its label).
#[derive(Clone, Copy)]
enum Op {
    Create,
    Update,
    Delete,
    Get,
    List,
    Watch,
    GetSystem,
    PutSystem,
    PutSystemIfAbsent,
    ListSystem,
    DeleteSystem,
}

/// The `error` label of a store failure.
pub fn error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::NotFound(_) => "not_found",
        StoreError::AlreadyExists(_) => "already_exists",
        StoreError::Conflict(..) => "conflict",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Compacted { .. } => "compacted",
        StoreError::TooLarge(_) => "too_large",
        StoreError::Internal(_) => "internal",
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn create(&self, resource: Resource) -> Result<Resource, StoreError> {
        self.timed(Op::Create, self.inner.create(resource)).await
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        self.timed(Op::Update, self.inner.update(resource)).await
    }

    async fn delete(&self, key: &ResourceKey, expected_version: Option<u64>) -> Result<u64, StoreError> {
        self.timed(Op::Delete, self.inner.delete(key, expected_version)).await
    }

    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        self.timed(Op::Get, self.inner.get(key)).await
    }

    async fn list(&self, filter: &Filter) -> Result<Listing, StoreError> {
        self.timed(Op::List, self.inner.list(filter)).await
    }

    /// Times opening the watch, not the life of the stream.
    async fn watch(&self, revision: u64) -> Result<EventStream, StoreError> {
        self.timed(Op::Watch, self.inner.watch(revision)).await
    }

    async fn get_system(&self, mesh: Option<&str>, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.timed(Op::GetSystem, self.inner.get_system(mesh, name)).await
    }

    async fn put_system(&self, mesh: Option<&str>, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.timed(Op::PutSystem, self.inner.put_system(mesh, name, value))
            .await
    }

    async fn put_system_if_absent(
        &self,
        mesh: Option<&str>,
        name: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        self.timed(
            Op::PutSystemIfAbsent,
            self.inner.put_system_if_absent(mesh, name, value),
        )
        .await
    }

    async fn list_system(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.timed(Op::ListSystem, self.inner.list_system(prefix, start_after, limit))
            .await
    }

    async fn delete_system(&self, names: &[String]) -> Result<(), StoreError> {
        self.timed(Op::DeleteSystem, self.inner.delete_system(names)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::ResourceType;
    use meridian_store::memory::MemoryStore;
    use prometheus_client::registry::Registry;

    #[tokio::test]
    async fn operations_are_timed_and_failures_counted_by_kind() {
        let mut registry = Registry::default();
        let metrics = StoreMetrics::register(&mut registry);
        let store = MeteredStore::wrap(Arc::new(MemoryStore::new()), metrics);
        let key = ResourceKey::new(ResourceType::Mesh, None, "absent");
        assert!(store.get(&key).await.unwrap().is_none());
        assert!(matches!(store.delete(&key, None).await, Err(StoreError::NotFound(_))));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("meridian_store_operation_duration_seconds_count{operation=\"get\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("meridian_store_operation_errors_total{operation=\"delete\",error=\"not_found\"} 1"),
            "{out}"
        );
        // A read of an absent key is an answer (None), not a failure.
        assert!(!out.contains("operation=\"get\",error=\"not_found\""), "{out}");
    }

    #[tokio::test]
    async fn every_operation_has_its_label_from_the_start() {
        let mut registry = Registry::default();
        let metrics = StoreMetrics::register(&mut registry);
        let store = MeteredStore::wrap(Arc::new(MemoryStore::new()), metrics);
        let key = ResourceKey::new(ResourceType::Mesh, None, "m");
        let mesh = Resource::new(
            key.clone(),
            Default::default(),
            serde_json::json!({}),
            chrono::Utc::now(),
        );
        let created = store.create(mesh).await.unwrap();
        store.update(created).await.unwrap();
        store.get(&key).await.unwrap();
        store
            .list(&meridian_store::Filter::kind(ResourceType::Mesh))
            .await
            .unwrap();
        let _events = store.watch(0).await.unwrap();
        store.put_system(None, "x", b"1".to_vec()).await.unwrap();
        store.put_system_if_absent(None, "y", b"2".to_vec()).await.unwrap();
        store.get_system(None, "x").await.unwrap();
        store.list_system("", None, 10).await.unwrap();
        store.delete_system(&["x".to_string()]).await.unwrap();
        store.delete(&key, None).await.unwrap();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for operation in crate::metrics::STORE_OPERATIONS {
            let count = format!("meridian_store_operation_duration_seconds_count{{operation=\"{operation}\"}} 1");
            let unavailable =
                format!("meridian_store_operation_errors_total{{operation=\"{operation}\",error=\"unavailable\"}} 0");
            assert!(out.contains(&count), "{count} missing:\n{out}");
            assert!(out.contains(&unavailable), "{unavailable} missing:\n{out}");
        }
    }
}
