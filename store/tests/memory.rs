//! The memory store against the shared conformance suite, plus its bounded
//! change log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_store::memory::MemoryStore;
use meridian_store::{conformance, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    conformance::run(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
}

#[tokio::test]
async fn old_history_is_compacted() {
    let store = MemoryStore::with_log_capacity(5);
    for i in 0..12 {
        let key = ResourceKey::global(ResourceType::Zone, &format!("z{i}"));
        store
            .create(Resource::new(
                key,
                Default::default(),
                serde_json::json!({}),
                Utc::now(),
            ))
            .await
            .unwrap();
    }
    match store.watch(0).await {
        Err(StoreError::Compacted {
            requested: 0,
            oldest: 7,
        }) => {}
        Err(e) => panic!("expected Compacted from 7, got {e:?}"),
        Ok(_) => panic!("expected Compacted from 7, got a stream"),
    }
    assert!(store.watch(7).await.is_ok());
}
