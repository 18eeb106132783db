//! RFC 8840 `application/trickle-ice-sdpfrag` bodies, as WHIP/WHEP PATCH carries them.

use crate::sfu::{FragmentCandidate, IceFragment};

/// Candidates one PATCH may carry; more is abuse, not trickle.
pub const MAX_CANDIDATES: usize = 64;

pub fn parse(body: &str) -> Result<IceFragment, String> {
    let mut fragment = IceFragment::default();
    let mut mline_index: Option<u16> = None;
    let mut mid: Option<String> = None;
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            mline_index = Some(mline_index.map_or(0, |i| i.saturating_add(1)));
            mid = None;
        } else if let Some(value) = line.strip_prefix("a=mid:") {
            mid = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("a=ice-ufrag:") {
            fragment.ufrag = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("a=ice-pwd:") {
            fragment.pwd = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("a=candidate:") {
            if value.split_whitespace().count() < 8 {
                return Err(format!("malformed candidate line: {line}"));
            }
            if fragment.candidates.len() == MAX_CANDIDATES {
                return Err(format!(
                    "more than {MAX_CANDIDATES} candidates in one fragment"
                ));
            }
            fragment.candidates.push(FragmentCandidate {
                mid: mid.clone(),
                mline_index: Some(mline_index.unwrap_or(0)),
                candidate: format!("candidate:{value}"),
            });
        } else if !(line.starts_with("a=") || line.starts_with("c=")) {
            return Err(format!("unexpected line in an sdpfrag: {line}"));
        }
    }
    Ok(fragment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trickle_fragment() {
        let body = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\na=end-of-candidates\r\n";
        let fragment = parse(body).unwrap();
        assert_eq!(fragment.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(fragment.candidates.len(), 1);
        assert_eq!(fragment.candidates[0].mid.as_deref(), Some("0"));
        assert!(fragment.candidates[0]
            .candidate
            .starts_with("candidate:1387637174 1 udp"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("hello world").is_err());
        assert!(parse("a=candidate:1 2").is_err());
        let many: String = (0..=MAX_CANDIDATES)
            .map(|i| format!("a=candidate:{i} 1 udp 1 10.0.0.1 {i} typ host\n"))
            .collect();
        assert!(parse(&many).is_err());
    }
}
