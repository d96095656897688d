//! Routes towards one destination service: MeshHTTPRoute rules (matches,
//! weighted backends) then a catch-all to the whole service, each carrying
//! the destination's timeout and retry policy.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, retry_policy::RetryBackOff, route::Action, route_action,
    route_match::PathSpecifier, weighted_cluster::ClusterWeight, HeaderMatcher, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, RegexMatcher, StringMatcher};
use meridian_core::policy::common::{HeaderMatch, HeaderMatchType};
use meridian_core::policy::meshhttproute::{Match, PathMatchType, Rule};
use meridian_core::policy::meshretry::GrpcRetryOn;
use meridian_core::policy::TargetRefKind;

use super::{cluster_name, duration, u32_value, OutboundPolicies};

/// A cluster a route sends to: a service, or a subset of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterRef {
    pub service: String,
    pub subset: BTreeMap<String, String>,
}

impl ClusterRef {
    pub fn name(&self) -> String {
        cluster_name(&self.service, &self.subset)
    }
}

/// Which retry settings a route uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

fn string_match(pattern: MatchPattern) -> HeaderMatchSpecifier {
    HeaderMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn header_matcher(h: &HeaderMatch) -> HeaderMatcher {
    let value = h.value.clone().unwrap_or_default();
    let (spec, invert) = match h.match_type.unwrap_or(HeaderMatchType::Exact) {
        HeaderMatchType::Exact => (string_match(MatchPattern::Exact(value)), false),
        HeaderMatchType::Prefix => (string_match(MatchPattern::Prefix(value)), false),
        HeaderMatchType::RegularExpression => (
            string_match(MatchPattern::SafeRegex(RegexMatcher {
                regex: value,
                ..Default::default()
            })),
            false,
        ),
        HeaderMatchType::Present => (HeaderMatchSpecifier::PresentMatch(true), false),
        HeaderMatchType::Absent => (HeaderMatchSpecifier::PresentMatch(true), true),
    };
    HeaderMatcher {
        name: h.name.clone(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn route_match(m: &Match) -> RouteMatch {
    let path = match &m.path {
        None => PathSpecifier::Prefix("/".into()),
        Some(p) => match p.match_type {
            PathMatchType::Exact => PathSpecifier::Path(p.value.clone()),
            PathMatchType::PathPrefix => PathSpecifier::Prefix(p.value.clone()),
            PathMatchType::RegularExpression => PathSpecifier::SafeRegex(RegexMatcher {
                regex: p.value.clone(),
                ..Default::default()
            }),
        },
    };
    let mut headers: Vec<HeaderMatcher> = m.headers.iter().flatten().map(header_matcher).collect();
    if let Some(method) = &m.method {
        let name = serde_json::to_value(method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(string_match(MatchPattern::Exact(name))),
            ..Default::default()
        });
    }
    RouteMatch {
        path_specifier: Some(path),
        headers,
        ..Default::default()
    }
}

fn retry_policy(p: &OutboundPolicies, protocol: Protocol) -> Option<RetryPolicy> {
    let retry = p.retry.as_ref()?;
    let (num, back_off, retry_on, per_try) = match protocol {
        Protocol::Grpc => {
            let g = retry.grpc.as_ref()?;
            let on = g
                .retry_on
                .as_ref()
                .map(|l| {
                    l.iter()
                        .map(|c| match c {
                            GrpcRetryOn::Canceled => "cancelled",
                            GrpcRetryOn::DeadlineExceeded => "deadline-exceeded",
                            GrpcRetryOn::Internal => "internal",
                            GrpcRetryOn::ResourceExhausted => "resource-exhausted",
                            GrpcRetryOn::Unavailable => "unavailable",
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable".into());
            (g.num_retries, g.back_off.as_ref(), on, g.per_try_timeout.as_ref())
        }
        Protocol::Http => {
            let h = retry.http.as_ref()?;
            let on = h
                .retry_on
                .as_ref()
                .map(|l| l.iter().map(|s| http_retry_on(s)).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "gateway-error,connect-failure,refused-stream".into());
            (h.num_retries, h.back_off.as_ref(), on, h.per_try_timeout.as_ref())
        }
    };
    // `numRetries: 0` means no retries. Envoy reads that from a missing
    // policy as well, and gRPC clients reject a policy with zero retries
    // (NACK of the whole RouteConfiguration), so none is sent.
    if num == Some(0) {
        return None;
    }
    Some(RetryPolicy {
        retry_on,
        num_retries: num.map(u32_value),
        per_try_timeout: per_try.filter(|d| !d.is_zero()).map(|d| duration(d.as_std())),
        retry_back_off: back_off.and_then(|b| {
            let base = b.base_interval.as_ref()?;
            Some(RetryBackOff {
                base_interval: Some(duration(base.as_std())),
                max_interval: b.max_interval.as_ref().map(|m| duration(m.as_std())),
            })
        }),
        ..Default::default()
    })
}

/// MeshRetry's HTTP conditions are Envoy's, in upper camel or the Envoy
/// spelling; both are accepted and Envoy's is sent.
fn http_retry_on(s: &str) -> String {
    match s {
        "5xx" | "5XX" => "5xx".into(),
        "GatewayError" => "gateway-error".into(),
        "Reset" => "reset".into(),
        "Retriable4xx" => "retriable-4xx".into(),
        "ConnectFailure" => "connect-failure".into(),
        "EnvoyRatelimited" => "envoy-ratelimited".into(),
        "RefusedStream" => "refused-stream".into(),
        "Http3PostConnectFailure" => "http3-post-connect-failure".into(),
        "RetriableStatusCodes" => "retriable-status-codes".into(),
        other => other.to_ascii_lowercase(),
    }
}

fn action(clusters: &[(ClusterRef, u32)], p: &OutboundPolicies, protocol: Protocol) -> RouteAction {
    let specifier = if clusters.len() == 1 {
        route_action::ClusterSpecifier::Cluster(clusters[0].0.name())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(c, w)| ClusterWeight {
                    name: c.name(),
                    weight: Some(u32_value(*w)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let request_timeout = p
        .timeout
        .as_ref()
        .and_then(|t| t.http.as_ref())
        .and_then(|h| h.request_timeout.as_ref())
        .map(|d| duration(d.as_std()));
    RouteAction {
        cluster_specifier: Some(specifier),
        timeout: request_timeout,
        // gRPC clients take the deadline from max_stream_duration (0 = none).
        max_stream_duration: request_timeout.map(|d| route_action::MaxStreamDuration {
            max_stream_duration: Some(d),
            ..Default::default()
        }),
        retry_policy: retry_policy(p, protocol),
        ..Default::default()
    }
}

/// The clusters a rule sends to, with weights; `None` when it names no
/// usable backend.
fn rule_backends(rule: &Rule, service: &str) -> Option<Vec<(ClusterRef, u32)>> {
    let refs = rule.default.backend_refs.as_ref()?;
    let out: Vec<(ClusterRef, u32)> = refs
        .iter()
        .filter_map(|b| {
            let name = b.name.clone().unwrap_or_else(|| service.to_string());
            let subset = match b.kind {
                TargetRefKind::MeshService => BTreeMap::new(),
                TargetRefKind::MeshServiceSubset => b.tags.clone().unwrap_or_default(),
                _ => return None,
            };
            Some((ClusterRef { service: name, subset }, b.weight.unwrap_or(1)))
        })
        .filter(|(_, w)| *w > 0)
        .collect();
    (!out.is_empty()).then_some(out)
}

/// The route configuration `name` for traffic to `service`, and the clusters
/// it refers to.
pub fn route_configuration(
    name: &str,
    service: &str,
    p: &OutboundPolicies,
    protocol: Protocol,
) -> (RouteConfiguration, BTreeSet<ClusterRef>) {
    let mut clusters = BTreeSet::new();
    let mut routes = Vec::new();
    for rule in &p.http_rules {
        let Some(backends) = rule_backends(rule, service) else {
            continue;
        };
        clusters.extend(backends.iter().map(|(c, _)| c.clone()));
        let matches: Vec<RouteMatch> = if rule.matches.is_empty() {
            vec![route_match(&Match::default())]
        } else {
            rule.matches.iter().map(route_match).collect()
        };
        for m in matches {
            routes.push(Route {
                r#match: Some(m),
                action: Some(Action::Route(action(&backends, p, protocol))),
                ..Default::default()
            });
        }
    }
    let whole = ClusterRef {
        service: service.to_string(),
        subset: BTreeMap::new(),
    };
    clusters.insert(whole.clone());
    routes.push(Route {
        r#match: Some(route_match(&Match::default())),
        action: Some(Action::Route(action(&[(whole, 1)], p, protocol))),
        ..Default::default()
    });
    let rc = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: service.to_string(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    (rc, clusters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn retry(grpc: serde_json::Value) -> OutboundPolicies {
        OutboundPolicies {
            retry: Some(serde_json::from_value(json!({"grpc": grpc, "http": grpc})).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn zero_retries_send_no_retry_policy() {
        for protocol in [Protocol::Grpc, Protocol::Http] {
            assert_eq!(retry_policy(&retry(json!({"numRetries": 0})), protocol), None);
            let two = retry_policy(&retry(json!({"numRetries": 2})), protocol).unwrap();
            assert_eq!(two.num_retries, Some(u32_value(2)));
        }
    }
}
