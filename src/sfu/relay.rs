//! Cascading: tracks of a publisher on another node, received here as tracks of the room.
//!
//! The receiving node offers (one receive-only section per track); the publisher's node
//! answers as it answers a viewer of that publisher restricted to those tracks
//! ([`super::Intent::Relay`]). On both sides it is an ordinary connection of the engine (full
//! ICE, DTLS-SRTP), so what crosses the leg is what crosses any leg: here the relay is a
//! publisher, whose NACKs, receiver reports and keyframe requests go back over it, and whose
//! packets are forwarded to local subscribers like any publisher's; there it is a viewer, whose
//! NACKs are answered from the track's history and whose keyframe requests reach the publisher.
//! Which tracks a node relays, and when, is signaling's business (`signaling::cascade`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::mpsc;
use tracing::info;

use super::engine::Engine;
use super::error::SfuError;
use super::peer::{LegDirection, Peer, PeerRole};
use super::sdp::local_credentials;
use super::{MediaKind, Negotiated, RelayedTrack};
use crate::ids::{ParticipantId, PeerId, RoomId};

/// The identity relays to other nodes have in a room (on the publisher's node).
pub const RELAY_IDENTITY: &str = "convene-relay";

impl Engine {
    /// A relay connection receiving `tracks` of `identity`, and its offer (one receive-only
    /// section per track, in their order). Each track takes the id signaling announced.
    pub(super) fn open_relay(
        &mut self,
        room: RoomId,
        identity: ParticipantId,
        tracks: Vec<RelayedTrack>,
        now: Instant,
    ) -> Result<Negotiated, SfuError> {
        if self.placement.total_peers() >= self.max_peers {
            return Err(SfuError::ServerFull {
                max: self.max_peers,
            });
        }
        let engines = self.placement.engines();
        if tracks.is_empty()
            || tracks.iter().any(|t| {
                t.local.engine(engines) != self.index || self.rooms.track(t.local).is_some()
            })
        {
            // Announced for another engine (the room moved since) or taken: not this relay.
            return Err(SfuError::TrackNotFound);
        }
        let id = PeerId::on_engine(self.index as u8);
        let socket = RelaySocket::open(self.relay_ip, id, self.relay_tx.clone())
            .map_err(|e| SfuError::Internal(format!("relay socket: {e}")))?;
        let (mut pc, estimate) = self
            .factory
            .new_peer_connection(now, LegDirection::Receives)?;
        for track in &tracks {
            let kind = match track.kind {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            };
            pc.add_transceiver_from_kind(kind, None)?;
        }
        self.factory
            .add_host_candidates_on(&mut pc, Some(socket.port))?;
        let mut peer = Peer::new(
            id,
            room.clone(),
            identity.clone(),
            PeerRole::Publisher,
            pc,
            estimate,
            now,
        );
        peer.relay_tracks = tracks.iter().map(|t| (t.origin, t.local)).collect();
        let offer = super::subscription::create_offer(&mut peer, now)?;
        // Its datagrams come on its own socket: nothing of it goes through the demultiplexer.
        peer.local_ufrag = local_credentials(&offer).0;
        self.relay_sockets.insert(id, socket);
        info!(%room, publisher = %identity, session = %id, tracks = tracks.len(), "relay opened");
        Ok(self.admit_offering(peer, offer))
    }

    /// The publisher's node answered: the relay's track is published in the room.
    pub(super) fn relay_answer(
        &mut self,
        session: PeerId,
        sdp: String,
        now: Instant,
    ) -> Result<(), SfuError> {
        let mut peer = self
            .rooms
            .take_peer(session)
            .ok_or(SfuError::SessionNotFound)?;
        let result = self.apply_relay_answer(&mut peer, sdp, now);
        let tracks = match result {
            Ok(()) => self.register_published_tracks(&mut peer),
            Err(_) => Vec::new(),
        };
        self.rooms.put_back(peer);
        if let Err(e) = result {
            self.remove_peer(session, "relay answer refused", now);
            return Err(e);
        }
        if tracks.is_empty() {
            self.remove_peer(session, "relay answer sends nothing", now);
            return Err(SfuError::BadOffer(
                "the relay's answer sends no track we can receive".into(),
            ));
        }
        self.mark_dirty(session);
        self.announce_tracks(session, &tracks, now);
        self.update_gauges();
        Ok(())
    }

    fn apply_relay_answer(
        &mut self,
        peer: &mut Peer,
        sdp: String,
        now: Instant,
    ) -> Result<(), SfuError> {
        if peer.relay_tracks.is_empty() || !peer.published.is_empty() {
            return Err(SfuError::BadOffer(
                "no relay offer of ours waits for an answer on this session".into(),
            ));
        }
        Self::set_answer(peer, sdp, now)?;
        peer.negotiation = Default::default();
        Ok(())
    }
}

/// A relay's own UDP socket. Two relays between the same two nodes (one each way, or two
/// publishers of one node) on the engines' shared sockets would share one pair of addresses,
/// which is all the demultiplexer tells connections apart by: a datagram of one would reach
/// the other (a DTLS close of a relay just replaced closed its successor). So each relay sends
/// and receives on a socket of its own (an ephemeral port), read by a task that hands its
/// datagrams to the engine, as ICE-TCP connections do.
pub(super) struct RelaySocket {
    socket: Arc<tokio::net::UdpSocket>,
    pub port: u16,
    reader: tokio::task::AbortHandle,
}

/// A datagram a relay's socket received, for the engine.
pub struct RelayDatagram {
    pub peer: PeerId,
    pub source: SocketAddr,
    pub data: BytesMut,
}

/// Datagrams queued from relay sockets to their engine.
pub const RELAY_QUEUE: usize = 4096;

impl RelaySocket {
    /// Binds a socket on `ip` (a free port) and starts reading it for `peer`. Must run on the
    /// engine's runtime.
    pub fn open(
        ip: IpAddr,
        peer: PeerId,
        engine: mpsc::Sender<RelayDatagram>,
    ) -> std::io::Result<Self> {
        let std_socket = super::udp::bind(SocketAddr::new(ip, 0))?;
        let port = std_socket.local_addr()?.port();
        let socket = Arc::new(tokio::net::UdpSocket::from_std(std_socket)?);
        let reader = tokio::spawn(read(socket.clone(), peer, engine)).abort_handle();
        Ok(Self {
            socket,
            port,
            reader,
        })
    }

    /// Sends what the relay's connection has to send, without waiting: a datagram the socket's
    /// buffer has no room for is lost (and counted), as on a congested link; media is repaired
    /// by NACK, handshakes retransmit.
    pub fn send_writes(&self, pc: &mut RTCPeerConnection, metrics: &crate::metrics::Metrics) {
        while let Some(out) = pc.poll_write() {
            if self
                .socket
                .try_send_to(&out.message, out.transport.peer_addr)
                .is_err()
            {
                metrics.udp_send_dropped.inc();
            }
        }
    }
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read(
    socket: Arc<tokio::net::UdpSocket>,
    peer: PeerId,
    engine: mpsc::Sender<RelayDatagram>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok((len, source)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let datagram = RelayDatagram {
            peer,
            source,
            data: BytesMut::from(&buffer[..len]),
        };
        if engine.send(datagram).await.is_err() {
            return;
        }
    }
}

impl Engine {
    /// A datagram of a relay's socket: its connection's, with no demultiplexing.
    pub(super) fn on_relay_datagram(&mut self, datagram: RelayDatagram, now: Instant) {
        let Some(port) = self.relay_sockets.get(&datagram.peer).map(|s| s.port) else {
            return;
        };
        let Some(peer) = self.rooms.peer_mut(datagram.peer) else {
            return;
        };
        if super::ingress::classify(&datagram.data) == super::ingress::DatagramKind::Dtls {
            peer.dtls_input = true;
        }
        let mut local_addr = self.factory.local_addr_for(None);
        local_addr.set_port(port);
        let transport = TransportContext {
            local_addr,
            peer_addr: datagram.source,
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        };
        if let Err(e) = peer.pc.handle_read(TaggedBytesMut {
            now,
            transport,
            message: datagram.data,
        }) {
            tracing::debug!(session = %datagram.peer, error = %e, "relay datagram rejected");
        }
        self.mark_dirty(datagram.peer);
    }
}
