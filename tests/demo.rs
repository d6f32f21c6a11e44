//! `baton demo` as a newcomer meets it: the banner only once it serves, commands that work as
//! printed, no panic when its output goes away, a private control socket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn demo(port: u16) -> Command {
    let mut c = Command::new(BATON);
    c.args([
        "demo",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--workers",
        "2",
        "--boot-time",
        "0s",
    ]);
    c
}

#[test]
fn the_banner_comes_once_serving_and_its_commands_work_as_printed() {
    let _serial = serial();
    let port = free_port();
    let mut child = demo(port)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("baton demo:") || !banner.is_empty() {
            banner.push(line.clone());
        }
        if line.contains("Ctrl-C stops it") {
            break;
        }
    }
    // Serving when the banner says so.
    let (status, _) = get(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(status, 200, "{banner:?}");
    // Each printed command, run as printed.
    for line in &banner {
        let cmd = line.trim().trim_start_matches("try:").trim();
        if cmd.contains(" status --control ") {
            let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("App: demo"));
            // Its reader goes away: no panic (`| head`).
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("{cmd} | head -c 1"))
                .output()
                .unwrap();
            assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
        }
    }
    assert!(
        banner
            .iter()
            .any(|l| l.contains(" restart --wait --control "))
    );
    // The demo's own stderr goes away, then it has something to say: it keeps serving.
    drop(lines);
    let out = Command::new(BATON)
        .args(["restart", "--wait", "--control"])
        .arg(control_of(&banner))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = get(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(status, 200);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

fn control_of(banner: &[String]) -> String {
    banner
        .iter()
        .find_map(|l| l.split(" status --control ").nth(1))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_taken_port_fails_before_any_banner() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = demo(port).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("workers behind"), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[test]
fn without_a_runtime_directory_the_control_socket_is_private() {
    if !nix::unistd::geteuid().is_root() || Command::new("runuser").arg("--help").output().is_err()
    {
        skip(
            "private control socket",
            "needs root and runuser to run the demo as another user",
        );
        return;
    }
    let _serial = serial();
    let port = free_port();
    use std::os::unix::process::CommandExt;
    // Its own process group: runuser, and the demo it runs, are stopped together below.
    let mut child = Command::new("runuser")
        .process_group(0)
        .args(["-u", "nobody", "--", "env", "-u", "XDG_RUNTIME_DIR", BATON])
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "1",
            "--boot-time",
            "0s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        banner.push(line.clone());
        if line.contains("Ctrl-C stops it") || banner.len() > 200 {
            break;
        }
    }
    let control = control_of(&banner);
    let dir = std::path::Path::new(&control).parent().unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_ne!(dir, std::env::temp_dir(), "{control}");
    assert_eq!(mode, 0o700, "{control}");
    // SIGTERM to the whole group: the demo stops its workers and exits; nothing is left.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_dir("/proc").unwrap().flatten().all(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .map(|c| !c.contains(&format!("127.0.0.1:{port}")))
                .unwrap_or(true)
        })
    });
    assert!(gone, "the demo run as nobody is still running");
}
