//! `request`: arbitrary bytes written raw to a new client connection of a real baton proxy.
//!
//! Once per process this starts, on a current-thread tokio runtime that only runs while an
//! input is being tried: a tiny in-process HTTP/1.1 worker on 127.0.0.1, a real `Pool` with two
//! ready workers that both point at it (so that a retry has somewhere to go), and two real
//! `Proxy`s serving loopback TCP listeners, one with request and response buffering (small
//! memory buffers, so that bodies spill to temporary files) and one streaming. Each input is
//! written to a new connection of each and the first bytes of the answers are read.
//!
//! The worker's behaviour depends on the request path, so the fuzzer can reach the proxy's
//! paths beyond a plain 200: `/echo…` streams the request body back, `/stream…` answers with a
//! chunked body, `/status/NNN` answers with that status, `/drop…` closes the worker connection
//! without answering (retry, then 502), and a request with `Upgrade` gets `101` and an echo
//! tunnel. Anything else: `200 ok` (`common/worker.rs`, shared with `h2` and `tls`).
//!
//! Asserts: nothing panics, on any thread (libfuzzer-sys's panic hook aborts the process, so a
//! panic in a tokio task is a crash too, not a swallowed task error); the proxy keeps accepting
//! connections; every answer starts with an HTTP/1.x status line (`HTTP/1.1 `, or `HTTP/1.0 `,
//! which hyper uses to answer an HTTP/1.0 request); and no answer is a 502 saying that the proxy
//! could not connect to a worker (both always listen, so that would be a request sent to the
//! wrong address).

#![no_main]

use baton::config::Config;
use baton::listen::Listener;
use baton::metrics::Metrics;
use baton::proxy::Proxy;
use baton::spawn::ExitReason;
use libfuzzer_sys::fuzz_target;

/// The pool shared with the differential harness.
#[path = "../../tests/differential/harness.rs"]
mod harness;
#[path = "common/worker.rs"]
mod worker;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long to wait for the first bytes of an answer. Answers come in well under a millisecond;
/// this only bounds inputs that get none (the proxy is still waiting for the rest of a request).
const ANSWER_WAIT: Duration = Duration::from_secs(2);

struct Harness {
    rt: tokio::runtime::Runtime,
    /// The same pool behind two proxies: buffering on (the default), and off (streaming).
    proxies: [SocketAddr; 2],
    /// Held so that the workers' `exited` watch never fires.
    _exit: watch::Sender<Option<ExitReason>>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // libFuzzer's C++ main, unlike a Rust main, leaves SIGPIPE fatal; baton's binary runs
        // with it ignored (Rust's runtime does that), and so must its proxy here: a write to a
        // client that left (hyper writes with writev, which has no MSG_NOSIGNAL) is an EPIPE.
        // SAFETY: setting a signal's disposition to SIG_IGN, before any thread is started here.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (proxies, exit) = rt.block_on(start());
        Harness {
            rt,
            proxies,
            _exit: exit,
        }
    })
}

async fn start() -> ([SocketAddr; 2], watch::Sender<Option<ExitReason>>) {
    let worker = TcpListener::bind("127.0.0.1:0").await.expect("bind worker");
    let worker_addr = worker.local_addr().expect("worker address");
    tokio::spawn(worker::serve(worker));

    let (pool, exit) = harness::two_ready_workers(worker_addr);

    let mut addrs = Vec::new();
    for buffering in [true, false] {
        // The smallest head limit the config allows, so that the fuzzer reaches 414/431
        // cheaply; small buffers, so that it reaches the temporary files and 413.
        let text = format!(
            r#"name = "fuzz"
[app]
command = ["true"]
[listen]
max_header_size = "8KiB"
header_timeout = "5s"
client_body_timeout = "1s"
send_timeout = "2s"
buffer_memory = "1KiB"
max_body_size = "64KiB"
max_response_buffer = "16KiB"
request_buffering = {buffering}
response_buffering = {buffering}
"#
        );
        let config = Config::parse(&text, std::path::Path::new("fuzz.toml")).expect("fuzz config");
        let proxy = Proxy::new(pool.clone(), &config, 64, Arc::new(Metrics::default()));
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        addrs.push(l.local_addr().expect("proxy address"));
        tokio::spawn(proxy.serve(Listener::Tcp(l), None, CancellationToken::new()));
    }
    ([addrs[0], addrs[1]], exit)
}

/// Whether the input holds a whole, valid request head: then the client keeps its write side
/// open while it waits for the answer (hyper drops a request whose client half-closes). For
/// any other input it shuts the write side after the input, so the proxy answers what it can
/// (400, 431) and then sees the client leave instead of waiting for more. (hyper 1.12 does not
/// reject every bad head at once: one longer than its first 8 KiB read that ends in a bad
/// header line waits for more bytes, until `header_timeout`.)
fn head_is_complete(data: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    matches!(
        httparse::Request::new(&mut headers).parse(data),
        Ok(httparse::Status::Complete(_))
    )
}

/// The first 9 bytes (the status line's version) are enough, but for a 502, whose body says
/// why the worker could not be reached: then the head and the body's one line.
fn answer_is_enough(answer: &[u8]) -> bool {
    if answer.len() < 12 {
        return false;
    }
    if &answer[9..12] != b"502" {
        return true;
    }
    let text = String::from_utf8_lossy(answer);
    text.split_once("\r\n\r\n")
        .is_some_and(|(_, body)| body.contains('\n'))
}

/// Write `data` on a new connection; return the first bytes of the answer (see
/// `answer_is_enough`) unless the connection ended first, or None when none came within
/// ANSWER_WAIT.
async fn exchange(proxy: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
    let stream = TcpStream::connect(proxy)
        .await
        .expect("the proxy no longer accepts connections");
    let complete = head_is_complete(data);
    let (mut r, mut w) = stream.into_split();
    let write = async {
        // The proxy may answer (431, 400) and close before it read everything: not an error.
        let _ = w.write_all(data).await;
        if !complete {
            let _ = w.shutdown().await;
        }
    };
    let read = async {
        let mut answer = Vec::new();
        let mut chunk = [0u8; 512];
        while !answer_is_enough(&answer) {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
        answer
    };
    let (_, answer) = tokio::join!(write, tokio::time::timeout(ANSWER_WAIT, read));
    if answer.is_err() {
        NO_ANSWER.fetch_add(1, Relaxed);
    }
    // Dropping both halves closes the connection, whatever the proxy is still doing with it.
    answer.ok()
}

static RUNS: AtomicU64 = AtomicU64::new(0);
static NO_ANSWER: AtomicU64 = AtomicU64::new(0);
static CLOSED: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let h = harness();
    for proxy in h.proxies {
        check(h.rt.block_on(exchange(proxy, data)));
    }
    let runs = RUNS.fetch_add(1, Relaxed) + 1;
    if std::env::var_os("BATON_FUZZ_STATS").is_some() && runs.is_power_of_two() {
        eprintln!(
            "request: {runs} inputs, {} closed without an answer, {} no answer within {ANSWER_WAIT:?}",
            CLOSED.load(Relaxed),
            NO_ANSWER.load(Relaxed)
        );
    }
});

fn check(answer: Option<Vec<u8>>) {
    if std::env::var_os("BATON_FUZZ_VERBOSE").is_some() {
        eprintln!(
            "request: answer {:?}",
            answer.as_deref().map(String::from_utf8_lossy)
        );
    }
    if let Some(answer) = answer {
        if answer.is_empty() {
            CLOSED.fetch_add(1, Relaxed);
        }
        let n = answer.len().min(9);
        let ok = [&b"HTTP/1.1 "[..], b"HTTP/1.0 "]
            .iter()
            .any(|line| answer[..n] == line[..n]);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            ok,
            "the answer does not start with an HTTP/1.x status line: {text:?}"
        );
        // Both workers always listen: a 502 may say that the worker closed the connection
        // (`/drop`) or that the request body failed, never that the proxy could not connect.
        assert!(
            !(text.get(9..12) == Some("502") && text.contains("cannot connect")),
            "the proxy could not connect to a worker that is listening (wrong address?): {text:?}"
        );
    }
}
