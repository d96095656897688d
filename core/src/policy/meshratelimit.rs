//! MeshRateLimit: local (per-proxy) limits on HTTP requests and TCP
//! connections. Sidecars limit inbound traffic (`from`); gateways and HTTP
//! routes limit what they forward (`to`).

use std::time::Duration as StdDuration;

use serde::{Deserialize, Serialize};

use super::common::{check_positive, check_status_code, check_to_and_from, forbid_list, Entry, HeadersToAdd};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshRateLimit {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Entry<Conf>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Entry<Conf>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<Local>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Local {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<LocalHttp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<LocalTcp>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalHttp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalTcp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate: Option<Rate>,
}

/// `num` requests (or connections) per `interval`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rate {
    pub num: u32,
    pub interval: Duration,
}

/// The answer to a limited request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OnRateLimit {
    /// Status code returned (default 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersToAdd>,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::MeshHttpRoute,
];
const TO: &[K] = &[K::Mesh];
const FROM: &[K] = &[K::Mesh];
/// The token bucket refills at most this often.
const MIN_INTERVAL: StdDuration = StdDuration::from_millis(50);

impl Spec for MeshRateLimit {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        let kind = self.target_ref.kind;
        if matches!(kind, K::MeshGateway | K::MeshHttpRoute) {
            let reason = format!("when targetRef.kind is {kind} (use \"to\")");
            forbid_list(self.from.len(), &path.field("from"), &reason, causes);
        } else {
            forbid_list(
                self.to.len(),
                &path.field("to"),
                "unless targetRef.kind is MeshGateway or MeshHTTPRoute (sidecars limit inbound traffic: use \"from\")",
                causes,
            );
        }
        check_to_and_from(&self.to, &self.from, path, (TO, FROM), causes, |c, p, cs| {
            c.validate(p, cs)
        });
    }
}

impl Conf {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let p = path.field("local");
        let Some(local) = &self.local else {
            causes.add(&p, "must be defined");
            return;
        };
        if local.http.is_none() && local.tcp.is_none() {
            causes.add(&p, "at least one of \"http\" or \"tcp\" must be set");
        }
        if let Some(http) = &local.http {
            let hp = p.field("http");
            if http == &LocalHttp::default() {
                causes.add(
                    &hp,
                    "at least one of \"disabled\", \"requestRate\" or \"onRateLimit\" must be set",
                );
            }
            if let Some(rate) = &http.request_rate {
                rate.validate(&hp.field("requestRate"), causes);
            }
            if let Some(on) = &http.on_rate_limit {
                let op = hp.field("onRateLimit");
                if let Some(status) = on.status {
                    check_status_code(status, &op.field("status"), causes);
                }
                if let Some(h) = &on.headers {
                    h.validate(&op.field("headers"), causes);
                }
            }
        }
        if let Some(tcp) = &local.tcp {
            let tp = p.field("tcp");
            if tcp == &LocalTcp::default() {
                causes.add(&tp, "at least one of \"disabled\" or \"connectionRate\" must be set");
            }
            if let Some(rate) = &tcp.connection_rate {
                rate.validate(&tp.field("connectionRate"), causes);
            }
        }
    }
}

impl Rate {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        check_positive(Some(self.num), &path.field("num"), causes);
        if self.interval.as_std() <= MIN_INTERVAL {
            causes.add(&path.field("interval"), "must be greater than 50ms");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::common::testing::{assert_invalid, assert_valid, causes};
    use super::*;

    #[test]
    fn valid_examples_round_trip() {
        assert_valid::<MeshRateLimit>(json!({
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "from": [{
                "targetRef": {"kind": "Mesh"},
                "default": {"local": {
                    "http": {
                        "disabled": false,
                        "requestRate": {"num": 5, "interval": "10s"},
                        "onRateLimit": {"status": 423, "headers": {
                            "add": [{"name": "x-kuma-rate-limited", "value": "true"}],
                            "set": [{"name": "x-rate-limit", "value": "5"}]
                        }}
                    },
                    "tcp": {"connectionRate": {"num": 100, "interval": "1s"}}
                }}
            }]
        }));
        assert_valid::<MeshRateLimit>(json!({
            "targetRef": {"kind": "MeshHTTPRoute", "name": "api-route"},
            "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"local": {"http": {"requestRate": {"num": 10, "interval": "1m"}}}}}]
        }));
    }

    #[test]
    fn direction_depends_on_the_top_kind() {
        assert_invalid::<MeshRateLimit>(
            json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                   "from": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {"tcp": {"disabled": true}}}}]}),
            "spec.from",
            "must not be defined when targetRef.kind is MeshGateway",
        );
        assert_invalid::<MeshRateLimit>(
            json!({"targetRef": {"kind": "MeshService", "name": "b"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {"tcp": {"disabled": true}}}}]}),
            "spec.to",
            "must not be defined unless targetRef.kind is MeshGateway or MeshHTTPRoute",
        );
        assert_invalid::<MeshRateLimit>(
            json!({"targetRef": {"kind": "Mesh"},
                   "from": [{"targetRef": {"kind": "MeshService", "name": "a"},
                             "default": {"local": {"tcp": {"disabled": true}}}}]}),
            "spec.from[0].targetRef.kind",
            "value MeshService is not supported here; allowed: Mesh",
        );
    }

    #[test]
    fn rejects_bad_limits() {
        let got = causes::<MeshRateLimit>(json!({
            "targetRef": {"kind": "Mesh"},
            "from": [
                {"targetRef": {"kind": "Mesh"}, "default": {}},
                {"targetRef": {"kind": "Mesh"}, "default": {"local": {}}},
                {"targetRef": {"kind": "Mesh"}, "default": {"local": {
                    "http": {"requestRate": {"num": 0, "interval": "50ms"}, "onRateLimit": {"status": 42}},
                    "tcp": {}
                }}}
            ]
        }));
        let fields: Vec<_> = got.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.from[0].default.local",
                "spec.from[1].default.local",
                "spec.from[2].default.local.http.requestRate.num",
                "spec.from[2].default.local.http.requestRate.interval",
                "spec.from[2].default.local.http.onRateLimit.status",
                "spec.from[2].default.local.tcp",
            ]
        );
        assert_eq!(got[0].message, "must be defined");
        assert_eq!(got[3].message, "must be greater than 50ms");
        assert_invalid::<MeshRateLimit>(
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"},
                   "default": {"local": {"tcp": {"connectionRate": {"num": 1}}}}}]}),
            "spec.from[0].default.local.tcp.connectionRate",
            "missing field `interval`",
        );
    }
}
