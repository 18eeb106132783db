//! What a datagram on the media port is, from its first bytes alone (RFC 7983 §7, RFC 5761 §4),
//! before anything parses it. The engine looks for DTLS records this way (a client's
//! close_notify); the fuzz target `ingress` drives this and the RTP/RTCP parsers behind it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    /// ZRTP, TURN channel data, or nothing we know.
    Unknown,
}

pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        // RTP and RTCP share 128..=191; RTCP packet types 192..=223 sit where RTP's marker bit
        // and payload type are (RFC 5761 §4).
        Some(128..=191) => match datagram.get(1) {
            Some(192..=223) => DatagramKind::Rtcp,
            Some(_) => DatagramKind::Rtp,
            None => DatagramKind::Unknown,
        },
        _ => DatagramKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_name_the_protocol() {
        assert_eq!(classify(&[0x00, 0x01]), DatagramKind::Stun);
        assert_eq!(classify(&[22, 254, 253]), DatagramKind::Dtls);
        assert_eq!(classify(&[0x80, 96]), DatagramKind::Rtp);
        assert_eq!(
            classify(&[0x80, 0xE0]),
            DatagramKind::Rtp,
            "marker bit + PT 96"
        );
        assert_eq!(classify(&[0x81, 200]), DatagramKind::Rtcp, "sender report");
        assert_eq!(classify(&[0x80]), DatagramKind::Unknown);
        assert_eq!(classify(&[]), DatagramKind::Unknown);
        assert_eq!(classify(&[70]), DatagramKind::Unknown, "TURN channel data");
    }
}
