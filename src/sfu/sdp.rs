//! Checks of a remote SDP that webrtc-rs leaves to its caller, so an offer we cannot use is a
//! client error (400 `bad_sdp` with the reason) and never a server error or a session that can
//! never connect.

use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};

use super::error::SfuError;
use super::peer::sdp_attribute;

/// Hash functions of RFC 8122 §5 a DTLS fingerprint may use (MD5 and MD2 are not allowed by
/// RFC 8827), with their digest lengths.
const FINGERPRINT_HASHES: [(&str, usize); 5] = [
    ("sha-1", 20),
    ("sha-224", 28),
    ("sha-256", 32),
    ("sha-384", 48),
    ("sha-512", 64),
];

/// An offer must carry ICE credentials and well-formed DTLS fingerprints.
pub fn check_offer(sdp: &str) -> Result<(), SfuError> {
    let bad = |reason: String| Err(SfuError::BadOffer(reason));
    if sdp_attribute(sdp, "ice-ufrag").is_none_or(str::is_empty) {
        return bad("the offer has no a=ice-ufrag".into());
    }
    if sdp_attribute(sdp, "ice-pwd").is_none_or(str::is_empty) {
        return bad("the offer has no a=ice-pwd".into());
    }
    let mut fingerprints = 0;
    for line in sdp.lines().map(str::trim_end) {
        let Some(value) = line.strip_prefix("a=fingerprint:") else {
            continue;
        };
        fingerprints += 1;
        if let Err(reason) = check_fingerprint(value) {
            return bad(format!("a=fingerprint:{value}: {reason}"));
        }
    }
    if fingerprints == 0 {
        return bad("the offer has no a=fingerprint (DTLS)".into());
    }
    Ok(())
}

fn check_fingerprint(value: &str) -> Result<(), &'static str> {
    let (hash, digest) = value
        .split_once(' ')
        .ok_or("expected '<hash function> <hex bytes>'")?;
    let (_, length) = FINGERPRINT_HASHES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(hash))
        .ok_or("the hash function is not one of sha-1, sha-224, sha-256, sha-384, sha-512")?;
    let bytes: Vec<&str> = digest.trim().split(':').collect();
    if bytes.len() != *length {
        return Err("the digest has the wrong length for its hash function");
    }
    if !bytes
        .iter()
        .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err("the digest must be hex byte pairs separated by ':'");
    }
    Ok(())
}

/// The answer we made has no ICE credentials when every section was rejected: nothing of the
/// offer (codec, transport) could be accepted.
pub fn nothing_accepted() -> SfuError {
    SfuError::BadOffer(
        "no section of the offer could be accepted: no codec or transport in common".into(),
    )
}

/// For each audio or video section of an offer, in order: its kind and the first codec in
/// its preference order that Convene forwards (Opus; VP8, VP9, H264, AV1), with the offer's
/// clock rate, channels and fmtp line. `None` where the section offers none of them.
pub fn offered_codecs(sdp: &str) -> Vec<(RtpCodecKind, Option<RTCRtpCodec>)> {
    const FORWARDED: [(&str, &str); 5] = [
        ("opus", "audio/opus"),
        ("VP8", "video/VP8"),
        ("VP9", "video/VP9"),
        ("H264", "video/H264"),
        ("AV1", "video/AV1"),
    ];
    let mut sections: Vec<(RtpCodecKind, Vec<&str>, Vec<&str>)> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(media) = line.strip_prefix("m=") {
            let mut fields = media.split_whitespace();
            let kind = match fields.next() {
                Some("audio") => RtpCodecKind::Audio,
                Some("video") => RtpCodecKind::Video,
                _ => RtpCodecKind::Unspecified,
            };
            let formats = fields.skip(2).collect();
            sections.push((kind, formats, Vec::new()));
        } else if let Some(section) = sections.last_mut() {
            section.2.push(line);
        }
    }
    sections
        .into_iter()
        .filter(|(kind, _, _)| *kind != RtpCodecKind::Unspecified)
        .map(|(kind, formats, attributes)| {
            let attribute = |name: &str, pt: &str| {
                let prefix = format!("a={name}:{pt} ");
                attributes
                    .iter()
                    .find_map(|l| l.strip_prefix(prefix.as_str()))
                    .map(str::to_owned)
            };
            let codec = formats.iter().find_map(|pt| {
                let rtpmap = attribute("rtpmap", pt)?;
                let mut parts = rtpmap.split('/');
                let name = parts.next()?;
                let clock_rate = parts.next()?.parse().ok()?;
                let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                let (_, mime) = FORWARDED.iter().find(|(n, mime)| {
                    n.eq_ignore_ascii_case(name) && mime.starts_with(kind_prefix(kind))
                })?;
                Some(RTCRtpCodec {
                    mime_type: (*mime).to_owned(),
                    clock_rate,
                    channels,
                    sdp_fmtp_line: attribute("fmtp", pt).unwrap_or_default(),
                    rtcp_feedback: Vec::new(),
                })
            });
            (kind, codec)
        })
        .collect()
}

fn kind_prefix(kind: RtpCodecKind) -> &'static str {
    if kind == RtpCodecKind::Audio {
        "audio/"
    } else {
        "video/"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_sections_first_forwarded_codec() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0 111\r\na=rtpmap:0 PCMU/8000\r\n\
            a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 102 96\r\na=rtpmap:96 VP8/90000\r\n\
            a=rtpmap:102 H264/90000\r\na=fmtp:102 profile-level-id=42e01f;packetization-mode=1\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\n\
            a=rtpmap:98 FOO/90000\r\n";
        let codecs = offered_codecs(sdp);
        assert_eq!(codecs.len(), 3);
        let audio = codecs[0].1.as_ref().unwrap();
        assert_eq!(
            (audio.mime_type.as_str(), audio.clock_rate, audio.channels),
            ("audio/opus", 48000, 2)
        );
        assert_eq!(audio.sdp_fmtp_line, "minptime=10");
        let video = codecs[1].1.as_ref().unwrap();
        assert_eq!(
            video.mime_type, "video/H264",
            "the offer's preference order"
        );
        assert!(video.sdp_fmtp_line.contains("packetization-mode=1"));
        assert_eq!(codecs[2], (RtpCodecKind::Video, None));
    }

    const GOOD: &str = "v=0\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\na=fingerprint:sha-256 \
        00:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:17:18:19:1a:1b:1c:1d:1e:1f\r\n";

    #[test]
    fn accepts_well_formed_offers() {
        assert!(check_offer(GOOD).is_ok());
    }

    #[test]
    fn refuses_missing_credentials_and_bad_fingerprints() {
        for broken in [
            GOOD.replace("a=ice-ufrag:u\r\n", ""),
            GOOD.replace("a=ice-pwd:p\r\n", ""),
            GOOD.replace("a=fingerprint", "a=fingerprimt"),
            GOOD.replace("sha-256", "md5"),
            GOOD.replace("00:01:", ""),
            GOOD.replace("0A", "ZZ"),
            GOOD.replace("sha-256 ", "sha-256"),
            GOOD.replace(":1f", ":1f:"),
        ] {
            assert!(check_offer(&broken).is_err(), "{broken}");
        }
    }
}
