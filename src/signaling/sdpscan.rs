//! What a client's offer sends: one entry per audio/video section that sends media, with the
//! track id its `a=msid` line names. Signaling reads it to check the sources a publisher may
//! send before the offer reaches the SFU. A plain line scan: the SFU parses the SDP for real.

use super::protocol::Kind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendingTrack {
    pub mid: Option<String>,
    pub kind: Kind,
    /// The `a=msid:<stream> <track>` track id; `None` when the section has none.
    pub track_id: Option<String>,
}

/// Sending audio/video sections of `sdp`, in order. Rejected sections (port 0) and sections
/// that only receive are left out.
pub fn sending_tracks(sdp: &str) -> Vec<SendingTrack> {
    let mut tracks = Vec::new();
    let mut section: Option<Section> = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(media) = line.strip_prefix("m=") {
            if let Some(done) = section.take() {
                tracks.extend(done.finish());
            }
            section = Some(Section::start(media));
            continue;
        }
        let Some(current) = section.as_mut() else {
            continue;
        };
        let Some(attribute) = line.strip_prefix("a=") else {
            continue;
        };
        match attribute {
            "sendrecv" | "sendonly" => current.sends = true,
            "recvonly" | "inactive" => current.sends = false,
            _ => {
                if let Some(mid) = attribute.strip_prefix("mid:") {
                    current.mid = Some(mid.trim().to_owned());
                } else if let Some(msid) = attribute.strip_prefix("msid:") {
                    current.track_id = msid
                        .split_whitespace()
                        .nth(1)
                        .filter(|t| *t != "-")
                        .map(str::to_owned);
                }
            }
        }
    }
    if let Some(done) = section {
        tracks.extend(done.finish());
    }
    tracks
}

struct Section {
    kind: Option<Kind>,
    rejected: bool,
    /// RFC 8866: sendrecv unless a direction attribute says otherwise.
    sends: bool,
    mid: Option<String>,
    track_id: Option<String>,
}

impl Section {
    fn start(media: &str) -> Self {
        let mut fields = media.split_whitespace();
        let kind = match fields.next() {
            Some("audio") => Some(Kind::Audio),
            Some("video") => Some(Kind::Video),
            _ => None,
        };
        Self {
            kind,
            rejected: fields.next() == Some("0"),
            sends: true,
            mid: None,
            track_id: None,
        }
    }

    fn finish(self) -> Option<SendingTrack> {
        let kind = self.kind?;
        (self.sends && !self.rejected).then_some(SendingTrack {
            mid: self.mid,
            kind,
            track_id: self.track_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sending_sections_and_their_tracks() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s mic-1\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s cam-1\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\na=msid:s old\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\na=msid:s gone\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n";
        let tracks = sending_tracks(sdp);
        assert_eq!(
            tracks,
            vec![
                SendingTrack {
                    mid: Some("0".into()),
                    kind: Kind::Audio,
                    track_id: Some("mic-1".into())
                },
                SendingTrack {
                    mid: Some("1".into()),
                    kind: Kind::Video,
                    track_id: Some("cam-1".into())
                },
            ]
        );
    }

    #[test]
    fn garbage_yields_nothing() {
        assert!(sending_tracks("").is_empty());
        assert!(sending_tracks("m=\r\na=msid:\r\n").is_empty());
    }
}
