//! Stateless nonces: `hex(issued seconds) . hex(HMAC(key, issued | client address))`. The server
//! keeps nothing per client before it authenticates, so spoofed sources cannot grow its memory;
//! a nonce is bound to the address it was given to and goes stale after its lifetime (438).

use std::net::SocketAddr;

use hmac::{Hmac, Mac};

pub struct Nonces {
    key: [u8; 32],
    lifetime_secs: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Valid,
    /// Ours, for this client, but older than the lifetime: the client retries with a fresh one.
    Stale,
    /// Not a nonce we gave this client.
    Invalid,
}

impl Nonces {
    pub fn new(lifetime_secs: u64) -> Self {
        Self {
            key: rand::random(),
            lifetime_secs,
        }
    }

    pub fn issue(&self, client: SocketAddr, now_secs: u64) -> String {
        format!("{now_secs:016x}{}", self.tag(client, now_secs))
    }

    pub fn check(&self, nonce: &str, client: SocketAddr, now_secs: u64) -> Check {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return Check::Invalid;
        }
        let (issued, tag) = nonce.split_at(16);
        let Ok(issued) = u64::from_str_radix(issued, 16) else {
            return Check::Invalid;
        };
        // Constant-time: the tag is a MAC.
        use subtle::ConstantTimeEq;
        if !bool::from(self.tag(client, issued).as_bytes().ct_eq(tag.as_bytes())) {
            return Check::Invalid;
        }
        if issued > now_secs || now_secs - issued >= self.lifetime_secs {
            return Check::Stale;
        }
        Check::Valid
    }

    fn tag(&self, client: SocketAddr, issued: u64) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(&issued.to_be_bytes());
        mac.update(client.to_string().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_valid_for_its_client_and_its_lifetime() {
        let nonces = Nonces::new(600);
        let alice: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mallory: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let nonce = nonces.issue(alice, 1_000);
        assert_eq!(nonces.check(&nonce, alice, 1_599), Check::Valid);
        assert_eq!(nonces.check(&nonce, alice, 1_600), Check::Stale);
        assert_eq!(nonces.check(&nonce, mallory, 1_000), Check::Invalid);
        assert_eq!(
            Nonces::new(600).check(&nonce, alice, 1_000),
            Check::Invalid,
            "another server's key"
        );
        let mut forged = nonce.clone();
        forged.replace_range(0..16, &format!("{:016x}", 1_500));
        assert_eq!(nonces.check(&forged, alice, 1_550), Check::Invalid);
        for junk in ["", "zz", "é", &"0".repeat(32), &"x".repeat(32)] {
            assert_eq!(nonces.check(junk, alice, 1_000), Check::Invalid, "{junk}");
        }
    }
}
