//! The signed-in user's own account: profile, preferences, password.
//!
//! Only `/users/me` exists: no route reads another user's account, so there is nothing to
//! enumerate. Changing the password signs out every other session (all refresh tokens revoked)
//! and hands the caller a fresh pair so it stays signed in.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::auth::{self, TokenResponse};
use super::extract::{ApiJson, AuthUser, Validator};
use super::ApiError;
use crate::domain::password;
use crate::state::AppState;
use crate::store::users::{ProfileUpdate, User};
use crate::store::StoreError;

/// Longest display name, in characters (after trimming).
pub const DISPLAY_NAME_MAX: usize = 64;
/// Longest avatar URL, in bytes.
pub const AVATAR_URL_MAX: usize = 2048;

/// A user account as the API shows it (never the password hash or login counters).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub username: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
    pub preferences: Preferences,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Defaults applied when the user joins a meeting.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Preferences {
    pub default_mic_muted: bool,
    pub default_camera_off: bool,
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.clone(),
            email: user.email.clone(),
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            avatar_url: user.avatar_url.clone(),
            preferences: Preferences {
                default_mic_muted: user.pref_mic_muted,
                default_camera_off: user.pref_camera_off,
            },
            created_at: time(user.created_at),
            updated_at: time(user.updated_at),
        }
    }
}

/// `PATCH /users/me`: every field optional; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    /// 1–64 characters after trimming.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
    /// An http(s) URL of at most 2048 bytes, or `null` to remove the avatar.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable)]
    pub avatar_url: Option<Option<String>>,
    pub preferences: Option<PreferencesPatch>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesPatch {
    pub default_mic_muted: Option<bool>,
    pub default_camera_off: Option<bool>,
}

/// Tells a field sent as `null` (`Some(None)`) from a field not sent (`None`, via `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// Trims, then checks the length; the trimmed name is what gets stored.
pub(crate) fn check_display_name(validator: &mut Validator, raw: &str) -> String {
    let name = raw.trim().to_owned();
    let length = name.chars().count();
    if length == 0 {
        validator.push("display_name", "must not be empty");
    } else if length > DISPLAY_NAME_MAX {
        validator.push(
            "display_name",
            format!("must be at most {DISPLAY_NAME_MAX} characters"),
        );
    } else if name.chars().any(char::is_control) {
        validator.push("display_name", "must not contain control characters");
    }
    name
}

/// An absolute http or https URL with a host, no whitespace, at most 2048 bytes. Deliberately
/// simple: the URL is only ever shown back as an image source, never fetched by the server.
fn avatar_url_problem(url: &str) -> Option<String> {
    if url.len() > AVATAR_URL_MAX {
        return Some(format!("must be at most {AVATAR_URL_MAX} characters"));
    }
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    let host_ok = host.is_some_and(|h| {
        let h = h.rsplit('@').next().unwrap_or(h);
        !h.is_empty() && !h.starts_with(':')
    });
    if !host_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("must be an http or https URL".to_owned());
    }
    None
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users/me", get(get_me).patch(update_me))
        .route("/users/me/password", post(change_password))
}

/// The caller's account; a valid token whose account is gone is 401, like any dead credential.
async fn load_me(state: &AppState, auth: &AuthUser) -> Result<User, ApiError> {
    match state.store.user(&auth.user_id).await {
        Ok(user) => Ok(user),
        Err(StoreError::NotFound) => Err(ApiError::unauthorized("the account no longer exists")),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(
    get, path = "/users/me", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The signed-in user", body = UserView),
        (status = 401, description = "No, an invalid or an expired access token (`unauthorized`)"),
    )
)]
async fn get_me(State(state): State<AppState>, auth: AuthUser) -> Result<Json<UserView>, ApiError> {
    let user = load_me(&state, &auth).await?;
    Ok(Json(UserView::from(&user)))
}

#[utoipa::path(
    patch, path = "/users/me", tag = "users",
    security(("bearer" = [])),
    request_body = UpdateMeRequest,
    responses(
        (status = 200, description = "The updated user", body = UserView),
        (status = 401, description = "No, an invalid or an expired access token (`unauthorized`)"),
        (status = 422, description = "Invalid fields, all listed in `details.fields` (`validation_failed`)"),
    )
)]
async fn update_me(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<UpdateMeRequest>,
) -> Result<Json<UserView>, ApiError> {
    let mut validator = Validator::default();
    let display_name = match body.display_name {
        None => None,
        Some(None) => {
            validator.push("display_name", "must not be null");
            None
        }
        Some(Some(raw)) => Some(check_display_name(&mut validator, &raw)),
    };
    if let Some(Some(url)) = &body.avatar_url {
        if let Some(problem) = avatar_url_problem(url) {
            validator.push("avatar_url", problem);
        }
    }
    validator.finish()?;
    let preferences = body.preferences.unwrap_or(PreferencesPatch {
        default_mic_muted: None,
        default_camera_off: None,
    });
    let update = ProfileUpdate {
        display_name,
        avatar_url: body.avatar_url,
        pref_mic_muted: preferences.default_mic_muted,
        pref_camera_off: preferences.default_camera_off,
    };
    let user = match state
        .store
        .update_user_profile(&auth.user_id, &update)
        .await
    {
        Ok(user) => user,
        Err(StoreError::NotFound) => {
            return Err(ApiError::unauthorized("the account no longer exists"))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Json(UserView::from(&user)))
}

#[utoipa::path(
    post, path = "/users/me/password", tag = "users",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "Password changed; every other session is signed out and this is a fresh token pair", body = TokenResponse),
        (status = 401, description = "No, an invalid or an expired access token (`unauthorized`)"),
        (status = 403, description = "`current_password` is wrong (`wrong_password`); counts as a failed login"),
        (status = 422, description = "`new_password` breaks the length policy (`validation_failed`)"),
        (status = 429, description = "Too many failed attempts on this account (`login_backoff`, `Retry-After`)"),
    )
)]
async fn change_password(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let config = &state.config;
    let mut validator = Validator::default();
    if let Err(problem) = password::check_policy(
        &body.new_password,
        config.password_min_length,
        config.password_max_length,
    ) {
        validator.push("new_password", problem);
    }
    validator.finish()?;

    let user = load_me(&state, &auth).await?;
    // A stolen access token must not become a way to guess the password without limits: the
    // same per-account backoff as login applies.
    auth::refuse_if_locked(&user)?;
    if !password::verify(body.current_password, user.password_hash.clone()).await {
        auth::note_failed_login(&state, &user.id).await?;
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "wrong_password",
            "the current password is wrong",
        ));
    }
    let hash = password::hash(body.new_password)
        .await
        .map_err(ApiError::internal)?;
    state.store.set_password_hash(&user.id, &hash).await?;
    state.store.revoke_user_refresh_tokens(&user.id).await?;
    if user.failed_logins != 0 || user.locked_until.is_some() {
        state.store.clear_failed_logins(&user.id).await?;
    }
    let user = state.store.user(&user.id).await?;
    Ok(Json(auth::new_session(&state, &user).await?))
}

#[derive(OpenApi)]
#[openapi(
    paths(get_me, update_me, change_password),
    components(schemas(
        UserView,
        Preferences,
        UpdateMeRequest,
        PreferencesPatch,
        ChangePasswordRequest
    ))
)]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatar_urls() {
        assert!(avatar_url_problem("https://cdn.example.com/a.png").is_none());
        assert!(avatar_url_problem("HTTP://example.com").is_none());
        assert!(avatar_url_problem("ftp://example.com/a.png").is_some());
        assert!(avatar_url_problem("https://").is_some());
        assert!(avatar_url_problem("https:///path").is_some());
        assert!(avatar_url_problem("javascript:alert(1)").is_some());
        assert!(avatar_url_problem("https://exa mple.com").is_some());
        let long = format!("https://example.com/{}", "a".repeat(AVATAR_URL_MAX));
        assert!(avatar_url_problem(&long).is_some());
    }

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        let mut validator = Validator::default();
        assert_eq!(check_display_name(&mut validator, "  Ada  "), "Ada");
        assert!(validator.finish().is_ok());
        for bad in ["   ", "", &"x".repeat(DISPLAY_NAME_MAX + 1), "a\u{7}b"] {
            let mut validator = Validator::default();
            check_display_name(&mut validator, bad);
            assert!(validator.finish().is_err(), "{bad:?}");
        }
        let mut validator = Validator::default();
        check_display_name(&mut validator, &"é".repeat(DISPLAY_NAME_MAX));
        assert!(
            validator.finish().is_ok(),
            "counted in characters, not bytes"
        );
    }
}
