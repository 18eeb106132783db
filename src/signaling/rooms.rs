//! The directory of live meetings: which meetings have a room task now ([`super::room`]), and
//! the one way to reach it. Sessions, waiting sockets, REST moderation and the SFU's room
//! events all go through [`Signaling`], which opens a meeting's task on its first member,
//! waiting socket or countdown; the task lets itself go when it has none of them.
//!
//! A std mutex guards the directory: held only to find, open or close a room and to queue a
//! command on its unbounded channel, never across an await. Commands are queued under it, so a
//! room that closes (under the same lock, once its queue is empty) never loses one: a command
//! for a closed room opens a new one or finds nobody to tell.

use crate::domain::live::{LiveFuture, RecordingError};
use crate::store::recordings::Recording;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::protocol::{ParticipantView, ServerMessage, Source, WaitingView};
use super::room::{self, Closed, Command, Room, Snapshot};
use super::session::Input;
use crate::domain::roles::Role;
use crate::sfu::{MediaKind, Sfu, SfuEvent};
use crate::store::chat::Message;
use crate::store::meetings::Meeting;
use crate::store::participants::Participant;
use crate::store::{Store, StoreError};

/// A message serialized once for every socket it goes to.
pub type Frame = Arc<str>;

pub fn frame(message: &ServerMessage) -> Frame {
    Arc::from(message.to_text())
}

/// What a waiting-room socket is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitEvent {
    Admitted,
    Denied,
    Kicked { banned: bool },
    MeetingEnded,
    Shutdown,
}

/// What room tasks use beyond their own state.
/// How long a REST stop waits for a recording running on another node of the meeting to stop.
const STOP_ELSEWHERE_WAIT: Duration = Duration::from_secs(10);

pub struct Services {
    pub store: Store,
    pub sfu: Sfu,
    pub recorder: crate::recording::Recorder,
    /// `meeting_empty_timeout`: how long a live meeting stays up with nobody connected; zero
    /// never ends one.
    pub empty_timeout: Duration,
    /// Cluster mode: this node's id (a meeting with seats joined through other nodes is not
    /// empty, whatever this node's room task sees).
    pub node_id: Option<String>,
    /// Cascading (`cluster_cascade`): a meeting spreads over the nodes its participants reach.
    pub cascade: Option<Arc<super::cascade::Settings>>,
}

#[derive(Clone)]
pub struct Signaling {
    inner: Arc<Inner>,
}

struct Inner {
    directory: Mutex<Directory>,
    services: Arc<Services>,
    /// Set when the server stops: nobody registers, sessions ending start no countdown.
    stopping: AtomicBool,
    next_waiter: AtomicU64,
    /// Cascading: view-only sessions' meetings, to tell the room when one closes.
    viewers: Mutex<HashMap<crate::ids::PeerId, String>>,
}

#[derive(Default)]
struct Directory {
    rooms: HashMap<String, Entry>,
    next_room: u64,
}

struct Entry {
    /// Tells this task from a later one of the same meeting.
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
}

/// Removes a waiting socket's registration when dropped.
pub struct WaitingGuard {
    signaling: Signaling,
    meeting_id: String,
    participant_id: String,
    id: u64,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.signaling.tell(
            &self.meeting_id,
            Command::Unwait {
                participant_id: std::mem::take(&mut self.participant_id),
                id: self.id,
            },
        );
    }
}

impl Signaling {
    pub fn new(services: Services) -> Self {
        Self {
            inner: Arc::new(Inner {
                directory: Mutex::default(),
                services: Arc::new(services),
                stopping: AtomicBool::new(false),
                next_waiter: AtomicU64::new(0),
                viewers: Mutex::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Directory> {
        // A panic while holding the lock cannot leave the map half-updated in a harmful way.
        self.inner
            .directory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn viewers(&self) -> std::sync::MutexGuard<'_, HashMap<crate::ids::PeerId, String>> {
        self.inner
            .viewers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Queues `command` for the meeting's room; with `open`, opens the room if it has none.
    /// Returns whether a room took it.
    fn send(&self, meeting_id: &str, command: Command, open: bool) -> bool {
        let mut directory = self.lock();
        let command = match directory.rooms.get(meeting_id) {
            Some(entry) => match entry.commands.send(command) {
                Ok(()) => return true,
                // The task is gone without closing its entry (it panicked): a new one serves.
                Err(mpsc::error::SendError(command)) => {
                    tracing::error!(meeting = %meeting_id, "room task died; opening a new one");
                    directory.rooms.remove(meeting_id);
                    command
                }
            },
            None => command,
        };
        if !open {
            return false;
        }
        // Commands come from tasks; outside a runtime there is nothing to run a room on.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        directory.next_room += 1;
        let id = directory.next_room;
        let (commands, receiver) = mpsc::unbounded_channel();
        let _ = commands.send(command);
        directory
            .rooms
            .insert(meeting_id.to_owned(), Entry { id, commands });
        let room = Room::new(
            meeting_id.to_owned(),
            id,
            self.clone(),
            self.inner.services.clone(),
        );
        runtime.spawn(room::run(room, receiver));
        true
    }

    /// Tells the meeting's room, if it has one (else nobody is there to tell).
    fn tell(&self, meeting_id: &str, command: Command) {
        self.send(meeting_id, command, false);
    }

    pub(super) fn tell_room(&self, meeting_id: &str, command: Command) {
        self.tell(meeting_id, command);
    }

    /// Whether a meeting spreads over the nodes its participants reach (`cluster_cascade`).
    pub fn cascading(&self) -> bool {
        self.inner.services.cascade.is_some()
    }

    /// A member (un)subscribes from a track: recorded for relays. True when the track is a
    /// remote one (the SFU knows it only while it is relayed here).
    pub(crate) async fn subscription(
        &self,
        meeting_id: &str,
        participant_id: &str,
        track: crate::ids::TrackId,
        subscribed: bool,
    ) -> bool {
        let participant_id = participant_id.to_owned();
        self.ask(meeting_id, false, |reply| Command::Subscription {
            participant_id,
            track,
            subscribed,
            reply,
        })
        .await
        .unwrap_or(false)
    }

    /// A view-only (WHEP) session of the meeting on this node, watching `publisher` (or the
    /// latest one): with cascading, the publisher's tracks are relayed here while it lasts.
    pub(crate) fn viewer(
        &self,
        meeting_id: &str,
        session: crate::ids::PeerId,
        publisher: Option<String>,
    ) {
        if self.cascading() {
            self.viewers().insert(session, meeting_id.to_owned());
            self.send(
                meeting_id,
                Command::Viewer {
                    session,
                    publisher: Some(publisher),
                },
                true,
            );
        }
    }

    /// A session closed: if it was a view-only one, its room no longer relays for it.
    pub(crate) fn session_closed(&self, session: crate::ids::PeerId) {
        if !self.cascading() {
            return;
        }
        let meeting = self.viewers().remove(&session);
        if let Some(meeting_id) = meeting {
            self.tell(
                &meeting_id,
                Command::Viewer {
                    session,
                    publisher: None,
                },
            );
        }
    }

    /// Asks the meeting's room; `None` when it has no room (or the room did not answer).
    async fn ask<T>(
        &self,
        meeting_id: &str,
        open: bool,
        command: impl FnOnce(room::Reply<T>) -> Command,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        if !self.send(meeting_id, command(reply), open) {
            return None;
        }
        answer.await.ok()
    }

    /// Cascading: asks the meeting's other nodes, through its room here, to stop recording
    /// `recording_id`, and waits (a few seconds at most) for its row to say it stopped.
    async fn stop_elsewhere(&self, meeting_id: &str, recording_id: &str) -> Option<Recording> {
        let store = &self.inner.services.store;
        let running = |r: &Recording| r.status == "recording";
        if !store
            .recording(meeting_id, recording_id)
            .await
            .is_ok_and(|r| running(&r))
        {
            return None;
        }
        self.send(
            meeting_id,
            Command::StopRecordingElsewhere {
                recording_id: recording_id.to_owned(),
            },
            true,
        );
        let deadline = tokio::time::Instant::now() + STOP_ELSEWHERE_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match store.recording(meeting_id, recording_id).await {
                Ok(r) if !running(&r) => return Some(r),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Called by room `id` when it is idle: closes it unless a command is queued for it.
    pub(super) fn retire(
        &self,
        meeting_id: &str,
        id: u64,
        commands: &mpsc::UnboundedReceiver<Command>,
    ) -> bool {
        let mut directory = self.lock();
        if !commands.is_empty() {
            return false;
        }
        if directory.rooms.get(meeting_id).is_some_and(|e| e.id == id) {
            directory.rooms.remove(meeting_id);
        }
        true
    }

    /// The meetings with a room task now.
    pub fn meeting_ids(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Meetings with a room task now.
    pub fn open_rooms(&self) -> usize {
        self.lock().rooms.len()
    }

    // ---- sessions ---------------------------------------------------------------------------

    /// The session holding `identity` in the meeting, if any: its participant id and channel.
    pub(crate) async fn session_of_identity(
        &self,
        meeting_id: &str,
        identity: &str,
    ) -> Option<(String, mpsc::UnboundedSender<Input>)> {
        let identity = identity.to_owned();
        self.ask(meeting_id, false, |reply| Command::Lookup {
            identity,
            reply,
        })
        .await
        .flatten()
    }

    /// Adds a member and tells the others (`participant_joined`). Returns everyone else, for
    /// the newcomer's `joined`: a change is either in that list or reaches the newcomer as a
    /// message, since the room serves one command at a time.
    pub(crate) async fn register(
        &self,
        meeting_id: &str,
        view: ParticipantView,
        session: mpsc::UnboundedSender<Input>,
        subscriptions: super::cascade::Subscriptions,
    ) -> Result<Vec<ParticipantView>, Closed> {
        self.ask(meeting_id, true, |reply| Command::Register {
            view,
            session,
            subscriptions,
            reply,
        })
        .await
        .unwrap_or(Err(Closed))
    }

    /// Removes the member if `session` is still its session, and with a `reason` tells the
    /// others (`participant_left`). The last member of a meeting leaving starts its countdown.
    pub(crate) fn unregister(
        &self,
        meeting_id: &str,
        participant_id: &str,
        session: &mpsc::UnboundedSender<Input>,
        reason: Option<&'static str>,
    ) {
        self.tell(
            meeting_id,
            Command::Unregister {
                participant_id: participant_id.to_owned(),
                session: session.clone(),
                reason,
            },
        );
    }

    /// A member's current view, everyone else's, and the waiting sockets.
    pub(crate) async fn snapshot(
        &self,
        meeting_id: &str,
        participant_id: &str,
    ) -> Option<Snapshot> {
        let participant_id = participant_id.to_owned();
        self.ask(meeting_id, false, |reply| Command::Snapshot {
            participant_id,
            reply,
        })
        .await
        .flatten()
    }

    /// The sources the member's next offer sends, by client track id.
    pub(crate) fn sources(
        &self,
        meeting_id: &str,
        participant_id: &str,
        sources: HashMap<String, Source>,
    ) {
        self.tell(
            meeting_id,
            Command::Sources {
                participant_id: participant_id.to_owned(),
                sources,
            },
        );
    }

    /// The member's publisher connection, once the SFU answered its first offer.
    pub(crate) fn publisher(
        &self,
        meeting_id: &str,
        participant_id: &str,
        publisher: crate::ids::PeerId,
    ) {
        self.tell(
            meeting_id,
            Command::Publisher {
                participant_id: participant_id.to_owned(),
                publisher,
            },
        );
    }

    /// The participant muted or unmuted one of their own sources: stored, shown, applied.
    pub(crate) async fn set_muted(
        &self,
        meeting_id: &str,
        participant_id: &str,
        source: Source,
        muted: bool,
    ) -> Result<(), StoreError> {
        let participant_id = participant_id.to_owned();
        self.ask(meeting_id, false, |reply| Command::SetMuted {
            participant_id,
            source,
            muted,
            reply,
        })
        .await
        .unwrap_or(Ok(()))
    }

    pub(crate) fn set_hand(&self, meeting_id: &str, participant_id: &str, raised: bool) {
        self.tell(
            meeting_id,
            Command::SetHand {
                participant_id: participant_id.to_owned(),
                raised,
            },
        );
    }

    /// Sends `message` to every member, or every member but `except`.
    pub fn broadcast(&self, meeting_id: &str, message: &ServerMessage, except: Option<&str>) {
        self.tell(
            meeting_id,
            Command::Broadcast {
                frame: frame(message),
                except: except.map(str::to_owned),
            },
        );
    }

    /// One of the SFU's room events (tracks, speakers), for the meeting's room if it has one.
    pub fn media_event(&self, event: SfuEvent) {
        let meeting_id = match &event {
            SfuEvent::TrackPublished { room, .. }
            | SfuEvent::TrackUnpublished { room, .. }
            | SfuEvent::ActiveSpeakers { room, .. }
            | SfuEvent::RelayWish { room, .. } => room.0.clone(),
            _ => return,
        };
        // Cascading: a WHIP publisher's tracks open its room, which shares them with the
        // meeting's other nodes.
        let open = self.cascading() && matches!(event, SfuEvent::TrackPublished { .. });
        self.send(&meeting_id, Command::Media(event), open);
    }

    // ---- the waiting room -------------------------------------------------------------------

    /// Registers a waiting socket for the participant row (replacing an earlier socket of the
    /// same row) until the guard drops.
    pub(crate) fn wait(
        &self,
        meeting_id: &str,
        view: WaitingView,
        events: mpsc::UnboundedSender<WaitEvent>,
    ) -> WaitingGuard {
        let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed) + 1;
        let participant_id = view.participant_id.clone();
        self.send(meeting_id, Command::Wait { id, view, events }, true);
        WaitingGuard {
            signaling: self.clone(),
            meeting_id: meeting_id.to_owned(),
            participant_id,
            id,
        }
    }

    /// Someone entered the waiting room (a join answered 202): the moderators are told.
    pub fn announce_waiting(&self, meeting_id: &str, participant: &Participant) {
        self.tell(
            meeting_id,
            Command::AnnounceWaiting(WaitingView {
                participant_id: participant.id.clone(),
                display_name: participant.display_name.clone(),
                user_id: participant.user_id.clone(),
            }),
        );
    }

    // ---- what moderation (REST or WebSocket) tells live sessions ------------------------------

    /// A participant was removed (and maybe banned): their session ends, their waiting socket
    /// is told.
    pub fn kicked(&self, meeting_id: &str, target: &Participant, banned: bool, by: Option<String>) {
        self.tell(
            meeting_id,
            Command::Kicked {
                target: Box::new(target.clone()),
                banned,
                by,
            },
        );
    }

    /// A moderator muted every source of `kind` of the participant (the SFU already stopped
    /// forwarding them): everyone sees `media_state`.
    pub fn muted(
        &self,
        meeting_id: &str,
        participant_id: &str,
        kind: MediaKind,
        by: Option<String>,
    ) {
        self.tell(
            meeting_id,
            Command::Muted {
                participant_id: participant_id.to_owned(),
                kind,
                by,
            },
        );
    }

    /// A participant's role changed: everyone sees `participant_updated`; their session takes
    /// the new permissions.
    pub fn role_changed(&self, meeting_id: &str, participant_id: &str, role: Role) {
        self.tell(
            meeting_id,
            Command::RoleChanged {
                participant_id: participant_id.to_owned(),
                role,
            },
        );
    }

    /// A waiting participant was admitted or denied: their socket is told, and the moderators.
    pub fn waiting_resolved(&self, meeting_id: &str, participant_id: &str, admitted: bool) {
        self.tell(
            meeting_id,
            Command::WaitingResolved {
                participant_id: participant_id.to_owned(),
                admitted,
            },
        );
    }

    /// The meeting ended for everyone: every session is told and closed.
    pub fn meeting_ended(&self, meeting_id: &str, by: Option<String>) {
        self.tell(meeting_id, Command::MeetingEnded { by });
    }

    /// The meeting's details or settings changed: everyone sees `meeting_updated`.
    pub fn meeting_updated(&self, meeting: &Meeting) {
        // Cascading: the change reaches the meeting's other nodes through its room here, which
        // opens for it if nobody is connected here.
        self.send(
            &meeting.id,
            Command::MeetingUpdated(Box::new(meeting.clone())),
            self.cascading(),
        );
    }

    /// A chat message was stored (REST or socket): everyone sees `chat_message`.
    pub fn chat_posted(&self, message: &Message) {
        self.broadcast(
            &message.meeting_id,
            &ServerMessage::ChatMessage(super::session::chat_view(message)),
            None,
        );
    }

    /// A live meeting has nobody connected (after a restart): its countdown starts, unless a
    /// member joined meanwhile.
    pub fn meeting_is_empty(&self, meeting_id: &str) {
        self.send(meeting_id, Command::Empty, true);
    }

    /// The server is stopping: every socket is closed (1001), no countdown runs.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let directory = self.lock();
        for entry in directory.rooms.values() {
            let _ = entry.commands.send(Command::Shutdown);
        }
    }
}

/// REST reaches the live meetings through this (see `domain::live`).
impl crate::domain::live::LiveMeetings for Signaling {
    fn viewer(&self, meeting_id: &str, session: crate::ids::PeerId, publisher: Option<String>) {
        Signaling::viewer(self, meeting_id, session, publisher);
    }
    fn kicked(&self, meeting_id: &str, target: &Participant, banned: bool, by: Option<String>) {
        Signaling::kicked(self, meeting_id, target, banned, by);
    }
    fn muted(&self, meeting_id: &str, participant_id: &str, kind: MediaKind, by: Option<String>) {
        Signaling::muted(self, meeting_id, participant_id, kind, by);
    }
    fn role_changed(&self, meeting_id: &str, participant_id: &str, role: Role) {
        Signaling::role_changed(self, meeting_id, participant_id, role);
    }
    fn waiting(&self, meeting_id: &str, participant: &Participant) {
        Signaling::announce_waiting(self, meeting_id, participant);
    }
    fn waiting_resolved(&self, meeting_id: &str, participant_id: &str, admitted: bool) {
        Signaling::waiting_resolved(self, meeting_id, participant_id, admitted);
    }
    fn meeting_ended(&self, meeting_id: &str, by: Option<String>) {
        Signaling::meeting_ended(self, meeting_id, by);
    }
    fn meeting_updated(&self, meeting: &Meeting) {
        Signaling::meeting_updated(self, meeting);
    }
    fn chat_posted(&self, message: &Message) {
        Signaling::chat_posted(self, message);
    }
    fn start_recording(
        &self,
        recording: Recording,
    ) -> LiveFuture<'_, Result<Recording, RecordingError>> {
        Box::pin(async move {
            let meeting_id = recording.meeting_id.clone();
            self.ask(&meeting_id, true, |reply| Command::StartRecording {
                recording,
                reply,
            })
            .await
            .unwrap_or(Err(RecordingError::Closed))
        })
    }
    fn tracks(&self, meeting_id: String) -> LiveFuture<'_, Vec<crate::domain::live::LiveTrack>> {
        Box::pin(async move {
            self.ask(&meeting_id, false, |reply| Command::Tracks { reply })
                .await
                .unwrap_or_default()
        })
    }
    fn stop_recording(
        &self,
        meeting_id: String,
        recording_id: String,
    ) -> LiveFuture<'_, Result<Recording, RecordingError>> {
        Box::pin(async move {
            let here = self
                .ask(&meeting_id, false, |reply| Command::StopRecording {
                    recording_id: Some(recording_id.clone()),
                    reply,
                })
                .await;
            match here {
                Some(Ok(stopped)) => Ok(stopped),
                // Cascading: it may run on another node of the meeting (started by a socket or
                // by the meeting's setting there).
                other if self.cascading() => {
                    match self.stop_elsewhere(&meeting_id, &recording_id).await {
                        Some(stopped) => Ok(stopped),
                        None => other.unwrap_or(Err(RecordingError::NotRunning)),
                    }
                }
                other => other.unwrap_or(Err(RecordingError::NotRunning)),
            }
        })
    }
}
