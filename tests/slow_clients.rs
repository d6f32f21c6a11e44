//! Slow clients never hold a worker (process backend, `concurrency = 1`): uploads that trickle
//! and clients that never read cost baton memory or a temporary file; streams keep their
//! latency; idle tunnels are closed with a close frame; bad bodies get their 4xx.

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
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn single_threaded(workers: usize, extra: &str) -> Baton {
    let extra = format!("[workers]\ncount = {workers}\nconcurrency = 1\n{extra}");
    Baton::start(workers, "0s", &extra)
}

fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_body_of_known_length_reaches_the_worker_whole_however_it_comes() {
    let _serial = serial();
    let baton = single_threaded(1, "");
    let mut s = TcpStream::connect(baton.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The head, then the body in pieces, the last a moment later: the worker gets it whole.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\n\r\nhel")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"lo ").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"world").unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body(&mut s, &head), "hello world");
    // The connection goes on: a PUT with the next request right behind its body, then a GET.
    s.write_all(b"PUT /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabcGET /bytes/5 HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s), "abc");
    assert_eq!(read_response(&mut s).len(), 5);
    // A POST without a body.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(
        head.to_lowercase().contains("\r\ncontent-length: 0\r\n"),
        "{head}"
    );
    assert_eq!(baton.status().workers[0].processed, 4);
}

/// `/metrics` from the control socket.
fn metrics(baton: &Baton) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(&baton.control).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_request_whose_client_left_while_it_waited_reaches_no_worker() {
    let _serial = serial();
    let baton = single_threaded(1, "");
    // The only worker is busy for two seconds.
    let addr = baton.addr;
    let busy = std::thread::spawn(move || {
        raw(
            addr,
            b"GET /sleep/2000 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        )
    });
    baton.wait_until(Duration::from_secs(5), |s| s.workers[0].sessions == 1);
    // Clients that give up while they wait: one closes its connection, one shuts down its
    // sending side only (as nginx, baton takes that for gone), one pipelined a second request
    // before it closed.
    let ask = |req: &[u8]| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(req).unwrap();
        c
    };
    let closes = ask(b"GET /sleep/2000 HTTP/1.1\r\nHost: app\r\n\r\n");
    let half = ask(b"GET /sleep/2000 HTTP/1.1\r\nHost: app\r\n\r\n");
    let pipelines = ask(b"GET /sleep/2000 HTTP/1.1\r\nHost: app\r\n\r\nGET /sleep/2000 HTTP/1.1\r\nHost: app\r\n\r\n");
    // And one whose request hyper serves (its body is chunked).
    let posts = ask(
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    baton.wait_until(Duration::from_secs(5), |s| s.queue == 4);
    drop(closes);
    half.shutdown(std::net::Shutdown::Write).unwrap();
    drop(pipelines);
    drop(posts);
    let s = baton.wait_until(Duration::from_secs(5), |s| s.queue == 0);
    assert_eq!(
        s.workers[0].sessions, 1,
        "the queue emptied while the first request still ran"
    );
    assert!(busy.join().unwrap().starts_with("HTTP/1.1 200"));
    // The next client is served, and the worker saw none of the requests nobody waited for.
    let (code, _) = get(&baton.url("/"));
    assert_eq!(code, 200);
    assert_eq!(baton.status().workers[0].processed, 2);
    let m = metrics(&baton);
    assert!(
        m.contains("baton_requests_abandoned_total{app=\"test\"} 4"),
        "{m}"
    );
    drop(half);
}

#[test]
fn slow_uploads_and_clients_that_never_read_hold_no_worker() {
    let _serial = serial();
    let baton = single_threaded(2, "");
    // 8 uploads that send one byte a second.
    let mut uploads: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(baton.addr).unwrap();
            s.write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // 4 clients that ask for 10 MB and never read it.
    let readers: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(baton.addr).unwrap();
            s.write_all(b"GET /bytes/10000000 HTTP/1.1\r\nHost: app\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // As many load connections as workers: a GET then waits only if a slow client holds one.
    let load = Load::start(baton.addr, 2, "/", Duration::from_secs(5));
    let mut max_queue = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        for u in &mut uploads {
            let _ = u.write_all(b"x");
        }
        let s = baton.status();
        // The first second: the 10 MB answers are being written (the workers' own time).
        if start.elapsed() > Duration::from_secs(1) {
            max_queue = max_queue.max(s.queue);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}\n{}", report.errors, baton.log());
    assert!(report.ok > 100, "{report:?}");
    assert_eq!(max_queue, 0, "a GET waited for a slow client");
    // The load stopped: now nothing but slow clients is connected, and no worker is theirs.
    std::thread::sleep(Duration::from_millis(300));
    let s = baton.status();
    assert!(
        s.workers.iter().all(|w| w.sessions == 0),
        "slow clients hold workers: {s:#?}"
    );
    drop(readers);
    drop(uploads);
}

#[test]
fn a_large_download_to_a_slow_reader_goes_to_a_file_and_frees_the_worker() {
    let _serial = serial();
    let baton = single_threaded(1, "[listen]\nbuffer_memory = \"1MiB\"\n");
    let rss_before = rss_kb(baton.child.id());
    let mut s = TcpStream::connect(baton.addr).unwrap();
    s.write_all(b"GET /bytes/1000000000 HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    // The worker is free as soon as it has written its answer, long before the client reads it.
    baton.wait_until(Duration::from_secs(60), |st| {
        st.workers[0].processed >= 1 && st.workers[0].sessions == 0
    });
    let rss_after = rss_kb(baton.child.id());
    assert!(
        rss_after < rss_before + 20_000,
        "baton grew from {rss_before} to {rss_after} kB for a 1 GB answer"
    );
    let (status, _) = get(&baton.url("/"));
    assert_eq!(status, 200, "the worker serves others meanwhile");
    // The slow reader still gets all of it.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut head_done = false;
    let mut head = Vec::new();
    while total < 1_000_000_000 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {total} bytes");
        if head_done {
            total += n as u64;
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                head_done = true;
                total += (head.len() - i - 4) as u64;
            }
        }
    }
    assert_eq!(total, 1_000_000_000);
}

#[test]
fn server_sent_events_keep_their_latency() {
    let _serial = serial();
    let baton = single_threaded(1, "");
    let mut s = TcpStream::connect(baton.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /events/10 HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    let mut seen = String::new();
    let mut delays = Vec::new();
    let mut buf = [0u8; 4096];
    while delays.len() < 10 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(i) = seen.find("data: ") {
            let Some(end) = seen[i..].find("\n\n") else {
                break;
            };
            let sent: u128 = seen[i + 6..i + end].trim().parse().unwrap();
            delays.push(now.saturating_sub(sent));
            seen.drain(..i + end + 2);
        }
    }
    let worst = delays.iter().max().unwrap();
    // Each event is written 100 ms after the one before: any buffering delay would show.
    assert!(*worst < 20_000, "event delays (µs): {delays:?}");
}

#[test]
fn an_idle_websocket_is_closed_with_a_close_frame_and_frees_its_worker() {
    let _serial = serial();
    let baton = single_threaded(1, "[listen]\ntunnel_idle_timeout = \"1s\"\n");
    let mut s = TcpStream::connect(baton.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    assert_eq!(
        baton.status().workers[0].sessions,
        1,
        "the tunnel holds its worker"
    );
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        rest,
        [0x88, 0x02, 0x03, 0xe9],
        "a close frame, 1001 going away"
    );
    baton.wait_until(Duration::from_secs(5), |st| st.workers[0].sessions == 0);
    let (status, _) = get(&baton.url("/"));
    assert_eq!(status, 200);
}

#[test]
fn bad_bodies_get_their_own_answers() {
    let _serial = serial();
    let baton = single_threaded(
        1,
        "[listen]\nmax_body_size = \"1KiB\"\nclient_body_timeout = \"1s\"\n",
    );
    let cases: &[(&[u8], &str)] = &[
        (
            b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
            "HTTP/1.1 413",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc",
            "HTTP/1.1 408",
        ),
    ];
    for (request, expected) in cases {
        let answer = raw(baton.addr, request);
        assert!(
            answer.starts_with(expected),
            "{:?} -> {answer}",
            String::from_utf8_lossy(request)
        );
    }
    // A chunked upload over the limit.
    let mut chunked =
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'y'; 512]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(baton.addr, &chunked);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A buffered chunked upload reaches the worker whole, with its length.
    let answer = raw(
        baton.addr,
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello world"),
        "{answer}"
    );
    // None of these is the worker's fault.
    let metrics = baton.cli(&["status", "--json"]);
    assert!(metrics.status.success());
    assert!(!baton.log().contains("failed to answer"), "{}", baton.log());
}

#[test]
fn max_body_size_holds_for_streamed_bodies_too() {
    let _serial = serial();
    let baton = single_threaded(
        1,
        "[listen]\nrequest_buffering = false\nmax_body_size = \"1KiB\"\n",
    );
    let answer = raw(
        baton.addr,
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A chunked body that says nothing of its length is cut once it passes the limit.
    let mut chunked =
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..8 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'y'; 512]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(baton.addr, &chunked);
    // Streamed, the worker may have begun its answer (the echo answers as it reads) before the
    // limit was crossed: then its answer is cut, never completed. Either way the client never
    // gets a whole answer to a body over the limit.
    let cut = answer.starts_with("HTTP/1.1 200") && !answer.ends_with("0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413") || cut, "{answer}");
    assert!(
        answer.matches('y').count() <= 1024,
        "more than the limit echoed: {answer}"
    );
    // Within the limit, streamed as it came (and answered chunked: no length is known).
    let answer = raw(
        baton.addr,
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("hello") && answer.contains(" world"),
        "{answer}"
    );
    let (status, _) = get(&baton.url("/"));
    assert_eq!(status, 200, "the worker serves on");
}

#[test]
fn a_websocket_cut_by_a_restart_gets_a_close_frame() {
    let _serial = serial();
    let baton = single_threaded(
        1,
        "[readiness]\nsettle = \"100ms\"\n[restart]\ndrain_timeout = \"1s\"\n",
    );
    let mut s = TcpStream::connect(baton.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    let out = baton.cli(&["restart", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(
        rest,
        [0x88, 0x02, 0x03, 0xe9],
        "a close frame, 1001 going away"
    );
}
