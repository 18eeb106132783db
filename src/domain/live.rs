//! What the rest of the server tells the meetings that are live now: the interface REST uses to
//! reach connected participants, implemented by signaling (`signaling::rooms`). REST writes the
//! store and acts on the media first; these calls then tell the sockets. Recordings are the
//! exception: a meeting's room task owns its running recording, so REST asks it to start and
//! stop one and waits for the answer.

use std::future::Future;
use std::pin::Pin;

use crate::domain::roles::Role;
use crate::sfu::MediaKind;
use crate::store::chat::Message;
use crate::store::meetings::Meeting;
use crate::store::participants::Participant;
use crate::store::recordings::Recording;
use crate::store::StoreError;

/// A track published in a live meeting now.
#[derive(Debug, Clone)]
pub struct LiveTrack {
    pub participant_id: String,
    pub track: crate::ids::TrackId,
    /// `camera`, `microphone`, `screen` or `screen_audio`.
    pub source: &'static str,
    pub kind: MediaKind,
}

pub type LiveFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("a recording is already running in this meeting")]
    AlreadyRunning,
    #[error("no such recording is running")]
    NotRunning,
    #[error("the recordings disk is full")]
    DiskFull,
    #[error("the meeting is closed or the server is stopping")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
    /// Starts `recording` (a new row, `recording`) in its meeting: written, every participant
    /// told. Returns the row as stored.
    fn start_recording(
        &self,
        recording: Recording,
    ) -> LiveFuture<'_, Result<Recording, RecordingError>>;
    /// The tracks published in the meeting now (none when nobody is connected).
    fn tracks(&self, meeting_id: String) -> LiveFuture<'_, Vec<LiveTrack>>;
    /// Stops the meeting's running recording `recording_id`; returns it `ready` or `failed`.
    fn stop_recording(
        &self,
        meeting_id: String,
        recording_id: String,
    ) -> LiveFuture<'_, Result<Recording, RecordingError>>;
    /// A view-only (WHEP) session of the meeting here watches `publisher` (or the latest one):
    /// with cascading, that publisher's tracks are relayed to this node while it lasts.
    fn viewer(&self, meeting_id: &str, session: crate::ids::PeerId, publisher: Option<String>);
}
