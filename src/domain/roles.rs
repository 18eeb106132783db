//! Meeting roles and what each may do (the permission matrix of the product seeds), and the
//! media grants a join token carries for a role in a meeting.

use serde::{Deserialize, Serialize};

use super::token::Grants;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Guest,
    Participant,
    Moderator,
    Host,
}

/// Everything a role may or may not be allowed to do in a meeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    MuteOthers,
    RemoveParticipants,
    ManageRecording,
    ManageWaitingRoom,
    ShareScreen,
    ShareFiles,
    ChangeRoles,
    EndMeeting,
    ManageMeeting,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
            Role::Host => "host",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "guest" => Some(Role::Guest),
            "participant" => Some(Role::Participant),
            "moderator" => Some(Role::Moderator),
            "host" => Some(Role::Host),
            _ => None,
        }
    }

    /// The permission matrix: host all; moderator mutes, removes, records and runs the waiting
    /// room; participant shares screen and files; guest none of these.
    pub fn can(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Host => true,
            Role::Moderator => matches!(
                action,
                MuteOthers
                    | RemoveParticipants
                    | ManageRecording
                    | ManageWaitingRoom
                    | ShareScreen
                    | ShareFiles
            ),
            Role::Participant => matches!(action, ShareScreen | ShareFiles),
            Role::Guest => false,
        }
    }

    /// Whether `self` may apply `action` to a participant holding `target`: the action must be
    /// allowed and the target must rank strictly lower (nobody moderates the host).
    pub fn can_act_on(self, action: Action, target: Role) -> bool {
        self.can(action) && self > target
    }

    pub fn is_moderator(self) -> bool {
        self >= Role::Moderator
    }
}

/// The meeting settings that shape grants.
#[derive(Debug, Clone, Copy)]
pub struct GrantSettings {
    pub chat: bool,
    pub screen_share: bool,
    pub recording: bool,
}

/// The media grants of a join token for `role` under `settings`.
pub fn grants_for(role: Role, settings: GrantSettings) -> Grants {
    let mut publish_sources = vec!["camera".to_owned(), "microphone".to_owned()];
    if settings.screen_share && role.can(Action::ShareScreen) {
        publish_sources.push("screen".to_owned());
        publish_sources.push("screen_audio".to_owned());
    }
    Grants {
        publish: true,
        subscribe: true,
        publish_sources,
        chat: settings.chat,
        moderate: role.is_moderator(),
        record: settings.recording && role.can(Action::ManageRecording),
        role: Some(role.as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix() {
        assert!(Role::Host.can(Action::EndMeeting));
        assert!(
            Role::Moderator.can(Action::MuteOthers) && !Role::Moderator.can(Action::ChangeRoles)
        );
        assert!(
            Role::Participant.can(Action::ShareScreen)
                && !Role::Participant.can(Action::MuteOthers)
        );
        assert!(!Role::Guest.can(Action::ShareScreen) && !Role::Guest.can(Action::ShareFiles));
        assert!(Role::Moderator.can_act_on(Action::RemoveParticipants, Role::Participant));
        assert!(!Role::Moderator.can_act_on(Action::RemoveParticipants, Role::Host));
        assert!(!Role::Moderator.can_act_on(Action::RemoveParticipants, Role::Moderator));
    }

    #[test]
    fn grants_follow_role_and_settings() {
        let open = GrantSettings {
            chat: true,
            screen_share: true,
            recording: true,
        };
        let guest = grants_for(Role::Guest, open);
        assert!(
            !guest.publish_sources.contains(&"screen".to_owned())
                && !guest.moderate
                && !guest.record
        );
        let host = grants_for(Role::Host, open);
        assert!(
            host.publish_sources.contains(&"screen".to_owned()) && host.moderate && host.record
        );
        let closed = GrantSettings {
            chat: false,
            screen_share: false,
            recording: false,
        };
        let host = grants_for(Role::Host, closed);
        assert!(!host.chat && !host.record && !host.publish_sources.contains(&"screen".to_owned()));
    }
}
