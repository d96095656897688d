//! MeshMetric: which proxy and application metrics are collected and where
//! they are exposed or pushed (Prometheus scraping, OpenTelemetry).

use serde::{Deserialize, Serialize};

use super::common::{check_not_empty, check_port, check_positive_duration, check_tagged_union, check_url};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshMetric {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Conf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Sidecar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<Vec<Application>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sidecar {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Profiles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_unused: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_profiles: Option<Vec<Profile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<Selector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<Selector>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    pub name: ProfileName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProfileName {
    All,
    Basic,
    None,
}

/// Selects metrics by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(rename = "type")]
    pub selector_type: SelectorType,
    #[serde(rename = "match")]
    pub match_value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorType {
    Prefix,
    Regex,
    Exact,
    Contains,
}

/// An application endpoint whose metrics the proxy merges into its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Application {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Default `/metrics/prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub port: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    #[serde(rename = "type")]
    pub backend_type: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Prometheus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OpenTelemetry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    Prometheus,
    OpenTelemetry,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Prometheus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Default 5670.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Default `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PrometheusTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusTls {
    /// Default `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsMode {
    Disabled,
    #[serde(rename = "ProvidedTLS")]
    ProvidedTls,
    #[serde(rename = "ActiveMTLSBackend")]
    ActiveMtlsBackend,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpenTelemetry {
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<Duration>,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshService,
    K::MeshServiceSubset,
    K::MeshGateway,
];

impl Spec for MeshMetric {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        if let Some(conf) = &self.default {
            conf.validate(&path.field("default"), causes);
        }
    }
}

impl Conf {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if let Some(profiles) = self.sidecar.as_ref().and_then(|s| s.profiles.as_ref()) {
            let p = path.field("sidecar").field("profiles");
            for (name, list) in [("exclude", &profiles.exclude), ("include", &profiles.include)] {
                for (i, sel) in list.iter().flatten().enumerate() {
                    check_not_empty(&sel.match_value, &p.field(name).index(i).field("match"), causes);
                }
            }
        }
        for (i, app) in self.applications.iter().flatten().enumerate() {
            let p = path.field("applications").index(i);
            check_port(app.port, &p.field("port"), causes);
            check_http_path(app.path.as_deref(), &p.field("path"), causes);
        }
        for (i, b) in self.backends.iter().flatten().enumerate() {
            let p = path.field("backends").index(i);
            let chosen = match b.backend_type {
                BackendType::Prometheus => "prometheus",
                BackendType::OpenTelemetry => "openTelemetry",
            };
            check_tagged_union(
                &p,
                &format!("{:?}", b.backend_type),
                Some(chosen),
                true,
                &[
                    ("prometheus", b.prometheus.is_some()),
                    ("openTelemetry", b.open_telemetry.is_some()),
                ],
                causes,
            );
            if let Some(prom) = &b.prometheus {
                let pp = p.field("prometheus");
                if let Some(port) = prom.port {
                    check_port(port, &pp.field("port"), causes);
                }
                check_http_path(prom.path.as_deref(), &pp.field("path"), causes);
            }
            if let Some(otel) = &b.open_telemetry {
                let op = p.field("openTelemetry");
                check_url(&otel.endpoint, &op.field("endpoint"), causes);
                check_positive_duration(otel.refresh_interval.as_ref(), &op.field("refreshInterval"), causes);
            }
        }
    }
}

fn check_http_path(value: Option<&str>, path: &FieldPath, causes: &mut Causes) {
    if value.is_some_and(|v| !v.starts_with('/')) {
        causes.add(path, "must be an absolute path (start with /)");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::common::testing::{assert_invalid, assert_valid, causes};
    use super::*;

    #[test]
    fn valid_examples_round_trip() {
        assert_valid::<MeshMetric>(json!({
            "targetRef": {"kind": "Mesh"},
            "default": {
                "sidecar": {
                    "includeUnused": false,
                    "profiles": {
                        "appendProfiles": [{"name": "Basic"}],
                        "exclude": [{"type": "Regex", "match": "envoy_cluster_.*"}],
                        "include": [{"type": "Exact", "match": "envoy_cluster_default_total_match_count"},
                                    {"type": "Contains", "match": "upstream_rq"}]
                    }
                },
                "applications": [{"name": "app", "path": "/metrics", "address": "127.0.0.1", "port": 8888}],
                "backends": [
                    {"type": "Prometheus", "prometheus": {"clientId": "main", "port": 5670, "path": "/metrics",
                                                          "tls": {"mode": "ProvidedTLS"}}},
                    {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel-collector.observability.svc:4317",
                                                                "refreshInterval": "30s"}}
                ]
            }
        }));
        assert_valid::<MeshMetric>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge", "tags": {"port": "80"}},
            "default": {"backends": [{"type": "Prometheus", "prometheus": {"tls": {"mode": "ActiveMTLSBackend"}}}]}
        }));
        assert_valid::<MeshMetric>(json!({"targetRef": {"kind": "MeshService", "name": "web"}}));
    }

    #[test]
    fn rejects_bad_targets() {
        assert_invalid::<MeshMetric>(
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}}),
            "spec.targetRef.kind",
            "value MeshHTTPRoute is not supported here",
        );
        assert_invalid::<MeshMetric>(
            json!({"targetRef": {"kind": "Mesh"}, "from": []}),
            "spec.from",
            "unknown field `from`",
        );
    }

    #[test]
    fn rejects_bad_confs() {
        let got = causes::<MeshMetric>(json!({
            "targetRef": {"kind": "Mesh"},
            "default": {
                "sidecar": {"profiles": {"include": [{"type": "Prefix", "match": ""}]}},
                "applications": [{"port": 0, "path": "metrics"}],
                "backends": [
                    {"type": "Prometheus", "openTelemetry": {"endpoint": "x:1"}},
                    {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "bad endpoint", "refreshInterval": "0s"}},
                    {"type": "Prometheus", "prometheus": {"port": 70000}}
                ]
            }
        }));
        let fields: Vec<_> = got
            .iter()
            .map(|c| c.field.trim_start_matches("spec.default."))
            .collect();
        assert_eq!(
            fields,
            [
                "sidecar.profiles.include[0].match",
                "applications[0].port",
                "applications[0].path",
                "backends[0].prometheus",
                "backends[0].openTelemetry",
                "backends[1].openTelemetry.endpoint",
                "backends[1].openTelemetry.refreshInterval",
                "backends[2].prometheus.port",
            ]
        );
        assert_eq!(got[1].message, "0 is not a valid port (1-65535)");
        assert_eq!(got[3].message, "must be defined when type is Prometheus");
        assert_invalid::<MeshMetric>(
            json!({"targetRef": {"kind": "Mesh"}, "default": {"sidecar": {"profiles": {"appendProfiles": [{"name": "Most"}]}}}}),
            "spec.default.sidecar.profiles.appendProfiles[0].name",
            "unknown variant `Most`",
        );
    }
}
