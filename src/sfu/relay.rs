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

use std::time::Instant;

use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tracing::info;

use super::engine::Engine;
use super::error::SfuError;
use super::peer::{LegDirection, Peer, PeerRole, PeerState};
use super::sdp::local_credentials;
use super::{MediaKind, Negotiated, RelayedTrack};
use crate::ids::{ParticipantId, PeerId, RoomId};

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
        self.factory.add_host_candidates(&mut pc)?;
        let mut peer = Peer {
            id,
            room: room.clone(),
            identity: identity.clone(),
            role: PeerRole::Publisher,
            pc,
            state: PeerState::Connecting,
            created_at: now,
            local_ufrag: String::new(),
            remote_ufrag: String::new(),
            inbound: Default::default(),
            published: Vec::new(),
            down_tracks: Vec::new(),
            next_timeout: None,
            dirty: false,
            negotiation: Default::default(),
            quality: Default::default(),
            dtls_input: false,
            estimate,
            relay_tracks: tracks.iter().map(|t| (t.origin, t.local)).collect(),
            manual: None,
        };
        let offer = super::subscription::create_offer(&mut peer, now)?;
        let (local_ufrag, local_pwd) = local_credentials(&offer);
        peer.local_ufrag = local_ufrag;
        self.demux.bind_ufrag(&peer.local_ufrag, &local_pwd, id);
        info!(%room, publisher = %identity, session = %id, tracks = tracks.len(), "relay opened");
        let negotiated = Negotiated {
            session: id,
            answer: offer,
            ice_generation: peer.local_ufrag.clone(),
        };
        self.rooms.insert_peer(peer);
        self.mark_dirty(id);
        self.update_gauges();
        Ok(negotiated)
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
        peer.remote_ufrag = super::sdp::Sdp::parse(&sdp)?
            .attribute("ice-ufrag")
            .unwrap_or_default()
            .to_owned();
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::BadOffer(e.to_string()))?;
        peer.pc
            .set_remote_description(now, answer)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;
        peer.negotiation = Default::default();
        Ok(())
    }
}
