//! Participants and moderation of a meeting: the participant list, kick (and ban), mute, role
//! changes, and the waiting room. Also [`MeetingCaller`], who the caller is in a meeting, which
//! chat, recordings and stats share.
//!
//! The permission matrix lives in `domain::roles`; this module only applies it. Media effects
//! (kick closes the connections, mute stops forwarding) go to the SFU right after the database
//! change, which stays the source of truth if the SFU cannot be reached.

use axum::extract::{Path, Query, State};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::extract::{ApiJson, AuthUser, Validator};
use super::ApiError;
use crate::domain::moderation::{self, ModerationError};
use crate::domain::roles::{Action, Role};
use crate::http_error::FieldError;
use crate::state::AppState;
use crate::store::meetings::Meeting;
use crate::store::participants::Participant;
use crate::store::StoreError;

// ---- who the caller is in a meeting -------------------------------------------------------

/// The caller of a meeting endpoint: the meeting, and the caller's role in it.
pub(crate) struct MeetingCaller {
    pub meeting: Meeting,
    /// Host if they host it, else the role of their current seat (`joined` row); `None` when
    /// they have no part in the meeting now.
    pub role: Option<Role>,
    /// Their current participant row, when they have joined.
    pub seat: Option<Participant>,
    /// Invited (by account or email). Only looked up when they have no role.
    pub invited: bool,
}

impl MeetingCaller {
    /// Resolves the caller; 404 `meeting_not_found` for an unknown meeting and for one they may
    /// not see (not public, and neither host, participant nor invitee), so nothing leaks.
    pub async fn resolve(
        state: &AppState,
        user: &AuthUser,
        id_or_code: &str,
    ) -> Result<Self, ApiError> {
        let meeting = match state.store.meeting(id_or_code).await {
            Ok(meeting) => meeting,
            Err(StoreError::NotFound) => return Err(meeting_not_found()),
            Err(other) => return Err(other.into()),
        };
        let seat = state
            .store
            .joined_seat_of_user(&meeting.id, &user.user_id)
            .await?;
        let role = if meeting.host_id == user.user_id {
            Some(Role::Host)
        } else {
            // A role the code does not know ranks as guest: it grants nothing.
            seat.as_ref()
                .map(|s| Role::parse(&s.role).unwrap_or(Role::Guest))
        };
        let invited = role.is_none() && state.store.is_invited(&meeting.id, &user.user_id).await?;
        if role.is_none() && !invited && meeting.access != "public" {
            return Err(meeting_not_found());
        }
        Ok(Self {
            meeting,
            role,
            seat,
            invited,
        })
    }

    /// Any role in the meeting (host or a joined participant), else 403.
    pub fn require_role(&self) -> Result<Role, ApiError> {
        self.role
            .ok_or_else(|| ApiError::forbidden("you are not in this meeting"))
    }

    /// A role allowed to do `action`, else 403.
    pub fn require(&self, action: Action) -> Result<Role, ApiError> {
        let role = self.require_role()?;
        if role.can(action) {
            Ok(role)
        } else {
            Err(ApiError::forbidden(
                "your role in this meeting does not allow this",
            ))
        }
    }

    /// Host or moderator, else 403.
    pub fn require_moderator(&self) -> Result<Role, ApiError> {
        let role = self.require_role()?;
        if role.is_moderator() {
            Ok(role)
        } else {
            Err(ApiError::forbidden(
                "only the host and moderators may see this",
            ))
        }
    }

    /// The role a participant row holds, for ranking: the host's rows always rank as host, and
    /// a role the code does not know ranks as host too, so nobody can act on it by mistake.
    pub fn role_of(&self, target: &Participant) -> Role {
        crate::domain::moderation::rank_of(&self.meeting, target)
    }
}

pub(crate) fn meeting_not_found() -> ApiError {
    ApiError::not_found("meeting_not_found", "no such meeting")
}

impl From<ModerationError> for ApiError {
    fn from(error: ModerationError) -> Self {
        let message = error.to_string();
        match error {
            ModerationError::ParticipantNotFound => participant_not_found(),
            ModerationError::Forbidden(m) => ApiError::forbidden(m),
            ModerationError::NotWaiting => ApiError::conflict("not_waiting", message),
            ModerationError::MeetingClosed => ApiError::conflict("meeting_closed", message),
            ModerationError::Invalid { field, message } => {
                ApiError::validation(vec![FieldError::new(field, message)])
            }
            ModerationError::Store(e) => e.into(),
        }
    }
}

fn participant_not_found() -> ApiError {
    ApiError::not_found(
        "participant_not_found",
        "no such participant in this meeting",
    )
}

/// RFC 3339 time from unix milliseconds.
pub(crate) fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

// ---- bodies -------------------------------------------------------------------------------

/// A participant row: one join of the meeting, present or past.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ParticipantInfo {
    pub id: String,
    /// The account; `null` for guests.
    pub user_id: Option<String>,
    /// The media identity (join token `sub`).
    pub identity: String,
    pub display_name: String,
    /// `host`, `moderator`, `participant` or `guest`.
    pub role: String,
    /// `waiting`, `joined`, `left`, `kicked` or `denied`.
    pub status: String,
    pub mic_muted: bool,
    pub camera_off: bool,
    pub joined_at: Option<DateTime<Utc>>,
    pub left_at: Option<DateTime<Utc>>,
}

impl From<Participant> for ParticipantInfo {
    fn from(p: Participant) -> Self {
        Self {
            id: p.id,
            user_id: p.user_id,
            identity: p.identity,
            display_name: p.display_name,
            role: p.role,
            status: p.status,
            mic_muted: p.mic_muted,
            camera_off: p.camera_off,
            joined_at: p.joined_at.map(time),
            left_at: p.left_at.map(time),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ParticipantList {
    pub items: Vec<ParticipantInfo>,
    pub total: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WaitingList {
    pub items: Vec<ParticipantInfo>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ParticipantsQuery {
    /// Only rows with this status: `joined`, `waiting`, `left`, `kicked` or `denied`.
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct KickRequest {
    /// Also ban the identity from rejoining this meeting. Default false.
    #[serde(default)]
    pub ban: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MuteRequest {
    /// `microphone`, `camera`, `screen` or `screen_audio`. The media side mutes by kind: camera
    /// and screen both stop every video track of the participant, microphone and screen_audio
    /// every audio track.
    pub source: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RoleRequest {
    /// `moderator`, `participant` or `guest`.
    pub role: String,
}

const STATUSES: [&str; 5] = ["joined", "waiting", "left", "kicked", "denied"];

// ---- handlers -----------------------------------------------------------------------------

#[utoipa::path(
    get,
    path = "/meetings/{id}/participants",
    tag = "participants",
    params(("id" = String, Path, description = "meeting id or code"), ParticipantsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every participant row, present and past", body = ParticipantList),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "not in this meeting"),
        (status = 404, description = "meeting_not_found"),
        (status = 422, description = "unknown status filter"),
    )
)]
async fn list_participants(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    Query(query): Query<ParticipantsQuery>,
) -> Result<Json<ParticipantList>, ApiError> {
    let caller = MeetingCaller::resolve(&state, &user, &id).await?;
    caller.require_role()?;
    let status = query.status.as_deref().filter(|s| !s.is_empty());
    let mut validator = Validator::default();
    validator.check(
        status.is_none_or(|s| STATUSES.contains(&s)),
        "status",
        "must be one of joined, waiting, left, kicked, denied",
    );
    validator.finish()?;
    let rows = state
        .store
        .meeting_participants(&caller.meeting.id, status)
        .await?;
    let items: Vec<ParticipantInfo> = rows.into_iter().map(ParticipantInfo::from).collect();
    Ok(Json(ParticipantList {
        total: items.len() as i64,
        items,
    }))
}

/// Resolves caller and target for an action on a participant: 404 for an unknown meeting or
/// participant, 403 unless the caller's role allows `action` on the target's role.
async fn acting_on(
    state: &AppState,
    user: &AuthUser,
    id: &str,
    participant_id: &str,
    action: Action,
) -> Result<(MeetingCaller, Participant), ApiError> {
    let caller = MeetingCaller::resolve(state, user, id).await?;
    let role = caller.require(action)?;
    let target = find_participant(state, &caller.meeting.id, participant_id).await?;
    if !role.can_act_on(action, caller.role_of(&target)) {
        return Err(ApiError::forbidden(
            "you may only act on participants of a lower role",
        ));
    }
    Ok((caller, target))
}

async fn find_participant(
    state: &AppState,
    meeting_id: &str,
    participant_id: &str,
) -> Result<Participant, ApiError> {
    match state.store.participant(meeting_id, participant_id).await {
        Ok(participant) => Ok(participant),
        Err(StoreError::NotFound) => Err(participant_not_found()),
        Err(other) => Err(other.into()),
    }
}

#[utoipa::path(
    post,
    path = "/meetings/{id}/participants/{pid}/kick",
    tag = "participants",
    params(("id" = String, Path, description = "meeting id or code"), ("pid" = String, Path, description = "participant id")),
    request_body = KickRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "removed (status kicked); their media connections are closed", body = ParticipantInfo),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "not allowed to remove this participant"),
        (status = 404, description = "meeting_not_found or participant_not_found"),
    )
)]
async fn kick(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(body): ApiJson<KickRequest>,
) -> Result<Json<ParticipantInfo>, ApiError> {
    let (caller, target) = acting_on(&state, &user, &id, &pid, Action::RemoveParticipants).await?;
    let meeting_id = caller.meeting.id.as_str();
    moderation::kick(&state.store, &state.sfu, meeting_id, &target, body.ban).await?;
    let by = caller.seat.as_ref().map(|s| s.id.clone());
    state.live.kicked(meeting_id, &target, body.ban, by);
    let updated = find_participant(&state, meeting_id, &target.id).await?;
    Ok(Json(updated.into()))
}

#[utoipa::path(
    post,
    path = "/meetings/{id}/participants/{pid}/mute",
    tag = "participants",
    params(("id" = String, Path, description = "meeting id or code"), ("pid" = String, Path, description = "participant id")),
    request_body = MuteRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "muted; the media is no longer forwarded", body = ParticipantInfo),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "not allowed to mute this participant"),
        (status = 404, description = "meeting_not_found or participant_not_found"),
        (status = 422, description = "unknown source"),
    )
)]
async fn mute(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(body): ApiJson<MuteRequest>,
) -> Result<Json<ParticipantInfo>, ApiError> {
    let (caller, target) = acting_on(&state, &user, &id, &pid, Action::MuteOthers).await?;
    let Some((flag, kind)) = moderation::mute_target(&body.source) else {
        return Err(ApiError::validation(vec![FieldError::new(
            "source",
            "must be one of microphone, camera, screen, screen_audio",
        )]));
    };
    let meeting_id = caller.meeting.id.as_str();
    moderation::mute(&state.store, &state.sfu, meeting_id, &target, flag, kind).await?;
    let by = caller.seat.as_ref().map(|s| s.id.clone());
    state.live.muted(meeting_id, &target.id, kind, by);
    let updated = find_participant(&state, meeting_id, &target.id).await?;
    Ok(Json(updated.into()))
}

#[utoipa::path(
    patch,
    path = "/meetings/{id}/participants/{pid}",
    tag = "participants",
    params(("id" = String, Path, description = "meeting id or code"), ("pid" = String, Path, description = "participant id")),
    request_body = RoleRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "role changed", body = ParticipantInfo),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "only the host changes roles, and never the host's own"),
        (status = 404, description = "meeting_not_found or participant_not_found"),
        (status = 422, description = "unknown role (or host)"),
    )
)]
async fn change_role(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(body): ApiJson<RoleRequest>,
) -> Result<Json<ParticipantInfo>, ApiError> {
    let (caller, target) = acting_on(&state, &user, &id, &pid, Action::ChangeRoles).await?;
    let Some(role) = Role::parse(&body.role).filter(|r| *r != Role::Host) else {
        return Err(ApiError::validation(vec![FieldError::new(
            "role",
            "must be one of moderator, participant, guest",
        )]));
    };
    let meeting_id = caller.meeting.id.as_str();
    state
        .store
        .set_participant_role(meeting_id, &target.id, role.as_str())
        .await?;
    state.live.role_changed(meeting_id, &target.id, role);
    let updated = find_participant(&state, meeting_id, &target.id).await?;
    Ok(Json(updated.into()))
}

#[utoipa::path(
    get,
    path = "/meetings/{id}/waiting",
    tag = "participants",
    params(("id" = String, Path, description = "meeting id or code")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the waiting room, oldest first", body = WaitingList),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "not allowed to run the waiting room"),
        (status = 404, description = "meeting_not_found"),
    )
)]
async fn list_waiting(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<WaitingList>, ApiError> {
    let caller = MeetingCaller::resolve(&state, &user, &id).await?;
    caller.require(Action::ManageWaitingRoom)?;
    let rows = state
        .store
        .meeting_participants(&caller.meeting.id, Some("waiting"))
        .await?;
    Ok(Json(WaitingList {
        items: rows.into_iter().map(ParticipantInfo::from).collect(),
    }))
}

/// Admits or denies a waiting participant.
async fn resolve_waiting(
    state: &AppState,
    user: &AuthUser,
    id: &str,
    pid: &str,
    admit: bool,
) -> Result<Json<ParticipantInfo>, ApiError> {
    let caller = MeetingCaller::resolve(state, user, id).await?;
    caller.require(Action::ManageWaitingRoom)?;
    let meeting_id = caller.meeting.id.as_str();
    let target = find_participant(state, meeting_id, pid).await?;
    match moderation::resolve_waiting(&state.store, meeting_id, &target, admit).await {
        Ok(()) => {}
        Err(ModerationError::NotWaiting) => {
            return Err(ApiError::conflict(
                "not_waiting",
                "this participant is not in the waiting room",
            ))
        }
        Err(other) => return Err(other.into()),
    }
    state.live.waiting_resolved(meeting_id, pid, admit);
    let updated = find_participant(state, meeting_id, pid).await?;
    Ok(Json(updated.into()))
}

#[utoipa::path(
    post,
    path = "/meetings/{id}/waiting/{pid}/admit",
    tag = "participants",
    params(("id" = String, Path, description = "meeting id or code"), ("pid" = String, Path, description = "participant id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "admitted (status joined)", body = ParticipantInfo),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "not allowed to run the waiting room"),
        (status = 404, description = "meeting_not_found or participant_not_found"),
        (status = 409, description = "not_waiting"),
    )
)]
async fn admit(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Json<ParticipantInfo>, ApiError> {
    resolve_waiting(&state, &user, &id, &pid, true).await
}

#[utoipa::path(
    post,
    path = "/meetings/{id}/waiting/{pid}/deny",
    tag = "participants",
    params(("id" = String, Path, description = "meeting id or code"), ("pid" = String, Path, description = "participant id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "denied (status denied)", body = ParticipantInfo),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "not allowed to run the waiting room"),
        (status = 404, description = "meeting_not_found or participant_not_found"),
        (status = 409, description = "not_waiting"),
    )
)]
async fn deny(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Json<ParticipantInfo>, ApiError> {
    resolve_waiting(&state, &user, &id, &pid, false).await
}

#[derive(OpenApi)]
#[openapi(
    paths(list_participants, kick, mute, change_role, list_waiting, admit, deny),
    components(schemas(
        ParticipantInfo,
        ParticipantList,
        WaitingList,
        KickRequest,
        MuteRequest,
        RoleRequest
    ))
)]
struct Doc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/meetings/{id}/participants", get(list_participants))
        .route("/meetings/{id}/participants/{pid}", patch(change_role))
        .route("/meetings/{id}/participants/{pid}/kick", post(kick))
        .route("/meetings/{id}/participants/{pid}/mute", post(mute))
        .route("/meetings/{id}/waiting", get(list_waiting))
        .route("/meetings/{id}/waiting/{pid}/admit", post(admit))
        .route("/meetings/{id}/waiting/{pid}/deny", post(deny))
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}
