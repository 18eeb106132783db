//! Meetings over REST: create, list, read, edit, start/end/cancel, invites, invite links, and
//! joining. Thin handlers: visibility and the join decision live in `domain::meetings`, SQL in
//! `store::meetings` / `store::participants`.
//!
//! Visibility: the host and invitees always see a meeting, anyone sees a public one; everyone
//! else gets 404 `meeting_not_found` (no existence leak). Acting on a visible meeting without
//! being its host is 403 `forbidden`.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::extract::{ApiJson, AuthUser, MaybeAuthUser, Validator};
use super::ApiError;
use crate::domain::meetings::{self as rules, Access, JoinError, JoinOutcome, Status};
use crate::domain::roles::Role;
use crate::http_error::FieldError;
use crate::state::AppState;
use crate::store::meetings::{JoinLink, Meeting, MeetingFilter, MeetingSettings};
use crate::store::users::User;
use crate::store::{new_id, now_ms, StoreError};

// ---------------------------------------------------------------------------------------------
// Request and response bodies

/// Meeting settings in a request; every field is optional (create: defaults, patch: unchanged).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsInput {
    /// Default true.
    pub allow_guests: Option<bool>,
    /// Default false.
    pub waiting_room: Option<bool>,
    /// Default false.
    pub mute_on_join: Option<bool>,
    /// Default true.
    pub video_on_join: Option<bool>,
    /// Default true.
    pub chat: Option<bool>,
    /// Default true.
    pub screen_share: Option<bool>,
    /// Default false.
    pub recording: Option<bool>,
    /// 1 to the server's `max_participants` (also the default).
    #[schema(minimum = 1)]
    pub max_participants: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMeeting {
    /// 1–200 characters.
    #[schema(required = true, min_length = 1, max_length = 200)]
    pub title: Option<String>,
    /// Up to 5000 characters.
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    /// RFC 3339; not more than a minute in the past.
    #[schema(format = DateTime)]
    pub scheduled_at: Option<String>,
    /// 1–1440.
    #[schema(minimum = 1, maximum = 1440)]
    pub duration_minutes: Option<i64>,
    /// `public` (default), `private` or `invite_only`.
    #[schema(pattern = "^(public|private|invite_only)$")]
    pub access: Option<String>,
    /// 4–32 characters.
    #[schema(min_length = 4, max_length = 32)]
    pub passcode: Option<String>,
    pub settings: Option<SettingsInput>,
}

/// Reads a present field as `Some(value)`, null included (`Some(None)`); absent stays `None`
/// through `#[serde(default)]`. Lets a PATCH tell "clear it" from "leave it".
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Fields to change; absent ones stay. `null` clears description, scheduled_at,
/// duration_minutes and passcode.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMeeting {
    #[schema(min_length = 1, max_length = 200)]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 5000)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1440)]
    pub duration_minutes: Option<Option<i64>>,
    #[schema(pattern = "^(public|private|invite_only)$")]
    pub access: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, min_length = 4, max_length = 32)]
    pub passcode: Option<Option<String>>,
    pub settings: Option<SettingsInput>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    pub allow_guests: bool,
    pub waiting_room: bool,
    pub mute_on_join: bool,
    pub video_on_join: bool,
    pub chat: bool,
    pub screen_share: bool,
    pub recording: bool,
    pub max_participants: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    pub id: String,
    pub display_name: String,
}

/// A meeting as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeetingView {
    pub id: String,
    /// `abc-defg-hij`.
    pub code: String,
    pub title: String,
    pub description: String,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub duration_minutes: Option<i64>,
    /// `public`, `private` or `invite_only`.
    pub access: String,
    pub has_passcode: bool,
    /// Only shown to the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passcode: Option<String>,
    pub settings: SettingsView,
    /// `scheduled`, `live`, `ended` or `cancelled`.
    pub status: String,
    pub host: HostView,
    /// `{public_url}/m/{code}` (relative when the server has no public URL).
    pub join_url: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeetingList {
    pub items: Vec<MeetingView>,
    /// Matching meetings over all pages.
    pub total: i64,
    pub page: i64,
    pub limit: i64,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// Registered users to invite (each must exist).
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// Addresses to invite; whoever signs in with one of them is invited.
    #[serde(default)]
    pub emails: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InviteResult {
    /// Invites added (ones already present are not counted).
    pub invited: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinLinkRequest {
    /// `participant`, `moderator` or `guest`, below the creator's own role.
    #[schema(required = true, pattern = "^(participant|moderator|guest)$")]
    pub role: Option<String>,
    /// Joins the link admits: 1–1000, default 1.
    #[schema(minimum = 1, maximum = 1000)]
    pub uses: Option<i64>,
    /// Lifetime in seconds: default 86400, at most 30 days.
    #[schema(minimum = 1, maximum = 2592000)]
    pub ttl: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JoinLinkView {
    /// Shown once; only its hash is stored.
    pub token: String,
    /// `{public_url}/m/{code}?invite=<token>`.
    pub url: String,
    pub role: String,
    pub uses: i64,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct JoinBody {
    #[schema(max_length = 32)]
    pub passcode: Option<String>,
    /// Required for guests (1–64 characters); defaults to the account's name otherwise.
    #[schema(min_length = 1, max_length = 64)]
    pub display_name: Option<String>,
    /// The `invite` token of an invite link.
    pub invite_token: Option<String>,
    /// The `wait_token` of an earlier 202: learn whether a moderator admitted you.
    pub wait_token: Option<String>,
}

/// A STUN/TURN server for the client's peer connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct IceServerView {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl From<crate::config::IceServer> for IceServerView {
    fn from(server: crate::config::IceServer) -> Self {
        Self {
            urls: server.urls,
            username: server.username,
            credential: server.credential,
        }
    }
}

/// Admitted: the join token opens the WebSocket and the WHIP/WHEP resources of the room.
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinResponse {
    pub join_token: String,
    pub role: Role,
    pub participant_id: String,
    pub meeting_id: String,
    /// The media room (the meeting id).
    pub room: String,
    /// The media identity: the user id, or `guest-<participant id>`.
    pub identity: String,
    pub display_name: String,
    pub mic_muted: bool,
    pub camera_off: bool,
    /// Where to open the signaling socket: `/ws` on a single node; in a cluster, the absolute
    /// URL of the node serving the meeting.
    pub ws_url: String,
    /// The room's WHIP and WHEP endpoints, absolute in a cluster (as `ws_url`).
    pub whip_url: String,
    pub whep_url: String,
    pub ice_servers: Vec<IceServerView>,
}

/// Parked in the waiting room until a moderator admits the participant.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitingResponse {
    /// Always `waiting`.
    pub status: String,
    pub participant_id: String,
    pub meeting_id: String,
    /// POST it back to this join endpoint (`{"wait_token": …}`) to learn the decision: 202 while
    /// waiting, 200 with the join token once admitted, 403 `denied` if refused.
    pub wait_token: String,
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn meeting_not_found() -> ApiError {
    ApiError::not_found("meeting_not_found", "no such meeting")
}

fn meeting_closed() -> ApiError {
    ApiError::conflict("meeting_closed", "the meeting has ended or was cancelled")
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn view(
    state: &AppState,
    meeting: Meeting,
    host_name: String,
    viewer_is_host: bool,
) -> MeetingView {
    let s = &meeting.settings;
    MeetingView {
        join_url: rules::join_url(&state.config.public_url, &meeting.code),
        has_passcode: meeting.passcode.is_some(),
        passcode: meeting.passcode.clone().filter(|_| viewer_is_host),
        settings: SettingsView {
            allow_guests: s.allow_guests,
            waiting_room: s.waiting_room,
            mute_on_join: s.mute_on_join,
            video_on_join: s.video_on_join,
            chat: s.chat,
            screen_share: s.screen_share,
            recording: s.recording,
            max_participants: s.max_participants,
        },
        host: HostView {
            id: meeting.host_id.clone(),
            display_name: host_name,
        },
        scheduled_at: meeting.scheduled_at.map(time),
        created_at: time(meeting.created_at),
        started_at: meeting.started_at.map(time),
        ended_at: meeting.ended_at.map(time),
        id: meeting.id,
        code: meeting.code,
        title: meeting.title,
        description: meeting.description,
        duration_minutes: meeting.duration_minutes,
        access: meeting.access,
        status: meeting.status,
    }
}

/// The meeting as seen by `viewer_is_host`, with its host's name.
async fn render(
    state: &AppState,
    meeting: Meeting,
    viewer_is_host: bool,
) -> Result<MeetingView, ApiError> {
    let host = state.store.user(&meeting.host_id).await?;
    Ok(view(state, meeting, host.display_name, viewer_is_host))
}

/// The signed-in account; a token naming a deleted account is 401.
async fn account(state: &AppState, auth: &AuthUser) -> Result<User, ApiError> {
    match state.store.user(&auth.user_id).await {
        Err(StoreError::NotFound) => Err(ApiError::unauthorized("the account no longer exists")),
        other => Ok(other?),
    }
}

async fn find_meeting(state: &AppState, id_or_code: &str) -> Result<Meeting, ApiError> {
    match state.store.meeting(id_or_code).await {
        Err(StoreError::NotFound) => Err(meeting_not_found()),
        other => Ok(other?),
    }
}

/// The meeting if `user` hosts it; 403 if they may only see it, 404 if not even that.
async fn hosted_meeting(state: &AppState, user: &User, id: &str) -> Result<Meeting, ApiError> {
    let meeting = find_meeting(state, id).await?;
    if meeting.host_id == user.id {
        return Ok(meeting);
    }
    if rules::can_view(&state.store, &meeting, Some(user)).await? {
        Err(ApiError::forbidden("only the host may do this"))
    } else {
        Err(meeting_not_found())
    }
}

/// Parses an RFC 3339 time that may lie at most a minute in the past; records a field error
/// otherwise.
fn future_time(text: &str, now: i64, v: &mut Validator) -> Option<i64> {
    match DateTime::parse_from_rfc3339(text) {
        Ok(at) => {
            let ms = at.timestamp_millis();
            let tolerance = rules::SCHEDULE_PAST_TOLERANCE.as_millis() as i64;
            if ms < now - tolerance {
                v.push("scheduled_at", "must not be in the past");
                None
            } else {
                Some(ms)
            }
        }
        Err(_) => {
            v.push("scheduled_at", "must be an RFC 3339 time");
            None
        }
    }
}

fn check_title(title: &str, v: &mut Validator) {
    let n = title.trim().chars().count();
    v.check(
        (1..=rules::TITLE_MAX_CHARS).contains(&n),
        "title",
        "must be 1 to 200 characters",
    );
}

fn check_description(text: &str, v: &mut Validator) {
    v.check(
        text.chars().count() <= rules::DESCRIPTION_MAX_CHARS,
        "description",
        "must be at most 5000 characters",
    );
}

fn check_duration(minutes: i64, v: &mut Validator) {
    v.check(
        (1..=rules::DURATION_MAX_MINUTES).contains(&minutes),
        "duration_minutes",
        "must be 1 to 1440",
    );
}

fn check_passcode(passcode: &str, v: &mut Validator) {
    let n = passcode.chars().count();
    v.check(
        (rules::PASSCODE_MIN_CHARS..=rules::PASSCODE_MAX_CHARS).contains(&n),
        "passcode",
        "must be 4 to 32 characters",
    );
}

fn parse_access(text: &str, v: &mut Validator) -> Option<Access> {
    let access = Access::parse(text);
    v.check(
        access.is_some(),
        "access",
        "must be public, private or invite_only",
    );
    access
}

/// Applies the given settings onto `settings`, recording field errors.
fn apply_settings(
    settings: &mut MeetingSettings,
    input: &SettingsInput,
    server_max: i64,
    v: &mut Validator,
) {
    let flags = [
        (input.allow_guests, &mut settings.allow_guests),
        (input.waiting_room, &mut settings.waiting_room),
        (input.mute_on_join, &mut settings.mute_on_join),
        (input.video_on_join, &mut settings.video_on_join),
        (input.chat, &mut settings.chat),
        (input.screen_share, &mut settings.screen_share),
        (input.recording, &mut settings.recording),
    ];
    for (given, field) in flags {
        if let Some(value) = given {
            *field = value;
        }
    }
    if let Some(max) = input.max_participants {
        if (1..=server_max).contains(&max) {
            settings.max_participants = max;
        } else {
            v.push(
                "settings.max_participants",
                format!("must be 1 to {server_max}"),
            );
        }
    }
}

fn server_max_participants(state: &AppState) -> i64 {
    i64::try_from(state.config.max_participants).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// Create a meeting hosted by the caller.
#[utoipa::path(post, path = "/meetings", tag = "meetings", security(("bearer" = [])),
    request_body = CreateMeeting,
    responses(
        (status = 201, description = "Created", body = MeetingView),
        (status = 401, description = "No or bad access token"),
        (status = 422, description = "validation_failed: every bad field listed"),
        (status = 429, description = "rate_limited (meeting-creation class)"),
    ))]
async fn create_meeting(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<CreateMeeting>,
) -> Result<(StatusCode, Json<MeetingView>), ApiError> {
    let host = account(&state, &auth).await?;
    let now = now_ms();
    let server_max = server_max_participants(&state);
    let mut v = Validator::default();
    match &body.title {
        Some(title) => check_title(title, &mut v),
        None => v.push("title", "is required"),
    }
    if let Some(description) = &body.description {
        check_description(description, &mut v);
    }
    let scheduled_at = body
        .scheduled_at
        .as_deref()
        .and_then(|t| future_time(t, now, &mut v));
    if let Some(minutes) = body.duration_minutes {
        check_duration(minutes, &mut v);
    }
    let access = match &body.access {
        Some(text) => parse_access(text, &mut v).unwrap_or(Access::Public),
        None => Access::Public,
    };
    if let Some(passcode) = &body.passcode {
        check_passcode(passcode, &mut v);
    }
    let mut settings = MeetingSettings {
        allow_guests: true,
        waiting_room: false,
        mute_on_join: false,
        video_on_join: true,
        chat: true,
        screen_share: true,
        recording: false,
        max_participants: server_max,
    };
    if let Some(input) = &body.settings {
        apply_settings(&mut settings, input, server_max, &mut v);
    }
    v.finish()?;

    let mut meeting = Meeting {
        id: new_id(),
        code: String::new(),
        host_id: host.id.clone(),
        title: body.title.unwrap_or_default().trim().to_owned(),
        description: body.description.unwrap_or_default(),
        scheduled_at,
        duration_minutes: body.duration_minutes,
        access: access.as_str().to_owned(),
        passcode: body.passcode,
        settings,
        status: Status::Scheduled.as_str().to_owned(),
        started_at: None,
        ended_at: None,
        created_at: now,
        updated_at: now,
    };
    // Codes are random; a collision is rare but possible, so draw again a few times.
    let mut inserted = false;
    for _ in 0..rules::CODE_ATTEMPTS {
        meeting.code = rules::generate_code();
        match state.store.insert_meeting(&meeting).await {
            Ok(()) => {
                inserted = true;
                break;
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if !inserted {
        return Err(ApiError::internal("no free meeting code after retries"));
    }
    tracing::info!(meeting = %meeting.id, code = %meeting.code, host = %host.id, "meeting created");
    Ok((
        StatusCode::CREATED,
        Json(view(&state, meeting, host.display_name, true)),
    ))
}

/// The caller's meetings: hosted, or invited to (by account or email).
#[utoipa::path(get, path = "/meetings", tag = "meetings", security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "scheduled, live, ended or cancelled"),
        ("upcoming" = Option<bool>, Query, description = "live, or scheduled now or later (or unset); soonest first"),
        ("page" = Option<i64>, Query, description = "From 1 (default 1)"),
        ("limit" = Option<i64>, Query, description = "1–100 (default 20)"),
    ),
    responses(
        (status = 200, description = "One page, newest first (upcoming: soonest first)", body = MeetingList),
        (status = 401, description = "No or bad access token"),
        (status = 422, description = "validation_failed"),
    ))]
async fn list_meetings(
    State(state): State<AppState>,
    auth: AuthUser,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<MeetingList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let user = account(&state, &auth).await?;
    let mut v = Validator::default();
    let status = query.get("status").cloned();
    if let Some(status) = &status {
        v.check(
            Status::parse(status).is_some(),
            "status",
            "must be scheduled, live, ended or cancelled",
        );
    }
    let upcoming = match query.get("upcoming").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => {
            v.push("upcoming", "must be true or false");
            false
        }
    };
    let mut number = |name: &str, default: i64, range: std::ops::RangeInclusive<i64>| match query
        .get(name)
        .map(|t| t.parse::<i64>())
    {
        None => default,
        Some(Ok(n)) if range.contains(&n) => n,
        Some(_) => {
            v.push(
                name,
                format!("must be a number from {} to {}", range.start(), range.end()),
            );
            default
        }
    };
    let page = number("page", 1, 1..=1_000_000);
    let limit = number("limit", 20, 1..=100);
    v.finish()?;

    let filter = MeetingFilter {
        status,
        upcoming,
        now: now_ms(),
        limit,
        offset: (page - 1) * limit,
    };
    let (rows, total) = state
        .store
        .meetings_for_user(&user.id, &user.email, &filter)
        .await?;
    let items = rows
        .into_iter()
        .map(|(meeting, host_name)| {
            let is_host = meeting.host_id == user.id;
            view(&state, meeting, host_name, is_host)
        })
        .collect();
    Ok(Json(MeetingList {
        items,
        total,
        page,
        limit,
    }))
}

/// A meeting by id or code. Also what a join page needs (title, status, access, has_passcode,
/// settings.allow_guests and waiting_room).
#[utoipa::path(get, path = "/meetings/{id}", tag = "meetings", security((), ("bearer" = [])),
    params(("id" = String, Path, description = "Meeting id or code")),
    responses(
        (status = 200, description = "The meeting", body = MeetingView),
        (status = 401, description = "Bad access token"),
        (status = 404, description = "meeting_not_found (also when the caller may not see it)"),
    ))]
async fn get_meeting(
    State(state): State<AppState>,
    MaybeAuthUser(auth): MaybeAuthUser,
    Path(id): Path<String>,
) -> Result<Json<MeetingView>, ApiError> {
    let viewer = match &auth {
        Some(auth) => Some(account(&state, auth).await?),
        None => None,
    };
    let meeting = find_meeting(&state, &id).await?;
    if !rules::can_view(&state.store, &meeting, viewer.as_ref()).await? {
        return Err(meeting_not_found());
    }
    let is_host = viewer.is_some_and(|u| u.id == meeting.host_id);
    Ok(Json(render(&state, meeting, is_host).await?))
}

/// Edit a meeting (host only) until it ends or is cancelled.
#[utoipa::path(patch, path = "/meetings/{id}", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "Meeting id or code")),
    request_body = PatchMeeting,
    responses(
        (status = 200, description = "The updated meeting", body = MeetingView),
        (status = 401, description = "No or bad access token"),
        (status = 403, description = "forbidden: not the host"),
        (status = 404, description = "meeting_not_found"),
        (status = 409, description = "meeting_closed"),
        (status = 422, description = "validation_failed"),
    ))]
async fn update_meeting(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchMeeting>,
) -> Result<Json<MeetingView>, ApiError> {
    let user = account(&state, &auth).await?;
    let mut meeting = hosted_meeting(&state, &user, &id).await?;
    if rules::is_closed(&meeting.status) {
        return Err(meeting_closed());
    }
    let now = now_ms();
    let server_max = server_max_participants(&state);
    let mut v = Validator::default();
    let before_schedule = (meeting.scheduled_at, meeting.duration_minutes);
    if let Some(title) = &body.title {
        check_title(title, &mut v);
        meeting.title = title.trim().to_owned();
    }
    if let Some(description) = &body.description {
        let description = description.clone().unwrap_or_default();
        check_description(&description, &mut v);
        meeting.description = description;
    }
    match &body.scheduled_at {
        Some(Some(text)) => meeting.scheduled_at = future_time(text, now, &mut v),
        Some(None) => meeting.scheduled_at = None,
        None => {}
    }
    if let Some(minutes) = body.duration_minutes {
        if let Some(m) = minutes {
            check_duration(m, &mut v);
        }
        meeting.duration_minutes = minutes;
    }
    if let Some(text) = &body.access {
        if let Some(access) = parse_access(text, &mut v) {
            meeting.access = access.as_str().to_owned();
        }
    }
    if let Some(passcode) = &body.passcode {
        if let Some(p) = passcode {
            check_passcode(p, &mut v);
        }
        meeting.passcode = passcode.clone();
    }
    if let Some(input) = &body.settings {
        apply_settings(&mut meeting.settings, input, server_max, &mut v);
    }
    v.finish()?;

    meeting.updated_at = now;
    if !state.store.update_meeting(&meeting).await? {
        return Err(meeting_closed());
    }
    if before_schedule != (meeting.scheduled_at, meeting.duration_minutes) {
        tracing::info!(meeting = %meeting.id, "meeting rescheduled");
    }
    let fresh = find_meeting(&state, &meeting.id).await?;
    // Connected participants see the change (`meeting_updated`); their permissions follow it.
    state.live.meeting_updated(&fresh);
    Ok(Json(view(&state, fresh, user.display_name, true)))
}

/// Start the meeting now (host only); starting a live meeting changes nothing.
#[utoipa::path(post, path = "/meetings/{id}/start", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "Meeting id or code")),
    responses(
        (status = 200, description = "Live", body = MeetingView),
        (status = 401, description = "No or bad access token"),
        (status = 403, description = "forbidden: not the host"),
        (status = 404, description = "meeting_not_found"),
        (status = 409, description = "meeting_closed"),
    ))]
async fn start_meeting(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MeetingView>, ApiError> {
    let user = account(&state, &auth).await?;
    let meeting = hosted_meeting(&state, &user, &id).await?;
    state.store.start_meeting(&meeting.id, now_ms()).await?;
    let fresh = find_meeting(&state, &meeting.id).await?;
    if fresh.status != Status::Live.as_str() {
        return Err(meeting_closed());
    }
    Ok(Json(view(&state, fresh, user.display_name, true)))
}

/// Ends or cancels `meeting`: every participant is marked left, their media closed and their
/// sockets told (`meeting_ended`).
async fn close(
    state: &AppState,
    user: User,
    meeting: Meeting,
    status: Status,
) -> Result<Json<MeetingView>, ApiError> {
    // Read before closing: closing gives up every seat, the host's included.
    let by = state
        .store
        .joined_seat_of_user(&meeting.id, &user.id)
        .await?
        .map(|seat| seat.id);
    match crate::domain::moderation::close_meeting(
        &state.store,
        &state.sfu,
        &meeting.id,
        status.as_str(),
    )
    .await
    {
        Ok(()) => {}
        Err(crate::domain::moderation::ModerationError::MeetingClosed) => {
            return Err(meeting_closed())
        }
        Err(other) => return Err(other.into()),
    }
    state.live.meeting_ended(&meeting.id, by);
    let fresh = find_meeting(state, &meeting.id).await?;
    Ok(Json(view(state, fresh, user.display_name, true)))
}

/// End the meeting for everyone (host only): participants leave, media closes.
#[utoipa::path(post, path = "/meetings/{id}/end", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "Meeting id or code")),
    responses(
        (status = 200, description = "Ended", body = MeetingView),
        (status = 401, description = "No or bad access token"),
        (status = 403, description = "forbidden: not the host"),
        (status = 404, description = "meeting_not_found"),
        (status = 409, description = "meeting_closed: already ended or cancelled"),
    ))]
async fn end_meeting(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MeetingView>, ApiError> {
    let user = account(&state, &auth).await?;
    let meeting = hosted_meeting(&state, &user, &id).await?;
    close(&state, user, meeting, Status::Ended).await
}

/// Cancel the meeting (host only). It stays in history with status `cancelled`.
#[utoipa::path(delete, path = "/meetings/{id}", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "Meeting id or code")),
    responses(
        (status = 200, description = "Cancelled", body = MeetingView),
        (status = 401, description = "No or bad access token"),
        (status = 403, description = "forbidden: not the host"),
        (status = 404, description = "meeting_not_found"),
        (status = 409, description = "meeting_closed: already ended or cancelled"),
    ))]
async fn cancel_meeting(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MeetingView>, ApiError> {
    let user = account(&state, &auth).await?;
    let meeting = hosted_meeting(&state, &user, &id).await?;
    close(&state, user, meeting, Status::Cancelled).await
}

/// Most invitees one request may name (per list).
const MAX_INVITES_PER_REQUEST: usize = 100;

/// Invite users or email addresses (host only). Invitees see the meeting and may join
/// invite-only meetings.
#[utoipa::path(post, path = "/meetings/{id}/invites", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "Meeting id or code")),
    request_body = InviteRequest,
    responses(
        (status = 201, description = "Invited", body = InviteResult),
        (status = 401, description = "No or bad access token"),
        (status = 403, description = "forbidden: not the host"),
        (status = 404, description = "meeting_not_found"),
        (status = 409, description = "meeting_closed"),
        (status = 422, description = "validation_failed (e.g. unknown user ids)"),
    ))]
async fn invite(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<InviteRequest>,
) -> Result<(StatusCode, Json<InviteResult>), ApiError> {
    let user = account(&state, &auth).await?;
    let meeting = hosted_meeting(&state, &user, &id).await?;
    if rules::is_closed(&meeting.status) {
        return Err(meeting_closed());
    }
    let mut fields = Vec::new();
    if body.user_ids.is_empty() && body.emails.is_empty() {
        fields.push(FieldError::new("user_ids", "give user_ids or emails"));
    }
    if body.user_ids.len() > MAX_INVITES_PER_REQUEST || body.emails.len() > MAX_INVITES_PER_REQUEST
    {
        fields.push(FieldError::new(
            "body",
            "at most 100 user ids and 100 emails per request",
        ));
        return Err(ApiError::validation(fields));
    }
    for (i, user_id) in body.user_ids.iter().enumerate() {
        match state.store.user(user_id).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                fields.push(FieldError::new(&format!("user_ids[{i}]"), "no such user"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (i, email) in body.emails.iter().enumerate() {
        let email = email.trim();
        let plausible = email.len() <= 254
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
            && !email.chars().any(char::is_whitespace);
        if !plausible {
            fields.push(FieldError::new(
                &format!("emails[{i}]"),
                "not an email address",
            ));
        }
    }
    if !fields.is_empty() {
        return Err(ApiError::validation(fields));
    }
    let invited = state
        .store
        .add_invites(&meeting.id, &body.user_ids, &body.emails)
        .await?;
    Ok((StatusCode::CREATED, Json(InviteResult { invited })))
}

/// Create an invite link (host, or a moderator for roles below moderator). Its holder joins
/// with the link's role, skipping passcode, invite list and waiting room.
#[utoipa::path(post, path = "/meetings/{id}/join-tokens", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "Meeting id or code")),
    request_body = JoinLinkRequest,
    responses(
        (status = 201, description = "The link (its token is shown only now)", body = JoinLinkView),
        (status = 401, description = "No or bad access token"),
        (status = 403, description = "forbidden: neither host nor a moderator admitted now, or role too high"),
        (status = 404, description = "meeting_not_found"),
        (status = 409, description = "meeting_closed"),
        (status = 422, description = "validation_failed"),
    ))]
async fn create_join_link(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<JoinLinkRequest>,
) -> Result<(StatusCode, Json<JoinLinkView>), ApiError> {
    let user = account(&state, &auth).await?;
    let meeting = find_meeting(&state, &id).await?;
    let creator_role = if meeting.host_id == user.id {
        Role::Host
    } else if state
        .store
        .latest_seat_of_identity(&meeting.id, &user.id)
        .await?
        // Only a moderator admitted now: a kicked (or departed) one keeps the role on an old
        // row, and links skip the passcode and the waiting room.
        .is_some_and(|seat| seat.status == "joined" && seat.role == "moderator")
    {
        Role::Moderator
    } else if rules::can_view(&state.store, &meeting, Some(&user)).await? {
        return Err(ApiError::forbidden(
            "only the host or a moderator may create invite links",
        ));
    } else {
        return Err(meeting_not_found());
    };
    if rules::is_closed(&meeting.status) {
        return Err(meeting_closed());
    }
    let mut v = Validator::default();
    let role = match body.role.as_deref().map(Role::parse) {
        Some(Some(role)) if role != Role::Host => Some(role),
        None => {
            v.push("role", "is required");
            None
        }
        _ => {
            v.push("role", "must be participant, moderator or guest");
            None
        }
    };
    let uses = body.uses.unwrap_or(1);
    v.check(
        (1..=rules::LINK_MAX_USES).contains(&uses),
        "uses",
        "must be 1 to 1000",
    );
    let ttl = body.ttl.unwrap_or(rules::LINK_DEFAULT_TTL.as_secs() as i64);
    v.check(
        (1..=rules::LINK_MAX_TTL.as_secs() as i64).contains(&ttl),
        "ttl",
        "must be 1 to 2592000 seconds (30 days)",
    );
    v.finish()?;
    let role = role.unwrap_or(Role::Guest);
    if role >= creator_role {
        return Err(ApiError::forbidden(
            "a link may only grant a role below your own",
        ));
    }

    let token = rules::new_link_token();
    let now = now_ms();
    let link = JoinLink {
        id: new_id(),
        meeting_id: meeting.id.clone(),
        token_hash: rules::hash_link_token(&token),
        role: role.as_str().to_owned(),
        uses_left: uses,
        expires_at: now + ttl * 1000,
        created_by: user.id.clone(),
        created_at: now,
    };
    state.store.insert_join_link(&link).await?;
    let url = format!(
        "{}?invite={token}",
        rules::join_url(&state.config.public_url, &meeting.code)
    );
    Ok((
        StatusCode::CREATED,
        Json(JoinLinkView {
            token,
            url,
            role: link.role,
            uses,
            expires_at: time(link.expires_at),
        }),
    ))
}

impl From<JoinError> for ApiError {
    fn from(error: JoinError) -> Self {
        let message = error.to_string();
        match error {
            JoinError::NotFound => meeting_not_found(),
            JoinError::Ended => ApiError::new(StatusCode::GONE, "meeting_ended", message),
            JoinError::InvalidInvite => {
                ApiError::new(StatusCode::FORBIDDEN, "invalid_invite", message)
            }
            JoinError::Banned => ApiError::new(StatusCode::FORBIDDEN, "banned", message),
            JoinError::WrongPasscode => {
                ApiError::new(StatusCode::FORBIDDEN, "wrong_passcode", message)
            }
            JoinError::NotInvited => ApiError::new(StatusCode::FORBIDDEN, "not_invited", message),
            JoinError::LoginRequired => {
                ApiError::new(StatusCode::UNAUTHORIZED, "login_required", message)
            }
            JoinError::UnknownUser => ApiError::unauthorized(message),
            JoinError::Invalid { field, message } => {
                ApiError::validation(vec![FieldError::new(field, message)])
            }
            JoinError::Full => ApiError::conflict("meeting_full", message),
            JoinError::InvalidWaitToken => {
                ApiError::new(StatusCode::FORBIDDEN, "invalid_wait_token", message)
            }
            JoinError::Denied => ApiError::new(StatusCode::FORBIDDEN, "denied", message),
            JoinError::Store(e) => e.into(),
        }
    }
}

/// Join a meeting (by code or id), signed in or as a guest. 200 with a join token for the
/// media, or 202 when parked in the waiting room.
// Documented as `{code}` (how people join); the route itself is `{id}` because every
// `/meetings/{…}` route must name that segment alike, and it accepts either.
#[utoipa::path(post, path = "/meetings/{code}/join", tag = "meetings", security((), ("bearer" = [])),
    params(("code" = String, Path, description = "Meeting code (or id)")),
    request_body = JoinBody,
    responses(
        (status = 200, description = "Joined", body = JoinResponse),
        (status = 202, description = "In the waiting room", body = WaitingResponse),
        (status = 401, description = "login_required (guests not allowed), or a bad access token"),
        (status = 403, description = "banned, wrong_passcode, not_invited or invalid_invite"),
        (status = 404, description = "meeting_not_found"),
        (status = 403, description = "invalid_wait_token / denied (a wait token's claim)"),
        (status = 409, description = "meeting_full"),
        (status = 410, description = "meeting_ended"),
        (status = 422, description = "validation_failed (display_name)"),
    ))]
async fn join_meeting(
    State(state): State<AppState>,
    MaybeAuthUser(auth): MaybeAuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<JoinBody>,
) -> Result<Response, ApiError> {
    // A first join that lands in the waiting room is news for the moderators; a wait-token
    // claim that is still waiting is not.
    let first_ask = body.wait_token.is_none();
    let request = rules::JoinRequest {
        user_id: auth.map(|a| a.user_id),
        passcode: body.passcode,
        display_name: body.display_name,
        invite_token: body.invite_token,
        wait_token: body.wait_token,
    };
    let context = rules::JoinContext {
        store: &state.store,
        keys: &state.keys,
        access: &state.access,
        config: &state.config,
    };
    match rules::join(context, &id, request).await? {
        JoinOutcome::Joined(admission) => {
            let room = admission.meeting_id.clone();
            let ice_servers = state
                .ice
                .for_identity(&admission.identity)
                .into_iter()
                .map(IceServerView::from)
                .collect();
            // In a cluster, this node is the room's (requests about a meeting are served by
            // its node): the client goes on here, wherever it asked.
            // With cascading, once this node holds `cluster_room_node_participants` of the
            // meeting, the next ones go to the least loaded other node.
            let (base, ws_url) = match &state.cluster {
                Some(cluster) => {
                    let http_url = spill_node(&state, cluster, &room)
                        .await
                        .unwrap_or_else(|| cluster.http_url().to_owned());
                    (
                        http_url.trim_end_matches('/').to_owned(),
                        crate::cluster::ws_url(&http_url),
                    )
                }
                None => (String::new(), "/ws".to_owned()),
            };
            let response = JoinResponse {
                join_token: admission.join_token,
                role: admission.role,
                participant_id: admission.participant_id,
                whip_url: format!("{base}/whip/{room}"),
                whep_url: format!("{base}/whep/{room}"),
                ws_url,
                meeting_id: admission.meeting_id,
                room,
                identity: admission.identity,
                display_name: admission.display_name,
                mic_muted: admission.mic_muted,
                camera_off: admission.camera_off,
                ice_servers,
            };
            Ok((StatusCode::OK, Json(response)).into_response())
        }
        JoinOutcome::Waiting {
            participant_id,
            meeting_id,
            wait_token,
        } => {
            if first_ask {
                match state.store.participant(&meeting_id, &participant_id).await {
                    Ok(participant) => state.live.waiting(&meeting_id, &participant),
                    Err(e) => {
                        tracing::warn!(meeting = %meeting_id, participant = %participant_id, error = %e, "waiting participant not announced")
                    }
                }
            }
            Ok((
                StatusCode::ACCEPTED,
                Json(WaitingResponse {
                    status: "waiting".to_owned(),
                    participant_id,
                    meeting_id,
                    wait_token,
                }),
            )
                .into_response())
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    paths(
        create_meeting,
        list_meetings,
        get_meeting,
        update_meeting,
        start_meeting,
        end_meeting,
        cancel_meeting,
        invite,
        create_join_link,
        join_meeting
    ),
    components(schemas(
        SettingsInput,
        CreateMeeting,
        PatchMeeting,
        SettingsView,
        HostView,
        MeetingView,
        MeetingList,
        InviteRequest,
        InviteResult,
        JoinLinkRequest,
        JoinLinkView,
        JoinBody,
        IceServerView,
        JoinResponse,
        WaitingResponse,
        Role
    ))
)]
struct Doc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/meetings", post(create_meeting).get(list_meetings))
        .route(
            "/meetings/{id}",
            get(get_meeting)
                .patch(update_meeting)
                .delete(cancel_meeting),
        )
        .route("/meetings/{id}/start", post(start_meeting))
        .route("/meetings/{id}/end", post(end_meeting))
        .route("/meetings/{id}/invites", post(invite))
        .route("/meetings/{id}/join-tokens", post(create_join_link))
        .route("/meetings/{id}/join", post(join_meeting))
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// Cascading: the node a new participant of a meeting this node holds enough of goes to (the
/// least loaded other live node), if any.
async fn spill_node(
    state: &AppState,
    cluster: &crate::cluster::Cluster,
    meeting_id: &str,
) -> Option<String> {
    if !state.config.cluster_cascade {
        return None;
    }
    let here = state
        .store
        .seats_on_node(meeting_id, cluster.node_id())
        .await
        .ok()?;
    if here < state.config.cluster_room_node_participants as i64 {
        return None;
    }
    let nodes = cluster.nodes().await.ok()?;
    nodes
        .into_iter()
        .filter(|n| n.id != cluster.node_id())
        .min_by(|a, b| {
            crate::cluster::load_score(&a.load).total_cmp(&crate::cluster::load_score(&b.load))
        })
        .map(|n| n.http_url)
}
