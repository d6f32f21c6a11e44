//! Faults and bad input: nothing lost, nothing let in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn a_request_that_never_ends_is_cut_after_drain_timeout_and_the_roll_completes() {
    let _serial = serial();
    let baton = Baton::start(2, "200ms", "[restart]\ndrain_timeout = \"2s\"\n");
    let url = baton.url("/hang");
    let hung = std::thread::spawn(move || get(&url));
    baton.wait_until(Duration::from_secs(5), |s| {
        s.workers.iter().any(|w| w.sessions == 1)
    });
    let control = baton.control.clone();
    let restart = std::thread::spawn({
        let args = ["restart", "--wait", "--control"];
        move || {
            std::process::Command::new(BATON)
                .args(args)
                .arg(&control)
                .output()
                .unwrap()
        }
    });
    // Status says what the roll waits on.
    let s = baton.wait_until(Duration::from_secs(10), |s| {
        s.rolling_restart
            .as_ref()
            .is_some_and(|r| r.waiting_on.contains(": 1 request, oldest "))
    });
    let waiting = &s.rolling_restart.as_ref().unwrap().waiting_on;
    assert!(waiting.starts_with("draining worker "), "{waiting}");
    let out = restart.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = hung.join().unwrap();
    assert_eq!(status, 502, "the cut request gets a clear error: {body}");
    assert!(
        body.starts_with("baton: worker ") && body.contains("after drain_timeout"),
        "{body}"
    );
    let s = baton.status();
    assert!(
        s.workers
            .iter()
            .all(|w| w.generation == 2 && w.state == "ready")
    );
    assert!(
        baton
            .log()
            .contains("still has 1 requests in flight after drain_timeout")
    );
}

#[test]
fn a_worker_that_keeps_crashing_is_respawned_with_backoff() {
    let _serial = serial();
    let baton = Baton::start_release(1, "100ms", "", Release::CrashesAfterReady, false);
    let start = Instant::now();
    let mut highest = 0;
    while start.elapsed() < Duration::from_secs(6) {
        if let Ok(s) = baton.try_status() {
            highest = s
                .workers
                .iter()
                .map(|w| w.id)
                .max()
                .unwrap_or(0)
                .max(highest);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Without backoff a 0.6 s crash cycle would spawn about ten workers in 6 s.
    assert!(highest >= 2, "it was respawned at all ({highest})");
    assert!(
        highest <= 5,
        "{highest} spawns in 6 s: a spawn storm\n{}",
        baton.log()
    );
    let s = baton.status();
    let failure = s.last_spawn_failure.unwrap_or_default();
    assert!(
        failure.contains("exited with status 2") && failure.contains("after it started"),
        "{failure}"
    );
    assert!(baton.log().contains("replacing it in "));
}

fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn oversized_and_malformed_requests_get_clear_statuses() {
    let _serial = serial();
    let baton = Baton::start(1, "100ms", "");
    let big_header = [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(),
        &[b'a'; 100_000],
        b"\r\n\r\n",
    ]
    .concat();
    assert!(raw(baton.addr, &big_header).starts_with("HTTP/1.1 431"));
    let long_uri = [
        b"GET /".as_slice(),
        &[b'a'; 70_000],
        b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    .concat();
    assert!(raw(baton.addr, &long_uri).starts_with("HTTP/1.1 414"));
    assert!(raw(baton.addr, b"NOT HTTP AT ALL\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(
        raw(
            baton.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
        )
        .starts_with("HTTP/1.1 400")
    );
    assert!(
        raw(baton.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            .starts_with("HTTP/1.1 400")
    );
    // Asterisk-form never reaches a worker (it once made a URI without the worker's port).
    assert!(raw(baton.addr, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 400"));
    let options = raw(baton.addr, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(options.starts_with("HTTP/1.1 200"), "{options}");
    assert!(
        options.to_ascii_lowercase().contains("allow: get"),
        "{options}"
    );
    // The manager is still there and serves everyone else.
    assert_eq!(get(&baton.url("/")).0, 200);
}

#[test]
fn slow_clients_are_cut_off_and_everyone_else_is_served() {
    let _serial = serial();
    let baton = Baton::start(2, "100ms", "[listen]\nheader_timeout = \"2s\"\n");
    let slow: Vec<TcpStream> = (0..400)
        .map(|_| {
            let mut s = TcpStream::connect(baton.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(5));
    // Dribble a byte a second, as slowloris does.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        for mut s in &slow {
            let _ = s.write_all(b"X");
        }
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 300, "{report:?}");
    // After the header timeout the slow connections are closed (408 or EOF).
    let mut closed = 0;
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, 400);
}

#[test]
fn the_control_socket_is_for_root_only_and_status_hides_the_environment() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let _serial = serial();
    let baton = Baton::start(
        1,
        "100ms",
        "[app.environment]\nDATABASE_PASSWORD = \"hunter2\"\n",
    );
    let mode = std::fs::metadata(&baton.control)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let json = String::from_utf8_lossy(&baton.cli(&["status", "--json"]).stdout).into_owned();
    assert!(json.contains("\"app\": \"test\""), "{json}");
    assert!(
        !json.contains("hunter2"),
        "status must never show environment values"
    );
    if nix::unistd::geteuid().is_root() {
        // Another user (nobody) is refused.
        let out = std::process::Command::new(BATON)
            .args(["status", "--control"])
            .arg(&baton.control)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Permission denied"), "{stderr}");
    }
}

#[test]
fn a_stray_process_on_a_workers_port_is_not_taken_for_the_worker() {
    let _serial = serial();
    let mut baton = Baton::start(2, "200ms", "[readiness]\ntimeout = \"3s\"\n");
    baton.deploy(Release::StrayOnPort);
    let load = Load::start(baton.addr, 4, "/", Duration::from_secs(10));
    let out = baton.cli(&["restart", "--wait"]);
    let report = load.stop();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not have its port ") && stderr.contains("already listens there"),
        "{stderr}"
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    // Every answer came from the real workers of the old release, never from the stray.
    for _ in 0..5 {
        let (status, body) = get(&baton.url("/"));
        assert_eq!(status, 200);
        assert!(body.contains("release r1"), "{body}");
    }
}

#[test]
fn a_stop_that_escalates_is_reported_as_it_happens() {
    let _serial = serial();
    // A worker that ignores SIGTERM (as an app server busy in a request may), behind `sh -c`.
    let command = format!(
        r#"["sh", "-c", "trap '' TERM; exec \"{BATON}\" demo-app --port {{port}} --boot-time 0s"]"#
    );
    let extra = "[workers]\ncount = 1\n[readiness]\nsettle = \"100ms\"\n[restart]\ndrain_timeout = \"1s\"\nstop_timeout = \"1s\"\n";
    let baton = Baton::start_command(1, &command, extra, true, |b| b.deploy(Release::Good));
    let url = baton.url("/hang");
    let hung = std::thread::spawn(move || get(&url));
    baton.wait_until(Duration::from_secs(5), |s| {
        s.workers.iter().any(|w| w.sessions == 1)
    });
    let out = baton.cli(&["restart", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("drain_timeout (1s) passed with 1 request in flight, cut; SIGTERM sent at "),
        "{stderr}"
    );
    assert!(
        stderr.contains("still running 1s after SIGTERM (stop_timeout); SIGKILL sent at "),
        "{stderr}"
    );
    let (status, body) = hung.join().unwrap();
    assert_eq!(status, 502);
    assert!(body.contains("after drain_timeout"), "{body}");
}
