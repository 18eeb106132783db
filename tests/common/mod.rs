//! Shared by the integration tests: a real Convene server on ephemeral ports, and join tokens.
#![allow(dead_code)]

pub mod api;
pub mod browser;
pub mod client;
pub mod media;
pub mod netns;
pub mod process;
pub mod redis;
pub mod turn_client;

use std::time::Duration;

use convene::config::Config;
use convene::domain::token::{Grants, JoinClaims};
use convene::Server;

pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
    _data_dir: TempDir,
    _schema: Option<PgSchema>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server listening (HTTP and media) on the host's end of `link` only.
    pub async fn on_link(link: &netns::Link) -> Self {
        Self::on_link_with(link, |_| {}).await
    }

    /// The same, after `adjust` edits the config.
    pub async fn on_link_with(link: &netns::Link, adjust: impl FnOnce(&mut Config)) -> Self {
        let host_ip = link.host_ip;
        Self::start_with(|c| {
            c.http = std::net::SocketAddr::new(host_ip.into(), 0);
            c.media_bind_ip = host_ip.into();
            adjust(c);
        })
        .await
    }

    /// Starts a server on 127.0.0.1 with port 0 for HTTP and media, after `adjust` edits the config.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        convene::telemetry::init(convene::config::LogFormat::Pretty);
        let data_dir = TempDir::new();
        let schema = PgSchema::create().await;
        let mut config = Config {
            http: "127.0.0.1:0".parse().unwrap(),
            media_udp_port: 0,
            media_bind_ip: "127.0.0.1".parse().unwrap(),
            data_dir: data_dir.0.clone(),
            ice_disconnected_timeout: Duration::from_secs(2),
            ice_failed_timeout: Duration::from_secs(3),
            database_url: schema.as_ref().map(|s| s.url.clone()).unwrap_or_default(),
            // Every test client comes from 127.0.0.1: limits are tested on their own.
            rate_limit_auth_per_minute: 100_000,
            rate_limit_general_per_minute: 100_000,
            rate_limit_meeting_create_per_hour: 100_000,
            rate_limit_media_per_minute: 100_000,
            rate_limit_media_per_identity_per_minute: 100_000,
            // A test machine's disk may be small: recordings here are a few MB.
            recording_min_free_bytes: 16 * 1024 * 1024,
            ..Config::default()
        };
        adjust(&mut config);
        let server = Server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.http_addr);
        Self {
            server,
            base,
            // The server closes a keep-alive connection idle for `http_header_read_timeout` (10 s):
            // a pooled one is never kept that long, or a request sent as it closes is reset.
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            _data_dir: data_dir,
            _schema: schema,
        }
    }

    pub fn token(&self, room: &str, identity: &str, publish: bool, subscribe: bool) -> String {
        let grants = Grants {
            publish,
            subscribe,
            ..Default::default()
        };
        self.server.state.keys.sign(&JoinClaims::new(
            room,
            identity,
            grants,
            Duration::from_secs(600),
        ))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `/api/v1{path}` on this server.
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.base, path)
    }

    pub async fn metrics(&self) -> String {
        // A pooled keep-alive connection the server closed meanwhile (header-read or idle
        // timeout) fails once; a GET is safe to send again.
        let mut attempt = 0;
        loop {
            match self.http.get(self.url("/metrics")).send().await {
                Ok(response) => return response.text().await.unwrap(),
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "metrics request retried");
                }
                Err(e) => panic!("GET /metrics failed: {e}"),
            }
        }
    }

    /// The value of an unlabelled metric, e.g. `convene_rooms`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Polls `name` until it equals `expected` or `within` passes; returns the last value.
    pub async fn wait_metric(&self, name: &str, expected: f64, within: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let value = self.metric(name).await;
            if value == expected || tokio::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("convene-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// With `DATABASE_URL=postgres://…` set, each server gets a schema of its own in that database
/// (dropped afterwards), so tests running in parallel never see each other's rows. Without it,
/// servers use SQLite in their temporary data dir.
pub struct PgSchema {
    pub url: String,
    base: String,
    name: String,
}

impl PgSchema {
    pub async fn create() -> Option<Self> {
        let base = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres"))?;
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
            .await
            .expect("DATABASE_URL reachable");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
        Some(Self { url, base, name })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs inside the test's runtime; a thread with its own runtime may block.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&base).await
                {
                    let _ = sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
