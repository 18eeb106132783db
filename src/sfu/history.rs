//! A published track's recent packets, kept once for all its subscribers: what their NACKs are
//! answered from. (webrtc-rs' NACK responder keeps a copy per subscriber leg.)
//!
//! A power-of-two ring indexed by the source's sequence number. A slot answers only for the
//! sequence number it holds, so a slot overwritten (or never filled) never answers for another.
//! What is kept is what a down track needs to rewrite the packet: the payload is the inbound
//! `Bytes`, shared, so keeping a packet allocates nothing.

use bytes::Bytes;
use rtc::rtp::{Header, Packet};

#[derive(Debug, Clone)]
struct Kept {
    sequence: u16,
    timestamp: u32,
    marker: bool,
    padding: bool,
    payload: Bytes,
}

pub struct History {
    slots: Vec<Option<Kept>>,
    mask: usize,
}

impl History {
    /// Room for `size` packets, rounded up to a power of two.
    pub fn new(size: u16) -> Self {
        let size = usize::from(size.max(1)).next_power_of_two();
        Self {
            slots: vec![None; size],
            mask: size - 1,
        }
    }

    pub fn keep(&mut self, packet: &Packet) {
        let header = &packet.header;
        self.slots[usize::from(header.sequence_number) & self.mask] = Some(Kept {
            sequence: header.sequence_number,
            timestamp: header.timestamp,
            marker: header.marker,
            padding: header.padding,
            payload: packet.payload.clone(),
        });
    }

    /// The packet with this source sequence number, if it is still kept: as it came in, less
    /// the header extensions (a down track drops them anyway).
    pub fn get(&self, sequence: u16) -> Option<Packet> {
        let kept = self.slots[usize::from(sequence) & self.mask]
            .as_ref()
            .filter(|k| k.sequence == sequence)?;
        Some(Packet {
            header: Header {
                version: 2,
                padding: kept.padding,
                marker: kept.marker,
                sequence_number: kept.sequence,
                timestamp: kept.timestamp,
                ..Default::default()
            },
            payload: kept.payload.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sequence: u16) -> Packet {
        Packet {
            header: Header {
                sequence_number: sequence,
                timestamp: u32::from(sequence) * 3000,
                ..Default::default()
            },
            payload: Bytes::from(sequence.to_be_bytes().to_vec()),
        }
    }

    #[test]
    fn answers_only_for_what_it_still_holds() {
        let mut history = History::new(6);
        for sequence in 65_530..=65_535u16 {
            history.keep(&packet(sequence));
        }
        for sequence in 0..4u16 {
            history.keep(&packet(sequence));
        }
        // 8 slots: the last 8 kept, across the wrap.
        assert!(history.get(65_531).is_none(), "overwritten");
        let kept = history.get(65_533).expect("kept");
        assert_eq!(kept.header.timestamp, 65_533 * 3000);
        assert_eq!(&kept.payload[..], &65_533u16.to_be_bytes());
        assert!(history.get(3).is_some());
        assert!(history.get(11).is_none(), "same slot as 3, never kept");
        assert!(History::new(0).get(0).is_none());
    }
}
