//! The local admin token (DESIGN §12): a random bearer token kept as a
//! system record of the control plane's store and copied to a file
//! (`<data-dir>/admin-token`, mode 0600) for the operator of that host.
//!
//! The record is created with `put_system_if_absent`, so replicas of one
//! global on one etcd share a single admin token and each writes it to its
//! own file. A request presenting it acts as [`Principal::admin`]
//! (group `mesh-system:admin`), subject to the stored roles like anyone.
//!
//! Only the token's SHA-256 digest stays in memory; a presented token is
//! hashed and compared with it.
//!
//! [`Principal::admin`]: meridian_core::access::Principal::admin

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meridian_store::Store;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// The global system record holding the token.
pub const ADMIN_TOKEN_RECORD: &str = "api-admin-token";
/// Every admin token starts with this, which tells it from a user token
/// (a JWT) at a glance.
pub const ADMIN_TOKEN_PREFIX: &str = "meridian-admin.";
const RANDOM_BYTES: usize = 32;

/// The digest of this control plane's admin token.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn check_shape(token: &str) -> Result<(), String> {
    let Some(rest) = token.strip_prefix(ADMIN_TOKEN_PREFIX) else {
        return Err(format!("does not start with {ADMIN_TOKEN_PREFIX:?}"));
    };
    match URL_SAFE_NO_PAD.decode(rest) {
        Ok(bytes) if bytes.len() == RANDOM_BYTES => Ok(()),
        _ => Err(format!("is not {RANDOM_BYTES} random bytes in base64url")),
    }
}

impl AdminToken {
    /// Whether `presented` is the admin token.
    pub fn matches(&self, presented: &str) -> bool {
        // Comparing digests: timing can reveal at most a prefix of the
        // digest of a guess, which says nothing about the token.
        presented.starts_with(ADMIN_TOKEN_PREFIX) && digest(presented) == self.digest
    }

    /// A token object for tests and in-process control planes.
    pub fn from_token(token: &str) -> Self {
        AdminToken { digest: digest(token) }
    }

    /// Loads the store's admin token, creating it on first start, and makes
    /// sure `file` holds it (mode 0600). Returns the token's digest and the
    /// token itself (for in-process callers such as tests and benchmarks).
    pub async fn load_or_create(store: &Arc<dyn Store>, file: &Path) -> anyhow::Result<(AdminToken, String)> {
        let fresh = new_token()?;
        let stored = store
            .put_system_if_absent(None, ADMIN_TOKEN_RECORD, fresh.clone().into_bytes())
            .await
            .context("storing the admin token")?;
        let token = String::from_utf8(stored).map_err(|_| {
            anyhow::anyhow!("the stored admin token is not UTF-8: the store record {ADMIN_TOKEN_RECORD} is damaged")
        })?;
        check_shape(&token).map_err(|e| {
            anyhow::anyhow!("the stored admin token {e}: the store record {ADMIN_TOKEN_RECORD} is damaged")
        })?;
        if token == fresh {
            tracing::info!(file = %file.display(), "created the admin token");
        }
        write_private(file, &token)?;
        Ok((AdminToken { digest: digest(&token) }, token))
    }
}

fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; RANDOM_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    Ok(format!("{ADMIN_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Writes `token` to `file` unless it already holds it: through a
/// temporary file of mode 0600 renamed over it, the directory created
/// (0700) when missing.
fn write_private(file: &Path, token: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(file).is_ok_and(|t| t.trim() == token) {
        return Ok(());
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir)
            .with_context(|| format!("creating {} for the admin token", dir.display()))?;
    }
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("admin token file {} has no file name", file.display()))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let result = (|| -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing the admin token to {}", file.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_store::memory::MemoryStore;

    #[tokio::test]
    async fn created_once_written_private_and_matched() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let file = dir.path().join("sub/admin-token");
        let (a, token) = AdminToken::load_or_create(&store, &file).await.unwrap();
        assert!(a.matches(&token));
        assert!(!a.matches(&format!("{token}x")));
        assert!(!a.matches(""));
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second replica (or a restart) gets the same token, also into a
        // file that held something else.
        let other = dir.path().join("other-token");
        std::fs::write(&other, "stale").unwrap();
        let (_, again) = AdminToken::load_or_create(&store, &other).await.unwrap();
        assert_eq!(again, token);
        assert_eq!(std::fs::read_to_string(&other).unwrap().trim(), token);
    }

    #[tokio::test]
    async fn a_damaged_record_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store
            .put_system(None, ADMIN_TOKEN_RECORD, b"guessable".to_vec())
            .await
            .unwrap();
        let err = AdminToken::load_or_create(&store, &dir.path().join("t"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
