//! Clusters towards a destination: EDS over ADS, with the destination's
//! load balancer, connection timeout, circuit breaker and outlier detection.

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
    CircuitBreakers, Cluster, OutlierDetection,
};
use meridian_core::policy::meshcircuitbreaker;
use meridian_core::policy::meshloadbalancingstrategy::LoadBalancerType;

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions};
use envoy_types::pb::google::protobuf::Any;

use super::{ads_source, any, duration, u32_value, OutboundPolicies};

/// Envoy's connect timeout when no MeshTimeout says otherwise.
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn thresholds(c: &meshcircuitbreaker::ConnectionLimits) -> Thresholds {
    Thresholds {
        max_connections: c.max_connections.map(u32_value),
        max_pending_requests: c.max_pending_requests.map(u32_value),
        max_requests: c.max_requests.map(u32_value),
        max_retries: c.max_retries.map(u32_value),
        ..Default::default()
    }
}

fn outlier_detection(o: &meshcircuitbreaker::OutlierDetection) -> Option<OutlierDetection> {
    if o.disabled.unwrap_or(false) {
        return None;
    }
    let d = o.detectors.as_ref();
    let total = d.and_then(|d| d.total_failures.as_ref()).and_then(|c| c.consecutive);
    let gateway = d.and_then(|d| d.gateway_failures.as_ref()).and_then(|c| c.consecutive);
    let local = d
        .and_then(|d| d.local_origin_failures.as_ref())
        .and_then(|c| c.consecutive);
    let sr = d.and_then(|d| d.success_rate.as_ref());
    let fp = d.and_then(|d| d.failure_percentage.as_ref());
    Some(OutlierDetection {
        interval: o.interval.as_ref().map(|v| duration(v.as_std())),
        base_ejection_time: o.base_ejection_time.as_ref().map(|v| duration(v.as_std())),
        max_ejection_percent: o.max_ejection_percent.map(u32_value),
        split_external_local_origin_errors: o.split_external_and_local_errors.unwrap_or(false),
        // A detector that is not configured is not enforced.
        consecutive_5xx: Some(u32_value(total.unwrap_or(5))),
        enforcing_consecutive_5xx: Some(u32_value(if total.is_some() { 100 } else { 0 })),
        consecutive_gateway_failure: gateway.map(u32_value),
        enforcing_consecutive_gateway_failure: gateway.map(|_| u32_value(100)),
        consecutive_local_origin_failure: local.map(u32_value),
        enforcing_consecutive_local_origin_failure: local.map(|_| u32_value(100)),
        enforcing_success_rate: Some(u32_value(if sr.is_some() { 100 } else { 0 })),
        success_rate_minimum_hosts: sr.and_then(|s| s.minimum_hosts).map(u32_value),
        success_rate_request_volume: sr.and_then(|s| s.request_volume).map(u32_value),
        success_rate_stdev_factor: sr
            .and_then(|s| s.standard_deviation_factor.as_ref())
            .and_then(|f| f.as_f64())
            .map(|f| u32_value((f * 1000.0) as u32)),
        failure_percentage_threshold: fp.and_then(|f| f.threshold).map(|t| u32_value(t.min(100))),
        enforcing_failure_percentage: fp.map(|_| u32_value(100)),
        failure_percentage_minimum_hosts: fp.and_then(|f| f.minimum_hosts).map(u32_value),
        failure_percentage_request_volume: fp.and_then(|f| f.request_volume).map(u32_value),
        ..Default::default()
    })
}

/// Cluster options that make Envoy speak HTTP/2 to the upstream (gRPC and
/// `http2` services); one map entry, so its encoding is deterministic.
pub fn http2_upstream() -> HashMap<String, Any> {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        any(&options),
    )])
}

/// An EDS cluster named `name` (its load assignment has the same name);
/// `http2` when the upstream speaks HTTP/2 (gRPC).
pub fn eds_cluster(name: &str, p: &OutboundPolicies, http2: bool) -> Cluster {
    let connect_timeout = p
        .timeout
        .as_ref()
        .and_then(|t| t.connection_timeout.as_ref())
        .map(|d| d.as_std())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let lb_policy = match p
        .load_balancing
        .as_ref()
        .and_then(|l| l.load_balancer.as_ref())
        .map(|l| l.lb_type)
    {
        None | Some(LoadBalancerType::RoundRobin) => LbPolicy::RoundRobin,
        Some(LoadBalancerType::LeastRequest) => LbPolicy::LeastRequest,
        Some(LoadBalancerType::RingHash) => LbPolicy::RingHash,
        Some(LoadBalancerType::Random) => LbPolicy::Random,
        Some(LoadBalancerType::Maglev) => LbPolicy::Maglev,
    };
    let cb = p.circuit_breaker.as_ref();
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(duration(connect_timeout)),
        lb_policy: lb_policy as i32,
        circuit_breakers: cb.and_then(|c| c.connection_limits.as_ref()).map(|l| CircuitBreakers {
            thresholds: vec![thresholds(l)],
            ..Default::default()
        }),
        outlier_detection: cb
            .and_then(|c| c.outlier_detection.as_ref())
            .and_then(outlier_detection),
        typed_extension_protocol_options: if http2 { http2_upstream() } else { HashMap::new() },
        ..Default::default()
    }
}
