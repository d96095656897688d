//! Compact JWTs signed with Ed25519 (`alg: EdDSA`), the form of every token
//! a proxy presents to a zone.
//!
//! Parsing refuses, before any key is looked up: more than
//! [`MAX_TOKEN_BYTES`], anything but three base64url parts, a header that is
//! not exactly `{alg, typ, kid}`, and every `alg` but `EdDSA` (so `none` and
//! an HMAC over a public key are refused by construction). The claims can be
//! read before the signature is checked only to find the key; callers trust
//! them after [`Parsed::verify`] and [`check_times`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Tokens longer than this are refused before any work is done on them.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How far apart the issuer's and the verifier's clocks may be, in seconds:
/// a token is accepted this long after its expiry and this long before its
/// issue time.
pub const CLOCK_SKEW_SECS: i64 = 5;

const ALG: &str = meridian_core::identity::JWT_ALGORITHM;

/// Why a token is not accepted. Messages go to the proxy as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No token was presented.
    #[error("no token was presented")]
    Missing,
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is {len} bytes, more than the limit of {MAX_TOKEN_BYTES}")]
    Oversized { len: usize },
    /// Not three base64url parts, or a header or claims that do not decode.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The header names an algorithm other than EdDSA.
    #[error("the token's algorithm {0:?} is not accepted (only {ALG})")]
    UnsupportedAlgorithm(String),
    /// The signature does not verify with the key the header names.
    #[error("the token's signature is invalid: it was not signed by this mesh's key, or it was altered")]
    BadSignature,
    /// Expired (beyond the tolerated clock skew).
    #[error("the token expired at {}", format_unix(*at))]
    Expired { at: i64 },
    /// Issued in the future (beyond the tolerated clock skew).
    #[error("the token is issued at {}, in the future: the clocks differ by more than {CLOCK_SKEW_SECS}s", format_unix(*at))]
    NotYetValid { at: i64 },
}

/// Unix seconds as RFC 3339 (or as a number when out of range).
pub fn format_unix(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("unix time {secs}"))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The id of the key that signed it (header `kid`).
    pub kid: String,
    claims: Vec<u8>,
    signed: &'a str,
    signature: Vec<u8>,
}

/// Splits and decodes `token` (surrounding whitespace, as a token file's
/// trailing newline, is ignored).
pub fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(JwtError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Oversized { len: token.len() });
    }
    let mut parts = token.split('.');
    let (Some(header_part), Some(claims_part), Some(sig_part), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(format!(
            "expected 3 dot-separated parts, got {}",
            token.split('.').count()
        )));
    };
    let header_bytes = decode_part("header", header_part)?;
    let claims = decode_part("claims", claims_part)?;
    let signature = decode_part("signature", sig_part)?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
    if header.alg != ALG {
        return Err(JwtError::UnsupportedAlgorithm(header.alg));
    }
    if header.typ != "JWT" {
        return Err(JwtError::Malformed(format!(
            "header typ {:?} is not \"JWT\"",
            header.typ
        )));
    }
    if header.kid.is_empty() || header.kid.len() > 253 {
        return Err(JwtError::Malformed("header kid must have 1 to 253 characters".into()));
    }
    let signed = token
        .get(..header_part.len() + 1 + claims_part.len())
        .ok_or_else(|| JwtError::Malformed("the token is not split on character boundaries".into()))?;
    Ok(Parsed {
        kid: header.kid,
        claims,
        signed,
        signature,
    })
}

impl Parsed<'_> {
    /// The claims, decoded but not yet trusted.
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, JwtError> {
        serde_json::from_slice(&self.claims).map_err(|e| JwtError::Malformed(format!("claims: {e}")))
    }

    /// Checks the signature with an Ed25519 `public_key`.
    pub fn verify(&self, public_key: &[u8]) -> Result<(), JwtError> {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(self.signed.as_bytes(), &self.signature)
            .map_err(|_| JwtError::BadSignature)
    }
}

/// The Ed25519 public key a key resource (`DataplaneTokenKey`,
/// `UserTokenKey`) holds; `Err` names the resource when it does not decode
/// (fail closed: the caller refuses the token).
pub fn public_key_of(r: &meridian_core::Resource) -> Result<Vec<u8>, String> {
    serde_json::from_value::<meridian_core::identity::DataplaneTokenKey>(r.spec.clone())
        .ok()
        .and_then(|k| k.public_key_bytes())
        .ok_or_else(|| format!("{} does not decode", r.key))
}

/// Checks issue and expiry times against `now`, within [`CLOCK_SKEW_SECS`].
pub fn check_times(issued_at: i64, expires_at: i64, now: i64) -> Result<(), JwtError> {
    if now >= expires_at.saturating_add(CLOCK_SKEW_SECS) {
        return Err(JwtError::Expired { at: expires_at });
    }
    if issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
        return Err(JwtError::NotYetValid { at: issued_at });
    }
    Ok(())
}

/// Signs `claims` with `key`, naming it `kid` in the header.
pub fn sign<T: Serialize>(key: &Ed25519KeyPair, kid: &str, claims: &T) -> Result<String, serde_json::Error> {
    let header = Header {
        alg: ALG.into(),
        typ: "JWT".into(),
        kid: kid.into(),
    };
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
    );
    let sig = key.sign(signed.as_bytes());
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
}

/// Why key material could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A new Ed25519 key pair, as PKCS#8.
pub fn generate_key() -> Result<Vec<u8>, KeyError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| KeyError("no randomness to generate a signing key".into()))
}

/// The key pair of a PKCS#8 document made by [`generate_key`].
pub fn load_key(pkcs8: &[u8]) -> Result<Ed25519KeyPair, KeyError> {
    Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError(format!("not an Ed25519 PKCS#8 key: {e}")))
}

/// The public half of a key pair.
pub fn public_key(key: &Ed25519KeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

/// A new random token id, shaped as a UUID (version 4), so that it is also a
/// valid resource name.
pub fn new_token_id() -> Result<String, KeyError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyError("no randomness for a token id".into()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Checks a token id as `revoke` receives it: 1 to 64 characters of lower
/// case letters, digits and `-`, as [`new_token_id`] makes them.
pub fn check_token_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("must have 1 to 64 characters, got {}", id.len()));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("{id:?} is not a token id (lower case letters, digits and '-')"));
    }
    Ok(())
}

fn decode_part(what: &str, part: &str) -> Result<Vec<u8>, JwtError> {
    if part.is_empty() {
        return Err(JwtError::Malformed(format!("the {what} is empty")));
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| JwtError::Malformed(format!("the {what} is not base64url: {e}")))
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, KeyInit, Mac};
    use serde_json::json;

    use super::*;

    fn key() -> Ed25519KeyPair {
        load_key(&generate_key().unwrap()).unwrap()
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn signed_tokens_verify_with_their_key_only() {
        let k = key();
        let token = sign(&k, "key-1", &json!({"sub": "x", "n": 1})).unwrap();
        let with_newline = format!("{token}\n");
        let parsed = parse(&with_newline).unwrap();
        assert_eq!(parsed.kid, "key-1");
        parsed.verify(&public_key(&k)).unwrap();
        let claims: serde_json::Value = parsed.claims().unwrap();
        assert_eq!(claims["n"], 1);
        assert_eq!(parsed.verify(&public_key(&key())), Err(JwtError::BadSignature));
        assert_eq!(parsed.verify(&[0u8; 5]), Err(JwtError::BadSignature));
    }

    #[test]
    fn other_algorithms_are_refused_before_any_key() {
        let k = key();
        let token = sign(&k, "key-1", &json!({"a": 1})).unwrap();
        let claims = token.split('.').nth(1).unwrap();
        let none = b64(&json!({"alg": "none", "typ": "JWT", "kid": "key-1"}));
        assert_eq!(
            parse(&format!("{none}.{claims}.")).unwrap_err(),
            JwtError::Malformed("the signature is empty".into())
        );
        assert_eq!(
            parse(&format!("{none}.{claims}.AAAA")).unwrap_err(),
            JwtError::UnsupportedAlgorithm("none".into())
        );
        // An HMAC keyed with the public key: the classic confusion.
        let hs = b64(&json!({"alg": "HS256", "typ": "JWT", "kid": "key-1"}));
        let signed = format!("{hs}.{claims}");
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&public_key(&k)).unwrap();
        mac.update(signed.as_bytes());
        let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        assert_eq!(
            parse(&forged).unwrap_err(),
            JwtError::UnsupportedAlgorithm("HS256".into())
        );
    }

    #[test]
    fn garbage_truncation_and_size() {
        assert_eq!(parse("").unwrap_err(), JwtError::Missing);
        assert_eq!(parse(" \n").unwrap_err(), JwtError::Missing);
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(parse(&big).unwrap_err(), JwtError::Oversized { len: big.len() });
        for g in [
            ".",
            "..",
            "...",
            "a.b",
            "a.b.c.d",
            "%.%.%",
            "eyJ.eyJ.eyJ",
            "🦀.🦀.🦀",
            "\0.\0.\0",
        ] {
            assert!(matches!(parse(g), Err(JwtError::Malformed(_))), "{g:?}");
        }
        let k = key();
        let token = sign(&k, "key-1", &json!({"a": 1})).unwrap();
        for n in 0..token.len() {
            let verdict = parse(&token[..n]).and_then(|p| p.verify(&public_key(&k)));
            assert!(verdict.is_err(), "cut at {n} accepted");
        }
        // Headers with extra or missing fields.
        for h in [
            json!({"alg": "EdDSA", "typ": "JWT"}),
            json!({"alg": "EdDSA", "typ": "JWT", "kid": "k", "jku": "http://evil"}),
            json!({"alg": "EdDSA", "typ": "JOSE", "kid": "k"}),
            json!({"alg": "EdDSA", "typ": "JWT", "kid": ""}),
            json!([1]),
        ] {
            let t = format!("{}.{}.AAAA", b64(&h), b64(&json!({})));
            assert!(matches!(parse(&t), Err(JwtError::Malformed(_))), "{h}");
        }
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let k = key();
        let pk = public_key(&k);
        let token = sign(&k, "key-1", &json!({"mesh": "m", "exp": 5})).unwrap();
        for i in 0..token.len() {
            for c in [b'A', b'z', b'0', b'-', b'_', b'.'] {
                let mut bytes = token.clone().into_bytes();
                if bytes[i] == c {
                    continue;
                }
                bytes[i] = c;
                let changed = String::from_utf8(bytes).unwrap();
                if let Ok(p) = parse(&changed) {
                    if p.verify(&pk).is_ok() {
                        // base64url without padding: two spellings of the
                        // last character may decode to the same bytes.
                        let original = parse(&token).unwrap();
                        assert_eq!(p.claims::<serde_json::Value>(), original.claims());
                        assert_eq!(p.signature, original.signature);
                    }
                }
            }
        }
    }

    #[test]
    fn clock_skew_of_a_few_seconds_is_tolerated_not_more() {
        let (iat, exp) = (1_000, 2_000);
        assert_eq!(check_times(iat, exp, 1_500), Ok(()));
        assert_eq!(check_times(iat, exp, exp + CLOCK_SKEW_SECS - 1), Ok(()));
        assert_eq!(
            check_times(iat, exp, exp + CLOCK_SKEW_SECS),
            Err(JwtError::Expired { at: exp })
        );
        assert_eq!(check_times(iat, exp, iat - CLOCK_SKEW_SECS), Ok(()));
        assert_eq!(
            check_times(iat, exp, iat - CLOCK_SKEW_SECS - 1),
            Err(JwtError::NotYetValid { at: iat })
        );
        assert!(check_times(i64::MIN, i64::MAX, 0).is_ok());
        assert!(check_times(0, i64::MIN, i64::MAX).is_err());
        let msg = JwtError::Expired { at: 0 }.to_string();
        assert!(msg.contains("1970-01-01T00:00:00Z"), "{msg}");
    }

    #[test]
    fn token_ids_are_uuid_shaped_names() {
        let a = new_token_id().unwrap();
        assert_eq!(a.len(), 36);
        assert_ne!(a, new_token_id().unwrap());
        check_token_id(&a).unwrap();
        meridian_core::names::check_subdomain(&a).unwrap();
        for bad in ["", "A", "a/b", &"a".repeat(65)] {
            assert!(check_token_id(bad).is_err(), "{bad:?}");
        }
    }
}
