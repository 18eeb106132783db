//! Checks of a remote SDP that webrtc-rs leaves to its caller, so an offer we cannot use is a
//! client error (400 `bad_sdp` with the reason) and never a server error or a session that can
//! never connect.

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

#[cfg(test)]
mod tests {
    use super::*;

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
