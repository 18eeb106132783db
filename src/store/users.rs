//! User accounts. Emails are stored lowercased, so uniqueness is case-insensitive.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{flag, map_unique, now_ms, opt, Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub avatar_url: Option<String>,
    pub pref_mic_muted: bool,
    pub pref_camera_off: bool,
    pub failed_logins: i64,
    pub locked_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub username: &'a str,
    pub display_name: &'a str,
    pub password_hash: &'a str,
}

const USER_COLUMNS: &str =
    "id, email, username, display_name, password_hash, avatar_url, pref_mic_muted, \
     pref_camera_off, failed_logins, locked_until, created_at, updated_at";

fn user_from_row(row: &AnyRow) -> StoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        username: row.try_get("username")?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        avatar_url: opt(row, "avatar_url")?,
        pref_mic_muted: flag(row, "pref_mic_muted")?,
        pref_camera_off: flag(row, "pref_camera_off")?,
        failed_logins: row.try_get("failed_logins")?,
        locked_until: opt(row, "locked_until")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Creates a user. A taken email or username is [`StoreError::Conflict`] naming the column.
    pub async fn insert_user(&self, new: NewUser<'_>) -> StoreResult<User> {
        let id = super::new_id();
        let now = now_ms();
        let email = new.email.trim().to_lowercase();
        let result = sqlx::query(
            "INSERT INTO users (id, email, username, display_name, password_hash, pref_mic_muted, \
             pref_camera_off, failed_logins, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 0, 0, 0, $6, $6)",
        )
        .bind(&id)
        .bind(&email)
        .bind(new.username)
        .bind(new.display_name)
        .bind(new.password_hash)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result.map_err(map_unique) {
            Ok(_) => self.user(&id).await,
            Err(StoreError::Conflict(what)) => {
                let column = if what.contains("email") {
                    "email"
                } else {
                    "username"
                };
                Err(StoreError::Conflict(column.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    pub async fn user(&self, id: &str) -> StoreResult<User> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(user_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    /// By email (any case) or username.
    pub async fn user_by_login(&self, login: &str) -> StoreResult<User> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1 OR username = $2");
        let row = sqlx::query(&sql)
            .bind(login.trim().to_lowercase())
            .bind(login.trim())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(user_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }
}
