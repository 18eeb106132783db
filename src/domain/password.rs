//! Passwords: argon2id, hashed and verified on the blocking pool (tens of milliseconds of CPU
//! must not stall the async workers).

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

/// Length policy, counted in characters.
pub fn check_policy(password: &str, min: usize, max: usize) -> Result<(), String> {
    let length = password.chars().count();
    if length < min {
        return Err(format!("must be at least {min} characters"));
    }
    if length > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(())
}

pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("argon2 hash failed: {e}"))
    })
    .await?
}

pub async fn verify(password: String, stored_hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored_hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A valid hash of a password nobody knows, verified against when a login names no account, so
/// unknown and known logins take the same time (no user enumeration by timing).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .expect("hashing random bytes cannot fail")
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hash = hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify("correct horse".into(), hash.clone()).await);
        assert!(!verify("wrong horse".into(), hash).await);
        assert!(!verify("x".into(), "not a hash".into()).await);
    }

    #[test]
    fn policy() {
        assert!(check_policy("short", 8, 128).is_err());
        assert!(check_policy("long enough", 8, 128).is_ok());
        assert!(check_policy(&"x".repeat(129), 8, 128).is_err());
    }
}
