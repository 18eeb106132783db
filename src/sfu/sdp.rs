//! SDP, in one place. Read and written with `rtc::sdp`, the parser and writer webrtc-rs's peer
//! connections use, so what we read of an offer is what the peer connection applies: no line
//! scanning anywhere else.
//!
//! Also the checks of a remote SDP that webrtc-rs leaves to its caller, so an offer we cannot
//! use is a client error (400 `bad_sdp` with the reason) and never a server error or a session
//! that can never connect.

use std::collections::HashMap;
use std::io::Cursor;

use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use rtc::sdp::description::common::Attribute;
use rtc::sdp::{MediaDescription, SessionDescription};

use super::error::SfuError;
use super::{FragmentCandidate, IceFragment, MediaKind};

/// Hash functions of RFC 8122 §5 a DTLS fingerprint may use (MD5 and MD2 are not allowed by
/// RFC 8827), with their digest lengths.
const FINGERPRINT_HASHES: [(&str, usize); 5] = [
    ("sha-1", 20),
    ("sha-224", 28),
    ("sha-256", 32),
    ("sha-384", 48),
    ("sha-512", 64),
];

/// Codecs Convene forwards, by SDP encoding name, with their MIME type.
const FORWARDED: [(&str, &str); 5] = [
    ("opus", "audio/opus"),
    ("VP8", "video/VP8"),
    ("VP9", "video/VP9"),
    ("H264", "video/H264"),
    ("AV1", "video/AV1"),
];

/// Candidates one trickle fragment may carry; more is abuse, not trickle.
pub const MAX_FRAGMENT_CANDIDATES: usize = 64;

/// A parsed session description.
pub struct Sdp(SessionDescription);

/// An audio or video section of an offer that sends media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendingTrack {
    pub mid: Option<String>,
    pub kind: MediaKind,
    /// The `a=msid:<stream> <track>` track id; `None` when the section has none.
    pub track_id: Option<String>,
}

impl Sdp {
    pub fn parse(text: &str) -> Result<Self, SfuError> {
        SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
            .map(Self)
            .map_err(|e| SfuError::BadOffer(format!("the SDP does not parse: {e}")))
    }

    /// The value of `a=<key>:`, at session level, else in the first media section that has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        Self::attribute_of(&self.0, key)
    }

    fn attribute_of<'a>(sdp: &'a SessionDescription, key: &str) -> Option<&'a str> {
        find(&sdp.attributes, key).or_else(|| {
            sdp.media_descriptions
                .iter()
                .find_map(|m| find(&m.attributes, key))
        })
    }

    /// `a=ice-ufrag` and `a=ice-pwd`, when both are there and not empty.
    pub fn ice_credentials(&self) -> Option<(&str, &str)> {
        let ufrag = self.attribute("ice-ufrag").filter(|u| !u.is_empty())?;
        let pwd = self.attribute("ice-pwd").filter(|p| !p.is_empty())?;
        Some((ufrag, pwd))
    }

    fn media(&self) -> impl Iterator<Item = (MediaKind, &MediaDescription)> {
        self.0
            .media_descriptions
            .iter()
            .filter_map(|m| Some((media_kind(&m.media_name.media)?, m)))
    }

    /// Whether there is an audio or video section at all.
    pub fn has_media(&self) -> bool {
        self.media().next().is_some()
    }

    /// An offer must carry ICE credentials and well-formed DTLS fingerprints.
    pub fn check_offer(&self) -> Result<(), SfuError> {
        let bad = |reason: String| Err(SfuError::BadOffer(reason));
        if self.attribute("ice-ufrag").is_none_or(str::is_empty) {
            return bad("the offer has no a=ice-ufrag".into());
        }
        if self.attribute("ice-pwd").is_none_or(str::is_empty) {
            return bad("the offer has no a=ice-pwd".into());
        }
        let fingerprints: Vec<&str> = std::iter::once(&self.0.attributes)
            .chain(self.0.media_descriptions.iter().map(|m| &m.attributes))
            .flatten()
            .filter(|a| a.key == "fingerprint")
            .map(|a| a.value.as_deref().unwrap_or_default())
            .collect();
        if fingerprints.is_empty() {
            return bad("the offer has no a=fingerprint (DTLS)".into());
        }
        for value in fingerprints {
            if let Err(reason) = check_fingerprint(value) {
                return bad(format!("a=fingerprint:{value}: {reason}"));
            }
        }
        Ok(())
    }

    /// Sending audio/video sections, in order. Rejected sections (port 0) and sections that
    /// only receive are left out (RFC 8866: sendrecv unless a direction attribute says else).
    pub fn sending_tracks(&self) -> Vec<SendingTrack> {
        self.media()
            .filter(|(_, m)| m.media_name.port.value != 0)
            .filter(|(_, m)| !m.has_attribute("recvonly") && !m.has_attribute("inactive"))
            .map(|(kind, m)| SendingTrack {
                mid: m.attribute("mid").flatten().map(str::to_owned),
                kind,
                track_id: m
                    .attribute("msid")
                    .flatten()
                    .and_then(|msid| msid.split_whitespace().nth(1))
                    .filter(|t| *t != "-")
                    .map(str::to_owned),
            })
            .collect()
    }

    /// For each audio or video section, in order: its kind and the first codec in its
    /// preference order that Convene forwards (Opus; VP8, VP9, H264, AV1), with the offer's
    /// clock rate, channels and fmtp line. `None` where the section offers none of them.
    pub fn offered_codecs(&self) -> Vec<(RtpCodecKind, Option<RTCRtpCodec>)> {
        self.media()
            .map(|(kind, m)| {
                let kind = match kind {
                    MediaKind::Audio => RtpCodecKind::Audio,
                    MediaKind::Video => RtpCodecKind::Video,
                };
                let codecs = m.codecs();
                let codec = m.media_name.formats.iter().find_map(|pt| {
                    let codec = codecs.get(&pt.parse().ok()?)?;
                    let (_, mime) = FORWARDED.iter().find(|(name, mime)| {
                        name.eq_ignore_ascii_case(&codec.name)
                            && mime.starts_with(kind_prefix(kind))
                    })?;
                    Some(RTCRtpCodec {
                        mime_type: (*mime).to_owned(),
                        clock_rate: codec.clock_rate,
                        channels: codec.encoding_parameters.parse().unwrap_or(0),
                        sdp_fmtp_line: codec.fmtp.clone(),
                        rtcp_feedback: Vec::new(),
                    })
                });
                (kind, codec)
            })
            .collect()
    }

    /// Audio sections that accept redundant audio: their mid and `audio/red` payload type (a
    /// `red/48000/2` format listed on the m-line).
    pub fn red_payload_types(&self) -> Vec<(String, u8)> {
        self.media()
            .filter(|(kind, m)| *kind == MediaKind::Audio && m.media_name.port.value != 0)
            .filter_map(|(_, m)| {
                let mid = m.attribute("mid").flatten()?.to_owned();
                let codecs = m.codecs();
                let red = m.media_name.formats.iter().find_map(|pt| {
                    let pt: u8 = pt.parse().ok()?;
                    let codec = codecs.get(&pt)?;
                    (codec.name.eq_ignore_ascii_case("red") && codec.clock_rate == 48_000)
                        .then_some(pt)
                })?;
                Some((mid, red))
            })
            .collect()
    }

    /// Payload type → clock rate, over every section's `a=rtpmap`.
    pub fn clock_rates(&self) -> HashMap<u8, u32> {
        self.0
            .media_descriptions
            .iter()
            .flat_map(|m| m.codecs())
            .map(|(pt, codec)| (pt, codec.clock_rate))
            .collect()
    }

    /// This (the current remote offer) with new ICE credentials and the fragment's
    /// candidates, so applying it is an ICE restart (JSEP: changed ufrag/pwd in a new offer).
    pub fn restarted(mut self, ufrag: &str, pwd: &str, fragment: &IceFragment) -> String {
        let replace = |attributes: &mut Vec<Attribute>| {
            attributes.retain(|a| a.key != "candidate" && a.key != "end-of-candidates");
            for attribute in attributes.iter_mut() {
                match attribute.key.as_str() {
                    "ice-ufrag" => attribute.value = Some(ufrag.to_owned()),
                    "ice-pwd" => attribute.value = Some(pwd.to_owned()),
                    _ => {}
                }
            }
        };
        replace(&mut self.0.attributes);
        for media in &mut self.0.media_descriptions {
            replace(&mut media.attributes);
            let mid = media.attribute("mid").flatten().map(str::to_owned);
            let Some(mid) = mid else {
                continue;
            };
            for candidate in fragment
                .candidates
                .iter()
                .filter(|c| c.mid.as_deref().is_none_or(|m| m == mid))
            {
                let value = candidate.candidate.strip_prefix("candidate:");
                media.attributes.push(Attribute::new(
                    "candidate".to_owned(),
                    Some(value.unwrap_or(&candidate.candidate).to_owned()),
                ));
            }
        }
        self.0.marshal()
    }

    /// RFC 8840 answer fragment of this (our answer to a restart): the ICE options, our new
    /// credentials, then the first media section's mid and candidates.
    pub fn answer_fragment(&self) -> String {
        let mut out = String::new();
        let mut line = |attribute: &Attribute| {
            out.push_str(&format!("a={attribute}\r\n"));
        };
        let session = &self.0.attributes;
        for key in ["ice-lite", "ice-options"] {
            session.iter().filter(|a| a.key == key).for_each(&mut line);
        }
        for key in ["ice-ufrag", "ice-pwd"] {
            if let Some(value) = self.attribute(key) {
                line(&Attribute::new(key.to_owned(), Some(value.to_owned())));
            }
        }
        if let Some(first) = self.0.media_descriptions.first() {
            out.push_str(&format!("m={}\r\n", first.media_name));
            for attribute in first
                .attributes
                .iter()
                .filter(|a| matches!(a.key.as_str(), "mid" | "candidate" | "end-of-candidates"))
            {
                out.push_str(&format!("a={attribute}\r\n"));
            }
        }
        out
    }
}

/// The value of the first `a=<key>` of `attributes` (empty for a flag).
fn find<'a>(attributes: &'a [Attribute], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| a.value.as_deref().unwrap_or_default())
}

fn media_kind(media: &str) -> Option<MediaKind> {
    match media {
        "audio" => Some(MediaKind::Audio),
        "video" => Some(MediaKind::Video),
        _ => None,
    }
}

fn kind_prefix(kind: RtpCodecKind) -> &'static str {
    if kind == RtpCodecKind::Audio {
        "audio/"
    } else {
        "video/"
    }
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

/// An RFC 8840 `application/trickle-ice-sdpfrag` body (as WHIP/WHEP PATCH carries it): SDP
/// lines without the session header, read by the same parser behind a header of our own.
pub fn parse_fragment(body: &str) -> Result<IceFragment, String> {
    let text = format!(
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{}",
        body.trim_start()
    );
    let sdp = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| format!("not an sdpfrag: {e}"))?;
    let mut fragment = IceFragment {
        ufrag: Sdp::attribute_of(&sdp, "ice-ufrag").map(str::to_owned),
        pwd: Sdp::attribute_of(&sdp, "ice-pwd").map(str::to_owned),
        candidates: Vec::new(),
    };
    // Candidates before any m= line belong to the first section (BUNDLE: one transport).
    let sections = std::iter::once((0, None, &sdp.attributes)).chain(
        sdp.media_descriptions.iter().enumerate().map(|(i, m)| {
            let mid = m.attribute("mid").flatten().map(str::to_owned);
            (i, mid, &m.attributes)
        }),
    );
    for (index, mid, attributes) in sections {
        for value in attributes
            .iter()
            .filter(|a| a.key == "candidate")
            .map(|a| a.value.as_deref().unwrap_or_default())
        {
            if value.split_whitespace().count() < 8 {
                return Err(format!("malformed candidate line: a=candidate:{value}"));
            }
            if fragment.candidates.len() == MAX_FRAGMENT_CANDIDATES {
                return Err(format!(
                    "more than {MAX_FRAGMENT_CANDIDATES} candidates in one fragment"
                ));
            }
            fragment.candidates.push(FragmentCandidate {
                mid: mid.clone(),
                mline_index: Some(u16::try_from(index).unwrap_or(u16::MAX)),
                candidate: format!("candidate:{value}"),
            });
        }
    }
    Ok(fragment)
}

/// The ICE credentials of an SDP webrtc-rs wrote for us (empty where it has none).
pub fn local_credentials(text: &str) -> (String, String) {
    Sdp::parse(text)
        .ok()
        .and_then(|sdp| {
            sdp.ice_credentials()
                .map(|(u, p)| (u.to_owned(), p.to_owned()))
        })
        .unwrap_or_default()
}

/// The answer we made has no ICE credentials when every section was rejected: nothing of the
/// offer (codec, transport) could be accepted.
pub fn nothing_accepted() -> SfuError {
    SfuError::BadOffer(
        "no section of the offer could be accepted: no codec or transport in common".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::FragmentCandidate;

    const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";

    fn parse(body: &str) -> Sdp {
        Sdp::parse(&format!("{HEAD}{body}")).expect("parses")
    }

    #[test]
    fn finds_each_sections_first_forwarded_codec() {
        let sdp = parse(
            "m=audio 9 UDP/TLS/RTP/SAVPF 0 111\r\na=rtpmap:0 PCMU/8000\r\n\
            a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 102 96\r\na=rtpmap:96 VP8/90000\r\n\
            a=rtpmap:102 H264/90000\r\na=fmtp:102 profile-level-id=42e01f;packetization-mode=1\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\n\
            a=rtpmap:98 FOO/90000\r\n",
        );
        let codecs = sdp.offered_codecs();
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
        assert_eq!(sdp.clock_rates().get(&111), Some(&48000));
    }

    const GOOD: &str = "a=ice-ufrag:u\r\na=ice-pwd:p\r\na=fingerprint:sha-256 \
        00:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:17:18:19:1a:1b:1c:1d:1e:1f\r\n";

    #[test]
    fn accepts_well_formed_offers() {
        assert!(parse(GOOD).check_offer().is_ok());
        assert_eq!(parse(GOOD).ice_credentials(), Some(("u", "p")));
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
            assert!(parse(&broken).check_offer().is_err(), "{broken}");
        }
        assert!(Sdp::parse("not sdp").is_err());
    }

    #[test]
    fn finds_sending_sections_and_their_tracks() {
        let sdp = parse(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s mic-1\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s cam-1\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\na=msid:s old\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\na=msid:s gone\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n",
        );
        assert_eq!(
            sdp.sending_tracks(),
            vec![
                SendingTrack {
                    mid: Some("0".into()),
                    kind: MediaKind::Audio,
                    track_id: Some("mic-1".into())
                },
                SendingTrack {
                    mid: Some("1".into()),
                    kind: MediaKind::Video,
                    track_id: Some("cam-1".into())
                },
            ]
        );
    }

    #[test]
    fn a_restart_offer_swaps_credentials_and_candidates() {
        let current = parse(
            "a=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=mid:0\r\na=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\na=end-of-candidates\r\n",
        );
        let fragment = IceFragment {
            ufrag: Some("new".into()),
            pwd: Some("newpwd".into()),
            candidates: vec![FragmentCandidate {
                mid: Some("0".into()),
                mline_index: Some(0),
                candidate: "candidate:2 1 udp 1 10.0.0.2 6000 typ host".into(),
            }],
        };
        let offer = current.restarted("new", "newpwd", &fragment);
        assert!(offer.contains("a=ice-ufrag:new\r\n") && offer.contains("a=ice-pwd:newpwd\r\n"));
        assert!(!offer.contains("10.0.0.1") && offer.contains("10.0.0.2 6000"));
        assert!(!offer.contains("end-of-candidates"));
        assert!(Sdp::parse(&offer).is_ok(), "{offer}");
    }

    #[test]
    fn an_answer_fragment_carries_credentials_and_first_section_candidates() {
        let answer = parse(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\na=mid:0\r\n\
            a=candidate:1 1 udp 1 127.0.0.1 50000 typ host\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
            a=mid:1\r\n",
        );
        let fragment = answer.answer_fragment();
        assert!(
            fragment
                .starts_with("a=ice-ufrag:u\r\na=ice-pwd:p\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
            "{fragment}"
        );
        assert!(fragment.contains("a=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 50000 typ host\r\n"));
        assert!(!fragment.contains("a=mid:1"));
    }

    #[test]
    fn parses_a_trickle_fragment() {
        let body = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\na=end-of-candidates\r\n";
        let fragment = parse_fragment(body).unwrap();
        assert_eq!(fragment.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(fragment.candidates.len(), 1);
        assert_eq!(fragment.candidates[0].mid.as_deref(), Some("0"));
        assert!(fragment.candidates[0]
            .candidate
            .starts_with("candidate:1387637174 1 udp"));
    }

    #[test]
    fn refuses_fragment_garbage() {
        assert!(parse_fragment("hello world").is_err());
        assert!(parse_fragment("a=candidate:1 2").is_err());
        let many: String = (0..=MAX_FRAGMENT_CANDIDATES)
            .map(|i| format!("a=candidate:{i} 1 udp 1 10.0.0.1 {i} typ host\n"))
            .collect();
        assert!(parse_fragment(&many).is_err());
    }
}
