//! Who is in each meeting right now, as signaling sees it: one [`Member`] per participant
//! session (its public view and the channel to its session task) and the sockets waiting in the
//! waiting room. Broadcasting goes through here, so every member sees room changes in one order.
//!
//! Also the entry points by which REST and WebSocket moderation reach live sessions
//! ([`Signaling::kicked`], [`Signaling::meeting_ended`], ...): the database and the SFU are
//! changed by `domain::moderation` first; these only tell the sockets.
//!
//! The one thing the registry decides itself is the end of an empty meeting: when the last
//! member of a meeting leaves, a countdown of `meeting_empty_timeout` starts; a member joining
//! cancels it; when it runs out the meeting is ended as the host's end does
//! (`domain::moderation::close_meeting`, then [`Signaling::meeting_ended`]). Only socket
//! presence counts: participants who joined over REST and never connected are not members.
//!
//! A std mutex guards the tables: held only to read or change them, to queue messages on
//! unbounded channels and to spawn or abort countdown tasks, never across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::protocol::{ParticipantView, ServerMessage, Source, WaitingView};
use super::session::Input;
use crate::domain::meetings::Status;
use crate::domain::moderation::{self, ModerationError};
use crate::domain::roles::Role;
use crate::sfu::{MediaKind, Sfu};
use crate::store::chat::Message;
use crate::store::meetings::Meeting;
use crate::store::participants::Participant;
use crate::store::{now_ms, Store};

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

#[derive(Clone, Default)]
pub struct Signaling {
    inner: Arc<Mutex<Registry>>,
    /// What ending an empty meeting needs; `None` (the default) never ends one.
    auto_end: Option<Arc<AutoEnd>>,
}

/// How empty meetings are ended: after `timeout` with no member, through the store and the SFU.
pub struct AutoEnd {
    pub store: Store,
    pub sfu: Sfu,
    /// `meeting_empty_timeout`; zero disables.
    pub timeout: Duration,
}

#[derive(Default)]
struct Registry {
    rooms: HashMap<String, Room>,
    next_waiter: u64,
    /// Running countdowns to ending a meeting, by meeting id. Apart from `rooms`, which forgets
    /// a room as soon as it is empty.
    countdowns: HashMap<String, Countdown>,
    next_countdown: u64,
    /// Set when the server stops: sessions ending then start no countdown.
    stopping: bool,
}

#[derive(Default)]
struct Room {
    /// By participant id: UUIDv7, so in join order.
    members: BTreeMap<String, Member>,
    waiting: HashMap<String, Waiter>,
    /// The meeting was ended: its members leaving start no countdown.
    ended: bool,
}

/// A countdown task; `id` tells it from a later countdown of the same meeting.
struct Countdown {
    id: u64,
    task: AbortHandle,
}

struct Member {
    view: ParticipantView,
    session: mpsc::UnboundedSender<Input>,
}

struct Waiter {
    id: u64,
    view: WaitingView,
    events: mpsc::UnboundedSender<WaitEvent>,
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
        let mut registry = self.signaling.lock();
        if let Some(room) = registry.rooms.get_mut(&self.meeting_id) {
            if room
                .waiting
                .get(&self.participant_id)
                .is_some_and(|w| w.id == self.id)
            {
                room.waiting.remove(&self.participant_id);
            }
        }
        registry.prune(&self.meeting_id);
    }
}

impl Registry {
    fn prune(&mut self, meeting_id: &str) {
        if self
            .rooms
            .get(meeting_id)
            .is_some_and(|r| r.members.is_empty() && r.waiting.is_empty())
        {
            self.rooms.remove(meeting_id);
        }
    }

    /// A member joined: the meeting is not empty, its countdown (if any) stops.
    fn cancel_countdown(&mut self, meeting_id: &str) {
        if let Some(countdown) = self.countdowns.remove(meeting_id) {
            countdown.task.abort();
            tracing::debug!(meeting = %meeting_id, "empty-meeting countdown cancelled");
        }
    }

    /// Whether countdown `id` still runs for a meeting that still has no member.
    fn countdown_current(&self, meeting_id: &str, id: u64) -> bool {
        self.countdowns.get(meeting_id).is_some_and(|c| c.id == id)
            && self
                .rooms
                .get(meeting_id)
                .is_none_or(|r| r.members.is_empty())
    }

    fn forget_countdown(&mut self, meeting_id: &str, id: u64) {
        if self.countdowns.get(meeting_id).is_some_and(|c| c.id == id) {
            self.countdowns.remove(meeting_id);
        }
    }
}

impl Room {
    fn broadcast(&self, frame: &Frame, except: Option<&str>) {
        for (id, member) in &self.members {
            if Some(id.as_str()) != except {
                let _ = member.session.send(Input::Deliver(frame.clone()));
            }
        }
    }

    fn to_moderators(&self, frame: &Frame) {
        for member in self.members.values() {
            if Role::parse(&member.view.role).is_some_and(Role::is_moderator) {
                let _ = member.session.send(Input::Deliver(frame.clone()));
            }
        }
    }
}

impl Signaling {
    /// A registry that ends meetings left empty (see [`AutoEnd`]).
    pub fn with_auto_end(auto_end: AutoEnd) -> Self {
        Self {
            inner: Arc::default(),
            auto_end: Some(Arc::new(auto_end)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the tables half-updated in a harmful way.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- members ----------------------------------------------------------------------------

    /// The session holding `identity` in the meeting, if any: its participant id and channel.
    pub(crate) fn session_of_identity(
        &self,
        meeting_id: &str,
        identity: &str,
    ) -> Option<(String, mpsc::UnboundedSender<Input>)> {
        let registry = self.lock();
        let room = registry.rooms.get(meeting_id)?;
        room.members
            .iter()
            .find(|(_, m)| m.view.identity == identity)
            .map(|(id, m)| (id.clone(), m.session.clone()))
    }

    /// Adds a member and tells the others (`participant_joined`). Returns everyone else, for
    /// the newcomer's `joined`. Done under one lock, so a change is either in that list or
    /// reaches the newcomer as a message.
    pub(crate) fn register(
        &self,
        meeting_id: &str,
        view: ParticipantView,
        session: mpsc::UnboundedSender<Input>,
    ) -> Vec<ParticipantView> {
        let mut registry = self.lock();
        registry.cancel_countdown(meeting_id);
        let room = registry.rooms.entry(meeting_id.to_owned()).or_default();
        // Joins replace an identity's session before registering; two joins racing past that
        // check meet here, where the later one wins.
        let stale: Vec<String> = room
            .members
            .iter()
            .filter(|(_, m)| m.view.identity == view.identity)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(member) = room.members.remove(&id) {
                let (reply, _) = tokio::sync::oneshot::channel();
                let _ = member.session.send(Input::Replaced { reply });
                room.broadcast(
                    &frame(&ServerMessage::ParticipantLeft {
                        participant_id: id,
                        reason: "replaced".to_owned(),
                    }),
                    None,
                );
            }
        }
        let others: Vec<ParticipantView> = room
            .members
            .iter()
            .filter(|(id, _)| **id != view.participant_id)
            .map(|(_, m)| m.view.clone())
            .collect();
        let joined = frame(&ServerMessage::ParticipantJoined {
            participant: view.clone(),
        });
        room.broadcast(&joined, Some(&view.participant_id));
        room.members
            .insert(view.participant_id.clone(), Member { view, session });
        others
    }

    /// Removes the member if `session` is still its session, and with a `reason` tells the
    /// others (`participant_left`). The last member of a meeting leaving starts its countdown.
    pub(crate) fn unregister(
        &self,
        meeting_id: &str,
        participant_id: &str,
        session: &mpsc::UnboundedSender<Input>,
        reason: Option<&str>,
    ) {
        let mut registry = self.lock();
        let Some(room) = registry.rooms.get_mut(meeting_id) else {
            return;
        };
        let ours = room
            .members
            .get(participant_id)
            .is_some_and(|m| m.session.same_channel(session));
        if !ours {
            return;
        }
        room.members.remove(participant_id);
        if let Some(reason) = reason {
            room.broadcast(
                &frame(&ServerMessage::ParticipantLeft {
                    participant_id: participant_id.to_owned(),
                    reason: reason.to_owned(),
                }),
                None,
            );
        }
        if room.members.is_empty() && !room.ended {
            self.start_countdown(&mut registry, meeting_id);
        }
        registry.prune(meeting_id);
    }

    /// A member's current view and everyone else's.
    pub(crate) fn snapshot(
        &self,
        meeting_id: &str,
        participant_id: &str,
    ) -> Option<(ParticipantView, Vec<ParticipantView>)> {
        let registry = self.lock();
        let room = registry.rooms.get(meeting_id)?;
        let me = room.members.get(participant_id)?.view.clone();
        let others = room
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != participant_id)
            .map(|(_, m)| m.view.clone())
            .collect();
        Some((me, others))
    }

    /// Changes a member's view with `change`, and sends every member the messages it returns.
    pub(crate) fn update<T>(
        &self,
        meeting_id: &str,
        participant_id: &str,
        change: impl FnOnce(&mut ParticipantView) -> (T, Vec<ServerMessage>),
    ) -> Option<T> {
        let mut registry = self.lock();
        let room = registry.rooms.get_mut(meeting_id)?;
        let member = room.members.get_mut(participant_id)?;
        let (result, messages) = change(&mut member.view);
        for message in messages {
            room.broadcast(&frame(&message), None);
        }
        Some(result)
    }

    /// Sends `message` to every member, or every member but `except`.
    pub fn broadcast(&self, meeting_id: &str, message: &ServerMessage, except: Option<&str>) {
        let registry = self.lock();
        if let Some(room) = registry.rooms.get(meeting_id) {
            room.broadcast(&frame(message), except);
        }
    }

    /// The participant id of the member with `identity`.
    pub(crate) fn participant_of_identity(
        &self,
        meeting_id: &str,
        identity: &str,
    ) -> Option<String> {
        self.session_of_identity(meeting_id, identity)
            .map(|(id, _)| id)
    }

    /// Participants connected to signaling in the meeting now.
    pub fn member_count(&self, meeting_id: &str) -> usize {
        self.lock()
            .rooms
            .get(meeting_id)
            .map_or(0, |r| r.members.len())
    }

    // ---- the waiting room -------------------------------------------------------------------

    /// Registers a waiting socket for the participant row (replacing an earlier socket of the
    /// same row).
    pub(crate) fn wait(
        &self,
        meeting_id: &str,
        view: WaitingView,
        events: mpsc::UnboundedSender<WaitEvent>,
    ) -> WaitingGuard {
        let mut registry = self.lock();
        registry.next_waiter += 1;
        let id = registry.next_waiter;
        let room = registry.rooms.entry(meeting_id.to_owned()).or_default();
        let participant_id = view.participant_id.clone();
        room.waiting
            .insert(participant_id.clone(), Waiter { id, view, events });
        WaitingGuard {
            signaling: self.clone(),
            meeting_id: meeting_id.to_owned(),
            participant_id,
            id,
        }
    }

    /// Someone entered the waiting room (a join answered 202): the moderators are told.
    pub fn announce_waiting(&self, meeting_id: &str, participant: &Participant) {
        let registry = self.lock();
        if let Some(room) = registry.rooms.get(meeting_id) {
            room.to_moderators(&frame(&ServerMessage::Waiting {
                participant: WaitingView {
                    participant_id: participant.id.clone(),
                    display_name: participant.display_name.clone(),
                    user_id: participant.user_id.clone(),
                },
            }));
        }
    }

    /// Waiting sockets of the meeting, as moderators see them.
    pub fn waiting_sockets(&self, meeting_id: &str) -> Vec<WaitingView> {
        self.lock()
            .rooms
            .get(meeting_id)
            .map(|r| r.waiting.values().map(|w| w.view.clone()).collect())
            .unwrap_or_default()
    }

    // ---- what moderation (REST or WebSocket) tells live sessions ------------------------------

    /// A participant was removed (and maybe banned): their session ends, their waiting socket
    /// is told.
    pub fn kicked(&self, meeting_id: &str, target: &Participant, banned: bool, by: Option<String>) {
        let registry = self.lock();
        let Some(room) = registry.rooms.get(meeting_id) else {
            return;
        };
        for member in room.members.values() {
            if member.view.identity == target.identity {
                let _ = member.session.send(Input::Kicked {
                    banned,
                    by: by.clone(),
                });
            }
        }
        if let Some(waiter) = room.waiting.get(&target.id) {
            let _ = waiter.events.send(WaitEvent::Kicked { banned });
        }
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
        let sources: Vec<Source> = Source::ALL
            .into_iter()
            .filter(|s| super::session::media_kind(s.kind()) == kind)
            .collect();
        self.update(meeting_id, participant_id, |view| {
            let mut messages = Vec::new();
            for source in sources {
                if !view.muted.contains(&source) {
                    view.muted.push(source);
                }
                messages.push(ServerMessage::MediaState {
                    participant_id: view.participant_id.clone(),
                    source,
                    muted: true,
                    by: by.clone(),
                });
            }
            view.muted.sort();
            for track in &mut view.tracks {
                track.muted = view.muted.contains(&track.source);
            }
            ((), messages)
        });
    }

    /// A participant's role changed: everyone sees `participant_updated`; their session takes
    /// the new permissions.
    pub fn role_changed(&self, meeting_id: &str, participant_id: &str, role: Role) {
        let session = self.update(meeting_id, participant_id, |view| {
            view.role = role.as_str().to_owned();
            (
                (),
                vec![ServerMessage::ParticipantUpdated {
                    participant: view.clone(),
                }],
            )
        });
        if session.is_some() {
            let registry = self.lock();
            if let Some(member) = registry
                .rooms
                .get(meeting_id)
                .and_then(|r| r.members.get(participant_id))
            {
                let _ = member.session.send(Input::RoleChanged { role });
            }
        }
    }

    /// A waiting participant was admitted or denied: their socket is told, and the moderators.
    pub fn waiting_resolved(&self, meeting_id: &str, participant_id: &str, admitted: bool) {
        let registry = self.lock();
        let Some(room) = registry.rooms.get(meeting_id) else {
            return;
        };
        if let Some(waiter) = room.waiting.get(participant_id) {
            let _ = waiter.events.send(if admitted {
                WaitEvent::Admitted
            } else {
                WaitEvent::Denied
            });
        }
        let message = if admitted {
            ServerMessage::Admitted {
                participant_id: participant_id.to_owned(),
                join_token: None,
                role: None,
            }
        } else {
            ServerMessage::Denied {
                participant_id: participant_id.to_owned(),
            }
        };
        room.to_moderators(&frame(&message));
    }

    /// The meeting ended for everyone: every session is told and closed.
    pub fn meeting_ended(&self, meeting_id: &str, by: Option<String>) {
        let mut registry = self.lock();
        registry.cancel_countdown(meeting_id);
        let Some(room) = registry.rooms.get_mut(meeting_id) else {
            return;
        };
        room.ended = true;
        for member in room.members.values() {
            let _ = member.session.send(Input::MeetingEnded { by: by.clone() });
        }
        for waiter in room.waiting.values() {
            let _ = waiter.events.send(WaitEvent::MeetingEnded);
        }
    }

    /// The meeting's details or settings changed: everyone sees `meeting_updated`.
    pub fn meeting_updated(&self, meeting: &Meeting) {
        let registry = self.lock();
        let Some(room) = registry.rooms.get(&meeting.id) else {
            return;
        };
        room.broadcast(
            &frame(&ServerMessage::MeetingUpdated {
                meeting: meeting.into(),
            }),
            None,
        );
        for member in room.members.values() {
            let _ = member.session.send(Input::MeetingChanged {
                meeting: Box::new(meeting.clone()),
            });
        }
    }

    /// A chat message was stored (REST or socket): everyone sees `chat_message`.
    pub fn chat_posted(&self, message: &Message) {
        self.broadcast(
            &message.meeting_id,
            &ServerMessage::ChatMessage(super::session::chat_view(message)),
            None,
        );
    }

    /// The server is stopping: every socket is closed (1001).
    pub fn shutdown(&self) {
        let mut registry = self.lock();
        registry.stopping = true;
        for (_, countdown) in registry.countdowns.drain() {
            countdown.task.abort();
        }
        for room in registry.rooms.values() {
            for member in room.members.values() {
                let _ = member.session.send(Input::Shutdown);
            }
            for waiter in room.waiting.values() {
                let _ = waiter.events.send(WaitEvent::Shutdown);
            }
        }
    }
}

// ---- ending empty meetings ---------------------------------------------------------------------

impl Signaling {
    /// A live meeting has nobody connected (after a restart): its countdown starts, unless a
    /// member joined meanwhile.
    pub fn meeting_is_empty(&self, meeting_id: &str) {
        let mut registry = self.lock();
        let has_members = registry
            .rooms
            .get(meeting_id)
            .is_some_and(|r| !r.members.is_empty());
        if !has_members && !registry.countdowns.contains_key(meeting_id) {
            self.start_countdown(&mut registry, meeting_id);
        }
    }

    /// Starts (or restarts) the countdown of a meeting whose last member just left.
    fn start_countdown(&self, registry: &mut Registry, meeting_id: &str) {
        let Some(auto_end) = &self.auto_end else {
            return;
        };
        if auto_end.timeout.is_zero() || registry.stopping {
            return;
        }
        // Members leave from their session tasks; outside a runtime there is nothing to run on.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        registry.next_countdown += 1;
        let id = registry.next_countdown;
        let deadline = Instant::now() + auto_end.timeout;
        let count_down = self
            .clone()
            .count_down(meeting_id.to_owned(), id, now_ms(), deadline);
        let task = runtime.spawn(count_down);
        let countdown = Countdown {
            id,
            task: task.abort_handle(),
        };
        if let Some(earlier) = registry.countdowns.insert(meeting_id.to_owned(), countdown) {
            earlier.task.abort();
        }
        tracing::debug!(meeting = %meeting_id, timeout = ?auto_end.timeout, "meeting empty; countdown started");
    }

    /// Waits out the countdown, then ends the meeting if it is still live and nobody joined.
    /// A seat taken over REST since `since_ms` (a participant who has not connected yet) gets a
    /// full timeout from its join before the meeting ends.
    ///
    /// Aborted by a join while it waits or reads; once it claimed the meeting (its last check,
    /// under the lock) it runs to the end.
    async fn count_down(
        self,
        meeting_id: String,
        id: u64,
        mut since_ms: i64,
        mut deadline: Instant,
    ) {
        let Some(auto_end) = self.auto_end.clone() else {
            return;
        };
        loop {
            tokio::time::sleep_until(deadline).await;
            if !self.lock().countdown_current(&meeting_id, id) {
                return;
            }
            let meeting = match auto_end.store.meeting(&meeting_id).await {
                Ok(meeting) => meeting,
                Err(e) => {
                    tracing::warn!(meeting = %meeting_id, error = %e, "empty meeting not ended: reading it failed");
                    self.lock().forget_countdown(&meeting_id, id);
                    return;
                }
            };
            if meeting.status != Status::Live.as_str() {
                self.lock().forget_countdown(&meeting_id, id);
                return;
            }
            let seats = match auto_end
                .store
                .meeting_participants(&meeting_id, Some("joined"))
                .await
            {
                Ok(seats) => seats,
                Err(e) => {
                    tracing::warn!(meeting = %meeting_id, error = %e, "empty meeting not ended: reading its seats failed");
                    self.lock().forget_countdown(&meeting_id, id);
                    return;
                }
            };
            let latest_join = seats.iter().filter_map(|p| p.joined_at).max();
            if let Some(joined_at) = latest_join.filter(|at| *at > since_ms) {
                let waited =
                    Duration::from_millis(u64::try_from(now_ms() - joined_at).unwrap_or(0));
                deadline = Instant::now() + auto_end.timeout.saturating_sub(waited);
                since_ms = joined_at;
                tracing::debug!(meeting = %meeting_id, "joined over REST during the countdown; waiting for its socket");
                continue;
            }
            break;
        }
        {
            let mut registry = self.lock();
            if !registry.countdown_current(&meeting_id, id) {
                return;
            }
            registry.forget_countdown(&meeting_id, id);
        }
        match moderation::close_meeting(&auto_end.store, &auto_end.sfu, &meeting_id, "ended").await
        {
            Ok(()) => {
                tracing::info!(meeting = %meeting_id, timeout = ?auto_end.timeout, "empty meeting ended");
                self.meeting_ended(&meeting_id, None);
            }
            // Ended meanwhile by its host.
            Err(ModerationError::MeetingClosed) => {}
            Err(e) => {
                tracing::warn!(meeting = %meeting_id, error = %e, "empty meeting not ended")
            }
        }
    }
}

/// REST reaches the live meetings through this (see `domain::live`).
impl crate::domain::live::LiveMeetings for Signaling {
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
}
