//! What the rest of the server tells the meetings that are live now: the interface REST uses to
//! reach connected participants, implemented by signaling (`signaling::rooms`). REST writes the
//! store and acts on the media first; these calls then tell the sockets.

use crate::domain::roles::Role;
use crate::sfu::MediaKind;
use crate::store::chat::Message;
use crate::store::meetings::Meeting;
use crate::store::participants::Participant;

pub trait LiveMeetings: Send + Sync {
    /// A participant was removed (and banned, if `banned`) by `by`.
    fn kicked(&self, meeting_id: &str, target: &Participant, banned: bool, by: Option<String>);
    fn muted(&self, meeting_id: &str, participant_id: &str, kind: MediaKind, by: Option<String>);
    fn role_changed(&self, meeting_id: &str, participant_id: &str, role: Role);
    /// A participant asked to join and waits for a moderator.
    fn waiting(&self, meeting_id: &str, participant: &Participant);
    /// A waiting participant was admitted or denied.
    fn waiting_resolved(&self, meeting_id: &str, participant_id: &str, admitted: bool);
    fn meeting_ended(&self, meeting_id: &str, by: Option<String>);
    fn meeting_updated(&self, meeting: &Meeting);
    fn chat_posted(&self, message: &Message);
}
