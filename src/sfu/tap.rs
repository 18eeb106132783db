//! Taps: a copy of a published track's packets for a consumer off the engine thread (the
//! recorder, an RTP forward), as the SFU received them, before any subscriber's rewrite.
//!
//! A tap is a bounded channel: the engine never waits for it. A consumer that falls behind
//! loses packets (counted in `convene_tap_dropped_total`), which it treats as loss. Moderator
//! mutes apply (a muted track is not tapped: a muted participant is not recorded), and a
//! simulcast track is tapped on its top layer, which dynacast then keeps encoded.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

/// One RTP packet as a tap's consumer gets it: the header fields it needs and the payload
/// (shared, not copied).
#[derive(Debug, Clone)]
pub struct TapPacket {
    /// Which of the consumer's tracks this is (a consumer names its taps).
    pub slot: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: Bytes,
    pub arrival: Instant,
}

/// A tap as the engine keeps it on a published track.
pub struct Tap {
    pub id: u64,
    pub slot: u8,
    pub tx: mpsc::Sender<TapPacket>,
}

/// What a consumer learns when its tap is attached.
#[derive(Debug, Clone)]
pub struct TapInfo {
    pub id: u64,
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    /// Audio sent as RED (RFC 2198) around the codec: this payload type.
    pub red_payload_type: Option<u8>,
    pub fmtp: String,
}

/// Offers one packet to every tap of a track; returns how many taps could not take it.
pub(super) fn offer(taps: &mut Vec<Tap>, packet: &rtc::rtp::Packet, now: Instant) -> (u64, bool) {
    let mut dropped = 0;
    let mut closed = false;
    for tap in taps.iter() {
        let copy = TapPacket {
            slot: tap.slot,
            sequence: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload_type: packet.header.payload_type,
            payload: packet.payload.clone(),
            arrival: now,
        };
        match tap.tx.try_send(copy) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
        }
    }
    if closed {
        taps.retain(|t| !t.tx.is_closed());
    }
    (dropped, closed)
}
