//! `[static]`: a release's files served by baton itself, never by a worker, with what browsers
//! and CDNs expect (ETag, Last-Modified, 304, Range, HEAD, precompressed siblings, immutable
//! caching for fingerprinted names), never a byte from outside the directory, and the files of
//! both releases during a roll (and of the old one for `keep_old` after it).

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
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One request as raw bytes (the path exactly as given: no client normalizes it), and the
/// answer: status, headers (lower-case names), body.
fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&out)));
    let (status, headers) = parse_head(&String::from_utf8_lossy(&out[..split]));
    (status, headers, out[split + 4..].to_vec())
}

/// An answer head's status and headers (lower-case names).
fn parse_head(head: &str) -> (u16, BTreeMap<String, String>) {
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// Requests the workers served, all told.
fn processed(b: &Baton) -> u64 {
    b.status().workers.iter().map(|w| w.processed).sum()
}

const SECRET: &str = "SECRET-OUTSIDE-THE-DIRECTORY";

fn release_one() -> Vec<(&'static str, String)> {
    vec![
        ("secret.txt", SECRET.to_owned()),
        (
            "public/assets/app-0123abcd.css",
            "body { color: red }".to_owned(),
        ),
        (
            "public/assets/app-0123abcd.css.br",
            "BROTLI-BYTES".to_owned(),
        ),
        ("public/assets/app-0123abcd.css.gz", "GZIP-BYTES".to_owned()),
        ("public/assets/logo.txt", "logo of r1".to_owned()),
        (
            "public/assets/big.bin",
            (0..100_000u32)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect(),
        ),
        ("public/assets/.env", SECRET.to_owned()),
        ("public/assets/dir/inner.js", "inner".to_owned()),
    ]
}

/// A file every release of these tests has, asked for to see that its release is served.
const MARK: (&str, &str) = ("public/assets/release-mark.txt", "served");

fn start(extra: &str, mut files: Vec<(&'static str, String)>) -> Baton {
    files.push((MARK.0, MARK.1.to_owned()));
    let command = format!(r#"["{BATON}", "demo-app", "--port", "{{port}}"]"#);
    let b = Baton::start_command(2, &command, extra, true, |b| {
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        b.deploy_files(&refs);
    });
    // A release's files are served once a worker of its generation is ready (the next
    // supervisor tick); until then baton answers 404 itself.
    served(
        &b,
        "/assets/release-mark.txt",
        b"served",
        "the first release's files served",
    );
    b
}

/// Wait until GET `path` answers 200 with `body`, failing with `what` after 10 s.
fn served(b: &Baton, path: &str, body: &[u8], what: &str) {
    let mut last = (0, Vec::new());
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let (status, _, got) = fetch(b.addr, "GET", path, &[]);
        if (status, got.as_slice()) == (200, body) {
            return;
        }
        last = (status, got);
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{what}: not within 10 s; GET {path} last answered {} {:?}\n{}",
        last.0,
        String::from_utf8_lossy(&last.1),
        b.log()
    );
}

#[test]
fn static_files_get_what_browsers_and_cdns_expect_and_never_reach_a_worker() {
    let _serial = serial();
    let b = start(
        "[static]\ndirectory = \"public\"\nprefixes = [\"/assets\"]\n",
        release_one(),
    );
    let rel = b.dir.path().join("releases/r1/public/assets");
    std::os::unix::fs::symlink("../../secret.txt", rel.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", rel.join("passwd")).unwrap();
    std::os::unix::fs::symlink("app-0123abcd.css", rel.join("alias.css")).unwrap();
    let before = processed(&b);

    // A fingerprinted file: immutable for a year; its validators.
    let (status, h, body) = fetch(b.addr, "GET", "/assets/app-0123abcd.css", &[]);
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"body { color: red }"[..])
    );
    assert_eq!(h["content-type"], "text/css; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(h["content-length"], "19");
    assert_eq!(h["vary"], "Accept-Encoding");
    assert_eq!(h["accept-ranges"], "bytes");
    assert!(!h.contains_key("content-encoding"));
    let etag = h["etag"].clone();
    let modified = h["last-modified"].clone();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    // Precompressed siblings by Accept-Encoding, each its own ETag.
    let (_, h, body) = fetch(
        b.addr,
        "GET",
        "/assets/app-0123abcd.css",
        &[("Accept-Encoding", "gzip, deflate, br")],
    );
    assert_eq!(
        (h["content-encoding"].as_str(), body.as_slice()),
        ("br", &b"BROTLI-BYTES"[..])
    );
    assert_ne!(h["etag"], etag);
    let (_, h, body) = fetch(
        b.addr,
        "GET",
        "/assets/app-0123abcd.css",
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(
        (h["content-encoding"].as_str(), body.as_slice()),
        ("gzip", &b"GZIP-BYTES"[..])
    );
    let (_, h, _) = fetch(
        b.addr,
        "GET",
        "/assets/app-0123abcd.css",
        &[("Accept-Encoding", "br;q=0, identity")],
    );
    assert!(!h.contains_key("content-encoding"));

    // Revalidation: 304 with the validators and no body.
    for cond in [
        ("If-None-Match", etag.as_str()),
        ("If-Modified-Since", modified.as_str()),
    ] {
        let (status, h, body) = fetch(b.addr, "GET", "/assets/app-0123abcd.css", &[cond]);
        assert_eq!(status, 304, "{cond:?}");
        assert!(body.is_empty());
        assert_eq!(h["etag"], etag);
    }
    let (status, _, _) = fetch(
        b.addr,
        "GET",
        "/assets/app-0123abcd.css",
        &[("If-None-Match", "\"other\"")],
    );
    assert_eq!(status, 200);

    // Not fingerprinted: revalidated every time.
    let (_, h, body) = fetch(b.addr, "GET", "/assets/logo.txt", &[]);
    assert_eq!(
        (h["cache-control"].as_str(), body.as_slice()),
        ("no-cache", &b"logo of r1"[..])
    );
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    // A query string is not part of the file's name (nor of its type), on either path.
    for extra in [&[][..], &[("Transfer-Encoding", "chunked")][..]] {
        let (status, h, body) = fetch(b.addr, "GET", "/assets/logo.txt?v=2", extra);
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"logo of r1"[..]),
            "{extra:?}"
        );
        assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    }

    // Ranges.
    let (status, h, body) = fetch(
        b.addr,
        "GET",
        "/assets/big.bin",
        &[("Range", "bytes=26-35")],
    );
    assert_eq!((status, body.as_slice()), (206, &b"abcdefghij"[..]));
    assert_eq!(h["content-range"], "bytes 26-35/100000");
    let (status, h, body) = fetch(b.addr, "GET", "/assets/big.bin", &[("Range", "bytes=-4")]);
    assert_eq!((status, body.len()), (206, 4));
    assert_eq!(h["content-range"], "bytes 99996-99999/100000");
    let (status, h, body) = fetch(
        b.addr,
        "GET",
        "/assets/big.bin",
        &[("Range", "bytes=100000-")],
    );
    assert_eq!(
        (status, h["content-range"].as_str()),
        (416, "bytes */100000")
    );
    assert!(body.is_empty());
    let (status, _, body) = fetch(b.addr, "GET", "/assets/big.bin", &[]);
    assert_eq!((status, body.len()), (200, 100_000));

    // HEAD: the headers of GET, no body.
    let (status, h, body) = fetch(b.addr, "HEAD", "/assets/big.bin", &[]);
    assert_eq!((status, h["content-length"].as_str()), (200, "100000"));
    assert!(body.is_empty());

    // Other methods are not for files.
    let (status, h, _) = fetch(
        b.addr,
        "POST",
        "/assets/logo.txt",
        &[("Content-Length", "0")],
    );
    assert_eq!((status, h["allow"].as_str()), (405, "GET, HEAD"));

    // A symlink within the directory is followed.
    let (status, _, body) = fetch(b.addr, "GET", "/assets/alias.css", &[]);
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"body { color: red }"[..])
    );

    // Traversal: encoded, double-encoded, symlinks out, NUL, dotfiles, directories, long
    // names: 400 or 404, and never a byte from outside.
    let long = format!("/assets/{}", "a".repeat(4000));
    for path in [
        "/assets/../secret.txt",
        "/assets/%2e%2e/secret.txt",
        "/assets/%2E%2E%2Fsecret.txt",
        "/assets/..%2fsecret.txt",
        "/assets/%252e%252e/secret.txt",
        "/assets/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/assets/..%5csecret.txt",
        "/assets/up",
        "/assets/passwd",
        "/assets/a%00b",
        "/assets/.env",
        "/assets/%2eenv",
        "/assets/dir",
        "/assets/dir/",
        "/assets/",
        "/assets",
        "/assets/nothing-here.css",
        long.as_str(),
    ] {
        let (status, _, body) = fetch(b.addr, "GET", path, &[]);
        assert!(status == 400 || status == 404, "{path}: {status}");
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains(SECRET) && !text.contains("root:"),
            "{path}: {text}"
        );
    }

    // Not one of these reached a worker; a request outside the prefix does.
    assert_eq!(processed(&b), before);
    let (status, _, body) = fetch(b.addr, "GET", "/assetsx", &[]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(processed(&b), before + 1);
}

#[test]
fn the_assets_of_both_releases_are_served_through_a_roll() {
    let _serial = serial();
    let mut b = start(
        "[static]\ndirectory = \"public\"\nprefixes = [\"/assets\"]\nkeep_old = \"3s\"\n",
        vec![
            ("public/assets/app-aaaaaaaa.css", "old".to_owned()),
            ("public/assets/logo.txt", "logo of r1".to_owned()),
        ],
    );
    b.deploy_files(&[
        ("public/assets/app-bbbbbbbb.css", "new"),
        ("public/assets/logo.txt", "logo of r2"),
    ]);
    // Pages of either release ask for their own stylesheet all through the roll.
    let addr = b.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asking = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut asked, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, _, body) = fetch(addr, "GET", "/assets/app-aaaaaaaa.css", &[]);
                asked += 1;
                if (status, body.as_slice()) != (200, &b"old"[..]) {
                    failed.push(format!("old: {status}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (asked, failed)
        })
    };
    let out = b.cli(&["restart", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The new release's files (served from the supervisor's next tick), and its version of a
    // file both have.
    served(
        &b,
        "/assets/app-bbbbbbbb.css",
        b"new",
        "the new release's stylesheet served after the roll",
    );
    let (_, _, body) = fetch(b.addr, "GET", "/assets/logo.txt", &[]);
    assert_eq!(body, b"logo of r2");
    // The old release's files outlive its workers.
    assert!(b.status().workers.iter().all(|w| w.generation == 2));
    let (status, _, body) = fetch(b.addr, "GET", "/assets/app-aaaaaaaa.css", &[]);
    assert_eq!((status, body.as_slice()), (200, &b"old"[..]), "{}", b.log());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (asked, failed) = asking.join().unwrap();
    assert!(asked > 20 && failed.is_empty(), "{asked} asked: {failed:?}");
    // keep_old (3 s) after the old generation's last worker stopped, they are gone.
    let gone = std::time::Instant::now();
    wait_for(
        Duration::from_secs(10),
        "the old release's files gone keep_old (3 s) after its workers",
        || fetch(b.addr, "GET", "/assets/app-aaaaaaaa.css", &[]).0 == 404,
    );
    println!(
        "the old release's files were gone {:.1} s after the check that they outlived its workers",
        gone.elapsed().as_secs_f64()
    );
}

#[test]
fn a_file_edited_in_place_is_served_anew_within_five_seconds() {
    let _serial = serial();
    let b = start(
        "[static]\ndirectory = \"public\"\nprefixes = [\"/assets\"]\n",
        vec![("public/assets/logo.txt", "logo one".to_owned())],
    );
    for _ in 0..3 {
        let (_, _, body) = fetch(b.addr, "GET", "/assets/logo.txt", &[]);
        assert_eq!(body, b"logo one");
    }
    // Small files are kept in memory; a look at the file again comes within 5 s.
    let file = b.dir.path().join("releases/r1/public/assets/logo.txt");
    std::fs::write(&file, "logo two").unwrap();
    let edited = std::time::Instant::now();
    loop {
        let (_, _, body) = fetch(b.addr, "GET", "/assets/logo.txt", &[]);
        if body == b"logo two" {
            break;
        }
        assert_eq!(body, b"logo one", "neither the old nor the new file");
        // 5 s, and a moment for the request that sees it.
        assert!(
            edited.elapsed() < Duration::from_millis(5500),
            "the edited file was not served within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "the edited file was served {:.1} s after the edit",
        edited.elapsed().as_secs_f64()
    );
}

/// 3 MiB of letters in no short cycle, so a byte sent from the wrong offset shows.
fn large_file() -> String {
    (0..3 * 1024 * 1024u32)
        .map(|i| char::from(b'a' + ((i.wrapping_mul(31) ^ (i >> 12)) % 26) as u8))
        .collect()
}

/// One answer of a kept connection: status, headers, body (by its Content-Length).
fn read_one(s: &mut TcpStream) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let (status, headers) = parse_head(&read_head(s).unwrap());
    let mut body = vec![0; headers["content-length"].parse().unwrap()];
    s.read_exact(&mut body).unwrap();
    (status, headers, body)
}

#[test]
fn large_files_go_whole_over_http_and_https_and_a_client_that_reads_nothing_is_let_go() {
    let _serial = serial();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(certs.path(), "shop", &["localhost"], false);
    let tls_port = free_port();
    let big = large_file();
    let b = start(
        &format!(
            "[listen]\nsend_timeout = \"2s\"\n[static]\ndirectory = \"public\"\nprefixes = [\"/assets\"]\n{}",
            tls_section(tls_port, &cert, &key)
        ),
        vec![("public/assets/big.bin", big.clone())],
    );
    let before = processed(&b);

    // Plain HTTP (sendfile): whole, in parts and HEAD, one after the other on one connection.
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ask = |s: &mut TcpStream, method: &str, range: Option<&str>| {
        let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
        write!(
            s,
            "{method} /assets/big.bin HTTP/1.1\r\nHost: shop.test\r\n{range}\r\n"
        )
        .unwrap();
    };
    for round in 0..2 {
        ask(&mut s, "GET", None);
        let (status, h, body) = read_one(&mut s);
        assert_eq!(
            (status, h["content-type"].as_str()),
            (200, "application/octet-stream")
        );
        assert!(body == big.as_bytes(), "round {round}: the bytes differ");
        ask(&mut s, "GET", Some("bytes=1000000-1999999"));
        let (status, h, body) = read_one(&mut s);
        assert_eq!(
            (status, h["content-range"].as_str()),
            (206, "bytes 1000000-1999999/3145728")
        );
        assert!(body == big.as_bytes()[1_000_000..2_000_000]);
        // Pipelined: a HEAD and a GET of the last bytes, sent together.
        write!(
            s,
            "HEAD /assets/big.bin HTTP/1.1\r\nHost: shop.test\r\n\r\n\
             GET /assets/big.bin HTTP/1.1\r\nHost: shop.test\r\nRange: bytes=-10\r\n\r\n"
        )
        .unwrap();
        let head = read_head(&mut s).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200") && head.contains("content-length: 3145728"),
            "{head}"
        );
        let (status, _, body) = read_one(&mut s);
        assert_eq!(
            (status, body.as_slice()),
            (206, &big.as_bytes()[big.len() - 10..])
        );
    }

    // HTTPS, HTTP/1.1 and HTTP/2 (the file is read, not sent by sendfile, under TLS).
    for version in ["--http1.1", "--http2"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", version, "--cacert"])
            .arg(&cert)
            .args(["--resolve", &format!("localhost:{tls_port}:127.0.0.1")])
            .arg(format!("https://localhost:{tls_port}/assets/big.bin"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == big.as_bytes(), "{version}: the bytes differ");
    }

    // A client that asks and never reads: baton gives up on it after send_timeout (its
    // socket buffers full), and serves everyone else meanwhile.
    let mut stuck = TcpStream::connect(b.addr).unwrap();
    let client = stuck.local_addr().unwrap();
    for _ in 0..20 {
        ask(&mut stuck, "GET", None);
    }
    // baton is answering it: bytes sent and not taken wait at baton's end.
    wait_for(
        Duration::from_secs(10),
        "baton answering the client that reads nothing",
        || server_end(b.addr, client).is_some_and(|s| s.tx_queue > 0),
    );
    let held = std::time::Instant::now();
    let (status, _, body) = fetch(b.addr, "GET", "/assets/big.bin", &[]);
    assert!(status == 200 && body == big.as_bytes());
    // Let go: baton closes its end while the client has still read nothing, at send_timeout
    // (2 s) and not before. Until then, what the kernel holds for the client: its own unread
    // bytes and those sent or queued at baton's end.
    let mut in_kernel = 0;
    wait_for(
        Duration::from_secs(12),
        "baton letting go of the client that reads nothing (send_timeout 2s)",
        || match server_end(b.addr, client) {
            Some(end) if end.state == TCP_ESTABLISHED => {
                in_kernel = end.tx_queue + server_end(client, b.addr).map_or(0, |c| c.rx_queue);
                false
            }
            _ => true,
        },
    );
    let let_go = held.elapsed();
    // Counted from when the test saw bytes waiting at baton's end, which can come a moment
    // after baton's last write (1.8 s measured): well short of 2 s is too early.
    assert!(
        let_go >= Duration::from_secs(1),
        "let go {let_go:?} after its buffers filled, before send_timeout (2s)"
    );
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0; 1 << 16];
    let ended = loop {
        match stuck.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("after {got} bytes: {e}"),
        }
    };
    println!(
        "let go {:.1} s after its buffers filled; then {ended} after {got} bytes of {} asked \
         ({in_kernel} in the kernel's buffers)",
        let_go.as_secs_f64(),
        20 * big.len()
    );
    assert!(
        got as u64 <= in_kernel,
        "{ended} after {got} bytes: baton sent more than the {in_kernel} bytes the kernel held \
         for the client when baton let go"
    );
    assert_eq!(processed(&b), before);
}
