//! The HTTP endpoints of proxy identity (DESIGN §10):
//!
//! - `POST /tokens/dataplane {"mesh", "name"?, "tags"?, "validFor"?}` → a
//!   dataplane token (text); the global and standalone zones;
//! - `POST /tokens/dataplane/revoke {"mesh", "id"}`;
//! - `POST /tokens/dataplane/rotate {"mesh"}` → `{"mesh", "key"}`, the new
//!   signing key; `DELETE /meshes/{mesh}/dataplane-token-keys/{name}`
//!   retires an older one (routed here from the generic delete);
//! - `POST /tokens/zone-ingress {"name"?, "validFor"?}` and
//!   `POST /tokens/zone-ingress/revoke {"id"}`: zones only;
//! - `GET /xds-ca`: the CA (PEM) proxies verify the zone's xDS server with.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_core::access::{Access, Principal, Target};
use meridian_core::ResourceType;
use serde_json::{json, Value};

use crate::api::{audited, json_object, string_field, ApiState, Mode};
use crate::error::ApiError;
use crate::identity::dataplane::{DataplaneTokenIssuer, IssueRequest};
use crate::identity::ingress::IngressTokens;

type St = State<Arc<ApiState>>;
type ApiResult = Result<Response, ApiError>;

/// Validity of a dataplane or ingress token when the request names none.
const DEFAULT_VALIDITY: &str = "24h";

/// What only a zone offers through the API.
#[derive(Debug)]
pub struct ZoneServices {
    /// Issues and verifies the zone's ingress tokens.
    pub ingress_tokens: Arc<IngressTokens>,
    /// The CA certificate (PEM) of the zone's xDS server.
    pub xds_ca_pem: String,
}

fn issuer(s: &ApiState) -> Result<&DataplaneTokenIssuer, ApiError> {
    s.dataplane_tokens.as_deref().ok_or_else(|| match &s.mode {
        Mode::Zone { .. } => ApiError::read_only(
            "dataplane tokens are issued by the global control plane: ask it (meridianctl generate dataplane-token against the global's API)",
        ),
        _ => ApiError::not_found("dataplane tokens are not issued here"),
    })
}

fn zone_services(s: &ApiState) -> Result<&ZoneServices, ApiError> {
    s.zone
        .as_deref()
        .ok_or_else(|| ApiError::not_found("zone ingress tokens and the xDS CA are served by zone control planes"))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn valid_for(obj: &serde_json::Map<String, Value>) -> Result<std::time::Duration, ApiError> {
    let v = string_field(obj, "validFor")?.unwrap_or(DEFAULT_VALIDITY);
    meridian_core::duration::Duration::parse(v)
        .map(|d| d.as_std())
        .map_err(|e| ApiError::field("validFor", e))
}

fn required<'a>(obj: &'a serde_json::Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    string_field(obj, field)?.ok_or_else(|| ApiError::field(field, "must be set"))
}

/// `tags`: an object of tag name → list of allowed values (a single string
/// is taken as a list of one).
fn tags(obj: &serde_json::Map<String, Value>) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(v) = obj.get("tags").filter(|v| !v.is_null()) else {
        return Ok(out);
    };
    let Value::Object(map) = v else {
        return Err(ApiError::field(
            "tags",
            "must be an object of tag name to a list of values",
        ));
    };
    for (k, v) in map {
        let field = format!("tags[{k:?}]");
        let values = match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::field(&field, "must be a list of strings"))?,
            _ => return Err(ApiError::field(&field, "must be a string or a list of strings")),
        };
        out.insert(k.clone(), values);
    }
    Ok(out)
}

/// What a token request names, for the audit log.
#[derive(Default)]
struct Named {
    mesh: Option<String>,
    name: Option<String>,
}

impl Named {
    fn target(&self, kind: Option<ResourceType>) -> Target<'_> {
        Target {
            kind,
            mesh: self.mesh.as_deref(),
            name: self.name.as_deref(),
        }
    }
}

type Caller = Extension<Principal>;

/// `POST /tokens/dataplane`: `GENERATE_DATAPLANE_TOKEN` in the mesh.
pub async fn issue_dataplane_token(
    State(s): St,
    Extension(caller): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut named = Named::default();
    let result = async {
        let obj = json_object(body, &["mesh", "name", "tags", "validFor"])?;
        let req = IssueRequest {
            mesh: required(&obj, "mesh")?.to_string(),
            name: string_field(&obj, "name")?.map(str::to_string),
            tags: tags(&obj)?,
            valid_for: valid_for(&obj)?,
        };
        named.mesh = Some(req.mesh.clone());
        named.name = req.name.clone();
        s.access
            .authorize(&caller, Access::GenerateDataplaneToken, &Target::token(Some(&req.mesh)))?;
        let token = issuer(&s)?.issue(&req).await?;
        tracing::info!(mesh = %req.mesh, name = ?req.name, tags = ?req.tags, "issued a dataplane token");
        Ok(text(token))
    }
    .await;
    audited(&s, &caller, "GENERATE_DATAPLANE_TOKEN", named.target(None), result).await
}

/// `POST /tokens/dataplane/revoke`: `GENERATE_DATAPLANE_TOKEN` in the mesh.
pub async fn revoke_dataplane_token(
    State(s): St,
    Extension(caller): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut named = Named::default();
    let result = async {
        let obj = json_object(body, &["mesh", "id"])?;
        let mesh = required(&obj, "mesh")?;
        let id = required(&obj, "id")?;
        named.mesh = Some(mesh.to_string());
        named.name = Some(id.to_string());
        s.access
            .authorize(&caller, Access::GenerateDataplaneToken, &Target::token(Some(mesh)))?;
        issuer(&s)?.revoke(mesh, id).await?;
        Ok(Json(json!({})).into_response())
    }
    .await;
    audited(&s, &caller, "REVOKE_DATAPLANE_TOKEN", named.target(None), result).await
}

/// `POST /tokens/dataplane/rotate`: `CREATE` of a `DataplaneTokenKey` in the mesh.
pub async fn rotate_dataplane_key(
    State(s): St,
    Extension(caller): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut named = Named::default();
    let result = async {
        let obj = json_object(body, &["mesh"])?;
        let mesh = required(&obj, "mesh")?;
        named.mesh = Some(mesh.to_string());
        s.access.authorize(
            &caller,
            Access::Create,
            &Target {
                kind: Some(ResourceType::DataplaneTokenKey),
                mesh: Some(mesh),
                name: None,
            },
        )?;
        let key = issuer(&s)?.rotate(mesh).await?;
        named.name = Some(key.clone());
        Ok(Json(json!({"mesh": mesh, "key": key})).into_response())
    }
    .await;
    audited(
        &s,
        &caller,
        "ROTATE_DATAPLANE_TOKEN_KEY",
        named.target(Some(ResourceType::DataplaneTokenKey)),
        result,
    )
    .await
}

/// `DELETE /meshes/{mesh}/dataplane-token-keys/{name}`.
pub async fn retire_dataplane_key(s: &ApiState, mesh: &str, name: &str) -> ApiResult {
    issuer(s)?.retire(mesh, name).await?;
    Ok(Json(json!({})).into_response())
}

/// `POST /tokens/zone-ingress`: `GENERATE_ZONE_TOKEN`.
pub async fn issue_ingress_token(
    State(s): St,
    Extension(caller): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut named = Named::default();
    let result = async {
        s.access
            .authorize(&caller, Access::GenerateZoneToken, &Target::token(None))?;
        let zone = zone_services(&s)?;
        let obj = json_object(body, &["name", "validFor"])?;
        let name = string_field(&obj, "name")?;
        named.name = name.map(str::to_string);
        let token = zone.ingress_tokens.issue(name, valid_for(&obj)?).await?;
        tracing::info!(?name, "issued a zone ingress token");
        Ok(text(token))
    }
    .await;
    audited(
        &s,
        &caller,
        "GENERATE_ZONE_INGRESS_TOKEN",
        named.target(Some(ResourceType::ZoneIngress)),
        result,
    )
    .await
}

/// `POST /tokens/zone-ingress/revoke`: `GENERATE_ZONE_TOKEN`.
pub async fn revoke_ingress_token(
    State(s): St,
    Extension(caller): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut named = Named::default();
    let result = async {
        s.access
            .authorize(&caller, Access::GenerateZoneToken, &Target::token(None))?;
        let zone = zone_services(&s)?;
        let obj = json_object(body, &["id"])?;
        let id = required(&obj, "id")?;
        named.name = Some(id.to_string());
        zone.ingress_tokens.revoke(id).await?;
        Ok(Json(json!({})).into_response())
    }
    .await;
    audited(&s, &caller, "REVOKE_ZONE_INGRESS_TOKEN", named.target(None), result).await
}

/// `GET /xds-ca`.
pub async fn xds_ca(State(s): St) -> ApiResult {
    Ok(text(zone_services(&s)?.xds_ca_pem.clone()))
}
