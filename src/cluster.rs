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
    /// This run of the node (a restart with the same id is another instance): a stopping node
    /// removes only its own entry.
    #[serde(default)]
    pub instance: String,
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
    /// How long a room's placement stands without its owner renewing it.
    pub room_ttl: Duration,
    /// Signs this node's registry entry and checks the others' (the cluster's shared secret,
    /// derived): an entry written by anyone else, who could send clients and forwarded
    /// requests to an address of their choosing, is ignored.
    pub signing_key: String,
}

/// The cluster membership of this node; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    instance: String,
    signing_key: String,
    /// Set when the node stops: the heartbeat registers no more.
    leaving: AtomicBool,
    http_url: String,
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    redis_up: AtomicBool,
    heartbeat: Duration,
    ttl: Duration,
    room_ttl: Duration,
    metrics: Metrics,
    /// The rooms this node serves now (its SFU's and its room tasks'), set once wiring is done.
    held: std::sync::OnceLock<HeldRooms>,
}

/// Lists the rooms this node serves, for the heartbeat to renew their placement.
pub type HeldRooms = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// Where a room is served.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// Here: placed on this node, or Redis is away (a node then serves what reaches it).
    Here,
    /// Another live node.
    Node(NodeEntry),
}

impl Cluster {
    /// Joins the cluster: registers once before returning (so the node routes from its first
    /// request; an unreachable Redis leaves it degraded), then the heartbeat runs until the
    /// node leaves or the last handle is dropped. Fails only on a malformed `redis_url`.
    pub async fn start(settings: ClusterSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
        let inner = Arc::new(Inner {
            id: settings.node_id.clone(),
            instance: uuid::Uuid::now_v7().simple().to_string(),
            signing_key: settings.signing_key.clone(),
            leaving: AtomicBool::new(false),
            http_url: settings.http_url.clone(),
            client,
            connection: Mutex::new(None),
            redis_up: AtomicBool::new(false),
            heartbeat: settings.heartbeat,
            ttl: settings.ttl,
            room_ttl: settings.room_ttl,
            metrics,
            held: std::sync::OnceLock::new(),
        });
        let started_at = chrono::Utc::now();
        info!(node = %settings.node_id, "cluster mode: registering with Redis");
        let mut sampler = LoadSampler::new();
        let beat = move |inner: &Inner, sampler: &mut LoadSampler| NodeEntry {
            id: settings.node_id.clone(),
            http_url: settings.http_url.clone(),
            media: settings.media.iter().map(ToString::to_string).collect(),
            started_at,
            heartbeat_at: chrono::Utc::now(),
            load: sampler.sample(&inner.metrics),
            instance: inner.instance.clone(),
        };
        let first = beat(&inner, &mut sampler);
        inner.heartbeat(&first).await;
        let weak = Arc::downgrade(&inner);
        let every = settings.heartbeat;
        tokio::spawn(async move {
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.leaving.load(Ordering::Relaxed) {
                    return;
                }
                let entry = beat(&inner, &mut sampler);
                inner.heartbeat(&entry).await;
            }
        });
        Ok(Self { inner })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.id
    }

    /// Where clients reach this node (`public_url`, else its HTTP address).
    pub fn http_url(&self) -> &str {
        &self.inner.http_url
    }

    /// Whether Redis answered the last heartbeat (false: degraded, serving what it has).
    pub fn redis_up(&self) -> bool {
        self.inner.redis_up.load(Ordering::Relaxed)
    }

    /// Tells the heartbeat which rooms this node serves (their placement is renewed with it).
    pub fn set_held_rooms(&self, held: HeldRooms) {
        let _ = self.inner.held.set(held);
    }

    /// Where `room` is served, placing it (on the node with the lowest score, docs/cluster.md)
    /// if it has no live owner: it had none, or its owner's entry expired (the owner died),
    /// and then it is placed again. One Lua script does the look-up, the choice and the write,
    /// and Redis runs a script alone: that is the lock, so simultaneous first joins on several
    /// nodes all get the one owner the first script chose. Without Redis: here.
    pub async fn place(&self, room: &str) -> Owner {
        // Known away (the last heartbeat failed): no wait on a dead server for every join; the
        // next heartbeat that reaches Redis turns routing back on.
        if !self.redis_up() {
            return Owner::Here;
        }
        match self.route(room, true).await {
            Ok(Some(owner)) => owner,
            Ok(None) => Owner::Here,
            // One failed call is no outage: the heartbeat decides that.
            Err(e) => {
                warn!(room, error = %e, "cluster: placement failed; serving here");
                Owner::Here
            }
        }
    }

    /// Takes `room` here unless a live node serves it (the renewal's rule): true when it is
    /// this node's now. Without Redis: true (a node serves what it has).
    pub async fn claim(&self, room: &str) -> bool {
        if !self.redis_up() {
            return true;
        }
        let Ok(mut connection) = self.inner.connection().await else {
            return true;
        };
        let ttl = self.inner.room_ttl.as_millis().max(1) as u64;
        renew_script()
            .key(room_key(room))
            .key(served_key(room))
            .arg(ttl)
            .arg(room)
            .arg(&self.inner.id)
            .invoke_async::<i64>(&mut connection)
            .await
            .map_or(true, |taken| taken == 1)
    }

    /// Where `room` is served if it is placed on a live node; None when it is not placed (or
    /// its owner died, or Redis is away): whoever is asked serves it.
    pub async fn owner(&self, room: &str) -> Option<Owner> {
        if !self.redis_up() {
            return None;
        }
        self.route(room, false).await.ok().flatten()
    }

    async fn route(&self, room: &str, place: bool) -> redis::RedisResult<Option<Owner>> {
        let mut connection = self.inner.connection().await?;
        let candidates = if place {
            self.nodes().await?
        } else {
            Vec::new()
        };
        let mut script = placement_script().key(room_key(room));
        script
            .arg(self.inner.room_ttl.as_millis().max(1) as u64)
            .arg(room)
            .arg(ROOM_WEIGHT)
            .arg(if place { 1 } else { 0 });
        for node in &candidates {
            script.arg(&node.id).arg(load_score(&node.load));
        }
        let owner: Option<String> = script.invoke_async(&mut connection).await?;
        let Some(owner) = owner else { return Ok(None) };
        if owner == self.inner.id {
            return Ok(Some(Owner::Here));
        }
        if let Some(entry) = candidates.into_iter().find(|n| n.id == owner) {
            return Ok(Some(Owner::Node(entry)));
        }
        Ok(self.node(&owner).await?.map(Owner::Node))
    }

    /// One node's entry, if it is live.
    pub async fn node(&self, id: &str) -> redis::RedisResult<Option<NodeEntry>> {
        let mut connection = self.inner.connection().await?;
        let value: Option<String> = connection.get(node_key(id)).await?;
        Ok(value.and_then(|v| self.inner.open_entry(&v)))
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
            match value {
                Some(value) => {
                    if let Some(entry) = self.inner.open_entry(&value) {
                        nodes.push(entry);
                    }
                }
                None => {
                    let _: redis::RedisResult<()> = connection.srem(NODES, id).await;
                }
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Leaves the registry at once (a graceful stop), instead of after the TTL, and stops the
    /// heartbeat: a draining node takes no new rooms. Removes the entry only if it is this
    /// run's (a newer run with the same id may have registered meanwhile).
    pub async fn leave(&self) {
        self.inner.leaving.store(true, Ordering::Relaxed);
        if let Ok(mut connection) = self.inner.connection().await {
            let script = redis::Script::new(
                r"
local value = redis.call('GET', KEYS[1])
if value and string.find(value, ARGV[1], 1, true) then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0
",
            );
            let _: redis::RedisResult<()> = script
                .key(node_key(&self.inner.id))
                .key(NODES)
                .arg(format!("\"instance\":\"{}\"", self.inner.instance))
                .arg(&self.inner.id)
                .invoke_async(&mut connection)
                .await;
        }
    }
}

/// Cascading: what a meeting's nodes share in Redis (see `signaling::cascade`). Values are
/// sealed like registry entries: whoever else writes to Redis cannot make a node announce a
/// participant or open a relay.
impl Cluster {
    /// This node's entries for participants of `room` (`None` removes one), under fields of
    /// this node (a participant moving between nodes has two for a moment, and each node
    /// removes only its own). The meeting's member hash lives while a node renews it.
    pub async fn put_members(
        &self,
        room: &str,
        entries: &[(String, Option<String>)],
    ) -> redis::RedisResult<()> {
        let mut connection = self.inner.connection().await?;
        let key = members_key(room);
        let mut pipe = redis::pipe();
        for (participant, entry) in entries {
            let field = format!("{}/{participant}", self.inner.id);
            match entry {
                Some(json) => pipe
                    .hset(&key, field, self.inner.seal_in(room, json))
                    .ignore(),
                None => pipe.hdel(&key, field).ignore(),
            };
        }
        pipe.pexpire(&key, self.inner.room_ttl.as_millis() as i64)
            .ignore()
            .query_async(&mut connection)
            .await
    }

    /// Every node's member entries of `room` (their JSON), sealed ones only.
    pub async fn members(&self, room: &str) -> redis::RedisResult<Vec<String>> {
        let mut connection = self.inner.connection().await?;
        let all: std::collections::HashMap<String, String> =
            connection.hgetall(members_key(room)).await?;
        Ok(all
            .values()
            .filter_map(|v| self.inner.open_in(room, v))
            .collect())
    }

    /// Appends an event of `room` for its other nodes (the stream keeps the latest few).
    pub async fn post_event(&self, room: &str, json: &str) -> redis::RedisResult<()> {
        let mut connection = self.inner.connection().await?;
        let key = events_key(room);
        let sealed = self.inner.seal_in(room, json);
        redis::pipe()
            .cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(EVENTS_KEPT)
            .arg("*")
            .arg("e")
            .arg(sealed)
            .ignore()
            .pexpire(&key, self.inner.room_ttl.as_millis() as i64)
            .ignore()
            .query_async(&mut connection)
            .await
    }

    /// The events of `room` after `after` (a stream id; `None`: only the latest id, to start
    /// from), oldest first, with the id to read after next.
    pub async fn events_after(
        &self,
        room: &str,
        after: Option<&str>,
    ) -> redis::RedisResult<(Vec<String>, Option<String>)> {
        let mut connection = self.inner.connection().await?;
        let key = events_key(room);
        let Some(after) = after else {
            let last: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut connection)
                .await?;
            return Ok((
                Vec::new(),
                Some(last.first().map_or("0-0".to_owned(), |(id, _)| id.clone())),
            ));
        };
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(EVENTS_KEPT)
            .query_async(&mut connection)
            .await?;
        let next = entries.last().map(|(id, _)| id.clone());
        let events = entries
            .into_iter()
            .filter_map(|(_, fields)| fields.get(1).and_then(|v| self.inner.open_in(room, v)))
            .collect();
        Ok((events, next.or_else(|| Some(after.to_owned()))))
    }
}

/// Events a meeting's stream keeps (a node more than this behind misses some).
const EVENTS_KEPT: usize = 500;

fn members_key(room: &str) -> String {
    format!("convene:cascade:{room}:members")
}

fn events_key(room: &str) -> String {
    format!("convene:cascade:{room}:events")
}

impl Inner {
    /// `{hmac}.{json}`, the HMAC over the meeting too: a value cannot be replayed into another
    /// meeting's keys.
    fn seal_in(&self, room: &str, json: &str) -> String {
        format!("{}.{json}", self.mac(&format!("{room}\n{json}")))
    }

    fn open_in(&self, room: &str, value: &str) -> Option<String> {
        let (mac, json) = value.split_once('.')?;
        self.open(&format!("{mac}.{room}\n{json}"))?;
        Some(json.to_owned())
    }

    /// The JSON of a value sealed by a node of this cluster.
    fn open(&self, value: &str) -> Option<String> {
        use hmac::Mac;
        let (mac, json) = value.split_once('.')?;
        let mut check = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.signing_key.as_bytes())
            .expect("HMAC takes any key length");
        check.update(json.as_bytes());
        check.verify_slice(&hex::decode(mac).ok()?).ok()?;
        Some(json.to_owned())
    }

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

    async fn heartbeat(&self, entry: &NodeEntry) {
        let mut result = self.register(entry).await;
        if result.is_ok() {
            result = self.renew_rooms().await;
        }
        self.set_up(result.is_ok(), result.err());
    }

    /// `{hmac}.{json}`: HMAC-SHA256 of the JSON under the cluster's signing key.
    fn seal_entry(&self, entry: &NodeEntry) -> String {
        let json = serde_json::to_string(entry).expect("a node entry serializes");
        format!("{}.{json}", self.mac(&json))
    }

    /// An entry as written by a node of this cluster, its load made sane; None otherwise.
    fn open_entry(&self, value: &str) -> Option<NodeEntry> {
        let json = self.open(value)?;
        let mut entry: NodeEntry = serde_json::from_str(&json).ok()?;
        if !(entry.http_url.starts_with("http://") || entry.http_url.starts_with("https://")) {
            return None;
        }
        let sane = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
        entry.load.peers = entry.load.peers.max(0);
        entry.load.rooms = entry.load.rooms.max(0);
        entry.load.cpu_percent = sane(entry.load.cpu_percent);
        entry.load.forwarded_bps = sane(entry.load.forwarded_bps);
        Some(entry)
    }

    fn mac(&self, json: &str) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.signing_key.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(json.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    async fn register(&self, entry: &NodeEntry) -> redis::RedisResult<()> {
        let mut connection = self.connection().await?;
        let value = self.seal_entry(entry);
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

    /// Renews the placement of every room this node serves; claims those whose placement
    /// expired or vanished (Redis restarted empty). A room placed on another node meanwhile is
    /// left there: this node keeps serving what it holds until its clients leave.
    async fn renew_rooms(&self) -> redis::RedisResult<()> {
        let Some(held) = self.held.get() else {
            return Ok(());
        };
        let rooms = held();
        if rooms.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        let ttl = self.room_ttl.as_millis().max(1) as u64;
        let script = renew_script();
        // Loaded first: a pipeline of EVALSHA cannot fall back to EVAL on its own.
        script.load_async(&mut connection).await?;
        for chunk in rooms.chunks(500) {
            let invocations: Vec<redis::ScriptInvocation<'_>> = chunk
                .iter()
                .map(|room| {
                    let mut invocation = script.key(room_key(room));
                    invocation.key(served_key(room));
                    invocation.arg(ttl).arg(room).arg(&self.id);
                    invocation
                })
                .collect();
            let mut pipe = redis::pipe();
            for invocation in &invocations {
                pipe.invoke_script(invocation).ignore();
            }
            pipe.query_async::<()>(&mut connection).await?;
        }
        Ok(())
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

fn room_key(room: &str) -> String {
    format!("convene:room:{room}")
}

/// Which node serves the room now (renewed by it): a placement not yet served can be taken over
/// by the node that does serve it.
fn served_key(room: &str) -> String {
    format!("convene:served:{room}")
}

/// What one placed room weighs in the score, against one peer's 10: a room just placed is
/// about to fill, and the heartbeat's figures do not show it yet.
const ROOM_WEIGHT: f64 = 100.0;

/// A node's load as the placement score counts it (lower is chosen): 10 per peer, its CPU in
/// percent of one core, its forwarded megabits per second; the script adds `ROOM_WEIGHT` per
/// room placed on it (docs/cluster.md).
pub fn load_score(load: &NodeLoad) -> f64 {
    10.0 * load.peers as f64 + load.cpu_percent + load.forwarded_bps / 1e6
}

/// KEYS[1] the room's key; ARGV: room ttl (ms), room, room weight, place (0|1), then pairs of
/// node id and load score. Returns the owner, or nil. Each node's placed rooms are a sorted set
/// of room → expiry, so a count is one ZCARD after dropping the expired.
fn placement_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', 'convene:node:' .. owner) == 1 then
  return owner
end
if ARGV[4] ~= '1' then
  return false
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[1])
local best, best_score
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('EXISTS', 'convene:node:' .. id) == 1 then
    local placed = 'convene:rooms:' .. id
    redis.call('ZREMRANGEBYSCORE', placed, '-inf', now)
    local score = tonumber(ARGV[i + 1]) + tonumber(ARGV[3]) * redis.call('ZCARD', placed)
    if best == nil or score < best_score or (score == best_score and id < best) then
      best, best_score = id, score
    end
  end
end
if best == nil then
  return false
end
redis.call('SET', KEYS[1], best, 'PX', ttl)
redis.call('ZADD', 'convene:rooms:' .. best, now + ttl, ARGV[2])
redis.call('PEXPIRE', 'convene:rooms:' .. best, ttl)
if owner then
  redis.call('ZREM', 'convene:rooms:' .. owner, ARGV[2])
end
return best
",
        )
    })
}

/// KEYS[1] the room's key, KEYS[2] its served key; ARGV: room ttl (ms), room, this node.
/// Renews the room's placement here (and marks it served here), or takes it when no live node
/// serves it: nobody holds it, or it was placed on a node that does not serve it yet (after
/// Redis restarted empty, a join elsewhere may place a room this node still holds: the node
/// with the sockets and media wins). Leaves a room served elsewhere alone.
fn renew_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[3] and redis.call('EXISTS', 'convene:node:' .. owner) == 1
    and redis.call('GET', KEYS[2]) == owner then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[3], 'PX', tonumber(ARGV[1]))
redis.call('SET', KEYS[2], ARGV[3], 'PX', tonumber(ARGV[1]))
redis.call('ZADD', 'convene:rooms:' .. ARGV[3], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', 'convene:rooms:' .. ARGV[3], tonumber(ARGV[1]))
if owner and owner ~= ARGV[3] then
  redis.call('ZREM', 'convene:rooms:' .. owner, ARGV[2])
end
return 1
",
        )
    })
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

/// The WebSocket URL of a node's signaling, from its HTTP URL.
pub fn ws_url(http_url: &str) -> String {
    let base = http_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_socket_url_follows_its_scheme() {
        assert_eq!(ws_url("http://10.0.0.2:8080"), "ws://10.0.0.2:8080/ws");
        assert_eq!(ws_url("https://n2.example.com/"), "wss://n2.example.com/ws");
    }

    #[test]
    fn peers_cpu_and_bandwidth_all_raise_the_score() {
        let idle = load_score(&NodeLoad::default());
        let busy = |load: NodeLoad| load_score(&load) > idle;
        assert!(busy(NodeLoad {
            peers: 1,
            ..Default::default()
        }));
        assert!(busy(NodeLoad {
            cpu_percent: 5.0,
            ..Default::default()
        }));
        assert!(busy(NodeLoad {
            forwarded_bps: 2e6,
            ..Default::default()
        }));
    }
}
