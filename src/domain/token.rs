//! Join tokens: the JWTs that admit a client to a room's media.
//!
//! Shape (see ARCHITECTURE.md): `sub` (identity), `name`, `room`, `exp`, `nbf`, `grants`.
//! HS256 with one server key, configured or generated once into the data dir, so `serve` and
//! `token create` agree without any other setup.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token holder may do in its room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
    /// Sources the holder may publish (camera, microphone, screen, screen_audio). Empty: all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish_sources: Vec<String>,
    pub chat: bool,
    pub moderate: bool,
    pub record: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// Participant identity, unique within a room.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub room: String,
    pub exp: u64,
    pub nbf: u64,
    #[serde(default)]
    pub grants: Grants,
    /// The participant row (seat) a meeting join token was issued for. Media sessions are
    /// refused once that seat is no longer `joined`, which is how a token is revoked before it
    /// expires (see `domain::admission`). Absent in tokens of standalone rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is invalid")]
    Invalid,
}

/// Signs and verifies join tokens with the server's one key.
#[derive(Clone)]
pub struct TokenKeys {
    /// Kept to derive the REST access-token key from the same server secret.
    secret: std::sync::Arc<[u8]>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "sub"]);
        Self {
            secret: secret.into(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The configured secret, else the key file in `data_dir`, created on first use.
    pub fn load_or_create(configured: &str, key_path: &Path) -> std::io::Result<Self> {
        if !configured.is_empty() {
            return Ok(Self::from_secret(configured.as_bytes()));
        }
        match std::fs::read_to_string(key_path) {
            Ok(text) => {
                let key = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                Ok(Self::from_secret(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = key_path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let key: [u8; 32] = rand::random();
                let encoded = base64::engine::general_purpose::STANDARD.encode(key);
                // create_new: two processes starting at once must not overwrite each other's key.
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(key_path) {
                    Ok(mut file) => {
                        file.write_all(encoded.as_bytes())?;
                        Ok(Self::from_secret(&key))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(configured, key_path)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// What a node puts in `x-convene-forwarded` when it hands a request to the node owning
    /// its meeting: derived from the server secret, which every node of a cluster shares.
    pub fn cluster_forward_key(&self) -> String {
        self.derived(b"convene cluster forward v1")
    }

    /// What a node sends with a cascade relay request (its own key: the REST forward never
    /// carries it, so no path through a forward reaches the relay routes).
    pub fn cluster_relay_key(&self) -> String {
        self.derived(b"convene cluster relay v1")
    }

    /// What a node signs its cluster registry entry with (and checks the others' against).
    pub fn cluster_registry_key(&self) -> String {
        self.derived(b"convene cluster registry v1")
    }

    fn derived(&self, label: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(
            Sha256::new()
                .chain_update(label)
                .chain_update(&*self.secret)
                .finalize(),
        )
    }

    /// The REST access-token keys, derived from the same server secret.
    pub fn access_keys(&self, ttl: Duration) -> super::access::AccessKeys {
        super::access::AccessKeys::new(&self.secret, ttl)
    }

    pub fn sign(&self, claims: &JoinClaims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of serializable claims cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<JoinClaims, TokenError> {
        self.decode(token, &self.validation)
    }

    /// Verifies the signature and the claims but not the expiry: for managing a media session
    /// the holder already created (PATCH, DELETE), which outlives a short-lived join token. The
    /// session itself is bound to the identity, and kicks, bans and meeting ends close it.
    pub fn verify_ignoring_expiry(&self, token: &str) -> Result<JoinClaims, TokenError> {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["nbf", "sub"]);
        self.decode(token, &validation)
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<JoinClaims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<JoinClaims>(token, &self.decoding, validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Invalid,
            })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JoinClaims {
    pub fn new(room: &str, identity: &str, grants: Grants, ttl: Duration) -> Self {
        let now = unix_now();
        Self {
            sub: identity.to_owned(),
            name: None,
            room: room.to_owned(),
            nbf: now,
            exp: now + ttl.as_secs(),
            grants,
            pid: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        Grants {
            publish: true,
            subscribe: true,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let keys = TokenKeys::from_secret(b"secret");
        let claims = JoinClaims::new("room", "alice", grants(), Duration::from_secs(60));
        assert_eq!(keys.verify(&keys.sign(&claims)).unwrap(), claims);
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let keys = TokenKeys::from_secret(b"secret");
        let mut claims = JoinClaims::new("room", "alice", grants(), Duration::from_secs(60));
        claims.exp = unix_now() - 100;
        claims.nbf = unix_now() - 200;
        assert_eq!(keys.verify(&keys.sign(&claims)), Err(TokenError::Expired));

        let other = TokenKeys::from_secret(b"other");
        let fresh = JoinClaims::new("room", "alice", grants(), Duration::from_secs(60));
        assert_eq!(keys.verify(&other.sign(&fresh)), Err(TokenError::Invalid));
        assert_eq!(keys.verify("not.a.jwt"), Err(TokenError::Invalid));
    }

    #[test]
    fn session_management_tolerates_expiry_only() {
        let keys = TokenKeys::from_secret(b"secret");
        let mut claims = JoinClaims::new("room", "alice", grants(), Duration::from_secs(60));
        claims.exp = unix_now() - 100;
        claims.nbf = unix_now() - 200;
        let token = keys.sign(&claims);
        assert_eq!(keys.verify_ignoring_expiry(&token).unwrap(), claims);
        let other = TokenKeys::from_secret(b"other");
        assert_eq!(
            keys.verify_ignoring_expiry(&other.sign(&claims)),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("convene-key-{}", uuid::Uuid::now_v7()));
        let path = dir.join("jwt.key");
        let first = TokenKeys::load_or_create("", &path).unwrap();
        let second = TokenKeys::load_or_create("", &path).unwrap();
        let claims = JoinClaims::new("r", "i", grants(), Duration::from_secs(60));
        assert!(second.verify(&first.sign(&claims)).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
