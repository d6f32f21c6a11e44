//! The .deb and the .rpm: built with `packaging/dist.sh`, checked with `packaging/check.sh`
//! (file lists, scriptlets, dependencies, a scratch-root rpm install). The .deb is installed into
//! a real systemd by `systemd_e2e.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn packages_build_and_pass_their_checks() {
    let required = std::env::var_os("BATON_E2E_REQUIRED").is_some();
    let root = nix::unistd::geteuid().is_root();
    // The checks use Debian's rpm, shellcheck, lintian and rpmlint; install them where we may.
    let missing: Vec<&str> = ["rpm", "shellcheck", "lintian", "rpmlint"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() && root && have("apt-get") {
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .unwrap();
        assert!(status.success(), "apt-get install {missing:?} failed");
    }
    if !have("dpkg-deb") {
        assert!(!required, "dpkg-deb is missing");
        eprintln!("\n!!!!! SKIPPING the packaging test: no dpkg-deb on this machine !!!!!\n");
        return;
    }
    let dist = Command::new(format!("{ROOT}/packaging/dist.sh"))
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        dist.status.success(),
        "dist.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&dist.stdout),
        String::from_utf8_lossy(&dist.stderr)
    );
    let check = Command::new(format!("{ROOT}/packaging/check.sh"))
        .current_dir(ROOT)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "check.sh failed:\n{out}");
    let skipped: Vec<&str> = out.lines().filter(|l| l.contains("SKIP")).collect();
    if required {
        assert!(
            skipped.is_empty(),
            "checks skipped where they must run: {skipped:#?}"
        );
    } else if !skipped.is_empty() {
        eprintln!("\n!!!!! packaging checks skipped here: {skipped:#?}\n");
    }
}
