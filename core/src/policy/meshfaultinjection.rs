//! MeshFaultInjection: deliberately failing, delaying or throttling a share
//! of HTTP requests, to test how services cope. Sidecars inject on inbound
//! traffic (`from`); gateways on what they forward (`to`).

use serde::{Deserialize, Serialize};

use super::common::{check_percentage, check_status_code, check_to_and_from, forbid_list, Entry, IntOrString};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFaultInjection {
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
    pub http: Option<Vec<FaultConf>>,
}

/// One fault; each kind applies to its own share of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<ResponseBandwidth>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    pub http_status: i32,
    pub percentage: IntOrString,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    pub value: Duration,
    pub percentage: IntOrString,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseBandwidth {
    /// A rate such as `50kbps`, `10Mbps` or `1Gbps`.
    pub limit: String,
    pub percentage: IntOrString,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
];
const FROM: &[K] = &[K::Mesh, K::MeshSubset, K::MeshService, K::MeshServiceSubset];
const TO_FROM_GATEWAY: &[K] = &[K::Mesh];

impl Spec for MeshFaultInjection {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        if self.target_ref.kind == K::MeshGateway {
            forbid_list(
                self.from.len(),
                &path.field("from"),
                "when targetRef.kind is MeshGateway (use \"to\")",
                causes,
            );
        } else {
            forbid_list(
                self.to.len(),
                &path.field("to"),
                "unless targetRef.kind is MeshGateway (sidecars inject faults on inbound traffic: use \"from\")",
                causes,
            );
        }
        check_to_and_from(
            &self.to,
            &self.from,
            path,
            (TO_FROM_GATEWAY, FROM),
            causes,
            |c, p, cs| c.validate(p, cs),
        );
    }
}

impl Conf {
    /// Violation paths as Kuma 2.7 writes them: the list index after the
    /// fault's kind (`http.abort[1].httpStatus`), and a bandwidth's limit
    /// at `http.responseBandwidth[i].responseBandwidth`.
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let http = path.field("http");
        for (i, fault) in self.http.iter().flatten().enumerate() {
            if fault == &FaultConf::default() {
                causes.add(
                    &http.index(i),
                    "at least one of \"abort\", \"delay\" or \"responseBandwidth\" must be set",
                );
            }
            if let Some(a) = &fault.abort {
                let p = http.field("abort").index(i);
                check_status_code(a.http_status, &p.field("httpStatus"), causes);
                check_percentage(&a.percentage, &p.field("percentage"), causes);
            }
            if let Some(d) = &fault.delay {
                check_percentage(&d.percentage, &http.field("delay").index(i).field("percentage"), causes);
            }
            if let Some(b) = &fault.response_bandwidth {
                let p = http.field("responseBandwidth").index(i);
                if bandwidth_kbps(&b.limit).is_none_or(|k| k == 0) {
                    causes.add(
                        &p.field("responseBandwidth"),
                        format!(
                            "{:?} is not a bandwidth: expected a positive number and a unit kbps, Mbps or Gbps",
                            b.limit
                        ),
                    );
                }
                check_percentage(&b.percentage, &p.field("percentage"), causes);
            }
        }
    }
}

/// `<digits>[ ]<kbps|Mbps|Gbps>` in kbps (what Envoy's response rate limit
/// takes). `mbps` and `gbps` are read as `Mbps` and `Gbps`: Kuma 2.7 accepts
/// them, and they can mean nothing else.
pub fn bandwidth_kbps(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let unit = s[digits..].strip_prefix(' ').unwrap_or(&s[digits..]);
    let scale = match unit {
        "kbps" => 1,
        "Mbps" | "mbps" => 1_000,
        "Gbps" | "gbps" => 1_000_000,
        _ => return None,
    };
    s[..digits].parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::common::testing::{assert_invalid, assert_valid, causes};
    use super::*;

    #[test]
    fn valid_examples_round_trip() {
        assert_valid::<MeshFaultInjection>(json!({
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "from": [{
                "targetRef": {"kind": "MeshService", "name": "frontend"},
                "default": {"http": [
                    {"abort": {"httpStatus": 500, "percentage": "2.5"}},
                    {"delay": {"value": "5s", "percentage": 5}},
                    {"responseBandwidth": {"limit": "50 kbps", "percentage": "50.5"}}
                ]}
            }]
        }));
        assert_valid::<MeshFaultInjection>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge"},
            "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"http": [{"abort": {"httpStatus": 503, "percentage": 10}}]}}]
        }));
    }

    #[test]
    fn direction_depends_on_the_top_kind() {
        assert_invalid::<MeshFaultInjection>(
            json!({"targetRef": {"kind": "Mesh"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": []}}]}),
            "spec.to",
            "must not be defined unless targetRef.kind is MeshGateway",
        );
        assert_invalid::<MeshFaultInjection>(
            json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                   "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": []}}]}),
            "spec.from",
            "must not be defined when targetRef.kind is MeshGateway",
        );
        assert_invalid::<MeshFaultInjection>(
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}}),
            "spec.targetRef.kind",
            "not supported",
        );
    }

    #[test]
    fn rejects_bad_faults() {
        let got = causes::<MeshFaultInjection>(json!({
            "targetRef": {"kind": "Mesh"},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": [
                {},
                {"abort": {"httpStatus": 99, "percentage": "101"}},
                {"responseBandwidth": {"limit": "fast", "percentage": "x"}}
            ]}}]
        }));
        let pre = "spec.from[0].default.http";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields,
            // Kuma 2.7's paths (meshfaultinjection validator.go).
            [
                "[0]",
                ".abort[1].httpStatus",
                ".abort[1].percentage",
                ".responseBandwidth[2].responseBandwidth",
                ".responseBandwidth[2].percentage",
            ]
        );
        assert_eq!(got[2].message, "must be between 0 and 100");
        assert_invalid::<MeshFaultInjection>(
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"},
                   "default": {"http": [{"delay": {"value": "soon", "percentage": 1}}]}}]}),
            "spec.from[0].default.http[0].delay.value",
            "invalid duration \"soon\"",
        );
    }

    #[test]
    fn bandwidths() {
        for (ok, kbps) in [
            ("1kbps", 1),
            ("50 kbps", 50),
            ("10Mbps", 10_000),
            ("1Gbps", 1_000_000),
            ("100mbps", 100_000),
        ] {
            assert_eq!(bandwidth_kbps(ok), Some(kbps), "{ok}");
        }
        for bad in [
            "kbps",
            "10",
            "10 bps",
            "10  Mbps",
            "1.5Mbps",
            "10Kbps",
            "99999999999999999999kbps",
        ] {
            assert_eq!(bandwidth_kbps(bad), None, "{bad}");
        }
    }
}
