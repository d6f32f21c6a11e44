//! Health for load balancers and the lame duck on stop: `GET /health` says 503 as soon as baton
//! is told to stop, while it keeps serving for `shutdown_delay`.

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
