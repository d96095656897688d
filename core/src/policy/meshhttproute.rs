//! MeshHTTPRoute: matching of HTTP requests to a destination (`to`), with
//! filters (header changes, redirects, rewrites, mirroring) and weighted
//! backends.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::common::{
    check_header_values, check_max_items, check_not_empty, check_percentage, check_port, check_regex,
    check_tagged_union, BackendRef, HeaderMatch, HeaderValue, IntOrString, BACKEND_KINDS,
};
use super::{RefPosition, TargetRef, TargetRefKind as K};
use crate::error::{Causes, FieldPath};
use crate::spec::Spec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshHttpRoute {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    pub target_ref: TargetRef,
    /// Only with a `MeshGateway` top-level target: limits the route to these
    /// request hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnames: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Alternatives: a request matching any of them takes this rule.
    pub matches: Vec<Match>,
    pub default: RuleConf,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_params: Option<Vec<QueryParamsMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<HeaderMatch>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub match_type: PathMatchType,
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    CONNECT,
    DELETE,
    GET,
    HEAD,
    OPTIONS,
    PATCH,
    POST,
    PUT,
    TRACE,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryParamsMatch {
    #[serde(rename = "type")]
    pub match_type: QueryParamsMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryParamsMatchType {
    Exact,
    RegularExpression,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<Filter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<BackendRef>>,
}

/// A filter: `type` names which one of the other fields holds its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Filter {
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
}

impl FilterType {
    /// The spelling of this type in documents.
    fn name(self) -> &'static str {
        match self {
            FilterType::RequestHeaderModifier => "RequestHeaderModifier",
            FilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
            FilterType::RequestRedirect => "RequestRedirect",
            FilterType::UrlRewrite => "URLRewrite",
            FilterType::RequestMirror => "RequestMirror",
        }
    }

    /// The field holding this filter's settings.
    fn field(self) -> &'static str {
        match self {
            FilterType::RequestHeaderModifier => "requestHeaderModifier",
            FilterType::ResponseHeaderModifier => "responseHeaderModifier",
            FilterType::RequestRedirect => "requestRedirect",
            FilterType::UrlRewrite => "urlRewrite",
            FilterType::RequestMirror => "requestMirror",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<HeaderValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<HeaderValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathRewrite {
    #[serde(rename = "type")]
    pub rewrite_type: PathRewriteType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathRewriteType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// Gateways only: rewrite the Host header to the chosen backend's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_to_backend_hostname: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: BackendRef,
    /// Share of requests mirrored (0-100, decimal allowed); default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<IntOrString>,
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
const REDIRECT_CODES: &[i32] = &[301, 302, 303, 307, 308];

impl Spec for MeshHttpRoute {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        self.target_ref
            .validate(&path.field("targetRef"), RefPosition::Top, TOP, causes);
        let gateway = self.target_ref.kind == K::MeshGateway;
        let allowed = if gateway { TO_FROM_GATEWAY } else { TO };
        for (i, to) in self.to.iter().enumerate() {
            let p = path.field("to").index(i);
            to.target_ref
                .validate(&p.field("targetRef"), RefPosition::To, allowed, causes);
            if let Some(hostnames) = &to.hostnames {
                if !gateway && !hostnames.is_empty() {
                    causes.add(
                        &p.field("hostnames"),
                        "can only be set when targetRef.kind is MeshGateway",
                    );
                }
                for (j, h) in hostnames.iter().enumerate() {
                    check_not_empty(h, &p.field("hostnames").index(j), causes);
                }
            }
            for (j, rule) in to.rules.iter().flatten().enumerate() {
                rule.validate(&p.field("rules").index(j), gateway, causes);
            }
        }
    }
}

impl Rule {
    fn validate(&self, path: &FieldPath, gateway: bool, causes: &mut Causes) {
        if self.matches.is_empty() {
            causes.add(&path.field("matches"), "must have at least one item");
        }
        for (i, m) in self.matches.iter().enumerate() {
            m.validate(&path.field("matches").index(i), causes);
        }
        let p = path.field("default");
        let all_prefix = self.matches.iter().all(|m| {
            m.path
                .as_ref()
                .is_some_and(|pm| pm.match_type == PathMatchType::PathPrefix)
        });
        let filters = self.default.filters.as_deref().unwrap_or_default();
        for (i, f) in filters.iter().enumerate() {
            f.validate(&p.field("filters").index(i), gateway, all_prefix, causes);
        }
        let backends = self.default.backend_refs.as_deref().unwrap_or_default();
        let redirects = filters.iter().any(|f| f.filter_type == FilterType::RequestRedirect);
        // A gateway has no "original destination" to fall back to.
        if gateway && backends.is_empty() && !redirects {
            causes.add(
                &p.field("backendRefs"),
                "must not be empty when targetRef.kind is MeshGateway (unless the rule redirects)",
            );
        }
        for (i, b) in backends.iter().enumerate() {
            b.validate(&p.field("backendRefs").index(i), causes);
        }
    }
}

impl Match {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if let Some(pm) = &self.path {
            let vp = path.field("path").field("value");
            check_not_empty(&pm.value, &vp, causes);
            match pm.match_type {
                PathMatchType::RegularExpression => check_regex(&pm.value, &vp, causes),
                PathMatchType::Exact | PathMatchType::PathPrefix if !pm.value.starts_with('/') => {
                    causes.add(&vp, "must be an absolute path (start with /)");
                }
                PathMatchType::PathPrefix if pm.value != "/" && pm.value.ends_with('/') => {
                    causes.add(
                        &vp,
                        "must not end with / (a prefix matches whole path segments already)",
                    );
                }
                _ => {}
            }
        }
        let mut names = BTreeSet::new();
        for (i, q) in self.query_params.iter().flatten().enumerate() {
            let np = path.field("queryParams").index(i).field("name");
            check_not_empty(&q.name, &np, causes);
            if !names.insert(q.name.as_str()) {
                causes.add(&np, format!("multiple entries for name {:?}", q.name));
            }
            if q.match_type == QueryParamsMatchType::RegularExpression {
                check_regex(&q.value, &path.field("queryParams").index(i).field("value"), causes);
            }
        }
        for (i, h) in self.headers.iter().flatten().enumerate() {
            h.validate(&path.field("headers").index(i), causes);
        }
    }
}

impl Filter {
    fn validate(&self, path: &FieldPath, gateway: bool, all_prefix: bool, causes: &mut Causes) {
        check_tagged_union(
            path,
            self.filter_type.name(),
            Some(self.filter_type.field()),
            true,
            &[
                ("requestHeaderModifier", self.request_header_modifier.is_some()),
                ("responseHeaderModifier", self.response_header_modifier.is_some()),
                ("requestRedirect", self.request_redirect.is_some()),
                ("urlRewrite", self.url_rewrite.is_some()),
                ("requestMirror", self.request_mirror.is_some()),
            ],
            causes,
        );
        if let Some(m) = &self.request_header_modifier {
            m.validate(&path.field("requestHeaderModifier"), causes);
        }
        if let Some(m) = &self.response_header_modifier {
            m.validate(&path.field("responseHeaderModifier"), causes);
        }
        if let Some(r) = &self.request_redirect {
            let p = path.field("requestRedirect");
            if let Some(h) = &r.hostname {
                check_precise_hostname(h, &p.field("hostname"), causes);
            }
            if let Some(rw) = &r.path {
                rw.validate(&p.field("path"), all_prefix, causes);
            }
            if let Some(port) = r.port {
                check_port(port, &p.field("port"), causes);
            }
            if let Some(code) = r.status_code {
                if !REDIRECT_CODES.contains(&code) {
                    causes.add(
                        &p.field("statusCode"),
                        format!("{code} is not one of 301, 302, 303, 307, 308"),
                    );
                }
            }
        }
        if let Some(r) = &self.url_rewrite {
            let p = path.field("urlRewrite");
            if let Some(h) = &r.hostname {
                check_precise_hostname(h, &p.field("hostname"), causes);
            }
            if let Some(rw) = &r.path {
                rw.validate(&p.field("path"), all_prefix, causes);
            }
            if r.host_to_backend_hostname == Some(true) {
                let hp = p.field("hostToBackendHostname");
                if !gateway {
                    causes.add(&hp, "can only be set when targetRef.kind is MeshGateway");
                }
                if r.hostname.is_some() {
                    causes.add(&hp, "cannot be set together with hostname");
                }
            }
        }
        if let Some(m) = &self.request_mirror {
            let p = path.field("requestMirror");
            m.backend_ref
                .target_ref()
                .validate(&p.field("backendRef"), RefPosition::To, BACKEND_KINDS, causes);
            if let Some(port) = m.backend_ref.port {
                check_port(port, &p.field("backendRef").field("port"), causes);
            }
            if let Some(pct) = &m.percentage {
                check_percentage(pct, &p.field("percentage"), causes);
            }
        }
    }
}

impl HeaderModifier {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        if self.set.is_none() && self.add.is_none() && self.remove.is_none() {
            causes.add(path, "at least one of \"set\", \"add\" or \"remove\" must be set");
            return;
        }
        let mut seen = BTreeSet::new();
        for (name, list) in [("set", &self.set), ("add", &self.add)] {
            let Some(list) = list else { continue };
            check_header_values(list, &path.field(name), causes);
            for (i, h) in list.iter().enumerate() {
                if !seen.insert(h.name.as_str()) {
                    causes.add(
                        &path.field(name).index(i).field("name"),
                        format!("duplicate header name {:?}", h.name),
                    );
                }
            }
        }
        if let Some(list) = &self.remove {
            check_max_items(list.len(), 16, &path.field("remove"), causes);
            for (i, h) in list.iter().enumerate() {
                let p = path.field("remove").index(i);
                check_not_empty(h, &p, causes);
                if !seen.insert(h.as_str()) {
                    causes.add(&p, format!("duplicate header name {h:?}"));
                }
            }
        }
    }
}

impl PathRewrite {
    fn validate(&self, path: &FieldPath, all_prefix: bool, causes: &mut Causes) {
        let (wanted, other, wanted_set, other_set) = match self.rewrite_type {
            PathRewriteType::ReplaceFullPath => (
                "replaceFullPath",
                "replacePrefixMatch",
                self.replace_full_path.is_some(),
                self.replace_prefix_match.is_some(),
            ),
            PathRewriteType::ReplacePrefixMatch => (
                "replacePrefixMatch",
                "replaceFullPath",
                self.replace_prefix_match.is_some(),
                self.replace_full_path.is_some(),
            ),
        };
        if !wanted_set {
            causes.add(
                &path.field(wanted),
                format!("must be defined when type is {:?}", self.rewrite_type),
            );
        }
        if other_set {
            causes.add(
                &path.field(other),
                format!("must not be set when type is {:?}", self.rewrite_type),
            );
        }
        if self.replace_prefix_match.is_some() && !all_prefix {
            causes.add(
                &path.field("replacePrefixMatch"),
                "can only be used when every match of the rule is a PathPrefix path match",
            );
        }
    }
}

/// A fully qualified host name (RFC 1123, lowercase), not an IP address.
fn check_precise_hostname(value: &str, path: &FieldPath, causes: &mut Causes) {
    if value.parse::<IpAddr>().is_ok() {
        causes.add(path, "cannot be an IP address");
        return;
    }
    if value.len() > 253 {
        causes.add(path, "must be no more than 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !value.split('.').all(label_ok) {
        causes.add(
            path,
            format!(
                "{value:?} is not a valid host name (lowercase letters, digits, '-' and '.', \
                 each label starting and ending with a letter or digit)"
            ),
        );
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
            "to": [{
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "rules": [
                    {
                        "matches": [
                            {"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                             "queryParams": [{"type": "Exact", "name": "debug", "value": "1"},
                                             {"type": "RegularExpression", "name": "v", "value": "^2"}],
                             "headers": [{"type": "Exact", "name": "x-version", "value": "v2"},
                                         {"type": "Present", "name": "x-canary"}]},
                            {"path": {"type": "PathPrefix", "value": "/"}}
                        ],
                        "default": {
                            "filters": [
                                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                    "set": [{"name": "x-custom", "value": "1"}],
                                    "add": [{"name": "x-other", "value": "2"}],
                                    "remove": ["x-drop"]}},
                                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                    "add": [{"name": "x-served-by", "value": "backend"}]}},
                                {"type": "URLRewrite", "urlRewrite": {
                                    "hostname": "internal.example.com",
                                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                                {"type": "RequestMirror", "requestMirror": {
                                    "backendRef": {"kind": "MeshServiceSubset", "name": "backend",
                                                   "tags": {"version": "v3"}},
                                    "percentage": "12.5"}}
                            ],
                            "backendRefs": [
                                {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 90},
                                {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 10}
                            ]
                        }
                    },
                    {
                        "matches": [{"path": {"type": "Exact", "value": "/old"}}],
                        "default": {"filters": [{"type": "RequestRedirect", "requestRedirect": {
                            "scheme": "https", "hostname": "example.com", "port": 443, "statusCode": 301,
                            "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]}
                    }
                ]
            }]
        })
    }

    #[test]
    fn full_example_is_valid_and_round_trips() {
        assert_valid::<MeshHttpRoute>(full());
    }

    #[test]
    fn gateway_routes() {
        assert_valid::<MeshHttpRoute>(json!({
            "targetRef": {"kind": "MeshGateway", "name": "edge", "tags": {"port": "80"}},
            "to": [{
                "targetRef": {"kind": "Mesh"},
                "hostnames": ["example.com", "*.example.com"],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "default": {
                        "filters": [{"type": "URLRewrite", "urlRewrite": {"hostToBackendHostname": true}}],
                        "backendRefs": [{"kind": "MeshService", "name": "web", "port": 8080}]
                    }
                }]
            }]
        }));
        assert_invalid::<MeshHttpRoute>(
            json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                   "to": [{"targetRef": {"kind": "Mesh"},
                           "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {}}]}]}),
            "spec.to[0].rules[0].default.backendRefs",
            "must not be empty when targetRef.kind is MeshGateway",
        );
        assert_invalid::<MeshHttpRoute>(
            json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                   "to": [{"targetRef": {"kind": "MeshService", "name": "web"}}]}),
            "spec.to[0].targetRef.kind",
            "value MeshService is not supported here; allowed: Mesh",
        );
    }

    #[test]
    fn sidecar_routes_target_services_only() {
        assert_invalid::<MeshHttpRoute>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}}]}),
            "spec.to[0].targetRef.kind",
            "allowed: MeshService",
        );
        assert_invalid::<MeshHttpRoute>(
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "x"}, "to": []}),
            "spec.targetRef.kind",
            "not supported",
        );
        let mut bad = full();
        bad["to"][0]["hostnames"] = json!(["example.com"]);
        bad["to"][0]["rules"][0]["default"]["filters"][2]["urlRewrite"]["hostToBackendHostname"] = json!(true);
        let got = causes::<MeshHttpRoute>(bad);
        let fields: Vec<_> = got.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.to[0].hostnames",
                "spec.to[0].rules[0].default.filters[2].urlRewrite.hostToBackendHostname",
                "spec.to[0].rules[0].default.filters[2].urlRewrite.hostToBackendHostname",
            ]
        );
        assert_eq!(got[1].message, "can only be set when targetRef.kind is MeshGateway");
        assert_eq!(got[2].message, "cannot be set together with hostname");
    }

    #[test]
    fn rejects_bad_matches() {
        let mut bad = full();
        bad["to"][0]["rules"][0]["matches"] = json!([
            {"path": {"type": "Exact", "value": "relative"}},
            {"path": {"type": "PathPrefix", "value": "/trailing/"}},
            {"queryParams": [{"type": "Exact", "name": "a", "value": "1"}, {"type": "Exact", "name": "a", "value": "2"}]},
            {"headers": [{"type": "Absent", "name": "x-a", "value": "1"}]}
        ]);
        let got = causes::<MeshHttpRoute>(bad);
        let pre = "spec.to[0].rules[0].";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields,
            [
                "matches[0].path.value",
                "matches[1].path.value",
                "matches[2].queryParams[1].name",
                "matches[3].headers[0].value",
                // the rule now has matches that are not path prefixes
                "default.filters[2].urlRewrite.path.replacePrefixMatch",
            ]
        );
        assert_eq!(got[0].message, "must be an absolute path (start with /)");
        assert_eq!(got[2].message, "multiple entries for name \"a\"");
        assert_eq!(got[3].message, "must not be set when type is Absent");
        assert_invalid::<MeshHttpRoute>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                   "rules": [{"matches": [], "default": {}}]}]}),
            "spec.to[0].rules[0].matches",
            "must have at least one item",
        );
        assert_invalid::<MeshHttpRoute>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                   "rules": [{"matches": [{"method": "FETCH"}], "default": {}}]}]}),
            "spec.to[0].rules[0].matches[0].method",
            "unknown variant `FETCH`",
        );
    }

    #[test]
    fn rejects_regular_expressions_proxies_would_refuse() {
        let mut bad = full();
        bad["to"][0]["rules"][0]["matches"] = json!([
            {"path": {"type": "RegularExpression", "value": "/a(b"}},
            {"path": {"type": "RegularExpression", "value": "/(?=look)ahead"}},
            {"queryParams": [{"type": "RegularExpression", "name": "v", "value": "[z-a]"}]},
            {"headers": [{"type": "RegularExpression", "name": "x-v", "value": "(a)\\1"}]},
            {"path": {"type": "RegularExpression", "value": "/api/v[0-9]+/.*"}}
        ]);
        let got = causes::<MeshHttpRoute>(bad);
        let pre = "spec.to[0].rules[0].";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields[..4],
            [
                "matches[0].path.value",
                "matches[1].path.value",
                "matches[2].queryParams[0].value",
                "matches[3].headers[0].value",
            ]
        );
        for c in &got[..4] {
            assert!(c.message.starts_with("invalid regular expression"), "{c:?}");
        }
        assert!(
            !fields.contains(&"matches[4].path.value"),
            "a valid expression passes: {got:?}"
        );
    }

    #[test]
    fn rejects_bad_filters() {
        let got = causes::<MeshHttpRoute>(json!({
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "b"}, "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "default": {"filters": [
                    {"type": "RequestHeaderModifier"},
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {}},
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "x-a", "value": "1"}], "remove": ["x-a"]}},
                    {"type": "RequestRedirect", "requestRedirect": {"hostname": "10.0.0.1", "statusCode": 200, "port": 0}},
                    {"type": "URLRewrite", "urlRewrite": {"hostname": "Bad_Host",
                        "path": {"type": "ReplaceFullPath", "replacePrefixMatch": "/x"}}},
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"kind": "Mesh"}, "percentage": 150},
                     "urlRewrite": {}}
                ]}
            }]}]
        }));
        let pre = "spec.to[0].rules[0].default.filters";
        let fields: Vec<_> = got.iter().map(|c| c.field.trim_start_matches(pre)).collect();
        assert_eq!(
            fields,
            [
                "[0].requestHeaderModifier",
                "[1].responseHeaderModifier",
                "[2].requestHeaderModifier.remove[0]",
                "[3].requestRedirect.hostname",
                "[3].requestRedirect.port",
                "[3].requestRedirect.statusCode",
                "[4].urlRewrite.hostname",
                "[4].urlRewrite.path.replaceFullPath",
                "[4].urlRewrite.path.replacePrefixMatch",
                "[5].urlRewrite",
                "[5].requestMirror.backendRef.kind",
                "[5].requestMirror.percentage",
            ]
        );
        assert_eq!(got[0].message, "must be defined when type is RequestHeaderModifier");
        assert_eq!(got[2].message, "duplicate header name \"x-a\"");
        assert_eq!(got[3].message, "cannot be an IP address");
        assert_eq!(got[9].message, "must not be set when type is RequestMirror");
    }

    #[test]
    fn filter_type_spelling_in_messages() {
        assert_invalid::<MeshHttpRoute>(
            json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                   "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                              "default": {"filters": [{"type": "URLRewrite"}]}}]}]}),
            "spec.to[0].rules[0].default.filters[0].urlRewrite",
            "must be defined when type is URLRewrite",
        );
    }
}
