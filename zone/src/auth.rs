//! Who may talk to the zone's xDS port (DESIGN §10): every stream and every
//! call of the dataplane service presents a token, checked here.
//!
//! [`ZoneAuth::authenticate`] turns the request metadata
//! (`authorization: Bearer <token>`) into a [`Credential`] or an
//! `UNAUTHENTICATED` status: a dataplane token verified against the mesh
//! keys in the zone's replica, or this zone's own ingress token. What the
//! credential allows is checked once the proxy says who it is:
//! [`ZoneAuth::authorize_dataplane`] and [`ZoneAuth::authorize_ingress`]
//! answer `PERMISSION_DENIED` with the reason.
//!
//! `--dp-auth none` turns all of this off, for development only (the zone
//! logs a warning at start).

use std::sync::Arc;

use meridian_core::dataplane::Dataplane;
use meridian_server::identity::dataplane::{DataplaneTokenError, DataplaneTokenVerifier, VerifiedDataplane};
use meridian_server::identity::ingress::{self, IngressClaims, IngressTokenError, IngressTokens};
use meridian_server::identity::jwt;
use meridian_xds::source::{bearer_token, ProxyId};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// How proxies prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpAuth {
    /// Dataplane tokens (and zone ingress tokens): the default.
    Token,
    /// No check at all: any process that reaches the port is served.
    /// Development only.
    None,
}

/// What a stream's credentials proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `--dp-auth none`: nothing was checked.
    Unchecked,
    /// A dataplane token.
    Dataplane(VerifiedDataplane),
    /// A zone ingress token of this zone.
    Ingress(IngressClaims),
}

impl Credential {
    /// When the credential stops being valid (unix seconds, the tolerated
    /// clock skew included).
    pub fn valid_until(&self) -> Option<i64> {
        let exp = match self {
            Credential::Unchecked => return None,
            Credential::Dataplane(v) => v.claims.exp,
            Credential::Ingress(c) => c.exp,
        };
        Some(exp.saturating_add(jwt::CLOCK_SKEW_SECS))
    }
}

/// Checks the credentials of the zone's proxies.
#[derive(Clone)]
pub struct ZoneAuth {
    mode: DpAuth,
    dataplanes: DataplaneTokenVerifier,
    ingress: Arc<IngressTokens>,
}

const NO_TOKEN: &str = "no dataplane token: a proxy must present its token (authorization: Bearer <token>); \
run it with meridian-dp run --dataplane-token-file FILE, the token from meridianctl generate dataplane-token";

impl ZoneAuth {
    pub fn new(mode: DpAuth, dataplanes: DataplaneTokenVerifier, ingress: Arc<IngressTokens>) -> Self {
        ZoneAuth {
            mode,
            dataplanes,
            ingress,
        }
    }

    pub fn mode(&self) -> DpAuth {
        self.mode
    }

    pub fn dataplanes(&self) -> &DataplaneTokenVerifier {
        &self.dataplanes
    }

    pub fn ingress_tokens(&self) -> &Arc<IngressTokens> {
        &self.ingress
    }

    /// The credential of a stream or call; `UNAUTHENTICATED` with the reason
    /// when it has none that verifies.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Credential, Status> {
        if self.mode == DpAuth::None {
            return Ok(Credential::Unchecked);
        }
        let token = match bearer_token(metadata) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(Status::unauthenticated(NO_TOKEN)),
            Err(e) => return Err(Status::unauthenticated(e)),
        };
        let is_ingress = jwt::parse(token).map(|p| p.kid == ingress::KID).unwrap_or(false);
        if is_ingress {
            self.ingress
                .verify(token)
                .await
                .map(Credential::Ingress)
                .map_err(ingress_status)
        } else {
            self.dataplanes
                .verify(token)
                .map(Credential::Dataplane)
                .map_err(dataplane_status)
        }
    }

    /// Whether `credential` may act as dataplane `id` defined as `dataplane`.
    pub fn authorize_dataplane(
        &self,
        credential: &Credential,
        id: &ProxyId,
        dataplane: &Dataplane,
    ) -> Result<(), Status> {
        match credential {
            Credential::Unchecked => Ok(()),
            Credential::Ingress(_) => Err(Status::permission_denied(format!(
                "a zone ingress token cannot connect dataplane {id}; use a dataplane token of mesh {:?}",
                id.mesh
            ))),
            Credential::Dataplane(v) => {
                if v.claims.mesh != id.mesh {
                    return Err(Status::permission_denied(format!(
                        "the dataplane token is for mesh {:?}, not mesh {:?} of dataplane {id}",
                        v.claims.mesh, id.mesh
                    )));
                }
                v.claims
                    .allows(&id.name, dataplane)
                    .map_err(|why| Status::permission_denied(format!("dataplane {id}: {why}")))
            }
        }
    }

    /// Whether `credential` may name dataplane `id` at all (before its
    /// definition is known: mesh and name only).
    pub fn authorize_name(&self, credential: &Credential, id: &ProxyId) -> Result<(), Status> {
        match credential {
            Credential::Dataplane(v) if v.claims.mesh != id.mesh => Err(Status::permission_denied(format!(
                "the dataplane token is for mesh {:?}, not mesh {:?} of dataplane {id}",
                v.claims.mesh, id.mesh
            ))),
            Credential::Dataplane(v) => match &v.claims.name {
                Some(n) if n != &id.name => Err(Status::permission_denied(format!(
                    "dataplane {id}: the token is for dataplane {n:?}, not {:?}",
                    id.name
                ))),
                _ => Ok(()),
            },
            Credential::Ingress(_) => Err(Status::permission_denied(format!(
                "a zone ingress token cannot act for dataplane {id}"
            ))),
            Credential::Unchecked => Ok(()),
        }
    }

    /// Whether `credential` may connect the proxy of this zone's ingress `name`.
    pub fn authorize_ingress(&self, credential: &Credential, name: &str) -> Result<(), Status> {
        match credential {
            Credential::Unchecked => Ok(()),
            Credential::Dataplane(_) => Err(Status::permission_denied(format!(
                "a dataplane token cannot connect zone ingress {name:?}; use a zone ingress token (meridianctl generate zone-ingress-token against this zone's API)"
            ))),
            Credential::Ingress(c) => match &c.name {
                Some(only) if only != name => Err(Status::permission_denied(format!(
                    "the zone ingress token is for ingress {only:?}, not {name:?}"
                ))),
                _ => Ok(()),
            },
        }
    }

    /// Why a credential accepted earlier no longer is (revoked, its key
    /// retired or its mesh gone), if so. Ingress revocations are pushed by
    /// [`IngressTokens::subscribe`] instead.
    pub fn recheck(&self, credential: &Credential) -> Result<(), Status> {
        match credential {
            Credential::Dataplane(v) => self.dataplanes.still_valid(v).map_err(dataplane_status),
            Credential::Unchecked | Credential::Ingress(_) => Ok(()),
        }
    }
}

/// The status of a dataplane token refusal: the proxy's fault is
/// `UNAUTHENTICATED`, the zone's is `UNAVAILABLE` or `INTERNAL`.
pub fn dataplane_status(e: DataplaneTokenError) -> Status {
    if e.is_unauthenticated() {
        Status::unauthenticated(e.to_string())
    } else if matches!(e, DataplaneTokenError::Store(_) | DataplaneTokenError::Write(_)) {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

fn ingress_status(e: IngressTokenError) -> Status {
    if e.is_unauthenticated() {
        Status::unauthenticated(e.to_string())
    } else if matches!(e, IngressTokenError::Store(_)) {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}
