//! The hot path: one inbound RTP packet of a published track, out on every subscriber's leg.
//!
//! Per subscriber: a header rewrite (our SSRC, the leg's payload type, continuous sequence
//! numbers and timestamps; the payload is shared, not copied) and a write into the leg's
//! sans-I/O connection, which marshals, runs its interceptors and encrypts. The legs written
//! are marked dirty; the engine polls their datagrams out once per turn and sends them in
//! `sendmmsg` batches. No lock, no allocation of ours, no string hashing per packet.

use std::time::Instant;

use bytes::Bytes;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::sansio::Protocol;
use rustc_hash::FxHashMap;

use super::peer::{Peer, PeerState};
use super::red::Red;
use super::subscriber::ALL_TEMPORAL;
use super::track::PublishedTrack;
use crate::ids::PeerId;
use crate::metrics::Metrics;

/// One packet of a published track, as ingress read it.
pub(super) struct Inbound<'a> {
    pub packet: &'a rtc::rtp::Packet,
    /// The simulcast layer it belongs to.
    pub layer: u8,
    /// VP8: its temporal layer, when the descriptor names one.
    pub temporal: Option<super::vp8::Temporal>,
}

/// Writes the inbound packet to every connected subscriber of `track` on its layer, or moving
/// to it at this keyframe; returns how many took it.
pub(super) fn fan_out(
    track: &PublishedTrack,
    inbound: Inbound<'_>,
    now: Instant,
    peers: &mut FxHashMap<PeerId, Peer>,
    dirty: &mut Vec<PeerId>,
    metrics: &Metrics,
) -> u64 {
    let Inbound {
        packet,
        layer,
        temporal,
    } = inbound;
    // A padding-only packet (Chromium sends them on its audio SSRC too) carries no blocks: it
    // goes on as it is, keeping every leg's sequence whole.
    let red = if track.red_payload_type == Some(packet.header.payload_type)
        && !packet.payload.is_empty()
    {
        match Red::parse(&packet.payload) {
            Some(red) => Some(red),
            None => {
                tracing::debug!(
                    len = packet.payload.len(),
                    head = ?&packet.payload[..packet.payload.len().min(8)],
                    padding = packet.header.padding,
                    "malformed RED dropped"
                );
                metrics
                    .forward_errors
                    .with_label_values(&["malformed_red"])
                    .inc();
                return 0;
            }
        }
    } else {
        None
    };
    // RED whose blocks are retagged for a leg that numbers Opus differently: made once.
    let mut retagged: Option<(u8, Bytes)> = None;
    // How RED went out, counted here and added to the metric once (a labelled counter is a
    // hash lookup).
    let (mut as_red, mut as_opus, mut recovered_frames) = (0u64, 0u64, 0u64);
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
        if let Some(layer) = temporal {
            let capped = down.temporal_target != ALL_TEMPORAL || down.temporal != ALL_TEMPORAL;
            if capped && !down.temporal_gate(layer, &packet.payload) {
                continue;
            }
        }
        let out = match (&red, down.red_payload_type) {
            (None, _) => down.rewrite(payload_type, packet, now),
            (Some(red), Some(red_payload_type)) => {
                let payload = match &retagged {
                    Some((pt, payload)) if *pt == payload_type => payload.clone(),
                    _ => {
                        let payload = red.retagged(&packet.payload, payload_type);
                        retagged = Some((payload_type, payload.clone()));
                        payload
                    }
                };
                as_red += 1;
                down.rewrite_payload(red_payload_type, packet, payload, now)
            }
            (Some(red), None) => {
                // Frames lost on the way in, rebuilt from this packet's redundancy, go first.
                let lost: Vec<_> = down.recoverable(packet, red).collect();
                for (sequence, timestamp, block) in lost {
                    let payload = super::red::block(&packet.payload, &block);
                    let Some(down) = peer.down_tracks.get_mut(subscriber.slot) else {
                        break;
                    };
                    let recovered =
                        down.rewrite_recovered(payload_type, sequence, timestamp, payload, now);
                    if write(peer, recovered, now, metrics) {
                        recovered_frames += 1;
                    }
                }
                as_opus += 1;
                let primary = super::red::block(&packet.payload, &red.primary);
                let Some(down) = peer.down_tracks.get_mut(subscriber.slot) else {
                    continue;
                };
                down.rewrite_payload(payload_type, packet, primary, now)
            }
        };
        if write(peer, out, now, metrics) {
            forwarded += 1;
            if !peer.dirty {
                peer.dirty = true;
                dirty.push(subscriber.peer);
            }
        }
    }
    if red.is_some() {
        for (sent_as, count) in [
            ("red", as_red),
            ("opus", as_opus),
            ("recovered", recovered_frames),
        ] {
            if count > 0 {
                metrics
                    .audio_red
                    .with_label_values(&[sent_as])
                    .inc_by(count);
            }
        }
    }
    forwarded
}

/// Hands `packet` to `peer`'s connection; false (and counted) when it refused it.
#[inline]
fn write(peer: &mut Peer, packet: rtc::rtp::Packet, now: Instant, metrics: &Metrics) -> bool {
    // handle_write ignores the track id (the SSRC routes the packet), so an empty String (no
    // allocation) stands in for it.
    match peer.pc.handle_write(TaggedRTCMessage {
        now,
        message: RTCMessage::RtpPacket(String::new(), packet),
    }) {
        Ok(()) => true,
        Err(_) => {
            metrics
                .forward_errors
                .with_label_values(&["write_failed"])
                .inc();
            false
        }
    }
}
