//! DATA PLANE. Rooms, published tracks, subscribers and the RTP between them.
//!
//! Knows nothing of HTTP, JWT or SQL: callers speak to it through [`Sfu`], a cheap handle that
//! routes commands to the media engine owning the room (one per core, each a thread with its
//! own port; see `engine.rs` and `placement.rs`). No peer state is shared across engines, so
//! nothing on the media path takes a lock.

pub mod allocator;
mod codecs;
pub mod demux;
mod engine;
pub mod error;
pub mod estimate;
mod forward;
mod history;
pub mod ingress;
pub mod keyframe;
mod peer;
mod placement;
pub mod quality;
pub mod red;
pub mod relay;
pub mod relay_wish;
mod room;
pub mod rtcp;
pub mod sdp;
mod selection;
pub mod simulcast;
pub mod speaker;
pub mod subscriber;
mod subscription;
pub mod tap;
pub mod tcp;
mod track;
mod udp;
mod viewer;
pub mod vp8;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use error::SfuError;

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
    /// Cascading: another node receives these tracks of `publisher` (see `relay.rs`). Like a
    /// viewer of that publisher, with only these tracks.
    Relay {
        publisher: ParticipantId,
        tracks: Vec<TrackId>,
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

/// What a WHEP viewer's layer resource shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ViewerLayers {
    /// The viewer leg's bandwidth estimate (bits/s) from its congestion-control feedback;
    /// `null` before any.
    pub estimate: Option<u64>,
    pub layers: Vec<MediaLayers>,
}

/// One video section a WHEP viewer receives, as its layer resource shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MediaLayers {
    /// The section's mid.
    #[serde(rename = "mediaId")]
    pub media_id: String,
    /// The source's encodings, lowest first (one, with an empty id, when it is not simulcast).
    pub encodings: Vec<Encoding>,
    /// The encoding forwarded now (none before its first keyframe).
    pub current: Option<String>,
    /// The encoding it moves to on that encoding's next keyframe.
    pub target: Option<String>,
    /// Why nothing is forwarded, when nothing is: `bandwidth` (the viewer's link cannot carry
    /// even the lowest encoding now).
    pub paused: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Encoding {
    /// Its RID.
    #[serde(rename = "encodingId")]
    pub encoding_id: String,
    /// Being sent now.
    pub active: bool,
    /// From its last keyframe (VP8), when known.
    pub width: Option<u16>,
    pub height: Option<u16>,
    /// Measured, bits per second.
    pub bitrate: u64,
    /// VP8: frames per second of each temporal layer (`[base, ...]`), when it has any.
    #[serde(rename = "temporalFrameRates", skip_serializing_if = "Vec::is_empty")]
    pub temporal_frame_rates: Vec<u16>,
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
    /// Dynacast: which encodings (by RID) of one of its simulcast tracks a publisher should
    /// send, since nobody receives the others (`track` is the publisher's own track id).
    EncodingsNeeded {
        session: PeerId,
        track: String,
        active: Vec<(String, bool)>,
    },
    /// The SFU stopped (or resumed) forwarding one track to a subscriber of its own accord.
    TrackPaused {
        session: PeerId,
        track: TrackId,
        paused: bool,
        reason: PauseReason,
    },
    /// The peer is gone (closed, failed, kicked, or never connected).
    Closed { session: PeerId, reason: String },
    /// Cascading: what this node's receivers of a track that relay `session` brings want of it
    /// changed (`track` is the publishing node's id of it), for that node.
    RelayWish {
        room: RoomId,
        session: PeerId,
        track: TrackId,
        wish: relay_wish::RelayWish,
    },
}

/// The allocation priority signaling gives a screen share (speakers get 1 or 2 on top of a
/// track's own; see `allocator.rs`).
pub const SCREEN_PRIORITY: u8 = 4;

/// Why the SFU paused a track for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Its share of the subscriber's bandwidth estimate cannot carry even its lowest layer.
    Bandwidth,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Bandwidth => "bandwidth",
        }
    }
}

/// The limits one new session is admitted to its room under. The SFU counts what its rooms
/// hold; the caller chooses the numbers (`domain::admission`: the server's config, tightened by
/// a meeting's own settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// Identities that publish or join; view-only (WHEP) sessions take no place.
    pub participants: usize,
    /// View-only sessions.
    pub viewers: usize,
    /// Sessions of one identity (one token cannot fill the server).
    pub sessions_per_identity: usize,
}

/// The outcome of an accepted offer.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub session: PeerId,
    pub answer: String,
    /// The session's ICE generation: our ICE ufrag, which changes with every restart.
    pub ice_generation: String,
}

/// Which ICE generation an ICE restart expects to replace (a conditional restart, so two
/// clients racing to restart one session cannot both win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generation {
    /// Whatever the session's current generation is.
    Any,
    /// Only this one; another is `SfuError::StaleGeneration`.
    Is(String),
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
    /// ICE restarted: the answer fragment to return, and the new ICE generation.
    Restarted {
        fragment: String,
        ice_generation: String,
    },
}

/// One track a relay receives: its kind, the publishing node's id of it, and its id here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedTrack {
    pub kind: MediaKind,
    pub origin: TrackId,
    pub local: TrackId,
}

/// Limits and timings the engine enforces.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The first engine's media socket; engine `i` binds port + `i`.
    pub bind: SocketAddr,
    /// Media engines (threads), each with its own port and rooms.
    pub workers: usize,
    /// Addresses announced as host candidates (on the media port).
    pub announced_ips: Vec<std::net::IpAddr>,
    /// Peers the server holds at most, over every engine: its own capacity. A room's limits
    /// come with each new session ([`RoomLimits`]).
    pub max_peers: usize,
    pub keyframe_request_interval: Duration,
    pub connect_timeout: Duration,
    /// How long a WHEP viewer waits for a publisher (before one came, or after its left).
    pub whep_publisher_wait: Duration,
    pub ice_check_interval: Duration,
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
    pub nack_cache_packets: u16,
    /// Redundant audio negotiated on every leg (see `codecs.rs`).
    pub audio_red: bool,
    pub bwe: BweConfig,
    /// How often active speakers are ranked (a change is announced at most this often).
    pub active_speaker_interval: Duration,
    /// Source addresses one peer may have bound at once (ICE candidates it checked from).
    pub max_addresses_per_peer: usize,
    /// ICE-TCP: passive TCP candidates on each engine's media port number, for clients whose
    /// UDP is blocked; at most `ice_tcp_max_connections` connections open per engine.
    pub ice_tcp: bool,
    pub ice_tcp_max_connections: usize,
}

/// An engine's UDP socket and, with ICE-TCP, its TCP listener on the same port number (port 0:
/// a free port both can take).
fn bind_media(
    addr: SocketAddr,
    ice_tcp: bool,
) -> std::io::Result<(std::net::UdpSocket, Option<std::net::TcpListener>)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = udp::bind(addr)?;
        if !ice_tcp {
            return Ok((udp, None));
        }
        let port = udp.local_addr()?.port();
        match tcp::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(listener) => return Ok((udp, Some(listener))),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("tried"))
}

/// Subscriber legs' bandwidth estimation (bits per second) and pacing.
#[derive(Debug, Clone, Copy)]
pub struct BweConfig {
    pub enabled: bool,
    pub initial: u64,
    pub min: u64,
    pub max: u64,
    pub pacer_queue_packets: usize,
}

pub(crate) enum Command {
    Offer {
        room: RoomId,
        identity: ParticipantId,
        intent: Intent,
        limits: RoomLimits,
        offer: String,
        reply: oneshot::Sender<Result<Negotiated, SfuError>>,
    },
    Patch {
        room: RoomId,
        session: PeerId,
        requester: Requester,
        replaces: Option<Generation>,
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
        limits: RoomLimits,
        manual: bool,
        reply: oneshot::Sender<Result<Negotiated, SfuError>>,
    },
    Answer {
        session: PeerId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    OpenRelay {
        room: RoomId,
        identity: ParticipantId,
        tracks: Vec<RelayedTrack>,
        reply: oneshot::Sender<Result<Negotiated, SfuError>>,
    },
    RelayAnswer {
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
    SetPaused {
        session: PeerId,
        track: TrackId,
        paused: bool,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SetTrackPriority {
        track: TrackId,
        priority: u8,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    AttachTap {
        track: TrackId,
        slot: u8,
        tx: tokio::sync::mpsc::Sender<tap::TapPacket>,
        reply: oneshot::Sender<Result<tap::TapInfo, SfuError>>,
    },
    DetachTap {
        track: TrackId,
        tap: u64,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    RequestKeyframe {
        track: TrackId,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    RelayWish {
        room: RoomId,
        session: PeerId,
        track: TrackId,
        wish: relay_wish::RelayWish,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SetWanted {
        session: PeerId,
        track: TrackId,
        wanted: simulcast::Wanted,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SetFrameRate {
        session: PeerId,
        track: TrackId,
        fps: Option<u16>,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SelectLayer {
        room: RoomId,
        session: PeerId,
        requester: Requester,
        media_id: Option<String>,
        encoding: Option<String>,
        temporal: Option<u8>,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Layers {
        room: RoomId,
        session: PeerId,
        requester: Requester,
        reply: oneshot::Sender<Result<ViewerLayers, SfuError>>,
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

/// Track serials from here on are signaling's (announced before the track exists); an engine
/// mints its own from 1 and never gets near.
pub const PROVISIONAL_SERIALS: u64 = 1 << 40;

/// Engines one server may run (`media_workers`); a [`PeerId`] names its engine in one byte.
pub const MAX_WORKERS: usize = 64;

fn no_session<T>() -> Result<T, SfuError> {
    Err(SfuError::SessionNotFound)
}

fn no_track<T>() -> Result<T, SfuError> {
    Err(SfuError::TrackNotFound)
}

/// A room no engine holds has nobody in it: nothing to close or mute.
fn nobody() -> Result<usize, SfuError> {
    Ok(0)
}

/// Handle to the SFU's media engines. Cloning is cheap; every clone talks to the same engines.
///
/// Each engine runs on its own thread with its own current-thread runtime and its own UDP
/// port (`media_udp_port + index`), and owns the rooms placed on it (see `placement.rs`): a
/// command goes to the engine of its room, of its session (a [`PeerId`] names its engine), or
/// of its track (so does a [`TrackId`]).
#[derive(Clone)]
pub struct Sfu {
    engines: std::sync::Arc<[EngineHandle]>,
    placement: std::sync::Arc<placement::Placement>,
}

struct EngineHandle {
    commands: mpsc::Sender<Command>,
    media_addr: SocketAddr,
}

/// Where a command goes.
enum Route<'a> {
    /// To the room's engine, placing the room first: the command may open it.
    Open(&'a RoomId),
    /// To the room's engine if the room is placed; otherwise nobody is in it.
    Room(&'a RoomId),
    Session(PeerId),
    Track(TrackId),
}

impl Sfu {
    /// Binds one media socket per engine (`workers` of them, on consecutive ports from
    /// `config.bind`'s, or each on a free port when that is 0) and starts each engine on its
    /// own thread. Events of every engine go to the returned receiver; its one consumer is
    /// signaling. The engines stop on [`Sfu::shutdown`] or when the last handle is dropped.
    pub fn start(
        config: SfuConfig,
        metrics: Metrics,
    ) -> std::io::Result<(Self, mpsc::UnboundedReceiver<SfuEvent>)> {
        let workers = config.workers.clamp(1, MAX_WORKERS);
        let placement = std::sync::Arc::new(placement::Placement::new(workers));
        // Unbounded: offers must never be dropped; their number is bounded by peers × changes.
        let (events, event_receiver) = mpsc::unbounded_channel();
        let mut sockets = Vec::with_capacity(workers);
        for index in 0..workers {
            let mut addr = config.bind;
            if addr.port() != 0 {
                let port = u16::try_from(usize::from(addr.port()) + index).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "media_udp_port + media_workers passes 65535",
                    )
                })?;
                addr.set_port(port);
            }
            // Bound here, so a port in use fails the start; registered with the engine's
            // runtime on its own thread.
            sockets.push(bind_media(addr, config.ice_tcp)?);
        }
        let mut engines = Vec::with_capacity(workers);
        for (index, (socket, tcp)) in sockets.into_iter().enumerate() {
            let media_addr = socket.local_addr()?;
            let (commands, receiver) = mpsc::channel(1024);
            let engine = engine::Engine::new(
                &config,
                index,
                placement.clone(),
                media_addr.port(),
                metrics.clone(),
                events.clone(),
            );
            let tcp_max_connections = config.ice_tcp_max_connections.max(1);
            std::thread::Builder::new()
                .name(format!("convene-media-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            tracing::error!(engine = index, error = %e, "media engine runtime failed");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let tcp = match tcp.map(tokio::net::TcpListener::from_std).transpose() {
                            Ok(tcp) => tcp,
                            Err(e) => {
                                tracing::error!(engine = index, error = %e, "ice-tcp listener failed");
                                return;
                            }
                        };
                        let (tcp_events, tcp_receiver) = mpsc::channel(tcp::EVENT_QUEUE);
                        if let Some(listener) = tcp {
                            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
                                tcp_max_connections,
                            ));
                            tokio::spawn(tcp::accept(listener, slots, tcp_events));
                        }
                        match udp::MediaSocket::from_std(socket) {
                            Ok(socket) => engine::run(engine, socket, receiver, tcp_receiver).await,
                            Err(e) => {
                                tracing::error!(engine = index, error = %e, "media socket failed")
                            }
                        }
                    });
                })?;
            engines.push(EngineHandle {
                commands,
                media_addr,
            });
        }
        Ok((
            Self {
                engines: engines.into(),
                placement,
            },
            event_receiver,
        ))
    }

    /// The first engine's media address (`media_udp_port`; its ICE-TCP port has the same
    /// number).
    pub fn media_addr(&self) -> SocketAddr {
        self.engines[0].media_addr
    }

    /// Every engine's media address, by engine index.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.engines.iter().map(|e| e.media_addr).collect()
    }

    /// The rooms with anybody in them (or about to have).
    pub fn rooms(&self) -> Vec<RoomId> {
        self.placement.rooms()
    }

    /// The engine holding `room`, if anybody is in it.
    pub fn engine_of_room(&self, room: &RoomId) -> Option<usize> {
        self.placement.find(room)
    }

    fn engine_for(&self, route: Route<'_>) -> Option<usize> {
        let engine = match route {
            Route::Open(room) => Some(self.placement.claim(room)),
            Route::Room(room) => self.placement.find(room),
            Route::Session(session) => Some(session.engine()),
            Route::Track(track) => Some(track.engine(self.engines.len())),
        };
        engine.filter(|&e| e < self.engines.len())
    }

    /// Sends a command to the engine of `route`; `absent` answers when no engine can hold
    /// what it names.
    async fn call<T>(
        &self,
        route: Route<'_>,
        absent: impl FnOnce() -> Result<T, SfuError>,
        make: impl FnOnce(oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<T, SfuError> {
        let Some(engine) = self.engine_for(route) else {
            return absent();
        };
        let (reply, response) = oneshot::channel();
        self.engines[engine]
            .commands
            .send(make(reply))
            .await
            .map_err(|_| SfuError::ShuttingDown)?;
        response.await.map_err(|_| SfuError::ShuttingDown)?
    }

    /// A new session of `identity` in `room` from its offer, if `limits` admit it.
    pub async fn offer(
        &self,
        room: RoomId,
        identity: ParticipantId,
        intent: Intent,
        limits: RoomLimits,
        offer: String,
    ) -> Result<Negotiated, SfuError> {
        let key = room.clone();
        self.call(Route::Open(&key), no_session, |reply| Command::Offer {
            room,
            identity,
            intent,
            limits,
            offer,
            reply,
        })
        .await
    }

    /// Trickles candidates into, or restarts ICE of, `requester`'s own session. Every change
    /// checks `replaces` when given; a restart needs it.
    pub async fn patch(
        &self,
        room: RoomId,
        session: PeerId,
        requester: Requester,
        replaces: Option<Generation>,
        fragment: IceFragment,
    ) -> Result<PatchOutcome, SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::Patch {
                room,
                session,
                requester,
                replaces,
                fragment,
                reply,
            }
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
        self.call(Route::Session(session), no_session, |reply| {
            Command::Close {
                room,
                session,
                requester,
                reply,
            }
        })
        .await
    }

    /// A subscriber connection for `identity` receiving every other participant's tracks in the
    /// room (`manual`: only those it subscribes to); the answer's `answer` field holds the
    /// server's offer. Later changes arrive as [`SfuEvent::Offer`].
    pub async fn subscribe_room(
        &self,
        room: RoomId,
        identity: ParticipantId,
        limits: RoomLimits,
        manual: bool,
    ) -> Result<Negotiated, SfuError> {
        let key = room.clone();
        self.call(Route::Open(&key), no_session, |reply| {
            Command::SubscribeRoom {
                room,
                identity,
                limits,
                manual,
                reply,
            }
        })
        .await
    }

    /// Cascading, on the node that receives: a connection that will receive `tracks` of
    /// `identity` (a publisher on another node) as tracks of this room, and the offer to send
    /// that node. Each track takes the id signaling announced for it.
    pub async fn open_relay(
        &self,
        room: RoomId,
        identity: ParticipantId,
        tracks: Vec<RelayedTrack>,
    ) -> Result<Negotiated, SfuError> {
        let key = room.clone();
        self.call(Route::Open(&key), no_session, |reply| Command::OpenRelay {
            room,
            identity,
            tracks,
            reply,
        })
        .await
    }

    /// The other node's answer to a relay's offer: its track is published in the room.
    pub async fn relay_answer(&self, session: PeerId, sdp: String) -> Result<(), SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::RelayAnswer {
                session,
                sdp,
                reply,
            }
        })
        .await
    }

    /// The id a track announced before it exists (a remote track of a cascaded room) takes:
    /// one of the room's engine, from a range engines never mint.
    pub fn provisional_track_id(&self, room: &RoomId, serial: u64) -> TrackId {
        let engines = self.engines.len();
        let engine = self.placement.find(room).unwrap_or(0);
        TrackId::on_engine(PROVISIONAL_SERIALS + serial, engine, engines)
    }

    /// The client's answer to the last server offer on `session`.
    pub async fn answer(&self, session: PeerId, sdp: String) -> Result<(), SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::Answer {
                session,
                sdp,
                reply,
            }
        })
        .await
    }

    /// A publisher's new offer on its existing connection (a track added or removed). Returns
    /// the answer.
    pub async fn renegotiate(&self, session: PeerId, offer: String) -> Result<String, SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::Renegotiate {
                session,
                offer,
                reply,
            }
        })
        .await
    }

    /// Stops (or resumes) forwarding one published track, whatever its publisher sends on others.
    pub async fn set_track_muted(&self, track: TrackId, muted: bool) -> Result<(), SfuError> {
        self.call(Route::Track(track), no_track, |reply| {
            Command::SetTrackMuted {
                track,
                muted,
                reply,
            }
        })
        .await
    }

    /// Stops (or resumes) one track's media on a subscriber connection without renegotiating:
    /// a tile the viewer does not show. Resuming starts from a keyframe.
    pub async fn set_paused(
        &self,
        session: PeerId,
        track: TrackId,
        paused: bool,
    ) -> Result<(), SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::SetPaused {
                session,
                track,
                paused,
                reply,
            }
        })
        .await
    }

    /// WHEP layer selection: `requester`'s viewer session takes encoding `encoding` (a RID; the
    /// best when `None`) of the video in section `media_id` (every video section when `None`),
    /// up to VP8 temporal layer `temporal` (every one when `None`).
    pub async fn select_layer(
        &self,
        room: RoomId,
        session: PeerId,
        requester: Requester,
        media_id: Option<String>,
        encoding: Option<String>,
        temporal: Option<u8>,
    ) -> Result<(), SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::SelectLayer {
                room,
                session,
                requester,
                media_id,
                encoding,
                temporal,
                reply,
            }
        })
        .await
    }

    /// The encodings a viewer's video sections can take, and which each receives.
    pub async fn layers(
        &self,
        room: RoomId,
        session: PeerId,
        requester: Requester,
    ) -> Result<ViewerLayers, SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::Layers {
                room,
                session,
                requester,
                reply,
            }
        })
        .await
    }

    /// Where `track` comes in its subscribers' bandwidth allocation (higher first).
    pub async fn set_track_priority(&self, track: TrackId, priority: u8) -> Result<(), SfuError> {
        self.call(Route::Track(track), no_track, |reply| {
            Command::SetTrackPriority {
                track,
                priority,
                reply,
            }
        })
        .await
    }

    /// Copies `track`'s packets (its top layer) into `tx`, tagged `slot`, until detached or
    /// the track ends (then `tx`'s receiver sees the channel close). Asks for a keyframe.
    pub async fn attach_tap(
        &self,
        track: TrackId,
        slot: u8,
        tx: tokio::sync::mpsc::Sender<tap::TapPacket>,
    ) -> Result<tap::TapInfo, SfuError> {
        self.call(Route::Track(track), no_track, |reply| Command::AttachTap {
            track,
            slot,
            tx,
            reply,
        })
        .await
    }

    pub async fn detach_tap(&self, track: TrackId, tap: u64) -> Result<(), SfuError> {
        self.call(Route::Track(track), no_track, |reply| Command::DetachTap {
            track,
            tap,
            reply,
        })
        .await
    }

    /// Asks the publisher of `track` for a keyframe of its top layer (within the throttle).
    pub async fn request_keyframe(&self, track: TrackId) -> Result<(), SfuError> {
        self.call(Route::Track(track), no_track, |reply| {
            Command::RequestKeyframe { track, reply }
        })
        .await
    }

    /// What a subscriber wants of one simulcast track it receives (a tile's size, a layer, or
    /// the best): the SFU forwards the best layer within it that is being sent.
    pub async fn set_wanted(
        &self,
        session: PeerId,
        track: TrackId,
        wanted: simulcast::Wanted,
    ) -> Result<(), SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::SetWanted {
                session,
                track,
                wanted,
                reply,
            }
        })
        .await
    }

    /// Cascading, on the publisher's node: what another node's receivers want of `track`,
    /// applied to that node's relay `session` (see `relay_wish`).
    pub async fn relay_wish(
        &self,
        room: RoomId,
        session: PeerId,
        track: TrackId,
        wish: relay_wish::RelayWish,
    ) -> Result<(), SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::RelayWish {
                room,
                session,
                track,
                wish,
                reply,
            }
        })
        .await
    }

    /// Caps the frame rate a room subscriber receives of one track (`None`: no cap); VP8
    /// temporal layers above the cap are dropped (see `DownTrack::temporal_gate`).
    pub async fn set_frame_rate(
        &self,
        session: PeerId,
        track: TrackId,
        fps: Option<u16>,
    ) -> Result<(), SfuError> {
        self.call(Route::Session(session), no_session, |reply| {
            Command::SetFrameRate {
                session,
                track,
                fps,
                reply,
            }
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
        self.call(Route::Session(session), no_session, |reply| {
            Command::SetSubscribed {
                session,
                track,
                subscribed,
                reply,
            }
        })
        .await
    }

    /// Closes every peer of `identity` in `room` (kick). Returns how many were closed.
    pub async fn close_participant(
        &self,
        room: RoomId,
        identity: ParticipantId,
    ) -> Result<usize, SfuError> {
        let key = room.clone();
        self.call(Route::Room(&key), nobody, |reply| {
            Command::CloseParticipant {
                room,
                identity,
                reply,
            }
        })
        .await
    }

    /// Closes every peer of `room` whoever opened it (WebSocket, WHIP, WHEP, operator tokens):
    /// the end of a meeting. Returns how many were closed.
    pub async fn close_room(&self, room: RoomId) -> Result<usize, SfuError> {
        let key = room.clone();
        self.call(Route::Room(&key), nobody, |reply| Command::CloseRoom {
            room,
            reply,
        })
        .await
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
        let key = room.clone();
        self.call(Route::Room(&key), nobody, |reply| Command::SetMuted {
            room,
            identity,
            kind,
            muted,
            reply,
        })
        .await
    }

    /// Closes every peer (DTLS close_notify goes out) and stops every engine.
    pub async fn shutdown(&self) {
        let mut waits = Vec::new();
        for engine in self.engines.iter() {
            let (reply, done) = oneshot::channel();
            if engine
                .commands
                .send(Command::Shutdown { reply })
                .await
                .is_ok()
            {
                waits.push(done);
            }
        }
        for done in waits {
            let _ = done.await;
        }
    }

    /// Whether every engine is alive.
    pub fn is_running(&self) -> bool {
        self.engines.iter().all(|e| !e.commands.is_closed())
    }
}
