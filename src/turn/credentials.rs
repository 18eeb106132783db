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
    // A colon in the identity would still parse (the expiry is what precedes the first one), but
    // control characters have no place in a STUN USERNAME.
    let identity: String = identity.chars().filter(|c| !c.is_control()).collect();
    let username = format!("{expires_at}:{identity}");
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
    fn control_characters_leave_the_identity() {
        let c = issue(b"s", "a\nb\0c", 10, 0);
        assert_eq!(c.username, "10:abc");
    }
}
