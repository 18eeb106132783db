//! Convene: a WebRTC SFU with signaling, meetings and auth in one binary.
//!
//! Module map:
//! - [`config`]: one typed `Config` (defaults < convene.toml < CONVENE_* env < flags).
//! - [`app`]: wires everything (the top layer); [`app::Server`] is what `main` and the tests start.
//! - [`state`]: `AppState`, below `api`, `signaling` and `web`; [`http_error`]: the error
//!   envelope at the HTTP edge; [`ratelimit`]: per-address and per-identity limits.
//! - [`http_server`]: the accept loop with connection cap, header-read and idle timeouts.
//! - [`sfu`]: the data plane: one engine per core (own thread, port, rooms), sans-I/O peer
//!   connections, forwarding.
//! - [`signaling`]: WHIP/WHEP resources, WebSocket signaling (`/ws`), join-token checks.
//! - [`api`]: REST under /api/v1 (accounts, meetings, moderation, chat), health, metrics.
//! - [`domain`]: rules that are not HTTP (tokens, passwords, roles and grants, the
//!   `LiveMeetings` interface REST tells live meetings through).
//! - [`store`]: sqlx repositories over SQLite (default) or PostgreSQL.
//! - [`web`]: the browser meeting client (embedded static files) and the WHIP/WHEP demo page.
//! - [`load`]: `convene load`, a WHIP/WHEP load generator (any server, not only ours).
//! - [`cluster`]: cluster mode: this node in the Redis node registry, and the registry.
//! - [`turn`]: the embedded TURN server and the ICE servers (with TURN credentials) clients get.
//! - [`metrics`], [`telemetry`], [`ids`], [`net`]: Prometheus metrics, logging, typed ids,
//!   address helpers.

pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod http_error;
pub mod http_server;
pub mod ids;
pub mod load;
pub mod metrics;
pub mod net;
pub mod ratelimit;
pub mod recording;
pub mod sfu;
pub mod signaling;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod turn;
pub mod web;
pub mod webhooks;

pub use app::Server;
pub use config::Config;

/// Runs a server until `shutdown` resolves, then stops it gracefully.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    shutdown.await;
    server.shutdown().await;
    Ok(())
}
