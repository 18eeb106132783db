//! Per-subscriber bandwidth allocation: a subscriber leg's estimate shared among the tracks it
//! receives.
//!
//! - Audio is never held back: its measured rate comes off the top.
//! - Video in priority order (screen share, then the room's loudest speakers, then the rest):
//!   first every track gets its lowest layer (within what the subscriber asked for), then the
//!   tracks climb, in the same order, as far as the rest of the estimate and their asks allow.
//! - A track whose lowest layer does not fit is paused for bandwidth (nothing is forwarded; its
//!   subscriber is told, `SfuEvent::TrackPaused`) rather than left to freeze, and resumed from a
//!   keyframe when it fits again.
//!
//! Costs are the layers' bitrates as measured at ingress. A layer above the one a track has
//! must fit with [`UPGRADE_HEADROOM`] to spare, so a track does not flap between two layers on
//! an estimate that hovers at one of them. The estimate (GCC over the subscriber's TWCC feedback)
//! rises multiplicatively while the path shows no overuse, so sending the next layer is itself
//! the probe: if the path cannot take it, delay grows and the estimate falls back to what was
//! delivered. Separate probes were built and measured, and are not used: webrtc-rs 0.21 pads a
//! packet by 4 bytes at most and numbers only primary SSRCs transport-wide, and the way around
//! both (probes marked on the primary SSRC above the pacer, moved to the RTX SSRC next to the
//! wire) made Chromium 156 stop decoding the video, whether the probes repeated recent packets
//! or were padding only (see docs/performance.md).

use std::time::Instant;

use super::engine::Engine;
use super::simulcast;
use crate::ids::{PeerId, TrackId};

/// A layer above a track's current one must fit with this much of its rate to spare.
pub const UPGRADE_HEADROOM: f64 = 1.15;

/// What a down track's share of its subscriber's estimate allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Allowance {
    /// No estimate yet, or enough for anything.
    #[default]
    Any,
    /// Layers up to this one.
    UpTo(u8),
    /// Not even the lowest layer fits: paused for bandwidth.
    Starved,
}

impl Allowance {
    pub fn ceiling(self, wanted: usize) -> usize {
        match self {
            Allowance::Any => wanted,
            Allowance::UpTo(layer) => wanted.min(usize::from(layer)),
            Allowance::Starved => 0,
        }
    }
}

/// One video down track as the allocator sees it.
#[derive(Debug, Clone)]
pub struct Demand {
    pub slot: usize,
    pub priority: u8,
    /// The bitrate of each layer it may take (lowest first, up to its ask), active ones only:
    /// `(layer, bits/s)`.
    pub options: Vec<(u8, u64)>,
    /// The layer it has now (upgrades above it, and a start, need headroom).
    pub current: Option<u8>,
}

/// Shares `budget` (bits/s, audio already taken off) among `demands`; returns each one's
/// allowance, in the same order.
pub fn allocate(budget: u64, demands: &[Demand]) -> Vec<Allowance> {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(demands[i].priority));
    let mut left = budget as f64;
    let cost = |demand: &Demand, option: usize| -> f64 {
        let (layer, rate) = demand.options[option];
        // Climbing, or starting (again, after a pause for bandwidth): with headroom.
        let headroom = if demand.current.is_none_or(|c| layer > c) {
            UPGRADE_HEADROOM
        } else {
            1.0
        };
        rate as f64 * headroom
    };
    // The option index each demand got.
    let mut given: Vec<Option<usize>> = vec![None; demands.len()];
    for &i in &order {
        if demands[i].options.is_empty() {
            continue;
        }
        let lowest = cost(&demands[i], 0);
        if lowest <= left {
            left -= lowest;
            given[i] = Some(0);
        }
    }
    for &i in &order {
        let Some(mut at) = given[i] else {
            continue;
        };
        while at + 1 < demands[i].options.len() {
            let step = cost(&demands[i], at + 1) - cost(&demands[i], at);
            if step > left {
                break;
            }
            left -= step;
            at += 1;
        }
        given[i] = Some(at);
    }
    demands
        .iter()
        .zip(given)
        .map(|(demand, at)| match at {
            _ if demand.options.is_empty() => Allowance::Any,
            Some(at) if at + 1 == demand.options.len() => Allowance::Any,
            Some(at) => Allowance::UpTo(demand.options[at].0),
            None => Allowance::Starved,
        })
        .collect()
}

impl Engine {
    /// Shares every subscriber's estimate among its tracks (see the module note); tells the
    /// subscribers whose tracks were paused or resumed for bandwidth.
    pub(super) fn allocate_bandwidth(&mut self, now: Instant) {
        let subscribers: Vec<PeerId> = self
            .rooms
            .peers()
            .filter(|p| !p.is_publisher() && p.estimate.is_some())
            .map(|p| p.id)
            .collect();
        for session in subscribers {
            self.allocate_for(session, now);
        }
    }

    fn allocate_for(&mut self, session: PeerId, now: Instant) {
        let Some(room) = self.rooms.of_peer_mut(session) else {
            return;
        };
        let speakers: Vec<_> = room.speakers.iter().map(|s| s.identity.clone()).collect();
        let Some(peer) = room.peers.get(&session) else {
            return;
        };
        let Some(estimate) = peer.estimate.as_ref().and_then(|e| e.bits_per_second()) else {
            return; // no feedback yet: nothing is known, nothing is held back
        };
        let mut audio = 0u64;
        let mut demands = Vec::new();
        for (slot, down) in peer.down_tracks.iter().enumerate() {
            if down.removed || down.paused || down.payload_type.is_none() {
                continue;
            }
            let Some(track) = room.tracks.get(&down.source) else {
                continue;
            };
            if !down.kind_is_video {
                audio += track
                    .layers
                    .iter()
                    .map(|l| l.rate.bits_per_second)
                    .sum::<u64>();
                continue;
            }
            let wanted = simulcast::wanted_layer(&track.layers, down.wanted);
            let options: Vec<(u8, u64)> = track
                .layers
                .iter()
                .enumerate()
                .take(wanted + 1)
                .filter(|(_, l)| l.active(now))
                .map(|(i, l)| (i as u8, l.rate.bits_per_second))
                .collect();
            let speaking = room
                .peers
                .get(&track.publisher)
                .and_then(|p| speakers.iter().position(|s| *s == p.identity));
            let priority = track.priority.saturating_add(match speaking {
                Some(0) => 2,
                Some(_) => 1,
                None => 0,
            });
            let starved = down.allowance == Allowance::Starved;
            demands.push(Demand {
                slot,
                priority,
                options,
                current: down.layer.filter(|_| !starved),
            });
        }
        let allowances = allocate(estimate.saturating_sub(audio), &demands);
        tracing::debug!(
            %session,
            estimate,
            audio,
            ?allowances,
            "bandwidth allocated"
        );
        let mut changed: Vec<(TrackId, bool)> = Vec::new();
        let Some(peer) = room.peers.get_mut(&session) else {
            return;
        };
        for (demand, allowance) in demands.iter().zip(allowances) {
            let down = &mut peer.down_tracks[demand.slot];
            let was_starved = down.allowance == Allowance::Starved;
            down.allowance = allowance;
            let starved = allowance == Allowance::Starved;
            if starved != was_starved {
                if !starved {
                    down.resume_from_starvation();
                }
                changed.push((down.source, starved));
            }
        }
        let peer_id = peer.id;
        for (track, paused) in changed {
            self.metrics
                .bandwidth_pauses
                .with_label_values(&[if paused { "paused" } else { "resumed" }])
                .inc();
            let _ = self.events.send(super::SfuEvent::TrackPaused {
                session: peer_id,
                track,
                paused,
                reason: super::PauseReason::Bandwidth,
            });
            if !paused {
                self.request_keyframes_in_use(track, "resume", now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(slot: usize, priority: u8, rates: &[u64]) -> Demand {
        Demand {
            slot,
            priority,
            options: rates
                .iter()
                .enumerate()
                .map(|(i, r)| (i as u8, *r))
                .collect(),
            current: Some(0),
        }
    }

    const SIMULCAST: [u64; 3] = [150_000, 500_000, 1_500_000];

    #[test]
    fn everyone_gets_the_lowest_layer_before_anyone_climbs() {
        let demands = [demand(0, 0, &SIMULCAST), demand(1, 0, &SIMULCAST)];
        assert_eq!(
            allocate(400_000, &demands),
            [Allowance::UpTo(0), Allowance::UpTo(0)]
        );
        // 300k + one upgrade to h (350k more, with headroom 425k): the first in line climbs.
        assert_eq!(
            allocate(300_000 + 425_000, &demands),
            [Allowance::UpTo(1), Allowance::UpTo(0)]
        );
        assert_eq!(
            allocate(10_000_000, &demands),
            [Allowance::Any, Allowance::Any]
        );
    }

    #[test]
    fn priority_climbs_first_and_what_does_not_fit_is_paused() {
        let demands = [
            demand(0, 0, &SIMULCAST),
            demand(1, 2, &SIMULCAST), // the loudest speaker
            demand(2, 0, &[900_000]), // not simulcast
        ];
        // The lowest layers first (q, q: 300k; the 900k stream does not fit in the 800k
        // left), then the speaker climbs as far as the rest goes (h: 425k more).
        let got = allocate(1_100_000, &demands);
        assert_eq!(got[1], Allowance::UpTo(1), "the speaker climbs first");
        assert_eq!(got[0], Allowance::UpTo(0));
        assert_eq!(got[2], Allowance::Starved, "no room for a 900k stream");
        // With room for everyone's lowest, the 900k stream gets in before anyone climbs.
        let got = allocate(1_300_000, &demands);
        assert_eq!(
            got,
            [Allowance::UpTo(0), Allowance::UpTo(0), Allowance::Any]
        );
        assert_eq!(
            allocate(100_000, &demands),
            [Allowance::Starved, Allowance::Starved, Allowance::Starved]
        );
    }

    #[test]
    fn an_upgrade_needs_headroom_a_held_layer_does_not() {
        let mut held = demand(0, 0, &SIMULCAST);
        held.current = Some(1);
        assert_eq!(allocate(500_000, &[held.clone()]), [Allowance::UpTo(1)]);
        let climbing = demand(0, 0, &SIMULCAST);
        assert_eq!(allocate(500_000, &[climbing]), [Allowance::UpTo(0)]);
        // No active layer at all: nothing to decide.
        let idle = Demand {
            options: Vec::new(),
            ..held
        };
        assert_eq!(allocate(0, &[idle]), [Allowance::Any]);
    }
}
