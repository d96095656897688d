//! MeshCircuitBreaker: connection limits and outlier detection (ejecting
//! misbehaving endpoints) for inbound (`from`) and outbound (`to`) traffic.

use serde::{Deserialize, Serialize};

use super::common::{
    check_int_percentage, check_positive, check_positive_duration, check_to_and_from, Entry, IntOrString,
};
use super::{require_to_or_from, RefPosition, TargetRef, TargetRefKind as K};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshCircuitBreaker {
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
    pub connection_limits: Option<ConnectionLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_pools: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_and_local_errors: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Detectors>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Detectors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_failures: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_failures: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_failures: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
}

/// A detector that ejects a host after `consecutive` errors in a row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Consecutive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SuccessRate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    /// A decimal factor, e.g. `"1.9"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_deviation_factor: Option<IntOrString>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailurePercentage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
];
const TO: &[K] = &[K::Mesh, K::MeshService];
const FROM: &[K] = &[K::Mesh];

impl Spec for MeshCircuitBreaker {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        require_to_or_from(self.to.len(), self.from.len(), path, causes);
        check_to_and_from(&self.to, &self.from, path, (TO, FROM), causes, |c, p, cs| {
            c.validate(p, cs)
        });
    }
}

impl Conf {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if self.connection_limits.is_none() && self.outlier_detection.is_none() {
            causes.add(
                path,
                "at least one of \"connectionLimits\" or \"outlierDetection\" must be set",
            );
        }
        if let Some(l) = &self.connection_limits {
            let p = path.field("connectionLimits");
            check_positive(l.max_connections, &p.field("maxConnections"), causes);
            check_positive(l.max_connection_pools, &p.field("maxConnectionPools"), causes);
            check_positive(l.max_pending_requests, &p.field("maxPendingRequests"), causes);
            check_positive(l.max_retries, &p.field("maxRetries"), causes);
            check_positive(l.max_requests, &p.field("maxRequests"), causes);
        }
        if let Some(o) = &self.outlier_detection {
            o.validate(&path.field("outlierDetection"), causes);
        }
    }
}

impl OutlierDetection {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        check_positive_duration(self.interval.as_ref(), &path.field("interval"), causes);
        check_positive_duration(
            self.base_ejection_time.as_ref(),
            &path.field("baseEjectionTime"),
            causes,
        );
        check_int_percentage(self.max_ejection_percent, &path.field("maxEjectionPercent"), causes);
        let p = path.field("detectors");
        let Some(d) = &self.detectors else {
            // Turning detection off needs nothing else.
            if self.disabled != Some(true) {
                causes.add(&p, "must be defined unless outlier detection is disabled");
            }
            return;
        };
        if d == &Detectors::default() {
            causes.add(
                &p,
                "at least one of \"totalFailures\", \"gatewayFailures\", \"localOriginFailures\", \
                 \"successRate\" or \"failurePercentage\" must be set",
            );
        }
        for (name, det) in [
            ("totalFailures", &d.total_failures),
            ("gatewayFailures", &d.gateway_failures),
            ("localOriginFailures", &d.local_origin_failures),
        ] {
            if let Some(det) = det {
                check_positive(det.consecutive, &p.field(name).field("consecutive"), causes);
            }
        }
        if let Some(s) = &d.success_rate {
            let sp = p.field("successRate");
            check_positive(s.minimum_hosts, &sp.field("minimumHosts"), causes);
            check_positive(s.request_volume, &sp.field("requestVolume"), causes);
            if let Some(f) = &s.standard_deviation_factor {
                let fp = sp.field("standardDeviationFactor");
                match f.as_f64() {
                    None => causes.add(&fp, format!("{f} is not a number (expected e.g. \"1.9\")")),
                    Some(v) if v <= 0.0 => causes.add(&fp, "must be greater than 0"),
                    Some(_) => {}
                }
            }
        }
        if let Some(f) = &d.failure_percentage {
            let fp = p.field("failurePercentage");
            check_positive(f.minimum_hosts, &fp.field("minimumHosts"), causes);
            check_positive(f.request_volume, &fp.field("requestVolume"), causes);
            check_int_percentage(f.threshold, &fp.field("threshold"), causes);
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
            "targetRef": {"kind": "MeshService", "name": "web"},
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {
                    "connectionLimits": {
                        "maxConnections": 2, "maxPendingRequests": 8, "maxRequests": 2,
                        "maxRetries": 2, "maxConnectionPools": 4
                    },
                    "outlierDetection": {
                        "disabled": false,
                        "interval": "5s",
                        "baseEjectionTime": "30s",
                        "maxEjectionPercent": 20,
                        "splitExternalAndLocalErrors": true,
                        "detectors": {
                            "totalFailures": {"consecutive": 10},
                            "gatewayFailures": {"consecutive": 10},
                            "localOriginFailures": {"consecutive": 10},
                            "successRate": {"minimumHosts": 5, "requestVolume": 10, "standardDeviationFactor": "1.9"},
                            "failurePercentage": {"requestVolume": 10, "minimumHosts": 5, "threshold": 85}
                        }
                    }
                }
            }],
            "from": [{
                "targetRef": {"kind": "Mesh"},
                "default": {"outlierDetection": {"disabled": true}}
            }]
        })
    }

    #[test]
    fn full_example_is_valid_and_round_trips() {
        assert_valid::<MeshCircuitBreaker>(full());
        assert_valid::<MeshCircuitBreaker>(json!({
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"outlierDetection": {
                "detectors": {"successRate": {"standardDeviationFactor": 2}}}}}]
        }));
    }

    #[test]
    fn kinds_per_position() {
        let mut bad = full();
        bad["from"][0]["targetRef"] = json!({"kind": "MeshService", "name": "x"});
        assert_invalid::<MeshCircuitBreaker>(
            bad,
            "spec.from[0].targetRef.kind",
            "value MeshService is not supported here; allowed: Mesh",
        );
        assert_invalid::<MeshCircuitBreaker>(
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "to": []}),
            "spec.targetRef.kind",
            "not supported",
        );
        assert_invalid::<MeshCircuitBreaker>(json!({"targetRef": {"kind": "Mesh"}}), "spec", "\"to\" or \"from\"");
    }

    #[test]
    fn rejects_bad_limits_and_detectors() {
        let mut bad = full();
        let od = &mut bad["to"][0]["default"]["outlierDetection"];
        od["interval"] = json!("0s");
        od["maxEjectionPercent"] = json!(101);
        od["detectors"]["totalFailures"]["consecutive"] = json!(0);
        od["detectors"]["successRate"]["standardDeviationFactor"] = json!("x");
        od["detectors"]["failurePercentage"]["threshold"] = json!(150);
        bad["to"][0]["default"]["connectionLimits"]["maxConnections"] = json!(0);
        let got = causes::<MeshCircuitBreaker>(bad);
        let pre = "spec.to[0].default.";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields,
            [
                "connectionLimits.maxConnections",
                "outlierDetection.interval",
                "outlierDetection.maxEjectionPercent",
                "outlierDetection.detectors.totalFailures.consecutive",
                "outlierDetection.detectors.successRate.standardDeviationFactor",
                "outlierDetection.detectors.failurePercentage.threshold",
            ]
        );
        assert_eq!(got[0].message, "must be greater than 0");
        assert_eq!(got[2].message, "must be between 0 and 100");
    }

    #[test]
    fn detectors_required_when_enabled() {
        assert_invalid::<MeshCircuitBreaker>(
            json!({"targetRef": {"kind": "Mesh"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"outlierDetection": {"interval": "5s"}}}]}),
            "spec.to[0].default.outlierDetection.detectors",
            "must be defined unless outlier detection is disabled",
        );
        assert_invalid::<MeshCircuitBreaker>(
            json!({"targetRef": {"kind": "Mesh"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}),
            "spec.to[0].default",
            "at least one of \"connectionLimits\" or \"outlierDetection\"",
        );
        assert_invalid::<MeshCircuitBreaker>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}}]}),
            "spec.to[0].default",
            "must be defined",
        );
    }
}
