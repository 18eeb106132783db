//! Recordings (start, stop, list, download, delete) and meeting statistics, for the host and
//! moderators; recordings also for a join token with the `record` grant.
//!
//! Statistics are computed here from the participant rows (one per join) rather than kept as
//! counters, so they are always consistent with the rows and need no bookkeeping on join/leave.

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use utoipa::{OpenApi, ToSchema};

use super::extract::{ApiJson, AuthUser};
use super::moderation::{meeting_not_found, time, MeetingCaller};
use super::ApiError;
use crate::domain::live::RecordingError;
use crate::domain::meetings::Status;
use crate::domain::roles::Action;
use crate::state::AppState;
use crate::store::meetings::Meeting;
use crate::store::now_ms;
use crate::store::participants::Participant;
use crate::store::recordings::{Recording, RecordingFile};
use crate::store::StoreError;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordingInfo {
    pub id: String,
    /// `recording`, `ready` or `failed`.
    pub status: String,
    /// Why it failed (`disk_full`, `write_failed`), or `interrupted` (the server stopped
    /// without closing it: its files hold what was written until then).
    pub reason: Option<String>,
    pub audio_only: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub size_bytes: Option<i64>,
    /// One per participant and source (camera with microphone, or screen), in the order they
    /// opened; a participant who publishes a new track mid-recording gets a new file.
    pub files: Vec<RecordingFileInfo>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordingFileInfo {
    pub id: String,
    pub participant_id: String,
    pub identity: String,
    pub display_name: String,
    /// `camera` (camera and microphone) or `screen`.
    pub source: String,
    /// `video/webm`, `video/x-matroska` (H264) or `audio/ogg`.
    pub content_type: String,
    /// `audio`, `video` or `audio,video`; empty while it is written.
    pub kinds: Vec<String>,
    /// In track order, e.g. `["vp8", "opus"]`.
    pub codecs: Vec<String>,
    pub duration_ms: Option<i64>,
    pub size_bytes: Option<i64>,
    /// `recording`, `ready` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Where to download it (same authorization as the recording).
    pub url: String,
}

fn split(list: Option<&str>) -> Vec<String> {
    list.map(|l| {
        l.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

impl RecordingInfo {
    fn of(r: Recording, files: Vec<RecordingFile>) -> Self {
        let files = files
            .into_iter()
            .map(|f| RecordingFileInfo {
                url: format!(
                    "/api/v1/meetings/{}/recordings/{}/files/{}",
                    r.meeting_id, r.id, f.id
                ),
                kinds: split(f.kinds.as_deref()),
                codecs: split(f.codecs.as_deref()),
                id: f.id,
                participant_id: f.participant_id,
                identity: f.identity,
                display_name: f.display_name,
                source: f.source,
                content_type: f.content_type,
                duration_ms: f.duration_ms,
                size_bytes: f.size_bytes,
                status: f.status,
                error: f.error,
                started_at: time(f.started_at),
                ended_at: f.ended_at.map(time),
            })
            .collect();
        Self {
            id: r.id,
            status: r.status,
            reason: r.reason,
            audio_only: r.audio_only,
            started_at: r.started_at.map(time),
            ended_at: r.ended_at.map(time),
            duration_ms: r.duration_ms,
            size_bytes: r.size_bytes,
            files,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordingList {
    pub items: Vec<RecordingInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MeetingStats {
    /// Distinct identities that ever joined (were admitted).
    pub participants_total: i64,
    /// The most participants present at the same moment.
    pub peak_concurrent: i64,
    /// Time spent in the meeting, summed over every join.
    pub total_participant_minutes: f64,
    /// `total_participant_minutes` in seconds, divided by `participants_total` (0 if none).
    pub average_duration_seconds: f64,
    /// The meeting's own length: started → ended (or now); 0 if it never started.
    pub duration_seconds: i64,
    pub messages_total: i64,
}

/// Statistics from a meeting's participant rows at `now` (ms). A join still open ends at the
/// meeting's end, else now; touching intervals (one leaves as another joins) do not overlap.
pub fn meeting_stats(
    meeting: &Meeting,
    rows: &[Participant],
    messages_total: i64,
    now: i64,
) -> MeetingStats {
    let open_end = meeting.ended_at.unwrap_or(now);
    let intervals: Vec<(i64, i64)> = rows
        .iter()
        .filter_map(|p| {
            let joined = p.joined_at?;
            Some((joined, p.left_at.unwrap_or(open_end).max(joined)))
        })
        .collect();
    let identities: HashSet<&str> = rows
        .iter()
        .filter(|p| p.joined_at.is_some())
        .map(|p| p.identity.as_str())
        .collect();
    // Sweep: at equal times, leaves (-1) sort before joins (+1).
    let mut events: Vec<(i64, i64)> = intervals
        .iter()
        .filter(|(start, end)| end > start)
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    events.sort_unstable();
    let (mut present, mut peak) = (0i64, 0i64);
    for (_, delta) in events {
        present += delta;
        peak = peak.max(present);
    }
    let total_ms: i64 = intervals.iter().map(|(start, end)| end - start).sum();
    let participants_total = identities.len() as i64;
    let average_duration_seconds = if participants_total > 0 {
        total_ms as f64 / 1000.0 / participants_total as f64
    } else {
        0.0
    };
    let duration_seconds = meeting
        .started_at
        .map(|started| (meeting.ended_at.unwrap_or(now) - started).max(0) / 1000)
        .unwrap_or(0);
    MeetingStats {
        participants_total,
        peak_concurrent: peak,
        total_participant_minutes: total_ms as f64 / 60_000.0,
        average_duration_seconds,
        duration_seconds,
        messages_total,
    }
}

/// Who manages a meeting's recordings: its host or a moderator (access token), or the holder
/// of a join token for this meeting with the `record` grant (a recording bot). Anyone else with
/// a valid token gets 403 if they may see the meeting, else 404.
pub(super) struct RecordingCaller {
    pub meeting: Meeting,
    /// Who started it, for `recording_started.by`: the caller's identity in the meeting.
    pub identity: Option<String>,
}

impl RecordingCaller {
    pub(super) async fn resolve(
        state: &AppState,
        headers: &HeaderMap,
        id: &str,
    ) -> Result<Self, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("an access token or join token is required"))?;
        if let Some(claims) = state.access.verify(token) {
            let user = AuthUser {
                user_id: claims.sub,
                username: claims.username,
            };
            let caller = MeetingCaller::resolve(state, &user, id).await?;
            let role = caller.require_role()?;
            if !role.can(Action::ManageRecording) {
                return Err(ApiError::forbidden(
                    "only the host or a moderator manages recordings",
                ));
            }
            let identity = caller.seat.map(|s| s.identity);
            return Ok(Self {
                meeting: caller.meeting,
                identity,
            });
        }
        let claims = state.keys.verify(token).map_err(|_| {
            ApiError::unauthorized("the access token or join token is invalid or expired")
        })?;
        let meeting = match state.store.meeting(id).await {
            Ok(meeting) => meeting,
            Err(StoreError::NotFound) => return Err(meeting_not_found()),
            Err(e) => return Err(e.into()),
        };
        if claims.room != meeting.id {
            return Err(meeting_not_found());
        }
        if !claims.grants.record {
            return Err(ApiError::forbidden("the join token does not grant record"));
        }
        Ok(Self {
            meeting,
            identity: Some(claims.sub),
        })
    }
}

fn recording_error(error: RecordingError) -> ApiError {
    match error {
        RecordingError::AlreadyRunning => {
            ApiError::conflict("recording_running", "a recording is already running")
        }
        RecordingError::NotRunning => {
            ApiError::conflict("not_recording", "this recording is not running")
        }
        RecordingError::DiskFull => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            "the recordings disk is full",
        ),
        RecordingError::Closed => ApiError::conflict("meeting_closed", "the meeting is closed"),
        RecordingError::Store(e) => e.into(),
    }
}

async fn info(state: &AppState, recording: Recording) -> Result<RecordingInfo, ApiError> {
    let files = state.store.recording_files(&recording.id).await?;
    Ok(RecordingInfo::of(recording, files))
}

async fn find(state: &AppState, meeting: &Meeting, id: &str) -> Result<Recording, ApiError> {
    match state.store.recording(&meeting.id, id).await {
        Ok(r) => Ok(r),
        Err(StoreError::NotFound) => Err(ApiError::not_found(
            "recording_not_found",
            "no such recording",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRecording {
    /// Record only audio: one Ogg/Opus file per participant. Default false: WebM (Matroska for
    /// H264) with camera and microphone, and screen shares in their own files.
    #[serde(default)]
    pub audio_only: bool,
}

#[utoipa::path(
    post,
    path = "/meetings/{id}/recordings",
    tag = "recordings",
    params(("id" = String, Path, description = "meeting id or code")),
    request_body(content = StartRecording, description = "options (the body may be left out)"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "recording: every participant is told, files open as they publish", body = RecordingInfo),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found"),
        (status = 409, description = "recording_running, meeting_not_live, meeting_closed"),
        (status = 422, description = "invalid body"),
        (status = 507, description = "disk_full: less free space than recording_min_free_bytes"),
    )
)]
async fn start_recording(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<RecordingInfo>), ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    // The body may be left out; when there is one it is checked like every JSON body.
    let empty = !headers.contains_key(header::CONTENT_TYPE)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|l| l.as_bytes() == b"0");
    let options = if empty {
        StartRecording::default()
    } else {
        let ApiJson(options) = ApiJson::<StartRecording>::from_request(request, &state).await?;
        options
    };
    if caller.meeting.status != Status::Live.as_str() {
        return Err(ApiError::conflict(
            "meeting_not_live",
            "only a live meeting can be recorded",
        ));
    }
    let recording = Recording::new(
        caller.meeting.id.clone(),
        options.audio_only,
        caller.identity,
    );
    let started = state
        .live
        .start_recording(recording)
        .await
        .map_err(recording_error)?;
    Ok((StatusCode::CREATED, Json(info(&state, started).await?)))
}

#[utoipa::path(
    post,
    path = "/meetings/{id}/recordings/{recording_id}/stop",
    tag = "recordings",
    params(
        ("id" = String, Path, description = "meeting id or code"),
        ("recording_id" = String, Path, description = "recording id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "stopped: `ready` (files closed), or `failed` with a reason", body = RecordingInfo),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found, recording_not_found"),
        (status = 409, description = "not_recording: it has already stopped"),
    )
)]
async fn stop_recording(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, recording_id)): Path<(String, String)>,
) -> Result<Json<RecordingInfo>, ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    let recording = find(&state, &caller.meeting, &recording_id).await?;
    if recording.status != "recording" {
        return Err(recording_error(RecordingError::NotRunning));
    }
    let stopped = state
        .live
        .stop_recording(caller.meeting.id.clone(), recording.id)
        .await
        .map_err(recording_error)?;
    Ok(Json(info(&state, stopped).await?))
}

#[utoipa::path(
    get,
    path = "/meetings/{id}/recordings",
    tag = "recordings",
    params(("id" = String, Path, description = "meeting id or code")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the meeting's recordings, oldest first, with their files", body = RecordingList),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found"),
    )
)]
async fn list_recordings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RecordingList>, ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    let rows = state.store.meeting_recordings(&caller.meeting.id).await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(info(&state, row).await?);
    }
    Ok(Json(RecordingList { items }))
}

#[utoipa::path(
    get,
    path = "/meetings/{id}/recordings/{recording_id}",
    tag = "recordings",
    params(
        ("id" = String, Path, description = "meeting id or code"),
        ("recording_id" = String, Path, description = "recording id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the recording and its files", body = RecordingInfo),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found, recording_not_found"),
    )
)]
async fn show_recording(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, recording_id)): Path<(String, String)>,
) -> Result<Json<RecordingInfo>, ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    let recording = find(&state, &caller.meeting, &recording_id).await?;
    Ok(Json(info(&state, recording).await?))
}

#[utoipa::path(
    delete,
    path = "/meetings/{id}/recordings/{recording_id}",
    tag = "recordings",
    params(
        ("id" = String, Path, description = "meeting id or code"),
        ("recording_id" = String, Path, description = "recording id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "the recording and its files are gone"),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found, recording_not_found"),
        (status = 409, description = "recording_running: stop it first"),
    )
)]
async fn delete_recording(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, recording_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    let recording = find(&state, &caller.meeting, &recording_id).await?;
    if recording.status == "recording" {
        return Err(recording_error(RecordingError::AlreadyRunning));
    }
    let files = state.store.recording_files(&recording.id).await?;
    for file in &files {
        match tokio::fs::remove_file(&file.path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "removing a recording file: {e}"
                )))
            }
        }
    }
    // The recording's own directory, once empty.
    let _ = tokio::fs::remove_dir(state.recorder.dir().join(&recording.id)).await;
    match state.store.delete_recording(&recording.id).await {
        Ok(()) | Err(StoreError::NotFound) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(
    get,
    path = "/meetings/{id}/recordings/{recording_id}/files/{file_id}",
    tag = "recordings",
    params(
        ("id" = String, Path, description = "meeting id or code"),
        ("recording_id" = String, Path, description = "recording id"),
        ("file_id" = String, Path, description = "file id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the file (`video/webm`, `video/x-matroska` or `audio/ogg`); a file still being written is served as far as it is written"),
        (status = 206, description = "the requested byte range (`Range: bytes=…`)"),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found, recording_not_found, file_not_found"),
        (status = 416, description = "the range is outside the file"),
    )
)]
async fn download_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, recording_id, file_id)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    let recording = find(&state, &caller.meeting, &recording_id).await?;
    let files = state.store.recording_files(&recording.id).await?;
    let file = files
        .into_iter()
        .find(|f| f.id == file_id)
        .ok_or_else(|| ApiError::not_found("file_not_found", "no such file"))?;
    // Only a path the recorder wrote under its directory is ever served.
    let path = std::path::PathBuf::from(&file.path);
    if !path.starts_with(state.recorder.dir()) || !path.is_file() {
        return Err(ApiError::not_found("file_not_found", "the file is gone"));
    }
    let content_type = HeaderValue::from_str(&file.content_type).map_err(ApiError::internal)?;
    let mut response = tower_http::services::ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(ApiError::internal)?
        .map(Body::new);
    // ServeFile guesses from the extension; the row says what was written.
    if response.status().is_success() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/meetings/{id}/stats",
    tag = "recordings",
    params(("id" = String, Path, description = "meeting id or code")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "attendance and chat statistics", body = MeetingStats),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "neither host nor moderator"),
        (status = 404, description = "meeting_not_found"),
    )
)]
async fn stats(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MeetingStats>, ApiError> {
    let caller = MeetingCaller::resolve(&state, &user, &id).await?;
    caller.require_moderator()?;
    let meeting_id = caller.meeting.id.as_str();
    let rows = state.store.meeting_participants(meeting_id, None).await?;
    let messages_total = state.store.count_messages(meeting_id).await?;
    Ok(Json(meeting_stats(
        &caller.meeting,
        &rows,
        messages_total,
        now_ms(),
    )))
}

#[derive(OpenApi)]
#[openapi(
    paths(
        start_recording,
        stop_recording,
        list_recordings,
        show_recording,
        delete_recording,
        download_file,
        stats
    ),
    components(schemas(
        RecordingInfo,
        RecordingFileInfo,
        RecordingList,
        StartRecording,
        MeetingStats
    ))
)]
struct Doc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/meetings/{id}/recordings",
            get(list_recordings).post(start_recording),
        )
        .route(
            "/meetings/{id}/recordings/{recording_id}",
            get(show_recording).delete(delete_recording),
        )
        .route(
            "/meetings/{id}/recordings/{recording_id}/stop",
            post(stop_recording),
        )
        .route(
            "/meetings/{id}/recordings/{recording_id}/files/{file_id}",
            get(download_file),
        )
        .route("/meetings/{id}/stats", get(stats))
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meeting(started_at: Option<i64>, ended_at: Option<i64>) -> Meeting {
        Meeting {
            started_at,
            ended_at,
            ..Meeting::sample("m", "h")
        }
    }

    fn row(identity: &str, joined_at: Option<i64>, left_at: Option<i64>) -> Participant {
        Participant {
            id: format!("p-{identity}-{joined_at:?}"),
            meeting_id: "m".into(),
            user_id: None,
            identity: identity.into(),
            display_name: identity.into(),
            role: "participant".into(),
            status: if left_at.is_some() { "left" } else { "joined" }.into(),
            mic_muted: false,
            camera_off: false,
            joined_at,
            left_at,
            created_at: 0,
        }
    }

    #[test]
    fn peak_and_totals() {
        let rows = [
            row("a", Some(0), Some(600_000)),
            row("b", Some(300_000), Some(900_000)),
            // Joins exactly as `a` leaves: no overlap with `a`, so the peak stays 2.
            row("c", Some(600_000), Some(1_200_000)),
            // A second join of `a`, open: ends at now (1_500_000).
            row("a", Some(1_400_000), None),
            // Never admitted: counts for nothing.
            row("w", None, None),
        ];
        let stats = meeting_stats(&meeting(Some(0), None), &rows, 7, 1_500_000);
        assert_eq!(stats.participants_total, 3);
        assert_eq!(stats.peak_concurrent, 2);
        // 600 + 600 + 600 + 100 s of presence.
        assert!((stats.total_participant_minutes - 1_900_000.0 / 60_000.0).abs() < 1e-9);
        assert!((stats.average_duration_seconds - 1_900.0 / 3.0).abs() < 1e-9);
        assert_eq!(stats.duration_seconds, 1_500);
        assert_eq!(stats.messages_total, 7);
    }

    #[test]
    fn never_started_and_ended_meetings() {
        let empty = meeting_stats(&meeting(None, None), &[], 0, 1_000);
        assert_eq!(
            (
                empty.participants_total,
                empty.peak_concurrent,
                empty.duration_seconds
            ),
            (0, 0, 0)
        );
        assert_eq!(empty.average_duration_seconds, 0.0);
        // An open join of an ended meeting ends with the meeting, not now.
        let ended = meeting_stats(
            &meeting(Some(0), Some(60_000)),
            &[row("a", Some(0), None)],
            0,
            10_000_000,
        );
        assert_eq!(ended.duration_seconds, 60);
        assert!((ended.total_participant_minutes - 1.0).abs() < 1e-9);
    }
}
