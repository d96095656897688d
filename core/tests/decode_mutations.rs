//! A quick, deterministic stand-in for the cargo-fuzz target that runs in
//! every test run: mutate valid documents byte by byte and check that the
//! decoder never panics and never accepts a document it would not accept
//! again (decode → canonical → decode is stable).

use meridian_core::decode::{decode_all, decode_value, Format};

const SEEDS: &[&str] = &[
    "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    default:\n      connectionTimeout: 5s\n      http: {requestTimeout: 15s}\n",
    "type: MeshRetry\nname: r\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http: {numRetries: 5, perTryTimeout: 16s, backOff: {baseInterval: 25ms, maxInterval: 250ms}}\n",
    "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\nspec:\n  mtls:\n    enabledBackend: ca\n    backends: [{name: ca, type: builtin}]\n",
    "type: Dataplane\nname: dp\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web}\n",
    "{\"type\":\"MeshCircuitBreaker\",\"name\":\"c\",\"spec\":{\"targetRef\":{\"kind\":\"Mesh\"},\"to\":[{\"targetRef\":{\"kind\":\"Mesh\"},\"default\":{\"connectionLimits\":{\"maxConnections\":1}}}]}}",
];

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const ALPHABET: &[u8] = b" :-[]{},\n\t\"'*&!|>#%@0123456789abcxyzABCXYZ.";

#[test]
fn mutated_documents_never_panic_and_canonical_form_is_stable() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for round in 0..4000 {
        let seed = SEEDS[round % SEEDS.len()];
        let mut bytes = seed.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = ALPHABET[rng.below(ALPHABET.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
            }
        }
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        for format in [Format::Yaml, Format::Json] {
            if let Ok(docs) = decode_all(&text, format) {
                accepted += 1;
                for d in docs {
                    // What was accepted, re-submitted in canonical form, is
                    // accepted again and means the same.
                    let mut v = d.spec.clone();
                    let again = if d.key.kind.is_policy() {
                        serde_json::json!({"type": d.key.kind.name(), "name": d.key.name, "mesh": d.key.mesh, "spec": v})
                    } else {
                        if let Some(o) = v.as_object_mut() {
                            o.insert("type".into(), d.key.kind.name().into());
                            o.insert("name".into(), d.key.name.clone().into());
                            if let Some(m) = &d.key.mesh {
                                o.insert("mesh".into(), m.clone().into());
                            }
                        }
                        v
                    };
                    let back =
                        decode_value(again).unwrap_or_else(|e| panic!("canonical form rejected: {e}\ninput:\n{text}"));
                    assert_eq!(back.spec, d.spec, "input:\n{text}");
                }
            }
        }
    }
    assert!(
        accepted > 40,
        "the mutations should keep some documents valid, got {accepted}"
    );
}
