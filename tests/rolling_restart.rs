//! Rolling restarts and deployment error resistance under real load (process backend).

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

const WORKERS: usize = 4;
const SURGE: usize = 1;

fn pids(s: &baton::status::Snapshot) -> BTreeSet<u32> {
    s.workers.iter().filter_map(|w| w.pid).collect()
}

fn assert_no_failures(report: &LoadReport, baton: &Baton) {
    assert_eq!(
        report.closed_by_server, 0,
        "a worker restart must never close a client's keep-alive connection"
    );
    assert_eq!(
        report.failed,
        0,
        "failed requests: {:?}\nbaton log:\n{}",
        report.errors,
        baton.log()
    );
}

#[test]
fn rolling_restart_under_load_fails_no_request() {
    let _serial = serial();
    let baton = Baton::start(WORKERS, "1s", "");
    let before = baton.status();
    assert_eq!(before.generation, 1);
    let old_pids = pids(&before);

    let load = Load::start(baton.addr, 16, "/", Duration::from_secs(10));
    let peak = PeakSampler::start(baton.child.id());
    std::thread::sleep(Duration::from_millis(500));
    let out = baton.cli(&["restart", "--wait"]);
    std::thread::sleep(Duration::from_millis(500));
    let peak = peak.stop();
    let report = load.stop();

    assert!(
        out.status.success(),
        "restart --wait failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        baton.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("finished"));
    assert_no_failures(&report, &baton);
    assert!(
        report.ok > 1000,
        "too little load to prove anything: {report:?}"
    );
    let after = baton.status();
    assert_eq!(after.generation, 2);
    assert!(after.rolling_restart.is_none());
    assert_eq!(after.workers.len(), WORKERS);
    assert!(
        after
            .workers
            .iter()
            .all(|w| w.generation == 2 && w.state == "ready")
    );
    assert!(pids(&after).is_disjoint(&old_pids), "every worker is new");
    assert!(
        peak <= WORKERS + SURGE,
        "{peak} worker processes at once; at most {} allowed",
        WORKERS + SURGE
    );
    assert!(
        peak > WORKERS,
        "the sampler never saw the surge worker (peak {peak})"
    );
}

fn resist(release: Release, expected_reason: &str) {
    let _serial = serial();
    let mut baton = Baton::start(WORKERS, "1s", "[readiness]\ntimeout = \"3s\"\n");
    let old_pids = pids(&baton.status());
    baton.deploy(release);

    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    let out = baton.cli(&["restart", "--wait"]);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();

    assert!(
        !out.status.success(),
        "restart --wait must fail on a broken release"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("baton: restart failed: resisting deployment error: worker ")
            && stderr.contains(expected_reason),
        "stderr: {stderr}"
    );
    assert_no_failures(&report, &baton);
    assert!(report.ok > 200, "{report:?}");

    let s = baton.status();
    let r = s
        .resisting_deployment_error
        .as_ref()
        .expect("status shows resistance");
    assert!(r.reason.contains(expected_reason), "reason: {}", r.reason);
    assert_eq!(r.generation, 2);
    assert_eq!(s.generation, 1, "the old generation keeps serving");
    assert_eq!(pids(&s), old_pids, "the old workers are untouched");
    assert!(
        s.workers
            .iter()
            .all(|w| w.state == "ready" && w.generation == 1)
    );
    assert!(
        s.status_line
            .starts_with("RESISTING DEPLOYMENT ERROR since "),
        "{}",
        s.status_line
    );
    let table = String::from_utf8_lossy(&baton.cli(&["status"]).stdout).into_owned();
    assert!(
        table.contains("Resisting deployment error: worker "),
        "{table}"
    );

    // A good release and a new restart recover fully.
    baton.deploy(Release::Good);
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    let out = baton.cli(&["restart", "--wait"]);
    let report = load.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_failures(&report, &baton);
    let s = baton.status();
    assert!(s.resisting_deployment_error.is_none());
    assert_eq!(s.generation, 3);
    assert_eq!(s.workers.len(), WORKERS);
    assert!(
        s.workers
            .iter()
            .all(|w| w.generation == 3 && w.state == "ready")
    );
    let (_, body) = get(&baton.url("/"));
    assert!(
        body.contains(&format!("release {}", baton.release_name())),
        "{body}"
    );
}

#[test]
fn release_that_exits_at_boot_is_resisted() {
    resist(
        Release::ExitsAtBoot,
        "exited with status 1 before it was ready",
    );
}

#[test]
fn release_that_never_becomes_ready_is_resisted() {
    resist(
        Release::NeverReady,
        "was not ready within 3s (readiness.timeout): nothing listened on 127.0.0.1:",
    );
}

#[test]
fn resume_leaves_resistance_with_the_old_workers_serving() {
    let _serial = serial();
    let mut baton = Baton::start(2, "200ms", "");
    baton.deploy(Release::ExitsAtBoot);
    assert!(!baton.cli(&["restart", "--wait"]).status.success());
    assert!(baton.status().resisting_deployment_error.is_some());
    let out = baton.cli(&["resume"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("left resistance mode"));
    let s = baton.status();
    assert!(s.resisting_deployment_error.is_none());
    assert_eq!(s.generation, 1);
    assert_eq!(s.workers.iter().filter(|w| w.state == "ready").count(), 2);
    assert_eq!(get(&baton.url("/")).0, 200);
}

#[test]
fn an_old_worker_that_dies_while_resisting_is_replaced_from_the_old_release() {
    let _serial = serial();
    let mut baton = Baton::start(2, "200ms", "");
    let old_release = baton.release_name();
    baton.deploy(Release::ExitsAtBoot);
    assert!(!baton.cli(&["restart", "--wait"]).status.success());
    let victim = baton.status().workers[0].pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = baton.wait_until(Duration::from_secs(10), |s| {
        s.workers.len() == 2
            && s.workers
                .iter()
                .all(|w| w.state == "ready" && w.pid != Some(victim))
    });
    assert!(s.resisting_deployment_error.is_some(), "still resisting");
    assert!(s.workers.iter().all(|w| w.generation == 1));
    for _ in 0..4 {
        let (status, body) = get(&baton.url("/"));
        assert_eq!(status, 200);
        assert!(body.contains(&format!("release {old_release}")), "{body}");
    }
}

#[test]
fn a_restart_during_a_restart_supersedes_it() {
    let _serial = serial();
    let baton = Baton::start(WORKERS, "1s", "");
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    let first = baton.cli(&["restart"]);
    assert!(first.status.success());
    baton.wait_until(Duration::from_secs(10), |s| {
        s.rolling_restart.as_ref().is_some_and(|r| r.done >= 1)
    });
    let second = baton.cli(&["restart", "--wait"]);
    let report = load.stop();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_no_failures(&report, &baton);
    let s = baton.status();
    assert_eq!(s.generation, 3);
    assert!(
        s.workers
            .iter()
            .all(|w| w.generation == 3 && w.state == "ready"),
        "no worker of a stale generation survives: {:?}",
        s.workers
    );
    assert_eq!(s.workers.len(), WORKERS);
}

#[test]
fn sighup_starts_a_rolling_restart() {
    let _serial = serial();
    let baton = Baton::start(2, "200ms", "");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(baton.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let s = baton.wait_until(Duration::from_secs(15), |s| {
        s.generation == 2 && s.rolling_restart.is_none()
    });
    assert!(s.workers.iter().all(|w| w.generation == 2));
}

#[test]
fn sigterm_finishes_requests_in_flight_then_stops_every_worker() {
    let _serial = serial();
    let mut baton = Baton::start(2, "200ms", "");
    let url = baton.url("/sleep/1500");
    let slow = std::thread::spawn(move || get(&url));
    std::thread::sleep(Duration::from_millis(300));
    let pid = baton.child.id();
    let status = baton.terminate();
    assert!(status.success(), "baton exits 0 on SIGTERM: {status:?}");
    let (code, body) = slow.join().unwrap();
    assert_eq!(code, 200, "the request in flight finished: {body}");
    assert_eq!(children_of(pid), 0);
    assert!(!baton.control.exists(), "the control socket is removed");
}
