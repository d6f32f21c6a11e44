//! The canary judge end to end (process backend): a release that boots and answers its
//! readiness path but fails a tenth of its visitors is stopped at its canary, with the figures
//! in `restart --wait`, status and metrics, and the old generation serving; a release as
//! flaky as the old one rolls through, roll after roll; and an inconclusive canary does what
//! `on_inconclusive` says.

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

/// A release that answers 500 on every page (issue 36) is judged from its first request,
/// through its 2 s settle period: visitors see about the first look's evidence (20 requests,
/// and what is in flight when the judge looks), not the whole settle window's share of the
/// traffic, and no old worker was stopped.
#[test]
fn a_release_that_fails_every_page_costs_only_the_first_look() {
    let _serial = serial();
    // The default settle period (2 s), the default canary.
    let health = "[readiness]\nhttp_path = \"/health\"\n";
    let mut baton = Baton::start(3, "200ms", health);
    let old_pids: Vec<_> = baton.status().workers.iter().map(|w| w.pid).collect();
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    baton.deploy(Release::Errors(100));
    let out = baton.cli(&["restart", "--wait"]);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let total = report.ok + report.failed;
    println!(
        "restart --wait exited {:?}; visitors saw {} of {total} requests fail\n{stderr}",
        out.status.code(),
        report.failed
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", baton.log());
    assert!(stderr.contains("canary judge"), "{stderr}");
    assert!(report.failed <= 60, "{} of {total} failed", report.failed);
    let pids: Vec<_> = baton.status().workers.iter().map(|w| w.pid).collect();
    for pid in &old_pids {
        assert!(
            pids.contains(pid),
            "old worker {pid:?} was stopped: {pids:?}"
        );
    }
}

/// A release whose pages hang (all but its readiness path, issue 36) fails its canary within
/// its duration, before any old worker was drained: a request that never ends is seen in
/// flight (5 s, the hang bound's floor), not waited for; the requests it held are sent again
/// to the old workers, so under load at most 1 % of requests fail.
#[test]
fn a_release_whose_pages_hang_fails_its_canary() {
    let _serial = serial();
    let extra = format!("{HEALTH}[canary]\nduration = \"10s\"\n");
    let mut baton = Baton::start(3, "200ms", &extra);
    let old_pids: Vec<_> = baton.status().workers.iter().map(|w| w.pid).collect();
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    baton.deploy(Release::HangsAfter(0));
    let began = Instant::now();
    let out = baton.cli(&["restart", "--wait"]);
    let took = began.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let total = report.ok + report.failed;
    println!(
        "restart --wait exited {:?} after {:.1}s; {} of {total} requests failed: {:?}\n{stderr}",
        out.status.code(),
        took.as_secs_f64(),
        report.failed,
        &report.errors[..report.errors.len().min(5)]
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", baton.log());
    assert!(stderr.contains("its pages hang"), "{stderr}");
    assert!(took < Duration::from_secs(13), "judged late: {took:?}");
    assert!(
        (report.failed as f64) <= 0.01 * total as f64,
        "{} of {total} failed: {:?}",
        report.failed,
        &report.errors[..report.errors.len().min(5)]
    );
    let pids: Vec<_> = baton.status().workers.iter().map(|w| w.pid).collect();
    for pid in &old_pids {
        assert!(
            pids.contains(pid),
            "old worker {pid:?} was stopped: {pids:?}"
        );
    }
}

/// Equal releases as a real app is: 1 % of pages fail, and answer times have a heavy tail
/// (the demo's `varied 2ms`: a tenth of the answers over 6 ms, a hundredth over 20 ms), in
/// both generations: every one of 20 rolls goes through, neither the error judge nor the
/// latency judge calling an equal release worse.
#[test]
fn a_release_as_flaky_as_the_old_one_rolls_through_every_time() {
    let _serial = serial();
    let extra =
        format!("{HEALTH}[canary]\nduration = \"3s\"\nmin_requests = 100\n[workers]\ncount = 2\n");
    let release = Release::FlakyAndVaried(1, 2);
    let mut baton = Baton::start_release(2, "100ms", &extra, release, true);
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    let rolls = 20;
    let mut passed = 0;
    for roll in 0..rolls {
        baton.deploy(release);
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
        "{passed} of {rolls} rolls of a release failing 1 % of requests with heavy-tailed answer times, like the old one, went through; {} of {total} requests failed ({:.2} %)",
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

/// Samples the live ready workers (listed ready, process alive) every 100 ms.
struct LiveSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<usize>>,
}

impl LiveSampler {
    fn start(control: std::path::PathBuf) -> LiveSampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut live = Vec::new();
            while !s.load(Ordering::SeqCst) {
                if let Ok(snap) = rt.block_on(status_async(&control)) {
                    live.push(
                        snap.workers
                            .iter()
                            .filter(|w| {
                                w.state == "ready"
                                    && w.pid.is_some_and(|p| {
                                        std::fs::read_to_string(format!("/proc/{p}/stat"))
                                            .is_ok_and(|s| !s.contains(") Z "))
                                    })
                            })
                            .count(),
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            live
        });
        LiveSampler { stop, handle }
    }

    fn stop(self) -> Vec<usize> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

#[test]
fn releases_that_die_five_or_eight_seconds_after_they_start_never_succeed() {
    let _serial = serial();
    for ms in [5000, 8000] {
        // Every canary setting at its default (the harness shortens the duration).
        let mut baton = Baton::start(3, "200ms", "[canary]\nduration = \"30s\"\n");
        let sampler = LiveSampler::start(baton.control.clone());
        let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        baton.deploy(Release::CrashesSoonAfterReady(ms));
        let began = Instant::now();
        let out = baton.cli(&["restart", "--wait"]);
        let took = began.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let report = load.stop();
        let live = sampler.stop();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let deaths = baton.log().matches("demo-app: crashing").count();
        println!(
            "a release whose processes die {ms} ms after they start: restart --wait exited {:?} after {:.1}s; {} of {} requests failed ({} cut short), {deaths} workers died; live ready workers every 100 ms: {live:?}",
            out.status.code(),
            took.as_secs_f64(),
            report.failed,
            report.ok + report.failed,
            report.cut
        );
        assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", baton.log());
        assert!(
            stderr.contains("before the restart ended"),
            "{ms}: {stderr}"
        );
        assert!(took < Duration::from_secs(20), "judged late: {took:?}");
        assert!(
            live.iter().all(|n| *n >= 2),
            "capacity fell while the release died: {live:?}"
        );
        // Nobody sees an error but an answer its worker died in the middle of.
        report.assert_only_answers_cut_by(deaths, &baton.log());
        let s = baton.status();
        assert!(s.resisting_deployment_error.is_some(), "{s:#?}");
        assert!(
            s.workers
                .iter()
                .filter(|w| w.state == "ready")
                .all(|w| w.generation == 1),
            "{s:#?}"
        );
    }
}

#[test]
fn a_release_that_turns_bad_after_its_roll_is_rolled_back_by_itself() {
    let _serial = serial();
    let extra =
        format!("{HEALTH}[canary]\nduration = \"2s\"\nwatch = \"60s\"\n[workers]\ncount = 2\n");
    let mut baton = Baton::start(2, "100ms", &extra);
    let sampler = LiveSampler::start(baton.control.clone());
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    // Fine through its canary and its roll, then a third of its answers are 500s.
    baton.deploy(Release::ErrorsAfter(30, 8000));
    let out = baton.cli(&["restart", "--wait"]);
    let rolled = Instant::now();
    assert!(
        out.status.success(),
        "the roll itself went through: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = baton.wait_until(Duration::from_secs(40), |s| {
        s.resisting_deployment_error.is_some()
            && s.workers.iter().filter(|w| w.state == "ready").count() == 2
            && s.workers.iter().all(|w| w.generation == 3)
    });
    let took = rolled.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let live = sampler.stop();
    let reason = &s.resisting_deployment_error.as_ref().unwrap().reason;
    println!(
        "rolled back {:.1}s after the roll ended: {reason}\n{} of {} requests failed; live ready workers every 100 ms: {live:?}",
        took.as_secs_f64(),
        report.failed,
        report.ok + report.failed
    );
    assert!(
        reason.contains("since its roll ended")
            && reason.contains("rolled back to the release of generation 1"),
        "{reason}"
    );
    assert!(live.iter().all(|n| *n >= 1), "{live:?}");
    let (status, body) = get(&baton.url("/"));
    assert_eq!(status, 200);
    assert!(body.contains("release r1"), "{body}");
    assert!(baton.log().contains("by itself"), "{}", baton.log());
}

#[test]
fn baton_rollback_goes_back_to_the_pinned_release_and_says_when_it_is_gone() {
    let _serial = serial();
    let mut baton = Baton::start(2, "100ms", "");
    // Nothing to roll back to yet: refused at once, also without --wait.
    let out = baton.cli(&["rollback"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rollback refused (409 Conflict)")
            && stderr.contains("no earlier generation to roll back to"),
        "{stderr}"
    );
    baton.deploy(Release::Good);
    assert!(baton.cli(&["restart", "--wait"]).status.success());
    assert!(get(&baton.url("/")).1.contains("release r2"));
    // `current` points at r2 still: the rollback goes to the directory generation 1 pinned.
    let out = baton.cli(&["rollback", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}\n{}", baton.log());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "rolled back from generation 2 to the release of generation 1 as generation 3"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("rollback to the release of generation 1"),
        "{stderr}"
    );
    let s = baton.status();
    assert!(s.workers.iter().all(|w| w.generation == 3), "{s:#?}");
    assert!(get(&baton.url("/")).1.contains("release r1"));
    // A new release, then its predecessor's directory is removed: refused, with the reason.
    baton.deploy(Release::Good);
    assert!(baton.cli(&["restart", "--wait"]).status.success());
    std::fs::remove_dir_all(baton.dir.path().join("releases/r1")).unwrap();
    let out = baton.cli(&["rollback", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the release directory of generation 3")
            && stderr.contains("no longer exists"),
        "{stderr}"
    );
    assert!(get(&baton.url("/")).1.contains("release r3"));
}

/// The watch sees hangs too (issue 36): a release that starts hanging 8 s after it listens,
/// after its roll went through, is rolled back by itself once two of its workers have held a
/// request past the hang bound (5 s), and the old release serves again.
#[test]
fn a_generation_that_starts_hanging_after_its_roll_is_rolled_back() {
    let _serial = serial();
    let extra =
        format!("{HEALTH}[canary]\nduration = \"2s\"\nwatch = \"60s\"\n[workers]\ncount = 2\n");
    let mut baton = Baton::start(2, "100ms", &extra);
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    baton.deploy(Release::HangsAfter(8000));
    let out = baton.cli(&["restart", "--wait"]);
    let rolled = Instant::now();
    assert!(
        out.status.success(),
        "the roll itself went through: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = baton.wait_until(Duration::from_secs(40), |s| {
        s.resisting_deployment_error.is_some()
            && s.workers.iter().filter(|w| w.state == "ready").count() == 2
            && s.workers.iter().all(|w| w.generation == 3)
    });
    let took = rolled.elapsed();
    let report = load.stop();
    let reason = &s.resisting_deployment_error.as_ref().unwrap().reason;
    println!(
        "rolled back {:.1}s after the roll ended: {reason}\n{} of {} requests failed",
        took.as_secs_f64(),
        report.failed,
        report.ok + report.failed
    );
    assert!(reason.contains("its pages hang"), "{reason}");
    // Hanging from 8 s after it listened, judged 5 s later, its workers cut at once: not
    // after drain_timeout (30 s).
    assert!(took < Duration::from_secs(25), "rolled back after {took:?}");
    let (status, body) = get(&baton.url("/"));
    assert_eq!(status, 200);
    assert!(body.contains("release r1"), "{body}");
}

/// Latency is judged (issue 36): from a release that answers in 10 ms, one 1.2 times slower
/// rolls (within `latency_tolerance`), and one three times slower than that is resisted,
/// with both generations' figures in the reason.
#[test]
fn a_release_three_times_slower_is_resisted_and_one_a_fifth_slower_rolls() {
    let _serial = serial();
    let extra = format!("{HEALTH}[canary]\nduration = \"10s\"\n");
    let mut baton = Baton::start_release(3, "100ms", &extra, Release::Slow(10), true);
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    baton.deploy(Release::Slow(12));
    let out = baton.cli(&["restart", "--wait"]);
    assert!(
        out.status.success(),
        "1.2x slower: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    baton.deploy(Release::Slow(36));
    let began = Instant::now();
    let out = baton.cli(&["restart", "--wait"]);
    let took = began.elapsed();
    let report = load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!(
        "3x slower: exit {:?} after {:.1}s; {} of {} requests failed\n{stderr}",
        out.status.code(),
        took.as_secs_f64(),
        report.failed,
        report.ok + report.failed
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("slower beyond canary.latency_tolerance") && stderr.contains("p50"),
        "{stderr}"
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}
