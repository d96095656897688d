//! Zone-owned inventory: `Dataplane`, `ZoneIngress`, and the global's
//! `Zone` record. Fields are inline in the universal form.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

/// The tag every inbound and outbound must carry.
pub const SERVICE_TAG: &str = "kuma.io/service";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dataplane {
    pub networking: DataplaneNetworking,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneNetworking {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Inbound>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_proxying: Option<TransparentProxying>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inbound {
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Outbound {
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransparentProxying {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_port_inbound: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_port_outbound: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direct_access_services: Vec<String>,
    /// The only services this proxy gets outbounds for, when listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reachable_services: Vec<String>,
    /// The IP families whose traffic is redirected (IPv4 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_mode: Option<IpFamilyMode>,
}

/// Which IP families a transparent proxy redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamilyMode {
    DualStack,
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum GatewayType {
    Delegated,
    Builtin,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<GatewayType>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Admin {
    pub port: u32,
}

impl Dataplane {
    /// The tags of all inbounds merged, used for mesh constraints.
    pub fn all_tags(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for i in &self.networking.inbound {
            out.extend(i.tags.clone());
        }
        if let Some(g) = &self.networking.gateway {
            out.extend(g.tags.clone());
        }
        out
    }
}

/// The tag naming the zone a dataplane runs in.
pub const ZONE_TAG: &str = "kuma.io/zone";

/// Tags every inbound (and a gateway) of the validated dataplane `spec`
/// with `kuma.io/zone: zone`, as Kuma's zone control plane does when a
/// dataplane is registered, so that policies can select by zone
/// (`MeshSubset` with `kuma.io/zone`). A different value already there is
/// refused, naming the field: a dataplane cannot claim another zone.
pub fn tag_zone(spec: &mut serde_json::Value, zone: &str) -> Result<(), crate::ValidationError> {
    let mut causes = Causes::default();
    let root = FieldPath::root().field("networking");
    let Some(networking) = spec.get_mut("networking") else {
        return Ok(());
    };
    let mut tag = |tags: Option<&mut serde_json::Value>, at: FieldPath| {
        let Some(serde_json::Value::Object(tags)) = tags else {
            return;
        };
        match tags.get(ZONE_TAG).and_then(serde_json::Value::as_str) {
            Some(z) if z == zone => {}
            Some(other) => causes.add(
                &at.key(ZONE_TAG),
                format!("is {other:?}, but this dataplane runs in zone {zone:?}: leave the tag out, the zone sets it"),
            ),
            None => {
                tags.insert(ZONE_TAG.into(), serde_json::Value::String(zone.to_string()));
            }
        }
    };
    if let Some(serde_json::Value::Array(inbound)) = networking.get_mut("inbound") {
        for (i, entry) in inbound.iter_mut().enumerate() {
            tag(entry.get_mut("tags"), root.field("inbound").index(i).field("tags"));
        }
    }
    if let Some(gateway) = networking.get_mut("gateway") {
        tag(gateway.get_mut("tags"), root.field("gateway").field("tags"));
    }
    causes.into_result()
}

fn check_port(port: u32, path: &FieldPath, causes: &mut Causes) {
    if !(1..=65535).contains(&port) {
        causes.add(path, format!("port must be in the range [1, 65535], got {port}"));
    }
}

fn check_address(addr: &str, path: &FieldPath, causes: &mut Causes) {
    if addr.is_empty() {
        causes.add(path, "must not be empty");
    } else if addr.parse::<IpAddr>().is_err() && crate::names::check_subdomain(addr).is_err() {
        causes.add(path, format!("{addr:?} is neither an IP address nor a hostname"));
    }
}

fn check_service_tags(tags: &BTreeMap<String, String>, path: &FieldPath, causes: &mut Causes) {
    match tags.get(SERVICE_TAG) {
        None => causes.add(path, format!("tag {SERVICE_TAG:?} is required")),
        Some(v) if v.is_empty() => causes.add(&path.key(SERVICE_TAG), "must not be empty"),
        Some(_) => {}
    }
    for (k, v) in tags {
        if k.is_empty() {
            causes.add(path, "tag name must not be empty");
        } else if !k.bytes().all(is_tag_name_byte) {
            causes.add(
                &path.key(k),
                "tag name must consist of alphanumeric characters, dots, dashes, colons, slashes and underscores",
            );
        }
        if v.is_empty() {
            causes.add(&path.key(k), "tag value must not be empty");
        } else if !v.bytes().all(is_tag_value_byte) {
            causes.add(
                &path.key(k),
                "tag value must consist of alphanumeric characters, dots, dashes, colons and underscores",
            );
        }
    }
}

/// The characters of a tag name (Kuma's `tagNameCharacterSet`).
fn is_tag_name_byte(b: u8) -> bool {
    is_tag_value_byte(b) || b == b'/'
}

/// The characters of a tag value (Kuma's `tagValueCharacterSet`): they also
/// make `kuma://<name>/<value>` certificate SANs valid URIs without escaping.
fn is_tag_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':')
}

impl Spec for Dataplane {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let n = &self.networking;
        let p = path.field("networking");
        check_address(&n.address, &p.field("address"), causes);
        if let Some(a) = &n.advertised_address {
            check_address(a, &p.field("advertisedAddress"), causes);
        }
        if n.inbound.is_empty() && n.gateway.is_none() {
            causes.add(&p, "has to contain at least one inbound interface or gateway");
        }
        if n.gateway.is_some() && !n.inbound.is_empty() {
            causes.add(&p.field("inbound"), "must not be set for a gateway");
        }
        let mut seen = HashSet::new();
        for (i, ib) in n.inbound.iter().enumerate() {
            let ip = p.field("inbound").index(i);
            check_port(ib.port, &ip.field("port"), causes);
            if let Some(sp) = ib.service_port {
                check_port(sp, &ip.field("servicePort"), causes);
            }
            if let Some(a) = &ib.address {
                check_address(a, &ip.field("address"), causes);
            }
            if let Some(a) = &ib.service_address {
                check_address(a, &ip.field("serviceAddress"), causes);
            }
            check_service_tags(&ib.tags, &ip.field("tags"), causes);
            let addr = ib.address.as_deref().unwrap_or(&n.address);
            if !seen.insert((addr.to_string(), ib.port)) {
                causes.add(&ip.field("port"), format!("duplicate inbound {addr}:{}", ib.port));
            }
        }
        for (i, ob) in n.outbound.iter().enumerate() {
            let op = p.field("outbound").index(i);
            check_port(ob.port, &op.field("port"), causes);
            if let Some(a) = &ob.address {
                check_address(a, &op.field("address"), causes);
            }
            check_service_tags(&ob.tags, &op.field("tags"), causes);
        }
        if let Some(g) = &n.gateway {
            check_service_tags(&g.tags, &p.field("gateway").field("tags"), causes);
        }
        if let Some(tp) = &n.transparent_proxying {
            let tpp = p.field("transparentProxying");
            if let Some(port) = tp.redirect_port_inbound {
                check_port(port, &tpp.field("redirectPortInbound"), causes);
            }
            if let Some(port) = tp.redirect_port_outbound {
                check_port(port, &tpp.field("redirectPortOutbound"), causes);
                if tp.redirect_port_inbound == Some(port) {
                    causes.add(
                        &tpp.field("redirectPortOutbound"),
                        "must differ from redirectPortInbound",
                    );
                }
            }
            for (i, s) in tp.reachable_services.iter().enumerate() {
                if s.is_empty() {
                    causes.add(&tpp.field("reachableServices").index(i), "must not be empty");
                }
            }
        }
        if let Some(admin) = &n.admin {
            check_port(admin.port, &p.field("admin").field("port"), causes);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneIngress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub networking: ZoneIngressNetworking,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_services: Vec<AvailableService>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneIngressNetworking {
    pub address: String,
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AvailableService {
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub instances: u32,
    pub mesh: String,
}

impl Spec for ZoneIngress {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let p = path.field("networking");
        let n = &self.networking;
        check_address(&n.address, &p.field("address"), causes);
        check_port(n.port, &p.field("port"), causes);
        if let Some(a) = &n.advertised_address {
            check_address(a, &p.field("advertisedAddress"), causes);
        }
        if let Some(port) = n.advertised_port {
            check_port(port, &p.field("advertisedPort"), causes);
        }
        if n.advertised_address.is_some() != n.advertised_port.is_some() {
            causes.add(&p, "advertisedAddress and advertisedPort must be set together");
        }
        for (i, s) in self.available_services.iter().enumerate() {
            let sp = path.field("availableServices").index(i);
            check_service_tags(&s.tags, &sp.field("tags"), causes);
            if s.mesh.is_empty() {
                causes.add(&sp.field("mesh"), "must not be empty");
            }
        }
    }
}

/// A zone known to the global.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Zone {
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Spec for Zone {
    fn validate(&self, _path: &FieldPath, _causes: &mut Causes) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::check;
    use serde_json::json;

    #[test]
    fn valid_dataplane() {
        check::<Dataplane>(
            json!({"networking": {"address": "127.0.0.1", "inbound": [
                {"port": 8080, "tags": {"kuma.io/service": "backend", "version": "v1"}}
            ], "outbound": [{"port": 10001, "tags": {"kuma.io/service": "db"}}]}}),
            &FieldPath::root(),
        )
        .unwrap();
    }

    #[test]
    fn tags_keep_to_kuma_character_sets() {
        let err = check::<Dataplane>(
            json!({"networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {
                "kuma.io/service": "web app", "team name": "a", "version": "v1/2", "zone": "\u{85}"
            }}]}}),
            &FieldPath::root(),
        )
        .unwrap_err();
        let fields: Vec<_> = err.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "networking.inbound[0].tags[\"kuma.io/service\"]",
                "networking.inbound[0].tags[\"team name\"]",
                "networking.inbound[0].tags[\"version\"]",
                "networking.inbound[0].tags[\"zone\"]",
            ]
        );
        // What Kuma allows stays allowed.
        check::<Dataplane>(
            json!({"networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {
                "kuma.io/service": "web_v1.api-2:8080", "k8s.io/app": "A-z.0_9:x"
            }}]}}),
            &FieldPath::root(),
        )
        .unwrap();
    }

    #[test]
    fn missing_service_tag_and_bad_port() {
        let err = check::<Dataplane>(
            json!({"networking": {"address": "127.0.0.1", "inbound": [{"port": 70000, "tags": {"a": "b"}}]}}),
            &FieldPath::root(),
        )
        .unwrap_err();
        let fields: Vec<_> = err.causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"networking.inbound[0].port"), "{fields:?}");
        assert!(fields.contains(&"networking.inbound[0].tags"), "{fields:?}");
    }

    #[test]
    fn transparent_proxying_fields_and_checks() {
        let dp: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.1",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
            "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001,
                                    "reachableServices": ["backend"], "ipFamilyMode": "DualStack"}}}))
        .unwrap();
        let tp = dp.networking.transparent_proxying.unwrap();
        assert_eq!(tp.ip_family_mode, Some(IpFamilyMode::DualStack));
        assert_eq!(tp.reachable_services, ["backend"]);
        let err = check::<Dataplane>(
            json!({"networking": {"address": "10.0.0.1",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
                "transparentProxying": {"redirectPortInbound": 15001, "redirectPortOutbound": 15001,
                                        "reachableServices": ["backend", ""], "ipFamilyMode": "IPv6"}}}),
            &FieldPath::root(),
        )
        .unwrap_err();
        let fields: Vec<_> = err.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "networking.transparentProxying.redirectPortOutbound",
                "networking.transparentProxying.reachableServices[1]"
            ]
        );
        assert!(check::<Dataplane>(
            json!({"networking": {"address": "10.0.0.1",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
                "transparentProxying": {"ipFamilyMode": "ipv6"}}}),
            &FieldPath::root(),
        )
        .is_err());
    }

    #[test]
    fn ingress_needs_both_advertised_fields() {
        let err = check::<ZoneIngress>(
            json!({"networking": {"address": "10.0.0.1", "port": 10001, "advertisedAddress": "1.2.3.4"}}),
            &FieldPath::root(),
        )
        .unwrap_err();
        assert_eq!(err.causes[0].field, "networking");
    }
}

#[cfg(test)]
mod zone_tag_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn inbounds_and_gateways_get_the_zone_tag() {
        let mut spec = json!({"networking": {"address": "10.0.0.1", "inbound": [
            {"port": 1, "tags": {"kuma.io/service": "a"}},
            {"port": 2, "tags": {"kuma.io/service": "b", "kuma.io/zone": "east"}}]}});
        tag_zone(&mut spec, "east").unwrap();
        assert_eq!(spec["networking"]["inbound"][0]["tags"]["kuma.io/zone"], "east");
        let mut gw = json!({"networking": {"address": "10.0.0.1", "gateway": {"tags": {"kuma.io/service": "edge"}}}});
        tag_zone(&mut gw, "east").unwrap();
        assert_eq!(gw["networking"]["gateway"]["tags"]["kuma.io/zone"], "east");
    }

    #[test]
    fn another_zone_is_refused_naming_the_tag() {
        let mut spec = json!({"networking": {"address": "10.0.0.1", "inbound": [
            {"port": 1, "tags": {"kuma.io/service": "a", "kuma.io/zone": "west"}}]}});
        let err = tag_zone(&mut spec, "east").unwrap_err();
        assert_eq!(err.causes[0].field, "networking.inbound[0].tags[\"kuma.io/zone\"]");
    }
}
