//! WHEP viewers outlive their publisher. A viewer session lives until its client deletes it or
//! its connection fails; what it watches may come and go:
//!
//! - A viewer that POSTs before any publisher is in the room gets one sending track per audio
//!   or video section of its offer, shaped by the first codec it offers that we forward, with no
//!   source yet ([`NO_SOURCE`]). It waits (`Subscriber { publisher: None }`).
//! - When its publisher leaves, its tracks go quiet (no RTCP BYE: players keep their elements)
//!   and it waits again.
//! - When a publisher arrives (the named one, or any with no name given), each of the viewer's
//!   tracks takes that publisher's track of the same kind and codec; the sequence numbers and
//!   timestamps on the leg continue (see `subscriber::Munger`) and a keyframe is requested at
//!   once, so the player decodes the new media without a new POST.
//! - A viewer that waits longer than `whep_publisher_wait` is closed.
//!
//! A returning publisher whose codec the viewer's leg did not negotiate cannot be forwarded to
//! it (WHEP has no server-initiated renegotiation); the viewer keeps waiting for one that fits.

use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use tracing::info;

use super::engine::Engine;
use super::error::SfuError;
use super::peer::{PeerRole, PeerState};
use super::subscriber::DownTrack;
use super::track::SubscriberRef;
use crate::ids::{PeerId, RoomId, TrackId};

/// The source of a down track that has none (yet): no track ever has this id.
pub const NO_SOURCE: TrackId = TrackId(0);

/// Sending tracks for a viewer with nothing to watch yet, one per audio/video section of its
/// offer, added before the offer is applied so the answer's sections bind to them.
pub(super) fn placeholder_down_tracks(
    pc: &mut RTCPeerConnection,
    viewer: PeerId,
    offer: &super::sdp::Sdp,
) -> Result<Vec<DownTrack>, SfuError> {
    let mut down_tracks = Vec::new();
    for (index, (kind, codec)) in offer.offered_codecs().into_iter().enumerate() {
        let Some(codec) = codec else {
            continue;
        };
        let ssrc = rand::random::<u32>();
        let rtc_track_id = format!("w{index}-{}", &viewer.0.simple().to_string()[..8]);
        let local =
            super::subscriber::sending_track("convene", &rtc_track_id, kind, codec.clone(), ssrc);
        let sender = pc.add_track(local)?;
        down_tracks.push(DownTrack::new(
            NO_SOURCE,
            sender,
            rtc_track_id,
            ssrc,
            kind,
            &codec,
        ));
    }
    Ok(down_tracks)
}

impl Engine {
    /// Viewers whose publisher's tracks just ended: those left with no live source wait (and
    /// may take another publisher of the room at once).
    pub(super) fn viewers_lost_source(&mut self, mut viewers: Vec<PeerId>, now: Instant) {
        // One entry per track the publisher had.
        viewers.sort();
        viewers.dedup();
        let mut rooms: Vec<RoomId> = Vec::new();
        for viewer in viewers {
            let Some(peer) = self.rooms.peer(viewer) else {
                continue;
            };
            let live = peer
                .down_tracks
                .iter()
                .any(|d| self.rooms.track(d.source).is_some());
            if live {
                continue;
            }
            // A relay to another node carries the tracks it was opened for, not whatever the
            // publisher sends next: that node opens a new one if it still wants them.
            if peer.identity.0 == super::relay::RELAY_IDENTITY {
                self.remove_peer(viewer, "relayed tracks ended", now);
                continue;
            }
            let room = peer.room.clone();
            if let Some(peer) = self.rooms.peer_mut(viewer) {
                if let PeerRole::Subscriber {
                    publisher,
                    waiting_since,
                    ..
                } = &mut peer.role
                {
                    *publisher = None;
                    *waiting_since = Some(now);
                    info!(session = %viewer, room = %room, "viewer waits for a publisher");
                }
            }
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
        for room in rooms {
            self.attach_waiting_viewers(&room, now);
        }
    }

    /// Gives every waiting viewer of `room` the publisher it asked for, if it is there now.
    pub(super) fn attach_waiting_viewers(&mut self, room: &RoomId, now: Instant) {
        let Some(room) = self.rooms.get(room) else {
            return;
        };
        let bindings: Vec<(PeerId, PeerId)> = room
            .peers
            .values()
            .filter_map(|peer| {
                let PeerRole::Subscriber {
                    publisher: None,
                    wanted,
                    ..
                } = &peer.role
                else {
                    return None;
                };
                Some((peer.id, room.choose_publisher(wanted.as_ref())?))
            })
            .collect();
        for (viewer, publisher) in bindings {
            self.bind_viewer(viewer, publisher, now);
        }
    }

    /// Each of the viewer's tracks takes `publisher`'s track of the same kind and codec.
    fn bind_viewer(&mut self, viewer: PeerId, publisher: PeerId, now: Instant) {
        let Some(source) = self.rooms.peer(publisher) else {
            return;
        };
        let mut offered: Vec<(TrackId, bool, String)> = source
            .published
            .iter()
            .filter_map(|id| self.rooms.track(*id))
            .map(|t| (t.id, t.is_video(), t.codec.mime_type.to_ascii_lowercase()))
            .collect();
        let top_layers: rustc_hash::FxHashMap<TrackId, u8> = source
            .published
            .iter()
            .filter_map(|id| self.rooms.track(*id))
            .map(|t| {
                let layer = super::simulcast::choose(&t.layers, usize::MAX, now).unwrap_or(0);
                (t.id, layer as u8)
            })
            .collect();
        let Some(peer) = self.rooms.peer_mut(viewer) else {
            return;
        };
        let mut bound: Vec<(TrackId, usize)> = Vec::new();
        for slot in 0..peer.down_tracks.len() {
            let down = &peer.down_tracks[slot];
            if down.payload_type.is_none() || down.removed {
                continue;
            }
            let mime = peer
                .pc
                .rtp_sender(down.sender)
                .and_then(|s| {
                    s.track()
                        .codings()
                        .first()
                        .map(|c| c.codec.mime_type.to_ascii_lowercase())
                })
                .unwrap_or_default();
            let kind_is_video = down.kind_is_video;
            let Some(index) = offered
                .iter()
                .position(|(_, video, m)| *video == kind_is_video && *m == mime)
            else {
                continue;
            };
            let (track_id, _, _) = offered.remove(index);
            let down = &mut peer.down_tracks[slot];
            down.source = track_id;
            down.switch_source();
            // A simulcast source: its best layer, from its next keyframe (`choose_layers`
            // settles the target within one check).
            down.layer = None;
            down.target_layer = top_layers.get(&track_id).copied().unwrap_or(0);
            bound.push((track_id, slot));
        }
        if bound.is_empty() {
            return;
        }
        if let PeerRole::Subscriber {
            publisher: watched,
            waiting_since,
            ..
        } = &mut peer.role
        {
            *watched = Some(publisher);
            *waiting_since = None;
        }
        let connected = peer.state == PeerState::Connected;
        info!(session = %viewer, %publisher, tracks = bound.len(), "viewer watches a publisher");
        for (track_id, slot) in &bound {
            if let Some(track) = self.rooms.track_mut(*track_id) {
                track.subscribers.push(SubscriberRef {
                    peer: viewer,
                    slot: *slot,
                });
            }
        }
        if connected {
            for (track_id, slot) in bound {
                let layer = self
                    .rooms
                    .peer(viewer)
                    .and_then(|p| p.down_tracks.get(slot))
                    .map_or(0, |d| usize::from(d.target_layer));
                self.request_keyframe(track_id, layer, "source_changed", now);
            }
        }
        self.update_gauges();
    }

    /// Closes viewers that waited longer than `whep_publisher_wait` for a publisher.
    pub(super) fn reap_waiting_viewers(&mut self, now: Instant) {
        let limit = self.viewer_wait;
        let expired: Vec<PeerId> = self
            .rooms
            .peers()
            .filter(|p| match p.role {
                PeerRole::Subscriber {
                    waiting_since: Some(since),
                    ..
                } => now.duration_since(since) > limit,
                _ => false,
            })
            .map(|p| p.id)
            .collect();
        for viewer in expired {
            self.remove_peer(viewer, "no publisher came within whep_publisher_wait", now);
        }
    }
}
