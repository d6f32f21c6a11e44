//! The control plane keeps time under a load that saturates the machine: readiness is seen
//! within a small margin of a worker answering, and `readiness.timeout` fires on time.
//! Margins are generous (a noisy 2-core machine): what they catch is seconds of starvation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn direct_get_ok(address: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

#[test]
fn readiness_and_its_timeout_keep_time_under_a_saturating_load() {
    let _serial = serial();
    // Connection-per-request traffic leaves thousands of TIME_WAIT sockets behind (they last a
    // minute, the whole test); a readiness check that read the machine's socket table took
    // seconds then.
    let churn = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let churn_addr = churn.local_addr().unwrap();
    let acceptor = std::thread::spawn(move || {
        for s in churn.incoming().take(15_000) {
            drop(s);
        }
    });
    for _ in 0..15_000 {
        // The client closes first: the TIME_WAIT is on this side, as behind a busy proxy.
        drop(std::net::TcpStream::connect(churn_addr).unwrap());
    }
    acceptor.join().unwrap();
    let time_wait = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("06"))
        .count();
    assert!(time_wait > 5_000, "only {time_wait} TIME_WAIT sockets");

    let mut baton = Baton::start(
        2,
        "0s",
        "[workers]\ncount = 2\nconcurrency = 1\n[readiness]\ntimeout = \"3s\"\nsettle = \"300ms\"\n",
    );
    // CPU-bound requests on more connections than workers: both cores busy, the queue never
    // empty, the proxy busy too.
    let load = Load::start(baton.addr, 8, "/burn/5", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        baton.status().queue > 0,
        "the load must keep the app queue non-empty"
    );

    // A release that never becomes ready is resisted when readiness.timeout says.
    baton.deploy(Release::NeverReady);
    let started = Instant::now();
    let out = baton.cli(&["restart", "--wait"]);
    let took = started.elapsed();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was not ready within 3s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(5),
        "resisted after {took:?}; readiness.timeout is 3s"
    );

    // A good release: each new worker is marked ready soon after it first answers.
    baton.deploy(Release::Good);
    let control = baton.control.clone();
    let restart = std::thread::spawn({
        let control = control.clone();
        move || {
            std::process::Command::new(BATON)
                .args(["restart", "--wait", "--control"])
                .arg(control)
                .output()
                .unwrap()
        }
    });
    let mut answered: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut ready: BTreeMap<u64, Instant> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !restart.is_finished() && Instant::now() < deadline {
        let Ok(s) = baton.try_status() else { continue };
        for w in s.workers.iter().filter(|w| w.generation == 3) {
            if w.state == "ready" {
                ready.entry(w.id).or_insert_with(Instant::now);
            } else if !answered.contains_key(&w.id) && direct_get_ok(&w.address) {
                answered.insert(w.id, Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = restart.join().unwrap();
    let report = load.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        !answered.is_empty(),
        "no new worker was seen answering before it was ready"
    );
    for (id, t) in &answered {
        let r = ready.get(id).copied().unwrap_or_else(Instant::now);
        let late = r.saturating_duration_since(*t);
        assert!(
            late < Duration::from_millis(750),
            "worker {id} was marked ready {late:?} after it answered (control {})",
            control.display()
        );
    }
}

fn nice(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[test]
fn a_booting_worker_runs_at_low_cpu_priority_until_it_is_ready() {
    if !nix::unistd::geteuid().is_root() {
        skip(
            "boot CPU priority",
            "only a privileged baton can raise a worker's priority back",
        );
        return;
    }
    let _serial = serial();
    let baton = Baton::start_release(1, "1500ms", "", Release::Good, false);
    let spawning = baton.wait_until(Duration::from_secs(10), |s| {
        s.workers
            .iter()
            .any(|w| w.state == "spawning" && w.pid.is_some())
    });
    let pid = spawning.workers[0].pid.unwrap();
    assert_eq!(
        nice(pid),
        10,
        "boot_cpu_weight = \"low\" (the default) is nice 10"
    );
    baton.wait_until(Duration::from_secs(10), |s| {
        s.workers.iter().all(|w| w.state == "ready")
    });
    assert_eq!(nice(pid), 0, "a ready worker runs at normal priority");
}
