//! Where a keyframe starts, read from an RTP payload: a down track may switch to another
//! simulcast layer only there, since the new layer's earlier frames reference pictures the
//! subscriber never received. VP8 (RFC 7741) and H264 (RFC 6184); other codecs are forwarded as
//! one layer, so they never need it.

/// The codecs a layer switch understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Vp8,
    H264,
    /// VP9, AV1, audio…: one layer, never switched.
    Other,
}

impl Codec {
    pub fn of(mime_type: &str) -> Self {
        if mime_type.eq_ignore_ascii_case("video/VP8") {
            Codec::Vp8
        } else if mime_type.eq_ignore_ascii_case("video/H264") {
            Codec::H264
        } else {
            Codec::Other
        }
    }

    /// Whether this packet is the first of a keyframe (for H264: of an IDR access unit, whose
    /// SPS may come first).
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Codec::Vp8 => vp8_keyframe(payload).is_some(),
            Codec::H264 => h264_keyframe(payload),
            Codec::Other => false,
        }
    }
}

/// The VP8 payload after its descriptor (RFC 7741 §4.2), if this packet starts partition 0.
fn vp8_frame_start(payload: &[u8]) -> Option<&[u8]> {
    let first = *payload.first()?;
    let start_of_partition = first & 0x10 != 0;
    let partition_index = first & 0x07;
    if !start_of_partition || partition_index != 0 {
        return None;
    }
    payload.get(vp8_descriptor_len(payload)?..)
}

/// The length of a VP8 payload descriptor (RFC 7741 §4.2): what precedes the VP8 bytes.
pub fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    let mut at = 1;
    if first & 0x80 != 0 {
        let extension = *payload.get(1)?;
        at = 2;
        if extension & 0x80 != 0 {
            at += if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if extension & 0x40 != 0 {
            at += 1;
        }
        if extension & 0x30 != 0 {
            at += 1;
        }
    }
    (at <= payload.len()).then_some(at)
}

/// A VP8 keyframe's first packet: `Some(size)`, with the frame's width and height when the
/// packet holds them (RFC 6386 §9.1).
pub fn vp8_keyframe(payload: &[u8]) -> Option<Option<(u16, u16)>> {
    let frame = vp8_frame_start(payload)?;
    // The frame tag's P bit: 0 on a keyframe.
    if frame.first()? & 0x01 != 0 {
        return None;
    }
    let size = match frame.get(3..10) {
        Some([0x9d, 0x01, 0x2a, w0, w1, h0, h1]) => Some((
            u16::from_le_bytes([*w0, *w1]) & 0x3fff,
            u16::from_le_bytes([*h0, *h1]) & 0x3fff,
        )),
        _ => None,
    };
    Some(size)
}

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        H264_IDR | H264_SPS => true,
        H264_STAP_A => {
            let mut at = 1;
            while let Some(size) = payload.get(at..at + 2) {
                let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
                let Some(&nal) = payload.get(at + 2) else {
                    return false;
                };
                if matches!(nal & 0x1f, H264_IDR | H264_SPS) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        H264_FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == H264_IDR),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptor with a 15-bit picture id and TL0PICIDX, then a keyframe's header: tag,
    /// start code, 1280×720.
    const VP8_KEY: [u8; 15] = [
        0x90, 0xc0, 0x80, 0x05, 0x11, 0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02,
    ];

    #[test]
    fn a_vp8_keyframe_is_found_with_its_size() {
        assert_eq!(vp8_keyframe(&VP8_KEY), Some(Some((1280, 720))));
        assert!(Codec::Vp8.starts_keyframe(&VP8_KEY));
        // An interframe (P bit set).
        let mut inter = VP8_KEY;
        inter[5] |= 0x01;
        assert!(!Codec::Vp8.starts_keyframe(&inter));
        // A later packet of the keyframe (S bit clear).
        let mut later = VP8_KEY;
        later[0] &= !0x10;
        assert!(!Codec::Vp8.starts_keyframe(&later));
        // No extension: the frame starts after one byte.
        let plain = [
            0x10, 0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00,
        ];
        assert_eq!(vp8_keyframe(&plain), Some(Some((320, 240))));
        // Garbage and truncation are never a keyframe and never panic.
        for cut in 0..VP8_KEY.len() {
            let _ = vp8_keyframe(&VP8_KEY[..cut]);
        }
        assert!(!Codec::Vp8.starts_keyframe(&[]));
        assert!(!Codec::Vp8.starts_keyframe(&[0x90]));
    }

    #[test]
    fn h264_idr_sps_stap_a_and_fu_a_starts_are_keyframes() {
        let codec = Codec::H264;
        assert!(codec.starts_keyframe(&[0x65, 0x88]), "IDR");
        assert!(codec.starts_keyframe(&[0x67, 0x42]), "SPS");
        assert!(!codec.starts_keyframe(&[0x41, 0x9a]), "non-IDR slice");
        // STAP-A: SPS (3 bytes), PPS (2 bytes).
        assert!(codec.starts_keyframe(&[0x18, 0, 3, 0x67, 0x42, 0x00, 0, 2, 0x68, 0xce]));
        assert!(!codec.starts_keyframe(&[0x18, 0, 2, 0x41, 0x9a, 0, 9]));
        // FU-A: start of an IDR, then its continuation.
        assert!(codec.starts_keyframe(&[0x7c, 0x85, 0x88]));
        assert!(!codec.starts_keyframe(&[0x7c, 0x05, 0x88]));
        assert!(
            !codec.starts_keyframe(&[0x7c, 0x81, 0x88]),
            "start of a P slice"
        );
        assert!(!codec.starts_keyframe(&[]));
        assert!(!Codec::Other.starts_keyframe(&[0x65]));
    }
}
