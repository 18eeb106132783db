//! What cluster mode costs a request: placing a room (one Lua script in Redis; a new room also
//! reads the registry) and a REST request about a meeting served by its own node against the
//! same request at another node, which hands it on over HTTP (the forward hop). Two nodes in
//! this process share a private redis-server and one SQLite file, as in the cluster tests.
//!
//! `cargo bench --bench cluster` (loopback; needs `redis-server`). Prints p50/p95 per operation.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use convene::cluster::Owner;
use convene::config::Config;
use convene::Server;
use serde_json::{json, Value};

const PLACES: usize = 2_000;
const NEW_ROOMS: usize = 500;
const REQUESTS: usize = 1_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _redis = Redis(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)"),
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = std::env::temp_dir().join(format!("convene-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = |id: &str| {
        let mut c = Config {
            http: "127.0.0.1:0".parse().unwrap(),
            media_udp_port: 0,
            media_bind_ip: "127.0.0.1".parse().unwrap(),
            data_dir: dir.join(id),
            database_url: format!("sqlite://{}?mode=rwc", dir.join("cluster.db").display()),
            jwt_secret: "bench-cluster-secret-bench-cluster-secret".into(),
            redis_url: format!("redis://127.0.0.1:{port}"),
            node_id: id.into(),
            rate_limit_auth_per_minute: 1_000_000,
            rate_limit_general_per_minute: 1_000_000,
            rate_limit_meeting_create_per_hour: 1_000_000,
            ..Config::default()
        };
        c.cluster_heartbeat = Duration::from_millis(200);
        c.cluster_node_ttl = Duration::from_secs(1);
        c
    };
    let a = Server::start(node("bench-a")).await.unwrap();
    let b = Server::start(node("bench-b")).await.unwrap();
    let cluster = a.state.cluster.clone().unwrap();
    while cluster.nodes().await.map(|n| n.len()).unwrap_or(0) < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Placement.
    cluster.place("bench-room").await;
    let existing = time(PLACES, |_| {
        let cluster = cluster.clone();
        async move {
            cluster.place("bench-room").await;
        }
    })
    .await;
    report("place an existing room", &existing);
    let new = time(NEW_ROOMS, |i| {
        let cluster = cluster.clone();
        async move {
            cluster.place(&format!("bench-new-{i}")).await;
        }
    })
    .await;
    report("place a new room (registry read + script)", &new);

    // A request about a meeting, at its node and at the other.
    let http = reqwest::Client::new();
    let base_a = format!("http://{}", a.http_addr);
    let base_b = format!("http://{}", b.http_addr);
    let account = post(
        &http,
        &format!("{base_a}/api/v1/auth/register"),
        None,
        json!({"email": "bench@example.test", "username": "bench",
            "display_name": "Bench", "password": "correct-horse-battery"}),
    )
    .await;
    let token = account["access_token"].as_str().unwrap().to_owned();
    let meeting = post(
        &http,
        &format!("{base_a}/api/v1/meetings"),
        Some(&token),
        json!({"title": "bench"}),
    )
    .await;
    let id = meeting["id"].as_str().unwrap().to_owned();
    let join = post(
        &http,
        &format!("{base_a}/api/v1/meetings/{id}/join"),
        Some(&token),
        json!({}),
    )
    .await;
    let on_a = cluster.place(&id).await == Owner::Here;
    let (owner, other) = if on_a {
        (&base_a, &base_b)
    } else {
        (&base_b, &base_a)
    };
    assert!(join["ws_url"].as_str().unwrap().contains(&owner[7..]));
    for (label, base) in [
        ("at the meeting's node", owner),
        ("at another node (forwarded)", other),
    ] {
        let url = format!("{base}/api/v1/meetings/{id}/messages");
        let samples = time(REQUESTS, |_| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
            }
        })
        .await;
        report(&format!("GET chat history {label}"), &samples);
    }
    a.shutdown().await;
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// POSTs `body` as JSON (with `token` as Bearer) and returns the JSON answer.
async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: Value) -> Value {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

async fn time<F, Fut>(n: usize, mut op: F) -> Vec<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        op(i).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    samples
}

fn report(what: &str, sorted: &[Duration]) {
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    println!(
        "{what:<45} n={:<5} p50 {:>8.1} µs   p95 {:>8.1} µs",
        sorted.len(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.95).as_secs_f64() * 1e6
    );
}
