//! Redundant audio (`audio/red`, RFC 2198) as browsers send it for Opus: each packet carries
//! the current Opus frame (the primary) after copies of one or two earlier ones, so a lost
//! packet is rebuilt from the next.
//!
//! The SFU forwards RED untouched to subscribers that negotiated it (only the block payload
//! types are retagged when the subscriber numbers Opus differently), and to the others sends
//! the primary alone as plain Opus: then the redundancy is not wasted either, because a packet
//! lost on the publisher's uplink is rebuilt here from the next packet's copy
//! ([`DownTrack::recover`](super::subscriber::DownTrack)).
//!
//! Parsing is bounds-checked and allocation-free: a malformed payload gives `None` and the
//! packet is dropped, never a panic.

use bytes::Bytes;

/// More redundant blocks than any sender uses (Chromium sends one or two): beyond it a payload
/// is treated as malformed rather than walked.
pub const MAX_REDUNDANT: usize = 4;

/// A block's place in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub payload_type: u8,
    /// How far before the packet's timestamp this block's frame began (0 for the primary).
    pub timestamp_offset: u16,
    pub start: usize,
    pub end: usize,
}

/// The parsed headers of one RED payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Red {
    redundant: [Block; MAX_REDUNDANT],
    count: usize,
    pub primary: Block,
    /// Length of the block headers (4 bytes per redundant block, 1 for the primary).
    header_len: usize,
}

impl Red {
    /// Reads the block headers of `payload`; `None` when it is not a well-formed RED payload.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let empty = Block {
            payload_type: 0,
            timestamp_offset: 0,
            start: 0,
            end: 0,
        };
        let mut redundant = [empty; MAX_REDUNDANT];
        let mut count = 0;
        let mut at = 0;
        // Headers first: 4 bytes while the F bit is set, then the primary's single byte.
        loop {
            let first = *payload.get(at)?;
            if first & 0x80 == 0 {
                at += 1;
                break;
            }
            if count == MAX_REDUNDANT {
                return None;
            }
            let header = payload.get(at..at + 4)?;
            let offset = (u16::from(header[1]) << 6) | u16::from(header[2] >> 2);
            let length = (usize::from(header[2] & 0x03) << 8) | usize::from(header[3]);
            redundant[count] = Block {
                payload_type: first & 0x7f,
                timestamp_offset: offset,
                start: 0,
                end: length,
            };
            count += 1;
            at += 4;
        }
        let header_len = at;
        let primary_type = payload[at - 1] & 0x7f;
        for block in &mut redundant[..count] {
            let length = block.end;
            block.start = at;
            block.end = at.checked_add(length).filter(|end| *end <= payload.len())?;
            at = block.end;
        }
        Some(Self {
            redundant,
            count,
            primary: Block {
                payload_type: primary_type,
                timestamp_offset: 0,
                start: at,
                end: payload.len(),
            },
            header_len,
        })
    }

    /// The redundant blocks, oldest first.
    pub fn redundant(&self) -> &[Block] {
        &self.redundant[..self.count]
    }

    /// `payload` (the one parsed) with every block's payload type set to `payload_type`: a
    /// clone of the same bytes when they already are.
    pub fn retagged(&self, payload: &Bytes, payload_type: u8) -> Bytes {
        let all_same = self.primary.payload_type == payload_type
            && self
                .redundant()
                .iter()
                .all(|b| b.payload_type == payload_type);
        if all_same {
            return payload.clone();
        }
        let mut out = payload.to_vec();
        for i in 0..self.count {
            out[i * 4] = 0x80 | payload_type;
        }
        out[self.header_len - 1] = payload_type;
        Bytes::from(out)
    }
}

/// `payload[block]`, sharing its bytes.
pub fn block(payload: &Bytes, block: &Block) -> Bytes {
    payload.slice(block.start..block.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RED payload as Chromium builds it: redundant blocks (payload type, offset, bytes)
    /// oldest first, then the primary.
    pub(crate) fn red(payload_type: u8, redundant: &[(u16, &[u8])], primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (offset, data) in redundant {
            out.push(0x80 | payload_type);
            out.push((offset >> 6) as u8);
            out.push((((offset & 0x3f) << 2) as u8) | ((data.len() >> 8) as u8 & 0x03));
            out.push(data.len() as u8);
        }
        out.push(payload_type);
        for (_, data) in redundant {
            out.extend_from_slice(data);
        }
        out.extend_from_slice(primary);
        out
    }

    #[test]
    fn reads_blocks_and_primary() {
        let payload = Bytes::from(red(111, &[(1920, b"old"), (960, b"prev!")], b"now"));
        let parsed = Red::parse(&payload).expect("parses");
        let blocks = parsed.redundant();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].timestamp_offset, 1920);
        assert_eq!(blocks[1].timestamp_offset, 960);
        assert_eq!(&block(&payload, &blocks[0])[..], b"old");
        assert_eq!(&block(&payload, &blocks[1])[..], b"prev!");
        assert_eq!(parsed.primary.payload_type, 111);
        assert_eq!(&block(&payload, &parsed.primary)[..], b"now");
    }

    #[test]
    fn primary_only_and_long_blocks() {
        let payload = Bytes::from(red(111, &[], b"x"));
        let parsed = Red::parse(&payload).unwrap();
        assert!(parsed.redundant().is_empty());
        assert_eq!(&block(&payload, &parsed.primary)[..], b"x");

        // A 1000-byte block needs the length's two high bits; the largest offset is 14 bits.
        let long = vec![7u8; 1000];
        let payload = Bytes::from(red(100, &[(16_383, &long)], b"p"));
        let parsed = Red::parse(&payload).unwrap();
        assert_eq!(parsed.redundant()[0].timestamp_offset, 16_383);
        assert_eq!(block(&payload, &parsed.redundant()[0]).len(), 1000);
        assert_eq!(&block(&payload, &parsed.primary)[..], b"p");
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert_eq!(Red::parse(&[]), None);
        // Headers that never end.
        assert_eq!(Red::parse(&[0x80 | 111, 0, 0, 1]), None);
        // A block longer than what is left.
        let mut payload = red(111, &[(960, b"abc")], b"");
        payload.truncate(payload.len() - 1);
        assert_eq!(Red::parse(&payload), None);
        // More redundant blocks than any sender uses.
        let many: Vec<(u16, &[u8])> = (0..=MAX_REDUNDANT).map(|_| (960, &b"a"[..])).collect();
        assert_eq!(Red::parse(&red(111, &many, b"p")), None);
        // Every prefix of a good payload parses or is refused, without a panic.
        let good = red(111, &[(1920, b"one"), (960, b"two")], b"three");
        for len in 0..good.len() {
            let _ = Red::parse(&good[..len]);
        }
    }

    #[test]
    fn retagging_changes_only_the_payload_types() {
        let original = Bytes::from(red(111, &[(960, b"prev")], b"now"));
        let parsed = Red::parse(&original).unwrap();
        assert_eq!(
            parsed.retagged(&original, 111).as_ptr(),
            original.as_ptr(),
            "already right: shared, not copied"
        );
        let retagged = parsed.retagged(&original, 109);
        assert_eq!(&retagged[..], &red(109, &[(960, b"prev")], b"now")[..]);
    }
}
