//! Routes towards one destination service: MeshHTTPRoute rules (matches,
//! filters, weighted backends) then a catch-all to the whole service, each
//! carrying the destination's timeout and retry policy.
//!
//! # Matches
//!
//! `PathPrefix` follows the Gateway API: it matches whole path elements, so
//! `/Echo` matches `/Echo` and `/Echo/Call` but not `/EchoX`, and a trailing
//! `/` of the value is ignored. Envoy sidecars get a `path_separated_prefix`
//! (`/` stays a plain `prefix`). gRPC clients know only `prefix`, `path` and
//! `safe_regex` (gRFC A28: a route without a path matcher they know is a
//! NACK), so they get two routes instead: the exact path, then the prefix
//! followed by `/`. Query parameter matches go to sidecars only: gRPC has no
//! query, and a route with such a match could never be taken by a gRPC
//! client. Neither could a route for a method other than POST, the only one
//! gRPC uses: such routes are left out, and a POST match is always true.
//!
//! # Filters
//!
//! Sidecars get every MeshHTTPRoute filter: header modifiers as the route's
//! `request_headers_to_add/remove` and `response_headers_to_add/remove`
//! (`set` overwrites, `add` appends; the `host` header, which Envoy does not
//! let a route modify, becomes a host rewrite when set or added and is never
//! removed), `RequestRedirect` as a redirect action, `URLRewrite` as host and
//! path rewrites, `RequestMirror` as mirror policies (whose clusters the
//! listener's owner adds). A rule without `backendRefs` sends to the
//! destination itself.
//!
//! gRPC clients have none of these features: filters are not sent to them,
//! and a rule that redirects is left out (gRPC has no redirects; a route
//! whose action is not `route` is rejected or failed by gRPC clients).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{self, PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    retry_policy::RetryBackOff,
    route::Action,
    route_action::{self, HostRewriteSpecifier, RequestMirrorPolicy},
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
    HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use meridian_core::policy::common::{BackendRef, HeaderMatch, HeaderMatchType};
use meridian_core::policy::meshhttproute::{
    Filter, FilterType, HeaderModifier, Match, Method, PathMatch, PathMatchType, PathRewrite, PathRewriteType,
    QueryParamsMatchType, RequestMirror, RequestRedirect, Scheme, UrlRewrite,
};
use meridian_core::policy::meshretry::{self, GrpcRetryOn};
use meridian_core::policy::meshtimeout;
use meridian_core::policy::TargetRefKind;

use super::proxyless::fraction;
use super::{cluster_name, duration, u32_value, OutboundPolicies};

/// A cluster a route sends to: a service, or a subset of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterRef {
    pub service: String,
    pub subset: BTreeMap<String, String>,
}

impl ClusterRef {
    pub fn name(&self) -> String {
        cluster_name(&self.service, &self.subset)
    }

    /// The whole of `service`.
    pub fn service(service: &str) -> Self {
        ClusterRef {
            service: service.to_string(),
            subset: BTreeMap::new(),
        }
    }
}

/// Which retry settings a route uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

/// Who takes the routes: an Envoy sidecar, or a proxyless gRPC client,
/// which understands a subset of Envoy's route API (gRFC A28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Sidecar,
    Proxyless,
}

fn string_matcher(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn string_match(pattern: MatchPattern) -> HeaderMatchSpecifier {
    HeaderMatchSpecifier::StringMatch(string_matcher(pattern))
}

fn regex(value: &str) -> RegexMatcher {
    RegexMatcher {
        regex: value.to_string(),
        ..Default::default()
    }
}

/// `value` as an RE2 expression matching exactly that text.
fn regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn header_matcher(h: &HeaderMatch) -> HeaderMatcher {
    let value = h.value.clone().unwrap_or_default();
    let (spec, invert) = match h.match_type.unwrap_or(HeaderMatchType::Exact) {
        HeaderMatchType::Exact => (string_match(MatchPattern::Exact(value)), false),
        HeaderMatchType::Prefix => (string_match(MatchPattern::Prefix(value)), false),
        HeaderMatchType::RegularExpression => (string_match(MatchPattern::SafeRegex(regex(&value))), false),
        HeaderMatchType::Present => (HeaderMatchSpecifier::PresentMatch(true), false),
        HeaderMatchType::Absent => (HeaderMatchSpecifier::PresentMatch(true), true),
    };
    HeaderMatcher {
        name: h.name.clone(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// The path matchers that together take the requests `path` selects.
pub fn path_specifiers(path: Option<&PathMatch>, client: Client) -> Vec<PathSpecifier> {
    let Some(p) = path else {
        return vec![PathSpecifier::Prefix("/".into())];
    };
    match p.match_type {
        PathMatchType::Exact => vec![PathSpecifier::Path(p.value.clone())],
        PathMatchType::RegularExpression => vec![PathSpecifier::SafeRegex(regex(&p.value))],
        PathMatchType::PathPrefix => {
            let prefix = p.value.trim_end_matches('/');
            if prefix.is_empty() {
                return vec![PathSpecifier::Prefix("/".into())];
            }
            // Envoy's path_separated_prefix takes no `?` or `#`.
            if client == Client::Sidecar && !prefix.contains(['?', '#']) {
                return vec![PathSpecifier::PathSeparatedPrefix(prefix.to_string())];
            }
            vec![
                PathSpecifier::Path(prefix.to_string()),
                PathSpecifier::Prefix(format!("{prefix}/")),
            ]
        }
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::CONNECT => "CONNECT",
        Method::DELETE => "DELETE",
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::TRACE => "TRACE",
    }
}

/// The Envoy matches of `m`, one per path matcher; none when `client` could
/// never take the route (see the module docs).
fn route_matches(m: &Match, client: Client) -> Vec<RouteMatch> {
    let mut headers: Vec<HeaderMatcher> = m.headers.iter().flatten().map(header_matcher).collect();
    let queries = m.query_params.as_deref().unwrap_or_default();
    match client {
        Client::Proxyless => {
            if !queries.is_empty() || m.method.is_some_and(|x| x != Method::POST) {
                return Vec::new();
            }
        }
        Client::Sidecar => {
            if let Some(method) = m.method {
                headers.push(HeaderMatcher {
                    name: ":method".into(),
                    header_match_specifier: Some(string_match(MatchPattern::Exact(method_name(method).into()))),
                    ..Default::default()
                });
            }
        }
    }
    let query_parameters: Vec<QueryParameterMatcher> = queries
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(string_matcher(
                match q.match_type {
                    QueryParamsMatchType::Exact => MatchPattern::Exact(q.value.clone()),
                    QueryParamsMatchType::RegularExpression => MatchPattern::SafeRegex(regex(&q.value)),
                },
            ))),
        })
        .collect();
    path_specifiers(m.path.as_ref(), client)
        .into_iter()
        .map(|path| RouteMatch {
            path_specifier: Some(path),
            headers: headers.clone(),
            query_parameters: query_parameters.clone(),
            ..Default::default()
        })
        .collect()
}

fn retry_policy(retry: Option<&meshretry::Conf>, protocol: Protocol) -> Option<RetryPolicy> {
    let retry = retry?;
    let mut status_codes = Vec::new();
    let mut methods = Vec::new();
    let (num, back_off, retry_on, per_try) = match protocol {
        Protocol::Grpc => {
            let g = retry.grpc.as_ref()?;
            let on = g
                .retry_on
                .as_ref()
                .map(|l| {
                    l.iter()
                        .map(|c| match c {
                            GrpcRetryOn::Canceled => "cancelled",
                            GrpcRetryOn::DeadlineExceeded => "deadline-exceeded",
                            GrpcRetryOn::Internal => "internal",
                            GrpcRetryOn::ResourceExhausted => "resource-exhausted",
                            GrpcRetryOn::Unavailable => "unavailable",
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable".into());
            (g.num_retries, g.back_off.as_ref(), on, g.per_try_timeout.as_ref())
        }
        Protocol::Http => {
            let h = retry.http.as_ref()?;
            let on = match &h.retry_on {
                None => "gateway-error,connect-failure,refused-stream".into(),
                Some(list) => {
                    let mut on = Vec::new();
                    for cond in list {
                        match http_retry_on(cond) {
                            HttpRetryOn::Condition(c) => on.push(c),
                            HttpRetryOn::Status(code) => status_codes.push(code),
                            HttpRetryOn::Method(m) => methods.push(m),
                        }
                    }
                    if !status_codes.is_empty() {
                        on.push("retriable-status-codes");
                    }
                    on.dedup();
                    on.join(",")
                }
            };
            (h.num_retries, h.back_off.as_ref(), on, h.per_try_timeout.as_ref())
        }
    };
    // `numRetries: 0` means no retries. Envoy reads that from a missing
    // policy as well, and gRPC clients reject a policy with zero retries
    // (NACK of the whole RouteConfiguration), so none is sent.
    if num == Some(0) {
        return None;
    }
    Some(RetryPolicy {
        retry_on,
        num_retries: num.map(u32_value),
        retriable_status_codes: status_codes,
        retriable_request_headers: methods
            .into_iter()
            .map(|m| HeaderMatcher {
                name: ":method".into(),
                header_match_specifier: Some(string_match(MatchPattern::Exact(m.into()))),
                ..Default::default()
            })
            .collect(),
        per_try_timeout: per_try.filter(|d| !d.is_zero()).map(|d| duration(d.as_std())),
        retry_back_off: back_off.and_then(|b| {
            let base = b.base_interval.as_ref()?;
            Some(RetryBackOff {
                base_interval: Some(duration(base.as_std())),
                max_interval: b.max_interval.as_ref().map(|m| duration(m.as_std())),
            })
        }),
        ..Default::default()
    })
}

/// What one of MeshRetry's HTTP `retryOn` items becomes in Envoy: a
/// `retry_on` condition, a retriable status code, or a request method to
/// retry (`retriable_request_headers` on `:method`), as Kuma maps them.
enum HttpRetryOn {
    Condition(&'static str),
    Status(u32),
    Method(&'static str),
}

fn http_retry_on(s: &str) -> HttpRetryOn {
    use HttpRetryOn::{Condition, Method, Status};
    match s {
        "5xx" => Condition("5xx"),
        "GatewayError" => Condition("gateway-error"),
        "Reset" => Condition("reset"),
        "Retriable4xx" => Condition("retriable-4xx"),
        "ConnectFailure" => Condition("connect-failure"),
        "EnvoyRatelimited" => Condition("envoy-ratelimited"),
        "RefusedStream" => Condition("refused-stream"),
        "Http3PostConnectFailure" => Condition("http3-post-connect-failure"),
        "HttpMethodConnect" => Method("CONNECT"),
        "HttpMethodDelete" => Method("DELETE"),
        "HttpMethodGet" => Method("GET"),
        "HttpMethodHead" => Method("HEAD"),
        "HttpMethodOptions" => Method("OPTIONS"),
        "HttpMethodPatch" => Method("PATCH"),
        "HttpMethodPost" => Method("POST"),
        "HttpMethodPut" => Method("PUT"),
        "HttpMethodTrace" => Method("TRACE"),
        // Validation admits nothing else but status codes.
        other => other
            .parse::<u32>()
            .map(Status)
            .unwrap_or(Condition("retriable-status-codes")),
    }
}

/// A rule's (or the destination's) timeout and retries.
#[derive(Clone, Copy)]
struct Limits<'a> {
    timeout: Option<&'a meshtimeout::Conf>,
    retry: Option<&'a meshretry::Conf>,
}

fn action(clusters: &[(ClusterRef, u32)], limits: Limits<'_>, protocol: Protocol) -> RouteAction {
    let specifier = if let [(only, _)] = clusters {
        route_action::ClusterSpecifier::Cluster(only.name())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(c, w)| ClusterWeight {
                    name: c.name(),
                    weight: Some(u32_value(*w)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let request_timeout = limits
        .timeout
        .and_then(|t| t.http.as_ref())
        .and_then(|h| h.request_timeout.as_ref())
        .map(|d| duration(d.as_std()));
    RouteAction {
        cluster_specifier: Some(specifier),
        timeout: request_timeout,
        // gRPC clients take the deadline from max_stream_duration (0 = none).
        max_stream_duration: request_timeout.map(|d| route_action::MaxStreamDuration {
            max_stream_duration: Some(d),
            ..Default::default()
        }),
        retry_policy: retry_policy(limits.retry, protocol),
        ..Default::default()
    }
}

/// The cluster a backend reference names (`service` when it names none).
fn backend_cluster(b: &BackendRef, service: &str) -> Option<ClusterRef> {
    let name = b.name.clone().unwrap_or_else(|| service.to_string());
    let subset = match b.kind {
        TargetRefKind::MeshService => BTreeMap::new(),
        TargetRefKind::MeshServiceSubset => b.tags.clone().unwrap_or_default(),
        _ => return None,
    };
    Some(ClusterRef { service: name, subset })
}

/// The clusters a route (HTTP or TCP) sends to, with weights: the
/// destination itself when it names no backends, `None` when it names only
/// unusable ones (weight 0, or a kind that is not a service).
pub fn backends(refs: Option<&[BackendRef]>, service: &str) -> Option<Vec<(ClusterRef, u32)>> {
    let refs = match refs {
        None | Some([]) => return Some(vec![(ClusterRef::service(service), 1)]),
        Some(refs) => refs,
    };
    let out: Vec<(ClusterRef, u32)> = refs
        .iter()
        .filter_map(|b| Some((backend_cluster(b, service)?, b.weight.unwrap_or(1))))
        .filter(|(_, w)| *w > 0)
        .collect();
    (!out.is_empty()).then_some(out)
}

/// A change of the request path.
#[derive(Clone, Debug, PartialEq)]
enum PathChange {
    /// The whole path becomes this.
    Full(String),
    /// The matched prefix becomes this.
    Prefix(String),
    /// Every match of the expression is substituted.
    Regex(RegexMatchAndSubstitute),
}

fn regex_substitution(pattern: String, substitution: &str) -> RegexMatchAndSubstitute {
    RegexMatchAndSubstitute {
        pattern: Some(regex(&pattern)),
        // RE2 substitutions treat `\` as an escape.
        substitution: substitution.replace('\\', "\\\\"),
    }
}

/// What `rw` does to a request that took the route matching `path`. A
/// prefix replacement keeps path elements whole: with `/a` replaced by `/b`,
/// `/a/x` becomes `/b/x`; with `/a` replaced by `/`, `/a/x` becomes `/x`
/// and `/a` becomes `/`.
fn path_change(rw: &PathRewrite, path: Option<&PathSpecifier>) -> Option<PathChange> {
    match rw.rewrite_type {
        PathRewriteType::ReplaceFullPath => rw.replace_full_path.clone().map(PathChange::Full),
        PathRewriteType::ReplacePrefixMatch => {
            let to = rw.replace_prefix_match.as_deref()?.trim_end_matches('/');
            match path? {
                // A prefix ending in `/` (see `path_specifiers`): keep one.
                PathSpecifier::Prefix(p) if to.is_empty() => (p != "/").then(|| PathChange::Prefix("/".into())),
                PathSpecifier::Prefix(_) => Some(PathChange::Prefix(format!("{to}/"))),
                PathSpecifier::PathSeparatedPrefix(p) | PathSpecifier::Path(p) if to.is_empty() => Some(
                    PathChange::Regex(regex_substitution(format!("^{}/*", regex_escape(p)), "/")),
                ),
                PathSpecifier::PathSeparatedPrefix(_) | PathSpecifier::Path(_) => Some(PathChange::Prefix(to.into())),
                _ => None,
            }
        }
    }
}

fn redirect_action(r: &RequestRedirect, path: Option<&PathSpecifier>) -> RedirectAction {
    let response_code = match r.status_code.unwrap_or(302) {
        301 => RedirectResponseCode::MovedPermanently,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::Found,
    };
    RedirectAction {
        host_redirect: r.hostname.clone().unwrap_or_default(),
        port_redirect: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        response_code: response_code as i32,
        scheme_rewrite_specifier: r.scheme.map(|s| {
            SchemeRewriteSpecifier::SchemeRedirect(
                match s {
                    Scheme::Http => "http",
                    Scheme::Https => "https",
                }
                .into(),
            )
        }),
        path_rewrite_specifier: r.path.as_ref().and_then(|rw| path_change(rw, path)).map(|c| match c {
            PathChange::Full(p) => PathRewriteSpecifier::PathRedirect(p),
            PathChange::Prefix(p) => PathRewriteSpecifier::PrefixRewrite(p),
            PathChange::Regex(r) => redirect_action::PathRewriteSpecifier::RegexRewrite(r),
        }),
        ..Default::default()
    }
}

/// A header value Envoy accepts (no NUL, CR or LF).
fn header_value_ok(v: &str) -> bool {
    !v.contains(['\0', '\r', '\n'])
}

/// Header changes of a modifier: what to add or overwrite, what to remove,
/// and a new `host` (which Envoy changes only by a host rewrite).
#[derive(Default)]
struct HeaderChanges {
    add: Vec<HeaderValueOption>,
    remove: Vec<String>,
    host: Option<String>,
}

fn header_changes(m: &HeaderModifier, out: &mut HeaderChanges) {
    for (list, append) in [
        (&m.set, HeaderAppendAction::OverwriteIfExistsOrAdd),
        (&m.add, HeaderAppendAction::AppendIfExistsOrAdd),
    ] {
        for h in list.iter().flatten().filter(|h| header_value_ok(&h.value)) {
            if h.name.eq_ignore_ascii_case("host") {
                out.host = Some(h.value.clone());
                continue;
            }
            out.add.push(HeaderValueOption {
                header: Some(HeaderValue {
                    key: h.name.clone(),
                    value: h.value.clone(),
                    ..Default::default()
                }),
                append_action: append as i32,
                ..Default::default()
            });
        }
    }
    out.remove.extend(
        m.remove
            .iter()
            .flatten()
            .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case("host"))
            .cloned(),
    );
}

/// The filters of a rule on a sidecar's route: header changes on the route,
/// rewrites and mirrors on its forwarding `action` (none for a redirect).
/// Mirror clusters are added to `clusters`.
fn apply_filters(
    route: &mut Route,
    action: Option<&mut RouteAction>,
    filters: &[Filter],
    service: &str,
    clusters: &mut BTreeSet<ClusterRef>,
) {
    let path = route.r#match.as_ref().and_then(|m| m.path_specifier.clone());
    let mut request = HeaderChanges::default();
    let mut response = HeaderChanges::default();
    let mut rewrite: Option<&UrlRewrite> = None;
    let mut mirrors: Vec<&RequestMirror> = Vec::new();
    for f in filters {
        match f.filter_type {
            FilterType::RequestHeaderModifier => {
                if let Some(m) = &f.request_header_modifier {
                    header_changes(m, &mut request);
                }
            }
            FilterType::ResponseHeaderModifier => {
                if let Some(m) = &f.response_header_modifier {
                    header_changes(m, &mut response);
                }
            }
            FilterType::UrlRewrite => rewrite = f.url_rewrite.as_ref().or(rewrite),
            FilterType::RequestMirror => mirrors.extend(&f.request_mirror),
            FilterType::RequestRedirect => {}
        }
    }
    route.request_headers_to_add = request.add;
    route.request_headers_to_remove = request.remove;
    route.response_headers_to_add = response.add;
    route.response_headers_to_remove = response.remove;
    let Some(action) = action else {
        return;
    };
    let host = rewrite
        .and_then(|r| r.hostname.clone())
        .or(request.host)
        .filter(|h| header_value_ok(h) && !h.is_empty());
    action.host_rewrite_specifier = host.map(HostRewriteSpecifier::HostRewriteLiteral);
    match rewrite
        .and_then(|r| r.path.as_ref())
        .and_then(|rw| path_change(rw, path.as_ref()))
    {
        // The whole path (not the query string) is the one match of `^.*$`.
        Some(PathChange::Full(p)) => action.regex_rewrite = Some(regex_substitution("^.*$".into(), &p)),
        Some(PathChange::Prefix(p)) => action.prefix_rewrite = p,
        Some(PathChange::Regex(r)) => action.regex_rewrite = Some(r),
        None => {}
    }
    for m in mirrors {
        let Some(cluster) = backend_cluster(&m.backend_ref, service) else {
            continue;
        };
        action.request_mirror_policies.push(RequestMirrorPolicy {
            cluster: cluster.name(),
            runtime_fraction: m.percentage.as_ref().map(|p| RuntimeFractionalPercent {
                default_value: Some(fraction(p)),
                ..Default::default()
            }),
            ..Default::default()
        });
        clusters.insert(cluster);
    }
}

/// The TCP proxy of an outbound listener sending to `targets` (a MeshTCPRoute's
/// backends, or the destination itself): one cluster, or a weighted split.
pub fn tcp_route_proxy(
    stat_prefix: &str,
    targets: &[(ClusterRef, u32)],
    idle: Option<std::time::Duration>,
) -> TcpProxy {
    let cluster_specifier = match targets {
        [(only, _)] => tcp_proxy::ClusterSpecifier::Cluster(only.name()),
        _ => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: targets
                .iter()
                .map(|(c, w)| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: c.name(),
                    weight: *w,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(cluster_specifier),
        idle_timeout: idle.map(duration),
        ..Default::default()
    }
}

/// The route configuration `name` for traffic to `service`, and the clusters
/// it refers to.
pub fn route_configuration(
    name: &str,
    service: &str,
    p: &OutboundPolicies,
    protocol: Protocol,
    client: Client,
) -> (RouteConfiguration, BTreeSet<ClusterRef>) {
    let mut clusters = BTreeSet::new();
    let mut routes = Vec::new();
    let any_request = [Match::default()];
    let destination = Limits {
        timeout: p.timeout.as_ref(),
        retry: p.retry.as_ref(),
    };
    for (i, rule) in p.http_rules.iter().enumerate() {
        let limits = p.route_policies.get(i).map_or(destination, |r| Limits {
            timeout: r.timeout.as_ref(),
            retry: r.retry.as_ref(),
        });
        let filters = rule.default.filters.as_deref().unwrap_or_default();
        let redirect = filters
            .iter()
            .filter(|f| f.filter_type == FilterType::RequestRedirect)
            .find_map(|f| f.request_redirect.as_ref());
        let targets = match redirect {
            Some(_) if client == Client::Proxyless => continue,
            Some(_) => Vec::new(),
            None => match backends(rule.default.backend_refs.as_deref(), service) {
                Some(b) => b,
                None => continue,
            },
        };
        let matches: &[Match] = if rule.matches.is_empty() {
            &any_request
        } else {
            &rule.matches
        };
        for m in matches.iter().flat_map(|m| route_matches(m, client)) {
            let path = m.path_specifier.clone();
            let mut route = Route {
                r#match: Some(m),
                ..Default::default()
            };
            let mut forward = match redirect {
                Some(r) => {
                    route.action = Some(Action::Redirect(redirect_action(r, path.as_ref())));
                    None
                }
                None => {
                    clusters.extend(targets.iter().map(|(c, _)| c.clone()));
                    Some(action(&targets, limits, protocol))
                }
            };
            if client == Client::Sidecar {
                apply_filters(&mut route, forward.as_mut(), filters, service, &mut clusters);
            }
            if let Some(a) = forward {
                route.action = Some(Action::Route(a));
            }
            routes.push(route);
        }
    }
    let whole = ClusterRef::service(service);
    clusters.insert(whole.clone());
    routes.push(Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(action(&[(whole, 1)], destination, protocol))),
        ..Default::default()
    });
    // MeshLoadBalancingStrategy's hash policies: on every route of the
    // destination (what a ring hash or Maglev balancer hashes).
    let hashing = hash_policies(p, client);
    if !hashing.is_empty() {
        for route in &mut routes {
            if let Some(Action::Route(a)) = &mut route.action {
                a.hash_policy = hashing.clone();
            }
        }
    }
    let rc = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: service.to_string(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    (rc, clusters)
}

/// The route hash policies of the destination's ring hash or Maglev
/// balancer. gRPC clients hash only by header and by the channel
/// (`filter_state` key `io.grpc.channel_id`, gRFC A42); the other kinds are
/// left out for them (and reported with every write of such a policy).
fn hash_policies(p: &OutboundPolicies, client: Client) -> Vec<route_action::HashPolicy> {
    use meridian_core::policy::meshloadbalancingstrategy::{HashPolicyType, LoadBalancerType};
    use route_action::hash_policy::{self as hp, PolicySpecifier};
    let Some(lb) = p.load_balancing.as_ref().and_then(|l| l.load_balancer.as_ref()) else {
        return Vec::new();
    };
    let list = match lb.lb_type {
        LoadBalancerType::RingHash => lb.ring_hash.as_ref().and_then(|r| r.hash_policies.as_ref()),
        LoadBalancerType::Maglev if client == Client::Sidecar => {
            lb.maglev.as_ref().and_then(|m| m.hash_policies.as_ref())
        }
        _ => None,
    };
    list.into_iter()
        .flatten()
        .filter_map(|h| {
            let specifier = match h.policy_type {
                HashPolicyType::Header => PolicySpecifier::Header(hp::Header {
                    header_name: h.header.as_ref()?.name.clone(),
                    ..Default::default()
                }),
                HashPolicyType::FilterState => {
                    let key = h.filter_state.as_ref()?.key.clone();
                    if client == Client::Proxyless && key != "io.grpc.channel_id" {
                        return None;
                    }
                    PolicySpecifier::FilterState(hp::FilterState { key })
                }
                _ if client == Client::Proxyless => return None,
                HashPolicyType::Cookie => {
                    let c = h.cookie.as_ref()?;
                    PolicySpecifier::Cookie(hp::Cookie {
                        name: c.name.clone(),
                        ttl: c.ttl.as_ref().map(|d| duration(d.as_std())),
                        path: c.path.clone().unwrap_or_default(),
                        ..Default::default()
                    })
                }
                HashPolicyType::SourceIp => PolicySpecifier::ConnectionProperties(hp::ConnectionProperties {
                    source_ip: h.connection.as_ref().and_then(|c| c.source_ip).unwrap_or(true),
                }),
                HashPolicyType::QueryParameter => PolicySpecifier::QueryParameter(hp::QueryParameter {
                    name: h.query_parameter.as_ref()?.name.clone(),
                }),
            };
            Some(route_action::HashPolicy {
                terminal: h.terminal.unwrap_or(false),
                policy_specifier: Some(specifier),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn retry(grpc: serde_json::Value) -> OutboundPolicies {
        OutboundPolicies {
            retry: Some(serde_json::from_value(json!({"grpc": grpc, "http": grpc})).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn zero_retries_send_no_retry_policy() {
        for protocol in [Protocol::Grpc, Protocol::Http] {
            assert_eq!(
                retry_policy(retry(json!({"numRetries": 0})).retry.as_ref(), protocol),
                None
            );
            let two = retry_policy(retry(json!({"numRetries": 2})).retry.as_ref(), protocol).unwrap();
            assert_eq!(two.num_retries, Some(u32_value(2)));
        }
    }

    fn rules(rules: serde_json::Value) -> OutboundPolicies {
        OutboundPolicies {
            http_rules: serde_json::from_value(rules).unwrap(),
            ..Default::default()
        }
    }

    fn routes(p: &OutboundPolicies, client: Client) -> (Vec<Route>, BTreeSet<ClusterRef>) {
        let (rc, clusters) = route_configuration("backend", "backend", p, Protocol::Http, client);
        (rc.virtual_hosts[0].routes.clone(), clusters)
    }

    /// Envoy's and gRPC's path matching, for the specifiers generation uses.
    fn path_matches(spec: &PathSpecifier, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or_default();
        match spec {
            PathSpecifier::Prefix(p) => path.starts_with(p.as_str()),
            PathSpecifier::Path(p) => path == p,
            PathSpecifier::PathSeparatedPrefix(p) => {
                path == p || path.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/'))
            }
            other => panic!("no model of {other:?}"),
        }
    }

    /// The cluster the first route whose path matches sends `path` to.
    fn taken_by(routes: &[Route], path: &str) -> String {
        let route = routes
            .iter()
            .find(|r| path_matches(r.r#match.as_ref().unwrap().path_specifier.as_ref().unwrap(), path))
            .unwrap_or_else(|| panic!("no route takes {path}"));
        match &route.action {
            Some(Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c)),
                ..
            })) => c.clone(),
            other => panic!("unexpected action {other:?}"),
        }
    }

    fn to_v2(prefix: &str) -> serde_json::Value {
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}]}}])
    }

    /// A prefix matches whole path elements (Gateway API), for sidecars and
    /// gRPC clients alike: `/pkg.Echo` takes `/pkg.Echo/Call`, never
    /// `/pkg.EchoX/Call`.
    #[test]
    fn path_prefix_matches_whole_path_elements() {
        for client in [Client::Sidecar, Client::Proxyless] {
            for prefix in ["/pkg.Echo", "/pkg.Echo/"] {
                let (r, _) = routes(&rules(to_v2(prefix)), client);
                let at = |path: &str| taken_by(&r, path);
                assert_eq!(at("/pkg.Echo/Call"), "backend|version=v2", "{client:?} {prefix}");
                assert_eq!(at("/pkg.Echo"), "backend|version=v2", "{client:?} {prefix}");
                assert_eq!(at("/pkg.Echo/"), "backend|version=v2", "{client:?} {prefix}");
                assert_eq!(at("/pkg.EchoX/Call"), "backend", "{client:?} {prefix}");
                assert_eq!(at("/pkg.Ech"), "backend", "{client:?} {prefix}");
                assert_eq!(at("/other"), "backend", "{client:?} {prefix}");
            }
            let (r, _) = routes(&rules(to_v2("/")), client);
            assert_eq!(taken_by(&r, "/anything"), "backend|version=v2", "{client:?}");
        }
        // What each client gets: a sidecar Envoy's own path-separated prefix;
        // gRPC clients (prefix, path and safe_regex only) the exact path
        // followed by the prefix with its `/`.
        let specs = |client| -> Vec<PathSpecifier> {
            let (r, _) = routes(&rules(to_v2("/pkg.Echo")), client);
            r.iter()
                .map(|r| r.r#match.clone().unwrap().path_specifier.unwrap())
                .collect()
        };
        assert_eq!(
            specs(Client::Sidecar),
            [
                PathSpecifier::PathSeparatedPrefix("/pkg.Echo".into()),
                PathSpecifier::Prefix("/".into())
            ]
        );
        assert_eq!(
            specs(Client::Proxyless),
            [
                PathSpecifier::Path("/pkg.Echo".into()),
                PathSpecifier::Prefix("/pkg.Echo/".into()),
                PathSpecifier::Prefix("/".into())
            ]
        );
        // Envoy refuses `?` and `#` in a path-separated prefix.
        assert_eq!(
            path_specifiers(
                Some(&serde_json::from_value(json!({"type": "PathPrefix", "value": "/a?b"})).unwrap()),
                Client::Sidecar
            ),
            [
                PathSpecifier::Path("/a?b".into()),
                PathSpecifier::Prefix("/a?b/".into())
            ]
        );
    }

    #[test]
    fn queries_and_methods_match_on_sidecars_and_drop_what_grpc_cannot_take() {
        let p = rules(json!([
            {"matches": [{"path": {"type": "Exact", "value": "/a"}, "method": "GET",
                          "queryParams": [{"type": "Exact", "name": "q", "value": "1"},
                                          {"type": "RegularExpression", "name": "r", "value": "^x+$"}]}],
             "default": {}},
            {"matches": [{"path": {"type": "Exact", "value": "/b"}, "method": "GET"}], "default": {}},
            {"matches": [{"path": {"type": "Exact", "value": "/c"}, "method": "POST",
                          "headers": [{"type": "Absent", "name": "x-debug"}]}], "default": {}}
        ]));
        let (sidecar, _) = routes(&p, Client::Sidecar);
        assert_eq!(sidecar.len(), 4);
        let a = sidecar[0].r#match.clone().unwrap();
        let q: Vec<(String, Option<QueryParameterMatchSpecifier>)> = a
            .query_parameters
            .iter()
            .map(|q| (q.name.clone(), q.query_parameter_match_specifier.clone()))
            .collect();
        assert_eq!(
            q,
            [
                (
                    "q".into(),
                    Some(QueryParameterMatchSpecifier::StringMatch(string_matcher(
                        MatchPattern::Exact("1".into())
                    )))
                ),
                (
                    "r".into(),
                    Some(QueryParameterMatchSpecifier::StringMatch(string_matcher(
                        MatchPattern::SafeRegex(regex("^x+$"))
                    )))
                ),
            ]
        );
        assert_eq!(a.headers[0].name, ":method");
        assert_eq!(
            a.headers[0].header_match_specifier,
            Some(string_match(MatchPattern::Exact("GET".into())))
        );
        let c = sidecar[2].r#match.clone().unwrap();
        assert!(c.headers[0].invert_match, "Absent is an inverted presence match");
        assert_eq!(c.headers[1].name, ":method");

        // gRPC has no query and only POST: the first two can never match and
        // are left out; POST always holds, so it is not matched on.
        let (grpc, _) = routes(&p, Client::Proxyless);
        assert_eq!(grpc.len(), 2);
        let c = grpc[0].r#match.clone().unwrap();
        assert_eq!(c.path_specifier, Some(PathSpecifier::Path("/c".into())));
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers[0].name, "x-debug");
    }

    fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    }

    #[test]
    fn filters_apply_on_sidecars_only() {
        let p = rules(json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "default": {
                "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "x-set", "value": "1"}, {"name": "host", "value": "api.internal"}],
                        "add": [{"name": "x-add", "value": "2"}],
                        "remove": ["x-remove", "host"]}},
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                        "add": [{"name": "x-served-by", "value": "meridian"}], "remove": ["server"]}},
                    {"type": "URLRewrite", "urlRewrite": {
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                    {"type": "RequestMirror", "requestMirror": {
                        "backendRef": {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "shadow"}},
                        "percentage": "12.5"}}
                ],
                "backendRefs": [{"kind": "MeshService", "name": "backend"}]
            }
        }]));
        let (sidecar, clusters) = routes(&p, Client::Sidecar);
        let r = &sidecar[0];
        assert_eq!(
            r.request_headers_to_add,
            [
                header("x-set", "1", HeaderAppendAction::OverwriteIfExistsOrAdd),
                header("x-add", "2", HeaderAppendAction::AppendIfExistsOrAdd)
            ]
        );
        assert_eq!(r.request_headers_to_remove, ["x-remove"], "host is never removed");
        assert_eq!(
            r.response_headers_to_add,
            [header(
                "x-served-by",
                "meridian",
                HeaderAppendAction::AppendIfExistsOrAdd
            )]
        );
        assert_eq!(r.response_headers_to_remove, ["server"]);
        let Some(Action::Route(a)) = &r.action else {
            panic!("not forwarded: {r:?}")
        };
        assert_eq!(
            a.host_rewrite_specifier,
            Some(HostRewriteSpecifier::HostRewriteLiteral("api.internal".into())),
            "a set host header is a host rewrite"
        );
        assert_eq!(a.prefix_rewrite, "/v2");
        assert_eq!(a.request_mirror_policies.len(), 1);
        assert_eq!(a.request_mirror_policies[0].cluster, "backend|version=shadow");
        assert_eq!(
            a.request_mirror_policies[0]
                .runtime_fraction
                .as_ref()
                .and_then(|f| f.default_value.as_ref())
                .map(|f| f.numerator),
            Some(125_000)
        );
        assert!(clusters.iter().any(|c| c.name() == "backend|version=shadow"));

        let (grpc, clusters) = routes(&p, Client::Proxyless);
        assert_eq!(grpc.len(), 3, "exact path, prefix, catch-all");
        for r in &grpc {
            assert!(r.request_headers_to_add.is_empty() && r.response_headers_to_remove.is_empty());
            let Some(Action::Route(a)) = &r.action else {
                panic!("not forwarded: {r:?}")
            };
            assert!(a.prefix_rewrite.is_empty() && a.request_mirror_policies.is_empty());
            assert_eq!(a.host_rewrite_specifier, None);
        }
        assert!(!clusters.iter().any(|c| c.name() == "backend|version=shadow"));
    }

    #[test]
    fn redirects_go_to_sidecars_and_are_left_out_for_grpc() {
        let p = rules(json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
            "default": {"filters": [{"type": "RequestRedirect", "requestRedirect": {
                "scheme": "https", "hostname": "new.example.com", "port": 8443, "statusCode": 301,
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]}
        }]));
        let (sidecar, clusters) = routes(&p, Client::Sidecar);
        assert_eq!(
            sidecar[0].action,
            Some(Action::Redirect(RedirectAction {
                host_redirect: "new.example.com".into(),
                port_redirect: 8443,
                response_code: RedirectResponseCode::MovedPermanently as i32,
                scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::SchemeRedirect("https".into())),
                path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/new".into())),
                ..Default::default()
            }))
        );
        assert_eq!(clusters.len(), 1, "a redirect sends nowhere: {clusters:?}");
        let (grpc, _) = routes(&p, Client::Proxyless);
        assert_eq!(grpc.len(), 1, "only the catch-all");
        assert!(matches!(grpc[0].action, Some(Action::Route(_))));
    }

    #[test]
    fn rules_without_backends_send_to_the_destination_itself() {
        let p = rules(json!([
            {"matches": [{"path": {"type": "Exact", "value": "/a"}}],
             "default": {"filters": [{"type": "RequestHeaderModifier",
                                      "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}]}},
            {"matches": [{"path": {"type": "Exact", "value": "/b"}}],
             "default": {"backendRefs": [{"kind": "MeshService", "name": "other", "weight": 0}]}}
        ]));
        let (r, clusters) = routes(&p, Client::Sidecar);
        assert_eq!(taken_by(&r, "/a"), "backend");
        assert_eq!(r.len(), 2, "a rule whose backends all weigh 0 is left out");
        assert_eq!(clusters.into_iter().map(|c| c.name()).collect::<Vec<_>>(), ["backend"]);
    }

    #[test]
    fn prefix_replacements_keep_path_elements_whole() {
        let rw = |to: &str| -> PathRewrite {
            serde_json::from_value(json!({"type": "ReplacePrefixMatch", "replacePrefixMatch": to})).unwrap()
        };
        let separated = PathSpecifier::PathSeparatedPrefix("/a".into());
        let exact = PathSpecifier::Path("/a".into());
        let slash = PathSpecifier::Prefix("/a/".into());
        let root = PathSpecifier::Prefix("/".into());
        let prefix = |s: &str| Some(PathChange::Prefix(s.into()));
        assert_eq!(path_change(&rw("/b"), Some(&separated)), prefix("/b"));
        assert_eq!(path_change(&rw("/b/"), Some(&exact)), prefix("/b"));
        assert_eq!(path_change(&rw("/b"), Some(&slash)), prefix("/b/"));
        assert_eq!(path_change(&rw("/b"), Some(&root)), prefix("/b/"));
        assert_eq!(path_change(&rw("/"), Some(&slash)), prefix("/"));
        assert_eq!(path_change(&rw("/"), Some(&root)), None);
        // `/a/x` → `/x`, `/a` → `/`: the prefix and its slashes become one `/`.
        assert_eq!(
            path_change(&rw("/"), Some(&PathSpecifier::PathSeparatedPrefix("/a.b".into()))),
            Some(PathChange::Regex(regex_substitution(r"^/a\.b/*".into(), "/")))
        );
        let full: PathRewrite =
            serde_json::from_value(json!({"type": "ReplaceFullPath", "replaceFullPath": "/x"})).unwrap();
        assert_eq!(path_change(&full, Some(&root)), Some(PathChange::Full("/x".into())));
    }

    #[test]
    fn tcp_routes_split_by_weight() {
        let refs: Vec<BackendRef> = serde_json::from_value(json!([
            {"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v1"}, "weight": 90},
            {"kind": "MeshServiceSubset", "name": "db", "tags": {"version": "v2"}, "weight": 10},
            {"kind": "MeshService", "name": "old-db", "weight": 0}
        ]))
        .unwrap();
        let targets = backends(Some(&refs), "db").unwrap();
        let proxy = tcp_route_proxy("outbound:127.0.0.1:5432", &targets, None);
        let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) = proxy.cluster_specifier else {
            panic!("not weighted: {proxy:?}")
        };
        let got: Vec<(String, u32)> = w.clusters.iter().map(|c| (c.name.clone(), c.weight)).collect();
        assert_eq!(got, [("db|version=v1".into(), 90), ("db|version=v2".into(), 10)]);
        let one = tcp_route_proxy("s", &backends(None, "db").unwrap(), None);
        assert_eq!(
            one.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster("db".into()))
        );
        assert_eq!(backends(Some(&refs[2..]), "db"), None, "nothing usable");
    }
}
