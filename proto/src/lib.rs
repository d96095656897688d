//! The wires Meridian defines itself: KDS (`kds.proto`; the protocol logic
//! lives in `meridian-server::kds`) and the zone's dataplane service
//! (`dp.proto`, module [`dp`]; served by `meridian-zone`, called by
//! `meridian-dp`). Generated code only.
#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]

pub mod kds {
    tonic::include_proto!("meridian.kds.v1");
}

pub use kds::*;

pub mod dp {
    tonic::include_proto!("meridian.dp.v1");
}

/// The type URL prefix of KDS resources.
pub const TYPE_URL_PREFIX: &str = "meridian.kds/";
