//! Moderation that REST (`api::moderation`, `api::meetings`) and WebSocket signaling share: who
//! may act on whom, and the effects of kick (and ban), mute, role changes, the waiting room and
//! ending a meeting, in the database and then on the media. Never imports the web framework.
//!
//! The database is the source of truth: it changes first, and an SFU that cannot be reached is
//! logged, not an error. Telling live sockets is the caller's part (`signaling::Signaling`).

use super::roles::{Action, Role};
use crate::ids::{ParticipantId, RoomId};
use crate::sfu::{MediaKind, Sfu};
use crate::store::meetings::Meeting;
use crate::store::moderation::MuteFlag;
use crate::store::participants::Participant;
use crate::store::{now_ms, Store, StoreError};

/// Why a moderation request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    #[error("no such participant in this meeting")]
    ParticipantNotFound,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("this participant is not in the waiting room")]
    NotWaiting,
    #[error("the meeting has ended or was cancelled")]
    MeetingClosed,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The role a participant row ranks as when someone acts on it: the host's rows always rank as
/// host, and a role the code does not know ranks as host too, so nobody can act on it by mistake.
pub fn rank_of(meeting: &Meeting, target: &Participant) -> Role {
    if target.user_id.as_deref() == Some(meeting.host_id.as_str()) {
        return Role::Host;
    }
    Role::parse(&target.role).unwrap_or(Role::Host)
}

/// `actor` may do `action` to a participant ranked `target`: the action is allowed and the
/// target ranks strictly lower.
pub fn check_act_on(actor: Role, action: Action, target: Role) -> Result<(), ModerationError> {
    if !actor.can(action) {
        return Err(ModerationError::Forbidden(
            "your role in this meeting does not allow this",
        ));
    }
    if !actor.can_act_on(action, target) {
        return Err(ModerationError::Forbidden(
            "you may only act on participants of a lower role",
        ));
    }
    Ok(())
}

pub async fn find_participant(
    store: &Store,
    meeting_id: &str,
    participant_id: &str,
) -> Result<Participant, ModerationError> {
    match store.participant(meeting_id, participant_id).await {
        Ok(participant) => Ok(participant),
        Err(StoreError::NotFound) => Err(ModerationError::ParticipantNotFound),
        Err(other) => Err(other.into()),
    }
}

/// What a moderator's mute of `source` sets and stops. The SFU mutes by kind, so a camera or
/// screen mute stops every video track, a microphone or screen-audio mute every audio track.
pub fn mute_target(source: &str) -> Option<(MuteFlag, MediaKind)> {
    match source {
        "microphone" | "screen_audio" => Some((MuteFlag::Microphone, MediaKind::Audio)),
        "camera" | "screen" => Some((MuteFlag::Camera, MediaKind::Video)),
        _ => None,
    }
}

/// Removes `target` (every live row of its identity becomes `kicked`; with `ban` it may not
/// rejoin) and closes its media connections.
pub async fn kick(
    store: &Store,
    sfu: &Sfu,
    meeting_id: &str,
    target: &Participant,
    ban: bool,
) -> Result<(), StoreError> {
    store
        .kick_participant(meeting_id, target, ban, now_ms())
        .await?;
    let closed = sfu
        .close_participant(
            RoomId(meeting_id.to_owned()),
            ParticipantId(target.identity.clone()),
        )
        .await;
    match closed {
        Ok(peers) => {
            tracing::info!(meeting = %meeting_id, participant = %target.id, ban, peers, "participant kicked")
        }
        Err(e) => {
            tracing::warn!(meeting = %meeting_id, participant = %target.id, error = %e, "kick not applied to media")
        }
    }
    Ok(())
}

/// Mutes `target`'s `flag` in the database and stops forwarding its tracks of `kind`.
pub async fn mute(
    store: &Store,
    sfu: &Sfu,
    meeting_id: &str,
    target: &Participant,
    flag: MuteFlag,
    kind: MediaKind,
) -> Result<(), StoreError> {
    store.mute_participant(meeting_id, &target.id, flag).await?;
    let applied = sfu
        .set_muted(
            RoomId(meeting_id.to_owned()),
            ParticipantId(target.identity.clone()),
            kind,
            true,
        )
        .await;
    match applied {
        Ok(tracks) => {
            tracing::info!(meeting = %meeting_id, participant = %target.id, ?kind, tracks, "participant muted")
        }
        Err(e) => {
            tracing::warn!(meeting = %meeting_id, participant = %target.id, error = %e, "mute not applied to media")
        }
    }
    Ok(())
}

/// Parses the role a moderator may give: anything but host.
pub fn assignable_role(text: &str) -> Result<Role, ModerationError> {
    Role::parse(text)
        .filter(|r| *r != Role::Host)
        .ok_or(ModerationError::Invalid {
            field: "role",
            message: "must be one of moderator, participant, guest",
        })
}

/// Admits (`joined`) or denies (`denied`) a waiting participant; NotWaiting when it was not
/// waiting (any more).
pub async fn resolve_waiting(
    store: &Store,
    meeting_id: &str,
    target: &Participant,
    admit: bool,
) -> Result<(), ModerationError> {
    let changed = target.status == "waiting"
        && store
            .resolve_waiting(meeting_id, &target.id, admit, now_ms())
            .await?;
    if changed {
        Ok(())
    } else {
        Err(ModerationError::NotWaiting)
    }
}

/// Ends (`ended`) or cancels (`cancelled`) the meeting: every participant row is marked left and
/// their media closed. MeetingClosed when it had ended already.
pub async fn close_meeting(
    store: &Store,
    sfu: &Sfu,
    meeting_id: &str,
    status: &str,
) -> Result<(), ModerationError> {
    if !store.close_meeting(meeting_id, status, now_ms()).await? {
        return Err(ModerationError::MeetingClosed);
    }
    // Every peer of the room, not only those of joined seats: WHIP/WHEP sessions opened with
    // operator tokens, or by seats that left meanwhile, end with the meeting too.
    match sfu.close_room(RoomId(meeting_id.to_owned())).await {
        Ok(peers) => tracing::info!(meeting = %meeting_id, status, peers, "meeting closed"),
        // The rows are closed already; a peer the engine cannot close times out by itself.
        Err(e) => tracing::warn!(meeting = %meeting_id, error = %e, "closing media failed"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mute_sources_map_to_kinds() {
        assert_eq!(
            mute_target("screen"),
            Some((MuteFlag::Camera, MediaKind::Video))
        );
        assert_eq!(
            mute_target("screen_audio"),
            Some((MuteFlag::Microphone, MediaKind::Audio))
        );
        assert!(mute_target("nose").is_none());
    }

    #[test]
    fn acting_needs_the_action_and_a_higher_rank() {
        assert!(check_act_on(Role::Moderator, Action::MuteOthers, Role::Participant).is_ok());
        assert!(check_act_on(Role::Moderator, Action::MuteOthers, Role::Moderator).is_err());
        assert!(check_act_on(Role::Participant, Action::MuteOthers, Role::Guest).is_err());
        assert!(check_act_on(Role::Host, Action::ChangeRoles, Role::Moderator).is_ok());
        assert!(assignable_role("host").is_err());
        assert_eq!(assignable_role("guest").unwrap(), Role::Guest);
    }
}
