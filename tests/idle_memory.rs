//! What an idle client connection costs baton, per front: plain HTTP/1.1, TLS with HTTP/1.1
//! (ALPN `http/1.1`) and TLS with HTTP/2 (ALPN `h2`). Against a real `baton run`, each front
//! opens 2,000 connections, has requests answered on each (so it has been used, as a visitor's
//! connection has), leaves them idle, and reads baton's resident memory (VmRSS) once it has
//! stopped moving, before and after. The KiB per connection must stay under the bounds that
//! docs/config.md (`max_connections`) states. nginx in front of the same demo app, measured the
//! same way, is a comparison rather than a promise: `--ignored` runs it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections measured per front: enough that page-sized steps of the RSS are noise (200 were
/// not, bench/README.md), few enough for a debug build to open them in seconds.
const CONNECTIONS: usize = 2000;
/// Opened first and held through the measurement, so that what baton allocates once (worker
/// connections in the pool, the runtime's per-thread state, caches) is in the baseline; held,
/// not closed, so that no freed memory is there for the measured connections to reuse.
const WARM_UP: usize = 32;
/// Connections being opened at once; the pool's worker connections follow it, and the warm-up
/// (as many or more than this) has made them before the baseline.
const AT_ONCE: usize = 16;

/// The bounds docs/config.md states, KiB per idle connection: about 15 % above what this test
/// measured on a 2-core VM in a debug build (plain 23.4-23.6, TLS 29.9-30.0, HTTP/2
/// 46.8-48.0; from run to run they moved by less than 1 KiB), so that another machine's
/// allocator passes, while one buffer more per connection fails (4 KiB more fails plain and
/// TLS, 8 KiB more HTTP/2). A release build measures less (its connection task is 8.8 KiB,
/// bench/README.md, where a debug build's is 11.3), so the bounds hold there too.
const PLAIN_BOUND_KIB: f64 = 27.0;
const TLS_BOUND_KIB: f64 = 34.0;
const H2_BOUND_KIB: f64 = 54.0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Front {
    Plain,
    Tls,
    H2,
}

impl Front {
    fn name(self) -> &'static str {
        match self {
            Front::Plain => "plain HTTP/1.1",
            Front::Tls => "TLS, HTTP/1.1",
            Front::H2 => "TLS, HTTP/2",
        }
    }
}

/// Where the clients connect: the address, and for TLS the certificate to trust.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// An open client connection, kept open by holding its hyper client (dropping it closes the
/// connection); hyper's connection task, spawned on the test's runtime, also answers the
/// server's HTTP/2 settings.
struct Held {
    _send: Box<dyn std::any::Any + Send>,
}

/// What each connection asks for before it idles: an answer of 64 KiB (a page or an asset,
/// which passes through every buffer on its way), then a small one. The RSS counts the pages a
/// buffer has touched, not its size: on a server that has been answering for a while the
/// buffers an idle connection keeps sit on memory larger answers touched before, as they do
/// here after the first request. Connections that only ever had a few bytes measured less
/// (plain HTTP/1.1: 20.4 KiB, its 8 KiB answer buffer mostly untouched) than visitors' cost.
const PATHS: [&str; 2] = ["/bytes/65536", "/"];

/// Open one connection on `front`, have `PATHS` answered on it (each body read to the end),
/// and return it, idle.
async fn open(front: Front, target: Target) -> Held {
    let tcp = tokio::net::TcpStream::connect(target.addr).await.unwrap();
    let authority = format!("localhost:{}", target.addr.port());
    let Some(config) = target.tls else {
        return answered_h1(TokioIo::new(tcp), &authority).await;
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    if front == Front::Tls {
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        return answered_h1(TokioIo::new(tls), &authority).await;
    }
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    // The handshake sends the client preface and SETTINGS; no answer comes before the server's
    // SETTINGS, so the exchange is complete once the first answer is there.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in PATHS {
        let req = http::Request::get(format!("https://{authority}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        resp.into_body().collect().await.unwrap();
    }
    Held {
        _send: Box::new(send),
    }
}

async fn answered_h1<S>(io: TokioIo<S>, authority: &str) -> Held
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    for path in PATHS {
        // The connection takes the next request once it has finished with the last answer.
        send.ready().await.unwrap();
        let req = http::Request::get(path)
            .header("host", authority)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        resp.into_body().collect().await.unwrap();
    }
    Held {
        _send: Box::new(send),
    }
}

/// `n` used, idle connections, `AT_ONCE` being opened at a time. A connection that waits in
/// the backlog (baton at its `max_connections`) or is never answered fails the test rather than
/// hanging it.
async fn open_many(front: Front, target: &Target, n: usize) -> Vec<Held> {
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            tokio::time::timeout(Duration::from_secs(30), open(front, target.clone()))
                .await
                .unwrap_or_else(|_| panic!("connection {i} was not answered within 30 s"))
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await
}

/// Resident memory of `pids` together, in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap()
        })
        .sum()
}

/// The RSS once it has stopped moving: connections that were just answered may still be
/// finishing (a task ending, a buffer given back) on the server's threads, and a fixed sleep
/// would be either too long or, on a busy machine, too short. Stopped: within 64 KiB (0.03 KiB
/// per measured connection) over the last second.
fn settled_rss_kib(pids: &[u32]) -> u64 {
    const WINDOW: usize = 10;
    const STILL_KIB: u64 = 64;
    let start = Instant::now();
    let mut seen: Vec<u64> = Vec::new();
    loop {
        seen.push(rss_kib(pids));
        let last = &seen[seen.len().saturating_sub(WINDOW)..];
        if last.len() == WINDOW {
            let (lo, hi) = (last.iter().min().unwrap(), last.iter().max().unwrap());
            if hi - lo <= STILL_KIB {
                return *last.last().unwrap();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the RSS of {pids:?} did not settle within 20 s: {seen:?} KiB"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Raise this process's open-file limit to its hard limit (baton, its child, inherits it and
/// raises its own the same way). Whether the hard limit fits the connections: each is a
/// descriptor here and one (plus possibly a worker connection) in baton, which keeps 384 for
/// itself and lowers `max_connections` to half of the rest. Where it does not, the test is
/// skipped loudly, or fails under BATON_E2E_REQUIRED (as in CI).
fn enough_descriptors() -> bool {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let needed = (2 * (CONNECTIONS + WARM_UP) + 384 + 256) as u64;
    if hard >= needed {
        return true;
    }
    skip(
        "idle memory",
        &format!("the hard open-file limit is {hard}, and {needed} are needed"),
    );
    false
}

/// The growth of `pids`' memory per connection on `front`, in KiB.
fn measure(front: Front, target: &Target, pids: &[u32]) -> f64 {
    let rt = runtime();
    let warm = rt.block_on(open_many(front, target, WARM_UP));
    let before = settled_rss_kib(pids);
    let began = Instant::now();
    let held = rt.block_on(open_many(front, target, CONNECTIONS));
    let opened = began.elapsed();
    let after = settled_rss_kib(pids);
    let each = after.saturating_sub(before) as f64 / CONNECTIONS as f64;
    println!(
        "{}: RSS {before} KiB, {after} KiB with {CONNECTIONS} more idle connections (opened and \
         used in {opened:.1?}): {each:.1} KiB each",
        front.name()
    );
    drop((held, warm));
    rt.shutdown_timeout(Duration::from_secs(1));
    each
}

/// TLS clients of `cert` offering `alpn`.
fn tls_client(cert: &Path, alpn: &[u8]) -> Option<Arc<rustls::ClientConfig>> {
    Some(Arc::new(client_config(&[cert], &[alpn])))
}

/// baton serving `front` with one demo worker: where its clients connect.
fn start_baton(front: Front, certs: &Path) -> (Baton, Target) {
    // Room for every connection; idle connections are kept far beyond the test's run (a
    // kept-alive connection waits for its next request only `header_timeout`).
    let listen = "[listen]\nmax_connections = 8192\nheader_timeout = \"10m\"\n";
    if front == Front::Plain {
        let b = Baton::start(1, "0s", listen);
        let target = Target {
            addr: b.addr,
            tls: None,
        };
        return (b, target);
    }
    let (cert, key) = certificate(certs, "a", &["localhost"], false);
    let port = free_port();
    let b = Baton::start(
        1,
        "0s",
        &format!("{listen}{}", tls_section(port, &cert, &key)),
    );
    let alpn: &[u8] = if front == Front::H2 {
        b"h2"
    } else {
        b"http/1.1"
    };
    let target = Target {
        addr: ([127, 0, 0, 1], port).into(),
        tls: tls_client(&cert, alpn),
    };
    (b, target)
}

fn baton_front(front: Front, bound: f64) {
    let _serial = serial();
    if !enough_descriptors() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (b, target) = start_baton(front, certs.path());
    // Every connection is to be open at once, none waiting in the backlog.
    assert!(
        !b.log().contains("max_connections"),
        "baton lowered max_connections to fit its descriptors:\n{}",
        b.log()
    );
    let each = measure(front, &target, &[b.child.id()]);
    assert!(
        each < bound,
        "an idle {} connection costs baton {each:.1} KiB; docs/config.md promises under \
         {bound} KiB",
        front.name()
    );
}

#[test]
fn an_idle_plain_http1_connection_costs_under_its_bound() {
    baton_front(Front::Plain, PLAIN_BOUND_KIB);
}

#[test]
fn an_idle_tls_http1_connection_costs_under_its_bound() {
    baton_front(Front::Tls, TLS_BOUND_KIB);
}

#[test]
fn an_idle_http2_connection_costs_under_its_bound() {
    baton_front(Front::H2, H2_BOUND_KIB);
}

/// nginx (Debian's package) with one worker process, in front of one demo app, with the same
/// kind of certificate: its worker's RSS per connection, measured as baton's is. A comparison
/// for the docs, not a promise: `cargo test --test idle_memory -- --ignored`.
#[test]
#[ignore = "a comparison with nginx, not a promise of baton's: run with --ignored"]
fn nginx_for_comparison() {
    let _serial = serial();
    if !enough_descriptors() {
        return;
    }
    let nginx = debian_tool("nginx", "nginx");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let app_port = free_port();
    let _app = Reaped(
        Command::new(BATON)
            .args(["demo-app", "--boot-time", "0s", "--port"])
            .arg(app_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", app_port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the demo app did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut figures = Vec::new();
    for front in [Front::Plain, Front::Tls, Front::H2] {
        // A fresh nginx for each front, as baton is, so that memory one front freed does not
        // hide the next one's.
        let port = free_port();
        let listen = match front {
            Front::Plain => format!("listen 127.0.0.1:{port};"),
            _ => format!(
                "listen 127.0.0.1:{port} ssl http2;\n ssl_certificate {};\n \
                 ssl_certificate_key {};",
                cert.display(),
                key.display()
            ),
        };
        let run = dir.path().join(format!("nginx-{front:?}"));
        let (_nginx, worker) = start_nginx(&nginx, &run, &listen, app_port);
        let target = Target {
            addr: ([127, 0, 0, 1], port).into(),
            tls: match front {
                Front::Plain => None,
                Front::Tls => tls_client(&cert, b"http/1.1"),
                Front::H2 => tls_client(&cert, b"h2"),
            },
        };
        let each = measure(front, &target, &[worker]);
        figures.push(format!("{}: {each:.1} KiB", front.name()));
    }
    println!("nginx, per idle connection: {}", figures.join(", "));
}

/// A child killed and reaped when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx in the foreground with one worker process, proxying to the app on `app_port` as
/// bench/run.sh's does (upstream keepalive): the master, and the worker's pid once it answers.
fn start_nginx(nginx: &str, dir: &Path, listen: &str, app_port: u16) -> (Reaped, u32) {
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "user root;\nworker_processes 1;\nworker_rlimit_nofile 16384;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\ndaemon off;\nevents {{ worker_connections 8192; }}\n\
         http {{\n access_log off;\n keepalive_timeout 10m;\n\
         client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         upstream app {{ server 127.0.0.1:{app_port}; keepalive 128; }}\n\
         server {{\n {listen}\n location / {{\n proxy_pass http://app;\n\
         proxy_http_version 1.1;\n proxy_set_header Connection \"\";\n }}\n }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let master = Reaped(
        Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        if let Some(worker) = worker_of(master.0.id()) {
            return (master, worker);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The child process of `pid` (nginx's one worker), if there is one yet.
fn worker_of(pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let parent = rest.split_whitespace().nth(1)?;
        (parent == pid.to_string()).then(|| e.file_name().to_str()?.parse().ok())?
    })
}
