//! Nothing crosses between clients, nothing is deleted, nothing is left behind (process backend).

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
use std::process::Command;
use std::time::{Duration, Instant};

const ECHO_WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/echo_worker.py");

/// baton in front of `workers` Python workers that never read request bodies.
fn echo_baton(workers: usize, extra: &str) -> Baton {
    let command = format!(r#"["python3", "{ECHO_WORKER}", "{{port}}"]"#);
    let extra = format!("[workers]\ncount = {workers}\nconcurrency = 1\n{extra}");
    Baton::start_command(workers, &command, &extra, true, |b| b.deploy_files(&[]))
}

/// Send raw bytes, read until the server closes or `limit` passes.
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

#[test]
fn a_response_reaches_only_the_client_that_asked() {
    let _serial = serial();
    let baton = echo_baton(1, "");
    let addr = baton.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Victims: keep-alive clients that each check they get the answer to their own request.
    let victims: Vec<_> = (0..4)
        .map(|v| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut crossed = Vec::new();
                let mut answered = 0;
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let path = format!("/victim-{v}-{i}");
                    write!(s, "GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
                    let body = read_response(&mut s);
                    if body != path {
                        crossed.push(format!("asked {path}, got {body:?}"));
                    }
                    answered += 1;
                }
                (answered, crossed)
            })
        })
        .collect();
    // The attacker: GET and POST requests whose bodies are requests themselves.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    for i in 0..40 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let request = format!(
            "{method} /attacker-{i} HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let answer = raw(addr, request.as_bytes());
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
        assert!(answer.ends_with(&format!("/attacker-{i}")), "{answer}");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for v in victims {
        let (answered, crossed) = v.join().unwrap();
        assert!(crossed.is_empty(), "responses crossed: {crossed:?}");
        total += answered;
    }
    assert!(
        total > 40,
        "too few victim requests to prove anything: {total}"
    );
}

/// What a worker sends beyond its answer never reaches the next client: the connection it came
/// on is not reused, whether the extra bytes came with the answer or a moment later.
#[test]
fn bytes_beyond_a_workers_answer_reach_nobody() {
    let _serial = serial();
    let baton = echo_baton(1, "");
    let mut s = TcpStream::connect(baton.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..20 {
        write!(s, "GET /overlong HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s), "hello");
        std::thread::sleep(Duration::from_millis(100));
        // The one worker's idle connection now holds "STOLEN!" unread.
        let path = format!("/next-{i}");
        write!(s, "GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s), path);
    }
}

/// Every framing a worker may use reaches the client whole, on a connection that goes on;
/// requests pipelined in one write are answered in order, whichever path serves them.
#[test]
fn every_framing_of_an_answer_reaches_the_client() {
    let _serial = serial();
    let baton = echo_baton(2, "");
    let mut s = TcpStream::connect(baton.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunked = |s: &mut TcpStream| {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            assert_eq!(
                s.read(&mut byte).unwrap(),
                1,
                "{}",
                String::from_utf8_lossy(&got)
            );
            got.push(byte[0]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    for _ in 0..3 {
        write!(s, "GET /chunked HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
        let answer = chunked(&mut s);
        assert!(
            answer.to_lowercase().contains("transfer-encoding: chunked"),
            "{answer}"
        );
        assert!(
            answer.contains("\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"),
            "{answer}"
        );
        assert!(
            !answer.contains("ext=") && !answer.contains("X-Trailer"),
            "{answer}"
        );
        // No length: baton gives it chunked, and the client's connection goes on.
        write!(s, "GET /until-close HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
        let answer = chunked(&mut s);
        assert!(
            answer.ends_with("\r\n\r\n6\r\nuntil \r\n5\r\nclose\r\n0\r\n\r\n"),
            "{answer}"
        );
        write!(s, "GET /interim HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s), "after hints");
        write!(s, "HEAD /x HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
        let head = read_head(&mut s).unwrap();
        assert!(head.starts_with("HTTP/1.1 "), "{head}");
    }
    // Pipelined in one write: a narrow-path GET, a POST the narrow path takes (its body has
    // a length), then a chunked POST, which hands the connection to hyper, and a GET hyper
    // serves.
    let answer = raw(
        baton.addr,
        b"GET /one HTTP/1.1\r\nHost: app\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi\
          POST /three HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
          GET /four HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    );
    let at: Vec<usize> = ["/one", "/two", "/three", "/four"]
        .iter()
        .map(|p| answer.find(p).unwrap_or(usize::MAX))
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]) && at[3] < usize::MAX,
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 4, "{answer}");
}

#[test]
fn http_edges_are_answered_by_baton() {
    let _serial = serial();
    let baton = echo_baton(1, "");
    let addr = baton.addr;
    let cases: &[(&str, &str)] = &[
        ("GET abc HTTP/1.1\r\nHost: app\r\n\r\n", "HTTP/1.1 400"),
        (
            "GET example.org:80 HTTP/1.1\r\nHost: app\r\n\r\n",
            "HTTP/1.1 400",
        ),
        ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
        // TRACE would echo cookies and credentials to the page that sent it (nginx: 405).
        ("TRACE / HTTP/1.1\r\nHost: app\r\n\r\n", "HTTP/1.1 405"),
        // A Host that is not a host and port: applications build links from it (nginx: 400),
        // whichever path the request would take.
        (
            "GET / HTTP/1.1\r\nHost: evil.com/x?y @z\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a@b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ];
    for (request, expected) in cases {
        let answer = raw(addr, request.as_bytes());
        assert!(answer.starts_with(expected), "{request:?} -> {answer}");
    }
    // The method counts toward the head limit.
    let long_method = format!("{} / HTTP/1.1\r\nHost: app\r\n\r\n", "A".repeat(130_000));
    let answer = raw(addr, long_method.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 400"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    // Connection: cannot strip end-to-end headers; forwarding headers are baton's own.
    let answer = raw(
        addr,
        b"GET /headers HTTP/1.1\r\nHost: app.example\r\nConnection: host, cookie, authorization, close\r\n\
          Cookie: a=1\r\nAuthorization: Basic eA==\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-For: 10.8.8.8\r\n\
          X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=10.9.9.9\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for line in [
        "host: app.example",
        "cookie: a=1",
        "authorization: Basic eA==",
        "x-forwarded-for: 127.0.0.1\n",
        "x-forwarded-host: app.example",
        "x-forwarded-proto: http",
    ] {
        assert!(answer.contains(line), "{line:?} missing in {answer}");
    }
    assert!(
        !answer.contains("10.9.9.9") && !answer.contains("evil"),
        "{answer}"
    );
    // Nor can other forwarding headers, or names that CGI-style servers (Puma, Unicorn) read
    // as baton's own: with `_` for `-`, one would be the client's address, another a framing
    // of the body other than baton's.
    let answer = raw(
        addr,
        b"POST /headers HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-Forwarded-Ssl: on\r\n\
          X-Forwarded-Port: 443\r\nX_Forwarded_For: 10.9.9.9\r\nX-Forwarded_Proto: https\r\n\
          Transfer_Encoding: chunked\r\nX_Api_Key: k\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x_api_key: k\n"), "{answer}");
    for gone in ["ssl", "port", "10.9.9.9", "https", "chunked"] {
        assert!(
            !answer.contains(gone),
            "{gone:?} reached the worker: {answer}"
        );
    }
}

#[test]
fn a_trusted_proxys_forwarding_headers_are_kept() {
    let _serial = serial();
    let baton = echo_baton(1, "[listen]\ntrusted_proxies = [\"127.0.0.0/8\"]\n");
    let answer = raw(
        baton.addr,
        b"GET /headers HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.9\r\n\
          X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\n\r\n",
    );
    assert!(answer.contains("x-forwarded-ssl: on\n"), "{answer}");
    assert!(
        answer.contains("x-forwarded-for: 203.0.113.9, 198.51.100.1, 127.0.0.1\n"),
        "{answer}"
    );
    assert!(answer.contains("x-forwarded-proto: https"), "{answer}");
}

#[test]
fn baton_never_deletes_a_file_that_is_not_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    for (section, key) in [
        (
            format!("[control]\nsocket = \"{}\"\n", precious.display()),
            "control.socket",
        ),
        (
            format!("[listen]\naddress = \"unix:{}\"\n", precious.display()),
            "listen.address",
        ),
    ] {
        let listen = if section.starts_with("[listen]") {
            String::new()
        } else {
            format!("[listen]\naddress = \"127.0.0.1:{}\"\n", free_port())
        };
        let control = if section.starts_with("[control]") {
            String::new()
        } else {
            format!(
                "[control]\nsocket = \"{}\"\n",
                dir.path().join("c.sock").display()
            )
        };
        let config = dir.path().join("app.toml");
        std::fs::write(
            &config,
            format!("name = \"t\"\n[app]\ncommand = [\"{BATON}\", \"demo-app\", \"--port\", \"{{port}}\"]\n{listen}{control}{section}"),
        )
        .unwrap();
        let check = Command::new(BATON)
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success());
        assert!(
            stderr.contains(&format!("key `{key}`"))
                && stderr.contains("exists and is not a socket"),
            "{stderr}"
        );
        let run = Command::new(BATON)
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{stderr}");
        assert!(stderr.contains("exists and is not a socket"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    }
}

/// Pids of live processes whose environment says they are workers of the baton at `control`.
fn processes_of(control: &std::path::Path) -> Vec<u32> {
    let needle = format!("BATON_OWNER={}", control.display());
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let zombie =
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| s.contains(") Z "));
        if zombie {
            continue;
        }
        if let Ok(env) = std::fs::read(e.path().join("environ"))
            && env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn nothing_a_worker_started_outlives_it_or_baton() {
    let _serial = serial();
    // One worker behind a `sh -c` wrapper that also starts a helper, one that ignores SIGTERM.
    let command = format!(
        r#"["sh", "-c", "sleep 1000 & trap '' TERM; \"{BATON}\" demo-app --port {{port}} --boot-time 0s; exit 1"]"#
    );
    let mut baton = Baton::start_command(
        2,
        &command,
        "[workers]\ncount = 2\n[restart]\nstop_timeout = \"1s\"\n",
        true,
        |b| b.deploy(Release::Good),
    );
    let control = baton.control.clone();
    // sh, sleep and demo-app per worker.
    assert!(
        wait_for(Duration::from_secs(5), || processes_of(&control).len() == 6),
        "{:?}",
        processes_of(&control)
    );

    // A worker that crashes takes what it started with it.
    let before = processes_of(&control);
    let leader = baton.status().workers[0].pid.unwrap();
    let app = std::fs::read_to_string(format!("/proc/{leader}/task/{leader}/children")).unwrap();
    let app: Vec<u32> = app.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(app.len(), 2, "sh runs sleep and the app");
    for pid in app {
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim()
            != "sleep"
        {
            // The app crashes; sh, its leader, exits 1 after it; sleep is left in the group.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
    assert!(
        wait_for(Duration::from_secs(10), || {
            let now = processes_of(&control);
            before.iter().filter(|p| !now.contains(p)).count() == 3
        }),
        "the crashed worker's processes must all be gone: before {before:?}, now {:?}",
        processes_of(&control)
    );
    baton.wait_until(Duration::from_secs(20), |s| {
        s.workers.iter().filter(|w| w.state == "ready").count() == 2
    });

    // baton killed: the group leaders die with it; what they started is stopped at the next
    // start of the same app.
    let _ = baton.child.kill();
    let _ = baton.child.wait();
    assert!(
        wait_for(Duration::from_secs(5), || processes_of(&control)
            .iter()
            .all(|p| std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() != "sh"))),
        "the workers' leaders must die with baton"
    );
    let restarted = Command::new(BATON)
        .args(["run", "--config"])
        .arg(&baton.config)
        .stderr(std::fs::File::create(baton.dir.path().join("baton2.log")).unwrap())
        .spawn()
        .unwrap();
    baton.child = restarted;
    let old: Vec<u32> = processes_of(&control);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let now = processes_of(&control);
            old.iter().all(|p| !now.contains(p))
        }),
        "strays of the killed baton must be stopped at the next start: {old:?} still there"
    );
    let log = std::fs::read_to_string(baton.dir.path().join("baton2.log")).unwrap_or_default();
    assert!(log.contains("left by a previous baton"), "{log}");
    baton.terminate();
    assert!(wait_for(Duration::from_secs(10), || processes_of(&control)
        .is_empty()));
}

#[test]
fn a_workers_output_is_read_safely_whatever_it_writes() {
    let _serial = serial();
    // Invalid UTF-8, then a 5 MB line with no newline, then the app, which must still be able to
    // write (the demo app writes its "listening" line to stderr and panics if it cannot).
    let command = format!(
        r#"["sh", "-c", "printf 'bad \\377\\376 bytes\\n'; head -c 5000000 /dev/zero | tr '\\000' x; echo; exec \"{BATON}\" demo-app --port {{port}} --boot-time 0s"]"#
    );
    let baton = Baton::start_command(1, &command, "[workers]\ncount = 1\n", true, |b| {
        b.deploy(Release::Good)
    });
    let (status, _) = get(&baton.url("/"));
    assert_eq!(status, 200);
    let log = baton.log();
    assert!(
        log.contains("bad \u{FFFD}\u{FFFD} bytes"),
        "{}",
        &log[..log.len().min(2000)]
    );
    assert_eq!(log.matches("such lines are cut").count(), 1);
    assert!(
        log.len() < 1 << 20,
        "the 5 MB line was logged whole ({} bytes of log)",
        log.len()
    );
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", baton.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kb < 100_000,
        "baton grew to {rss_kb} kB reading one long line"
    );
}

#[test]
fn the_control_socket_answers_when_the_descriptors_are_taken() {
    let _serial = serial();
    let metrics_port = free_port();
    let extra = format!("[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n");
    // Start under systemd's default soft limit.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("baton-1024");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nulimit -Sn 1024\nexec \"{BATON}\" \"$@\"\n"),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&wrapper)
        .status()
        .unwrap();
    let mut baton = Baton::start(2, "0s", &extra);
    // Re-run the same config under the 1024 soft limit.
    let _ = baton.child.kill();
    let _ = baton.child.wait();
    baton.child = Command::new(&wrapper)
        .args(["run", "--config"])
        .arg(&baton.config)
        .stderr(std::fs::File::create(baton.dir.path().join("baton.log")).unwrap())
        .spawn()
        .unwrap();
    baton.wait_until(Duration::from_secs(20), |s| {
        s.workers.iter().filter(|w| w.state == "ready").count() == 2
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", baton.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let soft: u64 = open_files
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(soft > 1024, "the soft limit was not raised: {open_files}");

    // 1,100 idle connections to the metrics port and 1,100 to the proxy.
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let mut idle = Vec::new();
    // Beyond its connection limit the metrics listener stops accepting: connections then wait
    // in the kernel's backlog, and once that is full, connecting times out.
    let mut refused = 0;
    for _ in 0..1100 {
        if refused < 3 {
            match TcpStream::connect_timeout(&metrics, Duration::from_millis(100)) {
                Ok(s) => idle.push(s),
                Err(_) => refused += 1,
            }
        }
        if let Ok(s) = TcpStream::connect(baton.addr) {
            idle.push(s);
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", baton.child.id()))
        .unwrap()
        .count();
    assert!(fds < 1100 + 300, "baton holds {fds} descriptors");
    let started = Instant::now();
    let status = baton.cli(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, _) = get(&baton.url("/"));
    assert_eq!(code, 200);
    let out = baton.cli(&["restart", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(idle);
    assert!(
        !baton.log().contains("Too many open files"),
        "{}",
        baton.log()
    );
}

#[test]
fn an_early_answer_from_a_worker_that_stops_reading_reaches_the_client() {
    let _serial = serial();
    // Small socket buffers in the worker, and a request larger than they hold: baton writes
    // it while it reads the answer (on this kernel its own send buffer would take the rest
    // anyway; on a host with small ones, writing first would wait for ever).
    let command = format!(r#"["python3", "{ECHO_WORKER}", "{{port}}", "--small-buffers"]"#);
    let baton = Baton::start_command(
        1,
        &command,
        "[workers]\ncount = 1\nconcurrency = 1\n",
        true,
        |b| b.deploy_files(&[]),
    );
    let mut s = TcpStream::connect(baton.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = vec![b'x'; 60_000];
    write!(
        s,
        "POST /early-stall HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.ends_with("too large\n"), "{answer:?}");
}

#[test]
fn a_workers_early_answer_reaches_the_client() {
    for buffering in [true, false] {
        early_answers(buffering);
    }
}

fn early_answers(request_buffering: bool) {
    let _serial = serial();
    let baton = echo_baton(
        2,
        &format!("[listen]\nrequest_buffering = {request_buffering}\n"),
    );
    let body = vec![b'x'; 4 << 20];
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(baton.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /early HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        let mut writer = s.try_clone().unwrap();
        let upload = body.clone();
        let sending = std::thread::spawn(move || {
            let _ = writer.write_all(&upload);
        });
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let _ = s.shutdown(std::net::Shutdown::Both);
        sending.join().unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        *statuses.entry(status_line(&answer).to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        ["HTTP/1.1 405 Method Not Allowed"],
        "every client gets the worker's own answer: {statuses:?}\n{}",
        baton.log()
    );
}
