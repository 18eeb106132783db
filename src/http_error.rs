//! ApiError: every HTTP error the server returns, mapped to status + JSON envelope in one place.
//!
//! Envelope: `{"error": {"code": "session_not_found", "message": "…"}}`. Internal details are
//! logged, never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Structured detail, e.g. the failing fields of a 422.
    pub details: Option<serde_json::Value>,
    /// Seconds, for 429 (`Retry-After`).
    pub retry_after: Option<u64>,
}

/// One invalid field of a request body (422 `details.fields`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 422 listing every invalid field.
    pub fn validation(fields: Vec<FieldError>) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "the request has invalid fields",
        );
        error.details = Some(json!({ "fields": fields }));
        error
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry later",
        );
        error.retry_after = Some(retry_after.max(1));
        error
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
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
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
            E::RoomFull { .. } | E::ViewersFull { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "room_full", message)
            }
            E::ServerFull { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_full", message)
            }
            E::SessionNotFound => Self::not_found("session_not_found", message),
            E::NotSessionOwner => Self::forbidden(message),
            E::TooManySessions { .. } => Self::conflict("too_many_sessions", message),
            E::PublisherNotFound => Self::not_found("publisher_not_found", message),
            E::TrackNotFound => Self::not_found("track_not_found", message),
            E::UnknownEncoding => Self::bad_request("unknown_encoding", message),
            E::StaleGeneration => {
                Self::new(StatusCode::PRECONDITION_FAILED, "etag_mismatch", message)
            }
            E::GenerationRequired => Self::new(
                StatusCode::PRECONDITION_REQUIRED,
                "if_match_required",
                message,
            ),
            E::ShuttingDown => Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message),
            E::Internal(detail) => Self::internal(detail),
        }
    }
}

impl From<crate::domain::admission::MediaAccessError> for ApiError {
    fn from(error: crate::domain::admission::MediaAccessError) -> Self {
        use crate::domain::admission::MediaAccessError as E;
        let message = error.to_string();
        match error {
            E::MeetingEnded => Self::new(StatusCode::GONE, "meeting_ended", message),
            E::Banned => Self::new(StatusCode::FORBIDDEN, "banned", message),
            E::Kicked => Self::new(StatusCode::FORBIDDEN, "kicked", message),
            E::NotAdmitted => Self::new(StatusCode::FORBIDDEN, "not_admitted", message),
            E::SeatGone => Self::new(StatusCode::FORBIDDEN, "seat_gone", message),
            E::Store(e) => e.into(),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        use crate::store::StoreError as E;
        match error {
            E::NotFound => Self::not_found("not_found", "no such resource"),
            E::Conflict(what) => Self::conflict("conflict", format!("already exists ({what})")),
            other => Self::internal(other),
        }
    }
}
