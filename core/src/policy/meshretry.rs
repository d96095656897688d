//! MeshRetry: how outbound (`to`) TCP connections, HTTP and gRPC requests
//! are retried.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{check_entries, check_header_name, check_positive, check_positive_duration, Entry, HeaderMatch};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshRetry {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Entry<Conf>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Tcp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Grpc>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tcp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connect_attempt: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Http {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// `0s` disables the per-try timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// Conditions (`5xx`, `GatewayError`, …) or status codes (`"503"`,
    /// or unquoted `503` in YAML).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::common::strings_or_numbers"
    )]
    pub retry_on: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_response_headers: Option<Vec<HeaderMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_request_headers: Option<Vec<HeaderMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection: Option<Vec<Predicate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection_max_attempts: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Grpc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<GrpcRetryOn>>,
}

/// Exponential back-off between retries (base defaults to 25ms, max to 10×base).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackOff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// Back-off driven by a rate-limit response header (e.g. `Retry-After`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitedBackOff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_headers: Option<Vec<ResetHeader>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResetHeader {
    pub name: String,
    pub format: ResetHeaderFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetHeaderFormat {
    Seconds,
    UnixTimestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrpcRetryOn {
    Canceled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

/// A host-selection predicate applied when picking the host of a retry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Predicate {
    pub predicate: PredicateType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Only for `OmitPreviousPriorities`; defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_frequency: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredicateType {
    OmitPreviousHosts,
    OmitHostsWithTags,
    OmitPreviousPriorities,
}

/// Whether `code` is an HTTP status with a standard reason phrase (the
/// codes Kuma accepts in `retryOn`: those Go's `http.StatusText` names).
fn is_known_status(code: i64) -> bool {
    matches!(
        code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=508 | 510 | 511
    )
}

/// The HTTP retry conditions besides plain status codes (Kuma's spelling:
/// `5xx` in lower case, the rest in CamelCase).
const HTTP_RETRY_ON: &[&str] = &[
    "5xx",
    "GatewayError",
    "Reset",
    "Retriable4xx",
    "ConnectFailure",
    "EnvoyRatelimited",
    "RefusedStream",
    "Http3PostConnectFailure",
    "HttpMethodConnect",
    "HttpMethodDelete",
    "HttpMethodGet",
    "HttpMethodHead",
    "HttpMethodOptions",
    "HttpMethodPatch",
    "HttpMethodPost",
    "HttpMethodPut",
    "HttpMethodTrace",
];

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::MeshHttpRoute,
];
const TO: &[K] = &[K::Mesh, K::MeshService];
/// A gateway's or a route's retries are configured for all its
/// destinations at once.
const TO_FROM_GATEWAY: &[K] = &[K::Mesh];

impl Spec for MeshRetry {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        if self.to.is_empty() {
            causes.add(&path.field("to"), "must have at least one item");
        }
        let allowed = if matches!(self.target_ref.kind, K::MeshGateway | K::MeshHttpRoute) {
            TO_FROM_GATEWAY
        } else {
            TO
        };
        check_entries(
            &self.to,
            &path.field("to"),
            RefPosition::To,
            allowed,
            causes,
            // Kuma 2.7 roots a default's violations at `conf`
            // (`spec.to[0].default.conf.http.retryOn[1]`); decoding errors
            // keep the document's path.
            |_, conf, p, c| conf.validate(&p.field("conf"), c),
        );
    }
}

impl Conf {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if self.tcp.is_none() && self.http.is_none() && self.grpc.is_none() {
            causes.add(path, "at least one of \"tcp\", \"http\" or \"grpc\" must be set");
        }
        if let Some(tcp) = &self.tcp {
            let p = path.field("tcp").field("maxConnectAttempt");
            match tcp.max_connect_attempt {
                None => causes.add(&p, "must be defined"),
                Some(n) => check_positive(Some(n), &p, causes),
            }
        }
        if let Some(http) = &self.http {
            http.validate(&path.field("http"), causes);
        }
        if let Some(grpc) = &self.grpc {
            let p = path.field("grpc");
            if grpc == &Grpc::default() {
                causes.add(&p, "must not be empty");
            }
            check_back_offs(grpc.back_off.as_ref(), grpc.rate_limited_back_off.as_ref(), &p, causes);
        }
    }
}

impl Http {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if self == &Http::default() {
            causes.add(path, "must not be empty");
        }
        check_back_offs(
            self.back_off.as_ref(),
            self.rate_limited_back_off.as_ref(),
            path,
            causes,
        );
        for (i, cond) in self.retry_on.iter().flatten().enumerate() {
            let is_status = cond.parse::<i64>().is_ok_and(is_known_status);
            if !is_status && !HTTP_RETRY_ON.contains(&cond.as_str()) {
                causes.add(
                    &path.field("retryOn").index(i),
                    format!(
                        "unknown retry condition {cond:?}; expected an HTTP status code or one of: {}",
                        HTTP_RETRY_ON.join(", ")
                    ),
                );
            }
        }
        for (name, list) in [
            ("retriableResponseHeaders", &self.retriable_response_headers),
            ("retriableRequestHeaders", &self.retriable_request_headers),
        ] {
            for (i, h) in list.iter().flatten().enumerate() {
                h.validate(&path.field(name).index(i), causes);
            }
        }
        let mut priorities_seen = false;
        for (i, pred) in self.host_selection.iter().flatten().enumerate() {
            let p = path.field("hostSelection").index(i);
            match pred.predicate {
                PredicateType::OmitPreviousHosts => {}
                PredicateType::OmitHostsWithTags => {
                    if pred.tags.as_ref().is_none_or(|t| t.is_empty()) {
                        causes.add(&p.field("tags"), "must be defined with predicate OmitHostsWithTags");
                    }
                }
                PredicateType::OmitPreviousPriorities => {
                    if priorities_seen {
                        causes.add(&p.field("predicate"), "OmitPreviousPriorities may only be given once");
                    }
                    priorities_seen = true;
                    check_positive(pred.update_frequency, &p.field("updateFrequency"), causes);
                }
            }
            if pred.predicate != PredicateType::OmitHostsWithTags && pred.tags.is_some() {
                causes.add(&p.field("tags"), "can only be set with predicate OmitHostsWithTags");
            }
            if pred.predicate != PredicateType::OmitPreviousPriorities && pred.update_frequency.is_some() {
                causes.add(
                    &p.field("updateFrequency"),
                    "can only be set with predicate OmitPreviousPriorities",
                );
            }
        }
        check_positive(
            self.host_selection_max_attempts,
            &path.field("hostSelectionMaxAttempts"),
            causes,
        );
    }
}

fn check_back_offs(
    back_off: Option<&BackOff>,
    rate_limited: Option<&RateLimitedBackOff>,
    path: &FieldPath,
    causes: &mut Causes,
) {
    if let Some(b) = back_off {
        let p = path.field("backOff");
        if b.base_interval.is_none() && b.max_interval.is_none() {
            causes.add(&p, "at least one of \"baseInterval\" or \"maxInterval\" must be set");
        }
        check_positive_duration(b.base_interval.as_ref(), &p.field("baseInterval"), causes);
        check_positive_duration(b.max_interval.as_ref(), &p.field("maxInterval"), causes);
        if let (Some(base), Some(max)) = (&b.base_interval, &b.max_interval) {
            if max.as_std() < base.as_std() {
                causes.add(
                    &p.field("maxInterval"),
                    format!("must not be less than baseInterval ({base})"),
                );
            }
        }
    }
    if let Some(r) = rate_limited {
        let p = path.field("rateLimitedBackOff");
        check_positive_duration(r.max_interval.as_ref(), &p.field("maxInterval"), causes);
        match &r.reset_headers {
            None => causes.add(&p.field("resetHeaders"), "must be defined"),
            Some(list) if list.is_empty() => causes.add(&p.field("resetHeaders"), "must have at least one item"),
            Some(list) => {
                for (i, h) in list.iter().enumerate() {
                    check_header_name(&h.name, &p.field("resetHeaders").index(i).field("name"), causes);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::common::testing::{assert_invalid, assert_valid, causes};
    use super::*;

    fn full() -> serde_json::Value {
        json!({
            "targetRef": {"kind": "MeshService", "name": "frontend"},
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {
                    "tcp": {"maxConnectAttempt": 5},
                    "http": {
                        "numRetries": 10,
                        "perTryTimeout": "2s",
                        "backOff": {"baseInterval": "15s", "maxInterval": "20m"},
                        "rateLimitedBackOff": {
                            "maxInterval": "1m",
                            "resetHeaders": [
                                {"name": "retry-after", "format": "Seconds"},
                                {"name": "x-ratelimit-reset", "format": "UnixTimestamp"}
                            ]
                        },
                        "retryOn": ["5xx", "GatewayError", "Reset", "503", "HttpMethodGet"],
                        "retriableResponseHeaders": [{"name": "x-retry", "type": "Exact", "value": "yes"}],
                        "retriableRequestHeaders": [{"name": "x-idempotent", "type": "Present"}],
                        "hostSelection": [
                            {"predicate": "OmitPreviousHosts"},
                            {"predicate": "OmitHostsWithTags", "tags": {"version": "v1"}},
                            {"predicate": "OmitPreviousPriorities", "updateFrequency": 2}
                        ],
                        "hostSelectionMaxAttempts": 3
                    },
                    "grpc": {
                        "numRetries": 5,
                        "perTryTimeout": "16s",
                        "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"},
                        "retryOn": ["Canceled", "DeadlineExceeded", "Internal", "ResourceExhausted", "Unavailable"]
                    }
                }
            }]
        })
    }

    #[test]
    fn full_example_is_valid_and_round_trips() {
        assert_valid::<MeshRetry>(full());
    }

    #[test]
    fn gateway_retries_target_the_whole_mesh() {
        assert_valid::<MeshRetry>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge", "tags": {"port": "8080"}},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": 3}}}]
        }));
        assert_invalid::<MeshRetry>(
            json!({
                "targetRef": {"kind": "MeshGateway", "name": "edge"},
                "to": [{"targetRef": {"kind": "MeshService", "name": "b"}, "default": {"http": {"numRetries": 3}}}]
            }),
            "spec.to[0].targetRef.kind",
            "value MeshService is not supported here; allowed: Mesh",
        );
    }

    #[test]
    fn a_route_takes_retries_for_all_its_destinations() {
        let on_route = json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"},
               "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": 1}}}]});
        assert!(crate::spec::check::<MeshRetry>(on_route, &FieldPath::root().field("spec")).is_ok());
        assert_invalid::<MeshRetry>(
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"},
                   "to": [{"targetRef": {"kind": "MeshService", "name": "b"}, "default": {"http": {"numRetries": 1}}}]}),
            "spec.to[0].targetRef.kind",
            "value MeshService is not supported here; allowed: Mesh",
        );
    }

    #[test]
    fn rejects_unsupported_kinds_and_from() {
        assert_invalid::<MeshRetry>(
            json!({"targetRef": {"kind": "MeshExternalService", "name": "r"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {"maxConnectAttempt": 1}}}]}),
            "spec.targetRef.kind",
            "unknown variant `MeshExternalService`",
        );
        assert_invalid::<MeshRetry>(
            json!({"targetRef": {"kind": "Mesh"}, "from": []}),
            "spec.from",
            "unknown field `from`, expected `targetRef` or `to`",
        );
        assert_invalid::<MeshRetry>(json!({"targetRef": {"kind": "Mesh"}}), "spec.to", "at least one item");
    }

    #[test]
    fn rejects_bad_confs() {
        let mut bad = full();
        bad["to"][0]["default"]["http"]["retryOn"] = json!(["5xx", "Sometimes", "999", "5XX", "599", 503]);
        bad["to"][0]["default"]["http"]["backOff"] = json!({"baseInterval": "0s"});
        bad["to"][0]["default"]["http"]["rateLimitedBackOff"] = json!({"maxInterval": "1m"});
        bad["to"][0]["default"]["tcp"] = json!({});
        bad["to"][0]["default"]["grpc"] = json!({});
        let got = causes::<MeshRetry>(bad);
        let fields: Vec<_> = got.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.to[0].default.conf.tcp.maxConnectAttempt",
                "spec.to[0].default.conf.http.backOff.baseInterval",
                "spec.to[0].default.conf.http.rateLimitedBackOff.resetHeaders",
                "spec.to[0].default.conf.http.retryOn[1]",
                "spec.to[0].default.conf.http.retryOn[2]",
                "spec.to[0].default.conf.http.retryOn[3]",
                "spec.to[0].default.conf.http.retryOn[4]",
                "spec.to[0].default.conf.grpc",
            ]
        );
        assert_eq!(got[0].message, "must be defined");
        assert_eq!(got[1].message, "must be greater than 0s");
        assert!(
            got[3].message.starts_with("unknown retry condition \"Sometimes\""),
            "{}",
            got[3].message
        );
    }

    #[test]
    fn rejects_empty_default_and_bad_enums() {
        assert_invalid::<MeshRetry>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}),
            "spec.to[0].default.conf",
            "at least one of \"tcp\", \"http\" or \"grpc\"",
        );
        assert_invalid::<MeshRetry>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                   "default": {"grpc": {"retryOn": ["Sometimes"]}}}]}),
            "spec.to[0].default.grpc.retryOn[0]",
            "unknown variant `Sometimes`",
        );
        assert_invalid::<MeshRetry>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                   "default": {"http": {"numRetries": -1}}}]}),
            "spec.to[0].default.http.numRetries",
            "invalid value",
        );
    }

    #[test]
    fn host_selection_rules() {
        let mut bad = full();
        bad["to"][0]["default"]["http"]["hostSelection"] = json!([
            {"predicate": "OmitHostsWithTags"},
            {"predicate": "OmitPreviousPriorities", "updateFrequency": 0},
            {"predicate": "OmitPreviousPriorities"}
        ]);
        let got = causes::<MeshRetry>(bad);
        let fields: Vec<_> = got.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.to[0].default.conf.http.hostSelection[0].tags",
                "spec.to[0].default.conf.http.hostSelection[1].updateFrequency",
                "spec.to[0].default.conf.http.hostSelection[2].predicate",
            ]
        );
    }
}
