//! One media engine: the event loop that owns the sans-I/O `rtc` state machine of every peer of
//! the rooms placed on it.
//!
//! It feeds datagrams from its socket and timer expiries in, polls packets, events and timers
//! out, and forwards RTP from publishers to subscribers in the same pass (`forward.rs`). Because
//! one owner holds all of it, the forwarding path takes no lock.
//!
//! A turn of the loop (see [`run`]): wait until anything is ready (socket readable, a command,
//! the earliest peer timer or housekeeping, room to send a backlog) → a bounded batch of
//! datagrams → a bounded batch of commands → due timers and housekeeping → service every peer
//! touched ("dirty") until none is → send what the socket takes with batched `sendmmsg`, never
//! waiting for it. Every turn serves every kind of work, so none can starve another.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{RTCDtlsTransportState, RTCIceCandidateInit};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::demux::Demux;
use super::error::SfuError;
use super::history::History;
use super::peer::{LegDirection, Peer, PeerFactory, PeerRole, PeerState};
use super::placement::Placement;
use super::room::Rooms;
use super::rtcp;
use super::sdp::Sdp;
use super::subscriber::DownTrack;
use super::track::{PublishedTrack, SubscriberRef};
use super::udp::MediaSocket;
use super::{
    Command, Generation, IceFragment, Intent, Negotiated, PatchOutcome, RoomLimits, SfuConfig,
};
use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};
use crate::metrics::Metrics;

/// Datagrams taken from the socket in one turn of the loop.
const RECEIVE_BUDGET: usize = 512;
/// Commands handled in one turn of the loop.
const COMMAND_BUDGET: usize = 64;
/// Datagrams kept for sending when the socket's buffer is full; past it the oldest media
/// datagrams are dropped (media is loss-tolerant and NACK/PLI recover; a stalled loop is not).
const SEND_BACKLOG: usize = 8192;
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(50);
use super::selection::LAYER_CHECK_INTERVAL;
/// Packets one subscriber's compound RTCP packet may have sent again.
const MAX_RETRANSMITS_PER_RTCP: usize = 256;
/// How often each peer's connection quality is measured.
const QUALITY_INTERVAL: Duration = Duration::from_secs(2);

pub struct Engine {
    /// This engine's place among the server's engines (ids it mints carry it).
    pub(super) index: usize,
    pub(super) placement: Arc<Placement>,
    /// This engine's series of the per-engine metrics, resolved once.
    commands_handled: prometheus::IntCounter,
    peers_held: prometheus::IntGauge,
    rooms_held: prometheus::IntGauge,
    /// What this engine last added to the server-wide gauges: engines add up their deltas.
    reported: [i64; 5],
    pub(super) factory: PeerFactory,
    pub(super) max_peers: usize,
    pub(super) keyframe_interval: Duration,
    pub(super) connect_timeout: Duration,
    /// How long a WHEP viewer waits for a publisher before it is closed.
    pub(super) viewer_wait: Duration,
    pub(super) metrics: Metrics,
    pub(super) demux: Demux,
    /// The rooms placed here, each owning its peers and tracks.
    pub(super) rooms: Rooms,
    pub(super) next_track_id: u64,
    /// Tap ids, unique within the engine.
    pub(super) next_tap: u64,
    /// (deadline, peer); stale entries are skipped by comparing with `Peer::next_timeout`.
    pub(super) timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// Peers with input handled but output not yet polled.
    pub(super) dirty: Vec<PeerId>,
    /// Datagrams to send: filled by a turn, emptied as the socket takes them (see `flush`);
    /// reused, so it stops allocating.
    pub(super) outbox: Vec<(SocketAddr, BytesMut)>,
    /// Cascading: each relay's own socket (see `relay.rs`), by relay.
    pub(super) relay_sockets: FxHashMap<PeerId, super::relay::RelaySocket>,
    /// Where relay sockets' readers send what they receive (the run loop takes the receiver).
    pub(super) relay_tx: mpsc::Sender<super::relay::RelayDatagram>,
    relay_rx: Option<mpsc::Receiver<super::relay::RelayDatagram>>,
    /// The address relay sockets bind (the media sockets').
    pub(super) relay_ip: std::net::IpAddr,
    /// Open ICE-TCP connections; what a peer sends over TCP goes to its connection's queue.
    pub(super) tcp: super::tcp::Connections,
    /// Media read from one peer before it is forwarded; reused across iterations.
    pub(super) inbound: Vec<RTCMessage>,
    /// To signaling (offers for room subscribers, track and peer lifecycle).
    pub(super) events: mpsc::UnboundedSender<super::SfuEvent>,
    pub(super) speaker_interval: Duration,
    pub(super) last_speaker_ranking: Instant,
    pub(super) last_quality_sample: Instant,
    /// When simulcast targets are next checked against the layers being sent.
    pub(super) next_layer_check: Instant,
}

impl Engine {
    pub fn new(
        config: &SfuConfig,
        index: usize,
        placement: Arc<Placement>,
        media_port: u16,
        metrics: Metrics,
        events: mpsc::UnboundedSender<super::SfuEvent>,
    ) -> Self {
        let candidate_addrs = config
            .announced_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, media_port))
            .collect();
        let (relay_tx, relay_rx) = mpsc::channel(super::relay::RELAY_QUEUE);
        Self {
            index,
            placement,
            commands_handled: metrics
                .engine_commands
                .with_label_values(&[&index.to_string()]),
            peers_held: metrics
                .engine_peers
                .with_label_values(&[&index.to_string()]),
            rooms_held: metrics
                .engine_rooms
                .with_label_values(&[&index.to_string()]),
            reported: [0; 5],
            factory: PeerFactory {
                candidate_addrs,
                ice_check_interval: config.ice_check_interval,
                ice_disconnected_timeout: config.ice_disconnected_timeout,
                ice_failed_timeout: config.ice_failed_timeout,
                nack_cache_packets: config.nack_cache_packets,
                audio_red: config.audio_red,
                bwe: config.bwe,
                ice_tcp: config.ice_tcp,
            },
            max_peers: config.max_peers,
            keyframe_interval: config.keyframe_request_interval,
            connect_timeout: config.connect_timeout,
            viewer_wait: config.whep_publisher_wait,
            metrics,
            demux: Demux::new(config.max_addresses_per_peer),
            rooms: Rooms::default(),
            next_track_id: 1,
            next_tap: 0,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            outbox: Vec::new(),
            relay_sockets: FxHashMap::default(),
            relay_tx,
            relay_rx: Some(relay_rx),
            relay_ip: config.bind.ip(),
            tcp: super::tcp::Connections::default(),
            inbound: Vec::new(),
            events,
            speaker_interval: config.active_speaker_interval,
            last_speaker_ranking: Instant::now(),
            last_quality_sample: Instant::now(),
            next_layer_check: Instant::now(),
        }
    }

    // ---- commands -------------------------------------------------------------------------

    fn handle_command(&mut self, command: Command, now: Instant) {
        self.commands_handled.inc();
        match command {
            Command::Offer {
                room,
                identity,
                intent,
                limits,
                offer,
                reply,
            } => {
                let result = self.accept_offer(room.clone(), identity, intent, limits, offer, now);
                self.placement.settle(&room, self.rooms.contains(&room));
                let _ = reply.send(result);
            }
            Command::Patch {
                room,
                session,
                requester,
                replaces,
                fragment,
                reply,
            } => {
                let result = self
                    .owned_session(&room, session, &requester, false)
                    .and_then(|()| self.patch(session, replaces, fragment, now));
                let _ = reply.send(result);
            }
            Command::Close {
                room,
                session,
                requester,
                reply,
            } => {
                let result = self.owned_session(&room, session, &requester, true);
                if result.is_ok() {
                    let reason = if requester.moderator {
                        "closed by a moderator"
                    } else {
                        "closed by client"
                    };
                    self.remove_peer(session, reason, now);
                }
                let _ = reply.send(result);
            }
            Command::CloseParticipant {
                room,
                identity,
                reply,
            } => {
                let sessions: Vec<PeerId> = self
                    .rooms
                    .get(&room)
                    .map(|r| {
                        r.peers
                            .values()
                            .filter(|p| p.identity == identity)
                            .map(|p| p.id)
                            .collect()
                    })
                    .unwrap_or_default();
                for session in &sessions {
                    self.remove_peer(*session, "removed by a moderator", now);
                }
                let _ = reply.send(Ok(sessions.len()));
            }
            Command::CloseRoom { room, reply } => {
                let sessions: Vec<PeerId> = self
                    .rooms
                    .get(&room)
                    .map(|r| r.peers.keys().copied().collect())
                    .unwrap_or_default();
                for session in &sessions {
                    self.remove_peer(*session, "the meeting ended", now);
                }
                let _ = reply.send(Ok(sessions.len()));
            }
            Command::SetTrackMuted {
                track,
                muted,
                reply,
            } => {
                let _ = reply.send(self.set_track_muted(track, muted, now));
            }
            Command::SetPaused {
                session,
                track,
                paused,
                reply,
            } => {
                let _ = reply.send(self.set_paused(session, track, paused, now));
            }
            Command::AttachTap {
                track,
                slot,
                tx,
                reply,
            } => {
                let _ = reply.send(self.attach_tap(track, slot, tx, now));
            }
            Command::DetachTap { track, tap, reply } => {
                let result = match self.rooms.track_mut(track) {
                    Some(track) => {
                        track.taps.retain(|t| t.id != tap);
                        Ok(())
                    }
                    None => Err(SfuError::TrackNotFound),
                };
                let _ = reply.send(result);
            }
            Command::RequestKeyframe { track, reply } => {
                let result = match self.rooms.track_mut(track) {
                    Some(t) => {
                        let top = t.layers.len().saturating_sub(1);
                        self.request_keyframe(track, top, "recorder", now);
                        Ok(())
                    }
                    None => Err(SfuError::TrackNotFound),
                };
                let _ = reply.send(result);
            }
            Command::SetTrackPriority {
                track,
                priority,
                reply,
            } => {
                let result = match self.rooms.track_mut(track) {
                    Some(track) => {
                        track.priority = priority;
                        Ok(())
                    }
                    None => Err(SfuError::TrackNotFound),
                };
                let _ = reply.send(result);
            }
            Command::RelayWish {
                room,
                session,
                track,
                wish,
                reply,
            } => {
                let _ = reply.send(self.apply_relay_wish(&room, session, track, wish, now));
            }
            Command::SetWanted {
                session,
                track,
                wanted,
                reply,
            } => {
                let _ = reply.send(self.set_wanted(session, track, wanted, now));
            }
            Command::SetFrameRate {
                session,
                track,
                fps,
                reply,
            } => {
                let _ = reply.send(self.set_frame_rate(session, track, fps));
            }
            Command::SelectLayer {
                room,
                session,
                requester,
                media_id,
                encoding,
                temporal,
                reply,
            } => {
                let result = self.select_layer(
                    &room,
                    session,
                    &requester,
                    super::selection::LayerChoice {
                        media_id: media_id.as_deref(),
                        encoding: encoding.as_deref(),
                        temporal,
                    },
                    now,
                );
                let _ = reply.send(result);
            }
            Command::Layers {
                room,
                session,
                requester,
                reply,
            } => {
                let _ = reply.send(self.layers(&room, session, &requester, now));
            }
            Command::SetSubscribed {
                session,
                track,
                subscribed,
                reply,
            } => {
                let _ = reply.send(self.set_subscribed(session, track, subscribed, now));
            }
            Command::SetMuted {
                room,
                identity,
                kind,
                muted,
                reply,
            } => {
                let _ = reply.send(Ok(self.set_muted(&room, &identity, kind, muted, now)));
            }
            Command::SubscribeRoom {
                room,
                identity,
                limits,
                manual,
                reply,
            } => {
                let result = self.subscribe_room(room.clone(), identity, limits, manual, now);
                self.placement.settle(&room, self.rooms.contains(&room));
                let _ = reply.send(result);
            }
            Command::Answer {
                session,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.apply_answer(session, sdp, now));
            }
            Command::OpenRelay {
                room,
                identity,
                tracks,
                reply,
            } => {
                let result = self.open_relay(room.clone(), identity, tracks, now);
                self.placement.settle(&room, self.rooms.contains(&room));
                let _ = reply.send(result);
            }
            Command::RelayAnswer {
                session,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.relay_answer(session, sdp, now));
            }
            Command::Renegotiate {
                session,
                offer,
                reply,
            } => {
                let _ = reply.send(self.renegotiate_publisher(session, offer, now));
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn accept_offer(
        &mut self,
        room_id: RoomId,
        identity: ParticipantId,
        intent: Intent,
        limits: RoomLimits,
        offer_sdp: String,
        now: Instant,
    ) -> Result<Negotiated, SfuError> {
        self.check_capacity(
            &room_id,
            &identity,
            !matches!(intent, Intent::Publish),
            &limits,
        )?;
        let parsed = Sdp::parse(&offer_sdp)?;
        if !parsed.has_media() {
            return Err(SfuError::BadOffer(
                "the offer has no audio or video section".into(),
            ));
        }
        parsed.check_offer()?;
        let remote_ufrag = parsed.attribute("ice-ufrag").unwrap_or_default().to_owned();
        let offer = RTCSessionDescription::offer(offer_sdp)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;

        // A viewer watches the publisher it names, else the room's most recent one; with none
        // there yet it waits for one (see `viewer.rs`).
        let chosen = |publisher: Option<&ParticipantId>| {
            self.rooms
                .get(&room_id)
                .and_then(|room| room.choose_publisher(publisher))
        };
        let (watch, only) = match &intent {
            Intent::Publish => (None, None),
            Intent::Subscribe { publisher } => {
                (Some((publisher.clone(), chosen(publisher.as_ref()))), None)
            }
            // A relay does not wait for its publisher: the other node asks for what exists.
            // The publisher's connection holding the asked tracks (it may have another).
            Intent::Relay { publisher, tracks } => {
                let peer = tracks
                    .first()
                    .and_then(|t| self.rooms.track(*t))
                    .map(|t| t.publisher)
                    .filter(|p| {
                        self.rooms
                            .peer(*p)
                            .is_some_and(|p| p.identity == *publisher && p.room == room_id)
                    })
                    .ok_or(SfuError::PublisherNotFound)?;
                (
                    Some((Some(publisher.clone()), Some(peer))),
                    Some(tracks.as_slice()),
                )
            }
        };

        let id = PeerId::on_engine(self.index as u8);
        let direction = if watch.is_some() {
            LegDirection::Sends
        } else {
            LegDirection::Receives
        };
        let (mut pc, estimate) = self.factory.new_peer_connection(now, direction)?;
        let down_tracks = match &watch {
            Some((_, Some(publisher))) => {
                self.add_down_tracks(&mut pc, id, *publisher, only, now)?
            }
            Some((_, None)) => super::viewer::placeholder_down_tracks(&mut pc, id, &parsed)?,
            None => Vec::new(),
        };
        pc.set_remote_description(now, offer)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;
        if direction == LegDirection::Receives {
            super::codecs::prefer_red(&mut pc, &parsed);
        }
        self.factory.add_host_candidates(&mut pc)?;
        let answer = pc
            .create_answer(None)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;
        pc.set_local_description(now, answer)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;
        let answer_sdp = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| SfuError::Internal("no local description after answering".into()))?;
        let (local_ufrag, local_pwd) = super::sdp::local_credentials(&answer_sdp);
        if local_ufrag.is_empty() {
            return Err(super::sdp::nothing_accepted());
        }

        let role = match &watch {
            Some((wanted, publisher)) => PeerRole::Subscriber {
                publisher: *publisher,
                wanted: wanted.clone(),
                waiting_since: publisher.is_none().then_some(now),
            },
            None => PeerRole::Publisher,
        };
        let mut peer = Peer::new(
            id,
            room_id.clone(),
            identity.clone(),
            role,
            pc,
            estimate,
            now,
        );
        peer.local_ufrag = local_ufrag;
        peer.remote_ufrag = remote_ufrag;
        peer.down_tracks = down_tracks;

        let mut new_tracks = Vec::new();
        match watch {
            None => {
                new_tracks = self.register_published_tracks(&mut peer);
                if peer.published.is_empty() {
                    return Err(SfuError::BadOffer(
                        "the offer sends no audio or video we can receive".into(),
                    ));
                }
            }
            Some(_) => {
                resolve_payload_types(&mut peer);
                if peer.down_tracks.iter().all(|d| d.payload_type.is_none()) {
                    return Err(SfuError::BadOffer(
                        "the offer accepts none of the publisher's codecs (or, with no \
                         publisher yet, offers none we forward)"
                            .into(),
                    ));
                }
                for (slot, down) in peer.down_tracks.iter().enumerate() {
                    if let Some(track) = self.rooms.track_mut(down.source) {
                        track.subscribers.push(SubscriberRef { peer: id, slot });
                    }
                }
            }
        }

        let negotiated = Negotiated {
            session: id,
            answer: answer_sdp,
            ice_generation: peer.local_ufrag.clone(),
        };
        self.demux.bind_ufrag(&peer.local_ufrag, &local_pwd, id);
        info!(room = %room_id, participant = %identity, session = %id, role = ?peer.role, "peer created");
        self.rooms.insert_peer(peer);
        self.mark_dirty(id);
        self.announce_tracks(id, &new_tracks, now);
        self.update_gauges();
        Ok(negotiated)
    }

    /// One sendonly track per published track of `publisher`, added before the subscriber's
    /// offer is applied so the answer's recvonly sections bind to them.
    fn add_down_tracks(
        &mut self,
        pc: &mut RTCPeerConnection,
        subscriber: PeerId,
        publisher: PeerId,
        only: Option<&[TrackId]>,
        now: Instant,
    ) -> Result<Vec<DownTrack>, SfuError> {
        let publisher_peer = self
            .rooms
            .peer(publisher)
            .ok_or(SfuError::PublisherNotFound)?;
        if only.is_some_and(|tracks| tracks.iter().any(|t| !publisher_peer.published.contains(t))) {
            return Err(SfuError::TrackNotFound);
        }
        let stream_id = publisher_peer.identity.0.clone();
        let mut down_tracks = Vec::new();
        for track_id in &publisher_peer.published {
            if only.is_some_and(|only| !only.contains(track_id)) {
                continue;
            }
            let Some(track) = self.rooms.track(*track_id) else {
                continue;
            };
            let ssrc = rand::random::<u32>();
            let rtc_track_id = format!("{}-{}", track.id, &subscriber.0.simple().to_string()[..8]);
            let local = super::subscriber::sending_track(
                &stream_id,
                &rtc_track_id,
                track.kind,
                track.codec.clone(),
                ssrc,
            );
            let sender = pc.add_track(local)?;
            let mut down = DownTrack::new(
                track.id,
                sender,
                rtc_track_id,
                ssrc,
                track.kind,
                &track.codec,
            );
            down.target_layer =
                super::simulcast::choose(&track.layers, usize::MAX, now).unwrap_or(0) as u8;
            down_tracks.push(down);
        }
        Ok(down_tracks)
    }

    /// Turns each receiving m-line of a publisher's negotiated connection that is not yet a
    /// published track into one. Returns the new tracks.
    pub(super) fn register_published_tracks(&mut self, peer: &mut Peer) -> Vec<TrackId> {
        let mut added = Vec::new();
        let transceivers: Vec<_> = peer.pc.get_transceivers().collect();
        for transceiver_id in transceivers {
            let Some(transceiver) = peer.pc.rtp_transceiver(transceiver_id) else {
                continue;
            };
            if !transceiver.direction().has_recv() {
                continue;
            }
            let (Some(receiver_id), Some(mid)) =
                (transceiver.receiver(), transceiver.mid().clone())
            else {
                continue;
            };
            let known = peer.published.iter().any(|id| {
                self.rooms
                    .track(*id)
                    .is_some_and(|t| t.receiver == Some(receiver_id))
            });
            if known {
                continue;
            }
            let Some(mut receiver) = peer.pc.rtp_receiver(receiver_id) else {
                continue;
            };
            let kind = receiver.track().kind();
            let rtc_track_id = receiver.track().track_id().clone();
            let codecs = &receiver.get_parameters().rtp_parameters.codecs;
            let Some(codec) = primary_codec(codecs) else {
                continue;
            };
            let red_payload_type = super::codecs::red_payload_type(codecs);
            let audio_level_extension = receiver
                .get_parameters()
                .rtp_parameters
                .header_extensions
                .iter()
                .find(|e| e.uri == rtc::sdp::extmap::AUDIO_LEVEL_URI)
                .and_then(|e| u8::try_from(e.id).ok());
            // A relay's track takes the id signaling announced before it opened; the publishing
            // node names it in the track id (`{its id}-…`, see `add_down_tracks`).
            let id = if peer.relay_tracks.is_empty() {
                self.next_track_id += 1;
                TrackId::on_engine(self.next_track_id - 1, self.index, self.placement.engines())
            } else {
                let origin = rtc_track_id.split('-').next().and_then(TrackId::parse);
                let named = peer
                    .relay_tracks
                    .iter()
                    .find(|(o, id)| origin == Some(*o) && !peer.published.contains(id));
                // Else by order: the relay offered one section per track, in this order.
                let Some(&(_, id)) =
                    named.or_else(|| peer.relay_tracks.get(peer.published.len() + added.len()))
                else {
                    continue;
                };
                if added.contains(&id) {
                    continue;
                }
                id
            };
            let video = kind == rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video;
            let rids: Vec<String> = receiver
                .track()
                .codings()
                .iter()
                .map(|c| c.rtp_coding_parameters.rid.clone())
                .filter(|rid| !rid.is_empty())
                .collect();
            let rids = if video && !rids.is_empty() {
                super::simulcast::order(&rids)
            } else {
                vec![String::new()]
            };
            let layers = rids
                .into_iter()
                .map(|rid| {
                    let history = video.then(|| History::new(self.factory.nack_cache_packets));
                    super::simulcast::Layer::new(rid, history)
                })
                .collect::<Vec<_>>();
            debug!(session = %peer.id, %id, %mid, codec = %codec.mime_type, layers = layers.len(), "track published");
            self.rooms.insert_track(
                &peer.room,
                PublishedTrack {
                    id,
                    publisher: peer.id,
                    mid,
                    publisher_track_id: rtc_track_id.clone(),
                    kind,
                    switchable: super::keyframe::Codec::of(&codec.mime_type),
                    codec,
                    red_payload_type,
                    layers,
                    receiver: Some(receiver_id),
                    subscribers: Vec::new(),
                    muted: false,
                    priority: 0,
                    dynacast: Default::default(),
                    audio_level_extension,
                    audio_level: Default::default(),
                    taps: Vec::new(),
                },
            );
            peer.inbound.insert(rtc_track_id, id);
            peer.published.push(id);
            added.push(id);
        }
        added
    }

    /// Whether one more peer of `identity` fits: in the server (`max_peers`), for the identity
    /// in the room (`max_sessions_per_identity`: one token cannot fill the server), and in the
    /// room: a view-only session among its viewers (`max_viewers_per_room`), any other among
    /// its participants (`max_participants`).
    pub(super) fn check_capacity(
        &self,
        room: &RoomId,
        identity: &ParticipantId,
        viewer: bool,
        limits: &RoomLimits,
    ) -> Result<(), SfuError> {
        if self.placement.total_peers() >= self.max_peers {
            return Err(SfuError::ServerFull {
                max: self.max_peers,
            });
        }
        let held = self.rooms.get(room).map_or(0, |r| {
            r.peers.values().filter(|p| &p.identity == identity).count()
        });
        if held >= limits.sessions_per_identity {
            return Err(SfuError::TooManySessions {
                max: limits.sessions_per_identity,
            });
        }
        if viewer {
            let viewers = self
                .rooms
                .get(room)
                .map_or(0, |r| r.peers.values().filter(|p| p.is_viewer()).count());
            if viewers >= limits.viewers {
                return Err(SfuError::ViewersFull {
                    max: limits.viewers,
                });
            }
        } else if self.room_is_full(room, identity, limits.participants) {
            return Err(SfuError::RoomFull {
                max: limits.participants,
            });
        }
        Ok(())
    }

    /// Whether `identity` may not take a participant's place in the room: it holds
    /// `max` other identities already. A participant's second connection (a
    /// WebSocket participant has a publisher and a subscriber) does not take a second place,
    /// and view-only sessions take none.
    pub(super) fn room_is_full(&self, room: &RoomId, identity: &ParticipantId, max: usize) -> bool {
        let Some(room) = self.rooms.get(room) else {
            return false;
        };
        let mut identities: Vec<&ParticipantId> = room
            .peers
            .values()
            .filter(|p| !p.is_viewer())
            .map(|p| &p.identity)
            .collect();
        identities.sort_by(|a, b| a.0.cmp(&b.0));
        identities.dedup();
        !identities.contains(&identity) && identities.len() >= max
    }

    fn attach_tap(
        &mut self,
        track_id: TrackId,
        slot: u8,
        tx: tokio::sync::mpsc::Sender<super::tap::TapPacket>,
        now: Instant,
    ) -> Result<super::tap::TapInfo, SfuError> {
        self.next_tap += 1;
        let id = self.next_tap;
        let track = self
            .rooms
            .track_mut(track_id)
            .ok_or(SfuError::TrackNotFound)?;
        track.taps.push(super::tap::Tap { id, slot, tx });
        let info = super::tap::TapInfo {
            id,
            mime_type: track.codec.mime_type.clone(),
            clock_rate: track.codec.clock_rate,
            channels: track.codec.channels,
            red_payload_type: track.red_payload_type,
            fmtp: track.codec.sdp_fmtp_line.clone(),
        };
        let (video, top) = (track.is_video(), track.layers.len().saturating_sub(1));
        if video {
            self.request_keyframe(track_id, top, "recorder", now);
            // Dynacast keeps the top layer encoded while it is tapped.
            self.retarget(track_id, now, "");
        }
        Ok(info)
    }

    fn set_track_muted(
        &mut self,
        track_id: TrackId,
        muted: bool,
        now: Instant,
    ) -> Result<(), SfuError> {
        let track = self
            .rooms
            .track_mut(track_id)
            .ok_or(SfuError::TrackNotFound)?;
        if track.muted == muted {
            return Ok(());
        }
        track.muted = muted;
        self.resync_down_tracks(track_id);
        if !muted {
            // Resuming mid-stream: subscribers need a keyframe to decode again.
            self.request_keyframes_in_use(track_id, "resume", now);
        }
        Ok(())
    }

    /// A keyframe on every layer of `track_id` a subscriber is on or moving to.
    pub(super) fn request_keyframes_in_use(
        &mut self,
        track_id: TrackId,
        reason: &'static str,
        now: Instant,
    ) {
        let Some(room) = self.rooms.of_track_mut(track_id) else {
            return;
        };
        let Some(track) = room.tracks.get(&track_id) else {
            return;
        };
        let mut wanted = [false; super::simulcast::MAX_LAYERS];
        for subscriber in &track.subscribers {
            if let Some(down) = room
                .peers
                .get(&subscriber.peer)
                .and_then(|p| p.down_tracks.get(subscriber.slot))
            {
                if let Some(slot) = wanted.get_mut(usize::from(down.target_layer)) {
                    *slot = true;
                }
            }
        }
        for (layer, _) in wanted.iter().enumerate().filter(|(_, w)| **w) {
            self.request_keyframe(track_id, layer, reason, now);
        }
    }

    /// The packets of `track_id` dropped on purpose (a mute) leave no gap at its subscribers:
    /// their next packet continues the sequence they saw.
    fn resync_down_tracks(&mut self, track_id: TrackId) {
        let Some(room) = self.rooms.of_track_mut(track_id) else {
            return;
        };
        let Some(track) = room.tracks.get(&track_id) else {
            return;
        };
        for subscriber in &track.subscribers {
            if let Some(down) = room
                .peers
                .get_mut(&subscriber.peer)
                .and_then(|p| p.down_tracks.get_mut(subscriber.slot))
            {
                down.munger.resync();
            }
        }
    }

    fn set_muted(
        &mut self,
        room: &RoomId,
        identity: &ParticipantId,
        kind: super::MediaKind,
        muted: bool,
        now: Instant,
    ) -> usize {
        let track_ids: Vec<TrackId> = self
            .rooms
            .peers()
            .filter(|p| &p.room == room && &p.identity == identity && p.is_publisher())
            .flat_map(|p| p.published.iter().copied())
            .collect();
        let mut changed = Vec::new();
        for track_id in track_ids {
            let Some(track) = self.rooms.track_mut(track_id) else {
                continue;
            };
            if track.is_video() != (kind == super::MediaKind::Video) {
                continue;
            }
            if track.muted != muted {
                track.muted = muted;
                changed.push(track_id);
            }
        }
        for track_id in &changed {
            self.resync_down_tracks(*track_id);
        }
        // Unmuted video resumes mid-stream: subscribers need a keyframe to decode again.
        if !muted {
            for track_id in &changed {
                self.request_keyframes_in_use(*track_id, "resume", now);
            }
        }
        info!(%room, participant = %identity, ?kind, muted, tracks = changed.len(), "mute applied");
        changed.len()
    }

    /// Whether `requester` may act on `session` of `room`. A session of another room is not
    /// found, so a token of one room learns nothing of another's sessions.
    pub(super) fn owned_session(
        &self,
        room: &RoomId,
        session: PeerId,
        requester: &super::Requester,
        moderator_may: bool,
    ) -> Result<(), SfuError> {
        let peer = self
            .rooms
            .peer(session)
            .filter(|p| &p.room == room)
            .ok_or(SfuError::SessionNotFound)?;
        if peer.identity == requester.identity || (moderator_may && requester.moderator) {
            Ok(())
        } else {
            Err(SfuError::NotSessionOwner)
        }
    }

    fn patch(
        &mut self,
        session: PeerId,
        replaces: Option<Generation>,
        fragment: IceFragment,
        now: Instant,
    ) -> Result<PatchOutcome, SfuError> {
        let peer = self
            .rooms
            .peer_mut(session)
            .ok_or(SfuError::SessionNotFound)?;
        if let Some(Generation::Is(generation)) = &replaces {
            if generation != &peer.local_ufrag {
                return Err(SfuError::StaleGeneration);
            }
        }
        let restart = fragment
            .ufrag
            .as_deref()
            .is_some_and(|u| u != peer.remote_ufrag);
        if !restart {
            for candidate in fragment.candidates {
                peer.pc
                    .add_remote_candidate(RTCIceCandidateInit {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.mid,
                        sdp_mline_index: candidate.mline_index,
                        username_fragment: fragment.ufrag.clone(),
                        url: None,
                    })
                    .map_err(|e| SfuError::BadFragment(e.to_string()))?;
            }
            self.mark_dirty(session);
            return Ok(PatchOutcome::Trickled);
        }
        if replaces.is_none() {
            return Err(SfuError::GenerationRequired);
        }
        let (Some(ufrag), Some(pwd)) = (fragment.ufrag.clone(), fragment.pwd.clone()) else {
            return Err(SfuError::BadFragment(
                "an ICE restart needs both a=ice-ufrag and a=ice-pwd".into(),
            ));
        };
        let current = peer
            .pc
            .remote_description()
            .map(|d| d.sdp.clone())
            .ok_or(SfuError::SessionNotFound)?;
        let restarted_offer = Sdp::parse(&current)?.restarted(&ufrag, &pwd, &fragment);
        let offer = RTCSessionDescription::offer(restarted_offer)
            .map_err(|e| SfuError::BadFragment(e.to_string()))?;
        peer.pc
            .set_remote_description(now, offer)
            .map_err(|e| SfuError::BadFragment(e.to_string()))?;
        let answer = peer.pc.create_answer(None)?;
        peer.pc.set_local_description(now, answer)?;
        let answer_sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp)
            .unwrap_or_default();
        let (new_ufrag, new_pwd) = super::sdp::local_credentials(&answer_sdp);
        self.demux.unbind_ufrag(&peer.local_ufrag);
        self.demux.bind_ufrag(&new_ufrag, &new_pwd, session);
        peer.local_ufrag = new_ufrag;
        peer.remote_ufrag = ufrag;
        let outcome = PatchOutcome::Restarted {
            fragment: Sdp::parse(&answer_sdp)
                .map(|answer| answer.answer_fragment())
                .unwrap_or_default(),
            ice_generation: peer.local_ufrag.clone(),
        };
        info!(session = %session, "ice restarted");
        self.mark_dirty(session);
        Ok(outcome)
    }

    // ---- network input and timers ----------------------------------------------------------

    fn on_datagram(
        &mut self,
        source: SocketAddr,
        destination_ip: Option<std::net::IpAddr>,
        payload: &[u8],
        protocol: TransportProtocol,
        now: Instant,
    ) {
        let peer_id = match self.demux.route(source, payload) {
            Ok(peer_id) => peer_id,
            Err(why) => {
                if why == super::demux::Unrouted::BadIntegrity {
                    self.metrics.stun_rejected.inc();
                }
                self.metrics.udp_datagrams_dropped.inc();
                return;
            }
        };
        let Some(peer) = self.rooms.peer_mut(peer_id) else {
            return;
        };
        // After the handshake DTLS is rare (alerts, such as a client's close_notify), so the
        // transport state is looked at only then.
        if super::ingress::classify(payload) == super::ingress::DatagramKind::Dtls {
            peer.dtls_input = true;
        }
        let transport = TransportContext {
            local_addr: self.factory.local_addr_for(destination_ip),
            peer_addr: source,
            ecn: None,
            transport_protocol: protocol,
        };
        if let Err(e) = peer.pc.handle_read(TaggedBytesMut {
            now,
            transport,
            message: BytesMut::from(payload),
        }) {
            debug!(session = %peer_id, error = %e, "datagram rejected");
        }
        self.mark_dirty(peer_id);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((deadline, peer_id))) = self.timers.peek().copied() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.rooms.peer_mut(peer_id) else {
                continue;
            };
            if peer.next_timeout != Some(deadline) {
                continue; // superseded by a newer deadline
            }
            peer.next_timeout = None;
            if let Err(e) = peer.pc.handle_timeout(now) {
                debug!(session = %peer_id, error = %e, "timeout handling failed");
            }
            self.mark_dirty(peer_id);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((deadline, _))| *deadline)
    }

    /// An ICE-TCP connection opened, sent a frame (handled as a datagram tagged TCP), or ended.
    fn on_tcp(&mut self, event: super::tcp::TcpEvent, now: Instant) {
        use super::tcp::TcpEvent;
        match event {
            TcpEvent::Opened {
                peer,
                id,
                writer,
                task,
            } => {
                if !self.tcp.opened(peer, id, writer, task) {
                    self.metrics.ice_tcp_connections.inc();
                }
                self.metrics.ice_tcp_accepted.inc();
            }
            TcpEvent::Frame { peer, local, data } => {
                self.on_datagram(peer, Some(local.ip()), &data, TransportProtocol::TCP, now);
            }
            TcpEvent::Closed { peer, id } => {
                if self.tcp.closed(peer, id) {
                    self.metrics.ice_tcp_connections.dec();
                }
            }
        }
    }

    /// Reaps peers that never connected and ICE-TCP connections no peer holds, and sends
    /// keyframe requests deferred by the throttle.
    fn housekeeping(&mut self, now: Instant) {
        let demux = &self.demux;
        let closed = self
            .tcp
            .close_unbound(now, |addr| demux.peer_of(addr).is_some());
        self.metrics.ice_tcp_connections.sub(closed as i64);
        if now.duration_since(self.last_speaker_ranking) >= self.speaker_interval {
            self.last_speaker_ranking = now;
            self.rank_speakers(now);
        }
        if now.duration_since(self.last_quality_sample) >= QUALITY_INTERVAL {
            self.last_quality_sample = now;
            self.sample_quality(now);
        }
        let stale: Vec<PeerId> = self
            .rooms
            .peers()
            .filter(|p| {
                p.state == PeerState::Connecting
                    && now.duration_since(p.created_at) > self.connect_timeout
            })
            .map(|p| p.id)
            .collect();
        for peer_id in stale {
            self.metrics.peers_reaped.inc();
            self.remove_peer(peer_id, "ice/dtls did not complete in time", now);
        }
        let interval = self.keyframe_interval;
        let due: Vec<(TrackId, usize)> = self
            .rooms
            .tracks()
            .flat_map(|t| {
                t.layers.iter().enumerate().filter_map(move |(i, l)| {
                    l.keyframes
                        .pending_due(interval)
                        .is_some_and(|at| at <= now)
                        .then_some((t.id, i))
                })
            })
            .collect();
        for (track_id, layer) in due {
            self.request_keyframe(track_id, layer, "deferred", now);
        }
        if now >= self.next_layer_check {
            self.next_layer_check = now + LAYER_CHECK_INTERVAL;
            self.choose_layers(now);
        }
        self.reap_waiting_viewers(now);
    }

    // ---- servicing peers -------------------------------------------------------------------

    /// Measures every connected peer; announces a peer whose quality band changed.
    fn sample_quality(&mut self, now: Instant) {
        use rtc::statistics::StatsSelector;
        for peer in self
            .rooms
            .peers_mut()
            .filter(|p| p.state == PeerState::Connected)
        {
            if let Some(bits) = peer.estimate.as_ref().and_then(|e| e.raw_bits_per_second()) {
                self.metrics.subscriber_estimate.observe(bits as f64);
            }
            let report = peer.pc.get_stats(now, StatsSelector::None);
            let sample = peer.quality.sample(&report);
            let quality = super::quality::classify(sample);
            if peer.quality.last != Some(quality) {
                peer.quality.last = Some(quality);
                let _ = self.events.send(super::SfuEvent::ConnectionQuality {
                    session: peer.id,
                    quality,
                    sample,
                });
            }
        }
    }

    /// Ranks each room's speakers; announces a room's ranking when its order changed.
    fn rank_speakers(&mut self, now: Instant) {
        let mut heard: HashMap<RoomId, Vec<(ParticipantId, f32)>> = HashMap::new();
        for track in self
            .rooms
            .tracks()
            .filter(|t| t.audio_level_extension.is_some() && !t.muted)
        {
            let Some(peer) = self.rooms.peer(track.publisher) else {
                continue;
            };
            heard
                .entry(peer.room.clone())
                .or_default()
                .push((peer.identity.clone(), track.audio_level.loudness(now)));
        }
        for room in self.rooms.values_mut() {
            let ranking = super::speaker::rank(heard.remove(&room.id).unwrap_or_default());
            if !super::speaker::same_order(&room.speakers, &ranking) {
                room.speakers = ranking.clone();
                let _ = self.events.send(super::SfuEvent::ActiveSpeakers {
                    room: room.id.clone(),
                    speakers: ranking,
                });
            }
        }
    }

    pub(super) fn mark_dirty(&mut self, peer_id: PeerId) {
        if let Some(peer) = self.rooms.peer_mut(peer_id) {
            if !peer.dirty {
                peer.dirty = true;
                self.dirty.push(peer_id);
            }
        }
    }

    /// Polls every touched peer until no output is left. Forwarding marks subscribers dirty, so
    /// this runs until the fan-out has settled.
    fn service_dirty(&mut self, now: Instant) {
        while let Some(peer_id) = self.dirty.pop() {
            self.service(peer_id, now);
        }
    }

    pub(super) fn service(&mut self, peer_id: PeerId, now: Instant) {
        let mut closed = false;
        let mut connected = false;
        let mut opened_tracks = Vec::new();
        {
            let Some(peer) = self.rooms.peer_mut(peer_id) else {
                return;
            };
            peer.dirty = false;
            while let Some(event) = peer.pc.poll_event() {
                match event {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                        debug!(session = %peer_id, %state, "connection state");
                        match state {
                            RTCPeerConnectionState::Connected
                                if peer.state == PeerState::Connecting =>
                            {
                                peer.state = PeerState::Connected;
                                connected = true;
                            }
                            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                                closed = true
                            }
                            _ => {}
                        }
                    }
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        opened_tracks.push((init.track_id, init.receiver_id, init.ssrc, init.rid));
                    }
                    _ => {}
                }
            }
            // A client that closed its connection sent DTLS close_notify; the connection state
            // stays `connected` then (W3C counts a closed DTLS transport as connected), so look
            // at the transport instead of waiting for the ICE timeouts.
            if std::mem::take(&mut peer.dtls_input)
                && peer.state == PeerState::Connected
                && dtls_closed(&mut peer.pc)
            {
                debug!(session = %peer_id, "dtls closed by the client");
                closed = true;
            }
            // Media first taken out of the peer, then forwarded, since forwarding needs the
            // other peers mutably too.
            let mut inbound = std::mem::take(&mut self.inbound);
            while let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
                inbound.push(message);
            }
            self.inbound = inbound;
        }
        for (rtc_track_id, receiver_id, ssrc, rid) in opened_tracks {
            self.on_track_open(peer_id, rtc_track_id, receiver_id, ssrc, rid, now);
        }
        if connected {
            self.on_connected(peer_id, now);
        }
        let mut inbound = std::mem::take(&mut self.inbound);
        for message in inbound.drain(..) {
            match message {
                RTCMessage::RtpPacket(rtc_track_id, packet) => {
                    self.forward(peer_id, &rtc_track_id, packet, now)
                }
                RTCMessage::RtcpPacket(rtc_track_id, packets) => {
                    self.on_rtcp(peer_id, &rtc_track_id, &packets, now)
                }
                _ => {}
            }
        }
        self.inbound = inbound;

        self.offer_if_pending(peer_id, now);
        let Some(peer) = self.rooms.peer_mut(peer_id) else {
            return;
        };
        match self.relay_sockets.get(&peer_id) {
            Some(socket) => socket.send_writes(&mut peer.pc, &self.metrics),
            None => queue_writes(&mut peer.pc, &mut self.outbox, &mut self.tcp, &self.metrics),
        }
        let deadline = peer.pc.poll_timeout();
        if deadline != peer.next_timeout {
            peer.next_timeout = deadline;
            if let Some(deadline) = deadline {
                self.timers.push(Reverse((deadline, peer_id)));
            }
        }
        if closed {
            self.metrics.peers_reaped.inc();
            self.remove_peer(peer_id, "connection failed or closed", now);
        }
    }

    fn on_track_open(
        &mut self,
        peer_id: PeerId,
        rtc_track_id: String,
        receiver_id: rtc::rtp_transceiver::RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<String>,
        now: Instant,
    ) {
        let Some(room) = self.rooms.of_peer_mut(peer_id) else {
            return;
        };
        let Some(peer) = room.peers.get_mut(&peer_id) else {
            return;
        };
        let track_id = match peer.inbound.get(&rtc_track_id) {
            Some(id) => *id,
            None => {
                // The track id differs from the one seen at negotiation: map it by receiver.
                let tracks = &room.tracks;
                let Some(id) = peer.published.iter().copied().find(|id| {
                    tracks
                        .get(id)
                        .is_some_and(|t| t.receiver == Some(receiver_id))
                }) else {
                    return;
                };
                peer.inbound.insert(rtc_track_id, id);
                id
            }
        };
        let Some(track) = self.rooms.track_mut(track_id) else {
            return;
        };
        let layer = match rid.as_deref() {
            Some(rid) if !rid.is_empty() => track.layers.iter().position(|l| l.rid == rid),
            _ => (track.layers.len() == 1).then_some(0),
        };
        let Some(layer) = layer else {
            debug!(%track_id, ?rid, "a stream of no known layer");
            return;
        };
        let first = track.layers[layer].ssrc.is_none();
        track.layers[layer].ssrc = Some(ssrc);
        if first && track.is_video() && !track.subscribers.is_empty() {
            self.request_keyframe(track_id, layer, "first_packet", now);
        }
    }

    /// A subscriber is ready: ask each of its video sources for a keyframe so it can decode now.
    fn on_connected(&mut self, peer_id: PeerId, now: Instant) {
        let Some(peer) = self.rooms.peer(peer_id) else {
            return;
        };
        info!(session = %peer_id, room = %peer.room, "peer connected");
        let _ = self
            .events
            .send(super::SfuEvent::Connected { session: peer_id });
        let sources: Vec<(TrackId, usize)> = peer
            .down_tracks
            .iter()
            .filter(|d| d.kind_is_video)
            .map(|d| (d.source, usize::from(d.target_layer)))
            .collect();
        for (source, layer) in sources {
            self.request_keyframe(source, layer, "subscriber_joined", now);
        }
    }

    /// The hot path: one inbound packet to every subscriber of its track. Per subscriber it
    /// builds a new header (no allocation) around the shared payload and queues it on that
    /// subscriber's connection.
    fn forward(
        &mut self,
        publisher: PeerId,
        rtc_track_id: &str,
        packet: rtc::rtp::Packet,
        now: Instant,
    ) {
        // One lookup: the publisher's room holds its inbound map, the track and every
        // subscriber of it.
        let Some(room) = self.rooms.of_peer_mut(publisher) else {
            return;
        };
        let Some(track_id) = room
            .peers
            .get(&publisher)
            .and_then(|p| p.inbound.get(rtc_track_id))
            .copied()
        else {
            self.metrics
                .forward_errors
                .with_label_values(&["unknown_track"])
                .inc();
            return;
        };
        let Some(track) = room.tracks.get_mut(&track_id) else {
            return;
        };
        self.metrics.rtp_packets_in.inc();
        self.metrics
            .rtp_bytes_in
            .inc_by(packet.payload.len() as u64);
        if let Some(id) = track.audio_level_extension {
            let level = packet
                .header
                .extensions
                .iter()
                .find(|e| e.id == id)
                .and_then(|e| e.payload.first());
            if let Some(level) = level {
                track.audio_level.observe(*level, now);
            }
        }
        // The first packet names the SSRC keyframe requests address; subscribers that came
        // before it still wait for their keyframe.
        let first_packet = track.layers.len() == 1 && track.layers[0].ssrc.is_none();
        let Some(layer) = track.layer_of(packet.header.ssrc) else {
            self.metrics
                .forward_errors
                .with_label_values(&["unknown_layer"])
                .inc();
            return;
        };
        let wants_keyframe = first_packet && track.is_video() && !track.subscribers.is_empty();
        let kept = &mut track.layers[layer];
        kept.rate.observe(packet.payload.len(), now);
        // VP8: the temporal layer, read once here for the layer's frame rates and for the legs
        // that cap theirs.
        let mut temporal = None;
        if track.switchable == super::keyframe::Codec::Vp8 {
            // A layer's size, for choosing by tile size: every VP8 keyframe states it (a few
            // bytes read per packet).
            if let Some(Some(size)) = super::keyframe::vp8_keyframe(&packet.payload) {
                kept.size = Some(size);
            }
            temporal = super::vp8::temporal_of(&packet.payload);
            if let Some(t) = temporal.filter(|t| t.frame_start) {
                kept.frame_rates.observe(t.tid, now);
            }
        }
        if !track.muted {
            if let Some(history) = &mut track.layers[layer].history {
                history.keep(&packet);
            }
            let forwarded = super::forward::fan_out(
                track,
                super::forward::Inbound {
                    packet: &packet,
                    layer: layer as u8,
                    temporal,
                },
                now,
                &mut room.peers,
                &mut self.dirty,
                &self.metrics,
            );
            if !track.taps.is_empty() && layer + 1 == track.layers.len() {
                let (dropped, _) = super::tap::offer(&mut track.taps, &packet, now);
                if dropped > 0 {
                    self.metrics.tap_dropped.inc_by(dropped);
                }
            }
            self.metrics.rtp_packets_out.inc_by(forwarded);
            self.metrics
                .rtp_bytes_out
                .inc_by(forwarded * packet.payload.len() as u64);
        }
        if wants_keyframe {
            self.request_keyframe(track_id, 0, "first_packet", now);
        }
    }

    fn on_rtcp(
        &mut self,
        peer_id: PeerId,
        rtc_track_id: &str,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) {
        let feedback = rtcp::classify(packets);
        if feedback.nacks > 0 {
            self.metrics
                .nacks
                .with_label_values(&["received"])
                .inc_by(u64::from(feedback.nacks));
            self.retransmit(peer_id, rtc_track_id, packets, now);
        }
        let Some(kind) = feedback.keyframe else {
            return;
        };
        self.metrics
            .keyframe_requests
            .with_label_values(&[
                if kind == super::track::KeyframeRequestKind::Fir {
                    "fir"
                } else {
                    "pli"
                },
                "received",
            ])
            .inc();
        let Some(peer) = self.rooms.peer(peer_id) else {
            return;
        };
        let Some(slot) = peer.down_track_slot(rtc_track_id) else {
            return;
        };
        let down = &peer.down_tracks[slot];
        let (source, layer) = (down.source, usize::from(down.target_layer));
        self.request_keyframe(source, layer, "subscriber_pli", now);
    }

    /// Answers a subscriber's NACKs on one down track from its source's history: each packet
    /// again, as this leg sent it. At most [`MAX_RETRANSMITS_PER_RTCP`] per compound packet, so
    /// a subscriber cannot make one RTCP packet cost more than a burst.
    fn retransmit(
        &mut self,
        peer_id: PeerId,
        rtc_track_id: &str,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) {
        let Some(room) = self.rooms.of_peer_mut(peer_id) else {
            return;
        };
        let Some(peer) = room.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(slot) = peer.down_track_slot(rtc_track_id) else {
            return;
        };
        let down = &peer.down_tracks[slot];
        let (Some(payload_type), false) = (down.payload_type, down.removed) else {
            return;
        };
        // The leg's sequence numbers since its last switch name packets of the layer it is on.
        let layer = usize::from(down.layer.unwrap_or(0));
        let Some(history) = room
            .tracks
            .get(&down.source)
            .and_then(|t| t.layers.get(layer))
            .and_then(|l| l.history.as_ref())
        else {
            return;
        };
        let (mut sent, mut missed) = (0u64, 0u64);
        for sequence in rtcp::nacked(packets, down.ssrc)
            .into_iter()
            .take(MAX_RETRANSMITS_PER_RTCP)
        {
            let Some((source, picture_offset)) = down
                .munger
                .source_sequence(sequence)
                .and_then(|(s, picture)| history.get(s).map(|packet| (packet, picture)))
            else {
                missed += 1;
                continue;
            };
            let again = down.rewrite_again(payload_type, &source, sequence, picture_offset);
            let written = peer.pc.handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), again),
            });
            match written {
                Ok(()) => sent += 1,
                Err(_) => missed += 1,
            }
        }
        if sent > 0 && !peer.dirty {
            peer.dirty = true;
            self.dirty.push(peer_id);
        }
        let counter = &self.metrics.retransmissions;
        counter.with_label_values(&["sent"]).inc_by(sent);
        counter.with_label_values(&["missed"]).inc_by(missed);
    }

    /// Sends PLI (or FIR) for `track_id` to its publisher, at most once per interval; requests
    /// in between are deferred, not dropped (see `KeyframeThrottle`).
    /// `reason` labels the request in `keyframe_requests_asked_total` (counted before the
    /// throttle: what asked, not what went out).
    pub(super) fn request_keyframe(
        &mut self,
        track_id: TrackId,
        layer: usize,
        reason: &'static str,
        now: Instant,
    ) {
        let Some(track) = self.rooms.track_mut(track_id) else {
            return;
        };
        if !track.is_video() {
            return;
        }
        self.metrics
            .keyframes_asked
            .with_label_values(&[reason])
            .inc();
        let kind = track.keyframe_request_kind();
        let receiver = track.receiver;
        let Some(layer) = track.layers.get_mut(layer) else {
            return;
        };
        let (Some(media_ssrc), Some(receiver)) = (layer.ssrc, receiver) else {
            // Nothing received yet: the first packet triggers the request (see `forward`).
            return;
        };
        if !layer.keyframes.request(now, self.keyframe_interval) {
            return;
        }
        let sequence = layer.keyframes.next_fir_sequence();
        let publisher = track.publisher;
        let Some(peer) = self.rooms.peer_mut(publisher) else {
            return;
        };
        let Some(mut receiver) = peer.pc.rtp_receiver(receiver) else {
            return;
        };
        match receiver.write_rtcp(now, rtcp::keyframe_request(kind, media_ssrc, sequence)) {
            Ok(()) => {
                let label = if kind == super::track::KeyframeRequestKind::Fir {
                    "fir"
                } else {
                    "pli"
                };
                self.metrics
                    .keyframe_requests
                    .with_label_values(&[label, "sent"])
                    .inc();
                self.mark_dirty(publisher);
            }
            Err(e) => debug!(%track_id, error = %e, "keyframe request not sent"),
        }
    }

    // ---- teardown --------------------------------------------------------------------------

    /// Closes a peer and releases everything it held. A publisher's subscribers get RTCP BYE on
    /// its tracks; a subscriber left with no source is closed too, so its tracks end.
    pub(super) fn remove_peer(&mut self, peer_id: PeerId, reason: &str, now: Instant) {
        let Some(mut peer) = self.rooms.remove_peer(peer_id) else {
            return;
        };
        info!(session = %peer_id, room = %peer.room, participant = %peer.identity, reason, "peer removed");
        self.demux.remove_peer(peer_id);
        let mut viewers = Vec::new();
        for track_id in std::mem::take(&mut peer.published) {
            viewers.extend(self.unpublish(&peer, track_id, now));
        }
        for down in &peer.down_tracks {
            if let Some(track) = self.rooms.track_mut(down.source) {
                track.subscribers.retain(|s| s.peer != peer_id);
            }
        }
        // Close sends DTLS close_notify; queue it before the state machine is dropped.
        let _ = peer.pc.close();
        match self.relay_sockets.remove(&peer_id) {
            Some(socket) => socket.send_writes(&mut peer.pc, &self.metrics),
            None => queue_writes(&mut peer.pc, &mut self.outbox, &mut self.tcp, &self.metrics),
        }
        if self.rooms.close_if_empty(&peer.room) {
            info!(room = %peer.room, "room released");
            self.placement.released(&peer.room);
        }
        let _ = self.events.send(super::SfuEvent::Closed {
            session: peer_id,
            reason: reason.to_owned(),
        });
        self.viewers_lost_source(viewers, now);
        self.update_gauges();
    }

    fn close_all(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.rooms.peers().map(|p| p.id).collect();
        for id in ids {
            self.remove_peer(id, "server shutting down", now);
        }
    }

    pub(super) fn update_gauges(&mut self) {
        let subscribers: usize = self.rooms.tracks().map(|t| t.subscribers.len()).sum();
        let paused = self
            .rooms
            .peers()
            .flat_map(|p| &p.down_tracks)
            .filter(|d| d.paused && !d.removed)
            .count();
        let now = [
            self.rooms.room_count() as i64,
            self.rooms.peer_count() as i64,
            self.rooms.track_count() as i64,
            subscribers as i64,
            paused as i64,
        ];
        let gauges = [
            &self.metrics.rooms,
            &self.metrics.peers,
            &self.metrics.published_tracks,
            &self.metrics.subscribers,
            &self.metrics.paused_down_tracks,
        ];
        for ((gauge, now), before) in gauges.iter().zip(now).zip(self.reported) {
            gauge.add(now - before);
        }
        self.reported = now;
        self.peers_held.set(now[1]);
        self.rooms_held.set(now[0]);
        self.placement
            .report_peers(self.index, self.rooms.peer_count());
    }
}

/// The engine task: a fair loop. It waits until anything is ready (a datagram, a command, a
/// peer timer, housekeeping, or room to send a backlog), then runs one turn that serves every
/// kind of work with a bound: at most [`RECEIVE_BUDGET`] datagrams, then at most
/// [`COMMAND_BUDGET`] commands, then the due timers and housekeeping, then sends without ever
/// waiting for the socket. So a socket that is always readable cannot starve joins, moderation,
/// ICE consent or RTCP, and a full send buffer stalls nothing: what does not fit waits in a
/// bounded backlog (past it, the oldest media datagrams are dropped and counted).
pub async fn run(
    mut engine: Engine,
    mut socket: MediaSocket,
    mut commands: mpsc::Receiver<Command>,
    mut tcp_events: mpsc::Receiver<super::tcp::TcpEvent>,
) {
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
    let mut shutdown_reply = None;
    let mut woken_by: Option<Command> = None;
    let mut relay_events = engine.relay_rx.take().expect("the engine runs once");
    'turns: loop {
        let deadline = engine
            .next_deadline()
            .map_or(next_housekeeping, |d| d.min(next_housekeeping));
        let backlog = !engine.outbox.is_empty();
        tokio::select! {
            readable = socket.readable() => {
                if let Err(e) = readable {
                    warn!(error = %e, "media socket failed");
                    break;
                }
            }
            command = commands.recv() => match command {
                Some(command) => woken_by = Some(command),
                None => break,
            },
            Some(event) = tcp_events.recv() => engine.on_tcp(event, Instant::now()),
            Some(datagram) = relay_events.recv() => {
                engine.on_relay_datagram(datagram, Instant::now())
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
            writable = socket.writable(), if backlog => {
                if let Err(e) = writable {
                    warn!(error = %e, "media socket failed");
                    break;
                }
            }
        }

        let now = Instant::now();
        if let Err(e) = socket.drain(RECEIVE_BUDGET, |d| {
            engine.on_datagram(
                d.source,
                d.destination_ip,
                d.payload,
                TransportProtocol::UDP,
                now,
            )
        }) {
            warn!(error = %e, "media socket receive failed");
        }
        for _ in 0..RECEIVE_BUDGET {
            match tcp_events.try_recv() {
                Ok(event) => engine.on_tcp(event, now),
                Err(_) => break,
            }
        }
        for _ in 0..RECEIVE_BUDGET {
            match relay_events.try_recv() {
                Ok(datagram) => engine.on_relay_datagram(datagram, now),
                Err(_) => break,
            }
        }
        for _ in 0..COMMAND_BUDGET {
            let command = match woken_by.take() {
                Some(command) => command,
                None => match commands.try_recv() {
                    Ok(command) => command,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => break 'turns,
                },
            };
            if let Command::Shutdown { reply } = command {
                shutdown_reply = Some(reply);
                break 'turns;
            }
            engine.handle_command(command, Instant::now());
        }
        let now = Instant::now();
        engine.fire_timers(now);
        if now >= next_housekeeping {
            engine.housekeeping(now);
            next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
        engine.service_dirty(Instant::now());
        flush(&mut engine, &socket);
    }
    engine.close_all(Instant::now());
    engine.service_dirty(Instant::now());
    // The goodbyes (DTLS close_notify, RTCP BYE) get a short wait for room in the buffer.
    let until = Instant::now() + Duration::from_millis(200);
    flush(&mut engine, &socket);
    while !engine.outbox.is_empty() && Instant::now() < until {
        if tokio::time::timeout_at(until.into(), socket.writable())
            .await
            .is_err()
        {
            break;
        }
        flush(&mut engine, &socket);
    }
    info!("sfu engine stopped");
    if let Some(reply) = shutdown_reply {
        let _ = reply.send(());
    }
}

/// Sends what the socket takes now; the rest stays queued, at most [`SEND_BACKLOG`] datagrams.
fn flush(engine: &mut Engine, socket: &MediaSocket) {
    if engine.outbox.is_empty() {
        return;
    }
    match socket.try_send(&engine.outbox) {
        Ok(sent) => {
            engine.outbox.drain(..sent);
        }
        Err(e) => {
            warn!(error = %e, "media socket send failed");
            engine.outbox.clear();
        }
    }
    if engine.outbox.len() > SEND_BACKLOG {
        // Media goes first, oldest first: a lost RTP packet is NACKed or concealed, while a lost
        // handshake flight or connectivity check can cost a connection.
        let mut excess = engine.outbox.len() - SEND_BACKLOG;
        let before = engine.outbox.len();
        engine.outbox.retain(|(_, datagram)| {
            let media = matches!(
                super::ingress::classify(datagram),
                super::ingress::DatagramKind::Rtp | super::ingress::DatagramKind::Rtcp
            );
            if media && excess > 0 {
                excess -= 1;
                false
            } else {
                true
            }
        });
        engine
            .metrics
            .udp_send_dropped
            .inc_by((before - engine.outbox.len()) as u64);
    }
}

/// The codec a publisher's m-line sends: the first negotiated one that is not a repair format.
/// Takes what a peer has to send: UDP datagrams into the outbox (sent in batches by `flush`),
/// ICE-TCP frames onto their connection's queue (a full queue drops and counts).
fn queue_writes(
    pc: &mut RTCPeerConnection,
    outbox: &mut Vec<(SocketAddr, BytesMut)>,
    tcp: &mut super::tcp::Connections,
    metrics: &crate::metrics::Metrics,
) {
    while let Some(out) = pc.poll_write() {
        if out.transport.transport_protocol == TransportProtocol::TCP {
            if !tcp.send(out.transport.peer_addr, &out.message) {
                metrics.ice_tcp_dropped.inc();
            }
        } else {
            outbox.push((out.transport.peer_addr, out.message));
        }
    }
}

fn primary_codec(
    codecs: &[rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters],
) -> Option<RTCRtpCodec> {
    codecs
        .iter()
        .map(|c| &c.rtp_codec)
        .find(|c| {
            let mime = c.mime_type.to_ascii_lowercase();
            !(mime.ends_with("/rtx")
                || mime.ends_with("fec")
                || mime.ends_with("/red")
                || mime.ends_with("telephone-event"))
        })
        .cloned()
}

/// Whether the connection's DTLS transport is closed (the remote sent close_notify).
fn dtls_closed(pc: &mut RTCPeerConnection) -> bool {
    let receiver = pc.get_receivers().next();
    let sender = pc.get_senders().next();
    let state = match (receiver, sender) {
        (Some(id), _) => pc
            .rtp_receiver(id)
            .and_then(|r| r.transport().map(|t| t.state())),
        (None, Some(id)) => pc
            .rtp_sender(id)
            .and_then(|s| s.transport().map(|t| t.state())),
        (None, None) => None,
    };
    state == Some(RTCDtlsTransportState::Closed)
}

/// After negotiation: the payload type each down track must use on its subscriber's leg, and
/// whether it may carry redundant audio (the subscriber's side of the SDP lists RED on its
/// section: only then, whatever webrtc-rs put in an answer of ours).
pub(super) fn resolve_payload_types(peer: &mut Peer) {
    let red_sections = peer
        .pc
        .remote_description()
        .and_then(|d| Sdp::parse(&d.sdp).ok())
        .map(|sdp| sdp.red_payload_types())
        .unwrap_or_default();
    let mids: Vec<(rtc::rtp_transceiver::RTCRtpSenderId, String)> = if red_sections.is_empty() {
        Vec::new()
    } else {
        let transceivers: Vec<_> = peer.pc.get_transceivers().collect();
        transceivers
            .into_iter()
            .filter_map(|id| {
                let transceiver = peer.pc.rtp_transceiver(id)?;
                Some((transceiver.sender()?, transceiver.mid().clone()?))
            })
            .collect()
    };
    for down in peer.down_tracks.iter_mut().filter(|d| !d.removed) {
        down.red_payload_type = mids
            .iter()
            .find(|(sender, _)| *sender == down.sender)
            .and_then(|(_, mid)| red_sections.iter().find(|(m, _)| m == mid))
            .filter(|_| !down.kind_is_video)
            .map(|(_, pt)| *pt);
        let Some(mut sender) = peer.pc.rtp_sender(down.sender) else {
            continue;
        };
        let codec = sender.track().codings().first().map(|c| c.codec.clone());
        let Some(codec) = codec else { continue };
        let parameters = sender.get_parameters();
        let codecs = &parameters.rtp_parameters.codecs;
        let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
            c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
        };
        down.payload_type = codecs
            .iter()
            .filter(same_mime)
            .find(|c| c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line)
            .or_else(|| codecs.iter().find(same_mime))
            .map(|c| c.payload_type);
    }
}
