//! The KDS wire (`kds.proto`): messages and the tonic client and server.
//! Generated code only; the protocol logic lives in `meridian-server::kds`.
#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]

pub mod kds {
    tonic::include_proto!("meridian.kds.v1");
}

pub use kds::*;

/// The type URL prefix of KDS resources.
pub const TYPE_URL_PREFIX: &str = "meridian.kds/";
