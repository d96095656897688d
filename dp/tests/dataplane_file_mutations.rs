//! A quick, deterministic stand-in for the `dataplane_file` fuzz target that
//! runs in every test run: mutate valid dataplane files (and the values of
//! their vars) byte by byte and check that parsing never panics and that an
//! accepted definition validates again: its fields are canonical, they
//! decode to its `Dataplane`, and written back out as a file it parses to
//! the same definition, with `--mesh` and `--name` set to what it says.

use meridian_core::dataplane::Dataplane;
use meridian_core::decode::validate_spec;
use meridian_core::{FieldPath, ResourceType};
use meridian_dp::dataplane::{parse, render, Definition, DefinitionError};
use serde_json::Value;

const SEEDS: &[&str] = &[
    "type: Dataplane\nmesh: default\nname: \"{{ name }}\"\nnetworking:\n  address: \"{{address}}\"\n  inbound:\n    - port: 9000\n      tags:\n        kuma.io/service: backend\n        kuma.io/protocol: grpc\n",
    "type: Dataplane\nname: gw\nnetworking:\n  address: {{ address }}\n  advertisedAddress: 192.168.0.1\n  gateway:\n    tags: {kuma.io/service: edge}\n  admin: {port: 9901}\n",
    "type: Dataplane\nmesh: m\nname: {{name}}\nnetworking:\n  address: web.local\n  inbound:\n  - {port: 8080, servicePort: 80, address: 10.0.0.2, tags: {kuma.io/service: web, version: v1}}\n  outbound:\n  - {port: 10001, tags: {kuma.io/service: db}}\n  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001, reachableServices: [db]}\n",
    "apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmetadata:\n  name: \"{{ name }}\"\n  labels: {kuma.io/mesh: m}\nspec:\n  networking:\n    address: \"{{ address }}\"\n    inbound: [{port: 80, tags: {kuma.io/service: web}}]\n",
    "{\"type\":\"Dataplane\",\"name\":\"{{ name }}\",\"networking\":{\"address\":\"::1\",\"inbound\":[{\"port\":1,\"tags\":{\"kuma.io/service\":\"s\"}}]}}",
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

const ALPHABET: &[u8] = b" :-[]{},\n\t\"'*&!|>#%@0123456789abcxyzABCXYZ./";

/// Changes `bytes` in one to four places.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(4) {
            0 if !bytes.is_empty() => bytes[at] = ALPHABET[rng.below(ALPHABET.len())],
            1 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            // A placeholder, known or not, opened or closed.
            2 => {
                let piece: &[u8] = [b"{{ name }}".as_slice(), b"{{address}}", b"{{", b"}}", b"{{ x }}"][rng.below(5)];
                let at = at.min(bytes.len());
                bytes.splice(at..at, piece.iter().copied());
            }
            _ => bytes.insert(at.min(bytes.len()), ALPHABET[rng.below(ALPHABET.len())]),
        }
    }
}

/// Checks that an accepted definition validates again.
fn revalidate(text: &str, vars: &[(String, String)], def: &Definition) {
    assert!(render(text, vars).is_ok(), "accepted, but does not render:\n{text}");
    let again = validate_spec(ResourceType::Dataplane, def.fields.clone(), &FieldPath::root())
        .unwrap_or_else(|e| panic!("canonical fields rejected: {e}\ninput:\n{text}"));
    assert_eq!(again, def.fields, "the canonical form is not stable; input:\n{text}");
    let typed: Dataplane =
        serde_json::from_value(def.fields.clone()).unwrap_or_else(|e| panic!("fields do not decode: {e}"));
    assert_eq!(typed, def.dataplane, "input:\n{text}");
    let _ = def.service();

    // The same definition as a file of its own, in the universal form.
    let mut doc = serde_json::Map::new();
    doc.insert("type".into(), "Dataplane".into());
    doc.insert("mesh".into(), def.mesh.clone().into());
    doc.insert("name".into(), def.name.clone().into());
    if let Value::Object(fields) = &def.fields {
        doc.extend(fields.clone());
    }
    let doc = Value::Object(doc);
    for file in [
        serde_yaml_ng::to_string(&doc).unwrap_or_else(|e| panic!("YAML: {e}")),
        serde_json::to_string(&doc).unwrap_or_else(|e| panic!("JSON: {e}")),
    ] {
        // Values may hold `{{` (from a var); such a file is a template.
        if file.contains("{{") {
            continue;
        }
        let back = parse(&file, &[], Some(&def.mesh), Some(&def.name))
            .unwrap_or_else(|e| panic!("written back, the definition is rejected: {e}\n{file}\ninput:\n{text}"));
        assert_eq!(
            &back, def,
            "written back, the definition changes:\n{file}\ninput:\n{text}"
        );
    }

    // The flags: what the file says is accepted, anything else is not.
    assert_eq!(parse(text, vars, Some(&def.mesh), Some(&def.name)).as_ref(), Ok(def));
    let other = format!("{}x", def.mesh);
    assert!(matches!(
        parse(text, vars, Some(&other), None),
        Err(DefinitionError::Mismatch { field: "--mesh", .. })
    ));
}

#[test]
fn mutated_files_never_panic_and_accepted_ones_validate_again() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..4000 {
        let mut file = SEEDS[round % SEEDS.len()].as_bytes().to_vec();
        let mut name = b"backend-1".to_vec();
        let mut address = b"10.0.0.7".to_vec();
        // Mostly the file; sometimes a var's value instead.
        match rng.below(6) {
            0 => mutate(&mut rng, &mut name),
            1 => mutate(&mut rng, &mut address),
            _ => mutate(&mut rng, &mut file),
        }
        let (Ok(text), Ok(name), Ok(address)) = (
            String::from_utf8(file),
            String::from_utf8(name),
            String::from_utf8(address),
        ) else {
            continue;
        };
        let vars = [("name".to_string(), name), ("address".to_string(), address)];
        match parse(&text, &vars, None, None) {
            Ok(def) => {
                accepted += 1;
                revalidate(&text, &vars, &def);
            }
            Err(e) => {
                refused += 1;
                let _ = e.to_string();
            }
        }
    }
    assert!(
        accepted > 400 && refused > 400,
        "the mutations should keep some files valid and break others: {accepted} accepted, {refused} refused"
    );
}
