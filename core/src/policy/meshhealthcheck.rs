//! MeshHealthCheck: active health checking (HTTP, TCP or gRPC probes) of
//! the destinations a proxy sends to (`to`).

use serde::{Deserialize, Serialize};

use super::common::{
    check_entries, check_file_path, check_int_percentage, check_not_empty, check_percentage, check_positive,
    check_positive_duration, check_status_code, Entry, HeadersToAdd, IntOrString,
};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshHealthCheck {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Entry<Conf>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    /// Time between checks (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time to wait for a check's answer (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter_percent: Option<u32>,
    /// Percentage (0-100, decimal allowed) of healthy hosts below which
    /// panic mode starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_traffic_on_panic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_traffic_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_log_health_check_failures: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_connection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcCheck>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Path requested by the check (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_to_add: Option<HeadersToAdd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<i32>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Base64-encoded payload to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Base64-encoded payloads expected back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
];
const TO: &[K] = &[K::Mesh, K::MeshService];

impl Spec for MeshHealthCheck {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        check_entries(
            &self.to,
            &path.field("to"),
            RefPosition::To,
            TO,
            causes,
            |_, c, p, cs| c.validate(p, cs),
        );
    }
}

impl Conf {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        for (name, d) in [
            ("interval", &self.interval),
            ("timeout", &self.timeout),
            ("initialJitter", &self.initial_jitter),
            ("intervalJitter", &self.interval_jitter),
            ("noTrafficInterval", &self.no_traffic_interval),
        ] {
            check_positive_duration(d.as_ref(), &path.field(name), causes);
        }
        check_positive(self.unhealthy_threshold, &path.field("unhealthyThreshold"), causes);
        check_positive(self.healthy_threshold, &path.field("healthyThreshold"), causes);
        check_int_percentage(
            self.interval_jitter_percent,
            &path.field("intervalJitterPercent"),
            causes,
        );
        if let Some(t) = &self.healthy_panic_threshold {
            check_percentage(t, &path.field("healthyPanicThreshold"), causes);
        }
        if let Some(p) = &self.event_log_path {
            check_file_path(p, &path.field("eventLogPath"), causes);
        }
        if self.http.is_none() && self.tcp.is_none() && self.grpc.is_none() {
            causes.add(path, "at least one of \"http\", \"tcp\" or \"grpc\" must be set");
        }
        if let Some(http) = &self.http {
            let p = path.field("http");
            if let Some(check_path) = &http.path {
                check_not_empty(check_path, &p.field("path"), causes);
            }
            for (i, status) in http.expected_statuses.iter().flatten().enumerate() {
                check_status_code(*status, &p.field("expectedStatuses").index(i), causes);
            }
            if let Some(h) = &http.request_headers_to_add {
                h.validate(&p.field("requestHeadersToAdd"), causes);
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
            "targetRef": {"kind": "Mesh"},
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {
                    "interval": "10s",
                    "timeout": "2s",
                    "unhealthyThreshold": 3,
                    "healthyThreshold": 1,
                    "initialJitter": "5s",
                    "intervalJitter": "6s",
                    "intervalJitterPercent": 10,
                    "healthyPanicThreshold": "60.5",
                    "failTrafficOnPanic": true,
                    "noTrafficInterval": "60s",
                    "eventLogPath": "/tmp/health-check.log",
                    "alwaysLogHealthCheckFailures": true,
                    "reuseConnection": false,
                    "http": {
                        "disabled": false,
                        "path": "/health",
                        "requestHeadersToAdd": {
                            "add": [{"name": "x-some-header", "value": "value"}],
                            "set": [{"name": "host", "value": "example.com"}]
                        },
                        "expectedStatuses": [200, 201]
                    },
                    "tcp": {"disabled": true, "send": "Zm9v", "receive": ["YmFy", "YmF6"]},
                    "grpc": {"disabled": false, "serviceName": "grpc-client", "authority": "grpc-client.default.svc"}
                }
            }]
        })
    }

    #[test]
    fn full_example_is_valid_and_round_trips() {
        assert_valid::<MeshHealthCheck>(full());
        assert_valid::<MeshHealthCheck>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {}, "healthyPanicThreshold": 50}}]
        }));
    }

    #[test]
    fn rejects_kinds_and_from() {
        assert_invalid::<MeshHealthCheck>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshSubset", "tags": {"a": "b"}},
                   "default": {"tcp": {}}}]}),
            "spec.to[0].targetRef.kind",
            "value MeshSubset is not supported here; allowed: Mesh, MeshService",
        );
        assert_invalid::<MeshHealthCheck>(
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}}]}),
            "spec.from",
            "unknown field `from`",
        );
    }

    #[test]
    fn rejects_out_of_range_values() {
        let mut bad = full();
        let d = &mut bad["to"][0]["default"];
        d["interval"] = json!("0s");
        d["unhealthyThreshold"] = json!(0);
        d["intervalJitterPercent"] = json!(120);
        d["healthyPanicThreshold"] = json!("101");
        d["eventLogPath"] = json!("relative/path.log");
        d["http"]["path"] = json!("");
        d["http"]["expectedStatuses"] = json!([200, 99, 600]);
        d["http"]["requestHeadersToAdd"]["add"][0]["name"] = json!("Bad Header");
        let got = causes::<MeshHealthCheck>(bad);
        let pre = "spec.to[0].default.";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields,
            [
                "interval",
                "unhealthyThreshold",
                "intervalJitterPercent",
                "healthyPanicThreshold",
                "eventLogPath",
                "http.path",
                "http.expectedStatuses[1]",
                "http.expectedStatuses[2]",
                "http.requestHeadersToAdd.add[0].name",
            ]
        );
        assert_eq!(got[6].message, "99 is not a valid HTTP status code (100-599)");
    }

    #[test]
    fn needs_a_probe_type() {
        assert_invalid::<MeshHealthCheck>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"interval": "5s"}}]}),
            "spec.to[0].default",
            "at least one of \"http\", \"tcp\" or \"grpc\" must be set",
        );
    }
}
