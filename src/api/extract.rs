//! Request extractors with clear errors: `AuthUser` (a valid access token is required),
//! `MaybeAuthUser` (none is fine, a bad one is 401: `Option<AuthUser>` would silently accept a
//! bad token), and `ApiJson` (malformed JSON → 400, wrong shape → 422, both in the envelope).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::http_error::{ApiError, FieldError};
use crate::state::AppState;

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
    pub username: String,
}

#[derive(Debug, Clone)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<AuthUser>, ApiError> {
    let Some(token) = bearer(parts) else {
        return if parts.headers.contains_key(header::AUTHORIZATION) {
            Err(ApiError::unauthorized(
                "the Authorization header must be 'Bearer <access token>'",
            ))
        } else {
            Ok(None)
        };
    };
    let claims = state
        .access
        .verify(token)
        .ok_or_else(|| ApiError::unauthorized("the access token is invalid or expired"))?;
    Ok(Some(AuthUser {
        user_id: claims.sub,
        username: claims.username,
    }))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state)?
            .ok_or_else(|| ApiError::unauthorized("an access token is required"))
    }
}

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state).map(MaybeAuthUser)
    }
}

/// JSON body with the error envelope on rejection.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // Read as a document first: text is checked in one place, whatever type takes it.
        let document = match axum::Json::<serde_json::Value>::from_request(request, state).await {
            Ok(axum::Json(document)) => document,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        let problems = crate::domain::text::json_problems(&document);
        if !problems.is_empty() {
            return Err(ApiError::validation(
                problems
                    .into_iter()
                    .map(|(field, problem)| FieldError::new(&field, problem))
                    .collect(),
            ));
        }
        let bytes = serde_json::to_vec(&document).map_err(ApiError::internal)?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Refuses a request whose path or query, once percent-decoded, carries control characters:
/// such a path names no resource (404), such a query is invalid (422). Nothing of it reaches a
/// handler or the store.
pub async fn refuse_control_characters(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let decoded = |text: &str| {
        percent_decode(text)
            .is_some_and(|t| crate::domain::text::control_problem(&t, false).is_none())
    };
    let uri = request.uri();
    if !decoded(uri.path()) {
        return ApiError::not_found("not_found", "no such resource").into_response();
    }
    if let Some(query) = uri.query() {
        if !decoded(&query.replace('+', " ")) {
            return ApiError::validation(vec![FieldError::new(
                "query",
                "must not contain control characters",
            )])
            .into_response();
        }
    }
    next.run(request).await
}

/// `%XX`-decodes `text`; `None` when the result is not UTF-8 (which names no resource either).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h)? * 16 + hex(l)?) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub(super) fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            // serde's message names the path and the problem, e.g. "title: missing field".
            let text = e.body_text();
            let detail = text
                .rsplit_once(": ")
                .map(|(_, d)| d)
                .unwrap_or(&text)
                .to_owned();
            let field = detail
                .split('`')
                .nth(1)
                .filter(|_| detail.contains("field"))
                .unwrap_or("body")
                .to_owned();
            ApiError::validation(vec![FieldError::new(&field, detail)])
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the size limit",
            )
        }
        other => ApiError::bad_request("bad_json", other.body_text()),
    }
}

/// Collects field errors, then fails with one 422 listing them all.
#[derive(Default)]
pub struct Validator(Vec<FieldError>);

impl Validator {
    pub fn check(&mut self, ok: bool, field: &str, message: &str) -> &mut Self {
        if !ok {
            self.0.push(FieldError::new(field, message));
        }
        self
    }

    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn finish(&mut self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(std::mem::take(&mut self.0)))
        }
    }
}
