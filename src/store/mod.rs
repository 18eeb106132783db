//! Persistent storage: sqlx over SQLite (default, a file in the data dir) or PostgreSQL
//! (`database_url = "postgres://…"`), through sqlx's Any driver so every repository runs the same
//! SQL on both. Portable types only: ids are UUID text, times unix milliseconds, flags BOOLEAN.
//! Migrations live per backend in `migrations/{sqlite,postgres}` and run on start.
//!
//! Never uses `sqlx::query!` (it cannot check queries against the Any driver); one conformance
//! suite (`tests/store.rs`) runs every repository against both backends instead.

pub mod chat;
pub mod meetings;
pub mod moderation;
pub mod participants;
pub mod recordings;
pub mod sessions;
pub mod tokens;
pub mod users;
pub mod webhooks;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Cheap to clone: the pool inside is shared.
#[derive(Clone)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
    /// Where webhook events are written (no endpoints: nowhere).
    pub outbox: webhooks::Outbox,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint was violated; the payload names the constraint or column.
    #[error("conflict on {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl Store {
    /// `database_url` empty: SQLite at `data_dir/convene.db`, created on first start.
    pub async fn connect(database_url: &str, data_dir: &Path) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let (url, backend) = if database_url.is_empty() {
            let path = data_dir.join("convene.db");
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                Backend::Sqlite,
            )
        } else if database_url.starts_with("postgres") {
            (database_url.to_owned(), Backend::Postgres)
        } else {
            (database_url.to_owned(), Backend::Sqlite)
        };
        let max_connections = if backend == Backend::Sqlite { 4 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        let store = Self {
            pool,
            backend,
            outbox: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
            Backend::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// The same store, writing webhook events for `endpoints`.
    pub fn with_outbox(mut self, outbox: webhooks::Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// Readiness: the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// Milliseconds since the Unix epoch, the one time representation in the database.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Turns a unique-constraint violation into [`StoreError::Conflict`], whichever backend raised it.
pub fn map_unique(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            let what = db
                .constraint()
                .map(str::to_owned)
                .unwrap_or_else(|| db.message().to_owned());
            return StoreError::Conflict(what);
        }
    }
    StoreError::Database(error)
}

/// Reads an optional column that may be NULL.
pub fn opt<'r, T>(row: &'r AnyRow, column: &str) -> StoreResult<Option<T>>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row;
    Ok(row.try_get::<Option<T>, _>(column)?)
}

/// Reads a 0/1 flag column as a bool.
pub fn flag(row: &AnyRow, column: &str) -> StoreResult<bool> {
    use sqlx::Row;
    Ok(row.try_get::<i64, _>(column)? != 0)
}
