//! The sending side of one KDS stream as a plain state machine: what the
//! peer holds, what may differ, what is in flight. No I/O; the stream loop
//! in [`super::stream`] drives it and unit tests drive it directly.
//!
//! Coalescing: changes only mark a name dirty; the content sent is read at
//! send time, so the latest version wins and memory is bounded by the number
//! of resources, not the number of changes. One response per type is in
//! flight at a time; the next waits for its ACK, so a peer that stops
//! reading costs a dirty set, never a growing queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_core::ResourceType;
use meridian_proto as pb;

use super::wire::{kind_of, type_url};

/// Why a request could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The type URL is not one this side sends on this stream.
    #[error("type {0:?} is not served on this stream")]
    UnknownType(String),
}

/// What an ACK/NACK told the sender, for statistics and insights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    pub kind: Option<ResourceType>,
    /// Resources of the acknowledged response that were applied.
    pub applied: usize,
    /// Per-resource rejections (name, message).
    pub rejected: Vec<(String, String)>,
    /// The whole response was refused.
    pub error: Option<String>,
    /// The request was a new subscription (first of its type on the stream).
    pub subscribed: bool,
}

#[derive(Debug, Default)]
struct TypeState {
    /// What the peer holds: wire name → version.
    peer: HashMap<String, String>,
    /// Content the peer refused: not sent again until it changes.
    rejected: HashMap<String, String>,
    dirty: BTreeSet<String>,
    /// Meshes deleted since the peer was last told: their removal must reach
    /// the peer even if an identical mesh exists again, because removing a
    /// mesh also removes everything in it (see [`SenderState::on_delete`]).
    deleted_meshes: BTreeSet<String>,
    in_flight: Option<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    nonce: String,
    /// Name → the version sent, or `None` for a removal.
    sent: Vec<(String, Option<String>)>,
}

/// One resource the sender could send: its wire form.
pub type Lookup<'a> = &'a dyn Fn(ResourceType, &str) -> Option<pb::Resource>;

/// The per-stream sending state.
#[derive(Debug)]
pub struct SenderState {
    allowed: BTreeSet<ResourceType>,
    types: BTreeMap<ResourceType, TypeState>,
    next_nonce: u64,
    max_message_bytes: usize,
}

impl SenderState {
    /// A sender that serves `allowed` types and keeps each response under
    /// `max_message_bytes` (a single larger resource still goes alone).
    pub fn new(allowed: impl IntoIterator<Item = ResourceType>, max_message_bytes: usize) -> Self {
        SenderState {
            allowed: allowed.into_iter().collect(),
            types: BTreeMap::new(),
            next_nonce: 1,
            max_message_bytes,
        }
    }

    /// Types the peer subscribed to.
    pub fn subscribed(&self) -> impl Iterator<Item = ResourceType> + '_ {
        self.types.keys().copied()
    }

    /// Handles a request. `current` lists the wire names this side holds of
    /// a type (used when the peer subscribes).
    pub fn on_request(
        &mut self,
        req: &pb::DeltaRequest,
        current: &dyn Fn(ResourceType) -> Vec<String>,
    ) -> Result<AckOutcome, ProtocolError> {
        let kind = kind_of(&req.type_url)
            .filter(|k| self.allowed.contains(k))
            .ok_or_else(|| ProtocolError::UnknownType(req.type_url.clone()))?;
        let mut outcome = AckOutcome {
            kind: Some(kind),
            ..AckOutcome::default()
        };
        if req.response_nonce.is_empty() {
            // A (re)subscription: start from what the peer says it holds.
            let st = self.types.entry(kind).or_default();
            st.peer = req.initial_resource_versions.clone().into_iter().collect();
            st.rejected.clear();
            st.in_flight = None;
            st.dirty = st.peer.keys().cloned().collect();
            st.dirty.extend(current(kind));
            outcome.subscribed = true;
            return Ok(outcome);
        }
        let Some(st) = self.types.get_mut(&kind) else {
            return Ok(outcome);
        };
        let Some(flight) = st.in_flight.take_if(|f| f.nonce == req.response_nonce) else {
            // A stale or unknown nonce: nothing to settle.
            return Ok(outcome);
        };
        if !req.error_message.is_empty() {
            // The whole response was refused: the peer holds what it held.
            for (name, version) in flight.sent {
                if let Some(v) = version {
                    st.rejected.insert(name, v);
                }
            }
            outcome.error = Some(req.error_message.clone());
            return Ok(outcome);
        }
        let rejected: HashMap<&str, &str> = req
            .rejected
            .iter()
            .map(|e| (e.name.as_str(), e.message.as_str()))
            .collect();
        let mut meshes_removed = Vec::new();
        for (name, version) in flight.sent {
            match (rejected.get(name.as_str()), version) {
                (Some(msg), Some(v)) => {
                    outcome.rejected.push((name.clone(), msg.to_string()));
                    st.rejected.insert(name, v);
                }
                (Some(msg), None) => {
                    // A refused removal: the peer still has it; try again on
                    // the next change.
                    outcome.rejected.push((name, msg.to_string()));
                }
                (None, Some(v)) => {
                    outcome.applied += 1;
                    st.rejected.remove(&name);
                    st.peer.insert(name, v);
                }
                (None, None) => {
                    outcome.applied += 1;
                    st.rejected.remove(&name);
                    st.peer.remove(&name);
                    if kind == ResourceType::Mesh {
                        meshes_removed.push(name);
                    }
                }
            }
        }
        for mesh in meshes_removed {
            self.forget_mesh(&mesh);
        }
        Ok(outcome)
    }

    /// The peer removed mesh `mesh`, and its store took everything in that
    /// mesh along. What this side believed the peer held there is void:
    /// forget it and look at those names again. Without this, a resource
    /// whose deletion (by the cascade) and identical re-creation (e.g. a
    /// re-created mesh's defaults) coalesced while its type had a response
    /// in flight looks unchanged and is never sent again.
    fn forget_mesh(&mut self, mesh: &str) {
        let prefix = format!("{mesh}/");
        for st in self.types.values_mut() {
            let gone: Vec<String> = st.peer.keys().filter(|n| n.starts_with(&prefix)).cloned().collect();
            for name in gone {
                st.peer.remove(&name);
                st.dirty.insert(name);
            }
        }
    }

    /// Marks a resource as possibly changed.
    pub fn on_change(&mut self, kind: ResourceType, wire_name: &str) {
        if let Some(st) = self.types.get_mut(&kind) {
            st.dirty.insert(wire_name.to_string());
        }
    }

    /// Marks a resource as deleted. Like [`Self::on_change`], except that a
    /// deleted mesh is removed at the peer even when it is re-created with
    /// identical content before the removal goes out: the store took
    /// everything in the mesh along (here, and the peer's copies of this
    /// side's resources in it), and the peer must do the same.
    pub fn on_delete(&mut self, kind: ResourceType, wire_name: &str) {
        if let Some(st) = self.types.get_mut(&kind) {
            st.dirty.insert(wire_name.to_string());
            if kind == ResourceType::Mesh {
                st.deleted_meshes.insert(wire_name.to_string());
            }
        }
    }

    /// Marks everything as possibly changed (after missed events).
    pub fn on_resync(&mut self, current: &dyn Fn(ResourceType) -> Vec<String>) {
        for (kind, st) in self.types.iter_mut() {
            st.dirty.extend(st.peer.keys().cloned());
            st.dirty.extend(current(*kind));
        }
    }

    /// Whether any subscribed type has work and no response in flight.
    pub fn has_work(&self) -> bool {
        self.types
            .values()
            .any(|st| st.in_flight.is_none() && !st.dirty.is_empty())
    }

    /// The next response to send, if any (one per type in flight).
    pub fn next_response(&mut self, lookup: Lookup<'_>) -> Option<pb::DeltaResponse> {
        let max = self.max_message_bytes;
        for (kind, st) in self.types.iter_mut() {
            if st.in_flight.is_some() || st.dirty.is_empty() {
                continue;
            }
            let mut resources = Vec::new();
            let mut removed = Vec::new();
            let mut sent = Vec::new();
            let mut size = 0usize;
            let mut done = Vec::new();
            for name in st.dirty.iter() {
                // A mesh deleted since the peer got it goes out as a removal
                // first, whatever exists under its name now.
                let tombstone = st.deleted_meshes.remove(name);
                let deleted = tombstone && st.peer.contains_key(name);
                match lookup(*kind, name).filter(|_| !deleted) {
                    Some(r) => {
                        let unchanged = st.peer.get(name) == Some(&r.version);
                        let refused = st.rejected.get(name) == Some(&r.version);
                        if unchanged || refused {
                            done.push(name.clone());
                            continue;
                        }
                        let len = r.name.len() + r.version.len() + r.payload.len() + 16;
                        if !resources.is_empty() && size + len > max {
                            break;
                        }
                        size += len;
                        sent.push((name.clone(), Some(r.version.clone())));
                        resources.push(r);
                        done.push(name.clone());
                    }
                    None => {
                        if st.peer.contains_key(name) {
                            if !resources.is_empty() && size + name.len() + 8 > max {
                                if tombstone {
                                    st.deleted_meshes.insert(name.clone());
                                }
                                break;
                            }
                            size += name.len() + 8;
                            removed.push(name.clone());
                            sent.push((name.clone(), None));
                        }
                        // A re-created mesh stays dirty: it goes out after its removal.
                        if !deleted {
                            done.push(name.clone());
                        }
                    }
                }
            }
            for name in done {
                st.dirty.remove(&name);
            }
            if sent.is_empty() {
                continue;
            }
            let nonce = self.next_nonce.to_string();
            self.next_nonce += 1;
            st.in_flight = Some(InFlight {
                nonce: nonce.clone(),
                sent,
            });
            return Some(pb::DeltaResponse {
                type_url: type_url(*kind),
                resources,
                removed_resources: removed,
                nonce,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    type World = RefCell<BTreeMap<String, (String, usize)>>;

    fn res(name: &str, version: &str, size: usize) -> pb::Resource {
        pb::Resource {
            name: name.into(),
            version: version.into(),
            payload: vec![b'x'; size],
        }
    }

    fn lookup(world: &World) -> impl Fn(ResourceType, &str) -> Option<pb::Resource> + '_ {
        move |_, n| world.borrow().get(n).map(|(v, s)| res(n, v, *s))
    }

    fn names(world: &World) -> impl Fn(ResourceType) -> Vec<String> + '_ {
        move |_| world.borrow().keys().cloned().collect()
    }

    fn subscribe(initial: &[(&str, &str)]) -> pb::DeltaRequest {
        pb::DeltaRequest {
            type_url: type_url(ResourceType::Mesh),
            initial_resource_versions: initial.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            ..Default::default()
        }
    }

    fn ack(nonce: &str, rejected: &[&str]) -> pb::DeltaRequest {
        pb::DeltaRequest {
            type_url: type_url(ResourceType::Mesh),
            response_nonce: nonce.into(),
            rejected: rejected
                .iter()
                .map(|n| pb::ResourceError {
                    name: n.to_string(),
                    message: "bad".into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn resume_sends_only_the_difference() {
        let world: World = RefCell::new(BTreeMap::from([
            ("a".into(), ("1".into(), 10)),
            ("b".into(), ("2".into(), 10)),
            ("c".into(), ("3".into(), 10)),
        ]));
        let mut s = SenderState::new([ResourceType::Mesh], 1 << 20);
        // The peer has a at the same version, b at an old one, and d which is gone.
        s.on_request(&subscribe(&[("a", "1"), ("b", "1"), ("d", "9")]), &names(&world))
            .unwrap();
        let r = s.next_response(&lookup(&world)).unwrap();
        let sent: Vec<_> = r.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(sent, ["b", "c"]);
        assert_eq!(r.removed_resources, ["d"]);
        assert!(s.next_response(&lookup(&world)).is_none(), "one in flight per type");
        s.on_request(&ack(&r.nonce, &[]), &names(&world)).unwrap();
        assert!(s.next_response(&lookup(&world)).is_none(), "nothing left");
    }

    #[test]
    fn changes_coalesce_while_in_flight() {
        let world: World = RefCell::new(BTreeMap::from([("a".into(), ("1".into(), 10))]));
        let mut s = SenderState::new([ResourceType::Mesh], 1 << 20);
        s.on_request(&subscribe(&[]), &names(&world)).unwrap();
        let first = s.next_response(&lookup(&world)).unwrap();
        for v in 2..100 {
            world.borrow_mut().insert("a".into(), (v.to_string(), 10));
            s.on_change(ResourceType::Mesh, "a");
        }
        assert!(s.next_response(&lookup(&world)).is_none());
        s.on_request(&ack(&first.nonce, &[]), &names(&world)).unwrap();
        let second = s.next_response(&lookup(&world)).unwrap();
        assert_eq!(second.resources.len(), 1);
        assert_eq!(second.resources[0].version, "99", "the latest version wins");
    }

    #[test]
    fn rejected_content_is_not_resent_until_it_changes() {
        let world: World = RefCell::new(BTreeMap::from([
            ("a".into(), ("1".into(), 10)),
            ("b".into(), ("1".into(), 10)),
        ]));
        let mut s = SenderState::new([ResourceType::Mesh], 1 << 20);
        s.on_request(&subscribe(&[]), &names(&world)).unwrap();
        let r = s.next_response(&lookup(&world)).unwrap();
        let out = s.on_request(&ack(&r.nonce, &["a"]), &names(&world)).unwrap();
        assert_eq!(out.applied, 1);
        assert_eq!(out.rejected, [("a".to_string(), "bad".to_string())]);
        s.on_change(ResourceType::Mesh, "a");
        assert!(s.next_response(&lookup(&world)).is_none(), "same content, not resent");
        world.borrow_mut().insert("a".into(), ("2".into(), 10));
        s.on_change(ResourceType::Mesh, "a");
        let r = s.next_response(&lookup(&world)).unwrap();
        assert_eq!(r.resources[0].version, "2");
    }

    #[test]
    fn large_batches_are_split_never_dropped() {
        let world: World = RefCell::new((0..10).map(|i| (format!("r{i}"), ("1".to_string(), 400))).collect());
        let mut s = SenderState::new([ResourceType::Mesh], 1000);
        s.on_request(&subscribe(&[]), &names(&world)).unwrap();
        let mut got = Vec::new();
        while let Some(r) = s.next_response(&lookup(&world)) {
            assert!(r.resources.len() <= 2, "each response under the limit");
            got.extend(r.resources.iter().map(|r| r.name.clone()));
            s.on_request(&ack(&r.nonce, &[]), &names(&world)).unwrap();
        }
        assert_eq!(got.len(), 10);
    }

    fn typed_ack(kind: ResourceType, nonce: &str) -> pb::DeltaRequest {
        pb::DeltaRequest {
            type_url: type_url(kind),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_removed_mesh_takes_what_the_peer_held_in_it_along() {
        // Meshes are named "m", policies "m/p": one world, split by kind.
        let world: World = RefCell::new(BTreeMap::from([
            ("m".into(), ("1".into(), 10)),
            ("m/p".into(), ("1".into(), 10)),
        ]));
        let of_kind = |k: ResourceType, n: &str| (k == ResourceType::Mesh) != n.contains('/');
        let names =
            |k: ResourceType| -> Vec<String> { world.borrow().keys().filter(|n| of_kind(k, n)).cloned().collect() };
        let look = |k: ResourceType, n: &str| -> Option<pb::Resource> {
            of_kind(k, n)
                .then(|| world.borrow().get(n).map(|(v, s)| res(n, v, *s)))
                .flatten()
        };
        let mut s = SenderState::new([ResourceType::Mesh, ResourceType::MeshTimeout], 1 << 20);
        let mut sub = subscribe(&[("m", "1")]);
        s.on_request(&sub, &names).unwrap();
        sub.type_url = type_url(ResourceType::MeshTimeout);
        sub.initial_resource_versions = [("m/p".to_string(), "1".to_string())].into();
        s.on_request(&sub, &names).unwrap();
        assert!(s.next_response(&look).is_none(), "in sync");

        // An unrelated policy change is in flight when mesh m is deleted
        // (with m/p) and re-created with an identical m/p.
        world.borrow_mut().insert("m/q".into(), ("1".into(), 10));
        s.on_change(ResourceType::MeshTimeout, "m/q");
        let q = s.next_response(&look).unwrap();
        world.borrow_mut().remove("m");
        world.borrow_mut().remove("m/p");
        s.on_change(ResourceType::Mesh, "m");
        s.on_change(ResourceType::MeshTimeout, "m/p");
        let removal = s.next_response(&look).unwrap();
        assert_eq!(removal.removed_resources, ["m"]);
        world.borrow_mut().insert("m".into(), ("1".into(), 10));
        world.borrow_mut().insert("m/p".into(), ("1".into(), 10));
        s.on_change(ResourceType::Mesh, "m");
        s.on_change(ResourceType::MeshTimeout, "m/p");

        // The peer applies q, then the mesh removal (its store drops m/p and m/q).
        s.on_request(&typed_ack(ResourceType::MeshTimeout, &q.nonce), &names)
            .unwrap();
        s.on_request(&typed_ack(ResourceType::Mesh, &removal.nonce), &names)
            .unwrap();
        let mut sent = Vec::new();
        while let Some(r) = s.next_response(&look) {
            sent.extend(r.resources.iter().map(|r| r.name.clone()));
            let kind = kind_of(&r.type_url).unwrap();
            s.on_request(&typed_ack(kind, &r.nonce), &names).unwrap();
        }
        sent.sort();
        assert_eq!(
            sent,
            ["m", "m/p", "m/q"],
            "everything in the re-created mesh is sent again"
        );
    }

    #[test]
    fn a_mesh_deleted_and_recreated_while_in_flight_is_removed_first() {
        let world: World = RefCell::new(BTreeMap::from([
            ("a".into(), ("1".into(), 10)),
            ("m".into(), ("1".into(), 10)),
        ]));
        let mut s = SenderState::new([ResourceType::Mesh], 1 << 20);
        s.on_request(&subscribe(&[("m", "1")]), &names(&world)).unwrap();
        let first = s.next_response(&lookup(&world)).unwrap();
        assert_eq!(first.resources[0].name, "a");
        // While "a" is in flight, m is deleted and re-created identically.
        s.on_delete(ResourceType::Mesh, "m");
        s.on_change(ResourceType::Mesh, "m");
        s.on_request(&ack(&first.nonce, &[]), &names(&world)).unwrap();
        let removal = s.next_response(&lookup(&world)).unwrap();
        assert_eq!(removal.removed_resources, ["m"], "{removal:?}");
        assert!(removal.resources.is_empty());
        s.on_request(&ack(&removal.nonce, &[]), &names(&world)).unwrap();
        let again = s.next_response(&lookup(&world)).unwrap();
        assert_eq!(again.resources[0].name, "m");
        s.on_request(&ack(&again.nonce, &[]), &names(&world)).unwrap();
        assert!(s.next_response(&lookup(&world)).is_none());
        // A deletion of a mesh the peer never had leaves no trace.
        s.on_delete(ResourceType::Mesh, "new");
        world.borrow_mut().insert("new".into(), ("1".into(), 10));
        s.on_change(ResourceType::Mesh, "new");
        let r = s.next_response(&lookup(&world)).unwrap();
        assert_eq!((r.resources.len(), r.removed_resources.len()), (1, 0), "{r:?}");
    }

    #[test]
    fn unknown_types_and_stale_nonces() {
        let world: World = RefCell::new(BTreeMap::new());
        let mut s = SenderState::new([ResourceType::Mesh], 1000);
        let mut req = subscribe(&[]);
        req.type_url = "meridian.kds/Dataplane".into();
        assert!(s.on_request(&req, &names(&world)).is_err());
        req.type_url = "garbage".into();
        assert!(s.on_request(&req, &names(&world)).is_err());
        s.on_request(&subscribe(&[]), &names(&world)).unwrap();
        let out = s.on_request(&ack("12345", &[]), &names(&world)).unwrap();
        assert_eq!(out.applied, 0);
    }
}
