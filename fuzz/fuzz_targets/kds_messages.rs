//! Feeds arbitrary bytes to both ends of a KDS stream. Any panic is a bug:
//! whatever a peer sends must become a rejection, a NACK or an ended stream.
//!
//! - The whole input, decoded as a `DeltaResponse`, goes through
//!   `apply_response` with an inbound that runs the validation the global
//!   applies to what zones send (wire name, labels, size, typed spec).
//! - The whole input, and then each length-prefixed frame of it, decoded as
//!   `DeltaRequest`s, drive one `SenderState` (subscriptions, ACKs, NACKs,
//!   stale nonces); every response it produces is applied by the same inbound
//!   and the resulting ACK is fed back, so the full loop runs.
#![no_main]

use std::collections::HashMap;

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use meridian_core::decode::{validate_spec, MAX_RESOURCE_BYTES};
use meridian_core::names::check_subdomain;
use meridian_core::{FieldPath, ResourceType};
use meridian_proto as pb;
use meridian_server::kds::sender::SenderState;
use meridian_server::kds::stream::apply_response;
use meridian_server::kds::wire::{parse_wire_name, wire_name};
use meridian_server::kds::{global_to_zone_types, labels, Inbound, WireResource, ZONE_TO_GLOBAL_TYPES};
use prost::Message;

const ZONE: &str = "zone-1";

/// Every type either side sends.
fn all_types() -> Vec<ResourceType> {
    let mut v = global_to_zone_types();
    v.extend(ZONE_TO_GLOBAL_TYPES);
    v.sort();
    v.dedup();
    v
}

/// The checks the global's `FromZone` runs before storing, without a store.
struct Validating;

#[async_trait]
impl Inbound for Validating {
    fn types(&self) -> Vec<ResourceType> {
        all_types()
    }

    fn held(&self, _kind: ResourceType) -> HashMap<String, String> {
        HashMap::new()
    }

    async fn upsert(&self, w: WireResource) -> Result<(), String> {
        if ZONE_TO_GLOBAL_TYPES.contains(&w.kind) {
            for (label, value) in [
                (labels::ORIGIN, "zone"),
                (labels::ZONE, ZONE),
                (labels::DISPLAY_NAME, w.name.as_str()),
            ] {
                if w.labels.get(label).map(String::as_str) != Some(value) {
                    return Err(format!("label {label} must be {value:?}"));
                }
            }
        }
        check_subdomain(&w.name).map_err(|e| format!("name: {e}"))?;
        let size = serde_json::to_vec(&w.spec).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_RESOURCE_BYTES {
            return Err(format!("resource is {size} bytes"));
        }
        let spec = validate_spec(w.kind, w.spec.clone(), &FieldPath::root()).map_err(|e| e.to_string())?;
        // What would be stored must convert back to the wire.
        let mut back = w.clone();
        back.spec = spec;
        let _ = back.to_proto();
        Ok(())
    }

    async fn remove(&self, kind: ResourceType, wire: &str) -> Result<(), String> {
        parse_wire_name(kind, wire).map(|_| ())
    }
}

/// What the sender holds: a few resources per type, one with a spec no
/// validator accepts, so that rejections happen.
fn world(kind: ResourceType) -> Vec<pb::Resource> {
    let names: &[&str] = if kind.is_mesh_scoped() {
        &["default/a", "default/b", "m/bad"]
    } else {
        &["a", "b", "bad"]
    };
    names
        .iter()
        .map(|n| {
            let (mesh, name) = parse_wire_name(kind, n).unwrap_or((None, (*n).to_string()));
            let spec = if name == "bad" {
                serde_json::json!({"unknownField": [1, 2, 3]})
            } else {
                serde_json::json!({})
            };
            let mut labels = std::collections::BTreeMap::new();
            labels.insert(labels::ORIGIN.to_string(), "zone".to_string());
            labels.insert(labels::ZONE.to_string(), ZONE.to_string());
            labels.insert(labels::DISPLAY_NAME.to_string(), name.clone());
            WireResource {
                kind,
                mesh,
                name,
                labels,
                spec,
                creation_time: None,
                modification_time: None,
            }
            .to_proto()
        })
        .collect()
}

fn current(kind: ResourceType) -> Vec<String> {
    world(kind).into_iter().map(|r| r.name).collect()
}

fn lookup(kind: ResourceType, name: &str) -> Option<pb::Resource> {
    world(kind).into_iter().find(|r| r.name == name)
}

/// Splits `data` into frames of `[len: u8][len bytes]`.
fn frames(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let n = usize::from(len).min(tail.len());
        let (frame, next) = tail.split_at(n);
        rest = next;
        Some(frame)
    })
}

fn drive(state: &mut SenderState, req: &pb::DeltaRequest) {
    let _ = state.on_request(req, &current);
    // A change of something the peer may or may not hold.
    if let Some(kind) = meridian_server::kds::wire::kind_of(&req.type_url) {
        for name in req.initial_resource_versions.keys().take(4) {
            state.on_change(kind, name);
        }
        state.on_change(kind, &wire_name(Some("default"), "a"));
    }
    // Send what can go; the receiver applies it and its ACK comes back.
    let types = all_types();
    for _ in 0..8 {
        let Some(resp) = state.next_response(&lookup) else {
            break;
        };
        assert!(!resp.nonce.is_empty(), "every response carries a nonce");
        let ack = futures::executor::block_on(apply_response(&Validating, &types, resp));
        let _ = state.on_request(&ack, &current);
    }
    let _ = state.has_work();
}

fuzz_target!(|data: &[u8]| {
    let types = all_types();
    if let Ok(resp) = pb::DeltaResponse::decode(data) {
        let ack = futures::executor::block_on(apply_response(&Validating, &types, resp.clone()));
        assert_eq!(ack.response_nonce, resp.nonce, "the ACK names the response");
        let _ = ack.encode_to_vec();
    }
    let mut state = SenderState::new(types.iter().copied(), 2048);
    if let Ok(req) = pb::DeltaRequest::decode(data) {
        drive(&mut state, &req);
    }
    let mut state = SenderState::new(types.iter().copied(), 2048);
    for frame in frames(data) {
        if let Ok(req) = pb::DeltaRequest::decode(frame) {
            drive(&mut state, &req);
        }
        if let Ok(resp) = pb::DeltaResponse::decode(frame) {
            let _ = futures::executor::block_on(apply_response(&Validating, &types, resp));
        }
    }
    state.on_resync(&current);
    while state.next_response(&lookup).is_some() {}
});
