//! Which simulcast layer each down track receives: what its subscriber asked for
//! ([`Engine::set_wanted`]), bounded by the layers the publisher is sending now
//! ([`Engine::choose_layers`], every [`LAYER_CHECK_INTERVAL`]). A new target is reached on its
//! next keyframe (requested here); the old layer flows until then (`DownTrack::gate`).

use std::time::{Duration, Instant};

use tracing::debug;

use super::engine::Engine;
use super::error::SfuError;
use super::simulcast::{self, Wanted};
use super::{Encoding, MediaLayers, Requester, ViewerLayers};
use crate::ids::{PeerId, RoomId, TrackId};

/// What a WHEP viewer picks with the layer resource (see `select_layer`).
pub(super) struct LayerChoice<'a> {
    /// The video section (every one when `None`).
    pub media_id: Option<&'a str>,
    /// The encoding's RID (the best when `None`).
    pub encoding: Option<&'a str>,
    /// The highest VP8 temporal layer (every one when `None`).
    pub temporal: Option<u8>,
}

/// How often targets are checked against the layers being sent.
pub const LAYER_CHECK_INTERVAL: Duration = Duration::from_millis(250);

impl Engine {
    /// A subscriber's ask for one track it receives (a tile's size, a layer, or the best).
    pub(super) fn set_wanted(
        &mut self,
        session: PeerId,
        track: TrackId,
        wanted: Wanted,
        now: Instant,
    ) -> Result<(), SfuError> {
        self.received_down_track(session, track)?.wanted = wanted;
        debug!(%session, %track, ?wanted, "layer wanted");
        self.retarget(track, now, "requested");
        Ok(())
    }

    /// WHEP's layer selection: a viewer picks an encoding (by RID) of the video it receives
    /// in section `media_id` (every video section when `None`); no encoding means the best.
    pub(super) fn select_layer(
        &mut self,
        room: &RoomId,
        session: PeerId,
        requester: &Requester,
        choice: LayerChoice<'_>,
        now: Instant,
    ) -> Result<(), SfuError> {
        let LayerChoice {
            media_id,
            encoding,
            temporal,
        } = choice;
        self.owned_session(room, session, requester, false)?;
        if temporal.is_some_and(|t| usize::from(t) >= simulcast::MAX_TEMPORAL) {
            return Err(SfuError::UnknownEncoding);
        }
        let chosen: Vec<(TrackId, Wanted)> = self
            .video_down_tracks(session, media_id)?
            .into_iter()
            .map(|(_, track, _)| {
                let wanted = match encoding {
                    None => Ok(Wanted::Best),
                    Some(rid) => self
                        .rooms
                        .track(track)
                        .and_then(|t| t.layers.iter().position(|l| l.rid == rid))
                        .map(|index| Wanted::Layer(index as u8))
                        .ok_or(SfuError::UnknownEncoding),
                };
                wanted.map(|w| (track, w))
            })
            .collect::<Result<_, _>>()?;
        for (track, wanted) in chosen {
            self.set_wanted(session, track, wanted, now)?;
            self.received_down_track(session, track)?.temporal_cap = temporal;
            self.cap_frame_rate(track);
        }
        Ok(())
    }

    /// What a viewer's video sections receive: each source's encodings (being sent or not,
    /// their sizes and bitrates), the one forwarded now and the one it moves to.
    pub(super) fn layers(
        &mut self,
        room: &RoomId,
        session: PeerId,
        requester: &Requester,
        now: Instant,
    ) -> Result<ViewerLayers, SfuError> {
        self.owned_session(room, session, requester, false)?;
        let found = self.video_down_tracks(session, None)?;
        let peer = self.rooms.peer(session).ok_or(SfuError::SessionNotFound)?;
        let mut out = Vec::new();
        for (slot, track_id, mid) in found {
            let (Some(track), Some(down)) =
                (self.rooms.track(track_id), peer.down_tracks.get(slot))
            else {
                continue;
            };
            let rid = |layer: Option<u8>| {
                layer
                    .and_then(|l| track.layers.get(usize::from(l)))
                    .map(|l| l.rid.clone())
            };
            out.push(MediaLayers {
                media_id: mid.unwrap_or_default(),
                encodings: track
                    .layers
                    .iter()
                    .map(|l| Encoding {
                        encoding_id: l.rid.clone(),
                        active: l.active(now),
                        width: l.size.map(|s| s.0),
                        height: l.size.map(|s| s.1),
                        bitrate: l.rate.bits_per_second,
                        temporal_frame_rates: l.frame_rates.known().to_vec(),
                    })
                    .collect(),
                current: rid(down.layer),
                target: rid(Some(down.target_layer)),
                paused: (down.allowance == super::allocator::Allowance::Starved)
                    .then(|| super::PauseReason::Bandwidth.as_str()),
            });
        }
        Ok(ViewerLayers {
            estimate: peer.estimate.as_ref().and_then(|e| e.raw_bits_per_second()),
            layers: out,
        })
    }

    /// A subscriber's video down tracks with a source, as (slot, source, mid), of section
    /// `media_id` only when it is given.
    fn video_down_tracks(
        &mut self,
        session: PeerId,
        media_id: Option<&str>,
    ) -> Result<Vec<(usize, TrackId, Option<String>)>, SfuError> {
        let peer = self
            .rooms
            .peer_mut(session)
            .ok_or(SfuError::SessionNotFound)?;
        let candidates: Vec<(usize, TrackId, Option<String>)> = (0..peer.down_tracks.len())
            .filter_map(|slot| {
                let down = &peer.down_tracks[slot];
                if !down.kind_is_video || down.removed {
                    return None;
                }
                let (source, sender) = (down.source, down.sender);
                Some((slot, source, mid_of(peer, sender)))
            })
            .collect();
        let found: Vec<_> = candidates
            .into_iter()
            .filter(|(_, source, mid)| {
                self.rooms.track(*source).is_some()
                    && media_id.is_none_or(|m| mid.as_deref() == Some(m))
            })
            .collect();
        if found.is_empty() && media_id.is_some() {
            return Err(SfuError::TrackNotFound);
        }
        Ok(found)
    }

    /// Every subscriber's bandwidth shared among its tracks, then every simulcast track's
    /// subscribers checked against the layers being sent and what they are allowed.
    pub(super) fn choose_layers(&mut self, now: Instant) {
        self.allocate_bandwidth(now);
        let tracks: Vec<TrackId> = self
            .rooms
            .tracks()
            .filter(|t| t.is_simulcast())
            .map(|t| t.id)
            .collect();
        for track in tracks {
            self.retarget(track, now, "");
        }
        self.cap_frame_rates();
        self.relay_wishes();
    }

    /// A subscriber's frame-rate cap (`set_track`'s `fps`) as the VP8 temporal layer each of
    /// its legs forwards up to: the lowest whose frame rate, with the layers below it, reaches
    /// the cap, measured on the layer the leg receives. Publishers without temporal layers
    /// (and other codecs) are forwarded whole.
    fn cap_frame_rates(&mut self) {
        let tracks: Vec<TrackId> = self
            .rooms
            .tracks()
            .filter(|t| t.switchable == super::keyframe::Codec::Vp8)
            .map(|t| t.id)
            .collect();
        for track_id in tracks {
            self.cap_frame_rate(track_id);
        }
    }

    /// [`Engine::cap_frame_rates`] for one track's subscribers.
    pub(super) fn cap_frame_rate(&mut self, track_id: TrackId) {
        let Some(room) = self.rooms.of_track_mut(track_id) else {
            return;
        };
        let Some(track) = room.tracks.get(&track_id) else {
            return;
        };
        for subscriber in &track.subscribers {
            let Some(down) = room
                .peers
                .get_mut(&subscriber.peer)
                .and_then(|p| p.down_tracks.get_mut(subscriber.slot))
            else {
                continue;
            };
            let layer = usize::from(down.layer.unwrap_or(down.target_layer));
            let for_fps = down
                .max_fps
                .and_then(|fps| track.layers.get(layer)?.frame_rates.layer_for(fps));
            let target = match (for_fps, down.temporal_cap) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            down.temporal_target = target.unwrap_or(super::subscriber::ALL_TEMPORAL);
        }
    }

    /// A subscriber's frame-rate cap for one track it receives (`None`: no cap).
    pub(super) fn set_frame_rate(
        &mut self,
        session: PeerId,
        track: TrackId,
        fps: Option<u16>,
    ) -> Result<(), SfuError> {
        self.received_down_track(session, track)?.max_fps = fps;
        debug!(%session, %track, ?fps, "frame rate wanted");
        self.cap_frame_rate(track);
        Ok(())
    }

    /// Sets each subscriber's target layer of `track_id` to what it wants among the layers
    /// sent now, and asks for a keyframe on every layer a leg must move to. `reason` labels a
    /// change the subscriber asked for; others are named by what happened to the layers.
    pub(super) fn retarget(&mut self, track_id: TrackId, now: Instant, reason: &'static str) {
        let Some(room) = self.rooms.of_track_mut(track_id) else {
            return;
        };
        let Some(track) = room.tracks.get(&track_id) else {
            return;
        };
        if !track.is_simulcast() {
            return;
        }
        let mut keyframes = [false; simulcast::MAX_LAYERS];
        let mut waiting = [false; simulcast::MAX_LAYERS];
        // Dynacast: the layers some subscriber wants (within its bandwidth), sent or not.
        let mut needed = vec![false; track.layers.len()];
        for subscriber in &track.subscribers {
            let Some(down) = room
                .peers
                .get_mut(&subscriber.peer)
                .and_then(|p| p.down_tracks.get_mut(subscriber.slot))
            else {
                continue;
            };
            let ceiling = down
                .allowance
                .ceiling(simulcast::wanted_layer(&track.layers, down.wanted));
            if !down.held() && !down.removed {
                if let Some(need) = needed.get_mut(ceiling) {
                    *need = true;
                }
            }
            let Some(target) = simulcast::choose(&track.layers, ceiling, now) else {
                continue; // nothing is being sent: keep what it has
            };
            let target = target as u8;
            if target == down.target_layer {
                // Still waiting for the target's keyframe (the one asked for was lost, or
                // came before this leg could take it): ask again, within the throttle.
                if down.layer != Some(target) && !down.held() && !down.removed {
                    waiting[usize::from(target)] = true;
                }
                continue;
            }
            let why = if !reason.is_empty() {
                reason
            } else if down.layer.is_none() {
                "start"
            } else if !track.layers[usize::from(down.target_layer)].active(now) {
                "layer_stopped"
            } else if down.allowance != super::allocator::Allowance::Any
                && target < down.target_layer
            {
                "bandwidth_down"
            } else if target > down.target_layer && track.layers[usize::from(target)].active(now) {
                "bandwidth_up"
            } else {
                "layer_returned"
            };
            self.metrics.layer_switches.with_label_values(&[why]).inc();
            down.target_layer = target;
            if down.layer != Some(target) {
                keyframes[usize::from(target)] = true;
            }
        }
        // A tap (the recorder) records the top layer: it stays encoded.
        if !track.taps.is_empty() {
            if let Some(top) = needed.last_mut() {
                *top = true;
            }
        }
        let (publisher, publisher_track) = (track.publisher, track.publisher_track_id.clone());
        let rids: Vec<String> = track.layers.iter().map(|l| l.rid.clone()).collect();
        if let Some(track) = room.tracks.get_mut(&track_id) {
            if let Some(active) = track.dynacast.update(&needed, now) {
                debug!(%track_id, ?active, "dynacast");
                let _ = self.events.send(super::SfuEvent::EncodingsNeeded {
                    session: publisher,
                    track: publisher_track,
                    active: rids.into_iter().zip(active).collect(),
                });
            }
        }
        for (layer, _) in keyframes.iter().enumerate().filter(|(_, k)| **k) {
            self.request_keyframe(track_id, layer, "layer_switch", now);
        }
        for (layer, _) in waiting
            .iter()
            .enumerate()
            .filter(|(l, w)| **w && !keyframes[*l])
        {
            self.request_keyframe(track_id, layer, "still_waiting", now);
        }
    }
}

/// The m-line (mid) a sender of `peer` sends on.
fn mid_of(
    peer: &mut super::peer::Peer,
    sender: rtc::rtp_transceiver::RTCRtpSenderId,
) -> Option<String> {
    let ids: Vec<_> = peer.pc.get_transceivers().collect();
    ids.into_iter().find_map(|id| {
        let transceiver = peer.pc.rtp_transceiver(id)?;
        (transceiver.sender() == Some(sender))
            .then(|| transceiver.mid().clone())
            .flatten()
    })
}
