//! MeshTrafficPermission: which clients (`from`) may reach the selected
//! proxies.

use serde::{Deserialize, Serialize};

use super::common::{check_entries, Entry};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTrafficPermission {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Entry<Conf>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    /// Allow, but log what a `Deny` would have refused.
    AllowWithShadowDeny,
}

const TOP: &[K] = &[K::Mesh, K::MeshSubset, K::MeshService, K::MeshServiceSubset];
const FROM: &[K] = &[K::Mesh, K::MeshSubset, K::MeshService, K::MeshServiceSubset];

impl Spec for MeshTrafficPermission {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        if self.from.is_empty() {
            causes.add(&path.field("from"), "must have at least one item");
        }
        check_entries(
            &self.from,
            &path.field("from"),
            RefPosition::From,
            FROM,
            causes,
            |_, conf, p, c| {
                // Without an action a rule would say nothing; make it explicit.
                if conf.action.is_none() {
                    c.add(
                        &p.field("action"),
                        "must be defined (Allow, Deny or AllowWithShadowDeny)",
                    );
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::common::testing::{assert_invalid, assert_valid};
    use super::*;

    #[test]
    fn valid_example_round_trips() {
        assert_valid::<MeshTrafficPermission>(json!({
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "from": [
                {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
                {"targetRef": {"kind": "MeshService", "name": "frontend"}, "default": {"action": "Allow"}},
                {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "east"}},
                 "default": {"action": "AllowWithShadowDeny"}},
                {"targetRef": {"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v2"}},
                 "default": {"action": "Allow"}}
            ]
        }));
    }

    #[test]
    fn rejects_gateway_targets_and_to() {
        assert_invalid::<MeshTrafficPermission>(
            json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                   "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
            "spec.targetRef.kind",
            "value MeshGateway is not supported here; allowed: Mesh, MeshSubset, MeshService, MeshServiceSubset",
        );
        assert_invalid::<MeshTrafficPermission>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}}]}),
            "spec.to",
            "unknown field `to`",
        );
    }

    #[test]
    fn rejects_missing_parts() {
        assert_invalid::<MeshTrafficPermission>(
            json!({"targetRef": {"kind": "Mesh"}}),
            "spec.from",
            "must have at least one item",
        );
        assert_invalid::<MeshTrafficPermission>(
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}}]}),
            "spec.from[0].default",
            "must be defined",
        );
        assert_invalid::<MeshTrafficPermission>(
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}),
            "spec.from[0].default.action",
            "must be defined",
        );
        assert_invalid::<MeshTrafficPermission>(
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Maybe"}}]}),
            "spec.from[0].default.action",
            "unknown variant `Maybe`",
        );
        assert_invalid::<MeshTrafficPermission>(
            json!({"targetRef": {"kind": "Mesh", "name": "x"},
                   "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
            "spec.targetRef.name",
            "must not be set with kind Mesh",
        );
    }
}
