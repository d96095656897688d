//! Feeds arbitrary bytes to the token checks a zone runs on what a proxy
//! presents: `jwt::parse`, reading the claims, `Parsed::verify`, the
//! dataplane verifier over a replica and the zone's ingress tokens. Any
//! panic is a bug, and so is any token that verifies to claims nobody
//! signed.
//!
//! - The whole input, as text, is a token: whatever verifies must be one of
//!   the real tokens below (no other token carries a valid signature).
//! - The first byte picks one real signed token (two dataplane tokens of
//!   mesh `default`, an ingress token of `zone-1`, a token of a fixed key)
//!   and how to change it with the rest of the input: splice it into one
//!   part's text, overwrite one part's text, replace one part, splice it into
//!   one part's decoded bytes and re-encode them (so the change reaches the
//!   JSON and the signature, not only base64), cut the token, or sign the
//!   input as claims with a key the mesh does not have. Only one part
//!   changes, so a token that still verifies has exactly the original
//!   claims: anything else is a forgery.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use meridian_core::decode::Document;
use meridian_core::identity::DataplaneClaims;
use meridian_core::{ResourceKey, ResourceType};
use meridian_server::identity::dataplane::{DataplaneTokenIssuer, DataplaneTokenVerifier, IssueRequest};
use meridian_server::identity::ingress::{IngressClaims, IngressTokens};
use meridian_server::identity::jwt;
use meridian_server::manager::Manager;
use meridian_store::cache::Cache;
use meridian_store::memory::MemoryStore;
use meridian_store::Store;

const MESH: &str = "default";
const ZONE: &str = "zone-1";

/// What a real token was signed as.
#[derive(Clone, Debug, PartialEq)]
enum Claims {
    Dataplane(DataplaneClaims),
    Ingress(IngressClaims),
    Fixed(serde_json::Value),
}

struct World {
    /// Keeps the replica's watch running.
    _runtime: tokio::runtime::Runtime,
    verifier: DataplaneTokenVerifier,
    ingress: IngressTokens,
    /// The public half of the fixed key.
    fixed_public: Vec<u8>,
    /// A key no mesh has, to sign the input as claims.
    foreign: ring::signature::Ed25519KeyPair,
    tokens: Vec<(String, Claims)>,
    /// A time at which every real token is valid.
    now: i64,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let (verifier, ingress, dataplane_tokens) = runtime.block_on(async {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let cache = Cache::start(store.clone());
            let _ = cache.ready().clone().wait_for(|r| *r).await;
            let manager = Arc::new(Manager::new(store.clone(), cache));
            let mesh = Document {
                key: ResourceKey::global(ResourceType::Mesh, MESH),
                labels: Default::default(),
                spec: serde_json::json!({}),
            };
            manager.apply(mesh).await.unwrap_or_else(|e| panic!("mesh: {e}"));
            let issuer = DataplaneTokenIssuer::new(manager.clone());
            let verifier = DataplaneTokenVerifier::new(manager);
            let plain = IssueRequest {
                mesh: MESH.into(),
                valid_for: Duration::from_secs(3600),
                ..Default::default()
            };
            let named = IssueRequest {
                name: Some("web-1".into()),
                tags: BTreeMap::from([("kuma.io/service".to_string(), vec!["web".to_string()])]),
                ..plain.clone()
            };
            let mut tokens = Vec::new();
            for r in [named, plain] {
                let t = issuer.issue(&r).await.unwrap_or_else(|e| panic!("issue: {e}"));
                let v = verifier.verify(&t).unwrap_or_else(|e| panic!("verify: {e}"));
                tokens.push((t, Claims::Dataplane(v.claims)));
            }
            let ingress = IngressTokens::new(store, ZONE);
            let t = ingress
                .issue(Some("ingress"), Duration::from_secs(3600))
                .await
                .unwrap_or_else(|e| panic!("ingress issue: {e}"));
            let c = ingress
                .verify(&t)
                .await
                .unwrap_or_else(|e| panic!("ingress verify: {e}"));
            tokens.push((t, Claims::Ingress(c)));
            (verifier, ingress, tokens)
        });
        let key = |what: &str| {
            jwt::generate_key()
                .and_then(|k| jwt::load_key(&k))
                .unwrap_or_else(|e| panic!("{what} key: {e}"))
        };
        let fixed = key("fixed");
        let fixed_claims = serde_json::json!({"sub": "fixed", "n": 1});
        let fixed_token = jwt::sign(&fixed, "fixed", &fixed_claims).unwrap_or_else(|e| panic!("sign: {e}"));
        let mut tokens = dataplane_tokens;
        tokens.push((fixed_token, Claims::Fixed(fixed_claims)));
        let now = tokens
            .iter()
            .filter_map(|(_, c)| match c {
                Claims::Dataplane(d) => Some(d.iat),
                Claims::Ingress(i) => Some(i.iat),
                Claims::Fixed(_) => None,
            })
            .max()
            .unwrap_or(0)
            + 1;
        World {
            _runtime: runtime,
            verifier,
            ingress,
            fixed_public: jwt::public_key(&fixed),
            foreign: key("foreign"),
            tokens,
            now,
        }
    })
}

/// Runs every check on `token`; returns what verified, each check's claims.
fn check(w: &World, token: &str) -> Vec<Claims> {
    let mut verified = Vec::new();
    if let Ok(p) = jwt::parse(token) {
        let _ = p.claims::<serde_json::Value>();
        let _ = p.claims::<DataplaneClaims>();
        let _ = p.claims::<IngressClaims>();
        // Key bytes of every length: never a panic, only a refusal.
        assert!(p.verify(&[]).is_err());
        assert!(p.verify(token.as_bytes()).is_err());
        if p.verify(&w.fixed_public).is_ok() {
            let claims = p
                .claims::<serde_json::Value>()
                .unwrap_or_else(|e| panic!("verified claims do not decode: {e}"));
            verified.push(Claims::Fixed(claims));
        }
    }
    match w.verifier.verify_at(token, w.now) {
        Ok(v) => {
            assert!(w.verifier.still_valid(&v).is_ok());
            assert_eq!(v.kid, "key-1", "{token:?}");
            verified.push(Claims::Dataplane(v.claims));
        }
        Err(e) => {
            let _ = (e.to_string(), e.is_unauthenticated());
        }
    }
    match futures::executor::block_on(w.ingress.verify_at(token, w.now)) {
        Ok(c) => verified.push(Claims::Ingress(c)),
        Err(e) => {
            let _ = (e.to_string(), e.is_unauthenticated());
        }
    }
    verified
}

/// Inserts `bytes` into `s` at about `at` (on a character boundary).
fn splice(s: &str, at: usize, bytes: &str) -> String {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}{bytes}{}", &s[..at], &s[at..])
}

/// Overwrites `s` from about `at` with `bytes`.
fn overwrite(s: &str, at: usize, bytes: &str) -> String {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    let mut end = (at + bytes.len()).min(s.len());
    while !s.is_char_boundary(end) {
        end += 1;
    }
    format!("{}{bytes}{}", &s[..at], &s[end..])
}

fn mutate(w: &World, data: &[u8]) {
    let [pick, op, at, rest @ ..] = data else {
        return;
    };
    let (original, claims) = &w.tokens[usize::from(*pick) % w.tokens.len()];
    let text = String::from_utf8_lossy(rest);
    let at = usize::from(*at);
    let mut parts: Vec<String> = original.split('.').map(str::to_string).collect();
    let part = usize::from(op >> 4) % parts.len();
    let mutated = match op % 7 {
        0 => {
            parts[part] = splice(&parts[part], at, &text);
            parts.join(".")
        }
        1 => {
            parts[part] = overwrite(&parts[part], at, &text);
            parts.join(".")
        }
        2 => {
            parts[part] = text.into_owned();
            parts.join(".")
        }
        3 | 4 => {
            let Ok(mut decoded) = URL_SAFE_NO_PAD.decode(&parts[part]) else {
                return;
            };
            let at = at % (decoded.len() + 1);
            if op % 7 == 3 {
                decoded.splice(at..at, rest.iter().copied());
            } else {
                let end = (at + rest.len()).min(decoded.len());
                decoded.splice(at..end, rest.iter().copied());
            }
            parts[part] = URL_SAFE_NO_PAD.encode(decoded);
            parts.join(".")
        }
        5 => {
            let cut = (at | usize::from(rest.first().copied().unwrap_or(0)) << 8) % (original.len() + 1);
            original.get(..cut).unwrap_or(original).to_string()
        }
        _ => {
            // The input as claims, signed by a key the mesh does not have,
            // under the kid of the mesh's key or of the ingress key.
            let value = serde_json::from_slice::<serde_json::Value>(rest).unwrap_or_else(|_| {
                // Or the original claims, with the input as the name.
                let mut c = match claims {
                    Claims::Dataplane(d) => serde_json::to_value(d).unwrap_or_default(),
                    Claims::Ingress(i) => serde_json::to_value(i).unwrap_or_default(),
                    Claims::Fixed(v) => v.clone(),
                };
                if let Some(o) = c.as_object_mut() {
                    o.insert("name".into(), text.clone().into_owned().into());
                }
                c
            });
            let kid = if op & 0x10 == 0 { "key-1" } else { "zone-ingress" };
            let forged = jwt::sign(&w.foreign, kid, &value).unwrap_or_else(|e| panic!("sign: {e}"));
            assert!(
                check(w, &forged).is_empty(),
                "a token of a foreign key verified: {forged}"
            );
            return;
        }
    };
    for got in check(w, &mutated) {
        assert_eq!(
            &got, claims,
            "a changed token verified to other claims\noriginal: {original}\nchanged:  {mutated}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let token = String::from_utf8_lossy(data);
    for got in check(w, &token) {
        assert!(
            w.tokens.iter().any(|(_, c)| *c == got),
            "{token:?} verified to claims nobody signed: {got:?}"
        );
    }
    let _ = jwt::check_times(
        i64::from_le_bytes(data.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default()),
        i64::from_le_bytes(data.get(8..16).and_then(|b| b.try_into().ok()).unwrap_or_default()),
        w.now,
    );
    mutate(w, data);
});
