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
