//! Feeds arbitrary text and `--dataplane-var`s to the agent's dataplane
//! file parser (`meridian_dp::dataplane::parse`). Any panic is a bug: a bad
//! file must become a `DefinitionError`. A definition that is accepted must
//! validate again: its fields are the canonical form (validating them again
//! changes nothing), they decode to its `Dataplane`, and the definition
//! written back out as a file, YAML or JSON, parses to the same definition,
//! with `--mesh` and `--name` set to what it says.
//!
//! The input, as text, is split on NUL: the first piece is the file, each
//! other piece a var `NAME=VALUE`. When the first byte is odd, the file is
//! instead a valid definition with the first piece spliced into it (at the
//! position the second byte gives), and the vars it uses come after the
//! input's, so the fuzzer starts from files that parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_core::dataplane::Dataplane;
use meridian_core::decode::{decode_value, validate_spec};
use meridian_core::{FieldPath, ResourceType};
use meridian_dp::dataplane::{parse, render, Definition, DefinitionError};
use serde_json::Value;

const SEEDS: &[&str] = &[
    "type: Dataplane\nmesh: default\nname: \"{{ name }}\"\nnetworking:\n  address: \"{{address}}\"\n  inbound:\n    - port: 9000\n      tags:\n        kuma.io/service: backend\n        kuma.io/protocol: grpc\n",
    "type: Dataplane\nname: gw\nnetworking:\n  address: {{ address }}\n  advertisedAddress: 192.168.0.1\n  gateway:\n    tags: {kuma.io/service: edge}\n  admin: {port: 9901}\n",
    "type: Dataplane\nmesh: m\nname: {{name}}\nnetworking:\n  address: web.local\n  inbound:\n  - {port: 8080, servicePort: 80, address: 10.0.0.2, tags: {kuma.io/service: web, version: v1}}\n  outbound:\n  - {port: 10001, tags: {kuma.io/service: db}}\n  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001, reachableServices: [db]}\n",
    "{\"type\":\"Dataplane\",\"name\":\"{{ name }}\",\"networking\":{\"address\":\"::1\",\"inbound\":[{\"port\":1,\"tags\":{\"kuma.io/service\":\"s\"}}]}}",
];

fn seed_vars() -> [(String, String); 2] {
    [
        ("name".into(), "backend-1".into()),
        ("address".into(), "10.0.0.7".into()),
    ]
}

/// Checks that an accepted definition validates again.
fn revalidate(text: &str, vars: &[(String, String)], def: &Definition) {
    assert!(render(text, vars).is_ok(), "accepted, but does not render");
    let again = validate_spec(ResourceType::Dataplane, def.fields.clone(), &FieldPath::root())
        .unwrap_or_else(|e| panic!("canonical fields rejected: {e}\n{}", def.fields));
    assert_eq!(again, def.fields, "the canonical form is not stable");
    let typed: Dataplane =
        serde_json::from_value(def.fields.clone()).unwrap_or_else(|e| panic!("fields do not decode: {e}"));
    assert_eq!(typed, def.dataplane);
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
    let decoded = decode_value(doc.clone()).unwrap_or_else(|e| panic!("canonical document rejected: {e}\n{doc}"));
    assert_eq!(decoded.key.kind, ResourceType::Dataplane);
    assert_eq!(decoded.key.mesh.as_deref(), Some(def.mesh.as_str()));
    assert_eq!(decoded.key.name, def.name);
    assert_eq!(decoded.spec, def.fields);
    let files = [
        serde_yaml_ng::to_string(&doc).unwrap_or_else(|e| panic!("YAML: {e}")),
        serde_json::to_string(&doc).unwrap_or_else(|e| panic!("JSON: {e}")),
    ];
    for file in files {
        // Values may hold `{{` (from a var); such a file is a template.
        if file.contains("{{") {
            continue;
        }
        let back = parse(&file, &[], Some(&def.mesh), Some(&def.name))
            .unwrap_or_else(|e| panic!("written back, the definition is rejected: {e}\n{file}"));
        assert_eq!(&back, def, "written back, the definition changes:\n{file}");
    }

    // The flags: what the file says is accepted, anything else is not.
    assert_eq!(parse(text, vars, Some(&def.mesh), Some(&def.name)).as_ref(), Ok(def));
    let other = format!("{}x", def.mesh);
    assert!(matches!(
        parse(text, vars, Some(&other), None),
        Err(DefinitionError::Mismatch { field: "--mesh", .. })
    ));
}

/// The file and the vars of `bytes`: pieces split on NUL.
fn split(bytes: &[u8]) -> (String, Vec<(String, String)>) {
    let input = String::from_utf8_lossy(bytes);
    let mut pieces = input.split('\0');
    let first = pieces.next().unwrap_or_default().to_string();
    let vars = pieces
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    (first, vars)
}

fuzz_target!(|data: &[u8]| {
    let (text, vars) = match data {
        [mode, at, rest @ ..] if mode & 1 == 1 => {
            let seed = SEEDS[usize::from(mode >> 1) % SEEDS.len()];
            let (fragment, mut vars) = split(rest);
            let mut at = usize::from(*at) % (seed.len() + 1);
            while !seed.is_char_boundary(at) {
                at -= 1;
            }
            vars.extend(seed_vars());
            (format!("{}{fragment}{}", &seed[..at], &seed[at..]), vars)
        }
        _ => split(data),
    };
    let _ = render(&text, &vars);
    match parse(&text, &vars, None, None) {
        Ok(def) => revalidate(&text, &vars, &def),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
