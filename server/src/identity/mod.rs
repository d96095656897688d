//! Proxy identity (DESIGN §10): the tokens a proxy presents to its zone.
//!
//! - [`jwt`]: compact Ed25519 JWTs, the one token format;
//! - [`dataplane`]: dataplane tokens, issued by the global (or a standalone
//!   zone) per mesh and verified by zones from their replica;
//! - [`ingress`]: zone ingress tokens, issued and verified by the zone.

pub mod dataplane;
pub mod ingress;
pub mod jwt;
