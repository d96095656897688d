//! MeshLoadBalancingStrategy: the load-balancing algorithm and the
//! locality (zone) awareness used for outbound (`to`) traffic.

use serde::{Deserialize, Serialize};

use super::common::{
    check_entries, check_not_empty, check_percentage, check_positive, check_tagged_union, Entry, IntOrString,
};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::duration::Duration;
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshLoadBalancingStrategy {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Entry<Conf>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_awareness: Option<LocalityAwareness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityAwareness {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_zone: Option<LocalZone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<CrossZone>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalZone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_tags: Option<Vec<AffinityTag>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AffinityTag {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CrossZone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Vec<Failover>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_threshold: Option<FailoverThreshold>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failover {
    /// The zones this rule applies to (all zones when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FromZones>,
    pub to: ToZones,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FromZones {
    pub zones: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToZones {
    #[serde(rename = "type")]
    pub to_type: ToZonesType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToZonesType {
    None,
    Only,
    Any,
    AnyExcept,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverThreshold {
    pub percentage: IntOrString,
}

/// The algorithm: `type` names which of the other fields holds its settings
/// (each is optional).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(rename = "type")]
    pub lb_type: LoadBalancerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_robin: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request: Option<LeastRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancerType {
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
    Maglev,
}

/// An algorithm without settings (`roundRobin: {}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeastRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u32>,
    /// A decimal ≥ 0 (e.g. `"1.5"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_request_bias: Option<IntOrString>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_function: Option<HashFunction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ring_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ring_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashFunction {
    XXHash,
    MurmurHash2,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Maglev {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

/// What a consistent-hash balancer hashes on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashPolicy {
    #[serde(rename = "type")]
    pub policy_type: HashPolicyType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Cookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<NamedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_state: Option<FilterState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashPolicyType {
    Header,
    Cookie,
    #[serde(rename = "SourceIP")]
    SourceIp,
    QueryParameter,
    FilterState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedKey {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cookie {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Connection {
    #[serde(default, rename = "sourceIP", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterState {
    pub key: String,
}

const TOP: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
];
const TO: &[K] = &[K::Mesh, K::MeshService];
/// A gateway balances over all its destinations with one setting.
const TO_FROM_GATEWAY: &[K] = &[K::Mesh];

impl Spec for MeshLoadBalancingStrategy {
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
        check_entries(
            &self.to,
            &path.field("to"),
            RefPosition::To,
            allowed,
            causes,
            |_, c, p, cs| c.validate(p, cs),
        );
    }
}

impl Conf {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if self.locality_awareness.is_none() && self.load_balancer.is_none() {
            causes.add(
                path,
                "at least one of \"localityAwareness\" or \"loadBalancer\" must be set",
            );
        }
        if let Some(la) = &self.locality_awareness {
            la.validate(&path.field("localityAwareness"), causes);
        }
        if let Some(lb) = &self.load_balancer {
            lb.validate(&path.field("loadBalancer"), causes);
        }
    }
}

impl LocalityAwareness {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if let Some(tags) = self.local_zone.as_ref().and_then(|z| z.affinity_tags.as_ref()) {
            let p = path.field("localZone").field("affinityTags");
            for (i, tag) in tags.iter().enumerate() {
                check_not_empty(&tag.key, &p.index(i).field("key"), causes);
                check_positive(tag.weight, &p.index(i).field("weight"), causes);
            }
            let weighted = tags.iter().filter(|t| t.weight.is_some()).count();
            if weighted > 0 && weighted != tags.len() {
                causes.add(&p, "either all affinity tags or none must have a weight");
            }
            // Envoy's locality weights are 32-bit: the default weights of
            // n tags, 9×10^(n−1−i), fit for n ≤ 9; given weights must fit
            // beside the rest of the zone's weight of 1.
            if weighted == 0 && tags.len() > 9 {
                causes.add(
                    &p,
                    "at most 9 affinity tags without weights: their default weights (9×10^(n−1−i)) would not fit Envoy's 32-bit locality weights; give each a weight",
                );
            }
            let sum: u64 = tags.iter().filter_map(|t| t.weight).map(|w| w.max(0) as u64).sum();
            if sum >= u64::from(u32::MAX) {
                causes.add(
                    &p,
                    "the weights must add up to less than 4294967295 (Envoy's 32-bit locality weights)",
                );
            }
        }
        if let Some(cz) = &self.cross_zone {
            let p = path.field("crossZone");
            for (i, f) in cz.failover.iter().flatten().enumerate() {
                let fp = p.field("failover").index(i);
                if let Some(from) = &f.from {
                    let zp = fp.field("from").field("zones");
                    if from.zones.is_empty() {
                        causes.add(&zp, "must have at least one item");
                    }
                    for (j, z) in from.zones.iter().enumerate() {
                        check_not_empty(z, &zp.index(j), causes);
                    }
                }
                let zones = f.to.zones.as_deref().unwrap_or_default();
                let zp = fp.field("to").field("zones");
                match f.to.to_type {
                    ToZonesType::Any | ToZonesType::None if !zones.is_empty() => {
                        causes.add(&zp, format!("must be empty when type is {:?}", f.to.to_type));
                    }
                    ToZonesType::Only | ToZonesType::AnyExcept if zones.is_empty() => {
                        causes.add(&zp, format!("must not be empty when type is {:?}", f.to.to_type));
                    }
                    _ => {}
                }
                for (j, z) in zones.iter().enumerate() {
                    check_not_empty(z, &zp.index(j), causes);
                }
            }
            if let Some(t) = &cz.failover_threshold {
                let pp = p.field("failoverThreshold").field("percentage");
                check_percentage(&t.percentage, &pp, causes);
                // As Kuma: a threshold of 0 would never fail over.
                if t.percentage.as_f64() == Some(0.0) {
                    causes.add(&pp, "must be greater than 0");
                }
            }
        }
    }
}

impl LoadBalancer {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let chosen = match self.lb_type {
            LoadBalancerType::RoundRobin => "roundRobin",
            LoadBalancerType::LeastRequest => "leastRequest",
            LoadBalancerType::RingHash => "ringHash",
            LoadBalancerType::Random => "random",
            LoadBalancerType::Maglev => "maglev",
        };
        check_tagged_union(
            path,
            &format!("{:?}", self.lb_type),
            Some(chosen),
            false,
            &[
                ("roundRobin", self.round_robin.is_some()),
                ("leastRequest", self.least_request.is_some()),
                ("ringHash", self.ring_hash.is_some()),
                ("random", self.random.is_some()),
                ("maglev", self.maglev.is_some()),
            ],
            causes,
        );
        if let Some(lr) = &self.least_request {
            let p = path.field("leastRequest");
            if lr.choice_count.is_some_and(|c| c < 2) {
                causes.add(&p.field("choiceCount"), "must be at least 2");
            }
            if let Some(bias) = &lr.active_request_bias {
                let bp = p.field("activeRequestBias");
                match bias.as_f64() {
                    None => causes.add(&bp, format!("{bias} is not a number (expected e.g. \"1.5\")")),
                    Some(v) if v < 0.0 => causes.add(&bp, "must be greater than or equal to 0"),
                    Some(_) => {}
                }
            }
        }
        if let Some(rh) = &self.ring_hash {
            let p = path.field("ringHash");
            for (name, size) in [("minRingSize", rh.min_ring_size), ("maxRingSize", rh.max_ring_size)] {
                if size.is_some_and(|s| !(1..=8_000_000).contains(&s)) {
                    causes.add(&p.field(name), "must be between 1 and 8000000");
                }
            }
            if let (Some(min), Some(max)) = (rh.min_ring_size, rh.max_ring_size) {
                if min > max {
                    causes.add(
                        &p.field("minRingSize"),
                        format!("must not be greater than maxRingSize ({max})"),
                    );
                }
            }
            check_hash_policies(rh.hash_policies.as_deref(), &p.field("hashPolicies"), causes);
        }
        if let Some(m) = &self.maglev {
            let p = path.field("maglev");
            if m.table_size.is_some_and(|s| !(1..=5_000_011).contains(&s)) {
                causes.add(&p.field("tableSize"), "must be between 1 and 5000011");
            }
            check_hash_policies(m.hash_policies.as_deref(), &p.field("hashPolicies"), causes);
        }
    }
}

fn check_hash_policies(policies: Option<&[HashPolicy]>, path: &FieldPath, causes: &mut Causes) {
    for (i, hp) in policies.unwrap_or_default().iter().enumerate() {
        let p = path.index(i);
        let chosen = match hp.policy_type {
            HashPolicyType::Header => "header",
            HashPolicyType::Cookie => "cookie",
            HashPolicyType::SourceIp => "connection",
            HashPolicyType::QueryParameter => "queryParameter",
            HashPolicyType::FilterState => "filterState",
        };
        let type_name = match hp.policy_type {
            HashPolicyType::SourceIp => "SourceIP".to_string(),
            other => format!("{other:?}"),
        };
        check_tagged_union(
            &p,
            &type_name,
            Some(chosen),
            true,
            &[
                ("header", hp.header.is_some()),
                ("cookie", hp.cookie.is_some()),
                ("connection", hp.connection.is_some()),
                ("queryParameter", hp.query_parameter.is_some()),
                ("filterState", hp.filter_state.is_some()),
            ],
            causes,
        );
        if let Some(h) = &hp.header {
            check_not_empty(&h.name, &p.field("header").field("name"), causes);
        }
        if let Some(q) = &hp.query_parameter {
            check_not_empty(&q.name, &p.field("queryParameter").field("name"), causes);
        }
        if let Some(f) = &hp.filter_state {
            check_not_empty(&f.key, &p.field("filterState").field("key"), causes);
        }
        if let Some(c) = &hp.cookie {
            check_not_empty(&c.name, &p.field("cookie").field("name"), causes);
            if c.path.as_deref().is_some_and(|cp| !cp.starts_with('/')) {
                causes.add(
                    &p.field("cookie").field("path"),
                    "must be an absolute path (start with /)",
                );
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
            "targetRef": {"kind": "MeshService", "name": "frontend"},
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": "backend"},
                    "default": {
                        "localityAwareness": {
                            "disabled": false,
                            "localZone": {"affinityTags": [
                                {"key": "k8s.io/node", "weight": 9000},
                                {"key": "k8s.io/az", "weight": 9}
                            ]},
                            "crossZone": {
                                "failover": [
                                    {"from": {"zones": ["us-1", "us-2"]}, "to": {"type": "Only", "zones": ["us-3"]}},
                                    {"to": {"type": "AnyExcept", "zones": ["eu-1"]}},
                                    {"to": {"type": "Any"}}
                                ],
                                "failoverThreshold": {"percentage": 70}
                            }
                        },
                        "loadBalancer": {
                            "type": "RingHash",
                            "ringHash": {
                                "hashFunction": "MurmurHash2",
                                "minRingSize": 64,
                                "maxRingSize": 1024,
                                "hashPolicies": [
                                    {"type": "Header", "terminal": true, "header": {"name": "x-header"}},
                                    {"type": "Cookie", "cookie": {"name": "session", "ttl": "1h", "path": "/"}},
                                    {"type": "SourceIP", "connection": {"sourceIP": true}},
                                    {"type": "QueryParameter", "queryParameter": {"name": "user"}},
                                    {"type": "FilterState", "filterState": {"key": "my-key"}}
                                ]
                            }
                        }
                    }
                },
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"loadBalancer": {"type": "LeastRequest",
                                                 "leastRequest": {"choiceCount": 4, "activeRequestBias": "1.3"}}}
                },
                {
                    "targetRef": {"kind": "MeshService", "name": "cache"},
                    "default": {"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 1000,
                        "hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}]}}}
                },
                {
                    "targetRef": {"kind": "MeshService", "name": "web"},
                    "default": {"loadBalancer": {"type": "RoundRobin", "roundRobin": {}}}
                }
            ]
        })
    }

    #[test]
    fn full_example_is_valid_and_round_trips() {
        assert_valid::<MeshLoadBalancingStrategy>(full());
        assert_valid::<MeshLoadBalancingStrategy>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {"type": "Random"}}}]
        }));
    }

    #[test]
    fn kinds_and_required_lists() {
        assert_invalid::<MeshLoadBalancingStrategy>(
            json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                   "to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                           "default": {"loadBalancer": {"type": "Random"}}}]}),
            "spec.to[0].targetRef.kind",
            "value MeshService is not supported here; allowed: Mesh",
        );
        assert_invalid::<MeshLoadBalancingStrategy>(
            json!({"targetRef": {"kind": "Mesh"}}),
            "spec.to",
            "must have at least one item",
        );
        assert_invalid::<MeshLoadBalancingStrategy>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}),
            "spec.to[0].default",
            "at least one of \"localityAwareness\" or \"loadBalancer\"",
        );
    }

    #[test]
    fn affinity_weights_must_fit_envoys_locality_weights() {
        let with_tags = |tags: serde_json::Value| {
            let mut p = full();
            p["to"][0]["default"]["localityAwareness"]["localZone"]["affinityTags"] = tags;
            match crate::spec::check::<MeshLoadBalancingStrategy>(p, &FieldPath::new("spec")) {
                Ok(_) => Vec::new(),
                Err(e) => e.causes,
            }
        };
        let nine: Vec<serde_json::Value> = (0..9).map(|i| json!({"key": format!("k{i}")})).collect();
        assert!(with_tags(json!(nine)).is_empty());
        let ten: Vec<serde_json::Value> = (0..10).map(|i| json!({"key": format!("k{i}")})).collect();
        let got = with_tags(json!(ten));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0].field,
            "spec.to[0].default.localityAwareness.localZone.affinityTags"
        );
        assert!(
            got[0].message.starts_with("at most 9 affinity tags without weights"),
            "{got:?}"
        );
        let big = with_tags(
            json!([{"key": "a", "weight": 2147483647}, {"key": "b", "weight": 2147483647},
                                   {"key": "c", "weight": 1}]),
        );
        assert_eq!(big.len(), 1, "{big:?}");
        assert!(big[0].message.contains("add up to less than 4294967295"), "{big:?}");
        assert!(with_tags(json!([{"key": "a", "weight": 2147483647}, {"key": "b", "weight": 2147483647}])).is_empty());
    }

    #[test]
    fn rejects_bad_locality() {
        let mut bad = full();
        let la = &mut bad["to"][0]["default"]["localityAwareness"];
        la["localZone"]["affinityTags"] = json!([{"key": "", "weight": 0}, {"key": "b"}]);
        la["crossZone"]["failover"] = json!([
            {"from": {"zones": []}, "to": {"type": "Any", "zones": ["x"]}},
            {"to": {"type": "Only"}}
        ]);
        la["crossZone"]["failoverThreshold"]["percentage"] = json!("101");
        let got = causes::<MeshLoadBalancingStrategy>(bad);
        let pre = "spec.to[0].default.localityAwareness.";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields,
            [
                "localZone.affinityTags[0].key",
                "localZone.affinityTags[0].weight",
                "localZone.affinityTags",
                "crossZone.failover[0].from.zones",
                "crossZone.failover[0].to.zones",
                "crossZone.failover[1].to.zones",
                "crossZone.failoverThreshold.percentage",
            ]
        );
        assert_eq!(got[2].message, "either all affinity tags or none must have a weight");
        assert_eq!(got[4].message, "must be empty when type is Any");
        assert_eq!(got[5].message, "must not be empty when type is Only");
        let mut zero = full();
        zero["to"][0]["default"]["localityAwareness"]["crossZone"]["failoverThreshold"]["percentage"] = json!(0);
        assert_invalid::<MeshLoadBalancingStrategy>(
            zero,
            "spec.to[0].default.localityAwareness.crossZone.failoverThreshold.percentage",
            "must be greater than 0",
        );
    }

    #[test]
    fn rejects_bad_balancers() {
        let got = causes::<MeshLoadBalancingStrategy>(json!({
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {
                "type": "RingHash",
                "maglev": {"tableSize": 0},
                "ringHash": {"minRingSize": 2048, "maxRingSize": 1024, "hashPolicies": [
                    {"type": "Header"},
                    {"type": "SourceIP", "cookie": {"name": "c", "path": "rel"}, "connection": {"sourceIP": true}}
                ]}
            }}}]
        }));
        let pre = "spec.to[0].default.loadBalancer.";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields,
            [
                "maglev",
                "ringHash.minRingSize",
                "ringHash.hashPolicies[0].header",
                "ringHash.hashPolicies[1].cookie",
                "ringHash.hashPolicies[1].cookie.path",
                "maglev.tableSize",
            ]
        );
        assert_eq!(got[0].message, "must not be set when type is RingHash");
        assert_eq!(got[2].message, "must be defined when type is Header");
        assert_eq!(got[3].message, "must not be set when type is SourceIP");
        assert_invalid::<MeshLoadBalancingStrategy>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"loadBalancer": {
                "type": "LeastRequest", "leastRequest": {"choiceCount": 1, "activeRequestBias": "-1"}}}}]}),
            "spec.to[0].default.loadBalancer.leastRequest.choiceCount",
            "must be at least 2",
        );
    }
}
