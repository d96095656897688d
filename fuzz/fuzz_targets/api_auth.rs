//! Feeds arbitrary bytes to what the API does with an `Authorization`
//! header: `AccessControl::authenticate` (admin token, user token parsing,
//! signature, claims, revocation). Any panic is a bug, and so is any
//! header accepted as someone nobody signed.
//!
//! - The whole input is the header value.
//! - The first byte picks a real credential (the admin token, a user token)
//!   and where to splice the rest of the input into it, as text or into the
//!   decoded claims; whatever is then accepted must be exactly the original
//!   principal.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::HeaderValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use meridian_core::access::Principal;
use meridian_server::access::user_tokens::UserTokenRequest;
use meridian_server::access::{AccessConfig, AccessControl};
use meridian_server::manager::Manager;
use meridian_store::cache::Cache;
use meridian_store::memory::MemoryStore;
use meridian_store::Store;

struct World {
    _runtime: tokio::runtime::Runtime,
    _dir: std::path::PathBuf,
    access: Arc<AccessControl>,
    /// Real credentials and who they name.
    credentials: Vec<(String, Principal)>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let dir = std::env::temp_dir().join(format!("meridian-fuzz-api-auth-{}", std::process::id()));
        let (access, credentials) = runtime.block_on(async {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let cache = Cache::start(store.clone());
            let _ = cache.ready().clone().wait_for(|r| *r).await;
            let manager = Arc::new(Manager::new(store, cache));
            let mut registry = prometheus_client::registry::Registry::default();
            let (access, admin) = AccessControl::start(
                manager,
                &AccessConfig::with_token_file(dir.join("admin-token")),
                "fuzz".into(),
                &mut registry,
            )
            .await
            .unwrap_or_else(|e| panic!("access: {e}"));
            let mut credentials = vec![(admin, Principal::admin())];
            for (name, groups) in [("alice", vec!["team-a".to_string()]), ("bob@example.com", vec![])] {
                let token = access
                    .users
                    .issue(&UserTokenRequest {
                        name: name.into(),
                        groups,
                        valid_for: Duration::from_secs(3600),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("issue: {e}"));
                let claims = access.users.verify(&token).unwrap_or_else(|e| panic!("verify: {e}"));
                credentials.push((token, Principal::user(&claims)));
            }
            (access, credentials)
        });
        World {
            _runtime: runtime,
            _dir: dir,
            access,
            credentials,
        }
    })
}

fn check(w: &World, header: &[u8], allowed: Option<&Principal>) {
    let Ok(value) = HeaderValue::from_bytes(header) else { return };
    if let Ok(p) = w.access.authenticate(Some(&value)) {
        match allowed {
            Some(a) => assert_eq!(&p, a, "a changed credential was accepted as someone else"),
            None => assert!(
                w.credentials.iter().any(|(_, c)| c == &p),
                "an arbitrary header was accepted as {p:?}"
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    check(w, data, None);
    let Some((&pick, rest)) = data.split_first() else { return };
    let (token, principal) = &w.credentials[pick as usize % w.credentials.len()];
    let at = (pick as usize / 3) % (token.len() + 1);
    // Splice into the text.
    let mut spliced = format!("Bearer {}", &token[..at]).into_bytes();
    spliced.extend_from_slice(rest);
    spliced.extend_from_slice(&token.as_bytes()[at..]);
    check(w, &spliced, if rest.is_empty() { Some(principal) } else { None });
    // Splice into the decoded claims of a user token, keeping the signature.
    let parts: Vec<&str> = token.split('.').collect();
    if let [h, c, s] = parts.as_slice() {
        if let Ok(mut claims) = URL_SAFE_NO_PAD.decode(c) {
            let at = at % (claims.len() + 1);
            let tail = claims.split_off(at);
            claims.extend_from_slice(rest);
            claims.extend_from_slice(&tail);
            let forged = format!("Bearer {h}.{}.{s}", URL_SAFE_NO_PAD.encode(&claims));
            check(w, forged.as_bytes(), if rest.is_empty() { Some(principal) } else { None });
        }
    }
});
