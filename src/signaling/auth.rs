//! Join-token checks for media sessions: 401 when the token is missing or bad, 403 when it is
//! good but for another room or without the needed grant.

use axum::http::{header, HeaderMap};

use crate::domain::token::{JoinClaims, TokenError, TokenKeys};
use crate::http_error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Publish,
    Subscribe,
    /// Managing an existing session (PATCH, DELETE): a token for the room, expired or not; the
    /// engine then checks that its identity owns the session.
    Session,
}

pub fn authorize(
    keys: &TokenKeys,
    headers: &HeaderMap,
    room: &str,
    need: Need,
) -> Result<JoinClaims, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("an Authorization: Bearer <join token> header is required")
    })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be 'Bearer <join token>'")
        })?;
    let verified = if need == Need::Session {
        keys.verify_ignoring_expiry(token)
    } else {
        keys.verify(token)
    };
    let claims = verified.map_err(|e| match e {
        TokenError::Expired => ApiError::unauthorized("the join token has expired"),
        TokenError::NotYetValid => ApiError::unauthorized("the join token is not valid yet"),
        TokenError::Invalid => ApiError::unauthorized("the join token is invalid"),
    })?;
    if claims.room != room {
        return Err(ApiError::forbidden(format!(
            "the join token is for room '{}', not '{room}'",
            claims.room
        )));
    }
    match need {
        Need::Publish if !claims.grants.publish => {
            Err(ApiError::forbidden("the join token does not grant publish"))
        }
        Need::Subscribe if !claims.grants.subscribe => Err(ApiError::forbidden(
            "the join token does not grant subscribe",
        )),
        _ => Ok(claims),
    }
}
