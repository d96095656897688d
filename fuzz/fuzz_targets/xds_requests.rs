//! Feeds arbitrary bytes to the per-stream ADS state, both flavours. Any
//! panic is a bug: whatever a proxy sends must become a subscription, an
//! ACK/NACK, an ignored request or a refused stream.
//!
//! The input is a sequence of frames `[op][len][len bytes]`; each frame is
//! one step on one stream:
//! - op & 3 == 0: the bytes as a `DiscoveryRequest` for the SotW stream;
//! - op & 3 == 1: the bytes as a `DeltaDiscoveryRequest` for the delta stream;
//! - op & 3 == 2: the zone's configuration changes (the other resource set);
//! - op & 3 == 3: the proxy answers one of the last responses (ACK, or NACK
//!   when the first byte is odd), on both streams.
//!
//! To reach deep states without guessing long strings, bits 2–4 of `op`
//! pick a served type URL for the request (or keep the decoded one), and a
//! one-byte resource name stands for one of the names the sets hold (or `*`,
//! or a name that does not exist). A request the state refuses ends its
//! stream; the proxy reconnects with a fresh one. After each step the
//! responses due against the current set are checked: they carry only served
//! types and existing resources (for SotW clusters, of either set: a replaced
//! cluster lingers until the proxy has routes without it), fresh nonces, and
//! asking again without a change yields nothing.
#![no_main]

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use libfuzzer_sys::fuzz_target;
use meridian_core::dataplane::Dataplane;
use meridian_xds::ads::{DeltaState, SotwState};
use meridian_xds::generate::{proxyless, NoPolicies};
use meridian_xds::resources::{SharedResources, CLUSTER, TYPES_IN_ORDER};
use meridian_xds::snapshot::{DataplaneEntry, MeshSnapshot, ProxyContext, ProxyKind};
use prost::Message;

/// Small, so that the "too many names" refusals are reachable.
const MAX_NAMES: usize = 16;
/// Frames per input: bounds the work of one run.
const MAX_STEPS: usize = 128;

/// Two configurations of the same proxy: before and after a backend goes
/// away and a db appears, so switching exercises changes and removals.
fn sets() -> &'static [SharedResources; 2] {
    static SETS: OnceLock<[SharedResources; 2]> = OnceLock::new();
    SETS.get_or_init(|| {
        let dp = |address: &str, port: u32, service: &str, version: &str| DataplaneEntry {
            name: format!("{service}-{address}"),
            spec: serde_json::from_value::<Dataplane>(serde_json::json!({"networking": {"address": address,
                "inbound": [{"port": port, "tags": {"kuma.io/service": service, "version": version}}]}}))
            .unwrap_or_else(|e| panic!("test dataplane: {e}")),
        };
        let client = dp("127.0.0.9", 1, "client", "v1");
        let generate = |dataplanes: Vec<DataplaneEntry>| {
            let snapshot = MeshSnapshot {
                zone: "zone-1".into(),
                mesh: "default".into(),
                dataplanes,
                ..Default::default()
            };
            let proxy = ProxyContext {
                mesh: "default".into(),
                name: client.name.clone(),
                kind: ProxyKind::Proxyless,
                dataplane: client.spec.clone(),
            };
            Arc::new(proxyless::generate(&snapshot, &proxy, &NoPolicies))
        };
        [
            generate(vec![
                client.clone(),
                dp("127.0.0.1", 50051, "backend", "v1"),
                dp("127.0.0.2", 50051, "backend", "v2"),
            ]),
            generate(vec![
                client.clone(),
                dp("127.0.0.1", 50052, "backend", "v1"),
                dp("127.0.0.3", 5432, "db", "v1"),
            ]),
        ]
    })
}

/// Names a one-byte name stands for: every resource name of both sets, the
/// wildcard, and a name that never exists.
fn known_names() -> &'static Vec<String> {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = BTreeSet::new();
        for set in sets() {
            for t in TYPES_IN_ORDER {
                names.extend(set.of_type(t).map(|r| r.name.clone()));
            }
        }
        let mut out = vec!["*".to_string(), "missing".to_string()];
        out.extend(names);
        out
    })
}

fn expand(names: &mut [String]) {
    let known = known_names();
    for n in names.iter_mut() {
        if n.len() == 1 {
            let i = usize::from(n.as_bytes()[0]) % known.len();
            *n = known[i].clone();
        }
    }
}

/// Bits 2–4 of `op`: 0–3 a served type, 4 a type Meridian does not serve,
/// anything else the decoded type URL.
fn pick_type(op: u8, decoded: &mut String) {
    match (op >> 2) & 7 {
        i @ 0..=3 => *decoded = TYPES_IN_ORDER[usize::from(i)].to_string(),
        4 => *decoded = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".to_string(),
        _ => {}
    }
}

fn nack_or_ack(payload: &[u8]) -> Option<Status> {
    (payload.first().copied().unwrap_or(0) & 1 == 1).then(|| Status {
        code: 3,
        message: "rejected".into(),
        details: Vec::new(),
    })
}

struct Streams {
    sotw: SotwState,
    delta: DeltaState,
    current: usize,
    last_sotw: Vec<DiscoveryResponse>,
    last_delta: Vec<DeltaDiscoveryResponse>,
    sotw_nonces: BTreeSet<String>,
    delta_nonces: BTreeSet<String>,
}

impl Streams {
    fn new() -> Self {
        Streams {
            sotw: SotwState::new(MAX_NAMES),
            delta: DeltaState::new(MAX_NAMES),
            current: 0,
            last_sotw: Vec::new(),
            last_delta: Vec::new(),
            sotw_nonces: BTreeSet::new(),
            delta_nonces: BTreeSet::new(),
        }
    }

    fn set(&self) -> &'static SharedResources {
        &sets()[self.current]
    }

    fn sotw_request(&mut self, req: DiscoveryRequest) {
        if self.sotw.on_request(req).is_err() {
            // The stream ends; the proxy reconnects.
            self.sotw = SotwState::new(MAX_NAMES);
            self.sotw_nonces.clear();
        }
    }

    fn delta_request(&mut self, req: DeltaDiscoveryRequest) {
        if self.delta.on_request(req).is_err() {
            self.delta = DeltaState::new(MAX_NAMES);
            self.delta_nonces.clear();
        }
    }

    /// Sends what is due on both streams, checking it.
    fn flush(&mut self) {
        let set = self.set();
        let sotw = self.sotw.responses(set);
        for r in &sotw {
            assert!(
                TYPES_IN_ORDER.contains(&r.type_url.as_str()),
                "sotw sent {}",
                r.type_url
            );
            assert!(
                self.sotw_nonces.insert(r.nonce.clone()),
                "sotw nonce {} reused",
                r.nonce
            );
            for body in &r.resources {
                assert_eq!(body.type_url, r.type_url, "a resource of another type in the response");
                // A cluster of the previous set may linger until the proxy
                // has the routes without it (make before break).
                let candidates: &[SharedResources] = if r.type_url == CLUSTER {
                    sets()
                } else {
                    std::slice::from_ref(set)
                };
                assert!(
                    candidates
                        .iter()
                        .any(|s| s.of_type(&r.type_url).any(|x| x.body == *body)),
                    "sotw sent a resource that is not in the set"
                );
            }
        }
        let delta = self.delta.responses(set);
        for r in &delta {
            assert!(
                TYPES_IN_ORDER.contains(&r.type_url.as_str()),
                "delta sent {}",
                r.type_url
            );
            assert!(
                self.delta_nonces.insert(r.nonce.clone()),
                "delta nonce {} reused",
                r.nonce
            );
            for res in &r.resources {
                let Some(x) = set.get(&r.type_url, &res.name) else {
                    panic!("delta sent {} which is not in the set", res.name);
                };
                assert_eq!(x.version, res.version, "delta sent a stale version of {}", res.name);
                assert!(
                    !r.removed_resources.contains(&res.name),
                    "{} both sent and removed",
                    res.name
                );
                assert_eq!(
                    self.delta.held(&r.type_url).and_then(|h| h.get(&res.name)),
                    Some(&res.version),
                    "delta does not record {} as held",
                    res.name
                );
            }
        }
        // Nothing changed and nothing was asked: nothing more is due.
        assert!(self.sotw.responses(set).is_empty(), "sotw sends again without a reason");
        assert!(
            self.delta.responses(set).is_empty(),
            "delta sends again without a reason"
        );
        if !sotw.is_empty() {
            self.last_sotw = sotw;
        }
        if !delta.is_empty() {
            self.last_delta = delta;
        }
    }

    /// The proxy answers the `pick`-th of the last responses of each stream.
    fn answer(&mut self, payload: &[u8]) {
        let pick = usize::from(payload.get(1).copied().unwrap_or(0));
        if !self.last_sotw.is_empty() {
            let r = &self.last_sotw[pick % self.last_sotw.len()];
            let mut names: Vec<String> = Vec::new();
            if let Some(sub) = self.sotw.subscription(&r.type_url) {
                if sub.wildcard {
                    names.push("*".into());
                }
                names.extend(sub.names.iter().cloned());
            }
            let req = DiscoveryRequest {
                version_info: r.version_info.clone(),
                resource_names: names,
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: nack_or_ack(payload),
                ..Default::default()
            };
            self.sotw_request(req);
        }
        if !self.last_delta.is_empty() {
            let r = &self.last_delta[pick % self.last_delta.len()];
            let req = DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: nack_or_ack(payload),
                ..Default::default()
            };
            self.delta_request(req);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut streams = Streams::new();
    let mut rest = data;
    for _ in 0..MAX_STEPS {
        let [op, len, tail @ ..] = rest else { break };
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        match op & 3 {
            0 => {
                let Ok(mut req) = DiscoveryRequest::decode(payload) else {
                    continue;
                };
                pick_type(*op, &mut req.type_url);
                expand(&mut req.resource_names);
                streams.sotw_request(req);
            }
            1 => {
                let Ok(mut req) = DeltaDiscoveryRequest::decode(payload) else {
                    continue;
                };
                pick_type(*op, &mut req.type_url);
                expand(&mut req.resource_names_subscribe);
                expand(&mut req.resource_names_unsubscribe);
                let mut initial: Vec<(String, String)> = req.initial_resource_versions.drain().collect();
                for (name, _) in initial.iter_mut() {
                    expand(std::slice::from_mut(name));
                }
                req.initial_resource_versions = initial.into_iter().collect();
                streams.delta_request(req);
            }
            2 => streams.current ^= 1,
            _ => streams.answer(payload),
        }
        streams.flush();
    }
});
