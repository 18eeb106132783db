//! DATA PLANE. Rooms, published tracks, subscribers and the RTP between them.
//!
//! Knows nothing of HTTP, JWT or SQL: callers speak to it through [`Sfu`], a cheap handle that
//! sends commands to the one engine task owning every peer connection (see `engine.rs`). No peer
//! state is shared across tasks, so nothing here needs a lock.

pub mod demux;
mod engine;
pub mod error;
pub mod ingress;
mod peer;
pub mod quality;
mod room;
pub mod rtcp;
pub mod sdp;
pub mod speaker;
pub mod subscriber;
mod subscription;
mod track;
mod udp;
mod viewer;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use error::SfuError;
pub use peer::sdp_attribute;

use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};
use crate::metrics::Metrics;

/// What a new peer wants to do in its room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    Publish,
    /// Watch a publisher: the named identity, else the room's most recent publisher.
    Subscribe {
        publisher: Option<ParticipantId>,
    },
}

/// Who asks to change or end a session: only the identity that created it may, and a
/// moderator of the room may end (not patch) anyone's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub identity: ParticipantId,
    pub moderator: bool,
}

impl Requester {
    pub fn owner(identity: ParticipantId) -> Self {
        Self {
            identity,
            moderator: false,
        }
    }
}

/// Audio or video, for moderation that acts on one kind of a participant's tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
}

/// A published track as signaling describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: MediaKind,
    /// The publisher's m-line.
    pub mid: String,
    /// The track id the publisher's SDP gave it (`a=msid:<stream> <track id>`): how a client
    /// says which of its tracks is camera, microphone or screen.
    pub publisher_track_id: String,
    pub mime_type: String,
}

/// What the engine tells signaling. Delivered in order on one channel.
#[derive(Debug, Clone)]
pub enum SfuEvent {
    /// Apply this offer on the session's subscriber connection and send back an answer.
    Offer { session: PeerId, sdp: String },
    TrackPublished {
        room: RoomId,
        identity: ParticipantId,
        session: PeerId,
        track: TrackInfo,
    },
    TrackUnpublished {
        room: RoomId,
        identity: ParticipantId,
        session: PeerId,
        track: TrackId,
    },
    /// The room's speakers changed order: loudest first, at most every
    /// `active_speaker_interval`.
    ActiveSpeakers {
        room: RoomId,
        speakers: Vec<speaker::Speaker>,
    },
    /// A connection's quality changed band (sampled every few seconds).
    ConnectionQuality {
        session: PeerId,
        quality: quality::Quality,
        sample: quality::Sample,
    },
    /// ICE and DTLS are up.
    Connected { session: PeerId },
    /// The peer is gone (closed, failed, kicked, or never connected).
    Closed { session: PeerId, reason: String },
}

/// The outcome of an accepted offer.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub session: PeerId,
    pub answer: String,
    pub etag: String,
}

/// Trickled ICE (RFC 8840 `application/trickle-ice-sdpfrag`), parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceFragment {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    pub candidates: Vec<FragmentCandidate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentCandidate {
    pub mid: Option<String>,
    pub mline_index: Option<u16>,
    /// The candidate attribute value, without the leading `a=`.
    pub candidate: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Candidates were added.
    Trickled,
    /// ICE restarted: the answer fragment to return, and the new entity tag.
    Restarted { fragment: String, etag: String },
}

/// Limits and timings the engine enforces.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    pub bind: SocketAddr,
    /// Addresses announced as host candidates (on the media port).
    pub announced_ips: Vec<std::net::IpAddr>,
    pub max_participants: usize,
    /// Peers one identity may hold in one room at once (a meeting participant uses two).
    pub max_sessions_per_identity: usize,
    pub max_peers: usize,
    pub keyframe_request_interval: Duration,
    pub connect_timeout: Duration,
    /// How long a WHEP viewer waits for a publisher (before one came, or after its left).
    pub whep_publisher_wait: Duration,
    pub ice_check_interval: Duration,
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
    pub nack_cache_packets: u16,
    /// How often active speakers are ranked (a change is announced at most this often).
    pub active_speaker_interval: Duration,
    /// Source addresses one peer may have bound at once (ICE candidates it checked from).
    pub max_addresses_per_peer: usize,
}

pub(crate) enum Command {
    Offer {
        room: RoomId,
        identity: ParticipantId,
        intent: Intent,
        offer: String,
        reply: oneshot::Sender<Result<Negotiated, SfuError>>,
    },
    Patch {
        room: RoomId,
        session: PeerId,
        requester: Requester,
        if_match: Option<String>,
        fragment: IceFragment,
        reply: oneshot::Sender<Result<PatchOutcome, SfuError>>,
    },
    Close {
        room: RoomId,
        session: PeerId,
        requester: Requester,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SubscribeRoom {
        room: RoomId,
        identity: ParticipantId,
        reply: oneshot::Sender<Result<Negotiated, SfuError>>,
    },
    Answer {
        session: PeerId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Renegotiate {
        session: PeerId,
        offer: String,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    SetTrackMuted {
        track: TrackId,
        muted: bool,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SetSubscribed {
        session: PeerId,
        track: TrackId,
        subscribed: bool,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    CloseParticipant {
        room: RoomId,
        identity: ParticipantId,
        reply: oneshot::Sender<Result<usize, SfuError>>,
    },
    CloseRoom {
        room: RoomId,
        reply: oneshot::Sender<Result<usize, SfuError>>,
    },
    SetMuted {
        room: RoomId,
        identity: ParticipantId,
        kind: MediaKind,
        muted: bool,
        reply: oneshot::Sender<Result<usize, SfuError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the SFU engine. Cloning is cheap; every clone talks to the same engine.
#[derive(Clone)]
pub struct Sfu {
    commands: mpsc::Sender<Command>,
    media_addr: SocketAddr,
}

impl Sfu {
    /// Binds the media socket and starts the engine task. Events go to the returned receiver;
    /// its one consumer is signaling.
    pub fn start(
        config: SfuConfig,
        metrics: Metrics,
    ) -> std::io::Result<(
        Self,
        tokio::task::JoinHandle<()>,
        mpsc::UnboundedReceiver<SfuEvent>,
    )> {
        let socket = udp::MediaSocket::bind(config.bind)?;
        let media_addr = socket.local_addr()?;
        let (commands, receiver) = mpsc::channel(1024);
        // Unbounded: offers must never be dropped; their number is bounded by peers × changes.
        let (events, event_receiver) = mpsc::unbounded_channel();
        let engine = engine::Engine::new(&config, socket.local_port(), metrics, events);
        let task = tokio::spawn(engine::run(engine, socket, receiver));
        Ok((
            Self {
                commands,
                media_addr,
            },
            task,
            event_receiver,
        ))
    }

    pub fn media_addr(&self) -> SocketAddr {
        self.media_addr
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<T, SfuError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| SfuError::ShuttingDown)?;
        response.await.map_err(|_| SfuError::ShuttingDown)?
    }

    pub async fn offer(
        &self,
        room: RoomId,
        identity: ParticipantId,
        intent: Intent,
        offer: String,
    ) -> Result<Negotiated, SfuError> {
        self.call(|reply| Command::Offer {
            room,
            identity,
            intent,
            offer,
            reply,
        })
        .await
    }

    /// Trickles candidates into, or restarts ICE of, `requester`'s own session.
    pub async fn patch(
        &self,
        room: RoomId,
        session: PeerId,
        requester: Requester,
        if_match: Option<String>,
        fragment: IceFragment,
    ) -> Result<PatchOutcome, SfuError> {
        self.call(|reply| Command::Patch {
            room,
            session,
            requester,
            if_match,
            fragment,
            reply,
        })
        .await
    }

    /// Ends a session of `room`: `NotSessionOwner` unless `requester` created it or moderates.
    pub async fn close(
        &self,
        room: RoomId,
        session: PeerId,
        requester: Requester,
    ) -> Result<(), SfuError> {
        self.call(|reply| Command::Close {
            room,
            session,
            requester,
            reply,
        })
        .await
    }

    /// A subscriber connection for `identity` receiving every other participant's tracks in the
    /// room; the answer's `answer` field holds the server's offer. Later changes arrive as
    /// [`SfuEvent::Offer`].
    pub async fn subscribe_room(
        &self,
        room: RoomId,
        identity: ParticipantId,
    ) -> Result<Negotiated, SfuError> {
        self.call(|reply| Command::SubscribeRoom {
            room,
            identity,
            reply,
        })
        .await
    }

    /// The client's answer to the last server offer on `session`.
    pub async fn answer(&self, session: PeerId, sdp: String) -> Result<(), SfuError> {
        self.call(|reply| Command::Answer {
            session,
            sdp,
            reply,
        })
        .await
    }

    /// A publisher's new offer on its existing connection (a track added or removed). Returns
    /// the answer.
    pub async fn renegotiate(&self, session: PeerId, offer: String) -> Result<String, SfuError> {
        self.call(|reply| Command::Renegotiate {
            session,
            offer,
            reply,
        })
        .await
    }

    /// Stops (or resumes) forwarding one published track, whatever its publisher sends on others.
    pub async fn set_track_muted(&self, track: TrackId, muted: bool) -> Result<(), SfuError> {
        self.call(|reply| Command::SetTrackMuted {
            track,
            muted,
            reply,
        })
        .await
    }

    /// Removes one track from (or adds it back to) a room subscriber's connection; the client
    /// gets a new offer.
    pub async fn set_subscribed(
        &self,
        session: PeerId,
        track: TrackId,
        subscribed: bool,
    ) -> Result<(), SfuError> {
        self.call(|reply| Command::SetSubscribed {
            session,
            track,
            subscribed,
            reply,
        })
        .await
    }

    /// Closes every peer of `identity` in `room` (kick). Returns how many were closed.
    pub async fn close_participant(
        &self,
        room: RoomId,
        identity: ParticipantId,
    ) -> Result<usize, SfuError> {
        self.call(|reply| Command::CloseParticipant {
            room,
            identity,
            reply,
        })
        .await
    }

    /// Closes every peer of `room` whoever opened it (WebSocket, WHIP, WHEP, operator tokens):
    /// the end of a meeting. Returns how many were closed.
    pub async fn close_room(&self, room: RoomId) -> Result<usize, SfuError> {
        self.call(|reply| Command::CloseRoom { room, reply }).await
    }

    /// Stops (or resumes) forwarding `identity`'s tracks of `kind` in `room`. Returns how many
    /// tracks it applied to.
    pub async fn set_muted(
        &self,
        room: RoomId,
        identity: ParticipantId,
        kind: MediaKind,
        muted: bool,
    ) -> Result<usize, SfuError> {
        self.call(|reply| Command::SetMuted {
            room,
            identity,
            kind,
            muted,
            reply,
        })
        .await
    }

    /// Closes every peer (DTLS close_notify goes out) and stops the engine.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// Whether the engine task is alive.
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }
}
