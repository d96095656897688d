//! Control-plane access (DESIGN §12): authentication of API callers,
//! authorization by roles, and the audit log.
//!
//! - [`admin_token`]: each control plane's local admin token.
//! - [`user_tokens`]: user tokens signed by the global, verified everywhere.
//! - [`rbac`]: the compiled `AccessRole`s and `AccessRoleBinding`s, and the
//!   checks that keep them coherent.
//! - [`audit`]: who did what, stored and logged.
//!
//! [`AccessControl`] puts them together for the API: `authenticate` turns
//! the `Authorization` header into a [`Principal`] (or a 401 saying what is
//! missing), `authorize` answers 403 naming the permission that is lacking.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use meridian_core::access::{Access, Principal, Target};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::error::ApiError;
use crate::manager::Manager;

pub mod admin_token;
pub mod audit;
pub mod rbac;
pub mod user_tokens;

use admin_token::AdminToken;
use audit::AuditLog;
use rbac::RbacCache;
use user_tokens::UserTokens;

/// How access is set up.
#[derive(Clone, Debug)]
pub struct AccessConfig {
    /// Where the admin token is written (`<data-dir>/admin-token`).
    pub admin_token_file: PathBuf,
    /// Serve `/metrics` without a token.
    pub metrics_public: bool,
    /// How long audit entries are kept.
    pub audit_retention: Duration,
    /// No authentication, authorization or audit: every request acts as
    /// the admin. For in-process baselines of benchmarks only; no flag,
    /// variable or file setting reaches it, and it logs a warning.
    pub unauthenticated: bool,
}

impl AccessConfig {
    /// The defaults, with the admin token written to `admin_token_file`.
    pub fn with_token_file(admin_token_file: PathBuf) -> Self {
        AccessConfig {
            admin_token_file,
            metrics_public: false,
            audit_retention: DEFAULT_AUDIT_RETENTION,
            unauthenticated: false,
        }
    }
}

/// The default of `--audit-retention`.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Authentication, authorization and audit of one control plane.
pub struct AccessControl {
    admin: AdminToken,
    pub users: UserTokens,
    pub rbac: RbacCache,
    pub audit: Arc<AuditLog>,
    /// Whether requests are audited (all but the unauthenticated baseline).
    pub audits: bool,
    pub metrics_public: bool,
    unauthenticated: bool,
    auth_failures: Family<ReasonLabel, Counter>,
    forbidden: Counter,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl").finish_non_exhaustive()
    }
}

const BEARER_HINT: &str = "send `Authorization: Bearer <token>`: the admin token is in the file admin-token of the control plane's data directory (meridianctl finds it on the same host), user tokens come from `meridianctl generate user-token`";

fn unauthorized(details: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", details)
}

impl AccessControl {
    /// Loads (or creates) the admin token and starts the audit log.
    pub async fn start(
        manager: Arc<Manager>,
        config: &AccessConfig,
        instance: String,
        registry: &mut Registry,
    ) -> anyhow::Result<(Arc<Self>, String)> {
        let (admin, token) = AdminToken::load_or_create(manager.store(), &config.admin_token_file).await?;
        let audit = AuditLog::start(manager.store().clone(), config.audit_retention, instance);
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        // Every reason shows from the start, at 0, so rates and alerts have
        // a series before the first failure.
        for reason in ["missing", "malformed", "invalid"] {
            let _ = auth_failures.get_or_create(&ReasonLabel { reason });
        }
        let forbidden = Counter::default();
        registry.register(
            "meridian_api_authentication_failures",
            "API requests refused with 401, by reason",
            auth_failures.clone(),
        );
        registry.register(
            "meridian_api_forbidden",
            "API requests refused with 403",
            forbidden.clone(),
        );
        if config.unauthenticated {
            tracing::warn!("the API is UNAUTHENTICATED: every request acts as the admin and nothing is audited (an in-process baseline)");
        }
        if config.metrics_public {
            tracing::warn!("--metrics-public: /metrics is served without a token");
        }
        let access = AccessControl {
            admin,
            users: UserTokens::new(manager.clone()),
            rbac: RbacCache::new(manager),
            audit,
            audits: !config.unauthenticated,
            metrics_public: config.metrics_public,
            unauthenticated: config.unauthenticated,
            auth_failures,
            forbidden,
        };
        Ok((Arc::new(access), token))
    }

    fn fail(&self, reason: &'static str, details: String) -> ApiError {
        self.auth_failures.get_or_create(&ReasonLabel { reason }).inc();
        tracing::debug!(reason, %details, "API request not authenticated");
        unauthorized(details)
    }

    /// The caller named by an `Authorization` header.
    pub fn authenticate(&self, header: Option<&HeaderValue>) -> Result<Principal, ApiError> {
        if self.unauthenticated {
            return Ok(Principal::admin());
        }
        let Some(value) = header else {
            return Err(self.fail("missing", format!("no token was presented: {BEARER_HINT}")));
        };
        let Some(token) = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Err(self.fail(
                "malformed",
                format!("the Authorization header is not `Bearer <token>`: {BEARER_HINT}"),
            ));
        };
        if token.starts_with(admin_token::ADMIN_TOKEN_PREFIX) {
            return if self.admin.matches(token) {
                Ok(Principal::admin())
            } else {
                Err(self.fail(
                    "invalid",
                    "the admin token is not this control plane's (another control plane's, or an old one)".into(),
                ))
            };
        }
        match self.users.verify(token) {
            Ok(claims) => Ok(Principal::user(&claims)),
            Err(e) if e.is_unauthenticated() => Err(self.fail("invalid", e.to_string())),
            Err(e) => {
                tracing::error!(error = %e, "cannot verify a user token");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    format!("cannot verify the token: {e}"),
                ))
            }
        }
    }

    /// Whether `p` may do `access` on `target`.
    pub fn can(&self, p: &Principal, access: Access, target: &Target<'_>) -> bool {
        self.unauthenticated || self.rbac.current().allows(p, access, target)
    }

    /// [`Self::can`], or a 403 that names what is lacking.
    pub fn authorize(&self, p: &Principal, access: Access, target: &Target<'_>) -> Result<(), ApiError> {
        if self.can(p, access, target) {
            return Ok(());
        }
        self.forbidden.inc();
        let mut what = String::new();
        if let Some(k) = target.kind {
            what.push_str(&format!(" on {k}"));
            if let Some(n) = target.name {
                what.push_str(&format!(" {n:?}"));
            }
        }
        if let Some(m) = target.mesh {
            what.push_str(&format!(" in mesh {m:?}"));
        }
        let groups: Vec<&str> = p
            .groups
            .iter()
            .map(String::as_str)
            .filter(|g| *g != meridian_core::access::AUTHENTICATED_GROUP)
            .collect();
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "user {:?}{} lacks the permission {access}{what}: no AccessRole bound to it allows that",
                p.name,
                if groups.is_empty() {
                    String::new()
                } else {
                    format!(" (groups {})", groups.join(", "))
                }
            ),
        ))
    }
}
