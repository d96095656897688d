//! Feeds arbitrary bytes to what mesh mTLS decodes from outside: a
//! provided CA's certificate and key (Secrets, through the API), a zone's
//! intermediate public key (a ZoneCertificateRequest, through KDS) and the
//! certificate the global answers with (a ZoneCertificate, at the zone).
//! Any panic is a bug; so is a provided CA accepted that is not the real
//! pair, and an intermediate accepted for a key it was not signed for.
//!
//! The first byte picks the decoder, the rest is split at the first NUL
//! into two PEM texts; real material (a root and its key, an intermediate
//! key pair) is made once and spliced into the input's text by some bytes
//! of it, so that mutations of real PEM reach the X.509 parsers.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use chrono::Utc;
use libfuzzer_sys::fuzz_target;
use meridian_server::mtls::pki;

struct Material {
    root_cert: String,
    root_key: String,
    intermediate_key: String,
    intermediate_public: String,
    intermediate_cert: String,
}

fn material() -> &'static Material {
    static M: OnceLock<Material> = OnceLock::new();
    M.get_or_init(|| {
        let now = Utc::now();
        let (root, root_key) = pki::generate_root("default", 2048, Duration::from_secs(86_400), now).expect("root");
        let (intermediate_key, intermediate_public) = pki::generate_intermediate_key().expect("key");
        let (intermediate_cert, _) =
            pki::sign_intermediate(&root, "default", "zone-1", &intermediate_public, now).expect("intermediate");
        Material {
            root_cert: root.cert_pem.clone(),
            root_key,
            intermediate_key,
            intermediate_public,
            intermediate_cert,
        }
    })
}

/// `real` with `data` written over it at a position `data` chooses.
fn splice(real: &str, data: &[u8]) -> String {
    let mut bytes = real.as_bytes().to_vec();
    if let Some((&at, rest)) = data.split_first() {
        let at = usize::from(at) * bytes.len() / 256;
        for (i, b) in rest.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(at + i) {
                *slot = *b;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let m = material();
    let (a, b) = match rest.iter().position(|&x| x == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let text = |x: &[u8]| String::from_utf8_lossy(x).into_owned();
    let now = Utc::now();
    match op % 6 {
        0 => {
            let _ = pki::load_provided(&text(a), &text(b), now);
        }
        1 => {
            // A mutated real certificate with the real key: accepted only
            // if it still is the real certificate's key that it names.
            let cert = splice(&m.root_cert, a);
            if let Ok(ca) = pki::load_provided(&cert, &m.root_key, now) {
                let (_, public) = pki::generate_intermediate_key().expect("key");
                pki::sign_intermediate(&ca, "default", "z", &public, now).expect("an accepted CA signs");
            }
        }
        2 => {
            let key = splice(&m.root_key, a);
            let _ = pki::load_provided(&m.root_cert, &key, now);
        }
        3 => {
            // A zone's public key, as KDS brings it.
            let ca = pki::load_root(&m.root_cert, &m.root_key).expect("root");
            let _ = pki::sign_intermediate(&ca, "default", "z", &text(a), now);
            let _ = pki::sign_intermediate(&ca, "default", "z", &splice(&m.intermediate_public, a), now);
        }
        4 => {
            // The global's answer, at the zone: only the certificate for
            // the zone's key is accepted.
            let cert = splice(&m.intermediate_cert, a);
            if let Ok(i) = pki::Intermediate::new(&m.intermediate_key, &cert) {
                i.issue("default", &["s".into()], &Default::default(), Duration::from_secs(60), now)
                    .expect("an accepted intermediate issues");
            }
            let _ = pki::Intermediate::new(&text(a), &text(b));
        }
        _ => {
            let _ = pki::not_after(&text(a));
            let _ = pki::not_before(&text(b));
        }
    }
});
