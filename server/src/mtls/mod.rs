//! Mesh mTLS at the control planes (DESIGN §11, docs/decisions/0006):
//! `pki` makes and checks the certificates; `authority` is the global's (or
//! a standalone zone's) certificate authority, which keeps each backend's
//! root and signs the zones' intermediates.

pub mod authority;
pub mod checks;
pub mod pki;
