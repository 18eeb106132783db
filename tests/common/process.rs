//! The real binary as its own process, for tests that stop it the hard way (`kill -9`) or the
//! polite way (SIGTERM) and start it again on the same data.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::TempDir;

pub struct Process {
    child: Child,
    pub base: String,
    pub http: reqwest::Client,
    /// Where its HTTP (and WebSocket) listens.
    pub addr: std::net::SocketAddr,
}

impl Process {
    pub async fn start(data_dir: &TempDir, database_url: &str) -> Self {
        Self::start_with(data_dir, database_url, &[]).await
    }

    /// The same, with more `CONVENE_*` settings.
    pub async fn start_with(data_dir: &TempDir, database_url: &str, env: &[(&str, &str)]) -> Self {
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
            .env("CONVENE_RECORDING_MIN_FREE_BYTES", "16777216")
            // A cluster only when the test asks for one (REDIS_URL may be set around CI).
            .env_remove("REDIS_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().expect("the convene binary starts");
        let process = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            // The server closes a keep-alive connection idle for `http_header_read_timeout` (10 s):
            // a pooled one is never kept that long, or a request sent as it closes is reset.
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
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

    pub async fn call(
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

    /// Signs up `name` through the API; their access token.
    pub async fn register(&self, name: &str) -> String {
        let (status, account) = self
            .call(
                "/auth/register",
                None,
                Some(serde_json::json!({
                    "email": format!("{name}@example.test"), "username": name,
                    "display_name": name, "password": format!("{name}-password-1"),
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{account}");
        account["access_token"].as_str().unwrap().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(mut self) {
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
