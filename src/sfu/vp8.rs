//! VP8's payload descriptor (RFC 7741 §4.2) as one down track must carry it when its source
//! changes (a viewer taking another publisher; later, a simulcast layer switch): the picture id
//! and TL0PICIDX go on from where the leg left off, so the receiver's frame tracking sees one
//! stream and does not take the jump for lost frames.
//!
//! Until a source changes the offsets are zero and the payload is passed on as it is (the
//! publisher's `Bytes`, shared); after one, each packet's descriptor is rewritten in a copy.

use bytes::Bytes;

/// Where a packet's picture id and TL0PICIDX are, and what they say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptor {
    /// (value, 15 bits wide, byte offset)
    picture_id: Option<(u16, bool, usize)>,
    /// (value, byte offset)
    tl0_pic_idx: Option<(u8, usize)>,
    /// (TID, layer sync): the temporal layer, when the descriptor names one (T bit).
    temporal: Option<(u8, bool)>,
}

fn parse(payload: &[u8]) -> Option<Descriptor> {
    let first = *payload.first()?;
    let mut descriptor = Descriptor {
        picture_id: None,
        tl0_pic_idx: None,
        temporal: None,
    };
    if first & 0x80 == 0 {
        return Some(descriptor); // no extension: nothing to rewrite
    }
    let extension = *payload.get(1)?;
    let mut at = 2;
    if extension & 0x80 != 0 {
        let high = *payload.get(at)?;
        if high & 0x80 != 0 {
            let low = *payload.get(at + 1)?;
            descriptor.picture_id =
                Some(((u16::from(high & 0x7f) << 8) | u16::from(low), true, at));
            at += 2;
        } else {
            descriptor.picture_id = Some((u16::from(high), false, at));
            at += 1;
        }
    }
    if extension & 0x40 != 0 {
        descriptor.tl0_pic_idx = Some((*payload.get(at)?, at));
        at += 1;
    }
    // TID|Y|KEYIDX is there when T or K is set; the TID means something only with T.
    if extension & 0x30 != 0 {
        let byte = *payload.get(at)?;
        if extension & 0x20 != 0 {
            descriptor.temporal = Some((byte >> 6, byte & 0x20 != 0));
        }
    }
    Some(descriptor)
}

/// What temporal-layer dropping reads of one VP8 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    /// The temporal layer (0 = base).
    pub tid: u8,
    /// Layer sync (Y): this frame refers only to the base layer.
    pub sync: bool,
    /// The first packet of a frame (S set, partition 0): where a leg may change its limit.
    pub frame_start: bool,
}

/// The temporal layer of a VP8 packet; `None` when its descriptor names none (a publisher
/// without temporal layers) or the payload is not VP8.
pub fn temporal_of(payload: &[u8]) -> Option<Temporal> {
    let (tid, sync) = parse(payload)?.temporal?;
    let first = payload[0];
    Some(Temporal {
        tid,
        sync,
        frame_start: first & 0x10 != 0 && first & 0x07 == 0,
    })
}

/// The picture id and TL0PICIDX a payload carries (tests read what a leg sent).
#[cfg(test)]
pub(crate) fn picture_and_tl0_of(payload: &[u8]) -> (u16, u8) {
    let d = parse(payload).expect("a VP8 descriptor");
    (
        d.picture_id.expect("a picture id").0,
        d.tl0_pic_idx.expect("a TL0PICIDX").0,
    )
}

/// One down track's picture-id and TL0PICIDX continuity.
#[derive(Debug, Default, Clone)]
pub struct Vp8Munger {
    picture_offset: u16,
    tl0_offset: u8,
    /// The last picture id and TL0PICIDX sent (as sent).
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
    /// The next packet comes from another source.
    pending: bool,
    /// The source picture id of the last packet dropped on purpose (a temporal layer above
    /// the leg's limit): each picture dropped moves the later ones down by one.
    last_dropped: Option<u16>,
}

const PICTURE_MASK: u16 = 0x7fff;

impl Vp8Munger {
    pub fn switch_source(&mut self) {
        self.pending = true;
    }

    /// A packet of `payload`'s picture is not sent (its temporal layer is above the leg's
    /// limit): the pictures after it are numbered as if it never was, so the receiver sees
    /// consecutive picture ids (TL0PICIDX is untouched: base-layer pictures are never dropped).
    pub fn drop_picture(&mut self, payload: &[u8]) {
        let Some((picture, wide, _)) = parse(payload).and_then(|d| d.picture_id) else {
            return;
        };
        if self.last_dropped != Some(picture) {
            self.last_dropped = Some(picture);
            let mask = if wide { PICTURE_MASK } else { 0x7f };
            self.picture_offset = self.picture_offset.wrapping_add(1) & mask;
        }
    }

    /// The picture-id offset in use now (a retransmission of a packet sent under another one
    /// is rewritten with that one: [`Vp8Munger::map_with`]).
    pub fn picture_offset(&self) -> u16 {
        self.picture_offset
    }

    /// The payload as this leg must carry it.
    pub fn rewrite(&mut self, payload: &Bytes) -> Bytes {
        let Some(descriptor) = parse(payload) else {
            return payload.clone();
        };
        if std::mem::take(&mut self.pending) {
            // The first packet of the new source is the first of a new picture: one after the
            // last one sent.
            if let (Some((picture, _, _)), Some(last)) = (descriptor.picture_id, self.last_picture)
            {
                self.picture_offset = picture.wrapping_sub(last.wrapping_add(1)) & PICTURE_MASK;
            }
            if let (Some((tl0, _)), Some(last)) = (descriptor.tl0_pic_idx, self.last_tl0) {
                self.tl0_offset = tl0.wrapping_sub(last.wrapping_add(1));
            }
        }
        let out = self.apply(payload, descriptor);
        if let Some((picture, wide, _)) = descriptor.picture_id {
            let sent = self.shifted_picture(picture, wide);
            // Only a later picture moves it: a late packet of an earlier one must not.
            let ahead = self
                .last_picture
                .is_none_or(|last| sent.wrapping_sub(last) & PICTURE_MASK < 0x4000);
            if ahead {
                self.last_picture = Some(sent);
            }
        }
        if let Some((tl0, _)) = descriptor.tl0_pic_idx {
            let sent = tl0.wrapping_sub(self.tl0_offset);
            if self
                .last_tl0
                .is_none_or(|last| sent.wrapping_sub(last) < 0x80)
            {
                self.last_tl0 = Some(sent);
            }
        }
        out
    }

    /// The payload of a packet this leg sent before, again, without moving its state.
    pub fn map(&self, payload: &Bytes) -> Bytes {
        self.map_with(payload, self.picture_offset)
    }

    /// The same, for a packet sent while the picture-id offset was `picture_offset`.
    pub fn map_with(&self, payload: &Bytes, picture_offset: u16) -> Bytes {
        let then = Self {
            picture_offset,
            ..self.clone()
        };
        match parse(payload) {
            Some(descriptor) => then.apply(payload, descriptor),
            None => payload.clone(),
        }
    }

    fn shifted_picture(&self, picture: u16, wide: bool) -> u16 {
        let mask = if wide { PICTURE_MASK } else { 0x7f };
        picture.wrapping_sub(self.picture_offset) & mask
    }

    fn apply(&self, payload: &Bytes, descriptor: Descriptor) -> Bytes {
        if self.picture_offset == 0 && self.tl0_offset == 0 {
            return payload.clone();
        }
        let mut out = payload.to_vec();
        if let Some((picture, wide, at)) = descriptor.picture_id {
            let sent = self.shifted_picture(picture, wide);
            if wide {
                out[at] = 0x80 | (sent >> 8) as u8;
                out[at + 1] = sent as u8;
            } else {
                out[at] = sent as u8;
            }
        }
        if let Some((tl0, at)) = descriptor.tl0_pic_idx {
            out[at] = tl0.wrapping_sub(self.tl0_offset);
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 payload whose descriptor carries a 15-bit picture id and TL0PICIDX.
    fn packet(picture: u16, tl0: u8, start: bool) -> Bytes {
        let s = if start { 0x10 } else { 0 };
        Bytes::from(vec![
            0x80 | s,
            0xc0,
            0x80 | (picture >> 8) as u8,
            picture as u8,
            tl0,
            0xaa,
            0xbb,
        ])
    }

    fn picture_and_tl0(payload: &Bytes) -> (u16, u8) {
        let d = parse(payload).expect("parses");
        (d.picture_id.unwrap().0, d.tl0_pic_idx.unwrap().0)
    }

    #[test]
    fn passes_through_until_the_source_changes_then_continues() {
        let mut munger = Vp8Munger::default();
        // Source A: pictures 32766, 32767 (two packets each), then it wraps to 0.
        let a = [
            packet(32_766, 200, true),
            packet(32_766, 200, false),
            packet(32_767, 201, true),
            packet(0, 202, true),
        ];
        for payload in &a {
            let out = munger.rewrite(payload);
            assert_eq!(out, *payload, "no change: the same bytes");
            assert_eq!(out.as_ptr(), payload.as_ptr(), "not even copied");
        }
        // Source B starts at picture 5000, TL0 17: the leg sees picture 1, TL0 203.
        munger.switch_source();
        let b = [
            packet(5_000, 17, true),
            packet(5_000, 17, false),
            packet(5_001, 18, true),
        ];
        let seen: Vec<(u16, u8)> = b
            .iter()
            .map(|p| picture_and_tl0(&munger.rewrite(p)))
            .collect();
        assert_eq!(seen, [(1, 203), (1, 203), (2, 204)]);
        // The payload after the descriptor is untouched.
        assert_eq!(&munger.rewrite(&b[2])[5..], &[0xaa, 0xbb]);
        // A retransmission maps the same way, without moving the state.
        assert_eq!(picture_and_tl0(&munger.map(&b[0])), (1, 203));
        assert_eq!(
            picture_and_tl0(&munger.rewrite(&packet(5_002, 19, true))),
            (3, 205)
        );
    }

    #[test]
    fn short_picture_ids_and_bare_descriptors() {
        let mut munger = Vp8Munger::default();
        // 7-bit picture id, no TL0PICIDX.
        let short = Bytes::from(vec![0x90, 0x80, 0x05, 0x00]);
        assert_eq!(munger.rewrite(&short), short);
        munger.switch_source();
        let next = Bytes::from(vec![0x90, 0x80, 0x40, 0x00]);
        let out = munger.rewrite(&next);
        assert_eq!(out[2], 0x06, "one after the last one sent, in 7 bits");
        // No extension, empty or truncated payloads pass as they are.
        for payload in [vec![0x10, 0x00], vec![], vec![0x80], vec![0x80, 0x80]] {
            let payload = Bytes::from(payload);
            assert_eq!(munger.rewrite(&payload), payload);
        }
    }
}
