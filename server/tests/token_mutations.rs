//! A quick, deterministic stand-in for the `dataplane_tokens` fuzz target
//! that runs in every test run: mutate real signed dataplane and ingress
//! tokens — their text byte by byte, and the decoded bytes of one part,
//! re-encoded so the change reaches the JSON and the signature — and check
//! that the verifiers never panic and that a mutated token either fails or
//! verifies to exactly the original claims. Claims re-signed with a key the
//! zone does not have never verify.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meridian_core::decode::Document;
use meridian_core::identity::DataplaneClaims;
use meridian_core::{ResourceKey, ResourceType};
use meridian_server::identity::dataplane::{
    DataplaneTokenError, DataplaneTokenIssuer, DataplaneTokenVerifier, IssueRequest, VerifiedDataplane,
};
use meridian_server::identity::ingress::{IngressClaims, IngressTokenError, IngressTokens};
use meridian_server::identity::jwt::{self, JwtError};
use meridian_server::manager::Manager;
use meridian_store::cache::Cache;
use meridian_store::memory::MemoryStore;
use meridian_store::Store;

const MESH: &str = "default";
const ZONE: &str = "zone-1";
const ROUNDS: usize = 6000;

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

/// What a token's text is made of, and what breaks it.
const TEXT: &[u8] = b"AZaz09-_.=+/ \n%\"";
/// What the decoded JSON is made of, and what breaks it.
const JSON: &[u8] = b"{}[]\":,0123456789-+.eE tfnu\\aAzZ/";

/// A zone's view: a mesh with its signing key and two dataplane tokens, and
/// one ingress token of the zone.
struct Zone {
    verifier: DataplaneTokenVerifier,
    ingress: IngressTokens,
    dataplane: Vec<(String, DataplaneClaims)>,
    ingress_token: (String, IngressClaims),
    /// A time at which every token is valid.
    now: i64,
}

async fn zone() -> Zone {
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
        tags: BTreeMap::from([(
            "kuma.io/service".to_string(),
            vec!["web".to_string(), "api".to_string()],
        )]),
        ..plain.clone()
    };
    let mut dataplane = Vec::new();
    for r in [named, plain] {
        let token = issuer.issue(&r).await.unwrap_or_else(|e| panic!("issue: {e}"));
        let claims = verifier.verify(&token).unwrap_or_else(|e| panic!("verify: {e}")).claims;
        dataplane.push((token, claims));
    }
    let ingress = IngressTokens::new(store, ZONE);
    let token = ingress
        .issue(Some("ingress-1"), Duration::from_secs(3600))
        .await
        .unwrap_or_else(|e| panic!("ingress issue: {e}"));
    let claims = ingress
        .verify(&token)
        .await
        .unwrap_or_else(|e| panic!("ingress verify: {e}"));
    let now = dataplane.iter().map(|(_, c)| c.iat).fold(claims.iat, i64::max) + 1;
    Zone {
        verifier,
        ingress,
        dataplane,
        ingress_token: (token, claims),
        now,
    }
}

/// The characters of base64url: a change among them keeps a part decoding.
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A byte like `b` (a digit for a digit, a letter for a letter), so that
/// changed JSON still parses and reaches the signature check.
fn alike(rng: &mut Rng, b: u8) -> u8 {
    let class: &[u8] = if b.is_ascii_digit() {
        b"0123456789"
    } else if b.is_ascii_alphabetic() {
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    } else {
        JSON
    };
    class[rng.below(class.len())]
}

/// Changes `token` in one to three places.
fn mutate(rng: &mut Rng, token: &str) -> Vec<u8> {
    let mut bytes = token.as_bytes().to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(10) {
            // The text: a byte replaced, removed or added.
            0 => {
                let at = rng.below(bytes.len());
                bytes[at] = TEXT[rng.below(TEXT.len())];
            }
            1 | 2 => {
                let at = rng.below(bytes.len());
                bytes[at] = BASE64URL[rng.below(BASE64URL.len())];
            }
            3 => {
                bytes.remove(rng.below(bytes.len()));
            }
            4 => {
                let at = rng.below(bytes.len() + 1);
                bytes.insert(at, TEXT[rng.below(TEXT.len())]);
            }
            // Cut short, or a part repeated or moved.
            5 => bytes.truncate(rng.below(bytes.len())),
            6 => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut parts: Vec<&str> = text.split('.').collect();
                let (a, b) = (rng.below(parts.len()), rng.below(parts.len()));
                if rng.below(2) == 0 {
                    parts.swap(a, b);
                } else {
                    parts[a] = parts[b];
                }
                bytes = parts.join(".").into_bytes();
            }
            // The decoded bytes of one part, changed and encoded again.
            _ => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut parts: Vec<String> = text.split('.').map(str::to_string).collect();
                let p = rng.below(parts.len());
                let Ok(mut decoded) = URL_SAFE_NO_PAD.decode(&parts[p]) else {
                    continue;
                };
                let at = rng.below(decoded.len() + 1);
                let c = JSON[rng.below(JSON.len())];
                match rng.below(5) {
                    0 | 1 if at < decoded.len() => decoded[at] = alike(rng, decoded[at]),
                    2 if at < decoded.len() => decoded[at] ^= 1 << rng.below(8),
                    3 if at < decoded.len() => {
                        decoded.remove(at);
                    }
                    _ => decoded.insert(at, c),
                }
                parts[p] = URL_SAFE_NO_PAD.encode(decoded);
                bytes = parts.join(".").into_bytes();
            }
        }
        if bytes.is_empty() {
            break;
        }
    }
    bytes
}

/// What the verifiers said, tallied, so the test can show it got deep.
#[derive(Default, Debug)]
struct Tally {
    accepted: usize,
    malformed: usize,
    bad_signature: usize,
    other: usize,
}

impl Tally {
    fn jwt(&mut self, e: &JwtError) {
        match e {
            JwtError::Malformed(_) => self.malformed += 1,
            JwtError::BadSignature => self.bad_signature += 1,
            _ => self.other += 1,
        }
    }

    fn dataplane(&mut self, r: &Result<VerifiedDataplane, DataplaneTokenError>) {
        match r {
            Ok(_) => self.accepted += 1,
            Err(DataplaneTokenError::Jwt(e)) => self.jwt(e),
            Err(e) => {
                assert!(e.is_unauthenticated(), "{e}");
                let _ = e.to_string();
                self.other += 1;
            }
        }
    }

    fn ingress(&mut self, r: &Result<IngressClaims, IngressTokenError>) {
        match r {
            Ok(_) => self.accepted += 1,
            Err(IngressTokenError::Jwt(e)) => self.jwt(e),
            Err(e) => {
                assert!(e.is_unauthenticated(), "{e}");
                let _ = e.to_string();
                self.other += 1;
            }
        }
    }
}

/// Checks one mutated token against both verifiers: it verifies to
/// exactly the claims of `original`, as the kind of token it is, or not at
/// all.
async fn check(zone: &Zone, tally: &mut Tally, original: &str, mutated: &[u8]) {
    let text = String::from_utf8_lossy(mutated);
    let as_dataplane = zone.verifier.verify_at(&text, zone.now);
    tally.dataplane(&as_dataplane);
    if let Ok(v) = &as_dataplane {
        let expected = zone.dataplane.iter().find(|(t, _)| t == original).map(|(_, c)| c);
        assert_eq!(
            Some(&v.claims),
            expected,
            "a changed token verified to other claims\noriginal: {original}\nchanged:  {text}"
        );
        assert_eq!(v.kid, "key-1");
    }
    let as_ingress = zone.ingress.verify_at(&text, zone.now).await;
    tally.ingress(&as_ingress);
    if let Ok(c) = &as_ingress {
        assert_eq!(
            original, zone.ingress_token.0,
            "a dataplane token verified as an ingress token: {text}"
        );
        assert!(as_dataplane.is_err(), "accepted as both kinds: {text}");
        assert_eq!(
            c, &zone.ingress_token.1,
            "a changed token verified to other claims\noriginal: {original}\nchanged:  {text}"
        );
    }
}

#[tokio::test]
async fn mutated_tokens_verify_to_the_original_claims_or_not_at_all() {
    let zone = zone().await;
    let tokens: Vec<String> = zone
        .dataplane
        .iter()
        .map(|(t, _)| t.clone())
        .chain([zone.ingress_token.0.clone()])
        .collect();
    // The originals verify, each as its own kind only.
    let mut tally = Tally::default();
    for t in &tokens {
        check(&zone, &mut tally, t, t.as_bytes()).await;
    }
    assert_eq!(tally.accepted, tokens.len(), "{tally:?}");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tally = Tally::default();
    for round in 0..ROUNDS {
        let original = &tokens[round % tokens.len()];
        let mutated = mutate(&mut rng, original);
        check(&zone, &mut tally, original, &mutated).await;
    }
    assert!(
        tally.bad_signature > ROUNDS / 10,
        "the mutations should often reach the signature check: {tally:?}"
    );
    assert!(tally.malformed > ROUNDS / 10, "{tally:?}");
}

#[tokio::test]
async fn claims_signed_with_another_key_never_verify() {
    let zone = zone().await;
    let foreign = jwt::load_key(&jwt::generate_key().unwrap()).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut tally = Tally::default();
    let originals = zone
        .dataplane
        .iter()
        .map(|(t, c)| (t.clone(), "key-1", serde_json::to_vec(c).unwrap()))
        .chain([(
            zone.ingress_token.0.clone(),
            "zone-ingress",
            serde_json::to_vec(&zone.ingress_token.1).unwrap(),
        )])
        .collect::<Vec<_>>();
    for round in 0..ROUNDS / 3 {
        let (_, kid, claims) = &originals[round % originals.len()];
        // The original claims, or claims changed a little (that still
        // decode as JSON), under the kid the zone knows.
        let mut value: serde_json::Value = serde_json::from_slice(claims).unwrap();
        if round % 2 == 1 {
            let mut bytes = claims.clone();
            let at = rng.below(bytes.len());
            bytes[at] = JSON[rng.below(JSON.len())];
            if let Ok(v) = serde_json::from_slice(&bytes) {
                value = v;
            }
        }
        let forged = jwt::sign(&foreign, kid, &value).unwrap();
        let text = String::from_utf8_lossy(&mutate(&mut rng, &forged)).into_owned();
        for t in [&forged, &text] {
            let d = zone.verifier.verify_at(t, zone.now);
            let i = zone.ingress.verify_at(t, zone.now).await;
            assert!(d.is_err() && i.is_err(), "a token of a foreign key verified: {t}");
            tally.dataplane(&d);
            tally.ingress(&i);
        }
    }
    assert!(tally.bad_signature > ROUNDS / 3, "{tally:?}");
}
