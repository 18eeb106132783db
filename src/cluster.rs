//! Cluster mode (when `redis_url` is set): this node's entry in the node registry in Redis, kept
//! by a heartbeat with a TTL, and the registry read back. A node that stops renewing its entry
//! is gone once the TTL passes. Without Redis (down, or never reached) the node keeps serving
//! what it has, reports `degraded` (`/readyz`, `convene_cluster_redis_up`) and registers again
//! when Redis returns. See `docs/cluster.md`.
//!
//! Why redis-rs: the maintained Rust client (redis-rs org), with a tokio connection manager that
//! reconnects by itself; fred is the other candidate, heavier for what a registry needs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::metrics::Metrics;

const NODES: &str = "convene:nodes";

fn node_key(id: &str) -> String {
    format!("convene:node:{id}")
}

/// A node as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeEntry {
    pub id: String,
    /// Where clients reach its HTTP API, signaling and WHIP/WHEP.
    pub http_url: String,
    /// Its media engines' addresses as announced to clients (ICE host candidates).
    pub media: Vec<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    pub load: NodeLoad,
}

/// What the placement score reads (docs/cluster.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeLoad {
    pub peers: i64,
    pub rooms: i64,
    /// The process's CPU over the last heartbeat, in percent of one core.
    pub cpu_percent: f64,
    /// Media sent over the last heartbeat, bits per second.
    pub forwarded_bps: f64,
}

pub struct ClusterSettings {
    pub redis_url: String,
    pub node_id: String,
    pub http_url: String,
    pub media: Vec<SocketAddr>,
    pub heartbeat: Duration,
    pub ttl: Duration,
}

/// The cluster membership of this node; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    redis_up: AtomicBool,
    heartbeat: Duration,
    ttl: Duration,
    metrics: Metrics,
}

impl Cluster {
    /// Joins the cluster: the heartbeat runs until the last handle is dropped. Fails only on a
    /// malformed `redis_url`; an unreachable Redis is retried every heartbeat.
    pub fn start(settings: ClusterSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
        let inner = Arc::new(Inner {
            id: settings.node_id.clone(),
            client,
            connection: Mutex::new(None),
            redis_up: AtomicBool::new(false),
            heartbeat: settings.heartbeat,
            ttl: settings.ttl,
            metrics,
        });
        let started_at = chrono::Utc::now();
        let weak = Arc::downgrade(&inner);
        info!(node = %settings.node_id, "cluster mode: registering with Redis");
        tokio::spawn(async move {
            let mut every = tokio::time::interval(settings.heartbeat);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sampler = LoadSampler::new();
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let entry = NodeEntry {
                    id: settings.node_id.clone(),
                    http_url: settings.http_url.clone(),
                    media: settings.media.iter().map(ToString::to_string).collect(),
                    started_at,
                    heartbeat_at: chrono::Utc::now(),
                    load: sampler.sample(&inner.metrics),
                };
                let result = inner.register(&entry).await;
                inner.set_up(result.is_ok(), result.err());
            }
        });
        Ok(Self { inner })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.id
    }

    /// Whether Redis answered the last heartbeat (false: degraded, serving what it has).
    pub fn redis_up(&self) -> bool {
        self.inner.redis_up.load(Ordering::Relaxed)
    }

    /// Every node whose entry has not expired; forgets the ids of those that have.
    pub async fn nodes(&self) -> redis::RedisResult<Vec<NodeEntry>> {
        let mut connection = self.inner.connection().await?;
        let ids: Vec<String> = connection.smembers(NODES).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
        let values: Vec<Option<String>> = connection.mget(&keys).await?;
        let mut nodes = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.and_then(|v| serde_json::from_str::<NodeEntry>(&v).ok()) {
                Some(entry) => nodes.push(entry),
                None => {
                    let _: redis::RedisResult<()> = connection.srem(NODES, id).await;
                }
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Leaves the registry at once (a graceful stop), instead of after the TTL.
    pub async fn leave(&self) {
        if let Ok(mut connection) = self.inner.connection().await {
            let key = node_key(&self.inner.id);
            let _: redis::RedisResult<()> = connection.del(&key).await;
            let _: redis::RedisResult<()> = connection.srem(NODES, &self.inner.id).await;
        }
    }
}

impl Inner {
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        // Bounded waits: a heartbeat must not hang on a dead server.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.heartbeat))
            .set_response_timeout(Some(self.heartbeat))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn register(&self, entry: &NodeEntry) -> redis::RedisResult<()> {
        let mut connection = self.connection().await?;
        let value = serde_json::to_string(entry).expect("a node entry serializes");
        let ttl = self.ttl.as_millis().max(1) as u64;
        redis::pipe()
            .atomic()
            .pset_ex(node_key(&entry.id), value, ttl)
            .ignore()
            .sadd(NODES, &entry.id)
            .ignore()
            .query_async(&mut connection)
            .await
    }

    fn set_up(&self, up: bool, error: Option<redis::RedisError>) {
        let was = self.redis_up.swap(up, Ordering::Relaxed);
        self.metrics.cluster_redis_up.set(i64::from(up));
        match (was, up) {
            (false, true) => info!(node = %self.id, "cluster: registered with Redis"),
            (true, false) => warn!(
                node = %self.id,
                error = ?error,
                "cluster: Redis unreachable, serving the rooms this node has (degraded)"
            ),
            _ => {}
        }
    }
}

/// The process's CPU and the media it sent between two heartbeats.
struct LoadSampler {
    at: Instant,
    cpu: f64,
    bytes_out: u64,
}

impl LoadSampler {
    fn new() -> Self {
        Self {
            at: Instant::now(),
            cpu: process_cpu_seconds(),
            bytes_out: 0,
        }
    }

    fn sample(&mut self, metrics: &Metrics) -> NodeLoad {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64().max(1e-3);
        let cpu = process_cpu_seconds();
        let bytes_out = metrics.rtp_bytes_out.get();
        let load = NodeLoad {
            peers: metrics.peers.get(),
            rooms: metrics.rooms.get(),
            cpu_percent: ((cpu - self.cpu) / elapsed * 100.0).max(0.0),
            forwarded_bps: (bytes_out.saturating_sub(self.bytes_out) * 8) as f64 / elapsed,
        };
        (self.at, self.cpu, self.bytes_out) = (now, cpu, bytes_out);
        load
    }
}

fn process_cpu_seconds() -> f64 {
    crate::load::procfs::cpu_seconds(std::process::id()).unwrap_or(0.0)
}
