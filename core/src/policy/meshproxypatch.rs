//! MeshProxyPatch: low-level changes to the generated Envoy configuration
//! (add, remove or patch clusters, listeners, filters and virtual hosts).
//!
//! Envoy resources are given as YAML text (`value`) or as JSON Patch
//! operations (`jsonPatches`). Meridian checks their shape, not the Envoy
//! schema: the text must be a YAML object and patches must be well formed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::forbid_gateway_listener_tags;
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshProxyPatch {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Conf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    #[serde(default)]
    pub append_modifications: Vec<Modification>,
}

/// One change; exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Modification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ResourceMod<ClusterMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ResourceMod<ListenerMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_filter: Option<FilterMod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_filter: Option<FilterMod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_host: Option<VirtualHostMod>,
}

/// A change to a whole resource (cluster or listener).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceMod<M> {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<M>,
    pub operation: ResourceOp,
    /// The Envoy resource (Add) or the part merged into it (Patch), as YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_patches: Option<Vec<JsonPatch>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualHostMod {
    #[serde(rename = "match")]
    pub match_: VirtualHostMatch,
    pub operation: ResourceOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_patches: Option<Vec<JsonPatch>>,
}

/// A change to a network or HTTP filter inside listeners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterMod {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<FilterMatch>,
    pub operation: FilterOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_patches: Option<Vec<JsonPatch>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceOp {
    Add,
    Remove,
    Patch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterOp {
    Remove,
    Patch,
    AddFirst,
    AddBefore,
    AddAfter,
    AddLast,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterMatch {
    /// Name of the filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualHostMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_configuration_name: Option<String>,
}

/// One RFC 6902 JSON Patch operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JsonPatch {
    pub op: JsonPatchOp,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonPatchOp {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
];

impl Spec for MeshProxyPatch {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let tp = path.field("targetRef");
        self.target_ref.validate(&tp, RefPosition::Top, TOP, causes);
        forbid_gateway_listener_tags(&self.target_ref, &tp, causes);
        let Some(conf) = &self.default else {
            causes.add(&path.field("default"), "must be defined");
            return;
        };
        let mp = path.field("default").field("appendModifications");
        if conf.append_modifications.is_empty() {
            causes.add(&mp, "must have at least one item");
        }
        for (i, m) in conf.append_modifications.iter().enumerate() {
            m.validate(&mp.index(i), causes);
        }
    }
}

impl Modification {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let set = [
            self.cluster.is_some(),
            self.listener.is_some(),
            self.network_filter.is_some(),
            self.http_filter.is_some(),
            self.virtual_host.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            causes.add(
                path,
                format!(
                    "exactly one of \"cluster\", \"listener\", \"networkFilter\", \"httpFilter\" or \
                     \"virtualHost\" must be set, found {set}"
                ),
            );
        }
        if let Some(m) = &self.cluster {
            m.validate(&path.field("cluster"), causes);
        }
        if let Some(m) = &self.listener {
            m.validate(&path.field("listener"), causes);
        }
        if let Some(m) = &self.network_filter {
            m.validate(&path.field("networkFilter"), causes);
        }
        if let Some(m) = &self.http_filter {
            m.validate(&path.field("httpFilter"), causes);
        }
        if let Some(m) = &self.virtual_host {
            let p = path.field("virtualHost");
            if m.operation == ResourceOp::Add && m.match_.name.is_some() {
                causes.add(&p.field("match").field("name"), "must not be set when operation is Add");
            }
            check_payload(
                m.operation == ResourceOp::Patch,
                m.operation == ResourceOp::Remove,
                m.value.as_deref(),
                m.json_patches.as_deref(),
                &p,
                causes,
            );
        }
    }
}

impl<M> ResourceMod<M> {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if self.operation == ResourceOp::Add && self.match_.is_some() {
            causes.add(&path.field("match"), "must not be set when operation is Add");
        }
        let patch = self.operation == ResourceOp::Patch;
        let remove = self.operation == ResourceOp::Remove;
        check_payload(
            patch,
            remove,
            self.value.as_deref(),
            self.json_patches.as_deref(),
            path,
            causes,
        );
    }
}

impl FilterMod {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let named = self.match_.as_ref().is_some_and(|m| m.name.is_some());
        let np = path.field("match").field("name");
        match self.operation {
            FilterOp::AddBefore if !named => {
                causes.add(&np, "must be defined: name the filter before which this one is added")
            }
            FilterOp::AddAfter if !named => {
                causes.add(&np, "must be defined: name the filter after which this one is added")
            }
            FilterOp::Patch if !named => causes.add(&np, "must be defined: name the filter to patch"),
            _ => {}
        }
        let patch = self.operation == FilterOp::Patch;
        let remove = self.operation == FilterOp::Remove;
        check_payload(
            patch,
            remove,
            self.value.as_deref(),
            self.json_patches.as_deref(),
            path,
            causes,
        );
    }
}

/// Checks `value` / `jsonPatches` of a modification: a patch takes exactly
/// one of them, a removal neither, an addition a `value`.
fn check_payload(
    patch: bool,
    remove: bool,
    value: Option<&str>,
    json_patches: Option<&[JsonPatch]>,
    path: &FieldPath,
    causes: &mut Causes,
) {
    let has_patches = json_patches.is_some_and(|p| !p.is_empty());
    if patch {
        match (value, has_patches) {
            (Some(_), true) => causes.add(path, "only one of \"value\" or \"jsonPatches\" may be set"),
            (None, false) => causes.add(path, "exactly one of \"value\" or \"jsonPatches\" must be set"),
            _ => {}
        }
    } else {
        if json_patches.is_some() {
            causes.add(&path.field("jsonPatches"), "can only be set when operation is Patch");
        }
        if remove && value.is_some() {
            causes.add(&path.field("value"), "must not be set when operation is Remove");
        }
        if !remove && value.is_none() {
            causes.add(&path.field("value"), "must be defined");
        }
    }
    if let Some(v) = value {
        check_yaml_object(v, &path.field("value"), causes);
    }
    if patch {
        for (i, p) in json_patches.unwrap_or_default().iter().enumerate() {
            p.validate(&path.field("jsonPatches").index(i), causes);
        }
    }
}

/// The value must be a YAML (or JSON) object: an Envoy resource or a part of one.
fn check_yaml_object(text: &str, path: &FieldPath, causes: &mut Causes) {
    match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        Ok(serde_yaml_ng::Value::Mapping(_)) => {}
        Ok(_) => causes.add(path, "must be a YAML object describing the Envoy resource"),
        Err(e) => causes.add(path, format!("is not valid YAML: {e}")),
    }
}

impl JsonPatch {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        check_pointer(&self.path, &path.field("path"), causes);
        match self.op {
            JsonPatchOp::Move | JsonPatchOp::Copy => match &self.from {
                None => causes.add(
                    &path.field("from"),
                    format!("must be defined with op {:?}", self.op).to_lowercase(),
                ),
                Some(f) => check_pointer(f, &path.field("from"), causes),
            },
            JsonPatchOp::Add | JsonPatchOp::Replace if self.value.is_none() => causes.add(
                &path.field("value"),
                format!("must be defined with op {:?}", self.op).to_lowercase(),
            ),
            _ => {}
        }
    }
}

/// A JSON Pointer (RFC 6901): empty, or `/`-separated tokens.
fn check_pointer(p: &str, path: &FieldPath, causes: &mut Causes) {
    if !p.is_empty() && !p.starts_with('/') {
        causes.add(path, format!("{p:?} is not a JSON pointer (it must start with /)"));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::common::testing::{assert_invalid, assert_valid, causes};
    use super::*;

    #[test]
    fn valid_example_round_trips() {
        assert_valid::<MeshProxyPatch>(json!({
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "default": {"appendModifications": [
                {"cluster": {"operation": "Add", "value": "name: test-cluster\nconnectTimeout: 5s\ntype: STATIC\n"}},
                {"cluster": {"operation": "Patch", "match": {"name": "test-cluster", "origin": "outbound"},
                             "value": "connectTimeout: 10s\n"}},
                {"cluster": {"operation": "Patch", "match": {"origin": "inbound"}, "jsonPatches": [
                    {"op": "replace", "path": "/connectTimeout", "value": "10s"},
                    {"op": "add", "path": "/perConnectionBufferLimitBytes", "value": 32768},
                    {"op": "copy", "from": "/name", "path": "/altStatName"},
                    {"op": "remove", "path": "/outlierDetection"}
                ]}},
                {"cluster": {"operation": "Remove", "match": {"name": "old-cluster"}}},
                {"listener": {"operation": "Patch", "match": {"tags": {"kuma.io/service": "backend"}},
                              "value": "perConnectionBufferLimitBytes: 32768\n"}},
                {"networkFilter": {"operation": "AddFirst", "match": {"listenerName": "inbound:10.0.0.1:8080"},
                                   "value": "name: envoy.filters.network.local_ratelimit\n"}},
                {"httpFilter": {"operation": "AddBefore", "match": {"name": "envoy.filters.http.router"},
                                "value": "name: envoy.filters.http.gzip\n"}},
                {"httpFilter": {"operation": "Remove", "match": {"name": "envoy.filters.http.gzip",
                                                                "listenerTags": {"kuma.io/service": "backend"}}}},
                {"virtualHost": {"operation": "Add", "match": {"routeConfigurationName": "outbound:backend"},
                                 "value": "name: backend-vhost\ndomains: [\"*\"]\n"}},
                {"virtualHost": {"operation": "Patch", "match": {"name": "backend", "origin": "outbound"},
                                 "jsonPatches": [{"op": "add", "path": "/retryPolicy", "value": {"numRetries": 3}}]}}
            ]}
        }));
        assert_valid::<MeshProxyPatch>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge"},
            "default": {"appendModifications": [{"listener": {"operation": "Remove", "match": {"name": "x"}}}]}
        }));
    }

    #[test]
    fn rejects_bad_targets_and_missing_parts() {
        assert_invalid::<MeshProxyPatch>(
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"},
                   "default": {"appendModifications": [{"cluster": {"operation": "Remove"}}]}}),
            "spec.targetRef.kind",
            "not supported",
        );
        assert_invalid::<MeshProxyPatch>(
            json!({"targetRef": {"kind": "Mesh"}}),
            "spec.default",
            "must be defined",
        );
        assert_invalid::<MeshProxyPatch>(
            json!({"targetRef": {"kind": "Mesh"}, "default": {"appendModifications": []}}),
            "spec.default.appendModifications",
            "must have at least one item",
        );
        assert_invalid::<MeshProxyPatch>(
            json!({"targetRef": {"kind": "Mesh"}, "default": {"appendModifications": [
                {"virtualHost": {"operation": "Remove"}}]}}),
            "spec.default.appendModifications[0].virtualHost",
            "missing field `match`",
        );
    }

    #[test]
    fn rejects_bad_modifications() {
        let got = causes::<MeshProxyPatch>(json!({
            "targetRef": {"kind": "Mesh"},
            "default": {"appendModifications": [
                {},
                {"cluster": {"operation": "Add", "match": {"name": "x"}}},
                {"cluster": {"operation": "Patch", "value": "a: 1", "jsonPatches": [{"op": "remove", "path": "/a"}]}},
                {"listener": {"operation": "Remove", "value": "a: 1"}},
                {"httpFilter": {"operation": "AddAfter", "value": "- not\n- an object\n"}},
                {"networkFilter": {"operation": "Patch", "match": {"name": "f"}, "jsonPatches": [
                    {"op": "move", "path": "a"}, {"op": "replace", "path": "/b"}]}},
                {"virtualHost": {"operation": "Add", "match": {"name": "vh"}, "value": "name: vh"},
                 "cluster": {"operation": "Remove", "jsonPatches": []}}
            ]}
        }));
        let fields: Vec<_> = got
            .iter()
            .map(|c| c.field.trim_start_matches("spec.default.appendModifications"))
            .collect();
        assert_eq!(
            fields,
            [
                "[0]",
                "[1].cluster.match",
                "[1].cluster.value",
                "[2].cluster",
                "[3].listener.value",
                "[4].httpFilter.match.name",
                "[4].httpFilter.value",
                "[5].networkFilter.jsonPatches[0].path",
                "[5].networkFilter.jsonPatches[0].from",
                "[5].networkFilter.jsonPatches[1].value",
                "[6]",
                "[6].cluster.jsonPatches",
                "[6].virtualHost.match.name",
            ]
        );
        assert_eq!(got[2].message, "must be defined");
        assert_eq!(got[3].message, "only one of \"value\" or \"jsonPatches\" may be set");
        assert_eq!(got[6].message, "must be a YAML object describing the Envoy resource");
        assert_eq!(got[8].message, "must be defined with op move");
        assert!(got[10].message.ends_with("found 2"), "{}", got[10].message);
    }
}
