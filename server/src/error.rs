//! The one place where errors become HTTP responses (DESIGN §4 error body:
//! `{"title", "details", "causes": [{"field", "message"}]}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_core::decode::DecodeError;
use meridian_core::{Cause, ValidationError};
use meridian_store::StoreError;
use serde_json::json;

use crate::access::user_tokens::UserTokenError;
use crate::identity::dataplane::DataplaneTokenError;
use crate::identity::ingress::IngressTokenError;
use crate::manager::WriteError;
use crate::tokens::TokenError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub title: String,
    pub details: String,
    pub causes: Vec<Cause>,
}

impl ApiError {
    pub fn new(status: StatusCode, title: &str, details: impl Into<String>) -> Self {
        ApiError {
            status,
            title: title.to_string(),
            details: details.into(),
            causes: Vec::new(),
        }
    }

    pub fn bad_request(details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", details)
    }

    pub fn not_found(details: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found", details)
    }

    pub fn read_only(details: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", details)
    }

    pub fn invalid(err: ValidationError) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            title: "Could not process a resource".into(),
            details: "Resource is not valid".into(),
            causes: err.causes,
        }
    }

    /// An invalid field, reported like a validation failure.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid(ValidationError {
            causes: vec![Cause {
                field: field.to_string(),
                message: message.into(),
            }],
        })
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Syntax(msg) => ApiError::new(StatusCode::BAD_REQUEST, "Could not parse the body", msg),
            DecodeError::Invalid { error, .. } => ApiError::invalid(error),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound(_) => ApiError::not_found(e.to_string()),
            StoreError::AlreadyExists(_) | StoreError::Conflict(..) => {
                ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())
            }
            StoreError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable", e.to_string())
            }
            StoreError::TooLarge(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large", e.to_string()),
            StoreError::Compacted { .. } | StoreError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", e.to_string())
            }
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::MeshNotFound(_) => ApiError::field("mesh", e.to_string()),
            WriteError::NotFound(_) => ApiError::not_found(e.to_string()),
            WriteError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
            WriteError::Store(s) => s.into(),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::InvalidZone(_) => ApiError::field("zone", e.to_string()),
            TokenError::InvalidValidity(_) => ApiError::field("validFor", e.to_string()),
            TokenError::Store(s) => s.into(),
            TokenError::Missing
            | TokenError::Malformed(_)
            | TokenError::BadSignature
            | TokenError::Expired { .. }
            | TokenError::Revoked { .. } => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<DataplaneTokenError> for ApiError {
    fn from(e: DataplaneTokenError) -> Self {
        match e {
            DataplaneTokenError::Invalid { field, .. } => ApiError::field(field, e.to_string()),
            DataplaneTokenError::UnknownMesh(_) => ApiError::field("mesh", e.to_string()),
            DataplaneTokenError::NotFound(_) => ApiError::not_found(e.to_string()),
            DataplaneTokenError::ActiveKey(_) => ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
            DataplaneTokenError::Store(s) => s.into(),
            DataplaneTokenError::Write(w) => w.into(),
            DataplaneTokenError::Jwt(_)
            | DataplaneTokenError::Claims(_)
            | DataplaneTokenError::UnknownKey { .. }
            | DataplaneTokenError::Revoked { .. } => ApiError::bad_request(e.to_string()),
            DataplaneTokenError::Corrupt(_) | DataplaneTokenError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", e.to_string())
            }
        }
    }
}

impl From<IngressTokenError> for ApiError {
    fn from(e: IngressTokenError) -> Self {
        match e {
            IngressTokenError::Invalid { field, .. } => ApiError::field(field, e.to_string()),
            IngressTokenError::Store(s) => s.into(),
            IngressTokenError::Jwt(_) | IngressTokenError::Claims(_) | IngressTokenError::Revoked(_) => {
                ApiError::bad_request(e.to_string())
            }
            IngressTokenError::Key(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", e.to_string())
            }
        }
    }
}

impl From<UserTokenError> for ApiError {
    fn from(e: UserTokenError) -> Self {
        match e {
            UserTokenError::Invalid { field, .. } => ApiError::field(field, e.to_string()),
            UserTokenError::Store(s) => s.into(),
            UserTokenError::Write(w) => w.into(),
            UserTokenError::Jwt(_)
            | UserTokenError::Claims(_)
            | UserTokenError::UnknownKey(_)
            | UserTokenError::Revoked(_) => ApiError::bad_request(e.to_string()),
            UserTokenError::Corrupt(_) | UserTokenError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "title": self.title,
            "details": self.details,
            "causes": self.causes,
        });
        (self.status, Json(body)).into_response()
    }
}
