//! `targetRef` policies: the shared pieces (target references, proxy types)
//! and one module per policy type with its typed spec and validation.
//!
//! Each policy spec is decoded with unknown fields denied, validated
//! semantically (durations, ranges, which `targetRef.kind` each position
//! allows), then re-encoded into the canonical form that is stored.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Causes, FieldPath, ValidationError};
use crate::spec::check;
use crate::types::ResourceType;

pub mod common;
pub mod matching;
pub mod meshaccesslog;
pub mod meshcircuitbreaker;
pub mod meshfaultinjection;
pub mod meshhealthcheck;
pub mod meshhttproute;
pub mod meshloadbalancingstrategy;
pub mod meshmetric;
pub mod meshproxypatch;
pub mod meshratelimit;
pub mod meshretry;
pub mod meshtcproute;
pub mod meshtimeout;
pub mod meshtrace;
pub mod meshtrafficpermission;

/// The kinds a `targetRef` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TargetRefKind {
    Mesh,
    MeshSubset,
    MeshGateway,
    MeshService,
    MeshServiceSubset,
    #[serde(rename = "MeshHTTPRoute")]
    MeshHttpRoute,
}

impl fmt::Display for TargetRefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetRefKind::Mesh => "Mesh",
            TargetRefKind::MeshSubset => "MeshSubset",
            TargetRefKind::MeshGateway => "MeshGateway",
            TargetRefKind::MeshService => "MeshService",
            TargetRefKind::MeshServiceSubset => "MeshServiceSubset",
            TargetRefKind::MeshHttpRoute => "MeshHTTPRoute",
        })
    }
}

/// Data plane proxy types a top-level `targetRef` can restrict a policy to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProxyType {
    Sidecar,
    Gateway,
}

/// A reference to the proxies or destinations a policy (or one of its
/// `to`/`from` entries) applies to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    pub kind: TargetRefKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_types: Option<Vec<ProxyType>>,
}

/// Where a `targetRef` stands; proxy types are only meaningful at the top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefPosition {
    Top,
    To,
    From,
}

impl TargetRef {
    /// Checks this reference at `path`: its kind is one of `allowed`, and
    /// `name`, `tags` and `proxyTypes` are present exactly where the kind
    /// calls for them.
    pub fn validate(&self, path: &FieldPath, position: RefPosition, allowed: &[TargetRefKind], causes: &mut Causes) {
        use TargetRefKind as K;
        if !allowed.contains(&self.kind) {
            let list: Vec<String> = allowed.iter().map(|k| k.to_string()).collect();
            causes.add(
                &path.field("kind"),
                format!(
                    "value {} is not supported here; allowed: {}",
                    self.kind,
                    list.join(", ")
                ),
            );
            return;
        }
        let needs_name = matches!(
            self.kind,
            K::MeshService | K::MeshServiceSubset | K::MeshGateway | K::MeshHttpRoute
        );
        match (&self.name, needs_name) {
            (None, true) => causes.add(&path.field("name"), format!("must be set with kind {}", self.kind)),
            (Some(n), true) if n.is_empty() => causes.add(&path.field("name"), "must not be empty"),
            (Some(_), false) => causes.add(&path.field("name"), format!("must not be set with kind {}", self.kind)),
            _ => {}
        }
        let takes_tags = matches!(self.kind, K::MeshSubset | K::MeshServiceSubset | K::MeshGateway);
        match (&self.tags, takes_tags) {
            (Some(_), false) => causes.add(&path.field("tags"), format!("must not be set with kind {}", self.kind)),
            (Some(tags), true) => {
                for (k, v) in tags {
                    if k.is_empty() {
                        causes.add(&path.field("tags"), "tag name must not be empty");
                    }
                    if v.is_empty() {
                        causes.add(&path.field("tags").key(k), "tag value must not be empty");
                    }
                }
            }
            (None, _) => {}
        }
        if let Some(types) = &self.proxy_types {
            if position != RefPosition::Top || !matches!(self.kind, K::Mesh | K::MeshSubset) {
                causes.add(
                    &path.field("proxyTypes"),
                    "can only be set in the top-level targetRef with kind Mesh or MeshSubset",
                );
            } else if types.is_empty() {
                causes.add(&path.field("proxyTypes"), "must have at least one item");
            }
        }
    }
}

/// Validates a policy spec of type `kind` and returns its canonical form.
/// Paths in errors start at `spec`.
pub fn validate_policy(kind: ResourceType, spec: Value) -> Result<Value, ValidationError> {
    let root = FieldPath::new("spec");
    match kind {
        ResourceType::MeshTimeout => check::<meshtimeout::MeshTimeout>(spec, &root),
        ResourceType::MeshRetry => check::<meshretry::MeshRetry>(spec, &root),
        ResourceType::MeshCircuitBreaker => check::<meshcircuitbreaker::MeshCircuitBreaker>(spec, &root),
        ResourceType::MeshHealthCheck => check::<meshhealthcheck::MeshHealthCheck>(spec, &root),
        ResourceType::MeshTrafficPermission => check::<meshtrafficpermission::MeshTrafficPermission>(spec, &root),
        ResourceType::MeshHTTPRoute => check::<meshhttproute::MeshHttpRoute>(spec, &root),
        ResourceType::MeshTCPRoute => check::<meshtcproute::MeshTcpRoute>(spec, &root),
        ResourceType::MeshLoadBalancingStrategy => {
            check::<meshloadbalancingstrategy::MeshLoadBalancingStrategy>(spec, &root)
        }
        ResourceType::MeshAccessLog => check::<meshaccesslog::MeshAccessLog>(spec, &root),
        ResourceType::MeshFaultInjection => check::<meshfaultinjection::MeshFaultInjection>(spec, &root),
        ResourceType::MeshRateLimit => check::<meshratelimit::MeshRateLimit>(spec, &root),
        ResourceType::MeshTrace => check::<meshtrace::MeshTrace>(spec, &root),
        ResourceType::MeshMetric => check::<meshmetric::MeshMetric>(spec, &root),
        ResourceType::MeshProxyPatch => check::<meshproxypatch::MeshProxyPatch>(spec, &root),
        other => Err(ValidationError::single(
            &FieldPath::new("type"),
            format!("{other} is not a policy type"),
        )),
    }
}

/// Records an error when neither `to` nor `from` has an entry.
pub fn require_to_or_from(to_len: usize, from_len: usize, path: &FieldPath, causes: &mut Causes) {
    if to_len == 0 && from_len == 0 {
        causes.add(path, "at least one of \"to\" or \"from\" must be defined");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_policy_type_has_a_validator() {
        for ty in ResourceType::policies() {
            // A spec without a targetRef is wrong for every policy, and the
            // error must come from that policy's decoder, not the dispatcher.
            let err = validate_policy(ty, json!({})).err();
            let causes = err.map(|e| e.causes).unwrap_or_default();
            assert_eq!(causes.len(), 1, "{ty:?}: {causes:?}");
            assert_eq!(causes[0].field, "spec", "{ty:?}");
            assert_eq!(causes[0].message, "missing field `targetRef`", "{ty:?}");
        }
    }

    #[test]
    fn non_policies_are_refused() {
        let err = validate_policy(ResourceType::Dataplane, json!({})).err();
        let causes = err.map(|e| e.causes).unwrap_or_default();
        assert_eq!(causes[0].field, "type");
    }

    #[test]
    fn minimal_specs_of_each_type_are_accepted() {
        let mesh = json!({"kind": "Mesh"});
        let cases = [
            (
                ResourceType::MeshRetry,
                json!({"targetRef": mesh, "to": [{"targetRef": mesh, "default": {"tcp": {"maxConnectAttempt": 3}}}]}),
            ),
            (
                ResourceType::MeshCircuitBreaker,
                json!({"targetRef": mesh, "from": [{"targetRef": mesh, "default": {"connectionLimits": {"maxConnections": 10}}}]}),
            ),
            (
                ResourceType::MeshHealthCheck,
                json!({"targetRef": mesh, "to": [{"targetRef": mesh, "default": {"tcp": {}}}]}),
            ),
            (
                ResourceType::MeshTrafficPermission,
                json!({"targetRef": mesh, "from": [{"targetRef": mesh, "default": {"action": "Allow"}}]}),
            ),
            (
                ResourceType::MeshHTTPRoute,
                json!({"targetRef": mesh, "to": [{"targetRef": {"kind": "MeshService", "name": "b"}}]}),
            ),
            (
                ResourceType::MeshTCPRoute,
                json!({"targetRef": mesh, "to": [{"targetRef": {"kind": "MeshService", "name": "b"}}]}),
            ),
            (
                ResourceType::MeshLoadBalancingStrategy,
                json!({"targetRef": mesh, "to": [{"targetRef": mesh, "default": {"loadBalancer": {"type": "RoundRobin"}}}]}),
            ),
            (
                ResourceType::MeshAccessLog,
                json!({"targetRef": mesh, "from": [{"targetRef": mesh, "default": {"backends": []}}]}),
            ),
            (
                ResourceType::MeshFaultInjection,
                json!({"targetRef": mesh, "from": [{"targetRef": mesh, "default": {"http": []}}]}),
            ),
            (
                ResourceType::MeshRateLimit,
                json!({"targetRef": mesh, "from": [{"targetRef": mesh, "default": {"local": {"tcp": {"disabled": true}}}}]}),
            ),
            (
                ResourceType::MeshTrace,
                json!({"targetRef": mesh, "default": {"backends": []}}),
            ),
            (ResourceType::MeshMetric, json!({"targetRef": mesh, "default": {}})),
            (
                ResourceType::MeshProxyPatch,
                json!({"targetRef": mesh, "default": {"appendModifications": [{"cluster": {"operation": "Remove"}}]}}),
            ),
        ];
        for (ty, spec) in cases {
            match validate_policy(ty, spec.clone()) {
                Ok(canonical) => assert_eq!(canonical, spec, "{ty:?}"),
                Err(e) => panic!("{ty:?}: {e}"),
            }
        }
    }
}
