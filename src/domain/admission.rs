//! Whether a join token may still open media in its room *now*: the one check every new media
//! session passes (WHIP, WHEP, a WebSocket join, a renegotiation that adds a publication).
//!
//! A token proves what the server granted when it signed it; the meeting may have changed since.
//! A token of a meeting room is refused when the meeting ended, when its identity is banned, and
//! when the participant row it was issued for (`pid`) is no longer `joined` (kicked, left, or
//! replaced by a newer join of the same account). Tokens of rooms that are not meetings
//! (`convene token create --room demo`) are the operator's own and pass.
//!
//! Never imports the web framework: callers map [`MediaAccessError`] to HTTP or signaling.

use crate::domain::meetings::is_closed;
use crate::domain::token::JoinClaims;
use crate::store::participants::Participant;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MediaAccessError {
    #[error("the meeting has ended")]
    MeetingEnded,
    #[error("you are banned from this meeting")]
    Banned,
    #[error("you were removed from this meeting")]
    Kicked,
    #[error("you are in the waiting room")]
    NotAdmitted,
    /// The seat the token was issued for was given up or taken over by a newer join.
    #[error("the seat this token was issued for is no longer held; join the meeting again")]
    SeatGone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The current seat of the token's identity when its room is a meeting (`None` for standalone
/// rooms, and for operator tokens of a meeting whose identity has no seat), or why the token may
/// open no media now.
pub async fn check(
    store: &Store,
    claims: &JoinClaims,
) -> Result<Option<Participant>, MediaAccessError> {
    let meeting = match store.meeting(&claims.room).await {
        // `meeting()` also matches codes; a room is a meeting only by its id.
        Ok(meeting) if meeting.id == claims.room => meeting,
        Ok(_) | Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if is_closed(&meeting.status) {
        return Err(MediaAccessError::MeetingEnded);
    }
    if store.is_banned(&meeting.id, &claims.sub).await? {
        return Err(MediaAccessError::Banned);
    }
    let seat = match &claims.pid {
        Some(pid) => match store.participant(&meeting.id, pid).await {
            Ok(seat) if seat.identity == claims.sub => seat,
            Ok(_) | Err(StoreError::NotFound) => return Err(MediaAccessError::SeatGone),
            Err(e) => return Err(e.into()),
        },
        // A token signed without a seat (by the operator's CLI): the identity's latest seat, if
        // it has one, still decides a kick.
        None => match store
            .latest_seat_of_identity(&meeting.id, &claims.sub)
            .await?
        {
            Some(seat) if seat.status == "kicked" => return Err(MediaAccessError::Kicked),
            other => return Ok(other),
        },
    };
    match seat.status.as_str() {
        "joined" => Ok(Some(seat)),
        "kicked" => Err(MediaAccessError::Kicked),
        "waiting" => Err(MediaAccessError::NotAdmitted),
        _ => Err(MediaAccessError::SeatGone),
    }
}
