//! A restart re-reads the config file: an edit is applied to the new generation, a broken
//! edit fails the restart and changes nothing, and what needs a new baton is named.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn pids(baton: &Baton) -> BTreeSet<u32> {
    baton
        .status()
        .workers
        .iter()
        .filter_map(|w| w.pid)
        .collect()
}

#[test]
fn a_restart_applies_an_edited_config_and_refuses_a_broken_one() {
    let _serial = serial();
    let baton = Baton::start(2, "0s", "[readiness]\nsettle = \"100ms\"\n");
    assert_eq!(baton.status().config_generation, 1);
    let original = std::fs::read_to_string(&baton.config).unwrap();

    // An edited command line runs in the new generation.
    let edited = original.replace(r#""--boot-time", "0s""#, r#""--boot-time", "10ms""#);
    assert_ne!(edited, original);
    std::fs::write(&baton.config, &edited).unwrap();
    let out = baton.cli(&["restart", "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[app] applied from"), "{stdout}");
    let s = baton.status();
    assert_eq!((s.generation, s.config_generation), (2, 2));
    for w in &s.workers {
        let cmd = cmdline(w.pid.unwrap());
        assert!(
            cmd.contains("--boot-time 10ms"),
            "worker {} runs {cmd:?}",
            w.id
        );
    }

    // A broken edit: the restart fails with the file's error, and nothing changes.
    let before = pids(&baton);
    std::fs::write(
        &baton.config,
        format!("{edited}\n[workers]\nconcurrency = \"many\"\n"),
    )
    .unwrap();
    let out = baton.cli(&["restart", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the config is invalid, nothing was changed")
            && stderr.contains(&format!("{}:", baton.config.display())),
        "{stderr}"
    );
    let s = baton.status();
    assert_eq!((s.generation, s.config_generation), (2, 2));
    assert_eq!(pids(&baton), before, "no worker was touched");
    assert!(s.rolling_restart.is_none() && s.resisting_deployment_error.is_none());

    // What only a new baton can take is named, and the old value stays in force.
    let moved = edited.replace(
        &format!("address = \"{}\"", baton.addr),
        &format!("address = \"127.0.0.1:{}\"", free_port()),
    );
    assert_ne!(moved, edited);
    std::fs::write(&baton.config, moved).unwrap();
    let out = baton.cli(&["restart", "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[listen] changed, which takes a restart of baton itself"),
        "{stdout}"
    );
    assert!(baton.log().contains("[listen] changed"));
    let (status, _) = get(&baton.url("/"));
    assert_eq!(status, 200, "still serving on the old address");
    std::thread::sleep(Duration::from_millis(10));
}
