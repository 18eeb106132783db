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

    /// Counts one more failed login; returns the count after it. One statement, so concurrent
    /// failures are all counted.
    pub async fn record_failed_login(&self, id: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 \
             RETURNING failed_logins",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(row.try_get("failed_logins")?)
    }

    /// Refuses logins of this account until `until` (unix ms).
    pub async fn lock_user_until(&self, id: &str, until: i64) -> StoreResult<()> {
        sqlx::query("UPDATE users SET locked_until = $2 WHERE id = $1")
            .bind(id)
            .bind(until)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// After a successful login: the failure streak and any lock are forgotten.
    pub async fn clear_failed_logins(&self, id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_password_hash(&self, id: &str, password_hash: &str) -> StoreResult<()> {
        let result =
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(password_hash)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Applies the fields that are `Some` (one UPDATE, so concurrent edits of different fields
    /// do not overwrite each other) and returns the user as stored.
    pub async fn update_user_profile(&self, id: &str, update: &ProfileUpdate) -> StoreResult<User> {
        // Not sqlx::QueryBuilder: over the Any driver it writes `?` placeholders, which
        // PostgreSQL refuses. The SQL is built from static column names only; every value is
        // bound.
        let mut sets = vec!["updated_at = $2".to_owned()];
        let mut next = 3;
        let mut placeholder = |column: &str, sets: &mut Vec<String>| {
            sets.push(format!("{column} = ${next}"));
            next += 1;
        };
        if update.display_name.is_some() {
            placeholder("display_name", &mut sets);
        }
        match &update.avatar_url {
            Some(Some(_)) => placeholder("avatar_url", &mut sets),
            Some(None) => sets.push("avatar_url = NULL".to_owned()),
            None => {}
        }
        if update.pref_mic_muted.is_some() {
            placeholder("pref_mic_muted", &mut sets);
        }
        if update.pref_camera_off.is_some() {
            placeholder("pref_camera_off", &mut sets);
        }
        let sql = format!("UPDATE users SET {} WHERE id = $1", sets.join(", "));
        let mut query = sqlx::query(&sql).bind(id).bind(now_ms());
        if let Some(display_name) = &update.display_name {
            query = query.bind(display_name.clone());
        }
        if let Some(Some(avatar_url)) = &update.avatar_url {
            query = query.bind(avatar_url.clone());
        }
        // Flags are BIGINT 0/1 on both backends (see the migration).
        if let Some(muted) = update.pref_mic_muted {
            query = query.bind(i64::from(muted));
        }
        if let Some(off) = update.pref_camera_off {
            query = query.bind(i64::from(off));
        }
        let result = query.execute(&self.pool).await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.user(id).await
    }
}

/// A partial profile edit; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    pub display_name: Option<String>,
    /// `Some(None)` clears the avatar.
    pub avatar_url: Option<Option<String>>,
    pub pref_mic_muted: Option<bool>,
    pub pref_camera_off: Option<bool>,
}
