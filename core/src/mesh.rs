//! The `Mesh` resource: a tenant. Its fields are inline in the universal form.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::LongDuration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;
use crate::types::ResourceType;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mesh {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<Networking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_creating_initial_policies: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<crate::mesh_observability::Logging>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::mesh_observability::Tracing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<crate::mesh_observability::Metrics>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mtls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<CaBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_validation: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaType {
    Builtin,
    Provided,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    Strict,
    Permissive,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaBackend {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: CaType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_cert: Option<DpCert>,
    /// Backend-specific configuration (key sizes, certificate sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DpCert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rotation {
    pub expiration: LongDuration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Networking {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Outbound>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Outbound {
    /// Whether traffic to destinations outside the mesh passes through
    /// (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Routing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_aware_load_balancing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_egress: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Constraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_proxy: Option<DataplaneProxyConstraints>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneProxyConstraints {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<TagSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restrictions: Vec<TagSelector>,
}

/// Tags to match; a value of `*` means "present, any value".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TagSelector {
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl TagSelector {
    /// Whether a proxy with `tags` matches this selector (every selector tag
    /// present, with the same value or `*`).
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.tags
            .iter()
            .all(|(k, v)| tags.get(k).is_some_and(|have| v == "*" || have == v))
    }
}

impl Mesh {
    /// Whether the initial default policy of type `kind` must not be created.
    pub fn skips_initial_policy(&self, kind: ResourceType) -> bool {
        self.skip_creating_initial_policies
            .as_ref()
            .is_some_and(|l| l.iter().any(|s| s == "*" || s == kind.name()))
    }

    /// Whether a proxy with `tags` may join this mesh: it matches one
    /// requirement when any are listed, and no restriction.
    pub fn admits(&self, tags: &BTreeMap<String, String>) -> bool {
        let Some(c) = self.constraints.as_ref().and_then(|c| c.dataplane_proxy.as_ref()) else {
            return true;
        };
        let required = c.requirements.is_empty() || c.requirements.iter().any(|r| r.matches(tags));
        required && !c.restrictions.iter().any(|r| r.matches(tags))
    }
}

impl Spec for Mesh {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if let Some(mtls) = &self.mtls {
            let p = path.field("mtls");
            let mut seen = HashSet::new();
            for (i, b) in mtls.backends.iter().enumerate() {
                let bp = p.field("backends").index(i);
                if b.name.is_empty() {
                    causes.add(&bp.field("name"), "must not be empty");
                } else if !seen.insert(b.name.as_str()) {
                    causes.add(&bp.field("name"), format!("duplicate backend name {:?}", b.name));
                }
                if let Some(rot) = b.dp_cert.as_ref().and_then(|d| d.rotation.as_ref()) {
                    if rot.expiration.as_std() < crate::mtls::MIN_DP_CERT_VALIDITY {
                        causes.add(
                            &bp.field("dpCert").field("rotation").field("expiration"),
                            format!(
                                "must be at least {}s: certificates are renewed at 4/5 of their lifetime",
                                crate::mtls::MIN_DP_CERT_VALIDITY.as_secs()
                            ),
                        );
                    }
                }
                match &b.conf {
                    Some(conf) if !conf.is_object() => causes.add(&bp.field("conf"), "must be an object"),
                    _ => {
                        crate::mtls::backend_conf(b, &bp, causes);
                    }
                }
            }
            if let Some(enabled) = &mtls.enabled_backend {
                if !enabled.is_empty() && !mtls.backends.iter().any(|b| &b.name == enabled) {
                    causes.add(
                        &p.field("enabledBackend"),
                        format!("has to be set to one of the backends in the mesh, got {enabled:?}"),
                    );
                }
            }
        }
        if let Some(dp) = self.constraints.as_ref().and_then(|c| c.dataplane_proxy.as_ref()) {
            let p = path.field("constraints").field("dataplaneProxy");
            for (name, list) in [("requirements", &dp.requirements), ("restrictions", &dp.restrictions)] {
                for (i, sel) in list.iter().enumerate() {
                    if sel.tags.is_empty() {
                        causes.add(&p.field(name).index(i).field("tags"), "must have at least one tag");
                    }
                }
            }
        }
        // As Kuma: traffic through a zone egress is routed by mTLS identity.
        let zone_egress = self.routing.as_ref().and_then(|r| r.zone_egress) == Some(true);
        let mtls_enabled = self
            .mtls
            .as_ref()
            .and_then(|m| m.enabled_backend.as_deref())
            .is_some_and(|b| !b.is_empty());
        if zone_egress && !mtls_enabled {
            causes.add(&path.field("mtls"), "has to be set when zoneEgress enabled");
        }
        if let Some(logging) = &self.logging {
            logging.validate(&path.field("logging"), causes);
        }
        if let Some(tracing) = &self.tracing {
            tracing.validate(&path.field("tracing"), causes);
        }
        if let Some(metrics) = &self.metrics {
            metrics.validate(&path.field("metrics"), causes);
        }
        if let Some(skip) = &self.skip_creating_initial_policies {
            for (i, s) in skip.iter().enumerate() {
                let ok = s == "*" || s.parse::<ResourceType>().is_ok_and(|t| t.is_policy());
                if !ok {
                    causes.add(
                        &path.field("skipCreatingInitialPolicies").index(i),
                        format!("{s:?} is neither \"*\" nor a policy type"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::check;
    use serde_json::json;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn constraints_admit() {
        let mesh: Mesh = serde_json::from_value(json!({
            "constraints": {"dataplaneProxy": {
                "requirements": [{"tags": {"kuma.io/zone": "*"}}],
                "restrictions": [{"tags": {"team": "evil"}}]
            }}
        }))
        .unwrap();
        assert!(mesh.admits(&tags(&[("kuma.io/zone", "z1")])));
        assert!(!mesh.admits(&tags(&[("team", "a")])));
        assert!(!mesh.admits(&tags(&[("kuma.io/zone", "z1"), ("team", "evil")])));
    }

    #[test]
    fn enabled_backend_must_exist() {
        let err = check::<Mesh>(
            json!({"mtls": {"enabledBackend": "ca-1", "backends": []}}),
            &FieldPath::root(),
        )
        .unwrap_err();
        assert_eq!(err.causes[0].field, "mtls.enabledBackend");
    }

    #[test]
    fn zone_egress_needs_mtls() {
        for mtls in [json!(null), json!({"backends": [{"name": "ca-1", "type": "builtin"}]})] {
            let mut mesh = json!({"routing": {"zoneEgress": true}});
            if !mtls.is_null() {
                mesh["mtls"] = mtls;
            }
            let err = check::<Mesh>(mesh, &FieldPath::root()).unwrap_err();
            assert_eq!(err.causes[0].field, "mtls");
            assert_eq!(err.causes[0].message, "has to be set when zoneEgress enabled");
        }
        let ok = json!({"routing": {"zoneEgress": true},
                        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}});
        assert!(check::<Mesh>(ok, &FieldPath::root()).is_ok());
    }

    #[test]
    fn bad_mode_names_field() {
        let err = check::<Mesh>(
            json!({"mtls": {"backends": [{"name": "a", "type": "builtin", "mode": "LOOSE"}]}}),
            &FieldPath::root(),
        )
        .unwrap_err();
        assert_eq!(err.causes[0].field, "mtls.backends[0].mode");
    }

    #[test]
    fn skip_list() {
        let m: Mesh = serde_json::from_value(json!({"skipCreatingInitialPolicies": ["MeshRetry"]})).unwrap();
        assert!(m.skips_initial_policy(ResourceType::MeshRetry));
        assert!(!m.skips_initial_policy(ResourceType::MeshTimeout));
        let err = check::<Mesh>(json!({"skipCreatingInitialPolicies": ["Nope"]}), &FieldPath::root()).unwrap_err();
        assert_eq!(err.causes[0].field, "skipCreatingInitialPolicies[0]");
    }
}
