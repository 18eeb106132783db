//! Cluster mode, first part: nodes sharing a Redis (the test's own `redis-server` on a free
//! port) register with a heartbeat, list each other (`GET /api/v1/cluster/nodes`, operators
//! only), leave at a graceful stop and are gone within the TTL after `kill -9`; without Redis a
//! node keeps its media flowing, says it is degraded, and registers again when Redis returns.

mod common;

use std::time::Duration;

use common::client::{Kind, WhepSubscriber, WhipPublisher};
use common::process::Process;
use common::redis::Redis;
use common::{TempDir, TestServer};
use convene::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The server secret every node of a test cluster shares (entries are signed with it).
const SECRET: &str = "cluster-test-secret-cluster-test-secret";

fn clustered(c: &mut Config, redis: &str, node: &str, admin: &str) {
    c.redis_url = redis.to_owned();
    c.jwt_secret = SECRET.to_owned();
    c.node_id = node.to_owned();
    c.cluster_heartbeat = Duration::from_millis(200);
    c.cluster_node_ttl = Duration::from_secs(1);
    c.admins = vec![admin.to_owned()];
}

/// Registers `username` through the API; returns its access token.
async fn sign_up(server: &TestServer, username: &str) -> String {
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/auth/register",
            None,
            Some(json!({
                "email": format!("{username}@example.test"),
                "username": username,
                "display_name": username,
                "password": "correct-horse-battery",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Polls `/cluster/nodes` until the listed node ids are `ids`.
async fn wait_nodes(server: &TestServer, token: &str, ids: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = server
            .call(reqwest::Method::GET, "/cluster/nodes", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let listed: Vec<&str> = body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        if listed == ids {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes {listed:?}, waiting for {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readiness(server: &TestServer) -> (StatusCode, Value) {
    let response = server.http.get(server.url("/readyz")).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_list_each_other_leave_and_expire() {
    let redis = Redis::start();
    let ops = format!("ops{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let a = TestServer::start_with(|c| clustered(c, &redis.url(), "node-a", &ops)).await;
    let b = TestServer::start_with(|c| clustered(c, &redis.url(), "node-b", &ops)).await;
    let token = sign_up(&a, &ops).await;

    let body = wait_nodes(&a, &token, &["node-a", "node-b"]).await;
    assert_eq!(body["this_node"], "node-a");
    let entry = &body["nodes"][1];
    assert_eq!(entry["http_url"], b.base.as_str());
    let media = b.server.media_addr.to_string();
    assert!(
        entry["media"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == media.as_str()),
        "{entry}"
    );
    assert!(entry["load"]["peers"].is_number(), "{entry}");

    // Operators only.
    let someone = a.user("someone").await;
    let (status, _) = a
        .call(
            reqwest::Method::GET,
            "/cluster/nodes",
            Some(&someone.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = a
        .call(reqwest::Method::GET, "/cluster/nodes", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // An entry not signed with the cluster's secret (anyone who can write to Redis) is not a
    // node: it could send clients and forwarded requests anywhere.
    let mut redis_connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut forged = body["nodes"][1].clone();
    forged["id"] = json!("evil");
    forged["http_url"] = json!("http://169.254.169.254");
    forged["load"]["peers"] = json!(-1_000_000);
    let _: () = redis::cmd("SET")
        .arg("convene:node:evil")
        .arg(format!("00.{forged}"))
        .query(&mut redis_connection)
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg("convene:nodes")
        .arg("evil")
        .query(&mut redis_connection)
        .unwrap();
    wait_nodes(&a, &token, &["node-a", "node-b"]).await;

    // A graceful stop leaves at once.
    let TestServer { server, .. } = b;
    server.shutdown().await;
    wait_nodes(&a, &token, &["node-a"]).await;

    // A node killed outright is gone once its entry's TTL passes.
    let data = TempDir::new();
    let url = redis.url();
    let c = Process::start_with(
        &data,
        "",
        &[
            ("REDIS_URL", url.as_str()),
            ("CONVENE_JWT_SECRET", SECRET),
            ("CONVENE_NODE_ID", "node-c"),
            ("CONVENE_CLUSTER_HEARTBEAT", "200ms"),
            ("CONVENE_CLUSTER_NODE_TTL", "1s"),
        ],
    )
    .await;
    wait_nodes(&a, &token, &["node-a", "node-c"]).await;
    c.kill_9();
    wait_nodes(&a, &token, &["node-a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_node_keeps_its_media_and_registers_again_when_it_returns() {
    let mut redis = Redis::start();
    let ops = format!("ops{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let server = TestServer::start_with(|c| clustered(c, &redis.url(), "node-r", &ops)).await;
    let token = sign_up(&server, &ops).await;
    wait_nodes(&server, &token, &["node-r"]).await;
    assert_eq!(readiness(&server).await.1["cluster"], "ok");
    assert_eq!(server.metric("convene_cluster_redis_up").await, 1.0);

    let viewer = WhepSubscriber::connect(
        &server,
        "r",
        &server.token("r", "viewer", false, true),
        None,
    )
    .await;
    let publisher =
        WhipPublisher::connect(&server, "r", &server.token("r", "publisher", true, false)).await;

    redis.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = readiness(&server).await;
        if body["cluster"] == "degraded" {
            assert_eq!(status, StatusCode::OK, "degraded, not unready: {body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.metric("convene_cluster_redis_up").await, 0.0);
    let (status, body) = server
        .call(reqwest::Method::GET, "/cluster/nodes", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // Media flows on as before.
    for sequence in 0..60u16 {
        publisher.send(Kind::Audio, sequence, vec![3; 40]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = viewer
        .wait_packets(Kind::Audio, 50, Duration::from_secs(10))
        .await;
    assert!(got >= 50, "{got} packets while Redis was away");

    // Redis returns (empty, as after a restart without persistence): the node registers again.
    redis.run();
    wait_nodes(&server, &token, &["node-r"]).await;
    assert_eq!(readiness(&server).await.1["cluster"], "ok");
}
