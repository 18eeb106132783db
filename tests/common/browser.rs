//! What the headless Chromium tests need: Debian's Chromium and playwright-core. A test that
//! lacks either fails with the fix in its message (`scripts/test` and `.ci/run` install both).

use std::path::{Path, PathBuf};

/// The Chromium to drive (`CHROMIUM`, else Debian's), after checking both are there.
pub fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} not found: install Debian's Chromium (apt-get install chromium) or set CHROMIUM"
    );
    assert!(
        root()
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core missing: run `npm ci --prefix tests/browser`"
    );
    chromium
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/browser/{script}` with `env` (`CHROMIUM` unless `env` names another) and returns
/// its stdout; fails the
/// test unless it exits 0 with a PASS line within `limit`.
pub async fn run_script(script: &str, env: &[(&str, &str)], limit: std::time::Duration) -> String {
    let chromium = chromium();
    let root = root();
    let output = tokio::process::Command::new("node")
        .arg(root.join("tests/browser").join(script))
        .current_dir(&root)
        .env("CHROMIUM", &chromium)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, output)
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {limit:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success() && stdout.lines().any(|l| l.starts_with("PASS")),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// A `tests/browser` script that keeps running (a publishing page) until stopped.
pub struct Running {
    child: tokio::process::Child,
}

impl Running {
    /// Starts `tests/browser/{script}` with `env` and waits (up to `limit`) for its stdout line
    /// starting with `ready`; returns it with the script. Fails the test if the script ends or
    /// prints `FAIL` first.
    pub async fn start(
        script: &str,
        env: &[(&str, &str)],
        ready: &str,
        limit: std::time::Duration,
    ) -> (Self, String) {
        use tokio::io::AsyncBufReadExt;
        let chromium = chromium();
        let mut child = tokio::process::Command::new("node")
            .arg(root().join("tests/browser").join(script))
            .current_dir(root())
            .env("CHROMIUM", &chromium)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(limit, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                println!("{script}: {line}");
                if line.starts_with(ready) || line.starts_with("FAIL") {
                    return line;
                }
            }
            format!("FAIL: {script} ended")
        })
        .await
        .unwrap_or_else(|_| panic!("{script} printed no {ready} within {limit:?}"));
        assert!(line.starts_with(ready), "{script}: {line}");
        // Its later output is not read: drain it so the script never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (Self { child }, line)
    }

    /// Closes its stdin (it closes its browser and exits), or kills it after a few seconds.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait()).await;
        if waited.is_err() {
            let _ = self.child.kill().await;
        }
    }
}
