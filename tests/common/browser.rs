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
