//! Prometheus metrics of the API server, held in a struct registered on a
//! registry that the caller owns (no process-global registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub resource_type: String,
}

#[derive(Clone)]
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histogram,
    pub resources: Family<KindLabel, Gauge>,
    pub store_revision: Gauge,
    pub leader: Gauge,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ApiMetrics {
            requests: Family::default(),
            request_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            resources: Family::default(),
            store_revision: Gauge::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "meridian_api_requests",
            "HTTP API requests by method and status",
            m.requests.clone(),
        );
        registry.register(
            "meridian_api_request_duration_seconds",
            "HTTP API request latency",
            m.request_seconds.clone(),
        );
        registry.register(
            "meridian_resources",
            "Resources in the store by type",
            m.resources.clone(),
        );
        registry.register(
            "meridian_store_revision",
            "Store revision seen by the cache",
            m.store_revision.clone(),
        );
        registry.register(
            "meridian_leader",
            "1 while this replica leads the one-time work (defaults), else 0",
            m.leader.clone(),
        );
        m
    }
}
