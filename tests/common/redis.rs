//! A private redis-server for cluster tests, and nodes that share it, one database and one
//! server secret.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use convene::config::Config;

use super::{PgSchema, TempDir, TestServer};

/// A private redis-server on a port of its own, keeping nothing on disk.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { child: None, port };
        redis.run();
        redis
    }

    pub fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the nodes of a test cluster share: Redis, the database (a PostgreSQL schema with
/// `DATABASE_URL`, else one SQLite file) and the server secret (tokens signed by one node are
/// good on all).
pub struct Shared {
    pub redis: Redis,
    pub database_url: String,
    pub secret: String,
    _schema: Option<PgSchema>,
    _dir: TempDir,
}

impl Shared {
    pub async fn new() -> Self {
        let dir = TempDir::new();
        let schema = PgSchema::create().await;
        let database_url = match &schema {
            Some(schema) => schema.url.clone(),
            None => format!("sqlite://{}?mode=rwc", dir.0.join("cluster.db").display()),
        };
        Self {
            redis: Redis::start(),
            database_url,
            secret: format!("cluster-secret-{}", uuid::Uuid::now_v7().simple()),
            _schema: schema,
            _dir: dir,
        }
    }

    /// Cluster settings for node `id`, with fast heartbeats for tests.
    pub fn configure(&self, c: &mut Config, id: &str) {
        c.redis_url = self.redis.url();
        c.database_url = self.database_url.clone();
        c.jwt_secret = self.secret.clone();
        c.node_id = id.to_owned();
        c.cluster_heartbeat = Duration::from_millis(200);
        c.cluster_node_ttl = Duration::from_secs(1);
        c.cluster_room_ttl = Duration::from_secs(10);
    }

    /// Node `id` in this process.
    pub async fn node(&self, id: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_with(|c| {
            self.configure(c, id);
            adjust(c);
        })
        .await
    }

    /// The environment of node `id` as its own process.
    pub fn env(&self, id: &str) -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_URL", self.redis.url()),
            ("CONVENE_JWT_SECRET", self.secret.clone()),
            ("CONVENE_NODE_ID", id.to_owned()),
            ("CONVENE_CLUSTER_HEARTBEAT", "200ms".to_owned()),
            ("CONVENE_CLUSTER_NODE_TTL", "1s".to_owned()),
            ("CONVENE_CLUSTER_ROOM_TTL", "10s".to_owned()),
        ]
    }
}
