#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A zone removes its dataplanes whose proxies stayed offline longer than
//! `--offline-dataplane-cleanup-age` (Kuma's dataplane cleanup, 72 h by
//! default), going by each DataplaneInsight's last disconnect: one offline
//! for an hour goes, one whose proxy is connected stays, one whose proxy
//! never connected stays. An in-process zone on the memory store, the
//! insights written as the zone writes them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_core::decode::decode_value;
use meridian_core::resource::format_time;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_server::backend::StoreKind;
use meridian_zone::ZoneConfig;
use serde_json::json;

const MESH: &str = "default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplanes_offline_longer_than_the_cleanup_age_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let zone = meridian_zone::start(ZoneConfig {
        zone: "zone-1".into(),
        api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        xds_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        xds_tls: Default::default(),
        dp_auth: meridian_zone::auth::DpAuth::Token,
        // The cleanup runs every quarter of this: every 500 ms.
        dataplane_cleanup_age: Duration::from_secs(2),
        offline_dataplane_cleanup_age: Some(Duration::from_secs(30)),
        xds_max_connections: meridian_zone::config::DEFAULT_XDS_MAX_CONNECTIONS,
        store: StoreKind::Memory,
        data_dir: dir.path().to_path_buf(),
        federation: None,
        ingress_address: None,
        create_default_mesh: false,
        access: meridian_server::access::AccessConfig::with_token_file(dir.path().join("admin-token")),
        api_tls: None,
        api_limits: Default::default(),
    })
    .await
    .unwrap();
    let m = zone.manager.clone();
    m.cache().wait_ready(Duration::from_secs(20)).await.unwrap();
    m.apply(decode_value(json!({"type": "Mesh", "name": MESH})).unwrap())
        .await
        .unwrap();
    for name in ["gone", "connected", "never"] {
        let dp = json!({"type": "Dataplane", "mesh": MESH, "name": name,
            "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": name}}]}});
        m.apply(decode_value(dp).unwrap()).await.unwrap();
    }
    let now = chrono::Utc::now();
    let insight = |name: &str, subscriptions: serde_json::Value| {
        Resource::new(
            ResourceKey::in_mesh(ResourceType::DataplaneInsight, MESH, name),
            Default::default(),
            json!({"subscriptions": subscriptions}),
            now,
        )
    };
    let hour_ago = format_time(&(now - chrono::Duration::hours(1)));
    let two_hours_ago = format_time(&(now - chrono::Duration::hours(2)));
    m.upsert_synced(insight(
        "gone",
        json!([{"id": "a", "connectTime": two_hours_ago, "disconnectTime": hour_ago}]),
    ))
    .await
    .unwrap();
    m.upsert_synced(insight(
        "connected",
        json!([{"id": "a", "connectTime": two_hours_ago, "disconnectTime": hour_ago},
               {"id": "b", "connectTime": hour_ago}]),
    ))
    .await
    .unwrap();

    let key = |name: &str| ResourceKey::in_mesh(ResourceType::Dataplane, MESH, name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.get(&key("gone")).is_some() {
        assert!(
            Instant::now() < deadline,
            "the dataplane offline for an hour was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        m.get(&ResourceKey::in_mesh(ResourceType::DataplaneInsight, MESH, "gone"))
            .is_none(),
        "its insight goes with it"
    );
    // Four more rounds of the cleanup keep the others.
    let settled = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settled {
        assert!(
            m.get(&key("connected")).is_some(),
            "a dataplane with an open subscription was removed"
        );
        assert!(
            m.get(&key("never")).is_some(),
            "a dataplane that never connected was removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    zone.stop().await.unwrap();
}
