//! Whether a join token may still open media in its room *now*: the one check every new media
//! session passes (WHIP, WHEP, a WebSocket join, a renegotiation that adds a publication).
//!
//! A token proves what the server granted when it signed it; the meeting may have changed since.
//! A token of a meeting room is refused when the meeting ended, when its identity is banned, and
//! when the participant row it was issued for (`pid`) is no longer `joined` (kicked, left, or
//! replaced by a newer join of the same account). Tokens of rooms that are not meetings
//! (`convene token create --room demo`) are the operator's own and pass.
//!
//! It also chooses the limits the new session is admitted to its room under ([`room_limits`]):
//! capacity is policy, decided here; the SFU only counts.
//!
//! Never imports the web framework: callers map [`MediaAccessError`] to HTTP or signaling.

use crate::config::Config;
use crate::domain::meetings::is_closed;
use crate::domain::token::JoinClaims;
use crate::sfu::RoomLimits;
use crate::store::meetings::Meeting;
use crate::store::participants::Participant;
use crate::store::{Store, StoreError};

/// What a token may open now: under which limits, and as which seat.
#[derive(Debug)]
pub struct Admitted {
    /// The identity's current seat in a meeting room (`None` for standalone rooms, and for
    /// operator tokens of a meeting whose identity has no seat).
    pub seat: Option<Participant>,
    pub limits: RoomLimits,
}

/// A room's limits: the server's (`max_participants`, `max_viewers_per_room`,
/// `max_sessions_per_identity`), and for a meeting its own `max_participants` when lower.
pub fn room_limits(config: &Config, meeting: Option<&Meeting>) -> RoomLimits {
    let own = meeting
        .map(|m| usize::try_from(m.settings.max_participants.max(1)).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX);
    RoomLimits {
        participants: config.max_participants.min(own),
        viewers: config.max_viewers_per_room,
        sessions_per_identity: config.max_sessions_per_identity,
    }
}

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

/// What the token may open now ([`Admitted`]), or why it may open no media.
pub async fn check(
    store: &Store,
    config: &Config,
    claims: &JoinClaims,
) -> Result<Admitted, MediaAccessError> {
    let meeting = match store.meeting(&claims.room).await {
        // `meeting()` also matches codes; a room is a meeting only by its id.
        Ok(meeting) if meeting.id == claims.room => meeting,
        Ok(_) | Err(StoreError::NotFound) => {
            return Ok(Admitted {
                seat: None,
                limits: room_limits(config, None),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let limits = room_limits(config, Some(&meeting));
    let admitted = |seat| Ok(Admitted { seat, limits });
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
            other => return admitted(other),
        },
    };
    match seat.status.as_str() {
        "joined" => admitted(Some(seat)),
        "kicked" => Err(MediaAccessError::Kicked),
        "waiting" => Err(MediaAccessError::NotAdmitted),
        _ => Err(MediaAccessError::SeatGone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meeting_tightens_the_servers_limits_never_loosens_them() {
        let config = Config {
            max_participants: 50,
            ..Config::default()
        };
        let standalone = room_limits(&config, None);
        assert_eq!(standalone.participants, 50);
        assert_eq!(standalone.viewers, config.max_viewers_per_room);
        assert_eq!(
            standalone.sessions_per_identity,
            config.max_sessions_per_identity
        );
        let meeting = |max: i64| {
            let mut meeting = Meeting::sample("m", "h");
            meeting.settings.max_participants = max;
            meeting
        };
        assert_eq!(room_limits(&config, Some(&meeting(8))).participants, 8);
        assert_eq!(room_limits(&config, Some(&meeting(500))).participants, 50);
        assert_eq!(room_limits(&config, Some(&meeting(0))).participants, 1);
    }
}
