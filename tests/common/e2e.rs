//! What the container tests share: whether this machine can run them, and the packages
//! `packaging/dist.sh` builds for them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const CONTAINER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/container.sh");

/// Whether `container.sh` can boot a systemd here. Where it cannot, the `what` end-to-end test
/// is skipped loudly, or fails when BATON_E2E_REQUIRED is set (as in CI).
pub fn can_run(what: &str) -> bool {
    let out = Command::new(CONTAINER).arg("can-run").output().unwrap();
    if out.status.success() {
        return true;
    }
    let why =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    super::harness::skip(&format!("{what} end-to-end"), why.trim());
    false
}

/// A package `packaging/dist.sh` makes.
#[derive(Clone, Copy, Debug)]
pub enum Package {
    Deb,
    Rpm,
}

/// Build `kind` with `packaging/dist.sh` at `version` ("default": Cargo.toml's) and return the
/// path dist.sh printed for it.
pub fn dist(kind: Package, version: &str) -> PathBuf {
    let mut cmd = Command::new(format!("{ROOT}/packaging/dist.sh"));
    if let Package::Deb = kind {
        cmd.arg("--deb-only");
    }
    if version != "default" {
        cmd.args(["--version", version]);
    }
    let out = cmd.current_dir(ROOT).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "packaging/dist.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ext = match kind {
        Package::Deb => ".deb",
        Package::Rpm => ".rpm",
    };
    stdout
        .lines()
        .rev()
        .find_map(|l| l.split_whitespace().find(|w| w.ends_with(ext)))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no {ext} path in dist.sh output:\n{stdout}"))
}
