//! The canary judge end to end (process backend): a release that boots and answers its
//! readiness path but fails a tenth of its visitors is stopped at its canary, with the figures
//! in `restart --wait`, status and metrics, and the old generation serving; a release as
//! flaky as the old one rolls through, roll after roll; and an inconclusive canary does what
//! `on_inconclusive` says.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Readiness asks /health, which a release with a database error still answers.
const HEALTH: &str = "[readiness]\nhttp_path = \"/health\"\nsettle = \"500ms\"\n";

#[test]
fn a_release_that_fails_a_tenth_of_its_requests_is_stopped_at_the_canary() {
    let _serial = serial();
    // The default canary: one worker, 30 s, 200 requests.
    let port = free_port();
    let extra = format!(
        "{HEALTH}[canary]\nduration = \"30s\"\n[metrics]\naddress = \"127.0.0.1:{port}\"\n"
    );
    let mut baton = Baton::start(4, "200ms", &extra);
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    baton.deploy(Release::Errors(10));
    let began = Instant::now();
    let out = baton.cli(&["restart", "--wait"]);
    let took = began.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let total = report.ok + report.failed;
    println!(
        "restart --wait exited {:?} after {:.1}s; visitors saw {} of {total} requests fail ({:.3} %)\n{stderr}",
        out.status.code(),
        took.as_secs_f64(),
        report.failed,
        100.0 * report.failed as f64 / total as f64
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", baton.log());
    assert!(
        stderr.contains("generation 2 failed") && stderr.contains("canary judge"),
        "{stderr}"
    );
    // Judged long before the window's end: the evidence came fast.
    assert!(took < Duration::from_secs(20), "judged late: {took:?}");
    // The canary is one worker of five for a few seconds, failing a tenth of its share:
    // at most a tenth of a fifth of the traffic, far less over the whole test.
    assert!(
        (report.failed as f64) < 0.02 * total as f64,
        "{} of {total} failed",
        report.failed
    );
    let s = baton.status();
    let resisting = s
        .resisting_deployment_error
        .as_ref()
        .expect("resisting after a failed canary");
    assert!(resisting.reason.contains("canary judge"), "{resisting:?}");
    let ready: Vec<_> = s.workers.iter().filter(|w| w.state == "ready").collect();
    assert_eq!(ready.len(), 4, "{s:#?}");
    assert!(ready.iter().all(|w| w.generation == 1), "{s:#?}");
    assert!(
        s.workers.iter().all(|w| w.generation == 1),
        "the canary was not stopped: {s:#?}"
    );
    let (_, metrics) = get(&format!("http://127.0.0.1:{port}/metrics"));
    assert!(
        metrics.contains("baton_canary_verdicts_total{app=\"test\",verdict=\"worse\"} 1"),
        "{metrics}"
    );
    assert!(
        baton.log().contains("rejecting generation 2"),
        "{}",
        baton.log()
    );
    // A good release afterwards rolls out.
    baton.deploy(Release::Good);
    let out = baton.cli(&["restart", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_release_as_flaky_as_the_old_one_rolls_through_every_time() {
    let _serial = serial();
    let extra =
        format!("{HEALTH}[canary]\nduration = \"3s\"\nmin_requests = 100\n[workers]\ncount = 2\n");
    let mut baton = Baton::start_release(2, "100ms", &extra, Release::Errors(1), true);
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    let rolls = 20;
    let mut passed = 0;
    for roll in 0..rolls {
        baton.deploy(Release::Errors(1));
        let out = baton.cli(&["restart", "--wait"]);
        if out.status.success() {
            passed += 1;
        } else {
            println!(
                "roll {roll}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            // Out of resistance for the next roll.
            baton.cli(&["resume"]);
        }
    }
    let report = load.stop();
    let total = report.ok + report.failed;
    println!(
        "{passed} of {rolls} rolls of a release failing 1 % of requests, like the old one, went through; {} of {total} requests failed ({:.2} %)",
        report.failed,
        100.0 * report.failed as f64 / total as f64
    );
    assert_eq!(passed, rolls, "{}", baton.log());
}

#[test]
fn an_inconclusive_canary_proceeds_or_resists_as_configured() {
    let _serial = serial();
    // No traffic at all: nothing to judge.
    let extra = "[canary]\nduration = \"1s\"\non_inconclusive = \"resist\"\n";
    let mut baton = Baton::start(2, "100ms", extra);
    baton.deploy(Release::Good);
    let out = baton.cli(&["restart", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fewer than canary.min_requests (200): inconclusive"),
        "{stderr}"
    );
    let s = baton.status();
    assert!(s.workers.iter().all(|w| w.generation == 1), "{s:#?}");
    // The default: an app with little traffic still deploys.
    let text = std::fs::read_to_string(&baton.config).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("on_inconclusive"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&baton.config, text).unwrap();
    let out = baton.cli(&["restart", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = baton.status();
    assert!(
        s.workers
            .iter()
            .all(|w| w.generation == 3 && w.state == "ready"),
        "{s:#?}"
    );
}
