//! MeshTrace: where proxies send tracing spans (Zipkin, Datadog or
//! OpenTelemetry), how requests are sampled and which tags spans carry.

use serde::{Deserialize, Serialize};

use super::common::{
    check_max_items, check_not_empty, check_percentage, check_tagged_union, check_url, forbid_gateway_listener_tags,
    split_url, IntOrString,
};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTrace {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Conf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    /// Zero or one backend; an empty list turns tracing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    #[serde(rename = "type")]
    pub backend_type: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<Zipkin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<Datadog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OpenTelemetry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    Zipkin,
    Datadog,
    OpenTelemetry,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Zipkin {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id_128bit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<ZipkinApiVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_span_context: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ZipkinApiVersion {
    HttpJson,
    HttpProto,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Datadog {
    /// `http://host:port` of the agent.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_service: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpenTelemetry {
    pub endpoint: String,
}

/// Percentages (0-100, decimal allowed) of requests traced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<IntOrString>,
}

/// A span tag: a fixed `literal`, or taken from a request `header`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tag {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<TagHeader>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TagHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
];

impl Spec for MeshTrace {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let tp = path.field("targetRef");
        self.target_ref.validate(&tp, RefPosition::Top, TOP, causes);
        forbid_gateway_listener_tags(&self.target_ref, &tp, causes);
        match &self.default {
            None => causes.add(&path.field("default"), "must be defined"),
            Some(conf) => conf.validate(&path.field("default"), causes),
        }
    }
}

impl Conf {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let bp = path.field("backends");
        match &self.backends {
            None => causes.add(&bp, "must be defined (an empty list turns tracing off)"),
            Some(list) => {
                check_max_items(list.len(), 1, &bp, causes);
                for (i, b) in list.iter().enumerate() {
                    b.validate(&bp.index(i), causes);
                }
            }
        }
        if let Some(s) = &self.sampling {
            let sp = path.field("sampling");
            for (name, v) in [("overall", &s.overall), ("client", &s.client), ("random", &s.random)] {
                if let Some(v) = v {
                    check_percentage(v, &sp.field(name), causes);
                }
            }
        }
        for (i, tag) in self.tags.iter().flatten().enumerate() {
            let p = path.field("tags").index(i);
            check_not_empty(&tag.name, &p.field("name"), causes);
            if tag.literal.is_some() == tag.header.is_some() {
                causes.add(&p, "exactly one of \"literal\" or \"header\" must be set");
            }
            if let Some(h) = &tag.header {
                check_not_empty(&h.name, &p.field("header").field("name"), causes);
            }
        }
    }
}

impl Backend {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let chosen = match self.backend_type {
            BackendType::Zipkin => "zipkin",
            BackendType::Datadog => "datadog",
            BackendType::OpenTelemetry => "openTelemetry",
        };
        check_tagged_union(
            path,
            &format!("{:?}", self.backend_type),
            Some(chosen),
            true,
            &[
                ("zipkin", self.zipkin.is_some()),
                ("datadog", self.datadog.is_some()),
                ("openTelemetry", self.open_telemetry.is_some()),
            ],
            causes,
        );
        if let Some(z) = &self.zipkin {
            let up = path.field("zipkin").field("url");
            if z.url.is_empty() {
                causes.add(&up, "must not be empty");
            } else {
                check_url(&z.url, &up, causes);
            }
        }
        if let Some(d) = &self.datadog {
            check_datadog_url(&d.url, &path.field("datadog").field("url"), causes);
        }
        if let Some(o) = &self.open_telemetry {
            check_not_empty(&o.endpoint, &path.field("openTelemetry").field("endpoint"), causes);
        }
    }
}

/// The Datadog agent address is exactly `http://host:port`.
fn check_datadog_url(url: &str, path: &FieldPath, causes: &mut Causes) {
    let Some(parts) = split_url(url).filter(|p| p.scheme.is_some()) else {
        causes.add(path, format!("{url:?} is not a valid URL (expected http://host:port)"));
        return;
    };
    if parts.scheme != Some("http") {
        causes.add(path, "scheme must be http");
    }
    match parts.port {
        None => causes.add(path, "port must be defined"),
        Some(p) if !p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)) => {
            causes.add(path, "port must be a valid port (1-65535)")
        }
        Some(_) => {}
    }
    if !parts.rest.is_empty() || url.contains('@') {
        causes.add(path, "must not have a user, path, query or fragment");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::common::testing::{assert_invalid, assert_valid, causes};
    use super::*;

    #[test]
    fn valid_examples_round_trip() {
        assert_valid::<MeshTrace>(json!({
            "targetRef": {"kind": "Mesh"},
            "default": {
                "backends": [{"type": "Zipkin", "zipkin": {
                    "url": "http://jaeger-collector:9411/api/v2/spans",
                    "apiVersion": "httpJson", "traceId128bit": true, "sharedSpanContext": false}}],
                "sampling": {"overall": 80, "client": "60.5", "random": 50},
                "tags": [
                    {"name": "team", "literal": "core"},
                    {"name": "env", "header": {"name": "x-env", "default": "prod"}}
                ]
            }
        }));
        assert_valid::<MeshTrace>(json!({
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "default": {"backends": [{"type": "Datadog", "datadog": {"url": "http://127.0.0.1:8126", "splitService": true}}]}
        }));
        assert_valid::<MeshTrace>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge"},
            "default": {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel-collector:4317"}}]}
        }));
        assert_valid::<MeshTrace>(json!({"targetRef": {"kind": "Mesh"}, "default": {"backends": []}}));
    }

    #[test]
    fn rejects_bad_targets_and_missing_default() {
        assert_invalid::<MeshTrace>(
            json!({"targetRef": {"kind": "MeshGateway", "name": "edge", "tags": {"port": "80"}},
                   "default": {"backends": []}}),
            "spec.targetRef.tags",
            "listener tags are not supported",
        );
        assert_invalid::<MeshTrace>(
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "default": {"backends": []}}),
            "spec.targetRef.kind",
            "not supported",
        );
        assert_invalid::<MeshTrace>(
            json!({"targetRef": {"kind": "Mesh"}}),
            "spec.default",
            "must be defined",
        );
        assert_invalid::<MeshTrace>(
            json!({"targetRef": {"kind": "Mesh"}, "default": {}}),
            "spec.default.backends",
            "must be defined",
        );
        assert_invalid::<MeshTrace>(
            json!({"targetRef": {"kind": "Mesh"}, "to": []}),
            "spec.to",
            "unknown field `to`",
        );
    }

    #[test]
    fn rejects_bad_backends_sampling_and_tags() {
        let got = causes::<MeshTrace>(json!({
            "targetRef": {"kind": "Mesh"},
            "default": {
                "backends": [
                    {"type": "Datadog", "datadog": {"url": "https://dd:8126/path"}},
                    {"type": "Zipkin", "zipkin": {"url": ""}}
                ],
                "sampling": {"overall": 101, "random": "abc"},
                "tags": [{"name": "t"}, {"name": "", "literal": "x", "header": {"name": "h"}}]
            }
        }));
        let fields: Vec<_> = got
            .iter()
            .map(|c| c.field.trim_start_matches("spec.default."))
            .collect();
        assert_eq!(
            fields,
            [
                "backends",
                "backends[0].datadog.url",
                "backends[0].datadog.url",
                "backends[1].zipkin.url",
                "sampling.overall",
                "sampling.random",
                "tags[0]",
                "tags[1].name",
                "tags[1]",
            ]
        );
        assert_eq!(got[0].message, "must have at most 1 item, has 2");
        assert_eq!(got[1].message, "scheme must be http");
        assert_eq!(got[2].message, "must not have a user, path, query or fragment");
        assert_eq!(got[6].message, "exactly one of \"literal\" or \"header\" must be set");
    }
}
