//! Refresh tokens: opaque, single use, rotated within a family.
//!
//! A token is 32 random bytes (base64url, no padding) handed to the client once; only its SHA-256
//! (hex) is stored, so a database leak yields no usable token. Each login starts a family; each
//! refresh marks the presented token used and issues the next one in the same family. A token
//! presented a second time means someone else holds a copy, so the whole family is revoked and
//! both holders must sign in again (OAuth 2.0 Security BCP, refresh token rotation).
//!
//! This module is the only place that turns a presented token into its hash.

use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{new_id, now_ms, Store, StoreResult};

/// A newly issued refresh token: the plaintext goes to the client and is never stored.
#[derive(Debug, Clone)]
pub struct IssuedRefreshToken {
    pub token: String,
    pub family_id: String,
    pub expires_at: i64,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was valid and is now used; `next` replaces it in the same family.
    Rotated { user_id: String, next: String },
    /// The token had been used before: its family is now revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

/// 32 random bytes from the OS-seeded CSPRNG, base64url without padding (43 characters).
fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 hex: a plain (unsalted) hash is enough because the input is 256 random bits.
fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn expiry(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

impl Store {
    /// Issues a token for `user_id`; a new family unless `family_id` continues one.
    pub async fn issue_refresh_token(
        &self,
        user_id: &str,
        family_id: Option<&str>,
        ttl: Duration,
    ) -> StoreResult<IssuedRefreshToken> {
        let token = generate_token();
        let family_id = family_id.map(str::to_owned).unwrap_or_else(new_id);
        let now = now_ms();
        let expires_at = expiry(now, ttl);
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_id())
        .bind(user_id)
        .bind(&family_id)
        .bind(hash_token(&token))
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(IssuedRefreshToken {
            token,
            family_id,
            expires_at,
        })
    }

    /// Uses `presented` once and issues its successor, atomically.
    ///
    /// The conditional UPDATE is the "use once" guard: of two concurrent refreshes with the same
    /// token only one matches `used_at IS NULL` (PostgreSQL re-checks the row after the other's
    /// commit; SQLite serializes writers). Marking and issuing the successor share a transaction,
    /// so a losing request that revokes the family also revokes the winner's successor.
    pub async fn rotate_refresh_token(
        &self,
        presented: &str,
        ttl: Duration,
    ) -> StoreResult<RefreshOutcome> {
        let hash = hash_token(presented);
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $2 \
             WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
             RETURNING user_id, family_id",
        )
        .bind(&hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = claimed {
            let user_id: String = row.try_get("user_id")?;
            let family_id: String = row.try_get("family_id")?;
            let next = generate_token();
            sqlx::query(
                "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id())
            .bind(&user_id)
            .bind(&family_id)
            .bind(hash_token(&next))
            .bind(expiry(now, ttl))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Rotated { user_id, next });
        }
        tx.rollback().await?;

        // Not claimable: find out why, to tell reuse (revoke the family) from plain invalidity.
        let used = sqlx::query(
            "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NOT NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        match used {
            Some(row) => {
                let family_id: String = row.try_get("family_id")?;
                self.revoke_refresh_family(&family_id).await?;
                tracing::warn!(family = %family_id, "refresh token reused; family revoked");
                Ok(RefreshOutcome::Reused)
            }
            None => Ok(RefreshOutcome::Invalid),
        }
    }

    /// Revokes every token of the family `presented` belongs to (logout). False when unknown.
    pub async fn revoke_refresh_family_of(&self, presented: &str) -> StoreResult<bool> {
        let row = sqlx::query("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(hash_token(presented))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let family_id: String = row.try_get("family_id")?;
        self.revoke_refresh_family(&family_id).await?;
        Ok(true)
    }

    pub async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Revokes every refresh token of a user (logout everywhere, password change).
    pub async fn revoke_user_refresh_tokens(&self, user_id: &str) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_urlsafe_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let hash = hash_token(&a);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, hash_token(&a));
        assert_ne!(hash, hash_token(&b));
    }
}
