//! Cascading: layer choices crossing a relay. A relay carries one stream of a video track to
//! the receiving node, which fans it out to its own receivers; what they ask for (`set_track`'s
//! size, layer, frame rate and pause; WHEP's layer resource) is taken here on the receiving
//! node as the most any of them wants ([`RelayWish`]) and applied on the publisher's node to
//! the relay's own down track, so the relay carries the layer its receivers need and no more
//! (and nothing while every one of them has paused it, or once none takes it: a relay carrying
//! several tracks stays open while one is wanted). The receiving node notices changes on
//! its layer check ([`Engine::relay_wishes`], every `LAYER_CHECK_INTERVAL`) and tells
//! signaling, which sends them to the other node (`signaling::cascade`).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::error::SfuError;
use super::simulcast::{self, Wanted};
use super::subscriber::DownTrack;
use super::{Requester, SfuEvent};
use crate::ids::{ParticipantId, PeerId, RoomId, TrackId};

/// What the receivers of one relayed track on a node want of it, together (of an audio
/// track, only whether they take it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayWish {
    /// Every receiver has paused it (a hidden tile): nothing needs to cross.
    pub paused: bool,
    /// Some receiver wants the best layer (or a recorder records it).
    pub best: bool,
    /// The largest tile (width, height) asked for by size, when no receiver wants the best.
    pub size: Option<(u16, u16)>,
    /// The highest layer asked for by index, when no receiver wants the best.
    pub layer: Option<u8>,
    /// The highest frame-rate cap; `None` when some receiver has none.
    pub fps: Option<u16>,
    /// The highest VP8 temporal layer asked for by id; `None` when some receiver takes all.
    pub temporal: Option<u8>,
}

impl Default for RelayWish {
    /// Everything: what a relay carries before its receivers said anything.
    fn default() -> Self {
        Self {
            paused: false,
            best: true,
            size: None,
            layer: None,
            fps: None,
            temporal: None,
        }
    }
}

impl RelayWish {
    /// Nothing: no receiver here takes the track.
    pub fn nothing() -> Self {
        Self {
            paused: true,
            ..Self::default()
        }
    }

    /// What the down tracks fed by one relayed track want together; `None` while it has none
    /// (a relay opens before its receivers' legs take the track: it is not paused for that).
    pub fn of<'a>(downs: impl Iterator<Item = &'a DownTrack>, tapped: bool) -> Option<Self> {
        let mut any = false;
        let mut together: Option<Self> = None;
        for down in downs.filter(|d| !d.removed) {
            any = true;
            if down.paused {
                continue;
            }
            let wish = together.get_or_insert(Self {
                paused: false,
                best: false,
                size: None,
                layer: None,
                fps: Some(0),
                temporal: Some(0),
            });
            match down.wanted {
                Wanted::Best => wish.best = true,
                Wanted::Size { width, height } => {
                    let (w, h) = wish.size.unwrap_or((0, 0));
                    wish.size = Some((w.max(width), h.max(height)));
                }
                Wanted::Layer(layer) => wish.layer = Some(wish.layer.unwrap_or(0).max(layer)),
            }
            wish.fps = wish.fps.zip(down.max_fps).map(|(a, b)| a.max(b));
            wish.temporal = wish.temporal.zip(down.temporal_cap).map(|(a, b)| a.max(b));
        }
        // A recorder here records the top layer at its full rate.
        if tapped {
            return Some(Self::default());
        }
        match together {
            Some(mut wish) => {
                if wish.best {
                    (wish.size, wish.layer) = (None, None);
                }
                Some(wish)
            }
            None if any => Some(Self::nothing()),
            None => None,
        }
    }

    /// Whether its values are within what a receiver may ask for itself (checked where another
    /// node's wish comes in).
    pub fn is_valid(&self, max_side: u16, max_fps: u16) -> bool {
        self.size
            .is_none_or(|(w, h)| (1..=max_side).contains(&w) && (1..=max_side).contains(&h))
            && self
                .layer
                .is_none_or(|l| usize::from(l) < simulcast::MAX_LAYERS)
            && self.fps.is_none_or(|fps| (1..=max_fps).contains(&fps))
            && self
                .temporal
                .is_none_or(|t| usize::from(t) < simulcast::MAX_TEMPORAL)
    }

    /// As one subscriber's ask, among `layers` of the track: the wish that reaches highest.
    fn wanted(&self, layers: &[simulcast::Layer]) -> Wanted {
        if self.best {
            return Wanted::Best;
        }
        [
            self.size
                .map(|(width, height)| Wanted::Size { width, height }),
            self.layer.map(Wanted::Layer),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|w| simulcast::wanted_layer(layers, *w))
        .unwrap_or(Wanted::Best)
    }
}

impl Engine {
    /// The receiving side: what each relayed track's receivers here want now, told to
    /// signaling when it changed since last told (`SfuEvent::RelayWish`). Audio tracks only
    /// pause and resume.
    pub(super) fn relay_wishes(&mut self) {
        let mut changed = Vec::new();
        for peer in self.rooms.peers().filter(|p| !p.relay_tracks.is_empty()) {
            for &(origin, local) in &peer.relay_tracks {
                let Some(track) = self.rooms.track(local) else {
                    continue;
                };
                let downs = track.subscribers.iter().filter_map(|s| {
                    self.rooms
                        .peer(s.peer)
                        .and_then(|p| p.down_tracks.get(s.slot))
                });
                let told = peer.relay_wishes.get(&local);
                let wish = match RelayWish::of(downs, !track.taps.is_empty()) {
                    Some(wish) => wish,
                    // Nobody here takes it any more (the relay stays for its other tracks):
                    // nothing of it needs to cross until someone does again.
                    None if told.is_some() => RelayWish::nothing(),
                    // Not taken yet: the relay opened for receivers whose legs take it next.
                    None => continue,
                };
                if told != Some(&wish) {
                    changed.push((
                        peer.id,
                        peer.room.clone(),
                        origin,
                        local,
                        wish,
                        told.cloned(),
                    ));
                }
            }
        }
        for (session, room, origin, local, wish, told) in changed {
            if let Some(peer) = self.rooms.peer_mut(session) {
                peer.relay_wishes.insert(local, wish.clone());
            }
            // The first wish of a track is news to the other end only if it is not everything.
            if told.unwrap_or_default() == wish {
                continue;
            }
            tracing::debug!(%session, track = %origin, ?wish, "relay wish");
            let _ = self.events.send(SfuEvent::RelayWish {
                room,
                session,
                track: origin,
                wish,
            });
        }
    }

    /// The publisher's side: another node's wish for `track` on its relay `session` (a viewer
    /// here), applied as that viewer's own asks.
    pub(super) fn apply_relay_wish(
        &mut self,
        room: &RoomId,
        session: PeerId,
        track: TrackId,
        wish: RelayWish,
        now: Instant,
    ) -> Result<(), SfuError> {
        let relay = Requester::owner(ParticipantId(super::relay::RELAY_IDENTITY.to_owned()));
        self.owned_session(room, session, &relay, false)?;
        let wanted = wish.wanted(
            &self
                .rooms
                .track(track)
                .ok_or(SfuError::TrackNotFound)?
                .layers,
        );
        self.set_wanted(session, track, wanted, now)?;
        let down = self.received_down_track(session, track)?;
        (down.max_fps, down.temporal_cap) = (wish.fps, wish.temporal);
        self.cap_frame_rate(track);
        self.set_paused(session, track, wish.paused, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wish(best: bool, size: Option<(u16, u16)>, layer: Option<u8>) -> RelayWish {
        RelayWish {
            paused: false,
            best,
            size,
            layer,
            fps: None,
            temporal: None,
        }
    }

    #[test]
    fn the_wish_that_reaches_highest_is_taken() {
        let layers: Vec<simulcast::Layer> = ["q", "h", "f"]
            .iter()
            .map(|rid| simulcast::Layer::new(rid.to_string(), None))
            .collect();
        assert_eq!(
            wish(false, Some((320, 180)), Some(1)).wanted(&layers),
            Wanted::Layer(1)
        );
        assert_eq!(
            wish(false, Some((1280, 720)), Some(0)).wanted(&layers),
            Wanted::Size {
                width: 1280,
                height: 720
            }
        );
        assert_eq!(wish(true, None, None).wanted(&layers), Wanted::Best);
        assert_eq!(wish(false, None, None).wanted(&layers), Wanted::Best);
    }

    #[test]
    fn receivers_want_together_the_most_any_of_them_wants() {
        let down = |wanted: Wanted, fps: Option<u16>, paused: bool| {
            let mut d = crate::sfu::subscriber::test_down_track("video/VP8", 90_000);
            (d.wanted, d.max_fps, d.paused) = (wanted, fps, paused);
            d
        };
        let small = down(Wanted::Layer(0), Some(10), false);
        let tile = down(
            Wanted::Size {
                width: 640,
                height: 360,
            },
            Some(15),
            false,
        );
        let hidden = down(Wanted::Best, None, true);
        let together = RelayWish::of([&small, &tile, &hidden].into_iter(), false).unwrap();
        assert_eq!(
            together,
            RelayWish {
                paused: false,
                best: false,
                size: Some((640, 360)),
                layer: Some(0),
                fps: Some(15),
                temporal: None,
            },
            "a paused receiver counts for nothing; temporal ids nobody capped stay uncapped"
        );
        let best = down(Wanted::Best, None, false);
        assert_eq!(
            RelayWish::of([&small, &best].into_iter(), false),
            Some(RelayWish::default()),
            "one receiver wanting the best, uncapped, wants everything"
        );
        assert!(RelayWish::of([&hidden].into_iter(), false).unwrap().paused);
        assert_eq!(
            RelayWish::of([&hidden].into_iter(), true),
            Some(RelayWish::default()),
            "a recorder takes the best"
        );
        assert_eq!(RelayWish::of(std::iter::empty(), false), None);
    }

    #[test]
    fn limits_are_those_of_a_receivers_own_asks() {
        assert!(RelayWish::default().is_valid(4096, 60));
        assert!(!wish(false, Some((0, 10)), None).is_valid(4096, 60));
        assert!(!wish(false, None, Some(simulcast::MAX_LAYERS as u8)).is_valid(4096, 60));
        let fast = RelayWish {
            fps: Some(61),
            ..RelayWish::default()
        };
        assert!(!fast.is_valid(4096, 60));
    }
}
