//! Mesh defaults (DESIGN §6): the `default` mesh on first start and the
//! initial policies of every new mesh.
//!
//! Only the leader does this work. Each step leaves a system record behind so
//! that it happens once: the `default` mesh is not re-created after a user
//! deletes it, and a mesh's initial policies are not re-created after a user
//! deletes them. A mesh's marker is mesh-scoped, so it goes away with the
//! mesh: re-creating a deleted mesh gives it fresh defaults.

use std::sync::Arc;

use meridian_core::access::{AccessRole, AccessRoleBinding, DEFAULT_ADMIN_BINDING, DEFAULT_ADMIN_ROLE};
use meridian_core::decode::{Document, DEFAULT_MESH};
use meridian_core::defaults::initial_policies;
use meridian_core::mesh::Mesh;
use meridian_core::{ResourceKey, ResourceType};
use meridian_store::{Event, Filter};
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::manager::{Manager, WriteError};

const DEFAULT_MESH_MARKER: &str = "defaults/default-mesh-created";
const INITIAL_POLICIES_MARKER: &str = "defaults/initial-policies-created";
const ADMIN_ACCESS_MARKER: &str = "defaults/admin-access-created";

#[derive(Clone, Debug)]
pub struct DefaultsConfig {
    /// Create the `default` mesh on first start.
    pub create_default_mesh: bool,
}

/// Runs the defaults work while this replica leads. `done` turns true after
/// the first complete pass (or at once on a replica that does not lead).
pub async fn run(
    manager: Arc<Manager>,
    config: DefaultsConfig,
    mut leader: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    loop {
        if !*leader.borrow_and_update() {
            // A follower has no one-time work of its own.
            let _ = done.send(true);
            if leader.changed().await.is_err() {
                return;
            }
            continue;
        }
        tracing::info!("leading: ensuring mesh defaults");
        let mut events = manager.cache().subscribe();
        let mut retry = std::time::Duration::from_millis(100);
        // First pass, retried until the store answers.
        loop {
            match full_pass(&manager, &config).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh defaults pass failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = leader.changed() => break,
                    }
                    retry = (retry * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
        let _ = done.send(true);
        // Then react to new meshes until leadership ends.
        loop {
            tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() { return; }
                    if !*leader.borrow() { tracing::info!("no longer leading"); break; }
                }
                ev = events.recv() => match ev {
                    Ok(Event::Put(r)) if r.key.kind == ResourceType::Mesh => {
                        if let Err(e) = ensure_mesh_policies(&manager, &r.key.name).await {
                            tracing::warn!(mesh = %r.key.name, error = %e, "creating initial policies failed");
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(e) = full_pass(&manager, &config).await {
                            tracing::warn!(error = %e, "mesh defaults pass failed");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

async fn full_pass(manager: &Manager, config: &DefaultsConfig) -> Result<(), WriteError> {
    ensure_admin_access(manager).await?;
    if config.create_default_mesh {
        ensure_default_mesh(manager).await?;
    }
    for mesh in manager.list(&Filter::kind(ResourceType::Mesh)) {
        ensure_mesh_policies(manager, &mesh.key.name).await?;
    }
    Ok(())
}

async fn ensure_default_mesh(manager: &Manager) -> Result<(), WriteError> {
    let store = manager.store();
    if store.get_system(None, DEFAULT_MESH_MARKER).await?.is_some() {
        return Ok(());
    }
    let doc = Document {
        key: ResourceKey::global(ResourceType::Mesh, DEFAULT_MESH),
        labels: Default::default(),
        spec: json!({}),
    };
    if manager.create_if_absent(doc).await? {
        tracing::info!("created mesh \"default\"");
    }
    store.put_system(None, DEFAULT_MESH_MARKER, b"1".to_vec()).await?;
    Ok(())
}

/// Creates the `admin` AccessRole (everything) and the `admin` binding of
/// the admin group to it, once: an operator may change them later (within
/// what the lockout check allows).
async fn ensure_admin_access(manager: &Manager) -> Result<(), WriteError> {
    let store = manager.store();
    if store.get_system(None, ADMIN_ACCESS_MARKER).await?.is_some() {
        return Ok(());
    }
    let encode = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| WriteError::Store(meridian_store::StoreError::Internal(e.to_string())))
    };
    let role = Document {
        key: ResourceKey::global(ResourceType::AccessRole, DEFAULT_ADMIN_ROLE),
        labels: Default::default(),
        spec: encode(serde_json::to_value(AccessRole::admin()))?,
    };
    let binding = Document {
        key: ResourceKey::global(ResourceType::AccessRoleBinding, DEFAULT_ADMIN_BINDING),
        labels: Default::default(),
        spec: encode(serde_json::to_value(AccessRoleBinding::admin()))?,
    };
    if manager.create_if_absent(role).await? | manager.create_if_absent(binding).await? {
        tracing::info!("created the admin AccessRole and AccessRoleBinding");
    }
    store.put_system(None, ADMIN_ACCESS_MARKER, b"1".to_vec()).await?;
    Ok(())
}

/// Creates the initial policies of `mesh` unless that was done before.
async fn ensure_mesh_policies(manager: &Manager, mesh: &str) -> Result<(), WriteError> {
    let store = manager.store();
    if store.get_system(Some(mesh), INITIAL_POLICIES_MARKER).await?.is_some() {
        return Ok(());
    }
    // Read the mesh from the store, not the cache: it may have just been created.
    let Some(mesh_res) = store.get(&ResourceKey::global(ResourceType::Mesh, mesh)).await? else {
        return Ok(());
    };
    let spec: Mesh = match serde_json::from_value(mesh_res.spec.clone()) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(mesh, error = %e, "stored mesh does not decode; skipping its defaults");
            return Ok(());
        }
    };
    let mut created = 0;
    for doc in initial_policies(mesh, &spec) {
        if manager.create_if_absent(doc).await? {
            created += 1;
        }
    }
    store
        .put_system(Some(mesh), INITIAL_POLICIES_MARKER, b"1".to_vec())
        .await?;
    tracing::info!(mesh, created, "initial policies ensured");
    Ok(())
}
