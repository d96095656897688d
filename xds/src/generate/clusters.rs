//! Clusters towards a destination: EDS over ADS, with the destination's
//! load balancer, connection timeout, circuit breaker and outlier detection,
//! and (Envoy sidecars only) MeshHealthCheck's active health checks.
//!
//! # MeshHealthCheck
//!
//! [`with_health_check`] adds one active check to a sidecar's cluster, of
//! the kind the destination's protocol calls for: `http` for HTTP and HTTP/2
//! services (HTTP/2 codec for the latter), `grpc` (the gRPC health checking
//! protocol) for gRPC ones, `tcp` for the rest. When the protocol's own kind
//! is not configured or `disabled`, a configured and enabled `tcp` check is
//! used instead (a TCP check works on any service); with neither, the
//! cluster gets no check. Defaults where the policy says nothing: interval
//! 1m, timeout 15s, unhealthy threshold 5, healthy threshold 1, path `/`.
//! `healthyPanicThreshold` and `failTrafficOnPanic` go to the cluster's
//! `common_lb_config` whatever the check; `eventLogPath` becomes a file event
//! logger. TCP `send`/`receive` are base64 and sent as binary payloads; a
//! payload that is not valid base64 leaves the TCP check out.
//!
//! Proxyless gRPC clients do not run active health checks (gRPC ignores a
//! cluster's `health_checks`, and has no panic threshold), so their clusters
//! never get any of this: only the sidecar generator calls
//! [`with_health_check`].

use envoy_types::pb::envoy::config::cluster::v3::cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{common_lb_config, CommonLbConfig};
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
    CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction,
    health_check::{self, payload, HealthChecker, Payload},
    HeaderValue, HeaderValueOption, HealthCheck, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::health_check::event_sinks::file::v3::HealthCheckEventFileSink;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range, Percent};
use envoy_types::pb::google::protobuf::BoolValue;
use meridian_core::policy::meshcircuitbreaker;
use meridian_core::policy::meshhealthcheck;
use meridian_core::policy::meshloadbalancingstrategy::{self, LoadBalancerType};

use super::routes::Protocol;

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
    let lb_config = p
        .load_balancing
        .as_ref()
        .and_then(|l| l.load_balancer.as_ref())
        .and_then(lb_config);
    Cluster {
        name: name.to_string(),
        lb_config,
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
        // Affinity groups are localities of one priority, shared by weight.
        common_lb_config: super::endpoints::affinity_tags(p.load_balancing.as_ref()).map(|_| CommonLbConfig {
            locality_config_specifier: Some(common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                Default::default(),
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The options of a MeshLoadBalancingStrategy balancer, for Envoy.
fn lb_config(lb: &meshloadbalancingstrategy::LoadBalancer) -> Option<cluster::LbConfig> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ring_hash_lb_config::HashFunction as EnvoyHash, LbConfig, LeastRequestLbConfig, MaglevLbConfig,
        RingHashLbConfig,
    };
    use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
    use envoy_types::pb::google::protobuf::UInt64Value;
    use meshloadbalancingstrategy::HashFunction;
    match lb.lb_type {
        LoadBalancerType::LeastRequest => {
            let l = lb.least_request.as_ref()?;
            Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                choice_count: l.choice_count.map(u32_value),
                active_request_bias: l
                    .active_request_bias
                    .as_ref()
                    .and_then(|b| b.as_f64())
                    .map(|default_value| RuntimeDouble {
                        default_value,
                        runtime_key: "meridian.lb.least_request.active_request_bias".into(),
                    }),
                ..Default::default()
            }))
        }
        LoadBalancerType::RingHash => {
            let r = lb.ring_hash.as_ref()?;
            Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: r.min_ring_size.map(|v| UInt64Value { value: u64::from(v) }),
                maximum_ring_size: r.max_ring_size.map(|v| UInt64Value { value: u64::from(v) }),
                hash_function: match r.hash_function {
                    Some(HashFunction::MurmurHash2) => EnvoyHash::MurmurHash2 as i32,
                    _ => EnvoyHash::XxHash as i32,
                },
            }))
        }
        LoadBalancerType::Maglev => {
            let m = lb.maglev.as_ref()?;
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: m.table_size.map(|v| UInt64Value { value: u64::from(v) }),
            }))
        }
        LoadBalancerType::RoundRobin | LoadBalancerType::Random => None,
    }
}

/// A cluster as a gRPC client takes it: gRPC balances with round robin or
/// ring hash (gRFC A42, xxHash only) and refuses a cluster with any other
/// balancer (@grpc/grpc-js-xds: "unsupported lb_policy"), so LeastRequest,
/// Random and Maglev become round robin and a MurmurHash2 ring xxHash
/// (reported with every write of such a policy).
pub fn for_grpc(mut c: Cluster) -> Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ring_hash_lb_config::HashFunction, LbConfig};
    if c.lb_policy == LbPolicy::RingHash as i32 {
        if let Some(LbConfig::RingHashLbConfig(r)) = &mut c.lb_config {
            r.hash_function = HashFunction::XxHash as i32;
        }
    } else {
        c.lb_policy = LbPolicy::RoundRobin as i32;
        c.lb_config = None;
    }
    c
}

/// What a destination speaks, as health checking needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    Tcp,
    Http1,
    Http2,
    Grpc,
}

impl Upstream {
    /// From the service's protocol (`None` for TCP) and whether it speaks
    /// HTTP/2.
    pub fn of(protocol: Option<Protocol>, http2: bool) -> Self {
        match protocol {
            None => Upstream::Tcp,
            Some(Protocol::Grpc) => Upstream::Grpc,
            Some(Protocol::Http) if http2 => Upstream::Http2,
            Some(Protocol::Http) => Upstream::Http1,
        }
    }
}

const DEFAULT_HC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const DEFAULT_HC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 5;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;

/// Standard base64 (RFC 4648, padding optional); `None` when `s` is not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let data = s.trim_end_matches('=').as_bytes();
    if s.len() - data.len() > 2 || data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

fn enabled(disabled: Option<bool>) -> bool {
    disabled != Some(true)
}

fn http_check(h: &meshhealthcheck::HttpCheck, upstream: Upstream) -> HealthChecker {
    let headers = h.request_headers_to_add.as_ref();
    let request_headers_to_add = [
        (
            headers.and_then(|h| h.set.as_ref()),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ),
        (
            headers.and_then(|h| h.add.as_ref()),
            HeaderAppendAction::AppendIfExistsOrAdd,
        ),
    ]
    .into_iter()
    .flat_map(|(list, action)| {
        list.into_iter().flatten().map(move |v| HeaderValueOption {
            header: Some(HeaderValue {
                key: v.name.clone(),
                value: v.value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        })
    })
    .collect();
    HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
        path: h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into()),
        request_headers_to_add,
        expected_statuses: h
            .expected_statuses
            .iter()
            .flatten()
            .map(|s| Int64Range {
                start: i64::from(*s),
                end: i64::from(*s) + 1,
            })
            .collect(),
        codec_client_type: if upstream == Upstream::Http2 {
            CodecClientType::Http2
        } else {
            CodecClientType::Http1
        } as i32,
        ..Default::default()
    })
}

fn tcp_check(t: &meshhealthcheck::TcpCheck) -> Option<HealthChecker> {
    let binary = |s: &str| {
        Some(Payload {
            payload: Some(payload::Payload::Binary(base64_decode(s)?)),
        })
    };
    let send = match t.send.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(binary(s)?),
        None => None,
    };
    let receive = t
        .receive
        .iter()
        .flatten()
        .filter(|r| !r.is_empty())
        .map(|r| binary(r))
        .collect::<Option<Vec<_>>>()?;
    Some(HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck {
        send,
        receive,
        ..Default::default()
    }))
}

fn grpc_check(g: &meshhealthcheck::GrpcCheck) -> HealthChecker {
    HealthChecker::GrpcHealthCheck(health_check::GrpcHealthCheck {
        service_name: g.service_name.clone().unwrap_or_default(),
        authority: g
            .authority
            .clone()
            .filter(|a| !a.contains(['\0', '\r', '\n']))
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// The checker of the kind `upstream` calls for (see the module docs).
fn health_checker(conf: &meshhealthcheck::Conf, upstream: Upstream) -> Option<HealthChecker> {
    let own = match upstream {
        Upstream::Http1 | Upstream::Http2 => conf
            .http
            .as_ref()
            .filter(|h| enabled(h.disabled))
            .map(|h| http_check(h, upstream)),
        Upstream::Grpc => conf.grpc.as_ref().filter(|g| enabled(g.disabled)).map(grpc_check),
        Upstream::Tcp => None,
    };
    own.or_else(|| {
        let tcp = conf.tcp.as_ref().filter(|t| enabled(t.disabled))?;
        let checker = tcp_check(tcp);
        if checker.is_none() {
            tracing::warn!("MeshHealthCheck tcp send/receive is not valid base64; no TCP health check");
        }
        checker
    })
}

/// The active health check MeshHealthCheck `conf` gives a cluster of an
/// `upstream` service, if any.
pub fn health_check(conf: &meshhealthcheck::Conf, upstream: Upstream) -> Option<HealthCheck> {
    let checker = health_checker(conf, upstream)?;
    let positive = |v: Option<i32>, default: u32| {
        u32_value(
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default),
        )
    };
    let nonzero = |d: &Option<meridian_core::duration::Duration>| {
        d.as_ref().map(|d| d.as_std()).filter(|d| !d.is_zero()).map(duration)
    };
    Some(HealthCheck {
        interval: nonzero(&conf.interval).or(Some(duration(DEFAULT_HC_INTERVAL))),
        timeout: nonzero(&conf.timeout).or(Some(duration(DEFAULT_HC_TIMEOUT))),
        unhealthy_threshold: Some(positive(conf.unhealthy_threshold, DEFAULT_UNHEALTHY_THRESHOLD)),
        healthy_threshold: Some(positive(conf.healthy_threshold, DEFAULT_HEALTHY_THRESHOLD)),
        initial_jitter: nonzero(&conf.initial_jitter),
        interval_jitter: nonzero(&conf.interval_jitter),
        interval_jitter_percent: conf.interval_jitter_percent.unwrap_or(0),
        no_traffic_interval: nonzero(&conf.no_traffic_interval),
        reuse_connection: conf.reuse_connection.map(|value| BoolValue { value }),
        always_log_health_check_failures: conf.always_log_health_check_failures.unwrap_or(false),
        event_logger: conf
            .event_log_path
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| TypedExtensionConfig {
                name: "envoy.health_check.event_sinks.file".into(),
                typed_config: Some(any(&HealthCheckEventFileSink {
                    event_log_path: p.clone(),
                })),
            })
            .collect(),
        health_checker: Some(checker),
        ..Default::default()
    })
}

/// `cluster` with MeshHealthCheck `conf` applied: its check, and the panic
/// settings in `common_lb_config`. For Envoy sidecars only.
pub fn with_health_check(mut cluster: Cluster, conf: Option<&meshhealthcheck::Conf>, upstream: Upstream) -> Cluster {
    let Some(conf) = conf else {
        return cluster;
    };
    cluster.health_checks.extend(health_check(conf, upstream));
    let threshold = conf
        .healthy_panic_threshold
        .as_ref()
        .and_then(|t| t.as_f64())
        .map(|v| Percent {
            value: v.clamp(0.0, 100.0),
        });
    if threshold.is_some() || conf.fail_traffic_on_panic.is_some() {
        let lb = cluster.common_lb_config.get_or_insert_with(CommonLbConfig::default);
        if threshold.is_some() {
            lb.healthy_panic_threshold = threshold;
        }
        // Locality weights (affinity tags) and zone-aware balancing are one
        // choice in Envoy: the affinity groups keep theirs.
        let weighted = matches!(
            lb.locality_config_specifier,
            Some(common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        );
        if let Some(fail) = conf.fail_traffic_on_panic.filter(|_| !weighted) {
            lb.locality_config_specifier = Some(common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(
                common_lb_config::ZoneAwareLbConfig {
                    fail_traffic_on_panic: fail,
                    ..Default::default()
                },
            ));
        }
    }
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> meshhealthcheck::Conf {
        serde_json::from_value(v).unwrap()
    }

    fn checker(c: &Cluster) -> Option<&HealthChecker> {
        c.health_checks.first().and_then(|h| h.health_checker.as_ref())
    }

    fn cluster_with(v: serde_json::Value, upstream: Upstream) -> Cluster {
        with_health_check(
            eds_cluster("backend", &OutboundPolicies::default(), upstream == Upstream::Grpc),
            Some(&conf(v)),
            upstream,
        )
    }

    #[test]
    fn base64_payloads_decode() {
        for (text, bytes) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg", "foob"),
        ] {
            assert_eq!(base64_decode(text).as_deref(), Some(bytes.as_bytes()), "{text}");
        }
        for bad in ["Z", "Zm9v!", "Zg===", "Zm 9v"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_check_follows_the_destination_protocol() {
        let all = json!({"http": {"path": "/health", "expectedStatuses": [200, 204]},
                         "grpc": {"serviceName": "pkg.Backend", "authority": "backend.mesh"},
                         "tcp": {"send": "Zm9v", "receive": ["YmFy"]}});
        let http = cluster_with(all.clone(), Upstream::Http2);
        let Some(HealthChecker::HttpHealthCheck(h)) = checker(&http) else {
            panic!("no HTTP check: {http:?}")
        };
        assert_eq!(h.path, "/health");
        assert_eq!(h.codec_client_type, CodecClientType::Http2 as i32);
        assert_eq!(
            h.expected_statuses,
            [Int64Range { start: 200, end: 201 }, Int64Range { start: 204, end: 205 }]
        );
        let grpc = cluster_with(all.clone(), Upstream::Grpc);
        let Some(HealthChecker::GrpcHealthCheck(g)) = checker(&grpc) else {
            panic!("no gRPC check: {grpc:?}")
        };
        assert_eq!(
            (g.service_name.as_str(), g.authority.as_str()),
            ("pkg.Backend", "backend.mesh")
        );
        let tcp = cluster_with(all, Upstream::Tcp);
        let Some(HealthChecker::TcpHealthCheck(t)) = checker(&tcp) else {
            panic!("no TCP check: {tcp:?}")
        };
        let payload = |p: &Payload| match &p.payload {
            Some(payload::Payload::Binary(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(t.send.as_ref().map(payload).as_deref(), Some("foo"));
        assert_eq!(t.receive.iter().map(payload).collect::<Vec<_>>(), ["bar"]);

        // The protocol's own check disabled or absent: TCP when enabled.
        let fallback = cluster_with(json!({"http": {"disabled": true}, "tcp": {}}), Upstream::Http1);
        assert!(matches!(checker(&fallback), Some(HealthChecker::TcpHealthCheck(_))));
        let fallback = cluster_with(json!({"tcp": {}}), Upstream::Grpc);
        assert!(matches!(checker(&fallback), Some(HealthChecker::TcpHealthCheck(_))));
        for (v, upstream) in [
            (json!({"http": {}}), Upstream::Tcp),
            (json!({"grpc": {}, "tcp": {"disabled": true}}), Upstream::Http1),
            (json!({"tcp": {"send": "not base64!"}}), Upstream::Tcp),
        ] {
            let c = cluster_with(v.clone(), upstream);
            assert!(c.health_checks.is_empty(), "{v} on {upstream:?}: {c:?}");
        }
    }

    #[test]
    fn timings_defaults_and_panic_settings() {
        let c = cluster_with(json!({"tcp": {}}), Upstream::Tcp);
        let hc = &c.health_checks[0];
        assert_eq!(hc.interval, Some(duration(DEFAULT_HC_INTERVAL)));
        assert_eq!(hc.timeout, Some(duration(DEFAULT_HC_TIMEOUT)));
        assert_eq!(hc.unhealthy_threshold, Some(u32_value(5)));
        assert_eq!(hc.healthy_threshold, Some(u32_value(1)));
        assert_eq!(c.common_lb_config, None);

        let c = cluster_with(
            json!({"interval": "10s", "timeout": "2s", "unhealthyThreshold": 3, "healthyThreshold": 2,
                   "initialJitter": "5s", "intervalJitter": "6s", "intervalJitterPercent": 10,
                   "noTrafficInterval": "30s", "reuseConnection": false, "alwaysLogHealthCheckFailures": true,
                   "eventLogPath": "/tmp/hc.log", "healthyPanicThreshold": "62.5", "failTrafficOnPanic": true,
                   "tcp": {}}),
            Upstream::Tcp,
        );
        let hc = &c.health_checks[0];
        let secs = |s| Some(duration(std::time::Duration::from_secs(s)));
        assert_eq!((hc.interval, hc.timeout), (secs(10), secs(2)));
        assert_eq!(
            (hc.initial_jitter, hc.interval_jitter, hc.no_traffic_interval),
            (secs(5), secs(6), secs(30))
        );
        assert_eq!(hc.interval_jitter_percent, 10);
        assert_eq!(hc.unhealthy_threshold, Some(u32_value(3)));
        assert_eq!(hc.healthy_threshold, Some(u32_value(2)));
        assert_eq!(hc.reuse_connection, Some(BoolValue { value: false }));
        assert!(hc.always_log_health_check_failures);
        assert_eq!(hc.event_logger.len(), 1);
        assert_eq!(hc.event_logger[0].name, "envoy.health_check.event_sinks.file");
        let lb = c.common_lb_config.unwrap();
        assert_eq!(lb.healthy_panic_threshold, Some(Percent { value: 62.5 }));
        let Some(common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(z)) = lb.locality_config_specifier else {
            panic!("no zone-aware config")
        };
        assert!(z.fail_traffic_on_panic);
    }
}
