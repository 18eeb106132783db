//! TURN credentials in coturn's `use-auth-secret` form (the "TURN REST API" of
//! draft-uberti-behave-turn-rest): the username is `expiry:identity` (expiry in Unix seconds),
//! the password `base64(HMAC-SHA1(secret, username))`. Nothing is stored: the server recomputes
//! the password from the username, so the same secret works in coturn and in our own server.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;

/// A credential handed to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credential {
    pub username: String,
    pub password: String,
    /// Unix seconds after which the server refuses it.
    pub expires_at: u64,
}

/// Why a username is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not `expiry:identity` with a number before the colon.
    Malformed,
    /// Its expiry has passed.
    Expired,
}

/// A credential for `identity`, valid `ttl_secs` from `now` (Unix seconds).
pub fn issue(secret: &[u8], identity: &str, ttl_secs: u64, now: u64) -> Credential {
    let expires_at = now.saturating_add(ttl_secs);
    let username = format!("{expires_at}:{}", encode(identity));
    let password = password(secret, &username);
    Credential {
        username,
        password,
        expires_at,
    }
}

/// The password of `username`, if the username is well-formed and not expired at `now`.
pub fn verify(secret: &[u8], username: &str, now: u64) -> Result<String, Refused> {
    let expiry = username
        .split_once(':')
        .map_or(username, |(expiry, _)| expiry);
    let expiry: u64 = expiry.parse().map_err(|_| Refused::Malformed)?;
    if expiry <= now {
        return Err(Refused::Expired);
    }
    Ok(password(secret, username))
}

/// The identity as it goes into a username: what is not plainly printable ASCII (a colon, a
/// quote, a control character, anything beyond ASCII) percent-encoded, so the username fits an
/// HTTP header's quoted string (the WHIP/WHEP `Link`) and parses the same everywhere.
fn encode(identity: &str) -> String {
    let mut out = String::with_capacity(identity.len());
    for byte in identity.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@+=".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac() {
        // The password computed independently: `echo -n 1433894400:ninefingers | openssl dgst
        // -sha1 -hmac north -binary | base64`.
        let c = verify(b"north", "1433894400:ninefingers", 1_000_000_000).unwrap();
        assert_eq!(c, "hVbBiLjACd/ERunKxo/dq7gSY08=");
    }

    #[test]
    fn issued_credentials_verify_until_they_expire() {
        let c = issue(b"s3cret", "alice", 3600, 1_000);
        assert_eq!(c.username, "4600:alice");
        assert_eq!(
            verify(b"s3cret", &c.username, 4_599),
            Ok(c.password.clone())
        );
        assert_eq!(verify(b"s3cret", &c.username, 4_600), Err(Refused::Expired));
        assert_ne!(verify(b"other", &c.username, 1_000), Ok(c.password));
    }

    #[test]
    fn malformed_usernames_are_refused() {
        for name in [
            "alice",
            ":alice",
            "x1:alice",
            "",
            "-5:bob",
            "99999999999999999999999:a",
        ] {
            assert_eq!(verify(b"s", name, 0), Err(Refused::Malformed), "{name}");
        }
        // A bare expiry (webrtc-rs' form) is accepted, as coturn does.
        assert!(verify(b"s", "5000", 0).is_ok());
    }

    #[test]
    fn identities_are_encoded_to_fit_a_header() {
        let c = issue(b"s", "guest-01a2:b\n\"José\";x", 10, 0);
        assert_eq!(c.username, "10:guest-01a2%3Ab%0A%22Jos%C3%A9%22%3Bx");
        assert!(c.username.is_ascii());
        assert_eq!(issue(b"s", "01a2-f00d", 10, 0).username, "10:01a2-f00d");
    }
}
