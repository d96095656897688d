//! MeshTimeout: connection, idle and HTTP timeouts for inbound (`from`) and
//! outbound (`to`) traffic.

use serde::{Deserialize, Serialize};

use super::{require_to_or_from, RefPosition, TargetRef, TargetRefKind as K};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTimeout {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Entry>,
}

/// One `to` or `from` item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Entry {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Conf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Http {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Duration>,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshService,
    K::MeshServiceSubset,
    K::MeshGateway,
    K::MeshHttpRoute,
];
const TO: &[K] = &[K::Mesh, K::MeshService];
/// A gateway's or a route's timeouts apply to all its destinations at once.
const TO_GATEWAY_OR_ROUTE: &[K] = &[K::Mesh];
const FROM: &[K] = &[K::Mesh];

impl Spec for MeshTimeout {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        // As Kuma: a gateway or a route has no inbound side to configure.
        let kind = self.target_ref.kind;
        let outbound_only = matches!(kind, K::MeshHttpRoute | K::MeshGateway);
        if outbound_only && !self.from.is_empty() {
            causes.add(
                &path.field("from"),
                format!("must not be set when targetRef.kind is {kind}"),
            );
        }
        require_to_or_from(self.to.len(), self.from.len(), path, causes);
        let to = if outbound_only { TO_GATEWAY_OR_ROUTE } else { TO };
        for (list, name, allowed, pos) in [
            (&self.to, "to", to, RefPosition::To),
            (&self.from, "from", FROM, RefPosition::From),
        ] {
            if name == "from" && outbound_only {
                continue;
            }
            for (i, e) in list.iter().enumerate() {
                let p = path.field(name).index(i);
                e.target_ref.validate(&p.field("targetRef"), pos, allowed, causes);
                match &e.default {
                    None => causes.add(&p.field("default"), "must be defined"),
                    Some(conf) => conf.validate(&p.field("default"), causes),
                }
            }
        }
    }
}

impl Conf {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if self.connection_timeout.is_none() && self.idle_timeout.is_none() && self.http.is_none() {
            causes.add(path, "at least one timeout must be set");
        }
        if let Some(d) = &self.connection_timeout {
            if d.is_zero() {
                causes.add(&path.field("connectionTimeout"), "must be greater than zero");
            }
        }
        if let Some(http) = &self.http {
            let empty = Http::default();
            if http == &empty {
                causes.add(&path.field("http"), "at least one timeout must be set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::common::testing::{assert_invalid, assert_valid};
    use super::*;

    fn to(kind: &str) -> serde_json::Value {
        json!([{"targetRef": {"kind": kind, "name": "x"}, "default": {"idleTimeout": "1m"}}])
    }

    #[test]
    fn a_gateway_or_a_route_has_no_inbound_side() {
        for top in [
            json!({"kind": "MeshGateway", "name": "edge"}),
            json!({"kind": "MeshHTTPRoute", "name": "r"}),
        ] {
            assert_invalid::<MeshTimeout>(
                json!({"targetRef": top,
                       "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]}),
                "spec.from",
                "must not be set when targetRef.kind is",
            );
            assert_invalid::<MeshTimeout>(
                json!({"targetRef": top, "to": to("MeshService")}),
                "spec.to[0].targetRef.kind",
                "not supported",
            );
            assert_valid::<MeshTimeout>(json!({"targetRef": top,
                "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]}));
        }
        // A Mesh top keeps both sides (the default policies use `from`).
        assert_valid::<MeshTimeout>(json!({"targetRef": {"kind": "Mesh", "proxyTypes": ["Gateway"]},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]}));
    }
}
