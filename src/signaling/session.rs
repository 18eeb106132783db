//! One participant's signaling session: `join → live → ended`. A task per session owns its media
//! connections (a publisher the client offers on, a subscriber the server offers on) and what
//! the client declared it publishes, and talks to at most one socket at a time. What the room
//! sees of the participant (their view, tracks, mute and hand state) is the room task's
//! (`signaling::room`); the session asks it for changes.
//!
//! The session outlives its socket: when the socket drops, the media stays up for the resume
//! grace period, and a new socket of the same participant that joins with `resume` takes the
//! session over without anyone seeing a leave and a join. A socket that joins as the same
//! identity without resuming replaces the session instead (the old socket is closed with
//! `replaced`).
//!
//! Must never: let a client message panic.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use super::protocol::{
    close, ChatView, ClientMessage, Joined, Kind, ModerateAction, Moderation, ParticipantView,
    Permissions, ServerMessage, Source, Target, WaitingView, PROTOCOL_VERSION,
};
use super::rooms::{frame, Frame};
use super::Context;
use crate::domain::admission::room_limits;
use crate::domain::moderation::{self as rules, ModerationError};
use crate::domain::roles::{grants_for, Action, GrantSettings, Role};
use crate::domain::token::{Grants, JoinClaims};
use crate::http_error::ApiError;
use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};
use crate::sfu::quality::Quality;
use crate::sfu::sdp::Sdp;
use crate::sfu::simulcast::{self, Wanted};
use crate::sfu::{FragmentCandidate, IceFragment, Intent, MediaKind, SfuEvent};
use crate::store::chat::{Message, NewMessage};
use crate::store::meetings::Meeting;
use crate::store::{now_ms, StoreError};

/// Tracks a session lists by name (subscribed to when manual, unsubscribed from otherwise):
/// every one a client names is remembered, so their number is bounded.
const MAX_LISTED_TRACKS: usize = 1024;
/// Times a session re-creates a subscriber connection that closed under it.
const MAX_SUBSCRIBER_RESETS: u32 = 3;
/// The highest frame-rate cap `set_track` takes.
pub(crate) const MAX_FPS: u16 = 240;

/// The largest tile side `set_track` takes, in pixels (8K).
pub(crate) const MAX_TILE_SIDE: u16 = 8192;
/// How long a join waits for the session it takes over to finish.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session task is told.
pub(crate) enum Input {
    /// A message from the socket `socket`.
    Client {
        socket: u64,
        message: ClientMessage,
        reference: Option<String>,
    },
    /// A socket of the same participant resumes the session; the socket comes back when the
    /// session has ended.
    Attach {
        socket: SocketHandle,
        reply: oneshot::Sender<Result<(), SocketHandle>>,
    },
    /// The socket went away without `leave`.
    Detached {
        socket: u64,
    },
    /// A room message for the client.
    Deliver(Frame),
    /// Cascading: a remote track is relayed here now; the subscriber connection follows the
    /// client's subscription to it.
    RemoteTrackLive {
        track: TrackId,
    },
    Kicked {
        banned: bool,
        by: Option<String>,
    },
    MeetingEnded {
        by: Option<String>,
    },
    /// Another join of the same identity takes over; reply once torn down.
    Replaced {
        reply: oneshot::Sender<()>,
    },
    RoleChanged {
        role: Role,
    },
    MeetingChanged {
        meeting: Box<Meeting>,
    },
    Shutdown,
}

/// The session's way to its current socket.
pub(crate) struct SocketHandle {
    pub id: u64,
    pub outbound: mpsc::Sender<Outbound>,
}

/// What a socket task writes.
#[derive(Debug)]
pub(crate) enum Outbound {
    Frame(Frame),
    /// Close with this code and reason, then stop.
    Close {
        code: u16,
        reason: String,
    },
}

/// Why a `join` was refused: sent as `error`, then the socket closes with `close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinFailure {
    pub code: &'static str,
    pub message: String,
    pub close: u16,
    /// `wrong_node`: where to join instead.
    pub ws_url: Option<String>,
}

impl JoinFailure {
    fn new(code: &'static str, message: impl Into<String>, close: u16) -> Self {
        Self {
            code,
            message: message.into(),
            close,
            ws_url: None,
        }
    }
}

impl From<StoreError> for JoinFailure {
    fn from(error: StoreError) -> Self {
        let api = ApiError::from(error);
        JoinFailure::new(api.code, api.message, close::INTERNAL)
    }
}

/// The SFU's kind for one of ours.
pub(crate) fn media_kind(kind: Kind) -> MediaKind {
    match kind {
        Kind::Audio => MediaKind::Audio,
        Kind::Video => MediaKind::Video,
    }
}

pub(crate) fn kind_of(kind: MediaKind) -> Kind {
    match kind {
        MediaKind::Audio => Kind::Audio,
        MediaKind::Video => Kind::Video,
    }
}

/// Chat messages a `joined` carries.
const JOINED_CHAT_HISTORY: i64 = 50;

pub(crate) fn chat_view(message: &Message) -> ChatView {
    ChatView {
        id: message.id.clone(),
        participant_id: message.participant_id.clone(),
        user_id: message.user_id.clone(),
        sender_name: message.sender_name.clone(),
        text: message.body.clone(),
        created_at: chrono::DateTime::from_timestamp_millis(message.created_at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// Enters the meeting `claims` admit to, over `socket`: resumes the participant's held session
/// (`resume`), or starts a new one, replacing any session of the same identity. Returns the
/// session's channel, for the socket's messages.
pub(crate) async fn join(
    state: &Context,
    claims: &JoinClaims,
    resume: bool,
    manual: bool,
    socket: SocketHandle,
) -> Result<mpsc::UnboundedSender<Input>, JoinFailure> {
    let store = &state.store;
    let meeting = match store.meeting(&claims.room).await {
        Ok(meeting) => meeting,
        Err(StoreError::NotFound) => {
            return Err(JoinFailure::new(
                "meeting_not_found",
                "the token's room is not a meeting",
                close::FORBIDDEN,
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if crate::domain::meetings::is_closed(&meeting.status) {
        return Err(JoinFailure::new(
            "meeting_ended",
            "the meeting has ended",
            close::MEETING_ENDED,
        ));
    }
    if store.is_banned(&meeting.id, &claims.sub).await? {
        return Err(JoinFailure::new(
            "banned",
            "you are banned from this meeting",
            close::KICKED,
        ));
    }
    let Some(seat) = store
        .latest_seat_of_identity(&meeting.id, &claims.sub)
        .await?
    else {
        return Err(JoinFailure::new(
            "not_joined",
            "join the meeting over REST first",
            close::SESSION_GONE,
        ));
    };
    // A token issued for an earlier seat (before a newer join of the same account, or a seat
    // given up) is revoked with it.
    if claims.pid.as_ref().is_some_and(|pid| *pid != seat.id) {
        return Err(JoinFailure::new(
            "seat_gone",
            "the seat this token was issued for is no longer held; join the meeting again",
            close::SESSION_GONE,
        ));
    }
    match seat.status.as_str() {
        "joined" => {}
        "kicked" => {
            return Err(JoinFailure::new(
                "kicked",
                "you were removed from this meeting",
                close::KICKED,
            ))
        }
        "waiting" => {
            return Err(JoinFailure::new(
                "not_admitted",
                "you are in the waiting room: connect with ?wait_token=",
                close::FORBIDDEN,
            ))
        }
        _ => {
            return Err(JoinFailure::new(
                "session_gone",
                "your seat in this meeting was given up; join the meeting again",
                close::SESSION_GONE,
            ))
        }
    }

    let held = state
        .live
        .rooms
        .session_of_identity(&meeting.id, &seat.identity)
        .await;
    // In a cluster, a meeting's sessions live on the node its room is placed on (placed now if
    // it is nowhere, or again if its node died): a socket elsewhere is sent there, unless its
    // session is held here (a resume goes where its media is). With cascading, a meeting
    // spreads over the nodes its participants reach.
    let placed = state
        .cluster
        .as_ref()
        .filter(|_| !state.config.cluster_cascade);
    if let (Some(cluster), None) = (placed, &held) {
        if let crate::cluster::Owner::Node(node) = cluster.place(&meeting.id).await {
            let mut failure = JoinFailure::new(
                "wrong_node",
                format!("this meeting is served by node {}: join there", node.id),
                close::WRONG_NODE,
            );
            failure.ws_url = Some(crate::cluster::ws_url(&node.http_url));
            return Err(failure);
        }
    }
    let mut socket = socket;
    if let Some((held, session)) = held {
        if resume && held == seat.id {
            let (reply, attached) = oneshot::channel();
            if session.send(Input::Attach { socket, reply }).is_ok() {
                match tokio::time::timeout(HANDOVER_TIMEOUT, attached).await {
                    Ok(Ok(Ok(()))) => {
                        info!(meeting = %meeting.id, participant = %seat.id, "session resumed");
                        return Ok(session);
                    }
                    // The session ended meanwhile: start a new one below.
                    Ok(Ok(Err(returned))) => socket = returned,
                    _ => {
                        return Err(JoinFailure::new(
                            "session_gone",
                            "the session could not be resumed; join again without resume",
                            close::SESSION_GONE,
                        ))
                    }
                }
            } else {
                return Err(JoinFailure::new(
                    "session_gone",
                    "the session could not be resumed; join again without resume",
                    close::SESSION_GONE,
                ));
            }
        } else if state.config.ws_duplicate_join == crate::config::DuplicateJoin::Refuse {
            return Err(JoinFailure::new(
                "already_connected",
                "you are already connected to this meeting from another socket",
                close::ALREADY_CONNECTED,
            ));
        } else {
            let (reply, done) = oneshot::channel();
            if session.send(Input::Replaced { reply }).is_ok() {
                let _ = tokio::time::timeout(HANDOVER_TIMEOUT, done).await;
            }
        }
        // Re-read the seat: the session that just ended may have given it up.
        let still = store
            .latest_seat_of_identity(&meeting.id, &seat.identity)
            .await?;
        if still.as_ref().map(|s| (s.id.as_str(), s.status.as_str()))
            != Some((seat.id.as_str(), "joined"))
        {
            return Err(JoinFailure::new(
                "session_gone",
                "your seat in this meeting was given up; join the meeting again",
                close::SESSION_GONE,
            ));
        }
    }
    start(state, meeting, seat, claims.grants.clone(), manual, socket).await
}

/// Creates the session: its subscriber connection (the first `offer`), its registration, and
/// its task. Sends `joined` and the offer on `socket`. Returns the session's channel.
async fn start(
    state: &Context,
    meeting: Meeting,
    seat: crate::store::participants::Participant,
    token_grants: Grants,
    manual: bool,
    socket: SocketHandle,
) -> Result<mpsc::UnboundedSender<Input>, JoinFailure> {
    let room = RoomId(meeting.id.clone());
    let identity = seat.identity.clone();
    if let Some(cluster) = &state.cluster {
        state
            .store
            .set_seat_node(&meeting.id, &seat.id, cluster.node_id())
            .await?;
    }
    let (inputs_tx, inputs) = mpsc::unbounded_channel();
    let (sfu_tx, sfu_events) = mpsc::unbounded_channel();
    let role = if seat.user_id.as_deref() == Some(meeting.host_id.as_str()) {
        Role::Host
    } else {
        Role::parse(&seat.role).unwrap_or(Role::Guest)
    };

    let (subscriber, offer) = if token_grants.subscribe {
        let negotiated = state
            .sfu
            .subscribe_room(
                room.clone(),
                ParticipantId(identity.clone()),
                room_limits(&state.config, Some(&meeting)),
                manual,
            )
            .await
            .map_err(|e| {
                let api = ApiError::from(e);
                JoinFailure::new(api.code, api.message, close::TRY_AGAIN)
            })?;
        state
            .live
            .hub
            .watch_session(negotiated.session, sfu_tx.clone());
        (Some(negotiated.session), Some(negotiated.answer))
    } else {
        (None, None)
    };

    let mut muted = Vec::new();
    if seat.mic_muted {
        muted.push(Source::Microphone);
    }
    if seat.camera_off {
        muted.push(Source::Camera);
    }
    let view = ParticipantView {
        participant_id: seat.id.clone(),
        identity: identity.clone(),
        user_id: seat.user_id.clone(),
        display_name: seat.display_name.clone(),
        role: role.as_str().to_owned(),
        muted,
        hand_raised: false,
        tracks: Vec::new(),
    };
    let waiting = if role.is_moderator() {
        Some(waiting_list(state, &meeting.id).await?)
    } else {
        None
    };
    let mut session = Session {
        state: state.clone(),
        room,
        participant_id: seat.id.clone(),
        identity,
        user_id: seat.user_id.clone(),
        display_name: seat.display_name.clone(),
        role,
        grants: token_grants,
        meeting,
        me: inputs_tx.clone(),
        socket: None,
        grace_until: None,
        publisher: None,
        subscriber,
        pending_offer: None,
        subscriber_resets: 0,
        declared: HashMap::new(),
        chat: Bucket::per_minute(state.config.ws_chat_per_minute),
        last_typing: None,
        quality: (None, None),
        announced_quality: None,
        sfu_tx,
        ended: false,
        subscriptions: super::cascade::Subscriptions {
            receives: subscriber.is_some(),
            manual,
            listed: Default::default(),
        },
    };
    let registered = state
        .live
        .rooms
        .register(
            &session.meeting.id,
            view.clone(),
            inputs_tx.clone(),
            session.subscriptions.clone(),
        )
        .await;
    let Ok(others) = registered else {
        // Ended (or the server stops) while this join was on its way.
        session.end(Ending::Refused).await;
        return Err(JoinFailure::new(
            "meeting_ended",
            "the meeting has ended",
            close::MEETING_ENDED,
        ));
    };
    info!(meeting = %session.meeting.id, participant = %session.participant_id, identity = %session.identity, "participant joined signaling");
    let chat = session.recent_chat().await;
    let joined = session.joined(view, others, waiting, false, chat);
    let _ = socket.outbound.try_send(Outbound::Frame(frame(&joined)));
    if let Some(sdp) = offer {
        session.pending_offer = Some(PendingOffer { sdp, reset: false });
        session.send_pending_offer_on(&socket);
    }
    session.socket = Some(socket);
    tokio::spawn(session.run(inputs, sfu_events));
    Ok(inputs_tx)
}

async fn waiting_list(state: &Context, meeting_id: &str) -> Result<Vec<WaitingView>, StoreError> {
    Ok(state
        .store
        .meeting_participants(meeting_id, Some("waiting"))
        .await?
        .into_iter()
        .map(|p| WaitingView {
            participant_id: p.id,
            display_name: p.display_name,
            user_id: p.user_id,
        })
        .collect())
}

/// An offer for the subscriber connection the client has not answered yet.
struct PendingOffer {
    sdp: String,
    /// The offer is for a new subscriber connection.
    reset: bool,
}

/// How a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Left,
    /// The socket dropped and no socket resumed within the grace period.
    Disconnected,
    Replaced,
    Kicked {
        banned: bool,
        by: Option<String>,
    },
    MeetingEnded {
        by: Option<String>,
    },
    Shutdown,
    /// The room refused the registration: nothing was announced.
    Refused,
}

struct Session {
    state: Context,
    room: RoomId,
    meeting: Meeting,
    participant_id: String,
    identity: String,
    user_id: Option<String>,
    display_name: String,
    role: Role,
    /// What the participant may do: the join token's grants, recomputed from the role and the
    /// meeting settings when either changes.
    grants: Grants,
    /// The session's own channel: its identity in its room.
    me: mpsc::UnboundedSender<Input>,
    socket: Option<SocketHandle>,
    /// Set while no socket is attached: the session ends then.
    grace_until: Option<Instant>,
    publisher: Option<PeerId>,
    subscriber: Option<PeerId>,
    pending_offer: Option<PendingOffer>,
    subscriber_resets: u32,
    /// Client track id → declared source (`publish`).
    declared: HashMap<String, Source>,
    chat: Bucket,
    last_typing: Option<(Instant, bool)>,
    /// Last quality of the publisher and the subscriber connection.
    quality: (Option<Quality>, Option<Quality>),
    announced_quality: Option<Quality>,
    sfu_tx: mpsc::UnboundedSender<SfuEvent>,
    ended: bool,
    /// What the subscriber connection carries (mirrored in the room, for cascade relays).
    subscriptions: super::cascade::Subscriptions,
}

/// A client-visible failure of one message: `error` with this code and message.
struct Refusal {
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal::new(error.code, error.message)
    }
}

impl From<crate::sfu::SfuError> for Refusal {
    fn from(error: crate::sfu::SfuError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<ModerationError> for Refusal {
    fn from(error: ModerationError) -> Self {
        let message = error.to_string();
        match error {
            ModerationError::ParticipantNotFound => Refusal::new("participant_not_found", message),
            ModerationError::Forbidden(_) => Refusal::new("forbidden", message),
            ModerationError::NotWaiting => Refusal::new("not_waiting", message),
            ModerationError::MeetingClosed => Refusal::new("meeting_closed", message),
            ModerationError::Invalid { .. } => Refusal::new("invalid", message),
            ModerationError::Store(e) => e.into(),
        }
    }
}

type Outcome = Result<(), Refusal>;

impl Session {
    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut sfu_events: mpsc::UnboundedReceiver<SfuEvent>,
    ) {
        let every = (self.state.config.join_token_ttl / 2).max(Duration::from_secs(1));
        let mut refresh = tokio::time::interval_at(Instant::now() + every, every);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.ended {
            let grace = self.grace_until;
            tokio::select! {
                _ = refresh.tick() => self.refresh_token(),
                input = inputs.recv() => match input {
                    Some(input) => self.on_input(input).await,
                    // The registry dropped us (cannot happen while registered): nothing to serve.
                    None => self.end(Ending::Disconnected).await,
                },
                Some(event) = sfu_events.recv() => self.on_sfu_event(event).await,
                _ = sleep_until(grace), if grace.is_some() => {
                    info!(participant = %self.participant_id, "resume grace period over");
                    self.end(Ending::Disconnected).await;
                }
            }
        }
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Client {
                socket,
                message,
                reference,
            } => {
                if self.socket.as_ref().map(|s| s.id) != Some(socket) {
                    return; // a socket this session already let go of
                }
                if let Err(refusal) = self.on_client(message, reference.clone()).await {
                    self.send(&ServerMessage::error(
                        refusal.code,
                        refusal.message,
                        reference,
                    ));
                }
            }
            Input::Attach { socket, reply } => self.attach(socket, reply).await,
            Input::Detached { socket } => {
                if self.socket.as_ref().map(|s| s.id) == Some(socket) {
                    info!(participant = %self.participant_id, "socket dropped; holding the session");
                    self.detach();
                }
            }
            Input::Deliver(frame) => self.send_frame(frame),
            Input::RemoteTrackLive { track } => {
                // Automatic subscribers got it; manual ones take it if they asked for it, and
                // automatic ones who unsubscribed before it came drop it.
                if let Some(session) = self.subscriber {
                    if self.subscriptions.listed.contains(&track) {
                        let subscribed = self.subscriptions.manual;
                        if let Err(e) = self
                            .state
                            .sfu
                            .set_subscribed(session, track, subscribed)
                            .await
                        {
                            tracing::debug!(%track, error = %e, "relayed track's subscription not applied");
                        }
                    }
                }
            }
            Input::Kicked { banned, by } => self.end(Ending::Kicked { banned, by }).await,
            Input::MeetingEnded { by } => self.end(Ending::MeetingEnded { by }).await,
            Input::Replaced { reply } => {
                self.end(Ending::Replaced).await;
                let _ = reply.send(());
            }
            Input::RoleChanged { role } => {
                self.role = role;
                self.regrant();
            }
            Input::MeetingChanged { meeting } => {
                self.meeting = *meeting;
                self.regrant();
            }
            Input::Shutdown => self.end(Ending::Shutdown).await,
        }
    }

    /// Sends the attached socket a new join token for this seat, with the current grants.
    fn refresh_token(&mut self) {
        if self.socket.is_none() {
            return;
        }
        let ttl = self.state.config.join_token_ttl;
        let mut claims =
            JoinClaims::new(&self.meeting.id, &self.identity, self.grants.clone(), ttl);
        claims.name = Some(self.display_name.clone());
        claims.pid = Some(self.participant_id.clone());
        let expires_at = chrono::DateTime::from_timestamp(claims.exp as i64, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let join_token = self.state.keys.sign(&claims);
        self.send(&ServerMessage::TokenRefreshed {
            join_token,
            expires_at,
        });
    }

    /// Grants follow the current role and meeting settings once either changed after the join.
    fn regrant(&mut self) {
        let settings = &self.meeting.settings;
        let mut grants = grants_for(
            self.role,
            GrantSettings {
                chat: settings.chat,
                screen_share: settings.screen_share,
                recording: settings.recording,
            },
        );
        grants.publish = self.grants.publish;
        grants.subscribe = self.grants.subscribe;
        self.grants = grants;
    }

    // ---- client messages ------------------------------------------------------------------

    async fn on_client(&mut self, message: ClientMessage, reference: Option<String>) -> Outcome {
        match message {
            ClientMessage::Join { .. } => Err(Refusal::new(
                "already_joined",
                "this socket has joined already",
            )),
            ClientMessage::Offer { sdp } => self.publisher_offer(sdp, reference).await,
            ClientMessage::Answer { sdp } => self.subscriber_answer(sdp).await,
            ClientMessage::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
                target,
            } => {
                self.candidate(candidate, sdp_mid, sdp_mline_index, target)
                    .await
            }
            ClientMessage::Publish { source, track_id } => self.declare(source, track_id),
            ClientMessage::Unpublish { track_id } => {
                self.declared.remove(&track_id);
                Ok(())
            }
            ClientMessage::Subscribe { track_id } => self.set_subscribed(&track_id, true).await,
            ClientMessage::Unsubscribe { track_id } => self.set_subscribed(&track_id, false).await,
            ClientMessage::SetTrack {
                track_id,
                paused,
                width,
                height,
                layer,
                fps,
            } => {
                self.set_track(&track_id, paused, width, height, layer, fps)
                    .await
            }
            ClientMessage::Mute { source, muted } => self.set_muted(source, muted).await,
            ClientMessage::RaiseHand => self.set_hand(true),
            ClientMessage::LowerHand => self.set_hand(false),
            ClientMessage::Chat { text } => self.chat(text).await,
            ClientMessage::Typing { active } => {
                self.typing(active);
                Ok(())
            }
            ClientMessage::Moderate(moderation) => self.moderate(moderation).await,
            ClientMessage::Leave => {
                self.end(Ending::Left).await;
                Ok(())
            }
            ClientMessage::Ping => {
                self.send(&ServerMessage::Pong { reference });
                Ok(())
            }
        }
    }

    /// The limits a new connection of this session is admitted under: the server's and the
    /// meeting's current settings.
    fn limits(&self) -> crate::sfu::RoomLimits {
        room_limits(&self.state.config, Some(&self.meeting))
    }

    /// Whether the participant may publish `source` now.
    fn may_publish(&self, source: Source) -> bool {
        let listed = self.grants.publish_sources.is_empty()
            || self
                .grants
                .publish_sources
                .iter()
                .any(|s| s == source.as_str());
        let screen_ok = !matches!(source, Source::Screen | Source::ScreenAudio)
            || (self.meeting.settings.screen_share && self.role.can(Action::ShareScreen));
        self.grants.publish && listed && screen_ok
    }

    fn declare(&mut self, source: Source, track_id: String) -> Outcome {
        if !self.may_publish(source) {
            return Err(Refusal::new(
                "forbidden_source",
                format!("you may not publish {}", source.as_str()),
            ));
        }
        if track_id.is_empty() || track_id.len() > 256 {
            return Err(Refusal::new(
                "bad_message",
                "track_id must be 1 to 256 bytes",
            ));
        }
        let max = self.state.config.ws_max_declared_tracks;
        if !self.declared.contains_key(&track_id) && self.declared.len() >= max {
            return Err(Refusal::new(
                "too_many_tracks",
                format!("at most {max} declared tracks"),
            ));
        }
        self.declared.insert(track_id, source);
        Ok(())
    }

    /// The source a client track carries: its declaration when it matches the track's kind,
    /// else the default for its kind.
    fn source_of(&self, track_id: Option<&str>, kind: Kind) -> Source {
        track_id
            .and_then(|t| self.declared.get(t))
            .copied()
            .filter(|s| s.kind() == kind)
            .unwrap_or(Source::default_for(kind))
    }

    async fn publisher_offer(&mut self, sdp: String, reference: Option<String>) -> Outcome {
        if !self.grants.publish {
            return Err(Refusal::new(
                "forbidden",
                "your token does not grant publish",
            ));
        }
        let mut sources = HashMap::new();
        for track in Sdp::parse(&sdp)?.sending_tracks() {
            let kind = kind_of(track.kind);
            if let Some(declared) = track.track_id.as_deref().and_then(|t| self.declared.get(t)) {
                if declared.kind() != kind {
                    return Err(Refusal::new(
                        "bad_publish",
                        format!(
                            "track {} is {:?} but was declared as {}",
                            track.track_id.as_deref().unwrap_or(""),
                            kind,
                            declared.as_str()
                        ),
                    ));
                }
            }
            let source = self.source_of(track.track_id.as_deref(), kind);
            if !self.may_publish(source) {
                return Err(Refusal::new(
                    "forbidden_source",
                    format!("you may not publish {}", source.as_str()),
                ));
            }
            if let Some(track_id) = track.track_id {
                sources.insert(track_id, source);
            }
        }
        // A new publication is a new use of the seat: the meeting must still hold it.
        self.still_seated().await?;
        // Before the offer: the SFU announces the tracks as it answers.
        self.state
            .live
            .rooms
            .sources(&self.meeting.id, &self.participant_id, sources);
        let answer = match self.publisher {
            Some(session) => self.state.sfu.renegotiate(session, sdp).await?,
            None => {
                let negotiated = self
                    .state
                    .sfu
                    .offer(
                        self.room.clone(),
                        ParticipantId(self.identity.clone()),
                        Intent::Publish,
                        self.limits(),
                        sdp,
                    )
                    .await?;
                self.state
                    .live
                    .hub
                    .watch_session(negotiated.session, self.sfu_tx.clone());
                // The room holds this connection's track events until it knows it is ours.
                self.state.live.rooms.publisher(
                    &self.meeting.id,
                    &self.participant_id,
                    negotiated.session,
                );
                self.publisher = Some(negotiated.session);
                negotiated.answer
            }
        };
        self.send(&ServerMessage::Answer {
            sdp: answer,
            reference,
        });
        Ok(())
    }

    /// Whether the meeting is open and this session's seat is still `joined`. Kicks and ends
    /// close the session at once; this closes the window in which their messages are in flight.
    async fn still_seated(&self) -> Outcome {
        let meeting = self.state.store.meeting(&self.meeting.id).await?;
        if crate::domain::meetings::is_closed(&meeting.status) {
            return Err(Refusal::new("meeting_ended", "the meeting has ended"));
        }
        let seat = self
            .state
            .store
            .participant(&self.meeting.id, &self.participant_id)
            .await?;
        match seat.status.as_str() {
            "joined" => Ok(()),
            "kicked" => Err(Refusal::new("kicked", "you were removed from this meeting")),
            _ => Err(Refusal::new(
                "seat_gone",
                "your seat in this meeting is no longer held",
            )),
        }
    }

    async fn subscriber_answer(&mut self, sdp: String) -> Outcome {
        let Some(session) = self.subscriber else {
            return Err(Refusal::new(
                "no_connection",
                "there is no subscriber connection to answer for",
            ));
        };
        self.state.sfu.answer(session, sdp).await?;
        self.pending_offer = None;
        Ok(())
    }

    async fn candidate(
        &mut self,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
        target: Target,
    ) -> Outcome {
        let session = match target {
            Target::Publisher => self.publisher,
            Target::Subscriber => self.subscriber,
        };
        let Some(session) = session else {
            return Err(Refusal::new(
                "no_connection",
                "no such connection yet: send candidates after its offer or answer",
            ));
        };
        let candidate = candidate.trim();
        let candidate = candidate.strip_prefix("a=").unwrap_or(candidate);
        // An empty candidate is the browser's end-of-candidates: nothing to add.
        if candidate.is_empty() {
            return Ok(());
        }
        let fragment = IceFragment {
            ufrag: None,
            pwd: None,
            candidates: vec![FragmentCandidate {
                mid: sdp_mid,
                mline_index: sdp_mline_index,
                candidate: candidate.to_owned(),
            }],
        };
        self.state
            .sfu
            .patch(
                self.room.clone(),
                session,
                crate::sfu::Requester::owner(ParticipantId(self.identity.clone())),
                None,
                fragment,
            )
            .await?;
        Ok(())
    }

    // ---- media state -------------------------------------------------------------------------

    /// Selective subscription: the subscriber connection drops (or takes back) one track of
    /// another participant, and the client gets a new offer.
    async fn set_subscribed(&mut self, track_id: &str, subscribed: bool) -> Outcome {
        let (session, track) = self.received_track(track_id)?;
        let listed = &mut self.subscriptions.listed;
        if subscribed == self.subscriptions.manual {
            if listed.len() >= MAX_LISTED_TRACKS {
                return Err(Refusal::new(
                    "invalid",
                    format!("at most {MAX_LISTED_TRACKS} tracks (un)subscribed by name"),
                ));
            }
            listed.insert(track);
        } else {
            listed.remove(&track);
        }
        let rooms = &self.state.live.rooms;
        let remote = rooms.cascading()
            && rooms
                .subscription(&self.meeting.id, &self.participant_id, track, subscribed)
                .await;
        match self
            .state
            .sfu
            .set_subscribed(session, track, subscribed)
            .await
        {
            // A remote track not relayed here yet: applied when it arrives (`RemoteTrackLive`,
            // which this session handles after this).
            Err(crate::sfu::SfuError::TrackNotFound) if remote => Ok(()),
            result => result.map_err(|e| unknown_track(e, track_id, "of another participant here")),
        }
    }

    /// Sets what the client wants of one received track: the layer (by size or index), then
    /// paused or not. Checked whole before anything changes.
    async fn set_track(
        &mut self,
        track_id: &str,
        paused: Option<bool>,
        width: Option<u16>,
        height: Option<u16>,
        layer: Option<u8>,
        fps: Option<u16>,
    ) -> Outcome {
        if fps.is_some_and(|fps| fps > MAX_FPS) {
            return Err(Refusal::new(
                "invalid",
                format!("set_track's fps is 1..={MAX_FPS}, or 0 for no cap"),
            ));
        }
        let wanted = match (width, height, layer) {
            (None, None, None) => None,
            (Some(width), Some(height), None)
                if (1..=MAX_TILE_SIDE).contains(&width) && (1..=MAX_TILE_SIDE).contains(&height) =>
            {
                Some(Wanted::Size { width, height })
            }
            (None, None, Some(layer)) if usize::from(layer) < simulcast::MAX_LAYERS => {
                Some(Wanted::Layer(layer))
            }
            _ => {
                return Err(Refusal::new(
                    "invalid",
                    format!(
                        "set_track takes width and height (1..={MAX_TILE_SIDE}) together, or a layer (0..{}), not both",
                        simulcast::MAX_LAYERS
                    ),
                ))
            }
        };
        let (session, track) = self.received_track(track_id)?;
        let unknown = |e| unknown_track(e, track_id, "on your subscriber connection");
        if let Some(wanted) = wanted {
            self.state
                .sfu
                .set_wanted(session, track, wanted)
                .await
                .map_err(unknown)?;
        }
        if let Some(fps) = fps {
            self.state
                .sfu
                .set_frame_rate(session, track, (fps > 0).then_some(fps))
                .await
                .map_err(unknown)?;
        }
        if let Some(paused) = paused {
            self.state
                .sfu
                .set_paused(session, track, paused)
                .await
                .map_err(unknown)?;
        }
        Ok(())
    }

    /// The subscriber connection and the track a client's `track_id` names.
    fn received_track(&self, track_id: &str) -> Result<(PeerId, TrackId), Refusal> {
        let track = TrackId::parse(track_id)
            .ok_or_else(|| Refusal::new("unknown_track", format!("no track '{track_id}'")))?;
        let session = self
            .subscriber
            .ok_or_else(|| Refusal::new("not_ready", "the subscriber connection is not set up"))?;
        Ok((session, track))
    }

    async fn set_muted(&mut self, source: Source, muted: bool) -> Outcome {
        self.state
            .live
            .rooms
            .set_muted(&self.meeting.id, &self.participant_id, source, muted)
            .await?;
        Ok(())
    }

    fn set_hand(&mut self, raised: bool) -> Outcome {
        self.state
            .live
            .rooms
            .set_hand(&self.meeting.id, &self.participant_id, raised);
        Ok(())
    }

    // ---- chat ----------------------------------------------------------------------------------

    async fn chat(&mut self, text: String) -> Outcome {
        if !(self.grants.chat && self.meeting.settings.chat) {
            return Err(Refusal::new(
                "chat_disabled",
                "chat is turned off in this meeting",
            ));
        }
        let text = text.trim();
        if let Some(problem) = crate::domain::text::control_problem(text, true) {
            return Err(Refusal::new("invalid", format!("text {problem}")));
        }
        let max = self.state.config.chat_max_length;
        let length = text.chars().count();
        if length == 0 || length > max {
            return Err(Refusal::new(
                "invalid",
                format!("text must be 1 to {max} characters"),
            ));
        }
        if !self.chat.take() {
            return Err(Refusal::new(
                "rate_limited",
                "too many chat messages; slow down",
            ));
        }
        let message = self
            .state
            .store
            .insert_message(NewMessage {
                meeting_id: &self.meeting.id,
                participant_id: Some(&self.participant_id),
                user_id: self.user_id.as_deref(),
                sender_name: &self.display_name,
                body: text,
            })
            .await?;
        self.state.live.rooms.chat_posted(&message);
        Ok(())
    }

    fn typing(&mut self, active: bool) {
        let now = Instant::now();
        let interval = self.state.config.ws_typing_interval;
        if let Some((at, was)) = self.last_typing {
            if was == active && now.duration_since(at) < interval {
                return;
            }
        }
        self.last_typing = Some((now, active));
        self.state.live.rooms.broadcast(
            &self.meeting.id,
            &ServerMessage::Typing {
                participant_id: self.participant_id.clone(),
                active,
            },
            Some(&self.participant_id),
        );
    }

    // ---- moderation ------------------------------------------------------------------------

    async fn moderate(&mut self, request: Moderation) -> Outcome {
        let state = self.state.clone();
        let (store, sfu, signaling) = (&state.store, &state.sfu, &state.live.rooms);
        let meeting_id = self.meeting.id.clone();
        let by = Some(self.participant_id.clone());
        if request.action == ModerateAction::EndMeeting {
            if !self.role.can(Action::EndMeeting) {
                return Err(Refusal::new(
                    "forbidden",
                    "only the host may end the meeting",
                ));
            }
            rules::close_meeting(store, sfu, &meeting_id, "ended").await?;
            signaling.meeting_ended(&meeting_id, by);
            return Ok(());
        }
        if matches!(
            request.action,
            ModerateAction::StartRecording | ModerateAction::StopRecording
        ) {
            if !self.role.can(Action::ManageRecording) && !self.grants.record {
                return Err(Refusal::new(
                    "forbidden",
                    "only the host, a moderator or a token with the record grant may record",
                ));
            }
            return self.recording(request.action, request.audio_only).await;
        }
        let Some(participant_id) = request.participant_id.as_deref() else {
            return Err(Refusal::new("invalid", "participant_id is required"));
        };
        let target = rules::find_participant(store, &meeting_id, participant_id).await?;
        let rank = rules::rank_of(&self.meeting, &target);
        match request.action {
            ModerateAction::Mute => {
                let source = request
                    .source
                    .ok_or_else(|| Refusal::new("invalid", "source is required"))?;
                rules::check_act_on(self.role, Action::MuteOthers, rank)?;
                let (flag, kind) = rules::mute_target(source.as_str())
                    .ok_or_else(|| Refusal::new("invalid", "unknown source"))?;
                rules::mute(store, sfu, &meeting_id, &target, flag, kind).await?;
                signaling.muted(&meeting_id, &target.id, kind, by);
            }
            ModerateAction::Kick => {
                rules::check_act_on(self.role, Action::RemoveParticipants, rank)?;
                rules::kick(store, sfu, &meeting_id, &target, request.ban).await?;
                signaling.kicked(&meeting_id, &target, request.ban, by);
            }
            ModerateAction::Admit | ModerateAction::Deny => {
                if !self.role.can(Action::ManageWaitingRoom) {
                    return Err(Refusal::new(
                        "forbidden",
                        "your role in this meeting does not allow this",
                    ));
                }
                let admit = request.action == ModerateAction::Admit;
                rules::resolve_waiting(store, &meeting_id, &target, admit).await?;
                signaling.waiting_resolved(&meeting_id, &target.id, admit);
            }
            ModerateAction::SetRole => {
                let role = rules::assignable_role(request.role.as_deref().unwrap_or(""))?;
                rules::check_act_on(self.role, Action::ChangeRoles, rank)?;
                store
                    .set_participant_role(&meeting_id, &target.id, role.as_str())
                    .await?;
                signaling.role_changed(&meeting_id, &target.id, role);
            }
            ModerateAction::EndMeeting
            | ModerateAction::StartRecording
            | ModerateAction::StopRecording => {}
        }
        Ok(())
    }

    /// Starts or stops the meeting's recording through its room (which tells everyone).
    async fn recording(&mut self, action: ModerateAction, audio_only: bool) -> Outcome {
        use crate::domain::live::RecordingError;
        let live = self.state.live.rooms.clone();
        let meeting_id = self.meeting.id.clone();
        let result = if action == ModerateAction::StartRecording {
            let recording = crate::store::recordings::Recording::new(
                meeting_id,
                audio_only,
                Some(self.identity.clone()),
            );
            crate::domain::live::LiveMeetings::start_recording(&live, recording).await
        } else {
            let running = self.state.store.running_recording(&meeting_id).await?;
            let Some(running) = running else {
                return Err(Refusal::new("not_recording", "no recording is running"));
            };
            crate::domain::live::LiveMeetings::stop_recording(&live, meeting_id, running.id).await
        };
        match result {
            Ok(_) => Ok(()),
            Err(RecordingError::AlreadyRunning) => Err(Refusal::new(
                "recording_running",
                "a recording is already running",
            )),
            Err(RecordingError::NotRunning) => {
                Err(Refusal::new("not_recording", "no recording is running"))
            }
            Err(RecordingError::DiskFull) => {
                Err(Refusal::new("disk_full", "the recordings disk is full"))
            }
            Err(RecordingError::Closed) => {
                Err(Refusal::new("meeting_closed", "the meeting is closed"))
            }
            Err(RecordingError::Store(e)) => Err(e.into()),
        }
    }

    // ---- SFU events ------------------------------------------------------------------------

    async fn on_sfu_event(&mut self, event: SfuEvent) {
        match event {
            SfuEvent::Offer { session, sdp } if Some(session) == self.subscriber => {
                self.pending_offer = Some(PendingOffer { sdp, reset: false });
                self.send_pending_offer();
            }
            SfuEvent::ConnectionQuality {
                session, quality, ..
            } => self.quality_changed(session, quality),
            SfuEvent::Closed { session, reason } => self.connection_closed(session, &reason).await,
            SfuEvent::EncodingsNeeded {
                session,
                track,
                active,
            } if Some(session) == self.publisher => self.send(&ServerMessage::Encodings {
                track_id: track,
                active: active.into_iter().collect(),
            }),
            SfuEvent::TrackPaused {
                session,
                track,
                paused,
                reason,
            } if Some(session) == self.subscriber => self.send(&ServerMessage::TrackPaused {
                track_id: track.to_string(),
                paused,
                reason: reason.as_str().to_owned(),
            }),
            _ => {}
        }
    }

    /// A connection's quality band changed: the participant's quality is the worse of its two
    /// connections, and everyone sees it when it changes.
    fn quality_changed(&mut self, session: PeerId, quality: Quality) {
        if Some(session) == self.publisher {
            self.quality.0 = Some(quality);
        } else if Some(session) == self.subscriber {
            self.quality.1 = Some(quality);
        } else {
            return;
        }
        let worst = match self.quality {
            (Some(a), Some(b)) => a.min(b),
            (Some(q), None) | (None, Some(q)) => q,
            (None, None) => return,
        };
        if self.announced_quality == Some(worst) {
            return;
        }
        self.announced_quality = Some(worst);
        self.state.live.rooms.broadcast(
            &self.meeting.id,
            &ServerMessage::ConnectionQuality {
                participant_id: self.participant_id.clone(),
                quality: worst.as_str().to_owned(),
            },
            None,
        );
    }

    /// One of the participant's connections closed under it (ICE failed, DTLS closed).
    async fn connection_closed(&mut self, session: PeerId, reason: &str) {
        if Some(session) == self.publisher {
            self.state.live.hub.forget_session(session);
            self.publisher = None;
            self.quality.0 = None;
            self.send(&ServerMessage::error(
                "publisher_closed",
                format!("your publisher connection closed ({reason}); offer on a new one"),
                None,
            ));
        } else if Some(session) == self.subscriber {
            self.state.live.hub.forget_session(session);
            self.subscriber = None;
            self.quality.1 = None;
            self.pending_offer = None;
            self.reset_subscriber().await;
        }
    }

    /// A new subscriber connection for one that closed; its offer carries `reset`.
    async fn reset_subscriber(&mut self) {
        if self.subscriber_resets >= MAX_SUBSCRIBER_RESETS {
            self.send(&ServerMessage::error(
                "subscriber_closed",
                "your subscriber connection closed too often; join again",
                None,
            ));
            return;
        }
        self.subscriber_resets += 1;
        match self
            .state
            .sfu
            .subscribe_room(
                self.room.clone(),
                ParticipantId(self.identity.clone()),
                self.limits(),
                self.subscriptions.manual,
            )
            .await
        {
            Ok(negotiated) => {
                self.state
                    .live
                    .hub
                    .watch_session(negotiated.session, self.sfu_tx.clone());
                self.subscriber = Some(negotiated.session);
                // The new connection carries what the client chose of the old one (the engine
                // folds these into the offer after the first answer).
                let subscribed = self.subscriptions.manual;
                for track in self.subscriptions.listed.clone() {
                    let _ = self
                        .state
                        .sfu
                        .set_subscribed(negotiated.session, track, subscribed)
                        .await;
                }
                self.pending_offer = Some(PendingOffer {
                    sdp: negotiated.answer,
                    reset: true,
                });
                self.send_pending_offer();
            }
            Err(e) => {
                warn!(participant = %self.participant_id, error = %e, "subscriber not re-created");
                self.send(&ServerMessage::error(
                    "subscriber_closed",
                    "your subscriber connection closed and could not be re-created; join again",
                    None,
                ));
            }
        }
    }

    // ---- sockets -----------------------------------------------------------------------------

    fn joined(
        &self,
        you: ParticipantView,
        participants: Vec<ParticipantView>,
        waiting: Option<Vec<WaitingView>>,
        resumed: bool,
        chat: Vec<ChatView>,
    ) -> ServerMessage {
        let mut publish_sources: Vec<Source> = Source::ALL
            .into_iter()
            .filter(|s| self.may_publish(*s))
            .collect();
        publish_sources.sort();
        ServerMessage::Joined(Box::new(Joined {
            protocol_version: PROTOCOL_VERSION,
            resumed,
            you,
            permissions: Permissions {
                publish_sources,
                chat: self.grants.chat && self.meeting.settings.chat,
                moderate: self.role.is_moderator(),
            },
            participants,
            ice_servers: self.state.ice.for_identity(&self.identity),
            meeting: (&self.meeting).into(),
            chat,
            waiting,
        }))
    }

    /// The latest messages for `joined`, oldest first; empty when chat is off or unreadable.
    async fn recent_chat(&self) -> Vec<ChatView> {
        if !self.meeting.settings.chat {
            return Vec::new();
        }
        match self
            .state
            .store
            .messages_page(&self.meeting.id, None, JOINED_CHAT_HISTORY)
            .await
        {
            Ok(mut messages) => {
                messages.reverse();
                messages.iter().map(chat_view).collect()
            }
            Err(e) => {
                warn!(participant = %self.participant_id, error = %e, "chat history not loaded");
                Vec::new()
            }
        }
    }

    /// A socket of this participant takes the session over.
    async fn attach(
        &mut self,
        socket: SocketHandle,
        reply: oneshot::Sender<Result<(), SocketHandle>>,
    ) {
        let chat = self.recent_chat().await;
        let snapshot = self
            .state
            .live
            .rooms
            .snapshot(&self.meeting.id, &self.participant_id)
            .await;
        let Some(snapshot) = snapshot.filter(|_| !self.ended) else {
            let _ = reply.send(Err(socket));
            return;
        };
        if let Some(old) = self.socket.take() {
            let _ = old.outbound.try_send(Outbound::Close {
                code: close::REPLACED,
                reason: "resumed on another connection".into(),
            });
        }
        self.grace_until = None;
        // Moderators resuming see the waiting sockets known here; the full list is in
        // GET /meetings/{id}/waiting.
        let waiting = self.role.is_moderator().then_some(snapshot.waiting);
        let joined = self.joined(snapshot.me, snapshot.others, waiting, true, chat);
        let _ = socket.outbound.try_send(Outbound::Frame(frame(&joined)));
        self.send_pending_offer_on(&socket);
        self.socket = Some(socket);
        if reply.send(Ok(())).is_err() {
            // The joining socket gave up waiting: stay detached.
            self.detach();
            return;
        }
        info!(participant = %self.participant_id, "socket attached");
    }

    fn detach(&mut self) {
        self.socket = None;
        self.grace_until = Some(Instant::now() + self.state.config.ws_resume_grace);
    }

    fn send(&mut self, message: &ServerMessage) {
        self.send_frame(frame(message));
    }

    fn send_frame(&mut self, frame: Frame) {
        let Some(socket) = &self.socket else {
            return; // detached: the client gets a fresh `joined` when it resumes
        };
        if let Err(e) = socket.outbound.try_send(Outbound::Frame(frame)) {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                warn!(participant = %self.participant_id, "socket not reading; dropping it");
            }
            // Dropping the handle closes the socket (the queue is full or the socket is gone).
            self.detach();
        }
    }

    fn send_pending_offer(&mut self) {
        if let Some(offer) = &self.pending_offer {
            let message = ServerMessage::Offer {
                sdp: offer.sdp.clone(),
                reset: offer.reset,
            };
            self.send(&message);
        }
    }

    fn send_pending_offer_on(&self, socket: &SocketHandle) {
        if let Some(offer) = &self.pending_offer {
            let message = ServerMessage::Offer {
                sdp: offer.sdp.clone(),
                reset: offer.reset,
            };
            let _ = socket.outbound.try_send(Outbound::Frame(frame(&message)));
        }
    }

    // ---- the end -----------------------------------------------------------------------------

    async fn end(&mut self, ending: Ending) {
        if self.ended {
            return;
        }
        self.ended = true;
        let (final_message, code, reason, announce, leaves) = match &ending {
            Ending::Left => (None, close::NORMAL, "left", Some("left"), true),
            Ending::Disconnected => (
                None,
                close::SESSION_GONE,
                "disconnected",
                Some("disconnected"),
                true,
            ),
            Ending::Replaced => (
                None,
                close::REPLACED,
                "joined from another connection",
                Some("replaced"),
                false,
            ),
            Ending::Kicked { banned, by } => (
                Some(ServerMessage::Kicked {
                    reason: "removed by a moderator".into(),
                    banned: *banned,
                    by: by.clone(),
                }),
                close::KICKED,
                "kicked",
                Some("kicked"),
                false,
            ),
            Ending::MeetingEnded { by } => (
                Some(ServerMessage::MeetingEnded { by: by.clone() }),
                close::MEETING_ENDED,
                "meeting ended",
                None,
                false,
            ),
            Ending::Shutdown => (None, close::GOING_AWAY, "server shutting down", None, true),
            Ending::Refused => (None, close::MEETING_ENDED, "meeting ended", None, false),
        };
        for session in [self.publisher.take(), self.subscriber.take()]
            .into_iter()
            .flatten()
        {
            self.state.live.hub.forget_session(session);
            // Kicks and meeting ends closed the peers already; a missing session is fine.
            let owner = crate::sfu::Requester::owner(ParticipantId(self.identity.clone()));
            let _ = self
                .state
                .sfu
                .close(self.room.clone(), session, owner)
                .await;
        }
        self.state.live.rooms.unregister(
            &self.meeting.id,
            &self.participant_id,
            &self.me,
            announce,
        );
        if leaves {
            if let Err(e) = self
                .state
                .store
                .mark_participant_left(
                    &self.meeting.id,
                    &self.participant_id,
                    self.state.cluster.as_ref().map(|c| c.node_id()),
                    now_ms(),
                )
                .await
            {
                warn!(participant = %self.participant_id, error = %e, "leave not recorded");
            }
        }
        if let Some(socket) = self.socket.take() {
            if let Some(message) = final_message {
                let _ = socket.outbound.try_send(Outbound::Frame(frame(&message)));
            }
            let _ = socket.outbound.try_send(Outbound::Close {
                code,
                reason: reason.to_owned(),
            });
        }
        info!(meeting = %self.meeting.id, participant = %self.participant_id, ?ending, "session ended");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A token bucket (governor's GCRA): `capacity` at once, refilled at `per_second`.
pub(crate) struct Bucket(governor::DefaultDirectRateLimiter);

impl Bucket {
    pub fn new(capacity: u32, per_second: f64) -> Self {
        let period =
            Duration::from_secs_f64(1.0 / per_second.max(1e-6)).max(Duration::from_nanos(1));
        let burst = std::num::NonZeroU32::new(capacity.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(burst);
        Self(governor::RateLimiter::direct(quota))
    }

    pub fn per_minute(count: u32) -> Self {
        Self::new(count, f64::from(count.max(1)) / 60.0)
    }

    /// Takes a token if one is left.
    pub fn take(&self) -> bool {
        self.0.check().is_ok()
    }
}

/// An SFU refusal about a track the client named, as the client sees it.
fn unknown_track(error: crate::sfu::SfuError, track_id: &str, where_: &str) -> Refusal {
    match error {
        crate::sfu::SfuError::TrackNotFound => {
            Refusal::new("unknown_track", format!("no track '{track_id}' {where_}"))
        }
        other => Refusal::from(ApiError::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let bucket = Bucket::new(3, 20.0);
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take(), "the burst is spent");
        std::thread::sleep(Duration::from_millis(120));
        assert!(bucket.take(), "refilled at the rate");
    }
}
