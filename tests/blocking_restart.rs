//! Blocking restarts: requests wait in the queue while the workers are replaced; a full queue
//! answers 503.

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

#[test]
fn blocking_restart_queues_requests_and_serves_them_all() {
    let _serial = serial();
    let baton = Baton::start(
        2,
        "1s",
        "[workers]\ncount = 2\nconcurrency = 1\nmax_queue = 1000\n",
    );
    let old: Vec<u32> = baton
        .status()
        .workers
        .iter()
        .filter_map(|w| w.pid)
        .collect();
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let control = baton.control.clone();
    let sampler = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut peak_queue = 0;
        for _ in 0..60 {
            if let Ok(s) = rt.block_on(status_async(&control)) {
                peak_queue = peak_queue.max(s.queue);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak_queue
    });
    let out = baton.cli(&["restart", "--blocking", "--wait"]);
    let report = load.stop();
    let peak_queue = sampler.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("blocking restart to generation 2 finished")
    );
    assert_eq!(report.failed, 0, "{:?}\n{}", report.errors, baton.log());
    assert!(
        peak_queue > 0,
        "requests waited in the queue during the restart"
    );
    let s = baton.status();
    assert!(
        s.workers
            .iter()
            .all(|w| w.generation == 2 && !old.contains(&w.pid.unwrap()))
    );
}

#[test]
fn a_full_queue_answers_503() {
    let _serial = serial();
    let baton = Baton::start(
        1,
        "200ms",
        "[workers]\ncount = 1\nconcurrency = 1\nmax_queue = 2\n",
    );
    let busy = {
        let url = baton.url("/sleep/2000");
        std::thread::spawn(move || get(&url))
    };
    std::thread::sleep(Duration::from_millis(200));
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let url = baton.url("/");
            std::thread::spawn(move || get(&url))
        })
        .collect();
    baton.wait_until(Duration::from_secs(5), |s| s.queue == 2);
    let (status, body) = get(&baton.url("/"));
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "baton: all workers are busy and the queue is full (2 waiting)\n"
    );
    assert_eq!(busy.join().unwrap().0, 200);
    for q in queued {
        assert_eq!(
            q.join().unwrap().0,
            200,
            "queued requests are served once the worker is free"
        );
    }
}
