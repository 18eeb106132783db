//! RTP forwards of a live meeting's tracks to external pipelines (ffmpeg, GStreamer): start one
//! (with the SDP that opens it), list them, stop one. Same callers as recordings: the host, a
//! moderator, or a join token with the `record` grant.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::extract::ApiJson;
use super::moderation::time;
use super::recordings::RecordingCaller;
use super::ApiError;
use crate::domain::meetings::Status;
use crate::http_error::FieldError;
use crate::recording::rtp_forward::{self, ForwardError, ForwardTarget, ForwardView};
use crate::sfu::MediaKind;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRtpForward {
    /// Whose track: with `kind`, their camera (`video`) or microphone (`audio`).
    pub participant_id: Option<String>,
    /// `audio` or `video`, with `participant_id`.
    pub kind: Option<String>,
    /// Or the track itself (its `track_id` in `track_published`).
    pub track_id: Option<String>,
    /// An IP address inside `rtp_forward_allowed_networks` (default: loopback).
    pub host: String,
    pub port: u16,
    /// Encrypt with SRTP (`AES_CM_128_HMAC_SHA1_80`); the key is returned and in the SDP.
    #[serde(default)]
    pub srtp: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RtpForwardInfo {
    pub id: String,
    pub participant_id: String,
    pub track_id: String,
    /// `audio` or `video`.
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub ssrc: u32,
    pub payload_type: u8,
    /// The track's codec, e.g. `video/VP8`.
    pub codec: String,
    /// Save as `stream.sdp` and open it: `ffmpeg -protocol_whitelist file,udp,rtp -i stream.sdp`.
    pub sdp: String,
    /// SRTP master key and salt, base64 (also in the SDP's `a=crypto` line).
    pub srtp_key: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RtpForwardList {
    pub items: Vec<RtpForwardInfo>,
}

fn info(view: ForwardView) -> RtpForwardInfo {
    RtpForwardInfo {
        id: view.id,
        participant_id: view.participant_id,
        track_id: view.track_id.to_string(),
        kind: match view.kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
        .to_owned(),
        host: view.destination.ip().to_string(),
        port: view.destination.port(),
        ssrc: view.ssrc,
        payload_type: view.payload_type,
        codec: view.codec,
        sdp: view.sdp,
        srtp_key: view.srtp_key,
        created_at: time(view.created_at),
    }
}

#[utoipa::path(
    post,
    path = "/meetings/{id}/rtp-forwards",
    tag = "recordings",
    params(("id" = String, Path, description = "meeting id or code")),
    request_body = NewRtpForward,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "forwarding; a keyframe was asked for", body = RtpForwardInfo),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found, track_not_found"),
        (status = 409, description = "meeting_not_live, too_many_forwards"),
        (status = 422, description = "invalid fields; a host outside the allowed networks"),
    )
)]
async fn start_forward(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewRtpForward>,
) -> Result<(StatusCode, Json<RtpForwardInfo>), ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    let mut problems = Vec::new();
    let ip: Option<IpAddr> = body.host.parse().ok();
    match ip {
        None => problems.push(FieldError::new("host", "must be an IP address")),
        Some(ip) if !rtp_forward::allowed(ip, &state.config.rtp_forward_allowed_networks) => {
            problems.push(FieldError::new(
                "host",
                "is outside the networks RTP forwards may reach (rtp_forward_allowed_networks)",
            ))
        }
        Some(_) => {}
    }
    if body.port == 0 {
        problems.push(FieldError::new("port", "must be 1 to 65535"));
    }
    let kind = match body.kind.as_deref() {
        None => None,
        Some("audio") => Some(MediaKind::Audio),
        Some("video") => Some(MediaKind::Video),
        Some(_) => {
            problems.push(FieldError::new("kind", "must be audio or video"));
            None
        }
    };
    match (&body.track_id, &body.participant_id, kind) {
        (Some(_), None, None) | (None, Some(_), Some(_)) => {}
        _ => problems.push(FieldError::new(
            "track_id",
            "give either track_id, or participant_id with kind",
        )),
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    if caller.meeting.status != Status::Live.as_str() {
        return Err(ApiError::conflict(
            "meeting_not_live",
            "only a live meeting's tracks can be forwarded",
        ));
    }
    let tracks = state.live.tracks(caller.meeting.id.clone()).await;
    let found = tracks.into_iter().find(|t| match (&body.track_id, kind) {
        (Some(track_id), _) => t.track.to_string() == *track_id,
        (None, Some(kind)) => {
            Some(&t.participant_id) == body.participant_id.as_ref()
                && t.kind == kind
                && matches!(t.source, "camera" | "microphone")
        }
        _ => false,
    });
    let Some(track) = found else {
        return Err(ApiError::not_found(
            "track_not_found",
            "no such track is published in this meeting",
        ));
    };
    let destination = SocketAddr::new(ip.expect("checked"), body.port);
    let target = ForwardTarget {
        meeting_id: caller.meeting.id.clone(),
        participant_id: track.participant_id,
        track: track.track,
        kind: track.kind,
    };
    let view = state
        .forwards
        .start(target, destination, body.srtp)
        .await
        .map_err(|e| match e {
            ForwardError::TooMany(n) => ApiError::conflict(
                "too_many_forwards",
                format!("this meeting already has {n} RTP forwards"),
            ),
            ForwardError::NoTrack => ApiError::not_found("track_not_found", "the track ended"),
            ForwardError::Codec(codec) => ApiError::validation(vec![FieldError::new(
                "track_id",
                format!("its codec {codec} cannot be forwarded"),
            )]),
            ForwardError::Io(e) => ApiError::internal(e),
        })?;
    Ok((StatusCode::CREATED, Json(info(view))))
}

#[utoipa::path(
    get,
    path = "/meetings/{id}/rtp-forwards",
    tag = "recordings",
    params(("id" = String, Path, description = "meeting id or code")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the meeting's running RTP forwards", body = RtpForwardList),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found"),
    )
)]
async fn list_forwards(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RtpForwardList>, ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    let items = state
        .forwards
        .list(&caller.meeting.id)
        .into_iter()
        .map(info)
        .collect();
    Ok(Json(RtpForwardList { items }))
}

#[utoipa::path(
    delete,
    path = "/meetings/{id}/rtp-forwards/{forward_id}",
    tag = "recordings",
    params(
        ("id" = String, Path, description = "meeting id or code"),
        ("forward_id" = String, Path, description = "forward id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "stopped"),
        (status = 401, description = "no or bad token"),
        (status = 403, description = "neither host, moderator nor a join token with the record grant"),
        (status = 404, description = "meeting_not_found, forward_not_found"),
    )
)]
async fn stop_forward(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, forward_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let caller = RecordingCaller::resolve(&state, &headers, &id).await?;
    if state.forwards.stop(&caller.meeting.id, &forward_id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "forward_not_found",
            "no such RTP forward",
        ))
    }
}

#[derive(OpenApi)]
#[openapi(
    paths(start_forward, list_forwards, stop_forward),
    components(schemas(NewRtpForward, RtpForwardInfo, RtpForwardList))
)]
struct Doc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/meetings/{id}/rtp-forwards",
            get(list_forwards).post(start_forward),
        )
        .route(
            "/meetings/{id}/rtp-forwards/{forward_id}",
            delete(stop_forward),
        )
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}
