//! MeshTCPRoute: where TCP traffic to a destination (`to`) is sent, split
//! by weight over backend services.

use serde::{Deserialize, Serialize};

use super::common::{check_max_items, BackendRef};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTcpRoute {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    pub target_ref: TargetRef,
    /// At most one rule: TCP has nothing to match on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    pub default: RuleConf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleConf {
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
];
const TO: &[K] = &[K::MeshService];
/// A gateway's routes apply to everything it forwards; backends pick the service.
const TO_FROM_GATEWAY: &[K] = &[K::Mesh];

impl Spec for MeshTcpRoute {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        if self.to.is_empty() {
            causes.add(&path.field("to"), "must have at least one item");
        }
        let allowed = if self.target_ref.kind == K::MeshGateway {
            TO_FROM_GATEWAY
        } else {
            TO
        };
        for (i, to) in self.to.iter().enumerate() {
            let p = path.field("to").index(i);
            to.target_ref
                .validate(&p.field("targetRef"), RefPosition::To, allowed, causes);
            let Some(rules) = &to.rules else { continue };
            check_max_items(rules.len(), 1, &p.field("rules"), causes);
            for (j, rule) in rules.iter().enumerate() {
                let bp = p.field("rules").index(j).field("default").field("backendRefs");
                if rule.default.backend_refs.is_empty() {
                    causes.add(&bp, "must have at least one item");
                }
                for (k, b) in rule.default.backend_refs.iter().enumerate() {
                    b.validate(&bp.index(k), causes);
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

    #[test]
    fn traffic_split_example_round_trips() {
        assert_valid::<MeshTcpRoute>(json!({
            "targetRef": {"kind": "MeshService", "name": "frontend"},
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "rules": [{"default": {"backendRefs": [
                    {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 90},
                    {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 10},
                    {"kind": "MeshService", "name": "other", "port": 8080, "weight": 0}
                ]}}]
            }]
        }));
        assert_valid::<MeshTcpRoute>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge", "tags": {"port": "9000"}},
            "to": [{"targetRef": {"kind": "Mesh"},
                    "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "db"}]}}]}]
        }));
    }

    #[test]
    fn to_kinds_depend_on_the_top_kind() {
        assert_invalid::<MeshTcpRoute>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}}]}),
            "spec.to[0].targetRef.kind",
            "value Mesh is not supported here; allowed: MeshService",
        );
        assert_invalid::<MeshTcpRoute>(
            json!({"targetRef": {"kind": "MeshGateway", "name": "gw"},
                   "to": [{"targetRef": {"kind": "MeshService", "name": "b"}}]}),
            "spec.to[0].targetRef.kind",
            "allowed: Mesh",
        );
        assert_invalid::<MeshTcpRoute>(
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "r"}, "to": []}),
            "spec.targetRef.kind",
            "not supported",
        );
    }

    #[test]
    fn rejects_bad_rules() {
        let got = causes::<MeshTcpRoute>(json!({
            "targetRef": {"kind": "Mesh"},
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "rules": [
                    {"default": {"backendRefs": []}},
                    {"default": {"backendRefs": [
                        {"kind": "Mesh"},
                        {"kind": "MeshServiceSubset", "tags": {"v": "1"}},
                        {"kind": "MeshService", "name": "x", "port": 70000}
                    ]}}
                ]
            }]
        }));
        let fields: Vec<_> = got.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.to[0].rules",
                "spec.to[0].rules[0].default.backendRefs",
                "spec.to[0].rules[1].default.backendRefs[0].kind",
                "spec.to[0].rules[1].default.backendRefs[1].name",
                "spec.to[0].rules[1].default.backendRefs[2].port",
            ]
        );
        assert_eq!(got[0].message, "must have at most 1 item, has 2");
        assert_eq!(got[4].message, "70000 is not a valid port (1-65535)");
        assert_invalid::<MeshTcpRoute>(
            json!({"targetRef": {"kind": "Mesh"}}),
            "spec.to",
            "must have at least one item",
        );
        assert_invalid::<MeshTcpRoute>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                   "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "x", "weight": -1}]}}]}]}),
            "spec.to[0].rules[0].default.backendRefs[0].weight",
            "invalid value",
        );
    }
}
