//! `[log] access`: one line per request, from either way in (the narrow path and hyper's),
//! with the worker, generation, status and bytes the client got; JSON as well as nginx's
//! `combined`; and logrotate's rename-then-reopen (`baton reopen-logs`) under load loses no
//! line: the lines of both files add up to the requests answered.

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
use std::net::TcpStream;
use std::time::Duration;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Wait until the file has `n` lines (the writer flushes when its queue runs empty).
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..100 {
        let l = lines(path);
        if l.len() >= n {
            return l;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    lines(path)
}

fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn every_request_is_logged_with_its_worker_status_and_bytes() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Baton::start(1, "0s", &format!("[log]\naccess = \"{}\"\n", log.display()));
    let worker = b.status().workers[0].id;

    // The narrow path: a plain GET.
    let answer = raw(
        b.addr,
        "GET /hello?x=1 HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: test \"agent\"\r\nReferer: https://shop.test/\r\nConnection: close\r\n\r\n",
    );
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    // hyper's path: a chunked upload.
    let answer2 = raw(
        b.addr,
        "POST /echo HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(answer2.starts_with("HTTP/1.1 200"), "{answer2}");
    // baton's own answer: no worker.
    let answer3 = raw(b.addr, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert!(answer3.starts_with("HTTP/1.1 400"), "{answer3}");

    let l = wait_lines(&log, 3);
    assert_eq!(l.len(), 3, "{l:#?}");
    let first = &l[0];
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.contains(&format!(
            "\"GET /hello?x=1 HTTP/1.1\" 200 {} \"https://shop.test/\" \"test \\x22agent\\x22\" ",
            body.len()
        )),
        "{first}"
    );
    // Request time, upstream time, worker, generation, request id (none asked for).
    let tail: Vec<&str> = first
        .rsplit('"')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(tail.len(), 5, "{first}");
    assert!(
        tail[0].parse::<f64>().is_ok() && tail[1].parse::<f64>().is_ok(),
        "{first}"
    );
    assert_eq!(tail[2], worker.to_string());
    assert_eq!(tail[3], "1");
    let hex32 = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(hex32(tail[4]), "{first}");
    assert!(l[1].contains("\"POST /echo HTTP/1.1\" 200 5 "), "{}", l[1]);
    assert!(l[2].contains("\"GET / HTTP/1.1\" 400 "), "{}", l[2]);
    let (rest, id) = l[2].rsplit_once(' ').unwrap();
    assert!(rest.ends_with(" - - -") && hex32(id), "{}", l[2]);
    assert_ne!(id, tail[4]);

    // The worker gets the request's id: the client's own when it is a valid one, else
    // baton's; the log line says the same id.
    for (sent, kept) in [
        ("abc-123_x.y", true),
        ("bad id with spaces", false),
        ("", false),
    ] {
        let extra = if sent.is_empty() {
            String::new()
        } else {
            format!("X-Request-Id: {sent}\r\n")
        };
        let answer = raw(
            b.addr,
            &format!(
                "GET /headers HTTP/1.1\r\nHost: shop.test\r\n{extra}Connection: close\r\n\r\n"
            ),
        );
        let ids: Vec<&str> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("x-request-id: "))
            .collect();
        assert_eq!(ids.len(), 1, "{answer}");
        if kept {
            assert_eq!(ids[0], sent);
        } else {
            assert!(hex32(ids[0]), "{answer}");
        }
        let logged = wait_lines(
            &log,
            4 + usize::from(sent != "abc-123_x.y") + usize::from(sent.is_empty()),
        );
        assert!(
            logged.iter().any(|l| l.ends_with(&format!(" {}", ids[0]))),
            "{logged:#?}"
        );
    }
}

/// What a client got on a connection of its own for `request`, read to its end.
fn raw_bytes(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn heads_the_parser_refuses_are_logged_with_the_status_the_client_got() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Baton::start(1, "0s", &format!("[log]\naccess = \"{}\"\n", log.display()));
    // hyper's 414 is for a target over 65,534 bytes (the default max_header_size, 64 KiB, lets
    // hyper read it); its 431 for a head beyond its buffer, twice max_header_size (sent whole,
    // so that the client reads the answer rather than a reset).
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let mut huge = b"GET /huge HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.resize(2 * 64 * 1024, b'b');
    let refused: [(&[u8], u16, &str); 7] = [
        (
            b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab",
            400,
            "\"POST /cl HTTP/1.1\"",
        ),
        (
            b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            400,
            "\"POST /te HTTP/1.1\"",
        ),
        (
            b"GET  /double HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "\"GET  /double HTTP/1.1\"",
        ),
        (
            b"GET /bare\rcr HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "\"GET /bare\\x0Dcr HTTP/1.1\"",
        ),
        (
            b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "\"GET /\\xFF HTTP/1.1\"",
        ),
        // The target cut at the line's first 4 KiB, so no version.
        (
            long_target.as_bytes(),
            414,
            &format!("\"GET /{} -\"", "a".repeat(4091)),
        ),
        (&huge, 431, "\"GET /huge HTTP/1.1\""),
    ];
    for (request, status, _) in &refused {
        let answer = raw_bytes(b.addr, request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {answer}"
        );
    }
    // A head hyper refuses after a request it served on the same connection: baton never saw
    // its bytes, so only its status.
    let answer = raw(
        b.addr,
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 400 ").count(), 1, "{answer}");

    let l = wait_lines(&log, refused.len() + 2);
    assert_eq!(l.len(), refused.len() + 2, "{l:#?}");
    // One line each (in the order their connections ended, which the client does not see).
    for (_, status, request) in &refused {
        let found: Vec<&String> = l.iter().filter(|l| l.contains(request)).collect();
        assert_eq!(found.len(), 1, "{request}: {l:#?}");
        let line = found[0];
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with(&format!("{request} {status} 0 \"-\" \"-\" 0.000 - - - -")),
            "{line}"
        );
    }
    assert!(
        l.iter()
            .any(|l| l.contains("\"POST /echo HTTP/1.1\" 200 2 ")),
        "{l:#?}"
    );
    assert!(
        l.iter()
            .any(|l| l.ends_with("\"- - -\" 400 0 \"-\" \"-\" 0.000 - - - -")),
        "{l:#?}"
    );
}

#[test]
fn json_lines() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let b = Baton::start(
        1,
        "0s",
        &format!("[log]\naccess = \"{}\"\nformat = \"json\"\n", log.display()),
    );
    let (status, body) = get(&b.url("/json"));
    assert_eq!(status, 200);
    let l = wait_lines(&log, 1);
    let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["target"], "/json");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], body.len() as u64);
    assert_eq!(v["generation"], 1);
    assert_eq!(v["scheme"], "http");
    assert!(v["upstream_s"].as_f64().is_some());

    // Unicode's line ends (U+2028, U+2029, NEL) stay inside their line, escaped (a field
    // cannot have C0's: the parser refuses them).
    let answer = raw_bytes(
        b.addr,
        b"GET /json HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: a\xe2\x80\xa8b\xe2\x80\xa9c\xc2\x85d\r\nReferer: \xc2\x85\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let l = wait_lines(&log, 2);
    assert_eq!(l.len(), 2, "{l:#?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.split([
            '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}'
        ])
        .count(),
        3,
        "{text:?}"
    );
    assert!(
        l[1].contains(r#""referer":"\u0085","user_agent":"a\u2028b\u2029c\u0085d""#),
        "{}",
        l[1]
    );
    let v: serde_json::Value = serde_json::from_str(&l[1]).unwrap();
    assert_eq!(v["user_agent"], "a\u{2028}b\u{2029}c\u{85}d");
}

#[test]
fn rotation_by_rename_and_reopen_loses_no_line_under_load() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut b = Baton::start(2, "0s", &format!("[log]\naccess = \"{}\"\n", log.display()));
    let load = Load::start(b.addr, 8, "/", Duration::from_secs(10));
    // Under load, the file in use gets a hundred lines before each rotation: the writer has
    // (re)opened it and writes there.
    let written = |what: String| {
        wait_for(Duration::from_secs(10), &what, || lines(&log).len() >= 100);
    };
    let mut rotated = Vec::new();
    for i in 1..=5 {
        written(if i == 1 {
            "a hundred lines in the access log under load".into()
        } else {
            format!(
                "a hundred lines in the access log reopened after rotation {}",
                i - 1
            )
        });
        // What logrotate does without copytruncate: rename, then tell the writer.
        let to = dir.path().join(format!("access.log.{i}"));
        std::fs::rename(&log, &to).unwrap();
        rotated.push(to);
        let out = if i % 2 == 0 {
            b.cli(&["reopen-logs"])
        } else {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(b.child.id() as i32),
                nix::sys::signal::Signal::SIGUSR1,
            )
            .unwrap();
            b.cli(&["status"])
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    written("a hundred lines in the access log reopened after rotation 5".into());
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    // baton writes every queued line before it exits.
    assert!(b.terminate().success());
    let mut total = lines(&log).len();
    for f in &rotated {
        let n = lines(f).len();
        assert!(
            n > 0,
            "{} is empty: the writer did not move on",
            f.display()
        );
        total += n;
    }
    assert_eq!(total as u64, report.ok, "lines logged vs requests answered");
    assert!(report.ok > 500, "{}", report.ok);
    assert!(b.log().contains("access log: reopening"));
}
