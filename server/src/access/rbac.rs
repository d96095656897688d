//! The roles and bindings of the replica, compiled ([`meridian_core::access::Rbac`])
//! and rebuilt only when one of them changed, and the checks that keep
//! them coherent on writes: a binding names roles that exist, a role in use
//! is not deleted, and no change locks every admin out.

use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;
use meridian_core::access::{AccessRole, AccessRoleBinding, Rbac, ADMIN_GROUP};
use meridian_core::decode::Document;
use meridian_core::{Resource, ResourceKey, ResourceType};
use meridian_store::Filter;

use crate::error::ApiError;
use crate::manager::Manager;

/// The compiled roles of the replica, as of the last change seen.
pub struct RbacCache {
    manager: Arc<Manager>,
    compiled: Mutex<(u64, u64, Arc<Rbac>)>,
}

impl std::fmt::Debug for RbacCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbacCache").finish_non_exhaustive()
    }
}

fn decode_roles(items: &[Resource]) -> Vec<(String, AccessRole)> {
    items
        .iter()
        .filter_map(|r| match serde_json::from_value::<AccessRole>(r.spec.clone()) {
            Ok(role) => Some((r.key.name.clone(), role)),
            Err(e) => {
                // Fail closed: a role that does not decode grants nothing.
                tracing::warn!(role = %r.key.name, error = %e, "stored AccessRole does not decode; it grants nothing");
                None
            }
        })
        .collect()
}

fn decode_bindings(items: &[Resource]) -> Vec<(String, AccessRoleBinding)> {
    items
        .iter()
        .filter_map(|r| match serde_json::from_value::<AccessRoleBinding>(r.spec.clone()) {
            Ok(b) => Some((r.key.name.clone(), b)),
            Err(e) => {
                tracing::warn!(binding = %r.key.name, error = %e, "stored AccessRoleBinding does not decode; it grants nothing");
                None
            }
        })
        .collect()
}

fn build(roles: &[(String, AccessRole)], bindings: &[(String, AccessRoleBinding)]) -> Rbac {
    Rbac::build(
        roles.iter().map(|(n, r)| (n.as_str(), r)),
        bindings.iter().map(|(_, b)| b),
    )
}

impl RbacCache {
    pub fn new(manager: Arc<Manager>) -> Self {
        RbacCache {
            manager,
            compiled: Mutex::new((u64::MAX, u64::MAX, Arc::new(Rbac::default()))),
        }
    }

    /// The rules as of now: rebuilt when the cache's roles or bindings
    /// changed since the last call, else shared.
    pub fn current(&self) -> Arc<Rbac> {
        let cache = self.manager.cache();
        let generations = (
            cache.kind_generation(ResourceType::AccessRole),
            cache.kind_generation(ResourceType::AccessRoleBinding),
        );
        let mut compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        if (compiled.0, compiled.1) == generations {
            return compiled.2.clone();
        }
        let roles = decode_roles(&self.manager.list(&Filter::kind(ResourceType::AccessRole)));
        let bindings = decode_bindings(&self.manager.list(&Filter::kind(ResourceType::AccessRoleBinding)));
        let rbac = Arc::new(build(&roles, &bindings));
        *compiled = (generations.0, generations.1, rbac.clone());
        rbac
    }
}

fn lockout() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "this change would lock every admin out: no AccessRoleBinding would give group {ADMIN_GROUP:?} a role allowing every permission on every type in every mesh; keep the admin role and binding (or another binding of that group to an unrestricted role)"
        ),
    )
}

/// Checks a PUT of an AccessRole or AccessRoleBinding against the others.
pub fn check_write(manager: &Manager, doc: &Document) -> Result<(), ApiError> {
    if !matches!(doc.key.kind, ResourceType::AccessRole | ResourceType::AccessRoleBinding) {
        return Ok(());
    }
    let mut roles = decode_roles(&manager.list(&Filter::kind(ResourceType::AccessRole)));
    let mut bindings = decode_bindings(&manager.list(&Filter::kind(ResourceType::AccessRoleBinding)));
    let invalid = |e: serde_json::Error| ApiError::bad_request(format!("{}: {e}", doc.key));
    match doc.key.kind {
        ResourceType::AccessRole => {
            let role: AccessRole = serde_json::from_value(doc.spec.clone()).map_err(invalid)?;
            roles.retain(|(n, _)| n != &doc.key.name);
            roles.push((doc.key.name.clone(), role));
        }
        _ => {
            let binding: AccessRoleBinding = serde_json::from_value(doc.spec.clone()).map_err(invalid)?;
            for (i, role) in binding.roles.iter().enumerate() {
                if !roles.iter().any(|(n, _)| n == role) {
                    return Err(ApiError::field(
                        &format!("roles[{i}]"),
                        format!("AccessRole {role:?} does not exist; create it first"),
                    ));
                }
            }
            bindings.retain(|(n, _)| n != &doc.key.name);
            bindings.push((doc.key.name.clone(), binding));
        }
    }
    if !build(&roles, &bindings).admins_keep_full_access() {
        return Err(lockout());
    }
    Ok(())
}

/// Checks a DELETE of an AccessRole (not while a binding names it) or an
/// AccessRoleBinding (not the last one keeping admins in).
pub fn check_delete(manager: &Manager, key: &ResourceKey) -> Result<(), ApiError> {
    if !matches!(key.kind, ResourceType::AccessRole | ResourceType::AccessRoleBinding) {
        return Ok(());
    }
    let mut roles = decode_roles(&manager.list(&Filter::kind(ResourceType::AccessRole)));
    let mut bindings = decode_bindings(&manager.list(&Filter::kind(ResourceType::AccessRoleBinding)));
    if key.kind == ResourceType::AccessRole {
        let users: Vec<&str> = bindings
            .iter()
            .filter(|(_, b)| b.roles.iter().any(|r| r == &key.name))
            .map(|(n, _)| n.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "AccessRole {:?} is used by AccessRoleBinding {}; change or delete those first",
                    key.name,
                    users.join(", ")
                ),
            ));
        }
        roles.retain(|(n, _)| n != &key.name);
    } else {
        bindings.retain(|(n, _)| n != &key.name);
    }
    if !build(&roles, &bindings).admins_keep_full_access() {
        return Err(lockout());
    }
    Ok(())
}
