//! Incremental (delta) ADS: per type URL, what the proxy subscribed to and
//! which version of each resource it holds. Plain data; the stream loop
//! feeds it requests and resource sets and sends what it returns.
//!
//! Rules (xDS protocol, "Incremental xDS"):
//! - the first request of a type with neither names to subscribe nor to
//!   unsubscribe is the legacy wildcard; `*` subscribes to everything
//!   explicitly and unsubscribing `*` ends it;
//! - `initial_resource_versions` (first request of a type on a reconnected
//!   stream) says what the proxy already holds: only what differs is sent,
//!   and what no longer exists is removed;
//! - a response carries the resources whose version the proxy does not hold
//!   and names in `removed_resources` the ones it holds that are gone — or
//!   that it newly subscribed to and that do not exist;
//! - names in `resource_names_subscribe` are sent even if the proxy seems to
//!   hold them; unsubscribing needs no answer, except for a name also covered
//!   by a wildcard, which is then sent (or removed) so the proxy knows
//!   whether to keep it;
//! - what was sent is what the proxy holds, ACKed or NACKed: a NACK does not
//!   make the same content go out again;
//! - make before break: a cluster that left the set but is still subscribed
//!   is removed only once the proxy has answered listeners and routes that
//!   no longer use it (an unsubscribed one goes at once);
//! - subscription changes apply whatever the nonce; the nonce only pairs an
//!   ACK or NACK with a response.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use super::{content_version, is_served, AdsError, Nonces, Outcome, Protocol, WILDCARD};
use crate::resources::{SharedResources, CLUSTER, LISTENER, ROUTE, TYPES_IN_ORDER};

/// How many unanswered responses per type are remembered for pairing ACKs.
const PENDING_NONCES: usize = 16;

#[derive(Clone, Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → version of what the proxy holds.
    held: BTreeMap<String, String>,
    /// Names to send (or remove, if absent) whatever the proxy holds.
    force: BTreeSet<String>,
    /// Send everything covered whatever the proxy holds (`*` subscribed).
    force_all: bool,
    /// No response of this type yet on this stream: answer even if empty.
    first: bool,
    /// Nonce → system version of responses not yet answered, oldest first.
    pending: VecDeque<(String, String)>,
}

impl TypeState {
    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Per-stream state of an incremental ADS stream.
#[derive(Debug)]
pub struct DeltaState {
    max_names: usize,
    types: BTreeMap<String, TypeState>,
    nonces: Nonces,
    /// The set of the last [`DeltaState::responses`]: while it stays the
    /// same, only types with a first request or forced names can be due.
    last: Option<SharedResources>,
    /// Clusters gone from the set whose removal waits until the proxy holds
    /// the listeners and routes of the current set (make before break).
    lingering: bool,
}

impl DeltaState {
    pub fn new(max_names: usize) -> Self {
        DeltaState {
            max_names,
            types: BTreeMap::new(),
            nonces: Nonces::default(),
            last: None,
            lingering: false,
        }
    }

    /// Whether the proxy has answered every listener and route response and
    /// holds exactly those of `resources` (a type it does not ask for
    /// counts as current).
    fn routes_current(&self, resources: &SharedResources) -> bool {
        [LISTENER, ROUTE].into_iter().all(|t| {
            self.types.get(t).is_none_or(|state| {
                let covered = super::covered(state.wildcard, &state.names, resources, t);
                state.pending.is_empty() && state.held.iter().map(|(n, v)| (n.as_str(), v.as_str())).eq(covered)
            })
        })
    }

    /// Whether the proxy has a wildcard subscription to a type.
    pub fn is_wildcard(&self, type_url: &str) -> bool {
        self.types.get(type_url).is_some_and(|t| t.wildcard)
    }

    /// The names the proxy subscribed to explicitly.
    pub fn names(&self, type_url: &str) -> Option<&BTreeSet<String>> {
        self.types.get(type_url).map(|t| &t.names)
    }

    /// What the server believes the proxy holds of a type, name → version.
    pub fn held(&self, type_url: &str) -> Option<&BTreeMap<String, String>> {
        self.types.get(type_url).map(|t| &t.held)
    }

    /// Takes in one request: subscription changes, then ACK or NACK.
    pub fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<Outcome, AdsError> {
        let type_url = req.type_url;
        if !is_served(&type_url) {
            return Ok(Outcome::UnknownType { type_url });
        }
        let count = req.resource_names_subscribe.len()
            + req.resource_names_unsubscribe.len()
            + req.initial_resource_versions.len();
        if count > self.max_names {
            return Err(AdsError::TooManyNames {
                type_url,
                count,
                max: self.max_names,
            });
        }
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        if first {
            state.first = true;
            state.wildcard = req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty();
            state.held = req.initial_resource_versions.into_iter().collect();
        }
        for name in req.resource_names_unsubscribe {
            if name == WILDCARD {
                state.wildcard = false;
                let names = &state.names;
                state.held.retain(|n, _| names.contains(n));
                state.force.retain(|n| names.contains(n));
            } else {
                state.names.remove(&name);
                if state.wildcard {
                    // Still covered by the wildcard, perhaps: tell the proxy
                    // which.
                    state.force.insert(name);
                } else {
                    state.held.remove(&name);
                    state.force.remove(&name);
                }
            }
        }
        for name in req.resource_names_subscribe {
            if name == WILDCARD {
                state.wildcard = true;
                state.force_all |= !first;
            } else {
                // On a first request a name the proxy says it holds is sent
                // only if it differs; otherwise it is sent regardless.
                if !(first && state.held.contains_key(&name)) {
                    state.force.insert(name.clone());
                }
                state.names.insert(name);
            }
        }
        if state.names.len() > self.max_names {
            return Err(AdsError::TooManyNames {
                type_url,
                count: state.names.len(),
                max: self.max_names,
            });
        }
        if first {
            // Versions of things the proxy did not subscribe to are noise.
            let (wildcard, names) = (state.wildcard, &state.names);
            state.held.retain(|n, _| wildcard || names.contains(n));
        }

        let nonce = req.response_nonce;
        if nonce.is_empty() {
            return Ok(Outcome::Request { type_url });
        }
        let Some(index) = state.pending.iter().position(|(n, _)| *n == nonce) else {
            return Ok(Outcome::StaleNonce { type_url, nonce });
        };
        // Proxies answer in order: older unanswered responses never will be.
        let mut answered = state.pending.drain(..=index);
        let version = answered.next_back().map(|(_, v)| v).unwrap_or_default();
        drop(answered);
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
    /// what each carries is recorded as held by the proxy.
    pub fn responses(&mut self, resources: &SharedResources) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        let same_set = self.last.as_ref().is_some_and(|last| Arc::ptr_eq(last, resources));
        self.last = Some(resources.clone());
        let routes_current = self.routes_current(resources);
        for type_url in TYPES_IN_ORDER {
            let Some(state) = self.types.get_mut(type_url) else {
                continue;
            };
            // Unchanged resources and nothing newly asked for: nothing to
            // send (the common case of an ACK), so skip comparing; lingering
            // clusters are looked at again on every answer.
            let recheck = type_url == CLUSTER && self.lingering;
            if same_set && !state.first && !state.force_all && state.force.is_empty() && !recheck {
                continue;
            }
            let covered: Vec<_> = if state.wildcard {
                resources.of_type(type_url).collect()
            } else {
                state.names.iter().filter_map(|n| resources.get(type_url, n)).collect()
            };
            let sent: Vec<_> = covered
                .into_iter()
                .filter(|r| {
                    state.force_all || state.force.contains(&r.name) || state.held.get(&r.name) != Some(&r.version)
                })
                .collect();
            let mut removed: BTreeSet<String> = state
                .held
                .keys()
                .chain(state.force.iter())
                .filter(|n| resources.get(type_url, n).is_none() || !state.covers(n))
                .cloned()
                .collect();
            if type_url == CLUSTER {
                // A cluster the proxy still subscribes to but that left the
                // set stays until its listeners and routes no longer use it:
                // removing it first would fail requests in between.
                let before = removed.len();
                if !routes_current {
                    removed.retain(|n| !(state.covers(n) && state.held.contains_key(n)));
                }
                self.lingering = removed.len() < before;
            }
            let due = state.first || !sent.is_empty() || !removed.is_empty();
            state.first = false;
            state.force_all = false;
            state.force.clear();
            if !due {
                continue;
            }
            for r in &sent {
                state.held.insert(r.name.clone(), r.version.clone());
            }
            for name in &removed {
                state.held.remove(name);
            }
            let system_version = content_version(state.held.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            let nonce = self.nonces.next();
            if state.pending.len() == PENDING_NONCES {
                state.pending.pop_front();
            }
            state.pending.push_back((nonce.clone(), system_version.clone()));
            tracing::debug!(
                %type_url,
                %system_version,
                %nonce,
                resources = sent.len(),
                removed = removed.len(),
                "sending"
            );
            out.push(DeltaDiscoveryResponse {
                system_version_info: system_version,
                resources: sent
                    .into_iter()
                    .map(|r| Resource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.body.clone()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: type_url.to_string(),
                removed_resources: removed.into_iter().collect(),
                nonce,
                ..Default::default()
            });
        }
        out
    }
}

impl Protocol for DeltaState {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const KIND: &'static str = "delta";

    fn new(max_names: usize) -> Self {
        DeltaState::new(max_names)
    }

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<Outcome, AdsError> {
        DeltaState::on_request(self, req)
    }

    fn responses(&mut self, resources: &SharedResources) -> Vec<DeltaDiscoveryResponse> {
        DeltaState::responses(self, resources)
    }

    fn type_url(resp: &DeltaDiscoveryResponse) -> &str {
        &resp.type_url
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ads::test_support::{nack_status, set};
    use crate::resources::{ResourceSet, ENDPOINT};

    fn req(type_url: &str, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
        req(type_url, &[], &[], nonce)
    }

    fn one(mut responses: Vec<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
        assert_eq!(responses.len(), 1, "expected one response, got {responses:?}");
        responses.remove(0)
    }

    fn sent(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    fn version(s: &ResourceSet, type_url: &str, name: &str) -> String {
        s.get(type_url, name).map(|r| r.version.clone()).unwrap()
    }

    #[test]
    fn a_replaced_cluster_stays_until_the_routes_that_used_it_are_answered() {
        let mut st = DeltaState::new(100);
        st.on_request(req(CLUSTER, &[], &[], "")).unwrap();
        st.on_request(req(LISTENER, &[], &[], "")).unwrap();
        st.on_request(req(ROUTE, &["r"], &[], "")).unwrap();
        let s1 = set(&[
            (CLUSTER, "a", "1"),
            (CLUSTER, "v1", "1"),
            (LISTENER, "l", "1"),
            (ROUTE, "r", "1"),
        ]);
        for r in st.responses(&s1) {
            st.on_request(ack(&r.type_url, &r.nonce)).unwrap();
        }
        assert!(st.responses(&s1).is_empty());

        // The route moves from v1 to v2: v2 is added, v1 not yet removed.
        let s2 = set(&[
            (CLUSTER, "a", "1"),
            (CLUSTER, "v2", "1"),
            (LISTENER, "l", "1"),
            (ROUTE, "r", "2"),
        ]);
        let rs = st.responses(&s2);
        let types: Vec<&str> = rs.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(types, [CLUSTER, ROUTE]);
        assert_eq!(sent(&rs[0]), ["v2"]);
        assert!(
            rs[0].removed_resources.is_empty(),
            "v1 stays while the route is unanswered"
        );
        st.on_request(ack(CLUSTER, &rs[0].nonce)).unwrap();
        assert!(st.responses(&s2).is_empty());
        // The route is ACKed: now v1 goes.
        st.on_request(ack(ROUTE, &rs[1].nonce)).unwrap();
        let r = one(st.responses(&s2));
        assert_eq!(r.type_url, CLUSTER);
        assert!(r.resources.is_empty());
        assert_eq!(r.removed_resources, ["v1"]);
        st.on_request(ack(CLUSTER, &r.nonce)).unwrap();
        assert!(st.responses(&s2).is_empty());

        // A removal that no listener or route change comes with goes at once,
        // and so does a cluster the proxy unsubscribes from.
        let s3 = set(&[(CLUSTER, "v2", "1"), (LISTENER, "l", "1"), (ROUTE, "r", "2")]);
        assert_eq!(one(st.responses(&s3)).removed_resources, ["a"]);
    }

    #[test]
    fn wildcard_sends_everything_then_only_changes_and_removals() {
        let s1 = set(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1"), (CLUSTER, "c", "1")]);
        let mut st = DeltaState::new(100);
        st.on_request(req(CLUSTER, &[], &[], "")).unwrap();
        assert!(st.is_wildcard(CLUSTER), "legacy wildcard");
        let r = one(st.responses(&s1));
        assert_eq!(sent(&r), ["a", "b", "c"]);
        assert!(r.removed_resources.is_empty());
        assert_eq!(r.resources[0].version, version(&s1, CLUSTER, "a"));
        assert_eq!(
            st.on_request(ack(CLUSTER, &r.nonce)).unwrap(),
            Outcome::Acked {
                type_url: CLUSTER.into(),
                version: r.system_version_info.clone()
            }
        );
        assert!(st.responses(&s1).is_empty());

        let s2 = set(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "2"), (CLUSTER, "d", "1")]);
        let r = one(st.responses(&s2));
        assert_eq!(sent(&r), ["b", "d"]);
        assert_eq!(r.removed_resources, ["c"]);
        assert_eq!(st.held(CLUSTER).unwrap().len(), 3);
    }

    #[test]
    fn first_wildcard_request_is_answered_even_when_empty() {
        let mut st = DeltaState::new(100);
        st.on_request(req(LISTENER, &["*"], &[], "")).unwrap();
        let r = one(st.responses(&Arc::new(ResourceSet::new())));
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
        assert!(st.responses(&Arc::new(ResourceSet::new())).is_empty());
    }

    #[test]
    fn names_that_do_not_exist_are_removed_and_sent_when_they_appear() {
        let mut st = DeltaState::new(100);
        st.on_request(req(ENDPOINT, &["a", "b"], &[], "")).unwrap();
        assert!(!st.is_wildcard(ENDPOINT));
        let s1 = set(&[(ENDPOINT, "a", "1"), (ENDPOINT, "other", "1")]);
        let r = one(st.responses(&s1));
        assert_eq!(sent(&r), ["a"]);
        assert_eq!(r.removed_resources, ["b"], "b does not exist");
        assert!(st.responses(&s1).is_empty(), "said once");

        let s2 = set(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "1"), (ENDPOINT, "other", "2")]);
        let r = one(st.responses(&s2));
        assert_eq!(sent(&r), ["b"]);
    }

    #[test]
    fn resume_with_initial_versions_sends_only_the_difference() {
        let s = set(&[(CLUSTER, "same", "1"), (CLUSTER, "changed", "2"), (CLUSTER, "new", "1")]);
        let mut initial = HashMap::new();
        initial.insert("same".to_string(), version(&s, CLUSTER, "same"));
        initial.insert("changed".to_string(), "old".to_string());
        initial.insert("gone".to_string(), "old".to_string());
        let mut st = DeltaState::new(100);
        st.on_request(DeltaDiscoveryRequest {
            initial_resource_versions: initial,
            ..req(CLUSTER, &["*"], &[], "")
        })
        .unwrap();
        let r = one(st.responses(&s));
        assert_eq!(sent(&r), ["changed", "new"]);
        assert_eq!(r.removed_resources, ["gone"], "no leaked deletion");
        let held: Vec<_> = st.held(CLUSTER).unwrap().keys().cloned().collect();
        assert_eq!(held, ["changed", "new", "same"]);
    }

    #[test]
    fn resume_of_named_subscription_sends_only_what_differs() {
        let s = set(&[(ROUTE, "r1", "1"), (ROUTE, "r2", "2")]);
        let mut initial = HashMap::new();
        initial.insert("r1".to_string(), version(&s, ROUTE, "r1"));
        initial.insert("r2".to_string(), "old".to_string());
        initial.insert("unsubscribed".to_string(), "old".to_string());
        let mut st = DeltaState::new(100);
        st.on_request(DeltaDiscoveryRequest {
            initial_resource_versions: initial,
            ..req(ROUTE, &["r1", "r2", "r3"], &[], "")
        })
        .unwrap();
        let r = one(st.responses(&s));
        assert_eq!(sent(&r), ["r2"]);
        assert_eq!(
            r.removed_resources,
            ["r3"],
            "r3 does not exist; unsubscribed versions are ignored"
        );
    }

    #[test]
    fn subscribing_again_resends_and_unsubscribing_needs_no_answer() {
        let s = set(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]);
        let mut st = DeltaState::new(100);
        st.on_request(req(ENDPOINT, &["a", "b"], &[], "")).unwrap();
        let r = one(st.responses(&s));
        st.on_request(ack(ENDPOINT, &r.nonce)).unwrap();

        st.on_request(req(ENDPOINT, &["a"], &[], "")).unwrap();
        let r = one(st.responses(&s));
        assert_eq!(sent(&r), ["a"], "subscribed names are sent even if held");

        st.on_request(req(ENDPOINT, &[], &["b"], "")).unwrap();
        assert!(st.responses(&s).is_empty());
        let s2 = set(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "2")]);
        assert!(st.responses(&s2).is_empty(), "b is no longer subscribed");
        let s3 = set(&[(ENDPOINT, "a", "1")]);
        assert!(st.responses(&s3).is_empty(), "no removal of what the proxy dropped");
    }

    #[test]
    fn unsubscribing_a_name_under_a_wildcard_says_whether_to_keep_it() {
        let s = set(&[(CLUSTER, "a", "1"), (CLUSTER, "b", "1")]);
        let mut st = DeltaState::new(100);
        st.on_request(req(CLUSTER, &["*", "a", "x"], &[], "")).unwrap();
        let r = one(st.responses(&s));
        assert_eq!(sent(&r), ["a", "b"]);
        assert_eq!(r.removed_resources, ["x"]);

        st.on_request(req(CLUSTER, &[], &["a", "x"], "")).unwrap();
        let r = one(st.responses(&s));
        assert_eq!(sent(&r), ["a"], "a is still covered by the wildcard");
        assert_eq!(r.removed_resources, ["x"], "x is not");

        // Dropping the wildcard keeps only explicit names.
        st.on_request(req(CLUSTER, &["b"], &["*"], "")).unwrap();
        assert!(!st.is_wildcard(CLUSTER));
        let r = one(st.responses(&s));
        assert_eq!(sent(&r), ["b"]);
        let s2 = set(&[(CLUSTER, "a", "2"), (CLUSTER, "b", "1")]);
        assert!(st.responses(&s2).is_empty(), "a is not subscribed any more");
    }

    #[test]
    fn nack_is_reported_and_the_same_content_not_resent() {
        let s1 = set(&[(LISTENER, "l", "1")]);
        let mut st = DeltaState::new(100);
        st.on_request(req(LISTENER, &[], &[], "")).unwrap();
        let r1 = one(st.responses(&s1));
        let s2 = set(&[(LISTENER, "l", "bad")]);
        let r2 = one(st.responses(&s2));
        // The proxy ACKs the first and NACKs the second.
        assert!(matches!(
            st.on_request(ack(LISTENER, &r1.nonce)).unwrap(),
            Outcome::Acked { .. }
        ));
        let outcome = st
            .on_request(DeltaDiscoveryRequest {
                error_detail: Some(nack_status("bad listener")),
                ..ack(LISTENER, &r2.nonce)
            })
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Nacked {
                type_url: LISTENER.into(),
                version: r2.system_version_info.clone(),
                message: "bad listener".into()
            }
        );
        assert!(st.responses(&s2).is_empty());
        // The same nonce again is no longer known.
        assert!(matches!(
            st.on_request(ack(LISTENER, &r2.nonce)).unwrap(),
            Outcome::StaleNonce { .. }
        ));
        let s3 = set(&[(LISTENER, "l", "good")]);
        assert_eq!(sent(&one(st.responses(&s3))), ["l"]);
    }

    #[test]
    fn stale_nonce_still_changes_the_subscription() {
        let s = set(&[(ENDPOINT, "a", "1"), (ENDPOINT, "b", "1")]);
        let mut st = DeltaState::new(100);
        st.on_request(req(ENDPOINT, &["a"], &[], "")).unwrap();
        one(st.responses(&s));
        assert!(matches!(
            st.on_request(req(ENDPOINT, &["b"], &[], "no-such-nonce")).unwrap(),
            Outcome::StaleNonce { .. }
        ));
        assert_eq!(sent(&one(st.responses(&s))), ["b"]);
    }

    #[test]
    fn ordering_unknown_types_and_bounds() {
        let mut st = DeltaState::new(3);
        for t in [ROUTE, LISTENER, ENDPOINT, CLUSTER] {
            st.on_request(req(t, &[], &[], "")).unwrap();
        }
        let s = set(&[
            (ROUTE, "r", "1"),
            (LISTENER, "l", "1"),
            (ENDPOINT, "e", "1"),
            (CLUSTER, "c", "1"),
        ]);
        let order: Vec<_> = st.responses(&s).into_iter().map(|r| r.type_url).collect();
        assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE]);

        let vhds = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
        assert!(matches!(
            st.on_request(req(vhds, &["x"], &[], "")).unwrap(),
            Outcome::UnknownType { .. }
        ));
        assert!(st.responses(&s).is_empty());

        // Each request is small, but the subscription may not grow past the bound.
        st.on_request(req(ENDPOINT, &["a", "b"], &[], "")).unwrap();
        let err = st.on_request(req(ENDPOINT, &["c", "d"], &[], "")).unwrap_err();
        assert!(matches!(err, AdsError::TooManyNames { count: 4, max: 3, .. }), "{err}");
        let err = st.on_request(req(ROUTE, &["a", "b"], &["c", "d"], "")).unwrap_err();
        assert!(matches!(err, AdsError::TooManyNames { count: 4, .. }), "{err}");
    }
}
