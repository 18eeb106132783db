//! Recordings metadata and meeting statistics, for the host and moderators.
//!
//! Statistics are computed here from the participant rows (one per join) rather than kept as
//! counters, so they are always consistent with the rows and need no bookkeeping on join/leave.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::extract::AuthUser;
use super::moderation::{time, MeetingCaller};
use super::ApiError;
use crate::state::AppState;
use crate::store::meetings::Meeting;
use crate::store::now_ms;
use crate::store::participants::Participant;
use crate::store::recordings::Recording;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordingInfo {
    pub id: String,
    /// `recording`, `processing`, `ready` or `failed`.
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub size_bytes: Option<i64>,
}

impl From<Recording> for RecordingInfo {
    fn from(r: Recording) -> Self {
        Self {
            id: r.id,
            status: r.status,
            started_at: r.started_at.map(time),
            ended_at: r.ended_at.map(time),
            duration_ms: r.duration_ms,
            size_bytes: r.size_bytes,
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

#[utoipa::path(
    get,
    path = "/meetings/{id}/recordings",
    tag = "recordings",
    params(("id" = String, Path, description = "meeting id or code")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the meeting's recordings, oldest first", body = RecordingList),
        (status = 401, description = "no or bad access token"),
        (status = 403, description = "neither host nor moderator"),
        (status = 404, description = "meeting_not_found"),
    )
)]
async fn list_recordings(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<RecordingList>, ApiError> {
    let caller = MeetingCaller::resolve(&state, &user, &id).await?;
    caller.require_moderator()?;
    let rows = state.store.meeting_recordings(&caller.meeting.id).await?;
    Ok(Json(RecordingList {
        items: rows.into_iter().map(RecordingInfo::from).collect(),
    }))
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
    paths(list_recordings, stats),
    components(schemas(RecordingInfo, RecordingList, MeetingStats))
)]
struct Doc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/meetings/{id}/recordings", get(list_recordings))
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
