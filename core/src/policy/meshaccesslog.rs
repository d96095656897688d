//! MeshAccessLog: where and in which format proxies log the requests and
//! connections they handle, inbound (`from`) and outbound (`to`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{check_file_path, check_not_empty, check_tagged_union, check_to_and_from, check_url, Entry};
use super::{require_to_or_from, RefPosition, TargetRef, TargetRefKind as K};
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshAccessLog {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Entry<Conf>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Entry<Conf>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    /// An empty list turns logging off for the matched traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

/// A log sink: `type` names which one of the other fields configures it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    #[serde(rename = "type")]
    pub backend_type: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OtelBackend>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    Tcp,
    File,
    OpenTelemetry,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// `host:port` of the log collector.
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtelBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<KeyValue>>,
    /// Free-form log body (any JSON value, with `%COMMAND%` operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    pub endpoint: String,
}

/// A log line format: `Plain` uses `plain`, `Json` uses `json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Format {
    #[serde(rename = "type")]
    pub format_type: FormatType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Vec<KeyValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_empty_values: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FormatType {
    Plain,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
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

impl Spec for MeshAccessLog {
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
        let Some(backends) = &self.backends else {
            causes.add(
                &path.field("backends"),
                "must be defined (an empty list turns logging off)",
            );
            return;
        };
        for (i, b) in backends.iter().enumerate() {
            b.validate(&path.field("backends").index(i), causes);
        }
    }
}

impl Backend {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let chosen = match self.backend_type {
            BackendType::Tcp => "tcp",
            BackendType::File => "file",
            BackendType::OpenTelemetry => "openTelemetry",
        };
        check_tagged_union(
            path,
            &format!("{:?}", self.backend_type),
            Some(chosen),
            true,
            &[
                ("tcp", self.tcp.is_some()),
                ("file", self.file.is_some()),
                ("openTelemetry", self.open_telemetry.is_some()),
            ],
            causes,
        );
        if let Some(tcp) = &self.tcp {
            let p = path.field("tcp");
            check_url(&tcp.address, &p.field("address"), causes);
            if let Some(f) = &tcp.format {
                f.validate(&p.field("format"), causes);
            }
        }
        if let Some(file) = &self.file {
            let p = path.field("file");
            check_file_path(&file.path, &p.field("path"), causes);
            if let Some(f) = &file.format {
                f.validate(&p.field("format"), causes);
            }
        }
        if let Some(otel) = &self.open_telemetry {
            let p = path.field("openTelemetry");
            check_not_empty(&otel.endpoint, &p.field("endpoint"), causes);
            for (i, kv) in otel.attributes.iter().flatten().enumerate() {
                check_not_empty(
                    kv.key.as_deref().unwrap_or_default(),
                    &p.field("attributes").index(i).field("key"),
                    causes,
                );
            }
        }
    }
}

impl Format {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let chosen = match self.format_type {
            FormatType::Plain => "plain",
            FormatType::Json => "json",
        };
        check_tagged_union(
            path,
            &format!("{:?}", self.format_type),
            Some(chosen),
            true,
            &[("plain", self.plain.is_some()), ("json", self.json.is_some())],
            causes,
        );
        if let Some(plain) = &self.plain {
            check_not_empty(plain, &path.field("plain"), causes);
        }
        if let Some(json) = &self.json {
            let p = path.field("json");
            if json.is_empty() {
                causes.add(&p, "must have at least one item");
            }
            for (i, kv) in json.iter().enumerate() {
                let ip = p.index(i);
                let key = kv.key.as_deref().unwrap_or_default();
                let value = kv.value.as_deref().unwrap_or_default();
                check_not_empty(key, &ip.field("key"), causes);
                check_not_empty(value, &ip.field("value"), causes);
                // Key and value are pasted into a JSON template as they are.
                if serde_json::from_str::<Value>(&format!("{{\"{key}\": \"{value}\"}}")).is_err() {
                    causes.add(&ip, "does not form a valid JSON object (check quotes and backslashes)");
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
            "targetRef": {"kind": "MeshService", "name": "web"},
            "from": [{
                "targetRef": {"kind": "Mesh"},
                "default": {"backends": [{
                    "type": "File",
                    "file": {
                        "path": "/tmp/access.log",
                        "format": {"type": "Json", "omitEmptyValues": true, "json": [
                            {"key": "start_time", "value": "%START_TIME%"},
                            {"key": "bytes_received", "value": "%BYTES_RECEIVED%"}
                        ]}
                    }
                }]}
            }],
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"backends": [
                    {"type": "Tcp", "tcp": {"address": "127.0.0.1:5000",
                        "format": {"type": "Plain", "plain": "[%START_TIME%] %KUMA_MESH% %UPSTREAM_HOST%"}}},
                    {"type": "OpenTelemetry", "openTelemetry": {
                        "endpoint": "otel-collector:4317",
                        "attributes": [{"key": "mesh", "value": "%KUMA_MESH%"}],
                        "body": {"kvlistValue": {"values": [{"key": "mesh", "value": {"stringValue": "%KUMA_MESH%"}}]}}
                    }}
                ]}
            }]
        })
    }

    #[test]
    fn full_example_is_valid_and_round_trips() {
        assert_valid::<MeshAccessLog>(full());
        assert_valid::<MeshAccessLog>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": []}}]
        }));
    }

    #[test]
    fn kinds_per_position() {
        let mut bad = full();
        bad["from"][0]["targetRef"] = json!({"kind": "MeshService", "name": "x"});
        assert_invalid::<MeshAccessLog>(bad, "spec.from[0].targetRef.kind", "allowed: Mesh");
        assert_invalid::<MeshAccessLog>(json!({"targetRef": {"kind": "Mesh"}}), "spec", "\"to\" or \"from\"");
    }

    #[test]
    fn rejects_bad_backends() {
        let got = causes::<MeshAccessLog>(json!({
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
                {"type": "File", "tcp": {"address": "x:1"}},
                {"type": "Tcp", "tcp": {"address": "collector:99999", "format": {"type": "Plain", "json": []}}},
                {"type": "File", "file": {"path": "relative.log",
                    "format": {"type": "Json", "json": [{"key": "a", "value": "b\"c"}, {"key": "", "value": "v"}]}}}
            ]}}]
        }));
        let pre = "spec.to[0].default.backends";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields,
            [
                "[0].tcp",
                "[0].file",
                "[1].tcp.address",
                "[1].tcp.format.plain",
                "[1].tcp.format.json",
                "[1].tcp.format.json",
                "[2].file.path",
                "[2].file.format.json[0]",
                "[2].file.format.json[1].key",
            ]
        );
        assert_eq!(got[0].message, "must not be set when type is File");
        assert_eq!(got[1].message, "must be defined when type is File");
        assert_eq!(got[6].message, "\"relative.log\" is not a valid absolute file path");
    }

    #[test]
    fn backends_must_be_defined() {
        assert_invalid::<MeshAccessLog>(
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}),
            "spec.from[0].default.backends",
            "must be defined",
        );
        assert_invalid::<MeshAccessLog>(
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"},
                   "default": {"backends": [{"type": "Syslog"}]}}]}),
            "spec.from[0].default.backends[0].type",
            "unknown variant `Syslog`",
        );
    }
}
