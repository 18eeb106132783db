//! The hot path: one inbound RTP packet of a published track, out on every subscriber's leg.
//!
//! Per subscriber: a header rewrite (our SSRC, the leg's payload type, continuous sequence
//! numbers and timestamps; the payload is shared, not copied) and a write into the leg's
//! sans-I/O connection, which marshals, runs its interceptors and encrypts. The legs written
//! are marked dirty; the engine polls their datagrams out once per turn and sends them in
//! `sendmmsg` batches. No lock, no allocation of ours, no string hashing per packet.

use std::time::Instant;

use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::sansio::Protocol;
use rustc_hash::FxHashMap;

use super::peer::{Peer, PeerState};
use super::track::PublishedTrack;
use crate::ids::PeerId;
use crate::metrics::Metrics;

/// Writes `packet` (of `layer`) to every connected subscriber of `track` on that layer, or
/// moving to it at this keyframe; returns how many took it.
pub(super) fn fan_out(
    track: &PublishedTrack,
    layer: u8,
    packet: &rtc::rtp::Packet,
    now: Instant,
    peers: &mut FxHashMap<PeerId, Peer>,
    dirty: &mut Vec<PeerId>,
    metrics: &Metrics,
) -> u64 {
    let mut forwarded = 0u64;
    let simulcast = track.is_simulcast();
    // Read from the payload at most once, and only when a leg waits for this layer.
    let mut keyframe: Option<bool> = None;
    for subscriber in &track.subscribers {
        let Some(peer) = peers.get_mut(&subscriber.peer) else {
            continue;
        };
        if peer.state != PeerState::Connected {
            continue;
        }
        let Some(down) = peer.down_tracks.get_mut(subscriber.slot) else {
            continue;
        };
        let Some(payload_type) = down.payload_type.filter(|_| !down.held()) else {
            continue;
        };
        if simulcast {
            let forwarded = down.gate(layer, || {
                *keyframe.get_or_insert_with(|| track.switchable.starts_keyframe(&packet.payload))
            });
            if !forwarded {
                continue;
            }
        }
        let out = down.rewrite(payload_type, packet, now);
        // handle_write ignores the track id (the SSRC routes the packet), so an empty String
        // (no allocation) stands in for it.
        match peer.pc.handle_write(TaggedRTCMessage {
            now,
            message: RTCMessage::RtpPacket(String::new(), out),
        }) {
            Ok(()) => {
                forwarded += 1;
                if !peer.dirty {
                    peer.dirty = true;
                    dirty.push(subscriber.peer);
                }
            }
            Err(_) => metrics
                .forward_errors
                .with_label_values(&["write_failed"])
                .inc(),
        }
    }
    forwarded
}
