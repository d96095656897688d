//! Which `targetRef` policies apply to one data plane proxy, and the
//! configuration they give it: the input of Envoy config generation.
//!
//! Start at [`ProxyView`] (the proxy as matching sees it), [`matching`]
//! (the policies of one type that select it, least specific first), then the
//! per-direction results: [`to_conf`] (one destination), [`from_conf`] (one
//! inbound), [`single_item_conf`] (policies without `to`/`from`),
//! [`traffic_permissions`], and the routes: [`http_route_rules`],
//! [`tcp_route_conf`], [`route_to_conf`]. Everything here is a pure function.
//!
//! # Selection (top-level `targetRef`)
//!
//! A proxy is known by the tag sets of its inbounds, or, for a gateway, by
//! its gateway tags. `Mesh` selects every proxy; `MeshSubset` a proxy with a
//! tag set holding all `tags`; `MeshService` one with a tag set whose
//! `kuma.io/service` is `name`; `MeshServiceSubset` both. A tag value `*`
//! means "present, any value". `proxyTypes` restricts `Mesh` and
//! `MeshSubset` to sidecars or gateways; a proxy is a gateway exactly when
//! its dataplane has `networking.gateway` (a proxyless gRPC client is a
//! sidecar). `MeshGateway` selects the gateways whose `kuma.io/service` is
//! `name` (and whose gateway tags hold `tags`: Meridian has no MeshGateway
//! resource, so listener tags are matched against the gateway tags). A
//! `targetRef.mesh`, when set, must be the proxy's mesh. `from` rules of a
//! policy apply only to the inbounds its top-level reference selects.
//!
//! # Order (least to most specific; the last one wins)
//!
//! Policies sort by the kind of their top-level reference: `Mesh` <
//! `MeshSubset` < `MeshGateway` < `MeshService` < `MeshServiceSubset` <
//! `MeshHTTPRoute` (Kuma 2.7, `api/common/v1alpha1/targetref.go`); within
//! one kind, fewer `tags` before more (Kuma does this for `MeshGateway`
//! only; Meridian extends it to the subset kinds, where more tags also means
//! a narrower selection); then by name in *descending* order, so that of two
//! equally specific policies the one whose name sorts first wins, as in
//! Kuma (`pkg/plugins/policies/core/matchers/dataplane.go`, `ByTargetRef`:
//! `name(i) > name(j)`). Policy names are unique per type and mesh, so the
//! order is total and does not depend on the input order.
//!
//! `to` entries are ordered by their policy's specificity, then by the kind
//! of the entry's own reference (`Mesh` before `MeshService`), then by
//! policy name as above, then by position in the list. This is Kuma's
//! current `SortByTargetRefV2` (`pkg/plugins/policies/core/rules/sort.go`):
//! a `MeshService` entry overrides a `Mesh` entry of an equally specific
//! policy whatever the names. `from` entries keep list order within their
//! policy (Kuma's documentation: "order of rules inside the `from` array
//! matters"), so a later entry wins over an earlier one.
//!
//! Origin (zone before global in newer Kuma) and Kubernetes policy roles are
//! not part of the order yet: every policy counts as coming from the global.
//!
//! # Merging
//!
//! The `default` objects that apply are merged in that order with
//! [`merge_json`]: JSON merge patch (RFC 7386) — objects merge field by
//! field, anything else (scalars *and lists*) is replaced by the later
//! value, `null` deletes — except that lists under a key named `append…`
//! (`appendModifications`, `appendProfiles`) are concatenated, as Kuma does
//! for fields whose Go name starts with `Append`. MeshHTTPRoute rules are
//! merged by their `matches` (see [`http_routes`]); a MeshTCPRoute entry's
//! single rule is merged like a `default`.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::common::{BackendRef, Entry};
use super::meshhttproute::{self, Match, MeshHttpRoute, PathMatchType};
use super::meshtcproute::{self, MeshTcpRoute};
use super::meshtrafficpermission::{Action, MeshTrafficPermission};
use super::{
    meshaccesslog, meshcircuitbreaker, meshfaultinjection, meshhealthcheck, meshloadbalancingstrategy, meshmetric,
    meshproxypatch, meshratelimit, meshretry, meshtimeout, meshtrace, ProxyType, TargetRef, TargetRefKind,
};
use crate::dataplane::{Dataplane, SERVICE_TAG};

/// A set of tags (`kuma.io/service`, `version`, …).
pub type Tags = BTreeMap<String, String>;

/// A tag value in a selector that matches any value of a present tag.
pub const MATCH_ALL: &str = "*";

/// Why effective configuration could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    /// Merged `default` objects did not decode back into the policy's
    /// configuration type (or one did not encode).
    #[error("cannot merge {conf}: {message}")]
    Merge { conf: &'static str, message: String },
}

/// A data plane proxy as policy matching sees it.
#[derive(Clone, Debug)]
pub struct ProxyView<'a> {
    /// The mesh the proxy belongs to.
    pub mesh: &'a str,
    /// The tags of each inbound, in the dataplane's order: [`from_conf`]
    /// and friends take an index into this list.
    pub inbounds: Vec<&'a Tags>,
    /// A gateway's own tags (`networking.gateway.tags`).
    pub gateway: Option<&'a Tags>,
    pub proxy_type: ProxyType,
}

impl<'a> ProxyView<'a> {
    /// The view of `dataplane` in `mesh`. A dataplane with
    /// `networking.gateway` is a gateway; any other one — including a
    /// proxyless gRPC client — is a sidecar.
    pub fn new(mesh: &'a str, dataplane: &'a Dataplane) -> Self {
        let n = &dataplane.networking;
        let gateway = n.gateway.as_ref().map(|g| &g.tags);
        ProxyView {
            mesh,
            inbounds: n.inbound.iter().map(|i| &i.tags).collect(),
            gateway,
            proxy_type: if gateway.is_some() {
                ProxyType::Gateway
            } else {
                ProxyType::Sidecar
            },
        }
    }

    /// The service a gateway serves as (its `kuma.io/service` tag).
    pub fn gateway_service(&self) -> Option<&'a str> {
        self.gateway.and_then(|t| t.get(SERVICE_TAG)).map(String::as_str)
    }

    /// Every tag set the proxy is known by.
    fn tag_sets(&self) -> impl Iterator<Item = &'a Tags> + '_ {
        self.inbounds.iter().copied().chain(self.gateway)
    }
}

/// Where outbound traffic goes, for `to` rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<'a> {
    /// One service: selected by `to` entries of kind `Mesh` and by
    /// `MeshService` entries with this name.
    Service(&'a str),
    /// All traffic at once, as a gateway's `to: [{kind: Mesh}]` entries
    /// describe it: only `Mesh` entries select it.
    Mesh,
}

impl Destination<'_> {
    fn selected_by(self, target: &TargetRef) -> bool {
        let Some(selector) = Selector::of(target) else {
            return false;
        };
        match self {
            Destination::Service(name) => {
                let tags = Tags::from([(SERVICE_TAG.to_string(), name.to_string())]);
                selector.matches(&tags)
            }
            Destination::Mesh => selector.matches(&Tags::new()),
        }
    }
}

/// A policy with a top-level `targetRef`; every policy type is one.
pub trait Targeted {
    fn target_ref(&self) -> &TargetRef;
}

/// A policy whose `to`, `from` or single `default` configuration can be
/// merged: all types but the routes (see [`http_routes`], [`tcp_route_conf`]).
pub trait TargetRefPolicy: Targeted {
    /// The type of a `default` object.
    type Conf: Serialize + DeserializeOwned;

    /// The `to` entries that carry a `default`, in list order.
    fn to_entries(&self) -> Vec<(&TargetRef, &Self::Conf)> {
        Vec::new()
    }

    /// The `from` entries that carry a `default`, in list order.
    #[allow(clippy::wrong_self_convention)] // named after the spec's `from` list, not a constructor
    fn from_entries(&self) -> Vec<(&TargetRef, &Self::Conf)> {
        Vec::new()
    }

    /// The top-level `default` of a policy without `to`/`from`.
    fn single_item(&self) -> Option<&Self::Conf> {
        None
    }
}

/// One `default` that takes part in a merge, and where it comes from.
#[derive(Debug)]
pub struct Contribution<'a, C> {
    /// The name of the policy.
    pub policy: &'a str,
    /// The `to`/`from` entry's reference.
    pub target_ref: &'a TargetRef,
    pub conf: &'a C,
}

impl<C> Clone for Contribution<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Contribution<'_, C> {}

/// The policies among `policies` (name, spec) whose top-level reference
/// selects `proxy`, least specific first: merging their configuration in
/// this order lets the most specific one win.
///
/// Policies that target a `MeshHTTPRoute` are not listed: which proxies they
/// select depends on the route, see [`route_to_conf`].
pub fn matching<'a, P: Targeted>(policies: &'a [(String, P)], proxy: &ProxyView<'_>) -> Vec<&'a (String, P)> {
    let mut out: Vec<&(String, P)> = policies
        .iter()
        .filter(|(_, p)| selects_proxy(p.target_ref(), proxy))
        .collect();
    out.sort_by(|a, b| policy_order((&a.0, a.1.target_ref()), (&b.0, b.1.target_ref())));
    out
}

/// The `to` entries of the policies selecting `proxy` that select
/// `destination`, in merge order (the last one wins).
pub fn to_contributions<'a, P: TargetRefPolicy>(
    policies: &'a [(String, P)],
    proxy: &ProxyView<'_>,
    destination: Destination<'_>,
) -> Vec<Contribution<'a, P::Conf>> {
    ordered_to(policies, proxy, destination, |p| p.to_entries())
}

/// The effective configuration of `proxy` towards `destination`: the merge
/// of [`to_contributions`], or `None` when no policy says anything.
pub fn to_conf<P: TargetRefPolicy>(
    policies: &[(String, P)],
    proxy: &ProxyView<'_>,
    destination: Destination<'_>,
) -> Result<Option<P::Conf>, MatchError> {
    merge_confs(to_contributions(policies, proxy, destination).iter().map(|c| c.conf))
}

/// The `from` entries for inbound `inbound` of `proxy` (an index into
/// [`ProxyView::inbounds`]), for every client, in merge order.
pub fn from_contributions<'a, P: TargetRefPolicy>(
    policies: &'a [(String, P)],
    proxy: &ProxyView<'_>,
    inbound: usize,
) -> Vec<Contribution<'a, P::Conf>> {
    let mut items = Vec::new();
    for (name, p) in policies {
        let top = p.target_ref();
        if !selects_inbound(top, proxy, inbound) {
            continue;
        }
        for (i, (target_ref, conf)) in p.from_entries().into_iter().enumerate() {
            let key = (specificity(top), Reverse(name.as_str()), i);
            let c = Contribution {
                policy: name.as_str(),
                target_ref,
                conf,
            };
            items.push((key, c));
        }
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.into_iter().map(|(_, c)| c).collect()
}

/// The effective configuration of inbound `inbound` of `proxy` for a client
/// with tags `client`. With empty `client` tags only `from` entries of kind
/// `Mesh` apply: the configuration every client gets.
pub fn from_conf<P: TargetRefPolicy>(
    policies: &[(String, P)],
    proxy: &ProxyView<'_>,
    inbound: usize,
    client: &Tags,
) -> Result<Option<P::Conf>, MatchError> {
    let contributions = from_contributions(policies, proxy, inbound);
    merge_confs(
        contributions
            .iter()
            .filter(|c| selects_client(c.target_ref, client))
            .map(|c| c.conf),
    )
}

/// The merged top-level `default` of the policies (MeshTrace, MeshMetric,
/// MeshProxyPatch) that select `proxy`.
pub fn single_item_conf<P: TargetRefPolicy>(
    policies: &[(String, P)],
    proxy: &ProxyView<'_>,
) -> Result<Option<P::Conf>, MatchError> {
    merge_confs(
        matching(policies, proxy)
            .into_iter()
            .filter_map(|(_, p)| p.single_item()),
    )
}

/// Whether a `from` reference selects a client with tags `client`.
pub fn selects_client(target: &TargetRef, client: &Tags) -> bool {
    Selector::of(target).is_some_and(|s| s.matches(client))
}

/// One MeshTrafficPermission rule for an inbound.
#[derive(Clone, Copy, Debug)]
pub struct Permission<'a> {
    /// The name of the policy.
    pub policy: &'a str,
    /// The clients it is about (`Mesh`, `MeshSubset`, `MeshService`,
    /// `MeshServiceSubset`).
    pub clients: &'a TargetRef,
    pub action: Action,
}

impl Permission<'_> {
    /// Whether this rule is about a client with tags `client`.
    pub fn applies_to(&self, client: &Tags) -> bool {
        selects_client(self.clients, client)
    }
}

/// The MeshTrafficPermission rules for inbound `inbound` of `proxy`, highest
/// precedence first: the first one that applies to a client decides.
pub fn traffic_permissions<'a>(
    policies: &'a [(String, MeshTrafficPermission)],
    proxy: &ProxyView<'_>,
    inbound: usize,
) -> Vec<Permission<'a>> {
    let mut out: Vec<Permission<'a>> = from_contributions(policies, proxy, inbound)
        .into_iter()
        .filter_map(|c| {
            c.conf.action.map(|action| Permission {
                policy: c.policy,
                clients: c.target_ref,
                action,
            })
        })
        .collect();
    out.reverse();
    out
}

/// The action for a client with tags `client` under `permissions` (from
/// [`traffic_permissions`]); `None` when no rule is about it.
pub fn permission_for(permissions: &[Permission<'_>], client: &Tags) -> Option<Action> {
    permissions.iter().find(|p| p.applies_to(client)).map(|p| p.action)
}

/// The MeshHTTPRoute rules for one request hostname (gateways only; a
/// sidecar's routes have no hostname).
#[derive(Clone, Debug, PartialEq)]
pub struct HostnameRules {
    /// `None` for rules of routes without `hostnames`.
    pub hostname: Option<String>,
    /// Highest precedence first; each rule's `default` is merged over the
    /// rules with the same `matches` from less specific routes.
    pub rules: Vec<meshhttproute::Rule>,
}

/// The effective MeshHTTPRoute rules of `proxy` towards `destination`,
/// grouped by hostname in order of first appearance.
///
/// As in Kuma (`meshhttproute/api/v1alpha1/helpers.go` and
/// `rules/merge.go`): the selecting `to` entries are taken in merge order;
/// rules with equal `matches` (compared as whole lists) are one rule whose
/// `default`s merge in that order and which takes the place of its most
/// specific occurrence; the result lists the most specific route's rules
/// first, each route's rules in their own order. Within a route the first
/// rule takes precedence, as in the Gateway API. To build Envoy routes,
/// order the matches with [`ordered_http_routes`].
pub fn http_routes(
    routes: &[(String, MeshHttpRoute)],
    proxy: &ProxyView<'_>,
    destination: Destination<'_>,
) -> Result<Vec<HostnameRules>, MatchError> {
    let tos = ordered_to(routes, proxy, destination, |r| {
        r.to.iter().map(|t| (&t.target_ref, t)).collect()
    });
    let mut groups: Vec<(Option<&str>, Vec<&meshhttproute::To>)> = Vec::new();
    for c in &tos {
        let keys: Vec<Option<&str>> = match &c.conf.hostnames {
            Some(h) if !h.is_empty() => h.iter().map(|h| Some(h.as_str())).collect(),
            _ => vec![None],
        };
        for key in keys {
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, list)) => list.push(c.conf),
                None => groups.push((key, vec![c.conf])),
            }
        }
    }
    groups
        .into_iter()
        .map(|(hostname, tos)| {
            Ok(HostnameRules {
                hostname: hostname.map(str::to_string),
                rules: merge_http_rules(&tos)?,
            })
        })
        .collect()
}

/// The effective MeshHTTPRoute rules of a sidecar towards `destination`:
/// those of routes without `hostnames` (see [`http_routes`]).
pub fn http_route_rules(
    routes: &[(String, MeshHttpRoute)],
    proxy: &ProxyView<'_>,
    destination: Destination<'_>,
) -> Result<Vec<meshhttproute::Rule>, MatchError> {
    Ok(http_routes(routes, proxy, destination)?
        .into_iter()
        .find(|g| g.hostname.is_none())
        .map(|g| g.rules)
        .unwrap_or_default())
}

/// Merges the rules of route `to` entries given in merge order.
fn merge_http_rules(tos: &[&meshhttproute::To]) -> Result<Vec<meshhttproute::Rule>, MatchError> {
    // Kuma reverses each entry's rules so that, within one route, the first
    // rule ends up last (highest precedence) before merging by key, and
    // reverses the result back.
    let mut acc: Vec<(&Vec<Match>, Vec<&meshhttproute::RuleConf>)> = Vec::new();
    for to in tos {
        for rule in to.rules.iter().flatten().rev() {
            let mut confs = match acc.iter().position(|(m, _)| **m == rule.matches) {
                Some(i) => acc.remove(i).1,
                None => Vec::new(),
            };
            confs.push(&rule.default);
            acc.push((&rule.matches, confs));
        }
    }
    acc.reverse();
    acc.into_iter()
        .map(|(matches, confs)| {
            Ok(meshhttproute::Rule {
                matches: matches.clone(),
                default: merge_confs(confs)?.unwrap_or_default(),
            })
        })
        .collect()
}

/// One match of one rule, in Envoy route order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouteEntry<'a> {
    pub matched: &'a Match,
    pub conf: &'a meshhttproute::RuleConf,
}

/// The matches of `rules` (from [`http_routes`]) one by one, most precise
/// first, as the Gateway API orders them and Kuma's `SortRules` does: a path
/// match before none, `Exact` before `PathPrefix` before
/// `RegularExpression`, a longer prefix or expression first; then a method
/// before none; then more header matches, then more query matches first.
/// Ties keep the rules' precedence order.
pub fn ordered_http_routes(rules: &[meshhttproute::Rule]) -> Vec<RouteEntry<'_>> {
    let mut out: Vec<RouteEntry<'_>> = rules
        .iter()
        .flat_map(|r| {
            r.matches.iter().map(move |m| RouteEntry {
                matched: m,
                conf: &r.default,
            })
        })
        .collect();
    out.sort_by(|a, b| compare_match(a.matched, b.matched));
    out
}

fn compare_match(a: &Match, b: &Match) -> Ordering {
    let rank = |t: PathMatchType| match t {
        PathMatchType::Exact => 0,
        PathMatchType::PathPrefix => 1,
        PathMatchType::RegularExpression => 2,
    };
    let path = match (&a.path, &b.path) {
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
        (Some(pa), Some(pb)) if pa.match_type == pb.match_type => match pa.match_type {
            PathMatchType::Exact => Ordering::Equal,
            _ => pb.value.len().cmp(&pa.value.len()),
        },
        (Some(pa), Some(pb)) => rank(pa.match_type).cmp(&rank(pb.match_type)),
    };
    let count = |headers: &Option<Vec<_>>| headers.as_ref().map_or(0, Vec::len);
    let queries = |q: &Option<Vec<_>>| q.as_ref().map_or(0, Vec::len);
    path.then_with(|| b.method.is_some().cmp(&a.method.is_some()))
        .then_with(|| count(&b.headers).cmp(&count(&a.headers)))
        .then_with(|| queries(&b.query_params).cmp(&queries(&a.query_params)))
}

/// The effective MeshTCPRoute rule of `proxy` towards `destination`: the
/// single rule of each selecting `to` entry merged in order, so the most
/// specific route's `backendRefs` win. An entry without rules stands for
/// "send to the destination itself", as in Kuma.
pub fn tcp_route_conf(
    routes: &[(String, MeshTcpRoute)],
    proxy: &ProxyView<'_>,
    destination: Destination<'_>,
) -> Result<Option<meshtcproute::RuleConf>, MatchError> {
    let tos = ordered_to(routes, proxy, destination, |r| {
        r.to.iter().map(|t| (&t.target_ref, t)).collect()
    });
    let confs: Vec<meshtcproute::RuleConf> = tos.iter().map(|c| tcp_rule(c.conf)).collect();
    merge_confs(&confs)
}

fn tcp_rule(to: &meshtcproute::To) -> meshtcproute::RuleConf {
    match to.rules.as_deref().and_then(<[_]>::first) {
        Some(rule) => rule.default.clone(),
        None => meshtcproute::RuleConf {
            backend_refs: vec![BackendRef {
                kind: to.target_ref.kind,
                name: to.target_ref.name.clone(),
                mesh: None,
                tags: to.target_ref.tags.clone(),
                proxy_types: None,
                port: None,
                weight: Some(1),
            }],
        },
    }
}

/// The effective configuration for the requests of `proxy` to `destination`
/// that take the MeshHTTPRoute rule with `matches`: [`to_conf`], then — most
/// specific of all — the `to` entries of policies whose top-level reference
/// names a route among `http_routes` that selects `proxy` and has a rule
/// with exactly these `matches` towards `destination` (by name, the first
/// in order wins). As in Kuma 2.7, the `targetRef` of those entries is not
/// looked at: the route decides where they apply.
pub fn route_to_conf<P: TargetRefPolicy>(
    policies: &[(String, P)],
    http_routes: &[(String, MeshHttpRoute)],
    proxy: &ProxyView<'_>,
    destination: Destination<'_>,
    matches: &[Match],
) -> Result<Option<P::Conf>, MatchError> {
    let mut confs: Vec<&P::Conf> = to_contributions(policies, proxy, destination)
        .iter()
        .map(|c| c.conf)
        .collect();
    let mut on_route: Vec<&(String, P)> = policies
        .iter()
        .filter(|(_, p)| {
            let top = p.target_ref();
            top.kind == TargetRefKind::MeshHttpRoute
                && http_routes.iter().any(|(name, route)| {
                    top.name.as_deref() == Some(name.as_str())
                        && selects_proxy(&route.target_ref, proxy)
                        && route.to.iter().any(|to| {
                            destination.selected_by(&to.target_ref)
                                && to.rules.iter().flatten().any(|r| r.matches == matches)
                        })
                })
        })
        .collect();
    on_route.sort_by(|a, b| b.0.cmp(&a.0));
    confs.extend(on_route.iter().flat_map(|(_, p)| p.to_entries()).map(|(_, c)| c));
    merge_confs(confs)
}

/// Merges `confs` in order with [`merge_json`]; `None` when there are none.
pub fn merge_confs<'c, C>(confs: impl IntoIterator<Item = &'c C>) -> Result<Option<C>, MatchError>
where
    C: Serialize + DeserializeOwned + 'c,
{
    let error = |e: serde_json::Error| MatchError::Merge {
        conf: std::any::type_name::<C>(),
        message: e.to_string(),
    };
    let mut acc: Option<Value> = None;
    for conf in confs {
        let value = serde_json::to_value(conf).map_err(error)?;
        match &mut acc {
            None => acc = Some(value),
            Some(base) => merge_json(base, &value),
        }
    }
    acc.map(|v| serde_json::from_value(v).map_err(error)).transpose()
}

/// Merges `overlay` into `base` the way policy `default`s merge: JSON merge
/// patch (RFC 7386) with one exception.
///
/// - Objects merge key by key, recursively; a key only in `base` survives.
/// - A `null` in `overlay` deletes the key from `base`.
/// - Anything else in `overlay` — a scalar, or a **list** — replaces what
///   `base` had: lists are not merged element by element (`[]` clears one).
/// - Exception: a list under a key named `append…` followed by an uppercase
///   letter (`appendModifications`, `appendProfiles`) is appended to the list
///   `base` has there, so every policy's additions accumulate.
pub fn merge_json(base: &mut Value, overlay: &Value) {
    let Value::Object(patch) = overlay else {
        *base = overlay.clone();
        return;
    };
    if !base.is_object() {
        *base = Value::Object(Map::new());
    }
    let Value::Object(target) = base else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match target.get_mut(key) {
            Some(existing) => match (existing.as_array_mut(), value.as_array()) {
                (Some(list), Some(more)) if is_append_key(key) => list.extend(more.iter().cloned()),
                _ => merge_json(existing, value),
            },
            None => {
                // Merging into nothing drops the nulls nested in objects.
                let mut fresh = Value::Null;
                merge_json(&mut fresh, value);
                target.insert(key.clone(), fresh);
            }
        }
    }
}

fn is_append_key(key: &str) -> bool {
    key.strip_prefix("append")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_uppercase())
}

/// The `to` entries (as `entries` lists them) of the policies selecting
/// `proxy` that select `destination`, in merge order: for routes, whose
/// entries are not `default`s, and for inspection.
pub fn ordered_to<'a, P: Targeted, T>(
    policies: &'a [(String, P)],
    proxy: &ProxyView<'_>,
    destination: Destination<'_>,
    entries: impl Fn(&'a P) -> Vec<(&'a TargetRef, &'a T)>,
) -> Vec<Contribution<'a, T>> {
    let mut items = Vec::new();
    for (name, p) in policies {
        let top = p.target_ref();
        if !selects_proxy(top, proxy) {
            continue;
        }
        for (i, (target_ref, conf)) in entries(p).into_iter().enumerate() {
            if !destination.selected_by(target_ref) {
                continue;
            }
            let key = (specificity(top), kind_rank(target_ref.kind), Reverse(name.as_str()), i);
            let c = Contribution {
                policy: name.as_str(),
                target_ref,
                conf,
            };
            items.push((key, c));
        }
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.into_iter().map(|(_, c)| c).collect()
}

/// How narrow a kind of reference is (higher is narrower).
fn kind_rank(kind: TargetRefKind) -> u8 {
    match kind {
        TargetRefKind::Mesh => 1,
        TargetRefKind::MeshSubset => 2,
        TargetRefKind::MeshGateway => 3,
        TargetRefKind::MeshService => 4,
        TargetRefKind::MeshServiceSubset => 5,
        TargetRefKind::MeshHttpRoute => 6,
    }
}

/// How narrow a top-level reference is: its kind, then its number of tags.
fn specificity(target: &TargetRef) -> (u8, usize) {
    (kind_rank(target.kind), target.tags.as_ref().map_or(0, BTreeMap::len))
}

/// The merge order of two policies: less specific first; of two equally
/// specific ones, the name that sorts first comes last (and wins).
fn policy_order(a: (&str, &TargetRef), b: (&str, &TargetRef)) -> Ordering {
    specificity(a.1).cmp(&specificity(b.1)).then_with(|| b.0.cmp(a.0))
}

/// A reference read as a tag selector: `Mesh`, `MeshSubset`, `MeshService`
/// and `MeshServiceSubset` are; `MeshGateway` and `MeshHTTPRoute` are not.
struct Selector<'a> {
    service: Option<&'a str>,
    tags: Option<&'a Tags>,
}

impl<'a> Selector<'a> {
    fn of(target: &'a TargetRef) -> Option<Self> {
        let (service, tags) = match target.kind {
            TargetRefKind::Mesh => (None, None),
            TargetRefKind::MeshSubset => (None, target.tags.as_ref()),
            // A service reference without a name selects nothing.
            TargetRefKind::MeshService => (Some(target.name.as_deref()?), None),
            TargetRefKind::MeshServiceSubset => (Some(target.name.as_deref()?), target.tags.as_ref()),
            TargetRefKind::MeshGateway | TargetRefKind::MeshHttpRoute => return None,
        };
        Some(Selector { service, tags })
    }

    fn matches(&self, tags: &Tags) -> bool {
        let service_ok = self.service.is_none_or(|s| tag_matches(s, tags.get(SERVICE_TAG)));
        service_ok
            && self
                .tags
                .into_iter()
                .flatten()
                .all(|(k, v)| tag_matches(v, tags.get(k)))
    }
}

fn tag_matches(wanted: &str, have: Option<&String>) -> bool {
    have.is_some_and(|h| wanted == MATCH_ALL || wanted == h)
}

/// Checks the parts of a top-level reference that do not depend on tags:
/// the mesh and the proxy types.
fn mesh_and_type_match(target: &TargetRef, proxy: &ProxyView<'_>) -> bool {
    let mesh_ok = target.mesh.as_deref().is_none_or(|m| m == proxy.mesh);
    let type_ok = target
        .proxy_types
        .as_ref()
        .is_none_or(|types| types.is_empty() || types.contains(&proxy.proxy_type));
    mesh_ok && type_ok
}

/// Whether the policy `spec` (validated, of any type) affects the dataplane
/// `dataplane` of `mesh`: its top-level `targetRef` selects it. Policies
/// whose reference names a MeshHTTPRoute apply where the route does, which
/// is not decided here (`false`). `Err` when `spec` has no reference that
/// decodes.
pub fn affects(spec: &Value, mesh: &str, dataplane: &crate::dataplane::Dataplane) -> Result<bool, String> {
    let target: TargetRef = spec
        .get("targetRef")
        .cloned()
        .ok_or_else(|| "the policy has no targetRef".to_string())
        .and_then(|t| serde_json::from_value(t).map_err(|e| format!("targetRef: {e}")))?;
    Ok(selects_proxy(&target, &ProxyView::new(mesh, dataplane)))
}

/// Whether a top-level reference selects `proxy` (for `to` rules and
/// single-item policies); the dataplanes a policy affects are those its
/// top-level reference selects.
pub fn selects_proxy(target: &TargetRef, proxy: &ProxyView<'_>) -> bool {
    if !mesh_and_type_match(target, proxy) {
        return false;
    }
    match target.kind {
        TargetRefKind::Mesh => true,
        TargetRefKind::MeshGateway => {
            let Some(gateway) = proxy.gateway else {
                return false;
            };
            let named = target.name.is_some() && target.name.as_deref() == proxy.gateway_service();
            named
                && target
                    .tags
                    .iter()
                    .flatten()
                    .all(|(k, v)| tag_matches(v, gateway.get(k)))
        }
        _ => Selector::of(target).is_some_and(|s| proxy.tag_sets().any(|tags| s.matches(tags))),
    }
}

/// Whether a top-level reference selects inbound `inbound` of `proxy` (for
/// `from` rules).
fn selects_inbound(target: &TargetRef, proxy: &ProxyView<'_>, inbound: usize) -> bool {
    let Some(tags) = proxy.inbounds.get(inbound) else {
        return false;
    };
    mesh_and_type_match(target, proxy) && Selector::of(target).is_some_and(|s| s.matches(tags))
}

fn with_default<C>(entries: &[Entry<C>]) -> Vec<(&TargetRef, &C)> {
    entries
        .iter()
        .filter_map(|e| e.default.as_ref().map(|c| (&e.target_ref, c)))
        .collect()
}

macro_rules! targeted {
    ($($ty:ty),* $(,)?) => {
        $(impl Targeted for $ty {
            fn target_ref(&self) -> &TargetRef {
                &self.target_ref
            }
        })*
    };
}

targeted!(
    meshaccesslog::MeshAccessLog,
    meshcircuitbreaker::MeshCircuitBreaker,
    meshfaultinjection::MeshFaultInjection,
    meshhealthcheck::MeshHealthCheck,
    MeshHttpRoute,
    meshloadbalancingstrategy::MeshLoadBalancingStrategy,
    meshmetric::MeshMetric,
    meshproxypatch::MeshProxyPatch,
    meshratelimit::MeshRateLimit,
    meshretry::MeshRetry,
    MeshTcpRoute,
    meshtimeout::MeshTimeout,
    meshtrace::MeshTrace,
    MeshTrafficPermission,
);

/// Policies with `to` and `from` lists of [`Entry`].
macro_rules! to_and_from {
    ($($ty:ty => $conf:ty),* $(,)?) => {
        $(impl TargetRefPolicy for $ty {
            type Conf = $conf;
            fn to_entries(&self) -> Vec<(&TargetRef, &$conf)> {
                with_default(&self.to)
            }
            fn from_entries(&self) -> Vec<(&TargetRef, &$conf)> {
                with_default(&self.from)
            }
        })*
    };
}

to_and_from!(
    meshaccesslog::MeshAccessLog => meshaccesslog::Conf,
    meshcircuitbreaker::MeshCircuitBreaker => meshcircuitbreaker::Conf,
    meshfaultinjection::MeshFaultInjection => meshfaultinjection::Conf,
    meshratelimit::MeshRateLimit => meshratelimit::Conf,
);

/// Policies with only a `to` list of [`Entry`].
macro_rules! to_only {
    ($($ty:ty => $conf:ty),* $(,)?) => {
        $(impl TargetRefPolicy for $ty {
            type Conf = $conf;
            fn to_entries(&self) -> Vec<(&TargetRef, &$conf)> {
                with_default(&self.to)
            }
        })*
    };
}

to_only!(
    meshhealthcheck::MeshHealthCheck => meshhealthcheck::Conf,
    meshloadbalancingstrategy::MeshLoadBalancingStrategy => meshloadbalancingstrategy::Conf,
    meshretry::MeshRetry => meshretry::Conf,
);

/// Policies with a single top-level `default`.
macro_rules! single_item {
    ($($ty:ty => $conf:ty),* $(,)?) => {
        $(impl TargetRefPolicy for $ty {
            type Conf = $conf;
            fn single_item(&self) -> Option<&$conf> {
                self.default.as_ref()
            }
        })*
    };
}

single_item!(
    meshmetric::MeshMetric => meshmetric::Conf,
    meshproxypatch::MeshProxyPatch => meshproxypatch::Conf,
    meshtrace::MeshTrace => meshtrace::Conf,
);

impl TargetRefPolicy for MeshTrafficPermission {
    type Conf = super::meshtrafficpermission::Conf;
    fn from_entries(&self) -> Vec<(&TargetRef, &Self::Conf)> {
        with_default(&self.from)
    }
}

impl TargetRefPolicy for meshtimeout::MeshTimeout {
    type Conf = meshtimeout::Conf;
    fn to_entries(&self) -> Vec<(&TargetRef, &Self::Conf)> {
        timeout_entries(&self.to)
    }
    fn from_entries(&self) -> Vec<(&TargetRef, &Self::Conf)> {
        timeout_entries(&self.from)
    }
}

fn timeout_entries(entries: &[meshtimeout::Entry]) -> Vec<(&TargetRef, &meshtimeout::Conf)> {
    entries
        .iter()
        .filter_map(|e| e.default.as_ref().map(|c| (&e.target_ref, c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::defaults::initial_policies;
    use crate::mesh::Mesh;
    use crate::policy::meshcircuitbreaker::MeshCircuitBreaker;
    use crate::policy::meshfaultinjection::MeshFaultInjection;
    use crate::policy::meshproxypatch::MeshProxyPatch;
    use crate::policy::meshretry::MeshRetry;
    use crate::policy::meshtimeout::MeshTimeout;
    use crate::policy::meshtrace::MeshTrace;
    use crate::types::ResourceType;

    fn policy<P: DeserializeOwned>(name: &str, spec: Value) -> (String, P) {
        match serde_json::from_value(spec) {
            Ok(p) => (name.to_string(), p),
            Err(e) => panic!("{name}: {e}"),
        }
    }

    /// The default policies of type `kind` that every new mesh gets.
    fn defaults<P: DeserializeOwned>(kind: ResourceType) -> Vec<(String, P)> {
        initial_policies("default", &Mesh::default())
            .into_iter()
            .filter(|d| d.key.kind == kind)
            .map(|d| policy(&d.key.name, d.spec))
            .collect()
    }

    fn sidecar(inbounds: &[Value]) -> Dataplane {
        let inbound: Vec<Value> = inbounds
            .iter()
            .enumerate()
            .map(|(i, tags)| json!({"port": 8080 + i, "tags": tags}))
            .collect();
        serde_json::from_value(json!({"networking": {"address": "10.0.0.1", "inbound": inbound}})).unwrap()
    }

    fn service(name: &str) -> Dataplane {
        sidecar(&[json!({"kuma.io/service": name})])
    }

    fn gateway(name: &str) -> Dataplane {
        serde_json::from_value(json!({"networking": {"address": "10.0.0.2",
            "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": name}}}}))
        .unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn js<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    fn to<P: TargetRefPolicy>(policies: &[(String, P)], proxy: &ProxyView<'_>, dest: &str) -> Value {
        js(&to_conf(policies, proxy, Destination::Service(dest)).unwrap())
    }

    fn names<P>(list: &[&(String, P)]) -> Vec<String> {
        list.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Every ordering of `items`.
    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        if items.is_empty() {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first.clone());
                out.push(tail);
            }
        }
        out
    }

    const SIDECAR_TO: &str = r#"{"connectionTimeout": "5s", "idleTimeout": "1h",
        "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"}}"#;

    fn sidecar_to() -> Value {
        serde_json::from_str(SIDECAR_TO).unwrap()
    }

    #[test]
    fn merge_json_is_a_merge_patch() {
        // The example of Kuma's "Merging configuration" documentation.
        let mut base = json!({"conf": 1, "sub": {"array": [1, 2, 3], "other": 50, "other-array": [3, 4, 5]}});
        merge_json(
            &mut base,
            &json!({"sub": {"array": [], "other": null, "other-array": [5, 6], "extra": 2}}),
        );
        assert_eq!(
            base,
            json!({"conf": 1, "sub": {"array": [], "other-array": [5, 6], "extra": 2}})
        );

        let mut base = json!({"a": 1, "b": {"c": 1}});
        merge_json(
            &mut base,
            &json!({"a": {"x": 1, "y": null}, "b": 2, "n": {"m": null, "k": [null]}}),
        );
        assert_eq!(base, json!({"a": {"x": 1}, "b": 2, "n": {"k": [null]}}));
        merge_json(&mut base, &json!([1]));
        assert_eq!(base, json!([1]));
    }

    #[test]
    fn append_lists_accumulate() {
        let mut base = json!({"appendModifications": [1], "list": [1], "appendix": [1],
                              "sidecar": {"profiles": {"appendProfiles": ["a"]}}});
        merge_json(
            &mut base,
            &json!({"appendModifications": [2, 3], "list": [2], "appendix": [2],
                    "sidecar": {"profiles": {"appendProfiles": ["b"]}}}),
        );
        assert_eq!(
            base,
            json!({"appendModifications": [1, 2, 3], "list": [2], "appendix": [2],
                   "sidecar": {"profiles": {"appendProfiles": ["a", "b"]}}})
        );
    }

    #[test]
    fn proxy_views() {
        let dp = service("web");
        let view = ProxyView::new("default", &dp);
        assert_eq!(view.proxy_type, ProxyType::Sidecar);
        assert_eq!(view.inbounds.len(), 1);
        assert_eq!(view.gateway_service(), None);
        let gw = gateway("edge");
        let view = ProxyView::new("default", &gw);
        assert_eq!(view.proxy_type, ProxyType::Gateway);
        assert_eq!(view.gateway_service(), Some("edge"));
        assert!(view.inbounds.is_empty());
    }

    #[test]
    fn default_policies_give_every_sidecar_the_defaults() {
        let timeouts: Vec<(String, MeshTimeout)> = defaults(ResourceType::MeshTimeout);
        let retries: Vec<(String, MeshRetry)> = defaults(ResourceType::MeshRetry);
        let breakers: Vec<(String, MeshCircuitBreaker)> = defaults(ResourceType::MeshCircuitBreaker);
        assert_eq!((timeouts.len(), retries.len(), breakers.len()), (2, 1, 1));
        let web = service("web");
        let v2 = sidecar(&[
            json!({"kuma.io/service": "api", "version": "v2"}),
            json!({"kuma.io/service": "admin"}),
        ]);
        for dp in [&web, &v2] {
            let proxy = ProxyView::new("default", dp);
            assert_eq!(names(&matching(&timeouts, &proxy)), ["mesh-timeout-all-default"]);
            for dest in ["backend", "db", "web", "api"] {
                assert_eq!(to(&timeouts, &proxy, dest), sidecar_to(), "{dest}");
                assert_eq!(
                    to(&retries, &proxy, dest),
                    json!({"tcp": {"maxConnectAttempt": 5},
                           "http": {"numRetries": 5, "perTryTimeout": "16s",
                                    "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}},
                           "grpc": {"numRetries": 5, "perTryTimeout": "16s",
                                    "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}}})
                );
                assert_eq!(
                    to(&breakers, &proxy, dest),
                    json!({"connectionLimits": {"maxConnections": 1024, "maxPendingRequests": 1024,
                                                "maxRetries": 3, "maxRequests": 1024}})
                );
            }
            for inbound in 0..proxy.inbounds.len() {
                let from = from_conf(&timeouts, &proxy, inbound, &Tags::new()).unwrap();
                assert_eq!(
                    js(&from),
                    json!({"connectionTimeout": "10s", "idleTimeout": "2h",
                           "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"}})
                );
            }
        }
    }

    #[test]
    fn gateway_timeouts_apply_to_gateways_only() {
        let timeouts: Vec<(String, MeshTimeout)> = defaults(ResourceType::MeshTimeout);
        let gw = gateway("edge");
        let proxy = ProxyView::new("default", &gw);
        assert_eq!(
            names(&matching(&timeouts, &proxy)),
            ["mesh-gateways-timeout-all-default"]
        );
        let expected = json!({"idleTimeout": "1h", "http": {"streamIdleTimeout": "5s"}});
        assert_eq!(js(&to_conf(&timeouts, &proxy, Destination::Mesh).unwrap()), expected);
        assert_eq!(to(&timeouts, &proxy, "backend"), expected);
        // A sidecar never sees the gateway values.
        let web = service("web");
        let proxy = ProxyView::new("default", &web);
        assert_eq!(
            to(&timeouts, &proxy, "backend")["http"].get("requestHeadersTimeout"),
            None
        );
        assert_eq!(to(&timeouts, &proxy, "backend"), sidecar_to());
    }

    #[test]
    fn a_service_entry_overrides_one_field_for_one_destination() {
        let mut timeouts: Vec<(String, MeshTimeout)> = defaults(ResourceType::MeshTimeout);
        // Its name sorts after the default's: the entry kind, not the name,
        // makes it win.
        timeouts.push(policy(
            "timeout-backend",
            json!({"targetRef": {"kind": "Mesh"},
                   "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                           "default": {"http": {"requestTimeout": "2s"}}}]}),
        ));
        let web = service("web");
        let proxy = ProxyView::new("default", &web);
        let mut expected = sidecar_to();
        expected["http"]["requestTimeout"] = json!("2s");
        assert_eq!(to(&timeouts, &proxy, "backend"), expected);
        assert_eq!(to(&timeouts, &proxy, "db"), sidecar_to());
        let contributions = to_contributions(&timeouts, &proxy, Destination::Service("backend"));
        let by: Vec<&str> = contributions.iter().map(|c| c.policy).collect();
        assert_eq!(by, ["mesh-timeout-all-default", "timeout-backend"]);

        // The same from a top-level reference to the client's own service.
        let mut timeouts: Vec<(String, MeshTimeout)> = defaults(ResourceType::MeshTimeout);
        timeouts.push(policy(
            "a-web",
            json!({"targetRef": {"kind": "MeshService", "name": "web"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "3s"}}}]}),
        ));
        expected["http"]["requestTimeout"] = json!("3s");
        assert_eq!(to(&timeouts, &proxy, "db"), expected);
        let other = service("other");
        let proxy = ProxyView::new("default", &other);
        assert_eq!(to(&timeouts, &proxy, "db"), sidecar_to());
    }

    #[test]
    fn mesh_subset_selects_by_tags() {
        let mut retries: Vec<(String, MeshRetry)> = defaults(ResourceType::MeshRetry);
        retries.push(policy(
            "v2",
            json!({"targetRef": {"kind": "MeshSubset", "tags": {"version": "v2"}},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {"maxConnectAttempt": 9}}}]}),
        ));
        retries.push(policy(
            "any-version",
            json!({"targetRef": {"kind": "MeshSubset", "tags": {"version": "*"}},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": 1}}}]}),
        ));
        let attempts = |dp: &Dataplane| {
            let proxy = ProxyView::new("default", dp);
            let conf = to(&retries, &proxy, "backend");
            (
                conf["tcp"]["maxConnectAttempt"].clone(),
                conf["http"]["numRetries"].clone(),
            )
        };
        let v2 = sidecar(&[json!({"kuma.io/service": "web", "version": "v2"})]);
        let v1 = sidecar(&[json!({"kuma.io/service": "web", "version": "v1"})]);
        let none = service("web");
        // One inbound in v2 is enough for outbound rules.
        let mixed = sidecar(&[
            json!({"kuma.io/service": "a"}),
            json!({"kuma.io/service": "b", "version": "v2"}),
        ]);
        assert_eq!(attempts(&v2), (json!(9), json!(1)));
        assert_eq!(attempts(&v1), (json!(5), json!(1)));
        assert_eq!(attempts(&none), (json!(5), json!(5)));
        assert_eq!(attempts(&mixed), (json!(9), json!(1)));
    }

    /// Top-level references from least to most specific, all selecting the
    /// proxy `web` {version: v1, zone: east}.
    fn ladder() -> Vec<Value> {
        vec![
            json!({"kind": "Mesh"}),
            json!({"kind": "MeshSubset", "tags": {"version": "v1"}}),
            json!({"kind": "MeshSubset", "tags": {"version": "v1", "zone": "east"}}),
            json!({"kind": "MeshService", "name": "web"}),
            json!({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1"}}),
            json!({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1", "zone": "east"}}),
        ]
    }

    #[test]
    fn the_more_specific_policy_wins_and_the_other_fields_survive() {
        let dp = sidecar(&[json!({"kuma.io/service": "web", "version": "v1", "zone": "east"})]);
        let proxy = ProxyView::new("default", &dp);
        let ladder = ladder();
        for (i, low) in ladder.iter().enumerate() {
            for high in &ladder[i + 1..] {
                // The less specific policy has the name that wins ties.
                let policies: Vec<(String, MeshCircuitBreaker)> = vec![
                    policy(
                        "z-high",
                        json!({"targetRef": high, "to": [{"targetRef": {"kind": "Mesh"},
                               "default": {"connectionLimits": {"maxConnections": 2, "maxRequests": 20}}}]}),
                    ),
                    policy(
                        "a-low",
                        json!({"targetRef": low, "to": [{"targetRef": {"kind": "Mesh"},
                               "default": {"connectionLimits": {"maxConnections": 1, "maxRetries": 10}}}]}),
                    ),
                ];
                assert_eq!(
                    to(&policies, &proxy, "backend"),
                    json!({"connectionLimits": {"maxConnections": 2, "maxRetries": 10, "maxRequests": 20}}),
                    "{low} < {high}"
                );
                assert_eq!(names(&matching(&policies, &proxy)), ["a-low", "z-high"]);
            }
        }
    }

    #[test]
    fn equally_specific_policies_the_first_name_wins() {
        let retry = |name: &str, n: u32| -> (String, MeshRetry) {
            policy(
                name,
                json!({"targetRef": {"kind": "Mesh"},
                       "to": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {"maxConnectAttempt": n}}}]}),
            )
        };
        let policies = vec![retry("a-retry", 1), retry("b-retry", 2)];
        let web = service("web");
        let proxy = ProxyView::new("default", &web);
        assert_eq!(names(&matching(&policies, &proxy)), ["b-retry", "a-retry"]);
        assert_eq!(to(&policies, &proxy, "x")["tcp"]["maxConnectAttempt"], 1);
    }

    #[test]
    fn service_entries_override_mesh_entries_of_equal_policies() {
        let cb = |name: &str, to: Value| -> (String, MeshCircuitBreaker) {
            policy(name, json!({"targetRef": {"kind": "Mesh"}, "to": to}))
        };
        let limit = |n: u32| json!({"connectionLimits": {"maxConnections": n}});
        let web = service("web");
        let proxy = ProxyView::new("default", &web);
        // Within one policy, whatever the list order.
        let one = vec![cb(
            "p",
            json!([{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": limit(1)},
                   {"targetRef": {"kind": "Mesh"}, "default": limit(2)}]),
        )];
        assert_eq!(to(&one, &proxy, "backend"), limit(1));
        assert_eq!(to(&one, &proxy, "db"), limit(2));
        // Across policies, whatever the names.
        let two = vec![
            cb(
                "z",
                json!([{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": limit(1)}]),
            ),
            cb("a", json!([{"targetRef": {"kind": "Mesh"}, "default": limit(2)}])),
        ];
        assert_eq!(to(&two, &proxy, "backend"), limit(1));
        assert_eq!(to(&two, &proxy, "db"), limit(2));
        // Equal entries of one policy: the later one wins.
        let same = vec![cb(
            "p",
            json!([{"targetRef": {"kind": "Mesh"}, "default": limit(1)},
                   {"targetRef": {"kind": "Mesh"}, "default": limit(2)}]),
        )];
        assert_eq!(to(&same, &proxy, "db"), limit(2));
    }

    #[test]
    fn the_result_does_not_depend_on_the_input_order() {
        let mut input: Vec<(String, MeshTimeout)> = defaults(ResourceType::MeshTimeout);
        let specs = [
            ("a", json!({"kind": "Mesh"}), "backend", "1s"),
            ("b", json!({"kind": "Mesh"}), "db", "2s"),
            (
                "c",
                json!({"kind": "MeshSubset", "tags": {"version": "v1"}}),
                "backend",
                "3s",
            ),
            (
                "d",
                json!({"kind": "MeshSubset", "tags": {"version": "v1"}}),
                "db",
                "4s",
            ),
            ("e", json!({"kind": "MeshService", "name": "web"}), "", "5s"),
        ];
        for (name, top, dest, value) in specs {
            let target = if dest.is_empty() {
                json!({"kind": "Mesh"})
            } else {
                json!({"kind": "MeshService", "name": dest})
            };
            input.push(policy(
                name,
                json!({"targetRef": top,
                       "to": [{"targetRef": target, "default": {"idleTimeout": value}},
                              {"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": value}}],
                       "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": value}}]}),
            ));
        }
        let dp = sidecar(&[json!({"kuma.io/service": "web", "version": "v1"})]);
        let proxy = ProxyView::new("default", &dp);
        let outcome = |policies: &[(String, MeshTimeout)]| -> Vec<Value> {
            let mut out: Vec<Value> = ["backend", "db", "other"]
                .iter()
                .map(|d| to(policies, &proxy, d))
                .collect();
            out.push(js(&from_conf(policies, &proxy, 0, &Tags::new()).unwrap()));
            out.push(json!(names(&matching(policies, &proxy))));
            out
        };
        let expected = outcome(&input);
        assert_eq!(expected[0]["idleTimeout"], "5s");
        assert_eq!(expected[0]["connectionTimeout"], "5s");
        let perms = permutations(&input);
        assert_eq!(perms.len(), 5040);
        for order in perms {
            assert_eq!(outcome(&order), expected);
        }
    }

    #[test]
    fn from_rules_apply_to_the_selected_inbounds() {
        let mut timeouts: Vec<(String, MeshTimeout)> = defaults(ResourceType::MeshTimeout);
        timeouts.push(policy(
            "admin-idle",
            json!({"targetRef": {"kind": "MeshService", "name": "admin"},
                   "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1m"}}]}),
        ));
        let dp = sidecar(&[json!({"kuma.io/service": "web"}), json!({"kuma.io/service": "admin"})]);
        let proxy = ProxyView::new("default", &dp);
        let web = js(&from_conf(&timeouts, &proxy, 0, &Tags::new()).unwrap());
        let admin = js(&from_conf(&timeouts, &proxy, 1, &Tags::new()).unwrap());
        assert_eq!(web["idleTimeout"], "2h");
        assert_eq!(admin["idleTimeout"], "1m");
        assert_eq!(admin["connectionTimeout"], "10s");
        assert!(from_conf(&timeouts, &proxy, 2, &Tags::new()).unwrap().is_none());
    }

    #[test]
    fn from_rules_depend_on_the_client() {
        let faults: Vec<(String, MeshFaultInjection)> = vec![policy(
            "faults",
            json!({"targetRef": {"kind": "MeshService", "name": "backend"},
                   "from": [{"targetRef": {"kind": "Mesh"},
                             "default": {"http": [{"delay": {"value": "1s", "percentage": 10}}]}},
                            {"targetRef": {"kind": "MeshService", "name": "frontend"},
                             "default": {"http": [{"abort": {"httpStatus": 503, "percentage": 50}}]}}]}),
        )];
        let dp = service("backend");
        let proxy = ProxyView::new("default", &dp);
        let front = from_conf(&faults, &proxy, 0, &tags(&[("kuma.io/service", "frontend")])).unwrap();
        let other = from_conf(&faults, &proxy, 0, &tags(&[("kuma.io/service", "other")])).unwrap();
        // Lists are replaced, not merged.
        assert_eq!(
            js(&front),
            json!({"http": [{"abort": {"httpStatus": 503, "percentage": 50}}]})
        );
        assert_eq!(
            js(&other),
            json!({"http": [{"delay": {"value": "1s", "percentage": 10}}]})
        );
        assert_eq!(from_contributions(&faults, &proxy, 0).len(), 2);
    }

    #[test]
    fn traffic_permissions_in_precedence_order() {
        let mtp = |name: &str, top: Value, from: Value| -> (String, MeshTrafficPermission) {
            policy(name, json!({"targetRef": top, "from": from}))
        };
        let rule = |target: Value, action: &str| json!({"targetRef": target, "default": {"action": action}});
        let policies = vec![
            mtp(
                "backend",
                json!({"kind": "MeshService", "name": "backend"}),
                json!([
                    rule(json!({"kind": "MeshService", "name": "frontend"}), "Allow"),
                    rule(json!({"kind": "MeshSubset", "tags": {"env": "dev"}}), "Deny")
                ]),
            ),
            mtp(
                "zone-east",
                json!({"kind": "Mesh"}),
                json!([rule(
                    json!({"kind": "MeshSubset", "tags": {"kuma.io/zone": "east"}}),
                    "AllowWithShadowDeny"
                )]),
            ),
            mtp(
                "deny-all",
                json!({"kind": "Mesh"}),
                json!([rule(json!({"kind": "Mesh"}), "Deny")]),
            ),
        ];
        let dp = service("backend");
        let proxy = ProxyView::new("default", &dp);
        let perms = traffic_permissions(&policies, &proxy, 0);
        let order: Vec<(&str, Action)> = perms.iter().map(|p| (p.policy, p.action)).collect();
        assert_eq!(
            order,
            [
                ("backend", Action::Deny),
                ("backend", Action::Allow),
                ("deny-all", Action::Deny),
                ("zone-east", Action::AllowWithShadowDeny),
            ]
        );
        let front = tags(&[("kuma.io/service", "frontend"), ("env", "prod")]);
        let front_dev = tags(&[("kuma.io/service", "frontend"), ("env", "dev")]);
        let east = tags(&[("kuma.io/service", "x"), ("kuma.io/zone", "east")]);
        assert_eq!(permission_for(&perms, &front), Some(Action::Allow));
        assert_eq!(permission_for(&perms, &front_dev), Some(Action::Deny));
        // deny-all sorts before zone-east by name, so it wins.
        assert_eq!(permission_for(&perms, &east), Some(Action::Deny));
        // The merged view agrees with the list.
        for client in [&front, &front_dev, &east] {
            let merged = from_conf(&policies, &proxy, 0, client).unwrap().and_then(|c| c.action);
            assert_eq!(merged, permission_for(&perms, client));
        }

        // Kuma's documented example: the later `from` entry wins.
        let doc = vec![mtp(
            "example-with-tags",
            json!({"kind": "Mesh"}),
            json!([
                rule(
                    json!({"kind": "MeshSubset", "tags": {"kuma.io/zone": "us-east"}}),
                    "Allow"
                ),
                rule(json!({"kind": "MeshSubset", "tags": {"env": "dev"}}), "Deny")
            ]),
        )];
        let perms = traffic_permissions(&doc, &proxy, 0);
        let both = tags(&[("kuma.io/zone", "us-east"), ("env", "dev")]);
        assert_eq!(permission_for(&perms, &both), Some(Action::Deny));
        assert_eq!(
            permission_for(&perms, &tags(&[("kuma.io/zone", "us-east")])),
            Some(Action::Allow)
        );
        assert_eq!(permission_for(&perms, &tags(&[("kuma.io/zone", "west")])), None);
        // Another service's proxy is not selected by "backend".
        let web = service("web");
        let perms = traffic_permissions(&policies, &ProxyView::new("default", &web), 0);
        assert_eq!(permission_for(&perms, &front), Some(Action::Deny));
        assert_eq!(perms.len(), 2);
    }

    fn http_rule(path: (&str, &str), version: &str, extra: Value) -> Value {
        let mut default = json!({"backendRefs": [
            {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": version}}]});
        merge_json(&mut default, &extra);
        json!({"matches": [{"path": {"type": path.0, "value": path.1}}], "default": default})
    }

    fn backend_version(rule: &meshhttproute::Rule) -> String {
        let refs = rule.default.backend_refs.as_deref().unwrap_or_default();
        refs[0].tags.as_ref().unwrap()["version"].clone()
    }

    #[test]
    fn http_routes_of_two_policies_for_one_destination() {
        let header = json!({"filters": [{"type": "RequestHeaderModifier",
                                          "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}]});
        let routes: Vec<(String, MeshHttpRoute)> = vec![
            policy(
                "web-routes",
                json!({"targetRef": {"kind": "MeshService", "name": "web"},
                       "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                               "rules": [http_rule(("PathPrefix", "/api"), "v2", json!({})),
                                         http_rule(("Exact", "/health"), "v3", json!({}))]}]}),
            ),
            policy(
                "all-routes",
                json!({"targetRef": {"kind": "Mesh"},
                       "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                               "rules": [http_rule(("PathPrefix", "/api"), "v1", header.clone()),
                                         http_rule(("PathPrefix", "/"), "v1", json!({}))]}]}),
            ),
        ];
        let web = service("web");
        let proxy = ProxyView::new("default", &web);
        let rules = http_route_rules(&routes, &proxy, Destination::Service("backend")).unwrap();
        let summary: Vec<(String, String)> = rules
            .iter()
            .map(|r| (r.matches[0].path.as_ref().unwrap().value.clone(), backend_version(r)))
            .collect();
        assert_eq!(
            summary,
            [
                ("/api".to_string(), "v2".to_string()),
                ("/health".to_string(), "v3".to_string()),
                ("/".to_string(), "v1".to_string())
            ]
        );
        // The /api rule keeps the filter only the less specific route set.
        assert_eq!(js(&rules[0].default.filters), header["filters"]);
        let ordered: Vec<&str> = ordered_http_routes(&rules)
            .iter()
            .map(|r| r.matched.path.as_ref().unwrap().value.as_str())
            .collect();
        assert_eq!(ordered, ["/health", "/api", "/"]);

        // Another client only has the mesh-wide routes, in their order.
        let other = service("other");
        let proxy = ProxyView::new("default", &other);
        let rules = http_route_rules(&routes, &proxy, Destination::Service("backend")).unwrap();
        let versions: Vec<String> = rules.iter().map(backend_version).collect();
        assert_eq!(versions, ["v1", "v1"]);
        assert_eq!(rules[0].matches[0].path.as_ref().unwrap().value, "/api");
        assert!(http_route_rules(&routes, &proxy, Destination::Service("db"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn http_route_order_follows_the_gateway_api() {
        let rules: Vec<meshhttproute::Rule> = serde_json::from_value(json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "default": {}},
            {"matches": [{"path": {"type": "RegularExpression", "value": "/a.*b"}}], "default": {}},
            {"matches": [{"headers": [{"name": "x", "value": "1"}]}, {"method": "GET"}], "default": {}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a/b"}}], "default": {}},
            {"matches": [{"path": {"type": "Exact", "value": "/z"}}], "default": {}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}, "method": "GET"}], "default": {}}
        ]))
        .unwrap();
        let order: Vec<Value> = ordered_http_routes(&rules).iter().map(|r| js(r.matched)).collect();
        assert_eq!(
            order,
            [
                json!({"path": {"type": "Exact", "value": "/z"}}),
                json!({"path": {"type": "PathPrefix", "value": "/a/b"}}),
                json!({"path": {"type": "PathPrefix", "value": "/a"}, "method": "GET"}),
                json!({"path": {"type": "PathPrefix", "value": "/a"}}),
                json!({"path": {"type": "RegularExpression", "value": "/a.*b"}}),
                json!({"method": "GET"}),
                json!({"headers": [{"name": "x", "value": "1"}]}),
            ]
        );
    }

    #[test]
    fn gateway_routes_are_grouped_by_hostname() {
        let rule = |path: &str, version: &str| http_rule(("PathPrefix", path), version, json!({}));
        let routes: Vec<(String, MeshHttpRoute)> = vec![
            policy(
                "edge-a",
                json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                       "to": [{"targetRef": {"kind": "Mesh"}, "hostnames": ["a.example"],
                               "rules": [rule("/", "v1")]}]}),
            ),
            policy(
                "edge-any",
                json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                       "to": [{"targetRef": {"kind": "Mesh"}, "rules": [rule("/", "v2")]}]}),
            ),
        ];
        let gw = gateway("edge");
        let proxy = ProxyView::new("default", &gw);
        let groups = http_routes(&routes, &proxy, Destination::Mesh).unwrap();
        let summary: Vec<(Option<String>, Vec<String>)> = groups
            .iter()
            .map(|g| (g.hostname.clone(), g.rules.iter().map(backend_version).collect()))
            .collect();
        // edge-any sorts before edge-a by name, so it is merged first.
        assert_eq!(
            summary,
            [
                (None, vec!["v2".to_string()]),
                (Some("a.example".to_string()), vec!["v1".to_string()])
            ]
        );
        let other = gateway("other");
        assert!(
            http_routes(&routes, &ProxyView::new("default", &other), Destination::Mesh)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn tcp_routes_take_the_most_specific_backends() {
        let routes: Vec<(String, MeshTcpRoute)> = vec![
            policy(
                "all",
                json!({"targetRef": {"kind": "Mesh"},
                       "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                               "rules": [{"default": {"backendRefs": [
                                   {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}}]}}]}]}),
            ),
            policy(
                "web",
                json!({"targetRef": {"kind": "MeshService", "name": "web"},
                       "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}}]}),
            ),
        ];
        let conf = |service_name: &str, dest: &str| {
            let dp = service(service_name);
            let proxy = ProxyView::new("default", &dp);
            js(&tcp_route_conf(&routes, &proxy, Destination::Service(dest)).unwrap())
        };
        assert_eq!(
            conf("web", "backend"),
            json!({"backendRefs": [{"kind": "MeshService", "name": "backend", "weight": 1}]})
        );
        assert_eq!(
            conf("other", "backend"),
            json!({"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}}]})
        );
        assert_eq!(conf("web", "db"), Value::Null);
    }

    #[test]
    fn policies_on_a_route_apply_to_its_rule() {
        let routes: Vec<(String, MeshHttpRoute)> = vec![policy(
            "web-routes",
            json!({"targetRef": {"kind": "MeshService", "name": "web"},
                   "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                           "rules": [http_rule(("PathPrefix", "/api"), "v2", json!({}))]}]}),
        )];
        let mut timeouts: Vec<(String, MeshTimeout)> = defaults(ResourceType::MeshTimeout);
        timeouts.push(policy(
            "api-timeout",
            json!({"targetRef": {"kind": "MeshHTTPRoute", "name": "web-routes"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "1s"}}}]}),
        ));
        let api: Vec<Match> =
            serde_json::from_value(json!([{"path": {"type": "PathPrefix", "value": "/api"}}])).unwrap();
        let root: Vec<Match> = serde_json::from_value(json!([{"path": {"type": "PathPrefix", "value": "/"}}])).unwrap();
        let web = service("web");
        let proxy = ProxyView::new("default", &web);
        let on_rule = |proxy: &ProxyView<'_>, dest: &str, matches: &[Match]| {
            js(&route_to_conf(&timeouts, &routes, proxy, Destination::Service(dest), matches).unwrap())
        };
        let mut expected = sidecar_to();
        expected["http"]["requestTimeout"] = json!("1s");
        assert_eq!(on_rule(&proxy, "backend", &api), expected);
        assert_eq!(on_rule(&proxy, "backend", &root), sidecar_to());
        assert_eq!(on_rule(&proxy, "db", &api), sidecar_to());
        // Not a destination-wide setting, and not for clients the route
        // does not select.
        assert_eq!(to(&timeouts, &proxy, "backend"), sidecar_to());
        assert_eq!(names(&matching(&timeouts, &proxy)), ["mesh-timeout-all-default"]);
        let other = service("other");
        assert_eq!(
            on_rule(&ProxyView::new("default", &other), "backend", &api),
            sidecar_to()
        );
    }

    #[test]
    fn mesh_gateway_references_select_gateways_by_service() {
        let timeouts: Vec<(String, MeshTimeout)> = vec![
            policy(
                "edge",
                json!({"targetRef": {"kind": "MeshGateway", "name": "edge"},
                       "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "2h"}}]}),
            ),
            policy(
                "edge-public",
                json!({"targetRef": {"kind": "MeshGateway", "name": "edge", "tags": {"public": "yes"}},
                       "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "3h"}}]}),
            ),
            policy(
                "gateways",
                json!({"targetRef": {"kind": "Mesh", "proxyTypes": ["Gateway"]},
                       "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "1s"}}]}),
            ),
        ];
        let idle = |dp: &Dataplane| to(&timeouts, &ProxyView::new("default", dp), "x");
        assert_eq!(
            idle(&gateway("edge")),
            json!({"connectionTimeout": "1s", "idleTimeout": "2h"})
        );
        assert_eq!(idle(&gateway("other")), json!({"connectionTimeout": "1s"}));
        assert_eq!(idle(&service("edge")), Value::Null);
        let public: Dataplane = serde_json::from_value(json!({"networking": {"address": "10.0.0.3",
            "gateway": {"tags": {"kuma.io/service": "edge", "public": "yes"}}}}))
        .unwrap();
        assert_eq!(idle(&public), json!({"connectionTimeout": "1s", "idleTimeout": "3h"}));
    }

    #[test]
    fn single_item_policies_merge_and_append() {
        let patches: Vec<(String, MeshProxyPatch)> = vec![
            policy(
                "web",
                json!({"targetRef": {"kind": "MeshService", "name": "web"},
                       "default": {"appendModifications": [{"cluster": {"operation": "Remove",
                                                                       "match": {"name": "b"}}}]}}),
            ),
            policy(
                "all",
                json!({"targetRef": {"kind": "Mesh"},
                       "default": {"appendModifications": [{"cluster": {"operation": "Remove",
                                                                       "match": {"name": "a"}}}]}}),
            ),
        ];
        let traces: Vec<(String, MeshTrace)> = vec![
            policy(
                "all",
                json!({"targetRef": {"kind": "Mesh"},
                       "default": {"backends": [{"type": "Zipkin", "zipkin": {"url": "http://zipkin:9411/api/v2/spans"}}],
                                   "sampling": {"overall": 80, "client": 50}}}),
            ),
            policy(
                "web",
                json!({"targetRef": {"kind": "MeshService", "name": "web"},
                       "default": {"sampling": {"overall": 10}}}),
            ),
        ];
        let web = service("web");
        let proxy = ProxyView::new("default", &web);
        let patch = js(&single_item_conf(&patches, &proxy).unwrap());
        let removed: Vec<&Value> = patch["appendModifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["cluster"]["match"]["name"])
            .collect();
        assert_eq!(removed, [&json!("a"), &json!("b")]);
        let trace = js(&single_item_conf(&traces, &proxy).unwrap());
        assert_eq!(trace["sampling"], json!({"overall": 10, "client": 50}));
        assert_eq!(trace["backends"][0]["type"], "Zipkin");
        let other = service("other");
        let trace = js(&single_item_conf(&traces, &ProxyView::new("default", &other)).unwrap());
        assert_eq!(trace["sampling"]["overall"], 80);
    }

    #[test]
    fn references_to_another_mesh_select_nothing() {
        let retries: Vec<(String, MeshRetry)> = vec![policy(
            "elsewhere",
            json!({"targetRef": {"kind": "Mesh", "mesh": "other"},
                   "to": [{"targetRef": {"kind": "Mesh"}, "default": {"tcp": {"maxConnectAttempt": 1}}}]}),
        )];
        let web = service("web");
        assert!(matching(&retries, &ProxyView::new("default", &web)).is_empty());
        assert_eq!(matching(&retries, &ProxyView::new("other", &web)).len(), 1);
    }
}

#[cfg(test)]
mod affects_tests {
    use serde_json::json;

    use super::affects;
    use crate::dataplane::Dataplane;

    #[test]
    fn a_policy_affects_the_dataplanes_its_top_level_reference_selects() {
        let dp = |service: &str| -> Dataplane {
            serde_json::from_value(json!({"networking": {"address": "10.0.0.1",
                "inbound": [{"port": 80, "tags": {"kuma.io/service": service, "version": "v1"}}]}}))
            .unwrap()
        };
        let web = json!({"targetRef": {"kind": "MeshService", "name": "web"}, "to": []});
        assert_eq!(affects(&web, "default", &dp("web")), Ok(true));
        assert_eq!(affects(&web, "default", &dp("backend")), Ok(false));
        let v1 = json!({"targetRef": {"kind": "MeshSubset", "tags": {"version": "v1"}}});
        assert_eq!(affects(&v1, "default", &dp("backend")), Ok(true));
        assert!(affects(&json!({"to": []}), "default", &dp("web")).is_err());
        assert!(affects(&json!({"targetRef": {"kind": "Nope"}}), "default", &dp("web")).is_err());
    }
}
