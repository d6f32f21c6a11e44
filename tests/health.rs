//! Health for load balancers and the lame duck on stop: `GET /health` says 503 as soon as baton
//! is told to stop, while it keeps serving for `shutdown_delay`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn health_turns_503_at_sigterm_while_serving_goes_on_for_shutdown_delay() {
    let _serial = serial();
    let metrics_port = free_port();
    let mut baton = Baton::start(
        2,
        "0s",
        &format!(
            "[listen]\nshutdown_delay = \"2s\"\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n"
        ),
    );
    let health = format!("http://127.0.0.1:{metrics_port}/health");
    let (status, body) = get(&health);
    assert_eq!(status, 200, "{body}");
    let h: baton::status::Health = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            h.status.as_str(),
            h.phase.as_str(),
            h.ready_workers,
            h.generation,
            h.resisting
        ),
        ("serving", "steady", 2, 1, false)
    );

    let load = Load::start(baton.addr, 4, "/", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(baton.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let sent = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    let (status, body) = get(&health);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"stopping\""), "{body}");
    // No restart starts once baton stops, and whoever asks is told why.
    let refused = baton.cli(&["restart", "--wait"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("baton is stopping: no restart starts now"),
        "{said}"
    );
    // Still serving: the load balancer has time to notice.
    while sent.elapsed() < Duration::from_millis(1500) {
        let (status, _) = get(&baton.url("/"));
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let exit = baton.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "stopped before shutdown_delay"
    );
}

#[test]
fn sigterm_during_a_restart_fails_it_with_the_reason() {
    let _serial = serial();
    let baton = Baton::start(1, "3s", "[listen]\nshutdown_delay = \"1s\"\n");
    let waiting = std::process::Command::new(BATON)
        .args(["restart", "--wait", "--control"])
        .arg(&baton.control)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    baton.wait_until(Duration::from_secs(5), |st| st.rolling_restart.is_some());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(baton.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = waiting.wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("baton is stopping")
            && said.contains("the restart to generation 2 was cancelled"),
        "{said}"
    );
    // The old worker served to the end; the new one never took over.
    let (status, body) = get(&baton.url("/"));
    assert_eq!(status, 200, "{body}");
}
