//! ApiError: every HTTP error the server returns, mapped to status + JSON envelope in one place.
//!
//! Envelope: `{"error": {"code": "session_not_found", "message": "…"}}`. Internal details are
//! logged, never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl From<crate::sfu::SfuError> for ApiError {
    fn from(error: crate::sfu::SfuError) -> Self {
        use crate::sfu::SfuError as E;
        let message = error.to_string();
        match error {
            E::BadOffer(_) => Self::bad_request("bad_sdp", message),
            E::BadFragment(_) => Self::bad_request("bad_ice_fragment", message),
            E::RoomFull { .. } => Self::new(StatusCode::SERVICE_UNAVAILABLE, "room_full", message),
            E::ServerFull { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_full", message)
            }
            E::SessionNotFound => Self::not_found("session_not_found", message),
            E::PublisherNotFound => Self::not_found("publisher_not_found", message),
            E::EtagMismatch => Self::new(StatusCode::PRECONDITION_FAILED, "etag_mismatch", message),
            E::EtagRequired => Self::new(
                StatusCode::PRECONDITION_REQUIRED,
                "if_match_required",
                message,
            ),
            E::ShuttingDown => Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message),
            E::Internal(detail) => Self::internal(detail),
        }
    }
}
