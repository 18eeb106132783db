//! Sign-up, sign-in and sessions: access tokens (short JWTs) and refresh tokens (opaque, single
//! use, rotated; see `store::tokens`).
//!
//! Sign-in never tells whether an account exists: an unknown login and a wrong password give the
//! same 401, and an unknown login still runs one argon2 verification so both take as long.
//! Failed logins back off per account: after `login_failures_before_backoff` failures in a row
//! the account refuses logins (429 `login_backoff`, without looking at the password) for
//! `login_backoff_base`, doubling with each further failure up to `login_backoff_max`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::extract::{ApiJson, AuthUser, Validator};
use super::users::{check_display_name, UserView};
use super::ApiError;
use crate::domain::password;
use crate::state::AppState;
use crate::store::tokens::RefreshOutcome;
use crate::store::users::{NewUser, User};
use crate::store::{now_ms, StoreError};

pub const EMAIL_MAX: usize = 254;
pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// `name@example.com`, at most 254 characters; stored lowercased.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// 3–32 characters of `a-z 0-9 _ . -`.
    #[schema(min_length = 3, max_length = 32, pattern = "^[a-z0-9_.-]+$")]
    pub username: String,
    /// 1–64 characters after trimming.
    #[schema(min_length = 1, max_length = 64)]
    pub display_name: String,
    /// Length per the server's password policy (default 8–128 characters).
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Email or username.
    #[schema(min_length = 1, max_length = 254)]
    pub login: String,
    #[schema(max_length = 128)]
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A signed-in session: what register, login, refresh and password change return.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub user: UserView,
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Opaque, single use: exchange it at `POST /auth/refresh` for a new pair.
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Always `Bearer`.
    pub token_type: String,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/logout-all", post(logout_all))
}

/// Access token for `user` plus the given refresh token.
fn session(state: &AppState, user: &User, refresh_token: String) -> TokenResponse {
    TokenResponse {
        user: UserView::from(user),
        access_token: state.access.issue(&user.id, &user.username),
        refresh_token,
        expires_in: state.access.ttl.as_secs(),
        token_type: "Bearer".to_owned(),
    }
}

/// A new session: a fresh refresh-token family and an access token.
pub(crate) async fn new_session(state: &AppState, user: &User) -> Result<TokenResponse, ApiError> {
    let refresh = state
        .store
        .issue_refresh_token(&user.id, None, state.config.refresh_token_ttl)
        .await?;
    Ok(session(state, user, refresh.token))
}

fn email_problem(email: &str) -> Option<String> {
    if email.chars().count() > EMAIL_MAX {
        return Some(format!("must be at most {EMAIL_MAX} characters"));
    }
    let shape_ok = email.split_once('@').is_some_and(|(local, domain)| {
        let labels: Vec<&str> = domain.split('.').collect();
        !local.is_empty()
            && labels.len() >= 2
            && labels.iter().all(|label| !label.is_empty())
            && labels.last().is_some_and(|tld| tld.chars().count() >= 2)
            && !domain.contains('@')
    }) && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    (!shape_ok).then(|| "must be an email address like name@example.com".to_owned())
}

fn username_problem(username: &str) -> Option<String> {
    let length = username.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&length) {
        return Some(format!(
            "must be {USERNAME_MIN} to {USERNAME_MAX} characters"
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c);
    (!username.chars().all(allowed))
        .then(|| "may contain only lowercase letters a-z, digits, '_', '.' and '-'".to_owned())
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "the login or the password is wrong",
    )
}

/// Delay after the `beyond`-th failure past the threshold (0 = the failure that reached it):
/// `base * 2^beyond`, capped at `max`.
pub(crate) fn backoff_delay(base: Duration, max: Duration, beyond: u32) -> Duration {
    let factor = 2u32.saturating_pow(beyond.min(31));
    base.saturating_mul(factor).min(max)
}

/// 429 `login_backoff` while the account is locked; the password is not looked at.
pub(crate) fn refuse_if_locked(user: &User) -> Result<(), ApiError> {
    let now = now_ms();
    match user.locked_until {
        Some(until) if until > now => {
            let wait_ms = u64::try_from(until - now).unwrap_or(0);
            let mut error = ApiError::too_many_requests(wait_ms.div_ceil(1000));
            error.code = "login_backoff";
            error.message = "too many failed sign-in attempts for this account; retry later".into();
            Err(error)
        }
        _ => Ok(()),
    }
}

/// Counts a failed password check and locks the account once the streak reaches the threshold
/// (a threshold of 0 turns the backoff off).
pub(crate) async fn note_failed_login(state: &AppState, user_id: &str) -> Result<(), ApiError> {
    let failures = state.store.record_failed_login(user_id).await?;
    let threshold = i64::from(state.config.login_failures_before_backoff);
    if threshold > 0 && failures >= threshold {
        let beyond = u32::try_from(failures - threshold).unwrap_or(u32::MAX);
        let delay = backoff_delay(
            state.config.login_backoff_base,
            state.config.login_backoff_max,
            beyond,
        );
        let until = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        state.store.lock_user_until(user_id, until).await?;
        tracing::info!(user = %user_id, failures, delay_ms = delay.as_millis() as u64, "login backoff");
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created and signed in", body = TokenResponse),
        (status = 409, description = "`email_taken` or `username_taken`"),
        (status = 422, description = "Invalid fields, all listed in `details.fields` (`validation_failed`)"),
        (status = 429, description = "Too many auth requests from this address (`rate_limited`, `Retry-After`)"),
    )
)]
async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let email = body.email.trim().to_lowercase();
    let mut validator = Validator::default();
    if let Some(problem) = email_problem(&email) {
        validator.push("email", problem);
    }
    if let Some(problem) = username_problem(&body.username) {
        validator.push("username", problem);
    }
    let display_name = check_display_name(&mut validator, &body.display_name);
    if let Err(problem) = password::check_policy(
        &body.password,
        state.config.password_min_length,
        state.config.password_max_length,
    ) {
        validator.push("password", problem);
    }
    validator.finish()?;

    let hash = password::hash(body.password)
        .await
        .map_err(ApiError::internal)?;
    let inserted = state
        .store
        .insert_user(NewUser {
            email: &email,
            username: &body.username,
            display_name: &display_name,
            password_hash: &hash,
        })
        .await;
    let user = match inserted {
        Ok(user) => user,
        Err(StoreError::Conflict(column)) if column == "email" => {
            return Err(ApiError::conflict(
                "email_taken",
                "an account with this email already exists",
            ))
        }
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::conflict(
                "username_taken",
                "this username is taken",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user = %user.id, "account registered");
    Ok((StatusCode::CREATED, Json(new_session(&state, &user).await?)))
}

#[utoipa::path(
    post, path = "/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 401, description = "Unknown login or wrong password, indistinguishably (`invalid_credentials`)"),
        (status = 422, description = "Missing or empty fields (`validation_failed`)"),
        (status = 429, description = "This account is backing off after failed logins (`login_backoff`), or too many auth requests from this address (`rate_limited`); both with `Retry-After`"),
    )
)]
async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let mut validator = Validator::default();
    validator
        .check(!body.login.trim().is_empty(), "login", "must not be empty")
        .check(!body.password.is_empty(), "password", "must not be empty");
    validator.finish()?;

    let user = match state.store.user_by_login(&body.login).await {
        Ok(user) => user,
        Err(StoreError::NotFound) => {
            // Same work as a wrong password, so timing does not reveal which accounts exist.
            // dummy_hash() computes a hash on first use, so it runs on the blocking pool too.
            let dummy = tokio::task::spawn_blocking(|| password::dummy_hash().to_owned())
                .await
                .map_err(ApiError::internal)?;
            let _ = password::verify(body.password, dummy).await;
            return Err(invalid_credentials());
        }
        Err(e) => return Err(e.into()),
    };
    refuse_if_locked(&user)?;
    if !password::verify(body.password, user.password_hash.clone()).await {
        note_failed_login(&state, &user.id).await?;
        return Err(invalid_credentials());
    }
    if user.failed_logins != 0 || user.locked_until.is_some() {
        state.store.clear_failed_logins(&user.id).await?;
    }
    Ok(Json(new_session(&state, &user).await?))
}

#[utoipa::path(
    post, path = "/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair; the presented refresh token is now used up", body = TokenResponse),
        (status = 401, description = "`invalid_refresh_token` (unknown, expired or revoked) or `refresh_token_reused` (already used: its whole family is now revoked)"),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            "the refresh token is invalid, expired or revoked",
        )
    };
    let outcome = state
        .store
        .rotate_refresh_token(&body.refresh_token, state.config.refresh_token_ttl)
        .await?;
    match outcome {
        RefreshOutcome::Rotated { user_id, next } => match state.store.user(&user_id).await {
            Ok(user) => Ok(Json(session(&state, &user, next))),
            Err(StoreError::NotFound) => Err(invalid()),
            Err(e) => Err(e.into()),
        },
        RefreshOutcome::Reused => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "refresh_token_reused",
            "the refresh token was already used; its session has been signed out",
        )),
        RefreshOutcome::Invalid => Err(invalid()),
    }
}

#[utoipa::path(
    post, path = "/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "The session of this refresh token (its whole family) is signed out; unknown tokens too (idempotent)"),
    )
)]
async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .revoke_refresh_family_of(&body.refresh_token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/auth/logout-all", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every refresh token of the user is revoked (access tokens expire on their own)"),
        (status = 401, description = "No, an invalid or an expired access token (`unauthorized`)"),
    )
)]
async fn logout_all(State(state): State<AppState>, auth: AuthUser) -> Result<StatusCode, ApiError> {
    let revoked = state
        .store
        .revoke_user_refresh_tokens(&auth.user_id)
        .await?;
    tracing::info!(user = %auth.user_id, revoked, "signed out everywhere");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(OpenApi)]
#[openapi(
    paths(register, login, refresh, logout, logout_all),
    components(schemas(RegisterRequest, LoginRequest, RefreshRequest, TokenResponse))
)]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for good in ["a@b.co", "first.last+tag@sub.example.com"] {
            assert!(email_problem(good).is_none(), "{good}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@example",
            "a@example.",
            "a@.com",
            "a@b@c.com",
            "a b@example.com",
            "a@example.c",
        ] {
            assert!(email_problem(bad).is_some(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(EMAIL_MAX));
        assert!(email_problem(&long).is_some());
    }

    #[test]
    fn usernames() {
        for good in ["abc", "ada_l.ovelace-1", &"x".repeat(USERNAME_MAX)] {
            assert!(username_problem(good).is_none(), "{good}");
        }
        for bad in [
            "ab",
            "Alice",
            "al ice",
            "al@ce",
            "élan",
            &"x".repeat(USERNAME_MAX + 1),
        ] {
            assert!(username_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(300);
        assert_eq!(backoff_delay(base, max, 0), Duration::from_secs(1));
        assert_eq!(backoff_delay(base, max, 1), Duration::from_secs(2));
        assert_eq!(backoff_delay(base, max, 3), Duration::from_secs(8));
        assert_eq!(backoff_delay(base, max, 9), max);
        assert_eq!(backoff_delay(base, max, u32::MAX), max);
    }
}
