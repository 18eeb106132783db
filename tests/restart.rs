//! The real binary, stopped the hard way (`kill -9`) and the polite way (SIGTERM), then started
//! again on the same data: seats the dead process held are free, and a meeting nobody came back
//! to ends by its empty-meeting countdown. Runs on SQLite, and on PostgreSQL when DATABASE_URL
//! is set.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{PgSchema, TempDir};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Process {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Process {
    async fn start(data_dir: &TempDir, database_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_convene"));
        command
            .args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .args(["--media-udp-port", "0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(&data_dir.0)
            .env("CONVENE_MEDIA_BIND_IP", "127.0.0.1")
            .env("CONVENE_MEETING_EMPTY_TIMEOUT", "2s")
            .env("CONVENE_RATE_LIMIT_AUTH_PER_MINUTE", "0")
            .env("CONVENE_RATE_LIMIT_GENERAL_PER_MINUTE", "0")
            .env("DATABASE_URL", database_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().expect("the convene binary starts");
        let process = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = process
                .http
                .get(format!("{}/healthz", process.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                return process;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.get(url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(mut self) {
        // SAFETY: signalling our own child, whose pid is alive until we wait for it.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "graceful stop exits 0, got {status}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn guest_join(server: &Process, meeting: &str, name: &str) -> (StatusCode, Value) {
    server
        .call(
            &format!("/meetings/{meeting}/join"),
            None,
            Some(json!({ "display_name": name })),
        )
        .await
}

async fn seat_status(server: &Process, host: &str, meeting: &str, participant: &str) -> String {
    let (status, list) = server
        .call(
            &format!("/meetings/{meeting}/participants"),
            Some(host),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a participant list: {list}"))
        .iter()
        .find(|p| p["id"] == participant || p["participant_id"] == participant)
        .map(|p| p["status"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{participant} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_are_free_after_a_crash_and_after_a_graceful_stop() {
    let data_dir = TempDir::new();
    let schema = PgSchema::create().await;
    let database_url = schema.as_ref().map(|s| s.url.clone()).unwrap_or_default();

    let server = Process::start(&data_dir, &database_url).await;
    let (status, account) = server
        .call(
            "/auth/register",
            None,
            Some(json!({"email": "host@example.test", "username": "host", "display_name": "Host", "password": "restart-pw-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    let host = account["access_token"].as_str().unwrap().to_owned();
    let (status, meeting) = server
        .call(
            "/meetings",
            Some(&host),
            Some(json!({"title": "One seat", "settings": {"max_participants": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let meeting = meeting["id"].as_str().unwrap().to_owned();
    let (status, first) = guest_join(&server, &meeting, "First").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, _) = guest_join(&server, &meeting, "Second").await;
    assert_eq!(status, StatusCode::CONFLICT, "the one seat is taken");

    server.kill_9();
    let server = Process::start(&data_dir, &database_url).await;
    let (status, second) = guest_join(&server, &meeting, "Second").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the crashed process's seat is free: {second}"
    );
    let first_id = first["participant_id"].as_str().unwrap();
    assert_eq!(
        seat_status(&server, &host, &meeting, first_id).await,
        "left"
    );

    server.terminate();
    let server = Process::start(&data_dir, &database_url).await;
    let second_id = second["participant_id"].as_str().unwrap();
    assert_eq!(
        seat_status(&server, &host, &meeting, second_id).await,
        "left"
    );
    let (status, third) = guest_join(&server, &meeting, "Third").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "free after a graceful stop: {third}"
    );

    // Nobody connects: the meeting ends by its countdown.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, view) = server
            .call(&format!("/meetings/{meeting}"), Some(&host), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["status"] == "ended" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {}",
            view["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
