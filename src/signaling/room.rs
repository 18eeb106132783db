//! One live meeting, owned by one task: its members (their public view, their published tracks
//! and what each carries, their mute and hand state), the sockets in its waiting room and the
//! countdown to ending it once it is empty. The task is the only consumer of the meeting's SFU
//! events (tracks published and unpublished, active speakers): it translates them once and
//! broadcasts them, so every member sees room changes in one order.
//!
//! Sessions and moderation reach it only through [`Command`]s sent by [`super::Signaling`],
//! which opens the task on a meeting's first member, waiting socket or countdown and lets it go
//! when it has none of them.
//!
//! Writes to the store the changes it decides (a participant's own mute, the end of an empty
//! meeting). Moderation done over REST or by a moderator's socket writes the store and acts on
//! the media first (`domain::moderation`), then tells this task, which only updates the views.
//!
//! Must never: panic on a command, or wait on a member (their channels are unbounded).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::cascade::{Cascade, EventKind, RelayOutcome, Subscriptions};
use super::protocol::{
    Kind, ParticipantView, ServerMessage, Source, SpeakerView, TrackView, WaitingView,
};
use super::rooms::{frame, Frame, Services, Signaling, WaitEvent};
use super::session::{kind_of, media_kind, Input};
use crate::domain::live::RecordingError;
use crate::domain::meetings::Status;
use crate::domain::moderation::{self, ModerationError};
use crate::domain::roles::Role;
use crate::ids::{PeerId, TrackId};
use crate::recording::{FileOwner, RecordingHandle};
use crate::sfu::{MediaKind, SfuEvent};
use crate::store::meetings::Meeting;
use crate::store::moderation::MuteFlag;
use crate::store::participants::Participant;
use crate::store::recordings::Recording;
use crate::store::{now_ms, StoreError};

pub(crate) type Reply<T> = oneshot::Sender<T>;

/// The meeting has ended, or the server is stopping: nobody joins it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// What a participant's session sees of the room when it (re)attaches a socket.
pub(crate) struct Snapshot {
    pub me: ParticipantView,
    pub others: Vec<ParticipantView>,
    /// The waiting sockets, for moderators.
    pub waiting: Vec<WaitingView>,
}

/// What the room task is told.
pub(crate) enum Command {
    /// A session joins: the others are told (`participant_joined`); a session of the same
    /// identity still registered is replaced. The reply lists everyone else, for `joined`.
    Register {
        view: ParticipantView,
        session: mpsc::UnboundedSender<Input>,
        subscriptions: Subscriptions,
        reply: Reply<Result<Vec<ParticipantView>, Closed>>,
    },
    /// A session ends; with a `reason` the others see `participant_left`. Only if `session` is
    /// still the member's session.
    Unregister {
        participant_id: String,
        session: mpsc::UnboundedSender<Input>,
        reason: Option<&'static str>,
    },
    /// The session holding `identity`: its participant id and channel.
    Lookup {
        identity: String,
        reply: Reply<Option<(String, mpsc::UnboundedSender<Input>)>>,
    },
    Snapshot {
        participant_id: String,
        reply: Reply<Option<Snapshot>>,
    },
    /// The member's next offer sends these client tracks as these sources: the tracks it
    /// publishes are announced with them. Sent before the offer goes to the SFU, which
    /// publishes the tracks as it answers.
    Sources {
        participant_id: String,
        sources: HashMap<String, Source>,
    },
    /// The member's publisher connection is `publisher`. Sent once the SFU answered the first
    /// offer; the events of the tracks it published meanwhile wait for this.
    Publisher {
        participant_id: String,
        publisher: PeerId,
    },
    /// The participant muted or unmuted one of their sources.
    SetMuted {
        participant_id: String,
        source: Source,
        muted: bool,
        reply: Reply<Result<(), StoreError>>,
    },
    SetHand {
        participant_id: String,
        raised: bool,
    },
    /// A message for every member, or every member but `except`.
    Broadcast {
        frame: Frame,
        except: Option<String>,
    },
    /// A moderator muted every source of `kind` of the participant (store and media done).
    Muted {
        participant_id: String,
        kind: MediaKind,
        by: Option<String>,
    },
    /// A participant was removed (store and media done): their session ends, their waiting
    /// socket is told.
    Kicked {
        target: Box<Participant>,
        banned: bool,
        by: Option<String>,
    },
    RoleChanged {
        participant_id: String,
        role: Role,
    },
    /// A waiting-room socket; `id` tells it from a later socket of the same seat.
    Wait {
        id: u64,
        view: WaitingView,
        events: mpsc::UnboundedSender<WaitEvent>,
    },
    Unwait {
        participant_id: String,
        id: u64,
    },
    /// Someone entered the waiting room: the moderators are told.
    AnnounceWaiting(WaitingView),
    WaitingResolved {
        participant_id: String,
        admitted: bool,
    },
    MeetingEnded {
        by: Option<String>,
    },
    MeetingUpdated(Box<Meeting>),
    /// The meeting is live with nobody connected (after a restart): its countdown starts
    /// unless someone is here.
    Empty,
    Shutdown,
    /// One of the room's SFU events.
    Media(SfuEvent),
    /// Insert `recording` and start writing every member's tracks.
    StartRecording {
        recording: Recording,
        reply: Reply<Result<Recording, RecordingError>>,
    },
    /// The tracks every member publishes now.
    Tracks {
        reply: Reply<Vec<crate::domain::live::LiveTrack>>,
    },
    /// Cascading: the recording `recording_id` runs on another node of the meeting; ask it to
    /// stop.
    StopRecordingElsewhere {
        recording_id: String,
    },
    /// Stop the running recording (only if it is `recording_id`, when given).
    StopRecording {
        recording_id: Option<String>,
        reply: Reply<Result<Recording, RecordingError>>,
    },
    /// A member (un)subscribed from a track; the reply says whether it is a remote track.
    Subscription {
        participant_id: String,
        track: TrackId,
        subscribed: bool,
        reply: Reply<bool>,
    },
    /// Cascading: a view-only session here watches a publisher (`Some`: the named one, or the
    /// latest), or ended (`None`).
    Viewer {
        session: PeerId,
        publisher: Option<Option<String>>,
    },
    /// Cascading: the other nodes' members as Redis holds them now.
    RemoteMembers(Vec<String>),
    /// Cascading: an event of another node.
    RemoteEvent(EventKind),
    /// Cascading: a relay was opened, or failed.
    RelayOutcome(RelayOutcome),
    /// Cascading: time to make again the relays that failed.
    CascadeTick,
}

struct Member {
    view: ParticipantView,
    session: mpsc::UnboundedSender<Input>,
    /// The connection whose tracks are this member's; tracks of an earlier one are not.
    publisher: Option<PeerId>,
    /// Client track id → source, as the member's latest offer said.
    sources: HashMap<String, Source>,
    /// The member's published tracks and what each carries.
    tracks: HashMap<TrackId, (Source, Kind)>,
    /// Track events of the member's identity from a connection not (yet) known as its
    /// publisher, oldest first: replayed if `Publisher` names it, else dropped.
    early: Vec<SfuEvent>,
    /// What the member receives: which remote tracks this node relays for it.
    subscriptions: Subscriptions,
}

/// Track events held per member until their connection is known (a few per offer).
const MAX_EARLY_EVENTS: usize = 64;

struct Waiter {
    id: u64,
    view: WaitingView,
    events: mpsc::UnboundedSender<WaitEvent>,
}

/// The countdown to ending the meeting, running while nobody is connected.
struct Countdown {
    deadline: Instant,
    /// Seats taken over REST after this (participants who have not connected yet) get a full
    /// timeout from their join.
    since_ms: i64,
}

pub(super) struct Room {
    meeting_id: String,
    /// This task's entry in the directory.
    id: u64,
    signaling: Signaling,
    services: Arc<Services>,
    /// By participant id: UUIDv7, so in join order.
    members: BTreeMap<String, Member>,
    /// Identity → participant id of its member.
    by_identity: HashMap<String, String>,
    waiting: HashMap<String, Waiter>,
    /// The meeting was ended: nobody registers, its members leaving start no countdown.
    ended: bool,
    countdown: Option<Countdown>,
    /// The meeting's running recording, owned here: members' tracks join it as they publish.
    recording: Option<RecordingHandle>,
    /// Whether the meeting's auto-record setting was looked at (once per task).
    auto_record_checked: bool,
    /// Cascading: the meeting's members and tracks on other nodes, and their relays here.
    cascade: Option<Cascade>,
    /// Cascading: view-only sessions here, by the publisher identity they watch (`None`: the
    /// latest publisher, whoever it is).
    viewers: HashMap<PeerId, Option<String>>,
    /// Cascading: WHIP publishers here (no socket, no seat), by identity, as the meeting's
    /// other nodes see them.
    whip_publishers: BTreeMap<String, ParticipantView>,
}

/// Serves the room's commands until it is idle and the directory let it go.
pub(super) async fn run(mut room: Room, mut commands: mpsc::UnboundedReceiver<Command>) {
    loop {
        let deadline = room.countdown.as_ref().map(|c| c.deadline);
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => room.on_command(command).await,
                None => return,
            },
            _ = sleep_until(deadline), if deadline.is_some() => room.countdown_due().await,
            reason = recording_failure(&mut room.recording) => {
                let _ = room.stop_recording(None, Some(reason)).await;
            }
        }
        if room.idle() && room.signaling.retire(&room.meeting_id, room.id, &commands) {
            tracing::debug!(meeting = %room.meeting_id, "room closed");
            return;
        }
    }
}

/// The disk guard's reason to stop the running recording; pending while none runs.
async fn recording_failure(recording: &mut Option<RecordingHandle>) -> &'static str {
    match recording {
        Some(handle) => match handle.failure().await {
            Some(reason) => reason,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Room {
    pub(super) fn new(
        meeting_id: String,
        id: u64,
        signaling: Signaling,
        services: Arc<Services>,
    ) -> Self {
        let cascade = services
            .cascade
            .clone()
            .map(|settings| Cascade::start(settings, meeting_id.clone(), signaling.clone()));
        Self {
            meeting_id,
            id,
            signaling,
            services,
            members: BTreeMap::new(),
            by_identity: HashMap::new(),
            waiting: HashMap::new(),
            ended: false,
            countdown: None,
            recording: None,
            auto_record_checked: false,
            cascade,
            viewers: HashMap::new(),
            whip_publishers: BTreeMap::new(),
        }
    }

    fn idle(&self) -> bool {
        self.members.is_empty()
            && self.viewers.is_empty()
            && self.whip_publishers.is_empty()
            && !self.cascade.as_ref().is_some_and(Cascade::opening)
            && self.waiting.is_empty()
            && self.countdown.is_none()
            && self.recording.is_none()
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Register {
                view,
                session,
                subscriptions,
                reply,
            } => {
                let participant_id = view.participant_id.clone();
                let registered = self.register(view, session, subscriptions);
                let ok = registered.is_ok();
                let _ = reply.send(registered);
                if ok {
                    self.auto_record().await;
                    self.tell_recording(&participant_id);
                }
            }
            Command::Unregister {
                participant_id,
                session,
                reason,
            } => {
                self.unregister(&participant_id, &session, reason);
                self.reconcile_relays();
            }
            Command::Lookup { identity, reply } => {
                let found = self.by_identity.get(&identity).and_then(|id| {
                    let member = self.members.get(id)?;
                    Some((id.clone(), member.session.clone()))
                });
                let _ = reply.send(found);
            }
            Command::Snapshot {
                participant_id,
                reply,
            } => {
                let _ = reply.send(self.snapshot(&participant_id));
            }
            Command::Sources {
                participant_id,
                sources,
            } => {
                if let Some(member) = self.members.get_mut(&participant_id) {
                    member.sources = sources;
                }
            }
            Command::Publisher {
                participant_id,
                publisher,
            } => self.publisher(&participant_id, publisher).await,
            Command::SetMuted {
                participant_id,
                source,
                muted,
                reply,
            } => {
                let _ = reply.send(self.set_muted(&participant_id, source, muted).await);
            }
            Command::SetHand {
                participant_id,
                raised,
            } => {
                self.set_hand(&participant_id, raised);
                self.share(&participant_id);
            }
            Command::Broadcast { frame, except } => {
                self.broadcast(&frame, except.as_deref());
                if let Some(cascade) = &self.cascade {
                    cascade.post(EventKind::Broadcast {
                        frame: frame.to_string(),
                    });
                }
            }
            Command::Muted {
                participant_id,
                kind,
                by,
            } => {
                self.tell_node_of(
                    &participant_id,
                    EventKind::Muted {
                        participant_id: participant_id.clone(),
                        video: kind == MediaKind::Video,
                        by: by.clone(),
                    },
                );
                self.muted_by_moderator(&participant_id, kind, by);
                self.share(&participant_id);
            }
            Command::Kicked { target, banned, by } => {
                self.tell_node_of(
                    &target.id,
                    EventKind::Kicked {
                        participant_id: target.id.clone(),
                        banned,
                        by: by.clone(),
                    },
                );
                for member in self.members.values() {
                    if member.view.identity == target.identity {
                        let _ = member.session.send(Input::Kicked {
                            banned,
                            by: by.clone(),
                        });
                    }
                }
                if let Some(waiter) = self.waiting.get(&target.id) {
                    let _ = waiter.events.send(WaitEvent::Kicked { banned });
                }
            }
            Command::RoleChanged {
                participant_id,
                role,
            } => {
                self.tell_node_of(
                    &participant_id,
                    EventKind::RoleChanged {
                        participant_id: participant_id.clone(),
                        role: role.as_str().to_owned(),
                    },
                );
                self.role_changed(&participant_id, role);
                self.share(&participant_id);
            }
            Command::Wait { id, view, events } => {
                let participant_id = view.participant_id.clone();
                self.waiting
                    .insert(participant_id, Waiter { id, view, events });
            }
            Command::Unwait { participant_id, id } => {
                if self
                    .waiting
                    .get(&participant_id)
                    .is_some_and(|w| w.id == id)
                {
                    self.waiting.remove(&participant_id);
                }
            }
            Command::AnnounceWaiting(participant) => {
                self.to_moderators(&frame(&ServerMessage::Waiting { participant }));
            }
            Command::WaitingResolved {
                participant_id,
                admitted,
            } => self.waiting_resolved(participant_id, admitted),
            Command::MeetingEnded { by } => {
                if let Some(cascade) = &self.cascade {
                    cascade.post(EventKind::MeetingEnded { by: by.clone() });
                }
                let _ = self.stop_recording(None, None).await;
                self.meeting_ended(by);
            }
            Command::MeetingUpdated(meeting) => {
                self.meeting_changed(meeting);
                // The meeting's sessions on other nodes read it again.
                if let Some(cascade) = &self.cascade {
                    cascade.post(EventKind::MeetingChanged);
                }
            }
            Command::Empty => {
                if self.members.is_empty() && self.countdown.is_none() && !self.ended {
                    self.start_countdown();
                }
            }
            Command::Shutdown => {
                if let Some(cascade) = &mut self.cascade {
                    cascade.close_all(&self.services.sfu);
                }
                // Files are closed whole: the recording is ready, not interrupted.
                let _ = self.stop_recording(None, None).await;
                self.countdown = None;
                for member in self.members.values() {
                    let _ = member.session.send(Input::Shutdown);
                }
                for waiter in self.waiting.values() {
                    let _ = waiter.events.send(WaitEvent::Shutdown);
                }
            }
            Command::Media(event) => self.on_media(event).await,
            Command::Tracks { reply } => {
                let tracks = self
                    .members
                    .iter()
                    .flat_map(|(id, m)| {
                        m.tracks.iter().map(move |(track, (source, kind))| {
                            crate::domain::live::LiveTrack {
                                participant_id: id.clone(),
                                track: *track,
                                source: source.as_str(),
                                kind: media_kind(*kind),
                            }
                        })
                    })
                    .collect();
                let _ = reply.send(tracks);
            }
            Command::StartRecording { recording, reply } => {
                let _ = reply.send(self.start_recording(recording).await);
            }
            Command::StopRecordingElsewhere { recording_id } => {
                if let Some(cascade) = &self.cascade {
                    cascade.post(EventKind::StopRecording { recording_id });
                }
            }
            Command::StopRecording {
                recording_id,
                reply,
            } => {
                let result = match (&self.recording, &recording_id) {
                    (Some(running), Some(id)) if running.recording_id != *id => {
                        Err(RecordingError::NotRunning)
                    }
                    _ => self.stop_recording(None, None).await,
                };
                let _ = reply.send(result);
            }
            Command::Subscription {
                participant_id,
                track,
                subscribed,
                reply,
            } => {
                if let Some(member) = self.members.get_mut(&participant_id) {
                    let listed = &mut member.subscriptions;
                    if subscribed == listed.manual {
                        listed.listed.insert(track);
                    } else {
                        listed.listed.remove(&track);
                    }
                }
                let remote = self
                    .cascade
                    .as_ref()
                    .is_some_and(|c| c.is_remote_track(track));
                let _ = reply.send(remote);
                self.reconcile_relays();
            }
            Command::Viewer { session, publisher } => {
                match publisher {
                    Some(publisher) => {
                        self.viewers.insert(session, publisher);
                    }
                    None => {
                        self.viewers.remove(&session);
                    }
                }
                self.reconcile_relays();
            }
            Command::RemoteMembers(entries) => self.remote_members(entries),
            Command::CascadeTick => self.reconcile_relays(),
            Command::RemoteEvent(event) => self.remote_event(event).await,
            Command::RelayOutcome(outcome) => {
                let opened = match &mut self.cascade {
                    Some(cascade) => cascade.relay_outcome(outcome, &self.services.sfu),
                    None => Vec::new(),
                };
                self.reconcile_relays();
                // Published before a recording started, but not yet known to be relayed then.
                for track in opened {
                    self.record_remote(track).await;
                }
            }
        }
    }

    // ---- cascading ----------------------------------------------------------------------------

    /// An action on a participant who is not a member here (REST acts on the placed node): the
    /// node holding them applies it.
    fn tell_node_of(&self, participant_id: &str, event: EventKind) {
        if let Some(cascade) = self
            .cascade
            .as_ref()
            .filter(|_| !self.members.contains_key(participant_id))
        {
            cascade.post(event);
        }
    }

    /// Shares a local member's view with the meeting's other nodes.
    fn share(&self, participant_id: &str) {
        if let Some(cascade) = &self.cascade {
            cascade.put_member(
                participant_id,
                self.members.get(participant_id).map(|m| &m.view),
            );
        }
    }

    fn reconcile_relays(&mut self) {
        let Some(cascade) = &mut self.cascade else {
            return;
        };
        cascade.reconcile(
            self.members.values().map(|m| &m.subscriptions),
            &self.viewers,
            self.recording.is_some(),
            &self.services.sfu,
            &self.signaling,
        );
    }

    fn remote_members(&mut self, entries: Vec<String>) {
        let Some(cascade) = &mut self.cascade else {
            return;
        };
        let members = &self.members;
        let told =
            cascade.apply_members(entries, |id| members.contains_key(id), &self.services.sfu);
        for message in told {
            self.broadcast(&frame(&message), None);
        }
        self.reconcile_relays();
    }

    /// The meeting's details or settings changed: every member sees `meeting_updated`, and
    /// its session takes the new settings (its grants follow them).
    fn meeting_changed(&self, meeting: Box<Meeting>) {
        self.broadcast(
            &frame(&ServerMessage::MeetingUpdated {
                meeting: meeting.as_ref().into(),
            }),
            None,
        );
        for member in self.members.values() {
            let _ = member.session.send(Input::MeetingChanged {
                meeting: meeting.clone(),
            });
        }
    }

    async fn remote_event(&mut self, event: EventKind) {
        match event {
            EventKind::StopRecording { recording_id } => {
                if self
                    .recording
                    .as_ref()
                    .is_some_and(|r| r.recording_id == recording_id)
                {
                    let _ = self.stop_recording(None, None).await;
                }
            }
            EventKind::MeetingChanged => {
                match self.services.store.meeting(&self.meeting_id).await {
                    Ok(meeting) => self.meeting_changed(Box::new(meeting)),
                    Err(e) => {
                        tracing::warn!(meeting = %self.meeting_id, error = %e, "changed meeting not read")
                    }
                }
            }
            EventKind::Broadcast { frame } => self.broadcast(&Frame::from(frame), None),
            EventKind::Kicked {
                participant_id,
                banned,
                by,
            } => {
                if let Some(member) = self.members.get(&participant_id) {
                    let _ = member.session.send(Input::Kicked { banned, by });
                }
            }
            EventKind::Muted {
                participant_id,
                video,
                by,
            } => {
                let kind = if video {
                    MediaKind::Video
                } else {
                    MediaKind::Audio
                };
                let Some(member) = self.members.get(&participant_id) else {
                    return;
                };
                let identity = crate::ids::ParticipantId(member.view.identity.clone());
                let room = crate::ids::RoomId(self.meeting_id.clone());
                if let Err(e) = self
                    .services
                    .sfu
                    .set_muted(room, identity, kind, true)
                    .await
                {
                    tracing::warn!(participant = %participant_id, error = %e, "remote mute not applied to media");
                }
                self.muted_by_moderator(&participant_id, kind, by);
                self.share(&participant_id);
            }
            EventKind::MeetingEnded { by } => {
                let _ = self.stop_recording(None, None).await;
                self.meeting_ended(by);
            }
            EventKind::RoleChanged {
                participant_id,
                role,
            } => {
                if let Some(role) = Role::parse(&role) {
                    if self.members.contains_key(&participant_id) {
                        self.role_changed(&participant_id, role);
                        self.share(&participant_id);
                    }
                }
            }
        }
    }

    // ---- members ----------------------------------------------------------------------------

    fn register(
        &mut self,
        view: ParticipantView,
        session: mpsc::UnboundedSender<Input>,
        subscriptions: Subscriptions,
    ) -> Result<Vec<ParticipantView>, Closed> {
        if self.ended || self.signaling.stopping() {
            return Err(Closed);
        }
        if self.countdown.take().is_some() {
            tracing::debug!(meeting = %self.meeting_id, "empty-meeting countdown cancelled");
        }
        // Joins replace an identity's session before registering; two joins racing past that
        // check meet here, where the later one wins.
        if let Some(stale) = self.by_identity.remove(&view.identity) {
            if let Some(member) = self.members.remove(&stale) {
                let (reply, _) = oneshot::channel();
                let _ = member.session.send(Input::Replaced { reply });
                self.broadcast(
                    &frame(&ServerMessage::ParticipantLeft {
                        participant_id: stale,
                        reason: "replaced".to_owned(),
                    }),
                    None,
                );
            }
        }
        let mut others: Vec<ParticipantView> = self
            .members
            .iter()
            .filter(|(id, _)| **id != view.participant_id)
            .map(|(_, m)| m.view.clone())
            .collect();
        if let Some(cascade) = &self.cascade {
            others.extend(cascade.remote_views().cloned());
        }
        let participant_id = view.participant_id.clone();
        let joined = frame(&ServerMessage::ParticipantJoined {
            participant: view.clone(),
        });
        self.broadcast(&joined, Some(&view.participant_id));
        self.by_identity
            .insert(view.identity.clone(), view.participant_id.clone());
        self.members.insert(
            view.participant_id.clone(),
            Member {
                view,
                session,
                publisher: None,
                sources: HashMap::new(),
                tracks: HashMap::new(),
                early: Vec::new(),
                subscriptions,
            },
        );
        if let Some(cascade) = &self.cascade {
            cascade.put_member(
                &participant_id,
                self.members.get(&participant_id).map(|m| &m.view),
            );
        }
        self.reconcile_relays();
        Ok(others)
    }

    fn unregister(
        &mut self,
        participant_id: &str,
        session: &mpsc::UnboundedSender<Input>,
        reason: Option<&str>,
    ) {
        let ours = self
            .members
            .get(participant_id)
            .is_some_and(|m| m.session.same_channel(session));
        if !ours {
            return;
        }
        self.share_gone(participant_id);
        if let Some(member) = self.members.remove(participant_id) {
            if self
                .by_identity
                .get(&member.view.identity)
                .map(String::as_str)
                == Some(participant_id)
            {
                self.by_identity.remove(&member.view.identity);
            }
        }
        if let Some(reason) = reason {
            self.broadcast(
                &frame(&ServerMessage::ParticipantLeft {
                    participant_id: participant_id.to_owned(),
                    reason: reason.to_owned(),
                }),
                None,
            );
        }
        if self.members.is_empty() && !self.ended {
            self.start_countdown();
        }
    }

    fn share_gone(&self, participant_id: &str) {
        if let Some(cascade) = &self.cascade {
            cascade.put_member(participant_id, None);
        }
    }

    fn snapshot(&self, participant_id: &str) -> Option<Snapshot> {
        let me = self.members.get(participant_id)?.view.clone();
        let mut others: Vec<ParticipantView> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != participant_id)
            .map(|(_, m)| m.view.clone())
            .collect();
        if let Some(cascade) = &self.cascade {
            others.extend(cascade.remote_views().cloned());
        }
        let waiting = self.waiting.values().map(|w| w.view.clone()).collect();
        Some(Snapshot {
            me,
            others,
            waiting,
        })
    }

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

    // ---- media state -------------------------------------------------------------------------

    /// The store first (a failed write changes nothing), then the views, then the media: each
    /// of the member's tracks carrying `source` follows it (camera and screen are separate).
    async fn set_muted(
        &mut self,
        participant_id: &str,
        source: Source,
        muted: bool,
    ) -> Result<(), StoreError> {
        let Some(member) = self.members.get(participant_id) else {
            return Ok(());
        };
        if member.view.muted.contains(&source) == muted {
            return Ok(());
        }
        let flag = match source {
            Source::Microphone => Some(MuteFlag::Microphone),
            Source::Camera => Some(MuteFlag::Camera),
            _ => None,
        };
        if let Some(flag) = flag {
            let store = &self.services.store;
            if muted {
                store
                    .mute_participant(&self.meeting_id, participant_id, flag)
                    .await?;
            } else {
                store
                    .unmute_participant(&self.meeting_id, participant_id, flag)
                    .await?;
            }
        }
        let Some(member) = self.members.get_mut(participant_id) else {
            return Ok(());
        };
        let view = &mut member.view;
        if muted {
            view.muted.push(source);
            view.muted.sort();
        } else {
            view.muted.retain(|s| *s != source);
        }
        for track in &mut view.tracks {
            track.muted = view.muted.contains(&track.source);
        }
        let tracks: Vec<TrackId> = member
            .tracks
            .iter()
            .filter(|(_, (s, _))| *s == source)
            .map(|(id, _)| *id)
            .collect();
        let state = frame(&ServerMessage::MediaState {
            participant_id: participant_id.to_owned(),
            source,
            muted,
            by: None,
        });
        self.broadcast(&state, None);
        if let Some(cascade) = &self.cascade {
            cascade.post(EventKind::Broadcast {
                frame: state.to_string(),
            });
        }
        self.share(participant_id);
        for track in tracks {
            self.apply_mute(participant_id, track, muted).await;
        }
        Ok(())
    }

    async fn apply_mute(&self, participant_id: &str, track: TrackId, muted: bool) {
        if let Err(e) = self.services.sfu.set_track_muted(track, muted).await {
            tracing::warn!(participant = %participant_id, %track, error = %e, "mute not applied to media");
        }
    }

    fn muted_by_moderator(&mut self, participant_id: &str, kind: MediaKind, by: Option<String>) {
        let Some(member) = self.members.get_mut(participant_id) else {
            return;
        };
        let view = &mut member.view;
        let mut messages = Vec::new();
        for source in Source::ALL
            .into_iter()
            .filter(|s| media_kind(s.kind()) == kind)
        {
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
        for message in messages {
            self.broadcast(&frame(&message), None);
        }
    }

    fn set_hand(&mut self, participant_id: &str, raised: bool) {
        let Some(member) = self.members.get_mut(participant_id) else {
            return;
        };
        if member.view.hand_raised == raised {
            return;
        }
        member.view.hand_raised = raised;
        let message = ServerMessage::ParticipantUpdated {
            participant: member.view.clone(),
        };
        self.broadcast(&frame(&message), None);
    }

    fn role_changed(&mut self, participant_id: &str, role: Role) {
        let Some(member) = self.members.get_mut(participant_id) else {
            return;
        };
        member.view.role = role.as_str().to_owned();
        let _ = member.session.send(Input::RoleChanged { role });
        let message = ServerMessage::ParticipantUpdated {
            participant: member.view.clone(),
        };
        self.broadcast(&frame(&message), None);
    }

    // ---- the SFU's events ----------------------------------------------------------------------

    async fn on_media(&mut self, event: SfuEvent) {
        match event {
            SfuEvent::TrackPublished {
                ref identity,
                session,
                ..
            }
            | SfuEvent::TrackUnpublished {
                ref identity,
                session,
                ..
            } => {
                let Some(participant_id) = self.by_identity.get(&identity.0).cloned() else {
                    self.relay_event(&event);
                    if let SfuEvent::TrackPublished { track, .. } = &event {
                        self.record_remote(track.id).await;
                    }
                    return;
                };
                let Some(member) = self.members.get_mut(&participant_id) else {
                    return;
                };
                // A track the member has is theirs whichever connection ends it (its id is the
                // SFU's, unique); a new one is theirs only from their publisher.
                let known = match &event {
                    SfuEvent::TrackUnpublished { track, .. } => member.tracks.contains_key(track),
                    _ => false,
                };
                if member.publisher != Some(session) && !known {
                    if member.early.len() >= MAX_EARLY_EVENTS {
                        member.early.remove(0);
                    }
                    member.early.push(event);
                    return;
                }
                self.track_event(&participant_id, event).await;
            }
            SfuEvent::ActiveSpeakers { speakers, .. } => {
                let speakers = speakers
                    .into_iter()
                    .filter_map(|s| {
                        let participant_id = match self.by_identity.get(&s.identity.0) {
                            Some(id) => id.clone(),
                            None => self
                                .cascade
                                .as_ref()?
                                .participant_of(&s.identity.0)?
                                .to_owned(),
                        };
                        Some(SpeakerView {
                            participant_id,
                            level: s.level,
                        })
                    })
                    .collect();
                self.broadcast(&frame(&ServerMessage::ActiveSpeakers { speakers }), None);
            }
            SfuEvent::RelayWish {
                session,
                track,
                wish,
                ..
            } => {
                if let Some(cascade) = &mut self.cascade {
                    cascade.tell_wish(session, track, wish);
                }
            }
            // Session events go to their sessions, not here.
            _ => {}
        }
    }

    /// A track event of no local member: a relay's track arriving (local members are told, so
    /// manual subscribers take it and those who unsubscribed drop it) or going away.
    fn relay_event(&mut self, event: &SfuEvent) {
        let Some(cascade) = &mut self.cascade else {
            return;
        };
        match event {
            SfuEvent::TrackPublished { track, .. } if cascade.is_remote_track(track.id) => {
                for member in self.members.values() {
                    let _ = member
                        .session
                        .send(Input::RemoteTrackLive { track: track.id });
                }
            }
            SfuEvent::TrackUnpublished { session, .. } if cascade.is_relay(*session) => {
                cascade.relay_ended(*session);
                self.reconcile_relays();
            }
            // A WHIP publisher here: shared like a member, so other nodes relay its tracks. (Not
            // a relay whose publisher went away meanwhile: that one is closing.)
            SfuEvent::TrackPublished {
                identity, track, ..
            } if cascade.participant_of(&identity.0).is_none() => {
                let kind = kind_of(track.kind);
                let view = self
                    .whip_publishers
                    .entry(identity.0.clone())
                    .or_insert_with(|| ParticipantView {
                        participant_id: identity.0.clone(),
                        identity: identity.0.clone(),
                        user_id: None,
                        display_name: identity.0.clone(),
                        role: "publisher".to_owned(),
                        muted: Vec::new(),
                        hand_raised: false,
                        tracks: Vec::new(),
                    });
                view.tracks.push(TrackView {
                    track_id: track.id.to_string(),
                    source: Source::default_for(kind),
                    kind,
                    muted: false,
                    publisher_track_id: track.publisher_track_id.clone(),
                    mime_type: track.mime_type.clone(),
                });
                cascade.put_member(&identity.0, Some(view));
            }
            SfuEvent::TrackUnpublished {
                identity, track, ..
            } => {
                let Some(view) = self.whip_publishers.get_mut(&identity.0) else {
                    return;
                };
                let id = track.to_string();
                view.tracks.retain(|t| t.track_id != id);
                if view.tracks.is_empty() {
                    self.whip_publishers.remove(&identity.0);
                    cascade.put_member(&identity.0, None);
                } else {
                    cascade.put_member(&identity.0, Some(view));
                }
            }
            _ => {}
        }
    }

    async fn publisher(&mut self, participant_id: &str, publisher: PeerId) {
        let Some(member) = self.members.get_mut(participant_id) else {
            return;
        };
        member.publisher = Some(publisher);
        let early = std::mem::take(&mut member.early);
        for event in early {
            let ours = match &event {
                SfuEvent::TrackPublished { session, .. }
                | SfuEvent::TrackUnpublished { session, .. } => *session == publisher,
                _ => false,
            };
            if ours {
                self.track_event(participant_id, event).await;
            }
        }
    }

    /// A track event of the member's current publisher connection.
    async fn track_event(&mut self, participant_id: &str, event: SfuEvent) {
        let Some(member) = self.members.get_mut(participant_id) else {
            return;
        };
        match event {
            SfuEvent::TrackPublished { track, .. } => {
                let kind = kind_of(track.kind);
                let source = member
                    .sources
                    .get(&track.publisher_track_id)
                    .copied()
                    .filter(|s| s.kind() == kind)
                    .unwrap_or(Source::default_for(kind));
                member.tracks.insert(track.id, (source, kind));
                let muted = member.view.muted.contains(&source);
                let view_track = TrackView {
                    track_id: track.id.to_string(),
                    source,
                    kind,
                    muted,
                    publisher_track_id: track.publisher_track_id,
                    mime_type: track.mime_type,
                };
                let view_track_mime = view_track.mime_type.clone();
                member.view.tracks.push(view_track.clone());
                self.broadcast(
                    &frame(&ServerMessage::TrackPublished {
                        participant_id: participant_id.to_owned(),
                        track: view_track,
                    }),
                    None,
                );
                tracing::debug!(participant = %participant_id, track = %track.id, source = source.as_str(), "track published");
                self.share(participant_id);
                let data = serde_json::json!({
                    "meeting_id": self.meeting_id, "participant_id": participant_id,
                    "track_id": track.id.to_string(), "source": source.as_str(),
                    "mime_type": view_track_mime,
                });
                if let Err(e) = self
                    .services
                    .store
                    .enqueue_event("track_published", &data)
                    .await
                {
                    tracing::warn!(error = %e, "track_published event not written");
                }
                // A screen share is what viewers most need to read: it gets its share of each
                // subscriber's bandwidth before cameras do.
                if source == Source::Screen {
                    let priority = crate::sfu::SCREEN_PRIORITY;
                    if let Err(e) = self
                        .services
                        .sfu
                        .set_track_priority(track.id, priority)
                        .await
                    {
                        tracing::debug!(track = %track.id, error = %e, "screen priority not set");
                    }
                }
                // A new track starts forwarding; it follows the participant's mute state.
                self.apply_mute(participant_id, track.id, muted).await;
                self.record_track(participant_id, track.id, source).await;
            }
            SfuEvent::TrackUnpublished { track, .. } => {
                if member.tracks.remove(&track).is_none() {
                    return;
                }
                let track_id = track.to_string();
                member.view.tracks.retain(|t| t.track_id != track_id);
                let data = serde_json::json!({
                    "meeting_id": self.meeting_id, "participant_id": participant_id,
                    "track_id": track_id,
                });
                if let Err(e) = self
                    .services
                    .store
                    .enqueue_event("track_unpublished", &data)
                    .await
                {
                    tracing::warn!(error = %e, "track_unpublished event not written");
                }
                self.broadcast(
                    &frame(&ServerMessage::TrackUnpublished {
                        participant_id: participant_id.to_owned(),
                        track_id,
                    }),
                    None,
                );
                self.share(participant_id);
            }
            _ => {}
        }
    }

    // ---- recording ----------------------------------------------------------------------------

    async fn start_recording(&mut self, recording: Recording) -> Result<Recording, RecordingError> {
        if self.ended || self.signaling.stopping() {
            return Err(RecordingError::Closed);
        }
        if self.recording.is_some() {
            return Err(RecordingError::AlreadyRunning);
        }
        let recorder = self.services.recorder.clone();
        if recorder.disk_full() {
            return Err(RecordingError::DiskFull);
        }
        match self.services.store.insert_recording(&recording).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(RecordingError::AlreadyRunning),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(meeting = %self.meeting_id, recording = %recording.id, audio_only = recording.audio_only, "recording started");
        self.recording = Some(recorder.start(&recording));
        let tracks: Vec<(String, TrackId, Source)> = self
            .members
            .iter()
            .flat_map(|(id, m)| {
                m.tracks
                    .iter()
                    .map(move |(track, (source, _))| (id.clone(), *track, *source))
            })
            .collect();
        for (participant_id, track, source) in tracks {
            self.record_track(&participant_id, track, source).await;
        }
        // Cascading: the participants of other nodes are recorded too; their tracks are relayed
        // here while it records (those not relayed yet join as they arrive).
        self.reconcile_relays();
        let remote = self
            .cascade
            .as_ref()
            .map(|c| c.relayed_tracks())
            .unwrap_or_default();
        for track in remote {
            self.record_remote(track).await;
        }
        let by = recording
            .started_by
            .as_ref()
            .and_then(|identity| self.by_identity.get(identity).cloned());
        self.broadcast(
            &frame(&ServerMessage::RecordingStarted {
                recording_id: recording.id.clone(),
                audio_only: recording.audio_only,
                by,
            }),
            None,
        );
        Ok(recording)
    }

    /// Stops the running recording: files closed, rows written, everyone told.
    async fn stop_recording(
        &mut self,
        _by: Option<String>,
        reason: Option<&'static str>,
    ) -> Result<Recording, RecordingError> {
        let Some(handle) = self.recording.take() else {
            return Err(RecordingError::NotRunning);
        };
        let recording = handle.stop(reason).await;
        tracing::info!(meeting = %self.meeting_id, recording = %recording.id, status = %recording.status, reason = ?recording.reason, "recording stopped");
        self.reconcile_relays();
        self.broadcast(
            &frame(&ServerMessage::RecordingStopped {
                recording_id: recording.id.clone(),
                status: recording.status.clone(),
                reason: recording.reason.clone(),
            }),
            None,
        );
        Ok(recording)
    }

    /// Adds one of a member's tracks (or, cascading, a remote participant's track relayed
    /// here) to the running recording: camera and microphone share a file, a screen share and
    /// its audio have their own.
    async fn record_track(&mut self, participant_id: &str, track: TrackId, source: Source) {
        let view = match self.members.get(participant_id) {
            Some(member) => Some(&member.view),
            None => self
                .cascade
                .as_ref()
                .and_then(|c| c.remote_view(participant_id)),
        };
        let Some(view) = view else {
            return;
        };
        let file_source = match source {
            Source::Screen | Source::ScreenAudio => "screen",
            _ => "camera",
        };
        let owner = FileOwner {
            participant_id: participant_id.to_owned(),
            identity: view.identity.clone(),
            display_name: view.display_name.clone(),
            source: file_source,
        };
        let Some(handle) = &mut self.recording else {
            return;
        };
        handle.add_track(owner, track).await;
    }

    /// The meeting records itself once live when its `recording` setting says so: checked on
    /// the first member of this task.
    async fn auto_record(&mut self) {
        if self.auto_record_checked || self.recording.is_some() {
            return;
        }
        self.auto_record_checked = true;
        let store = &self.services.store;
        let Ok(meeting) = store.meeting(&self.meeting_id).await else {
            return;
        };
        if !meeting.settings.recording || meeting.status != Status::Live.as_str() {
            return;
        }
        if matches!(store.running_recording(&self.meeting_id).await, Ok(Some(_))) {
            return;
        }
        let recording = Recording::new(self.meeting_id.clone(), false, None);
        if let Err(e) = self.start_recording(recording).await {
            tracing::warn!(meeting = %self.meeting_id, error = %e, "automatic recording not started");
        }
    }

    /// Cascading: a remote participant's track, relayed here, joins the running recording.
    async fn record_remote(&mut self, track: TrackId) {
        let Some((participant_id, source)) =
            self.cascade.as_ref().and_then(|c| c.remote_track(track))
        else {
            return;
        };
        self.record_track(&participant_id, track, source).await;
    }

    /// A member who joins while the meeting is recorded is told at once.
    fn tell_recording(&self, participant_id: &str) {
        let (Some(handle), Some(member)) = (&self.recording, self.members.get(participant_id))
        else {
            return;
        };
        let message = ServerMessage::RecordingStarted {
            recording_id: handle.recording_id.clone(),
            audio_only: handle.audio_only,
            by: None,
        };
        let _ = member.session.send(Input::Deliver(frame(&message)));
    }

    // ---- the waiting room and the end ----------------------------------------------------------

    fn waiting_resolved(&mut self, participant_id: String, admitted: bool) {
        if let Some(waiter) = self.waiting.get(&participant_id) {
            let _ = waiter.events.send(if admitted {
                WaitEvent::Admitted
            } else {
                WaitEvent::Denied
            });
        }
        let message = if admitted {
            ServerMessage::Admitted {
                participant_id,
                join_token: None,
                role: None,
            }
        } else {
            ServerMessage::Denied { participant_id }
        };
        self.to_moderators(&frame(&message));
    }

    fn meeting_ended(&mut self, by: Option<String>) {
        self.ended = true;
        self.countdown = None;
        for member in self.members.values() {
            let _ = member.session.send(Input::MeetingEnded { by: by.clone() });
        }
        for waiter in self.waiting.values() {
            let _ = waiter.events.send(WaitEvent::MeetingEnded);
        }
    }

    fn start_countdown(&mut self) {
        let timeout = self.services.empty_timeout;
        if timeout.is_zero() || self.signaling.stopping() {
            return;
        }
        self.countdown = Some(Countdown {
            deadline: Instant::now() + timeout,
            since_ms: now_ms(),
        });
        tracing::debug!(meeting = %self.meeting_id, ?timeout, "meeting empty; countdown started");
    }

    /// The countdown ran out: the meeting ends if it is still live and nobody took a seat
    /// meanwhile. Joins wait in the queue until this is decided; one that arrives after the
    /// end is refused.
    async fn countdown_due(&mut self) {
        let Some(countdown) = self.countdown.take() else {
            return;
        };
        let store = &self.services.store;
        let meeting = match store.meeting(&self.meeting_id).await {
            Ok(meeting) => meeting,
            Err(e) => {
                tracing::warn!(meeting = %self.meeting_id, error = %e, "empty meeting not ended: reading it failed");
                return;
            }
        };
        if meeting.status != Status::Live.as_str() {
            return;
        }
        let seats = match store
            .meeting_participants(&self.meeting_id, Some("joined"))
            .await
        {
            Ok(seats) => seats,
            Err(e) => {
                tracing::warn!(meeting = %self.meeting_id, error = %e, "empty meeting not ended: reading its seats failed");
                return;
            }
        };
        if let Some(node) = &self.services.node_id {
            match store.seats_joined_elsewhere(&self.meeting_id, node).await {
                Ok(0) => {}
                Ok(_) => {
                    // Its participants are on another node (or on one that died, whose seats
                    // the sweep closes after the resume grace, counting down again then).
                    tracing::debug!(meeting = %self.meeting_id, "seats joined on other nodes; not ended");
                    return;
                }
                Err(e) => {
                    tracing::warn!(meeting = %self.meeting_id, error = %e, "empty meeting not ended: reading its seats failed");
                    return;
                }
            }
        }
        let latest_join = seats.iter().filter_map(|p| p.joined_at).max();
        if let Some(joined_at) = latest_join.filter(|at| *at > countdown.since_ms) {
            let waited = Duration::from_millis(u64::try_from(now_ms() - joined_at).unwrap_or(0));
            self.countdown = Some(Countdown {
                deadline: Instant::now() + self.services.empty_timeout.saturating_sub(waited),
                since_ms: joined_at,
            });
            tracing::debug!(meeting = %self.meeting_id, "joined over REST during the countdown; waiting for its socket");
            return;
        }
        let sfu = &self.services.sfu;
        match moderation::close_meeting(store, sfu, &self.meeting_id, "ended").await {
            Ok(()) => {
                tracing::info!(meeting = %self.meeting_id, timeout = ?self.services.empty_timeout, "empty meeting ended");
                let _ = self.stop_recording(None, None).await;
                self.meeting_ended(None);
            }
            // Ended meanwhile by its host.
            Err(ModerationError::MeetingClosed) => {}
            Err(e) => {
                tracing::warn!(meeting = %self.meeting_id, error = %e, "empty meeting not ended")
            }
        }
    }
}

#[cfg(test)]
#[path = "room_tests.rs"]
mod tests;
