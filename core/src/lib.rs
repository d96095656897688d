//! Meridian's domain model, free of I/O.
//!
//! Start at [`types::ResourceType`] (what exists), [`decode`] (how user
//! documents become validated [`decode::Document`]s), [`resource::Resource`]
//! (what the store keeps) and [`defaults`] (what a new mesh gets).
//! Policy specs live in [`policy`], one module per type.

pub mod access;
pub mod dataplane;
pub mod decode;
pub mod defaults;
pub mod duration;
pub mod error;
pub mod identity;
pub mod mesh;
pub mod mesh_observability;
pub mod mtls;
pub mod names;
pub mod policy;
pub mod reference;
pub mod resource;
pub mod spec;
pub mod types;
pub mod unapplied;

pub use error::{Cause, Causes, FieldPath, ValidationError};
pub use resource::{Resource, ResourceKey};
pub use types::ResourceType;
