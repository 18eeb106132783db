//! REST access tokens: short-lived HS256 JWTs naming a user. Separate from join tokens: they carry
//! `typ: "access"` and no room, so neither kind is accepted where the other is expected.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::token::unix_now;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// User id.
    pub sub: String,
    pub username: String,
    pub typ: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Clone)]
pub struct AccessKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub ttl: Duration,
}

impl AccessKeys {
    /// Derived from the server secret with a distinct context, so an access token's signature
    /// never verifies as a join token's and vice versa.
    pub fn new(server_secret: &[u8], ttl: Duration) -> Self {
        use sha2::{Digest, Sha256};
        let key = Sha256::new()
            .chain_update(b"convene access token v1")
            .chain_update(server_secret)
            .finalize();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
            ttl,
        }
    }

    pub fn issue(&self, user_id: &str, username: &str) -> String {
        let now = unix_now();
        let claims = AccessClaims {
            sub: user_id.to_owned(),
            username: username.to_owned(),
            typ: "access".to_owned(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        (claims.typ == "access").then_some(claims)
    }
}

/// Proof that its holder is the participant parked in a meeting's waiting room: presented to the
/// join endpoint again, it claims the admission once a moderator has admitted them. Guests have
/// no account, so without it an admitted guest could not be recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitClaims {
    /// Participant id.
    pub sub: String,
    pub meeting: String,
    pub typ: String,
    pub exp: u64,
}

impl AccessKeys {
    pub fn issue_wait(&self, participant_id: &str, meeting_id: &str, ttl: Duration) -> String {
        let claims = WaitClaims {
            sub: participant_id.to_owned(),
            meeting: meeting_id.to_owned(),
            typ: "wait".to_owned(),
            exp: unix_now() + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify_wait(&self, token: &str) -> Option<WaitClaims> {
        let claims = jsonwebtoken::decode::<WaitClaims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        (claims.typ == "wait").then_some(claims)
    }
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKeys(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_verify() {
        let keys = AccessKeys::new(b"secret", Duration::from_secs(60));
        let token = keys.issue("u1", "alice");
        assert_eq!(keys.verify(&token).unwrap().sub, "u1");
        assert!(AccessKeys::new(b"other", Duration::from_secs(60))
            .verify(&token)
            .is_none());
        assert!(keys.verify("garbage").is_none());
    }

    #[test]
    fn wait_and_access_tokens_are_not_interchangeable() {
        let keys = AccessKeys::new(b"secret", Duration::from_secs(60));
        let wait = keys.issue_wait("p1", "m1", Duration::from_secs(60));
        assert_eq!(keys.verify_wait(&wait).unwrap().meeting, "m1");
        assert!(keys.verify(&wait).is_none());
        assert!(keys.verify_wait(&keys.issue("u1", "alice")).is_none());
    }
}
