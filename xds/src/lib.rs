//! Envoy xDS for a zone.
//!
//! - [`resources`]: a generated set of xDS resources per proxy, with versions;
//! - [`generate`]: pure functions from a mesh snapshot and a proxy to its
//!   resources (sidecars, proxyless gRPC clients, zone ingresses);
//! - [`source`]: the boundary between the ADS server and the zone — who a
//!   proxy is, and a watch of its current resources;
//! - [`ads`]: the ADS server (state of the world and delta), which knows
//!   nothing about generation.

pub mod ads;
pub mod client;
pub mod config_dump;
pub mod generate;
pub mod metrics;
pub mod resources;
pub mod snapshot;
pub mod source;
