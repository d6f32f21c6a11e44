//! The pool between restarts: spawning on demand up to max, idle cleaning down to min,
//! recycling after max_requests and above memory_limit, the freeze while resisting, metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::time::Duration;

fn ready(s: &baton::status::Snapshot) -> usize {
    s.workers.iter().filter(|w| w.state == "ready").count()
}

#[test]
fn spawns_on_demand_up_to_max_and_idle_cleans_down_to_min() {
    let _serial = serial();
    let baton = Baton::start(
        1,
        "200ms",
        "[workers]\nmin = 1\nmax = 3\nconcurrency = 1\nidle_timeout = \"2s\"\n",
    );
    let load = Load::start(baton.addr, 3, "/sleep/300", Duration::from_secs(10));
    let grown = baton.wait_status(Duration::from_secs(10), "3 workers ready under load", |s| {
        ready(s) == 3
    });
    assert!(
        grown.workers.len() <= 3,
        "never beyond max: {:?}",
        grown.workers
    );
    // The load goes on with every worker busy, three more answers each (a second of
    // /sleep/300): the pool stays at max all the while.
    let served = |s: &baton::status::Snapshot| s.workers.iter().map(|w| w.processed).sum::<u64>();
    let before = served(&grown);
    baton.wait_status(
        Duration::from_secs(10),
        "nine more answers under load",
        |s| {
            assert!(s.workers.len() <= 3, "never beyond max: {:?}", s.workers);
            served(s) >= before + 9
        },
    );
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    // Idle beyond idle_timeout: back to min.
    let s = baton.wait_until(Duration::from_secs(10), |s| s.workers.len() == 1);
    assert_eq!(ready(&s), 1);
    assert!(baton.log().contains("idle for"), "{}", baton.log());
}

#[test]
fn resistance_freezes_idle_cleaning_until_resume() {
    let _serial = serial();
    let mut baton = Baton::start(
        1,
        "200ms",
        "[workers]\nmin = 1\nmax = 3\nconcurrency = 1\nidle_timeout = \"1s\"\n",
    );
    let load = Load::start(baton.addr, 3, "/sleep/300", Duration::from_secs(10));
    baton.wait_until(Duration::from_secs(10), |s| ready(s) == 3);
    baton.deploy(Release::ExitsAtBoot);
    let out = baton.cli(&["restart", "--wait"]);
    let report = load.stop();
    assert!(!out.status.success());
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let before = baton.status();
    assert!(before.resisting_deployment_error.is_some());
    let count = before.workers.len();
    assert!(count >= 2, "{:?}", before.workers);
    // Every worker idle for well past idle_timeout (1 s), over several of the supervisor's
    // half-second ticks: nothing is cleaned while resisting.
    baton.wait_status(Duration::from_secs(15), "every worker idle for 3 s", |s| {
        assert_eq!(
            s.workers.len(),
            count,
            "idle cleaning is frozen while resisting: {:?}",
            s.workers
        );
        s.workers
            .iter()
            .all(|w| w.last_used_s.unwrap_or(w.uptime_s) >= 3)
    });
    assert!(baton.cli(&["resume"]).status.success());
    baton.wait_until(Duration::from_secs(10), |s| s.workers.len() == 1);
}

#[test]
fn workers_are_recycled_after_max_requests_without_a_failed_request() {
    let _serial = serial();
    let baton = Baton::start(
        2,
        "200ms",
        "[workers]\ncount = 2\nconcurrency = 0\nmax_requests = 200\n",
    );
    let first: Vec<u64> = baton.status().workers.iter().map(|w| w.id).collect();
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    let mut min_ready = usize::MAX;
    let start = std::time::Instant::now();
    let mut recycled = false;
    while start.elapsed() < Duration::from_secs(15) {
        let s = baton.status();
        min_ready = min_ready.min(ready(&s));
        if s.workers.iter().all(|w| !first.contains(&w.id)) && ready(&s) == 2 {
            recycled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = load.stop();
    assert!(recycled, "both workers recycled\n{}", baton.log());
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        min_ready >= 2,
        "never fewer than min ready (saw {min_ready})"
    );
    assert!(baton.log().contains("(max_requests)"));
}

#[test]
fn a_worker_above_memory_limit_is_recycled() {
    let _serial = serial();
    let baton = Baton::start(
        2,
        "200ms",
        "[workers]\ncount = 2\nconcurrency = 0\nmemory_limit = \"60MiB\"\n",
    );
    let (status, body) = get(&baton.url("/alloc/80"));
    assert_eq!(status, 200, "{body}");
    let fat_pid: u32 = body.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let load = Load::start(baton.addr, 4, "/", Duration::from_secs(10));
    let s = baton.wait_until(Duration::from_secs(15), |s| {
        ready(s) == 2 && s.workers.iter().all(|w| w.pid != Some(fat_pid))
    });
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(s.workers.len(), 2);
    assert!(
        baton.log().contains("(memory_limit 60 MiB)"),
        "{}",
        baton.log()
    );
}

#[test]
fn metrics_are_served_on_the_control_socket_and_tcp() {
    let _serial = serial();
    let port = free_port();
    let baton = Baton::start(
        1,
        "100ms",
        &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"),
    );
    for _ in 0..5 {
        assert_eq!(get(&baton.url("/")).0, 200);
    }
    let (status, tcp) = get(&format!("http://127.0.0.1:{port}/metrics"));
    assert_eq!(status, 200);
    for needle in [
        "baton_requests_total{app=\"test\",class=\"2xx\"} 5",
        "baton_request_duration_seconds_count{app=\"test\"} 5",
        "baton_workers{app=\"test\",state=\"ready\",generation=\"1\"} 1",
        "baton_queue{app=\"test\"} 0",
        "baton_resisting{app=\"test\"} 0",
        "baton_restarts_total{app=\"test\",outcome=\"succeeded\"} 0",
        "baton_drain_oldest_request_seconds{app=\"test\"} 0",
    ] {
        assert!(tcp.contains(needle), "missing {needle} in\n{tcp}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let via_socket = rt.block_on(async {
        baton::control::client::request(&baton.control, http::Method::GET, "/metrics")
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(via_socket.contains("baton_requests_total{app=\"test\",class=\"2xx\"}"));
}
