//! What the API checks before a write that mesh mTLS depends on is stored:
//! a Mesh whose provided backends name secrets that do not hold a usable CA
//! is refused (naming the backend's `conf.cert.secret` or `conf.key.secret`),
//! as is a Secret update that would break a backend using it, and the
//! deletion of a Secret a backend uses. `mtls.skipValidation: true` on the
//! mesh turns the content checks off (Kuma's meaning); the deletion check
//! stays.

use axum::http::StatusCode;
use chrono::Utc;
use meridian_core::decode::Document;
use meridian_core::mesh::Mesh;
use meridian_core::mtls::{backend_conf, BackendConf, Secret};
use meridian_core::{Cause, Causes, FieldPath, ResourceKey, ResourceType, ValidationError};

use super::authority::{provided_root_with, ProvidedError};
use crate::error::ApiError;
use crate::manager::Manager;

/// The provided backends of `mesh`: (index, name, cert secret, key secret).
fn provided_backends(mesh: &Mesh) -> Vec<(usize, String, String, String)> {
    let mut causes = Causes::new();
    mesh.ca_backends()
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match backend_conf(b, &FieldPath::root(), &mut causes)? {
            BackendConf::Provided {
                cert_secret,
                key_secret,
            } => Some((i, b.name.clone(), cert_secret, key_secret)),
            BackendConf::Builtin(_) => None,
        })
        .collect()
}

fn skips_validation(mesh: &Mesh) -> bool {
    mesh.mtls.as_ref().and_then(|m| m.skip_validation).unwrap_or(false)
}

/// Checks `doc` (already decoded and validated) against the store's
/// secrets and meshes.
pub fn check_write(manager: &Manager, doc: &Document) -> Result<(), ApiError> {
    match doc.key.kind {
        ResourceType::Mesh => check_mesh(manager, &doc.key.name, &doc.spec),
        ResourceType::Secret => match &doc.key.mesh {
            Some(mesh) => check_secret(manager, mesh, &doc.key.name, &doc.spec),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn check_mesh(manager: &Manager, name: &str, spec: &serde_json::Value) -> Result<(), ApiError> {
    let Ok(mesh) = serde_json::from_value::<Mesh>(spec.clone()) else {
        return Ok(());
    };
    let mut causes = Vec::new();
    check_switch(manager, name, &mesh, &mut causes);
    if skips_validation(&mesh) {
        return if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(ValidationError { causes }))
        };
    }
    for (i, _, cert, key) in provided_backends(&mesh) {
        if let Err(e) = provided_root_with(manager, name, &cert, &key, None, Utc::now()) {
            let which = if e.is_key() { "key" } else { "cert" };
            causes.push(Cause {
                field: format!("mtls.backends[{i}].conf.{which}.secret"),
                message: e.to_string(),
            });
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(ValidationError { causes }))
    }
}

/// A switch of the enabled backend must keep the backend it switches away
/// from listed: its root stays in every proxy's trust bundle until the
/// operator removes it, once every proxy has a certificate of the new one.
/// Removing both at once would cut the proxies that still hold the old
/// certificates off from the others.
fn check_switch(manager: &Manager, name: &str, mesh: &Mesh, causes: &mut Vec<Cause>) {
    let Some(before) = mesh_of(manager, name) else {
        return;
    };
    let (Some(old), Some(new)) = (before.mtls_enabled(), mesh.mtls_enabled()) else {
        return;
    };
    let old = &old.enabled.name;
    if old != &new.enabled.name && !mesh.ca_backends().iter().any(|b| &b.name == old) {
        causes.push(Cause {
            field: "mtls.backends".into(),
            message: format!(
                "backend {old:?} is enabled now: keep it listed while switching to {:?}, and remove it once every proxy has a certificate of {:?} (until then its root must stay trusted)",
                new.enabled.name, new.enabled.name
            ),
        });
    }
}

fn mesh_of(manager: &Manager, mesh: &str) -> Option<Mesh> {
    manager
        .get(&ResourceKey::global(ResourceType::Mesh, mesh))
        .and_then(|r| serde_json::from_value::<Mesh>(r.spec).ok())
}

fn check_secret(manager: &Manager, mesh_name: &str, name: &str, spec: &serde_json::Value) -> Result<(), ApiError> {
    let Some(mesh) = mesh_of(manager, mesh_name) else {
        return Ok(());
    };
    if skips_validation(&mesh) {
        return Ok(());
    }
    let Some(data) = serde_json::from_value::<Secret>(spec.clone())
        .ok()
        .and_then(|s| s.bytes())
    else {
        return Ok(());
    };
    let mut causes = Vec::new();
    for (_, backend, cert, key) in provided_backends(&mesh) {
        if cert != name && key != name {
            continue;
        }
        if let Err(e) = provided_root_with(manager, mesh_name, &cert, &key, Some((name, &data)), Utc::now()) {
            let detail = match e {
                ProvidedError::Cert { error, .. } | ProvidedError::Key { error, .. } => error.to_string(),
                other => other.to_string(),
            };
            causes.push(Cause {
                field: "data".into(),
                message: format!("mTLS backend {backend:?} of mesh {mesh_name:?} uses this secret: {detail}"),
            });
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(ValidationError { causes }))
    }
}

/// Refuses to delete a Secret an mTLS backend of its mesh uses.
pub fn check_delete(manager: &Manager, key: &ResourceKey) -> Result<(), ApiError> {
    if key.kind != ResourceType::Secret {
        return Ok(());
    }
    let Some(mesh_name) = key.mesh.as_deref() else {
        return Ok(());
    };
    let Some(mesh) = mesh_of(manager, mesh_name) else {
        return Ok(());
    };
    for (_, backend, cert, key_secret) in provided_backends(&mesh) {
        if cert == key.name || key_secret == key.name {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "secret {:?} is used by mTLS backend {backend:?} of mesh {mesh_name:?}: remove it from the backend first",
                    key.name
                ),
            ));
        }
    }
    Ok(())
}
