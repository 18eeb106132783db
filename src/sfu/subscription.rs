//! Room subscriptions and renegotiation: what WebSocket signaling needs beyond WHIP/WHEP.
//!
//! A room subscriber is one connection per participant that receives every other participant's
//! tracks. The server is the offerer on it: when a track is published or unpublished in the room,
//! the engine adds or removes a sender and offers again ([`SfuEvent::Offer`]). One offer is in
//! flight at a time; changes made meanwhile are folded into the next offer once the answer is in.
//! Publishers renegotiate the other way round: they offer (a screen share added), we answer.

use std::time::Instant;

use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tracing::{debug, info};

use super::engine::{resolve_payload_types, Engine};
use super::error::SfuError;
use super::peer::{Negotiation, Peer, PeerRole, PeerState};
use super::rtcp;
use super::sdp::{local_credentials, Sdp};
use super::subscriber::DownTrack;
use super::track::{PublishedTrack, SubscriberRef};
use super::{MediaKind, Negotiated, SfuEvent, TrackInfo};
use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};

impl Engine {
    /// Creates `identity`'s room subscriber with a sender for every other participant's track,
    /// and returns the server's offer.
    pub(super) fn subscribe_room(
        &mut self,
        room_id: RoomId,
        identity: ParticipantId,
        limits: super::RoomLimits,
        manual: bool,
        now: Instant,
    ) -> Result<Negotiated, SfuError> {
        self.check_capacity(&room_id, &identity, false, &limits)?;
        let id = PeerId::on_engine(self.index as u8);
        let (mut pc, estimate) = self
            .factory
            .new_peer_connection(now, super::peer::LegDirection::Sends)?;
        // A data channel gives the offer a section even before any track exists, so ICE and DTLS
        // come up at join time and the first track later only costs a renegotiation.
        pc.create_data_channel("convene", None)?;
        self.factory.add_host_candidates(&mut pc)?;
        let mut peer = Peer::new(
            id,
            room_id.clone(),
            identity.clone(),
            PeerRole::RoomSubscriber,
            pc,
            estimate,
            now,
        );
        peer.manual = manual.then(Default::default);
        let sources: Vec<TrackId> = self
            .rooms
            .get(&room_id)
            .map(|room| {
                room.tracks
                    .values()
                    .filter(|t| {
                        !manual
                            && room
                                .peers
                                .get(&t.publisher)
                                .is_some_and(|p| p.identity != identity)
                    })
                    .map(|t| t.id)
                    .collect()
            })
            .unwrap_or_default();
        for source in sources {
            self.attach(&mut peer, source)?;
        }
        let offer = create_offer(&mut peer, now)?;
        let (local_ufrag, local_pwd) = local_credentials(&offer);
        peer.local_ufrag = local_ufrag;
        self.demux.bind_ufrag(&peer.local_ufrag, &local_pwd, id);
        info!(room = %room_id, participant = %identity, session = %id, tracks = peer.down_tracks.len(), "room subscriber created");
        Ok(self.admit_offering(peer, offer))
    }

    /// Takes in a peer whose offer (ours) is made: the caller sends `offer` on.
    pub(super) fn admit_offering(&mut self, peer: Peer, offer: String) -> Negotiated {
        let negotiated = Negotiated {
            session: peer.id,
            answer: offer,
            ice_generation: peer.local_ufrag.clone(),
        };
        let id = peer.id;
        self.rooms.insert_peer(peer);
        self.mark_dirty(id);
        self.update_gauges();
        negotiated
    }

    /// The client's answer to our last offer on a room subscriber.
    pub(super) fn apply_answer(
        &mut self,
        session: PeerId,
        sdp: String,
        now: Instant,
    ) -> Result<(), SfuError> {
        let peer = self
            .rooms
            .peer_mut(session)
            .ok_or(SfuError::SessionNotFound)?;
        if peer.role != PeerRole::RoomSubscriber
            || !matches!(peer.negotiation, Negotiation::AwaitingAnswer { .. })
        {
            return Err(SfuError::BadOffer(
                "no offer of ours is waiting for an answer on this session".into(),
            ));
        }
        Self::set_answer(peer, sdp, now)?;
        let unbound: Vec<usize> = peer
            .down_tracks
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.removed && d.payload_type.is_none())
            .map(|(i, _)| i)
            .collect();
        resolve_payload_types(peer);
        peer.negotiation = peer.negotiation.answered();
        let connected = peer.state == PeerState::Connected;
        // Newly bound video needs a keyframe to start decoding; before the connection is up,
        // `on_connected` asks for it instead.
        let keyframes: Vec<(TrackId, usize)> = unbound
            .into_iter()
            .filter_map(|i| peer.down_tracks.get(i))
            .filter(|d| connected && d.kind_is_video && d.payload_type.is_some())
            .map(|d| (d.source, usize::from(d.target_layer)))
            .collect();
        // A change that came while this offer was out is offered when the peer is serviced.
        self.mark_dirty(session);
        for (source, layer) in keyframes {
            self.request_keyframe(source, layer, "subscriber_joined", now);
        }
        Ok(())
    }

    /// Selective subscription: drops `track` from a room subscriber, or adds it back.
    pub(super) fn set_subscribed(
        &mut self,
        session: PeerId,
        track: TrackId,
        subscribed: bool,
        now: Instant,
    ) -> Result<(), SfuError> {
        let peer = self
            .rooms
            .peer_mut(session)
            .ok_or(SfuError::SessionNotFound)?;
        if peer.role != PeerRole::RoomSubscriber {
            return Err(SfuError::SessionNotFound);
        }
        // Kept even for a track that does not exist now (a remote one whose relay is being
        // made): it is attached when it is published.
        if let Some(wanted) = peer.manual.as_mut() {
            // Bounded like the session's own list (`signaling::session`), with room to spare.
            if subscribed && wanted.len() < 4096 {
                wanted.insert(track);
            } else {
                wanted.remove(&track);
            }
        }
        let peer = self.rooms.peer(session).ok_or(SfuError::SessionNotFound)?;
        let source = self.rooms.track(track).ok_or(SfuError::TrackNotFound)?;
        let publisher = self
            .rooms
            .peer(source.publisher)
            .ok_or(SfuError::TrackNotFound)?;
        if publisher.room != peer.room || publisher.identity == peer.identity {
            return Err(SfuError::TrackNotFound);
        }
        let active = peer
            .down_tracks
            .iter()
            .position(|d| d.source == track && !d.removed);
        match (subscribed, active) {
            (true, None) => {
                let mut sub = self
                    .rooms
                    .take_peer(session)
                    .ok_or(SfuError::SessionNotFound)?;
                let attached = self.attach(&mut sub, track);
                self.rooms.put_back(sub);
                attached?;
                self.send_offer(session, now);
            }
            (false, Some(slot)) => {
                if let Some(source) = self.rooms.track_mut(track) {
                    source
                        .subscribers
                        .retain(|s| !(s.peer == session && s.slot == slot));
                }
                let sub = self
                    .rooms
                    .peer_mut(session)
                    .ok_or(SfuError::SessionNotFound)?;
                let down = &mut sub.down_tracks[slot];
                down.payload_type = None;
                down.removed = true;
                let (sender, ssrc) = (down.sender, down.ssrc);
                if let Some(mut sender) = sub.pc.rtp_sender(sender) {
                    let _ = sender.write_rtcp(now, rtcp::goodbye(ssrc));
                }
                let _ = sub.pc.remove_track(sender);
                self.send_offer(session, now);
            }
            // Already as asked.
            _ => {}
        }
        self.update_gauges();
        Ok(())
    }

    /// Pauses (or resumes) one track on a subscriber's connection: the sender stays, so there
    /// is no renegotiation; resuming continues the leg's sequence and asks for a keyframe.
    pub(super) fn set_paused(
        &mut self,
        session: PeerId,
        track: TrackId,
        paused: bool,
        now: Instant,
    ) -> Result<(), SfuError> {
        let down = self.received_down_track(session, track)?;
        if down.paused == paused {
            return Ok(());
        }
        let (video, layer) = (down.kind_is_video, usize::from(down.target_layer));
        if paused {
            down.paused = true;
        } else {
            down.resume();
            if video {
                self.request_keyframe(track, layer, "resume", now);
            }
        }
        debug!(%session, %track, paused, "down track paused");
        self.update_gauges();
        Ok(())
    }

    /// The down track by which subscriber `session` receives `track`.
    pub(super) fn received_down_track(
        &mut self,
        session: PeerId,
        track: TrackId,
    ) -> Result<&mut DownTrack, SfuError> {
        let peer = self
            .rooms
            .peer_mut(session)
            .filter(|p| !p.is_publisher())
            .ok_or(SfuError::SessionNotFound)?;
        peer.down_tracks
            .iter_mut()
            .find(|d| d.source == track && !d.removed)
            .ok_or(SfuError::TrackNotFound)
    }

    /// A publisher offers again on its connection: new sending sections become tracks, sections
    /// that stopped sending are unpublished.
    pub(super) fn renegotiate_publisher(
        &mut self,
        session: PeerId,
        offer: String,
        now: Instant,
    ) -> Result<String, SfuError> {
        let mut peer = self
            .rooms
            .take_peer(session)
            .ok_or(SfuError::SessionNotFound)?;
        let result = self.renegotiate_removed_publisher(&mut peer, offer, now);
        let added = match result {
            Ok((answer, added)) => {
                self.rooms.put_back(peer);
                self.mark_dirty(session);
                self.announce_tracks(session, &added, now);
                Ok(answer)
            }
            Err(e) => {
                self.rooms.put_back(peer);
                Err(e)
            }
        };
        self.update_gauges();
        added
    }

    fn renegotiate_removed_publisher(
        &mut self,
        peer: &mut Peer,
        offer: String,
        now: Instant,
    ) -> Result<(String, Vec<TrackId>), SfuError> {
        if !peer.is_publisher() {
            return Err(SfuError::BadOffer(
                "only a publishing session takes offers".into(),
            ));
        }
        let parsed = Sdp::parse(&offer)?;
        parsed.check_offer()?;
        let remote_ufrag = parsed.attribute("ice-ufrag").unwrap_or_default().to_owned();
        let offer =
            RTCSessionDescription::offer(offer).map_err(|e| SfuError::BadOffer(e.to_string()))?;
        peer.pc
            .set_remote_description(now, offer)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;
        super::codecs::prefer_red(&mut peer.pc, &parsed);
        let answer = peer
            .pc
            .create_answer(None)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;
        peer.pc
            .set_local_description(now, answer)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;
        let answer_sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp)
            .unwrap_or_default();
        // An offer with new ICE credentials restarted ICE: our ufrag changed with it, and STUN
        // for the new one must reach this peer.
        let (ufrag, pwd) = local_credentials(&answer_sdp);
        if !ufrag.is_empty() && ufrag != peer.local_ufrag {
            self.demux.unbind_ufrag(&peer.local_ufrag);
            self.demux.bind_ufrag(&ufrag, &pwd, peer.id);
            peer.local_ufrag = ufrag;
            peer.remote_ufrag = remote_ufrag;
            info!(session = %peer.id, "ice restarted by a new offer");
        }
        // Sections the publisher no longer sends end their tracks.
        let receiving: Vec<_> = peer
            .pc
            .get_transceivers()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|t| {
                let transceiver = peer.pc.rtp_transceiver(t)?;
                transceiver
                    .direction()
                    .has_recv()
                    .then(|| transceiver.receiver())
                    .flatten()
            })
            .collect();
        let stopped: Vec<TrackId> = peer
            .published
            .iter()
            .copied()
            .filter(|id| {
                self.rooms
                    .track(*id)
                    .is_some_and(|t| t.receiver.is_none_or(|r| !receiving.contains(&r)))
            })
            .collect();
        let mut viewers = Vec::new();
        for track_id in stopped {
            peer.published.retain(|id| *id != track_id);
            peer.inbound.retain(|_, id| *id != track_id);
            viewers.extend(self.unpublish(peer, track_id, now));
        }
        self.viewers_lost_source(viewers, now);
        let added = self.register_published_tracks(peer);
        Ok((answer_sdp, added))
    }

    /// Tells signaling about new tracks and adds them to every room subscriber of the room
    /// except the publisher's own.
    pub(super) fn announce_tracks(&mut self, publisher: PeerId, tracks: &[TrackId], now: Instant) {
        let Some(peer) = self.rooms.peer(publisher) else {
            return;
        };
        let (room, identity) = (peer.room.clone(), peer.identity.clone());
        for track_id in tracks {
            if let Some(info) = self.rooms.track(*track_id).map(track_info) {
                let _ = self.events.send(SfuEvent::TrackPublished {
                    room: room.clone(),
                    identity: identity.clone(),
                    session: publisher,
                    track: info,
                });
            }
        }
        let subscribers: Vec<PeerId> = self
            .rooms
            .get(&room)
            .map(|r| {
                r.peers
                    .values()
                    .filter(|p| p.role == PeerRole::RoomSubscriber && p.identity != identity)
                    .map(|p| p.id)
                    .collect()
            })
            .unwrap_or_default();
        for session in subscribers {
            let Some(mut sub) = self.rooms.take_peer(session) else {
                continue;
            };
            let taken: Vec<TrackId> = tracks.iter().copied().filter(|t| sub.takes(*t)).collect();
            for track_id in &taken {
                if let Err(e) = self.attach(&mut sub, *track_id) {
                    debug!(%session, %track_id, error = %e, "track not added to subscriber");
                }
            }
            self.rooms.put_back(sub);
            if !taken.is_empty() {
                self.send_offer(session, now);
            }
        }
        self.attach_waiting_viewers(&room, now);
    }

    /// Applies the answer to an offer of ours on `peer` (a room subscriber, a relay): its ICE
    /// credentials, then the description.
    pub(super) fn set_answer(peer: &mut Peer, sdp: String, now: Instant) -> Result<(), SfuError> {
        peer.remote_ufrag = Sdp::parse(&sdp)?
            .attribute("ice-ufrag")
            .unwrap_or_default()
            .to_owned();
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::BadOffer(e.to_string()))?;
        peer.pc
            .set_remote_description(now, answer)
            .map_err(|e| SfuError::BadOffer(e.to_string()))
    }

    /// Adds a sender for `source` to a room subscriber (not yet in its room, or taken out).
    fn attach(&mut self, sub: &mut Peer, source: TrackId) -> Result<(), SfuError> {
        let Some(room) = self.rooms.of_track_mut(source) else {
            return Ok(());
        };
        let stream_id = room
            .tracks
            .get(&source)
            .and_then(|t| room.peers.get(&t.publisher))
            .map(|p| p.identity.0.clone())
            .unwrap_or_default();
        let Some(track) = room.tracks.get_mut(&source) else {
            return Ok(());
        };
        let ssrc = rand::random::<u32>();
        // The client sees `track.id` as the remote track's id and the publisher's identity as its
        // stream id: how it maps a media track to a participant and a published track.
        let rtc_track_id = track.id.to_string();
        let local = super::subscriber::sending_track(
            &stream_id,
            &rtc_track_id,
            track.kind,
            track.codec.clone(),
            ssrc,
        );
        let sender = sub.pc.add_track(local)?;
        let mut down = DownTrack::new(source, sender, rtc_track_id, ssrc, track.kind, &track.codec);
        down.target_layer =
            super::simulcast::choose(&track.layers, usize::MAX, Instant::now()).unwrap_or(0) as u8;
        // webrtc-rs reuses a transceiver whose sender was removed (same kind), so its m-line is
        // recycled; the down track of that transceiver is recycled with it, which keeps
        // `down_tracks` as long as the SDP however often a subscription toggles.
        let reusable = sub
            .down_tracks
            .iter()
            .position(|d| d.removed && d.sender == sender);
        let slot = match reusable {
            Some(slot) => {
                sub.down_tracks[slot] = down;
                slot
            }
            None => {
                sub.down_tracks.push(down);
                sub.down_tracks.len() - 1
            }
        };
        track.subscribers.push(SubscriberRef { peer: sub.id, slot });
        Ok(())
    }

    /// Asks for a new offer to the room subscriber. Deferred to when the engine services the
    /// peer, so every change of one command or datagram batch goes out in a single offer, and
    /// held back while an offer is waiting for its answer.
    pub(super) fn send_offer(&mut self, session: PeerId, _now: Instant) {
        if let Some(peer) = self.rooms.peer_mut(session) {
            peer.negotiation = peer.negotiation.changed();
        }
        self.mark_dirty(session);
    }

    /// Called while servicing a peer: makes the pending offer if nothing is in flight.
    pub(super) fn offer_if_pending(&mut self, session: PeerId, now: Instant) {
        let Some(peer) = self.rooms.peer_mut(session) else {
            return;
        };
        if peer.negotiation != Negotiation::OfferDue {
            return;
        }
        peer.negotiation = Negotiation::Stable;
        match create_offer(peer, now) {
            Ok(sdp) => {
                let _ = self.events.send(SfuEvent::Offer { session, sdp });
            }
            Err(e) => debug!(%session, error = %e, "renegotiation offer failed"),
        }
    }

    /// Ends a published track: room subscribers get RTCP BYE, lose the sender and get a new
    /// offer; WHEP viewers keep their track, which goes quiet, and are returned (they may wait
    /// for another publisher, see `viewer.rs`).
    pub(super) fn unpublish(
        &mut self,
        publisher: &Peer,
        track_id: TrackId,
        now: Instant,
    ) -> Vec<PeerId> {
        let Some(track) = self.rooms.remove_track(track_id) else {
            return Vec::new();
        };
        let _ = self.events.send(SfuEvent::TrackUnpublished {
            room: publisher.room.clone(),
            identity: publisher.identity.clone(),
            session: publisher.id,
            track: track_id,
        });
        let mut viewers = Vec::new();
        for subscriber in track.subscribers {
            let Some(sub) = self.rooms.peer_mut(subscriber.peer) else {
                continue;
            };
            if sub.role != PeerRole::RoomSubscriber {
                viewers.push(subscriber.peer);
                continue;
            }
            let Some(down) = sub.down_tracks.get_mut(subscriber.slot) else {
                continue;
            };
            down.payload_type = None;
            down.removed = true;
            let (sender, ssrc) = (down.sender, down.ssrc);
            if let Some(mut sender) = sub.pc.rtp_sender(sender) {
                let _ = sender.write_rtcp(now, rtcp::goodbye(ssrc));
            }
            let _ = sub.pc.remove_track(sender);
            self.send_offer(subscriber.peer, now);
            self.mark_dirty(subscriber.peer);
        }
        viewers
    }
}

pub(super) fn create_offer(peer: &mut Peer, now: Instant) -> Result<String, SfuError> {
    let offer = peer.pc.create_offer(None)?;
    peer.pc.set_local_description(now, offer)?;
    peer.negotiation = Negotiation::AwaitingAnswer { again: false };
    peer.pc
        .local_description()
        .map(|d| d.sdp)
        .ok_or_else(|| SfuError::Internal("no local description after offering".into()))
}

pub(super) fn track_info(track: &PublishedTrack) -> TrackInfo {
    TrackInfo {
        id: track.id,
        kind: if track.kind == RtpCodecKind::Video {
            MediaKind::Video
        } else {
            MediaKind::Audio
        },
        mid: track.mid.clone(),
        publisher_track_id: track.publisher_track_id.clone(),
        mime_type: track.codec.mime_type.clone(),
    }
}
