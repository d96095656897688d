//! State-of-the-world ADS: per type URL, what the proxy subscribed to and
//! what it was last sent. Plain data; the stream loop feeds it requests and
//! resource sets and sends what it returns.
//!
//! Rules (xDS protocol, "ACK/NACK", "When to send an update", "How the client
//! specifies what resources to return"):
//! - a response carries every subscribed resource of its type that exists
//!   (for listeners and clusters an absent name is how deletion and "does not
//!   exist" are said), with `version_info` a hash of exactly that content and
//!   a fresh nonce;
//! - a type is sent again when the content of its subscribed resources
//!   changes, when the request names something new (or is a first request),
//!   and never just because the proxy asked again;
//! - a NACK keeps what was sent as the proxy's last answer: the same content
//!   is not sent again, a change is;
//! - a request with a stale nonce is no ACK or NACK, but its subscription
//!   applies (envoyproxy/envoy#10363: a server that does not wait for ACKs
//!   must not drop those requests);
//! - make before break ("Eventually consistent considerations"): a cluster
//!   the proxy had stays in its CDS responses, though gone from the set, until
//!   the proxy has answered listeners and routes of the current set (which no
//!   longer refer to it) or stops asking for it. Otherwise a route change that
//!   replaces a cluster fails the calls still routed to the old one in between.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::{content_version, is_served, AdsError, Nonces, Outcome, Protocol, WILDCARD};
use crate::resources::{ResourceSet, SharedResources, XdsResource, CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPES_IN_ORDER};

/// What a proxy asked for, for one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Everything of the type the proxy should have (`*`, or the legacy empty
    /// first request).
    pub wildcard: bool,
    /// Names asked for explicitly.
    pub names: BTreeSet<String>,
}

impl Subscription {
    pub fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// True when `self` asks for something `before` did not.
    fn adds_to(&self, before: &Subscription) -> bool {
        (self.wildcard && !before.wildcard) || self.names.iter().any(|n| !before.covers(n))
    }
}

/// The last response of one type.
#[derive(Clone, Debug)]
struct Sent {
    nonce: String,
    version: String,
    /// Name → content version of what the response carried.
    resources: BTreeMap<String, String>,
    /// Whether the proxy has already ACKed or NACKed it (later requests with
    /// the same nonce only update the subscription).
    answered: bool,
}

#[derive(Clone, Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// Once a request names anything, an empty list means "nothing", not the
    /// legacy wildcard.
    ever_named: bool,
    /// Send at the next opportunity even if the content is unchanged.
    force: bool,
    sent: Option<Sent>,
}

/// Per-stream state of a state-of-the-world ADS stream.
#[derive(Debug)]
pub struct SotwState {
    max_names: usize,
    types: BTreeMap<String, TypeState>,
    nonces: Nonces,
    /// The set of the last [`SotwState::responses`]: while it stays the
    /// same, only forced types can be due.
    last: Option<SharedResources>,
    /// Clusters gone from the set that the proxy keeps until its listeners
    /// and routes are current (make before break).
    lingering: BTreeMap<String, XdsResource>,
}

/// What of `type_url` a subscription gets from `resources`: name → version.
fn view<'a>(sub: &Subscription, resources: &'a ResourceSet, type_url: &str) -> BTreeMap<&'a str, &'a str> {
    super::covered(sub.wildcard, &sub.names, resources, type_url)
}

impl SotwState {
    pub fn new(max_names: usize) -> Self {
        SotwState {
            max_names,
            types: BTreeMap::new(),
            nonces: Nonces::default(),
            last: None,
            lingering: BTreeMap::new(),
        }
    }

    /// Whether the proxy has answered listeners and routes that are those of
    /// `resources` (a type it does not ask for counts as current).
    fn routes_current(&self, resources: &ResourceSet) -> bool {
        [LISTENER, ROUTE].into_iter().all(|t| {
            self.types.get(t).is_none_or(|state| {
                state.sent.as_ref().is_none_or(|sent| {
                    sent.answered
                        && sent.resources.iter().map(|(n, v)| (n.as_str(), v.as_str())).eq(view(
                            &state.subscription,
                            resources,
                            t,
                        ))
                })
            })
        })
    }

    /// The current subscription of a type, if the proxy asked for it.
    pub fn subscription(&self, type_url: &str) -> Option<&Subscription> {
        self.types.get(type_url).map(|t| &t.subscription)
    }

    /// The version last sent for a type.
    pub fn sent_version(&self, type_url: &str) -> Option<&str> {
        self.types.get(type_url)?.sent.as_ref().map(|s| s.version.as_str())
    }

    /// Takes in one request: subscription, then ACK or NACK.
    pub fn on_request(&mut self, req: DiscoveryRequest) -> Result<Outcome, AdsError> {
        let type_url = req.type_url;
        if !is_served(&type_url) {
            return Ok(Outcome::UnknownType { type_url });
        }
        if req.resource_names.len() > self.max_names {
            return Err(AdsError::TooManyNames {
                type_url,
                count: req.resource_names.len(),
                max: self.max_names,
            });
        }
        let state = self.types.entry(type_url.clone()).or_default();

        let mut next = Subscription::default();
        if req.resource_names.is_empty() {
            next.wildcard = !state.ever_named;
        } else {
            state.ever_named = true;
            for name in req.resource_names {
                if name == WILDCARD {
                    next.wildcard = true;
                } else {
                    next.names.insert(name);
                }
            }
        }
        if next.adds_to(&state.subscription) {
            state.force = true;
        }
        state.subscription = next;

        let nonce = req.response_nonce;
        let Some(sent) = state.sent.as_mut() else {
            // First request of this type on this stream.
            state.force = true;
            return Ok(Outcome::Request { type_url });
        };
        if nonce.is_empty() {
            // The proxy says it holds nothing from this stream: start over.
            state.force = true;
            return Ok(Outcome::Request { type_url });
        }
        if nonce != sent.nonce {
            return Ok(Outcome::StaleNonce { type_url, nonce });
        }
        if sent.answered {
            return Ok(Outcome::Request { type_url });
        }
        sent.answered = true;
        let version = sent.version.clone();
        Ok(match req.error_detail {
            Some(status) => Outcome::Nacked {
                type_url,
                version,
                message: status.message,
            },
            None => Outcome::Acked { type_url, version },
        })
    }

    /// The responses due against `resources`, in make-before-break order;
    /// each is recorded as sent.
    pub fn responses(&mut self, resources: &SharedResources) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        let same_set = self.last.as_ref().is_some_and(|last| Arc::ptr_eq(last, resources));
        let previous = self.last.replace(resources.clone());
        let routes_current = self.routes_current(resources);
        for type_url in TYPES_IN_ORDER {
            let Some(state) = self.types.get_mut(type_url) else {
                continue;
            };
            // Unchanged resources and no new subscription: nothing to send
            // (the common case of an ACK), so skip comparing; lingering
            // clusters are looked at again on every answer.
            let recheck = type_url == CLUSTER && !self.lingering.is_empty();
            if same_set && !state.force && !recheck {
                continue;
            }
            let mut view = view(&state.subscription, resources, type_url);
            if type_url == CLUSTER {
                if routes_current {
                    self.lingering.clear();
                } else if let Some(sent) = &state.sent {
                    for name in sent.resources.keys().filter(|n| !view.contains_key(n.as_str())) {
                        let old = previous.as_ref().and_then(|p| p.get(CLUSTER, name));
                        if let (Some(old), false) = (old, self.lingering.contains_key(name)) {
                            self.lingering.insert(name.clone(), old.clone());
                        }
                    }
                }
                let subscription = &state.subscription;
                self.lingering
                    .retain(|n, _| subscription.covers(n) && !view.contains_key(n.as_str()));
                view.extend(self.lingering.values().map(|r| (r.name.as_str(), r.version.as_str())));
            }
            let changed = match &state.sent {
                None => true,
                Some(sent) => {
                    let before = sent
                        .resources
                        .iter()
                        .filter(|(n, _)| state.subscription.covers(n))
                        .map(|(n, v)| (n.as_str(), v.as_str()));
                    !before.eq(view.iter().map(|(n, v)| (*n, *v)))
                }
            };
            if !(state.force || changed) {
                continue;
            }
            let version = content_version(view.iter().map(|(n, v)| (*n, *v)));
            let nonce = self.nonces.next();
            let reason = match (&state.sent, changed) {
                (None, _) => "first request",
                (Some(_), true) => "content changed",
                (Some(_), false) => "newly asked for",
            };
            tracing::debug!(%type_url, %version, %nonce, resources = view.len(), reason, "sending");
            let bodies = view
                .keys()
                .filter_map(|n| resources.get(type_url, n).or_else(|| self.lingering.get(*n)))
                .map(|r| r.body.clone())
                .collect();
            state.sent = Some(Sent {
                nonce: nonce.clone(),
                version: version.clone(),
                resources: view.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                answered: false,
            });
            state.force = false;
            out.push(DiscoveryResponse {
                version_info: version,
                resources: bodies,
                type_url: type_url.to_string(),
                nonce,
                ..Default::default()
            });
            // Envoy completes warming of an updated cluster only on an EDS
            // response, even when its endpoints did not change; send the
            // endpoints again after clusters (Envoy xDS protocol, "Resource
            // warming").
            if type_url == CLUSTER {
                if let Some(endpoints) = self.types.get_mut(ENDPOINT) {
                    endpoints.force = true;
                }
            }
        }
        out
    }
}

impl Protocol for SotwState {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const KIND: &'static str = "sotw";

    fn new(max_names: usize) -> Self {
        SotwState::new(max_names)
    }

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn on_request(&mut self, req: DiscoveryRequest) -> Result<Outcome, AdsError> {
        SotwState::on_request(self, req)
    }

    fn responses(&mut self, resources: &SharedResources) -> Vec<DiscoveryResponse> {
        SotwState::responses(self, resources)
    }

    fn type_url(resp: &DiscoveryResponse) -> &str {
        &resp.type_url
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::Message;

    use super::*;
    use crate::ads::test_support::{nack_status, set};
    use crate::resources::{LISTENER, ROUTE};

    fn req(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(type_url: &str, names: &[&str], nonce: &str, message: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(nack_status(message)),
            ..req(type_url, names, nonce)
        }
    }

    /// Names of the resources in a response, in order.
    fn names(resp: &DiscoveryResponse) -> Vec<String> {
        resp.resources
            .iter()
            .map(|any| match any.type_url.as_str() {
                CLUSTER => Cluster::decode(&*any.value).map(|m| m.name),
                ENDPOINT => ClusterLoadAssignment::decode(&*any.value)
                    .map(|m| m.cluster_name.split('/').next().unwrap_or_default().to_string()),
                LISTENER => Listener::decode(&*any.value).map(|m| m.name),
                ROUTE => RouteConfiguration::decode(&*any.value).map(|m| m.name),
                other => panic!("unexpected type {other}"),
            })
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn one(mut responses: Vec<DiscoveryResponse>) -> DiscoveryResponse {
        assert_eq!(responses.len(), 1, "expected one response, got {responses:?}");
        responses.remove(0)
    }

    fn request_type(url: &str) -> Outcome {
        Outcome::Request { type_url: url.into() }
    }

    #[test]
    fn first_wildcard_request_gets_everything_then_ack_stops_resends() {
        let s = set(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1"), (LISTENER, "l", "1")]);
        let mut st = SotwState::new(100);
        assert_eq!(st.on_request(req(CLUSTER, &[], "")).unwrap(), request_type(CLUSTER));
        assert!(st.subscription(CLUSTER).unwrap().wildcard);
        let r = one(st.responses(&s));
        assert_eq!(r.type_url, CLUSTER);
        assert_eq!(names(&r), ["a", "b"]);
        assert_eq!(r.version_info, s.type_version(CLUSTER));
        assert!(!r.nonce.is_empty());
        assert!(st.responses(&s).is_empty(), "nothing changed");

        let ack = DiscoveryRequest {
            version_info: r.version_info.clone(),
            ..req(CLUSTER, &[], &r.nonce)
        };
        assert_eq!(
            st.on_request(ack.clone()).unwrap(),
            Outcome::Acked {
                type_url: CLUSTER.into(),
                version: r.version_info.clone()
            }
        );
        assert!(st.responses(&s).is_empty(), "an ACK is not a reason to resend");
        // The same ACK again is no second ACK.
        assert_eq!(st.on_request(ack).unwrap(), request_type(CLUSTER));
        assert!(st.responses(&s).is_empty());
    }

    #[test]
    fn content_change_sends_a_new_version_of_that_type_only() {
        let s1 = set(&[(CLUSTER, "a", "1"), (LISTENER, "l", "1")]);
        let mut st = SotwState::new(100);
        st.on_request(req(CLUSTER, &[], "")).unwrap();
        st.on_request(req(LISTENER, &[], "")).unwrap();
        let first = st.responses(&s1);
        assert_eq!(first.len(), 2);

        let s2 = set(&[(CLUSTER, "a", "1"), (LISTENER, "l", "2")]);
        let r = one(st.responses(&s2));
        assert_eq!(r.type_url, LISTENER);
        assert_ne!(r.version_info, first[1].version_info);
        assert_ne!(r.nonce, first[1].nonce);

        // A deleted listener: the response leaves it out.
        let s3 = set(&[(CLUSTER, "a", "1")]);
        let r = one(st.responses(&s3));
        assert_eq!(r.type_url, LISTENER);
        assert!(r.resources.is_empty());
    }

    #[test]
    fn regenerated_but_equal_content_sends_nothing() {
        let mut st = SotwState::new(100);
        st.on_request(req(CLUSTER, &["a"], "")).unwrap();
        one(st.responses(&set(&[(CLUSTER, "a", "1")])));
        // A new set (another Arc) with the same content for the names asked
        // for, and a change elsewhere.
        assert!(st
            .responses(&set(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1")]))
            .is_empty());
    }

    #[test]
    fn nack_keeps_the_last_config_and_is_reported_once() {
        let s1 = set(&[(CLUSTER, "a", "1")]);
        let mut st = SotwState::new(100);
        st.on_request(req(CLUSTER, &[], "")).unwrap();
        let good = one(st.responses(&s1));
        st.on_request(req(CLUSTER, &[], &good.nonce)).unwrap();

        let s2 = set(&[(CLUSTER, "a", "bad")]);
        let bad = one(st.responses(&s2));
        assert_eq!(
            st.on_request(nack(CLUSTER, &[], &bad.nonce, "invalid cluster a"))
                .unwrap(),
            Outcome::Nacked {
                type_url: CLUSTER.into(),
                version: bad.version_info.clone(),
                message: "invalid cluster a".into()
            }
        );
        assert!(st.responses(&s2).is_empty(), "the rejected content is not sent again");
        // A NACK storm: no resends, no further reports.
        for _ in 0..100 {
            assert_eq!(
                st.on_request(nack(CLUSTER, &[], &bad.nonce, "invalid cluster a"))
                    .unwrap(),
                request_type(CLUSTER)
            );
            assert!(st.responses(&s2).is_empty());
        }
        let s3 = set(&[(CLUSTER, "a", "fixed")]);
        let fixed = one(st.responses(&s3));
        assert_ne!(fixed.version_info, bad.version_info);
        assert_eq!(st.sent_version(CLUSTER), Some(fixed.version_info.as_str()));
    }

    #[test]
    fn stale_nonce_is_no_ack_but_its_subscription_applies() {
        let s = set(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]);
        let mut st = SotwState::new(100);
        st.on_request(req(ENDPOINT, &["a"], "")).unwrap();
        let r1 = one(st.responses(&s));
        let s2 = set(&[(ENDPOINT, "a", "2"), (ENDPOINT, "b", "1")]);
        let r2 = one(st.responses(&s2));
        // The proxy asks for b too before it has seen r2.
        assert_eq!(
            st.on_request(req(ENDPOINT, &["a", "b"], &r1.nonce)).unwrap(),
            Outcome::StaleNonce {
                type_url: ENDPOINT.into(),
                nonce: r1.nonce.clone()
            }
        );
        assert_eq!(
            st.sent_version(ENDPOINT),
            Some(r2.version_info.as_str()),
            "not an ACK or NACK"
        );
        let r3 = one(st.responses(&s2));
        assert_eq!(names(&r3), ["a", "b"]);
        // A stale NACK is not reported either.
        assert!(matches!(
            st.on_request(nack(ENDPOINT, &["a", "b"], &r1.nonce, "x")).unwrap(),
            Outcome::StaleNonce { .. }
        ));
    }

    #[test]
    fn named_subscription_serves_only_those_names() {
        // A proxyless gRPC client asks for its listener by name.
        let s = set(&[(LISTENER, "web:8080", "1"), (LISTENER, "other", "1")]);
        let mut st = SotwState::new(100);
        st.on_request(req(LISTENER, &["web:8080", "missing"], "")).unwrap();
        assert!(!st.subscription(LISTENER).unwrap().wildcard);
        let r = one(st.responses(&s));
        assert_eq!(names(&r), ["web:8080"], "a name that does not exist is left out");
        st.on_request(req(LISTENER, &["web:8080", "missing"], &r.nonce))
            .unwrap();

        // A change to a listener nobody asked for sends nothing.
        let s2 = set(&[(LISTENER, "web:8080", "1"), (LISTENER, "other", "2")]);
        assert!(st.responses(&s2).is_empty());
        // The missing one appears: sent.
        let s3 = set(&[(LISTENER, "web:8080", "1"), (LISTENER, "missing", "1")]);
        let r = one(st.responses(&s3));
        assert_eq!(names(&r), ["missing", "web:8080"]);
    }

    #[test]
    fn new_names_are_sent_even_if_unchanged_and_dropping_names_needs_no_answer() {
        let s = set(&[(ROUTE, "r1", "1"), (ROUTE, "r2", "1")]);
        let mut st = SotwState::new(100);
        st.on_request(req(ROUTE, &["r1", "r2"], "")).unwrap();
        let r = one(st.responses(&s));
        st.on_request(req(ROUTE, &["r1", "r2"], &r.nonce)).unwrap();

        st.on_request(req(ROUTE, &["r1"], &r.nonce)).unwrap();
        assert!(st.responses(&s).is_empty(), "unsubscribing needs no response");
        // Asking for r2 again: it must come again, unchanged as it is.
        st.on_request(req(ROUTE, &["r1", "r2"], &r.nonce)).unwrap();
        let again = one(st.responses(&s));
        assert_eq!(names(&again), ["r1", "r2"]);
        assert_eq!(again.version_info, r.version_info);
        assert_ne!(again.nonce, r.nonce);
    }

    #[test]
    fn legacy_wildcard_explicit_wildcard_and_empty_after_names() {
        let s = set(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1")]);
        let mut st = SotwState::new(100);
        st.on_request(req(CLUSTER, &[], "")).unwrap();
        let r = one(st.responses(&s));
        assert_eq!(names(&r), ["a", "b"]);

        st.on_request(req(CLUSTER, &["*", "a"], &r.nonce)).unwrap();
        let sub = st.subscription(CLUSTER).unwrap();
        assert!(sub.wildcard && sub.names.contains("a"));
        assert!(st.responses(&s).is_empty(), "nothing new asked for");

        st.on_request(req(CLUSTER, &["a"], &r.nonce)).unwrap();
        assert!(!st.subscription(CLUSTER).unwrap().wildcard);
        // b changes: not subscribed any more.
        let s2 = set(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "2")]);
        assert!(st.responses(&s2).is_empty());

        // An empty list after names is "nothing", not the wildcard.
        st.on_request(req(CLUSTER, &[], &r.nonce)).unwrap();
        assert_eq!(st.subscription(CLUSTER), Some(&Subscription::default()));
        let s3 = set(&[(CLUSTER, "a", "2"), (CLUSTER, "b", "3")]);
        assert!(st.responses(&s3).is_empty());
    }

    #[test]
    fn several_types_go_out_in_make_before_break_order() {
        let mut st = SotwState::new(100);
        for t in [ROUTE, LISTENER, ENDPOINT, CLUSTER] {
            st.on_request(req(t, &[], "")).unwrap();
        }
        let s = set(&[
            (ROUTE, "r", "1"),
            (LISTENER, "l", "1"),
            (ENDPOINT, "e", "1"),
            (CLUSTER, "c", "1"),
        ]);
        let order: Vec<_> = st.responses(&s).into_iter().map(|r| r.type_url).collect();
        assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE]);
        let s2 = set(&[
            (ROUTE, "r", "2"),
            (LISTENER, "l", "2"),
            (ENDPOINT, "e", "1"),
            (CLUSTER, "c", "2"),
        ]);
        let order: Vec<_> = st.responses(&s2).into_iter().map(|r| r.type_url).collect();
        // Endpoints follow a cluster update so Envoy can finish warming it.
        assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE]);
        let s3 = set(&[
            (ROUTE, "r", "3"),
            (LISTENER, "l", "2"),
            (ENDPOINT, "e", "1"),
            (CLUSTER, "c", "2"),
        ]);
        let order: Vec<_> = st.responses(&s3).into_iter().map(|r| r.type_url).collect();
        assert_eq!(order, [ROUTE]);
    }

    #[test]
    fn a_replaced_cluster_stays_until_the_routes_that_used_it_are_answered() {
        let mut st = SotwState::new(100);
        st.on_request(req(CLUSTER, &[], "")).unwrap();
        st.on_request(req(LISTENER, &[], "")).unwrap();
        st.on_request(req(ROUTE, &["r"], "")).unwrap();
        let s1 = set(&[
            (CLUSTER, "a", "1"),
            (CLUSTER, "v1", "1"),
            (LISTENER, "l", "1"),
            (ROUTE, "r", "1"),
        ]);
        for r in st.responses(&s1) {
            st.on_request(req(
                &r.type_url,
                if r.type_url == ROUTE { &["r"] } else { &[] },
                &r.nonce,
            ))
            .unwrap();
        }
        assert!(st.responses(&s1).is_empty());

        // The route moves from v1 to v2: clusters first, with v1 still there.
        let s2 = set(&[
            (CLUSTER, "a", "1"),
            (CLUSTER, "v2", "1"),
            (LISTENER, "l", "1"),
            (ROUTE, "r", "2"),
        ]);
        let rs = st.responses(&s2);
        let types: Vec<&str> = rs.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(types, [CLUSTER, ROUTE]);
        assert_eq!(names(&rs[0]), ["a", "v1", "v2"]);
        st.on_request(req(CLUSTER, &[], &rs[0].nonce)).unwrap();
        assert!(
            st.responses(&s2).is_empty(),
            "v1 stays while the new route is unanswered"
        );
        // The route is ACKed: now v1 goes.
        st.on_request(req(ROUTE, &["r"], &rs[1].nonce)).unwrap();
        let r = one(st.responses(&s2));
        assert_eq!(r.type_url, CLUSTER);
        assert_eq!(names(&r), ["a", "v2"]);
        st.on_request(req(CLUSTER, &[], &r.nonce)).unwrap();
        assert!(st.responses(&s2).is_empty());

        // A removal that no listener or route change comes with goes at once.
        let s3 = set(&[(CLUSTER, "v2", "1"), (LISTENER, "l", "1"), (ROUTE, "r", "2")]);
        assert_eq!(names(&one(st.responses(&s3))), ["v2"]);
    }

    #[test]
    fn a_lingering_cluster_goes_when_the_proxy_stops_asking_for_it() {
        // gRPC clients name the clusters their routes use.
        let mut st = SotwState::new(100);
        st.on_request(req(CLUSTER, &["v1"], "")).unwrap();
        st.on_request(req(ROUTE, &["r"], "")).unwrap();
        let s1 = set(&[(CLUSTER, "v1", "1"), (ROUTE, "r", "1")]);
        let rs = st.responses(&s1);
        st.on_request(req(CLUSTER, &["v1"], &rs[0].nonce)).unwrap();
        st.on_request(req(ROUTE, &["r"], &rs[1].nonce)).unwrap();

        let s2 = set(&[(CLUSTER, "v2", "1"), (ROUTE, "r", "2")]);
        let r = one(st.responses(&s2));
        assert_eq!(r.type_url, ROUTE, "v1 is not withdrawn before the new route");
        // The client applies the route and asks for v2 instead of v1.
        st.on_request(req(CLUSTER, &["v2"], &rs[0].nonce)).unwrap();
        let c = one(st.responses(&s2));
        assert_eq!(names(&c), ["v2"]);
    }

    #[test]
    fn unknown_types_are_ignored_and_names_are_bounded() {
        let s = set(&[(CLUSTER, "a", "1")]);
        let mut st = SotwState::new(2);
        let secret = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
        assert_eq!(
            st.on_request(req(secret, &["x"], "")).unwrap(),
            Outcome::UnknownType {
                type_url: secret.into()
            }
        );
        assert!(st.responses(&s).is_empty());
        assert!(st.subscription(secret).is_none());

        let err = st.on_request(req(CLUSTER, &["a", "b", "c"], "")).unwrap_err();
        assert!(matches!(err, AdsError::TooManyNames { count: 3, max: 2, .. }), "{err}");
    }
}
