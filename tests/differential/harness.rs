//! The differential harness: the same bytes through baton's two codecs, compared.
//!
//! Shared by `tests/differential.rs` (a fixed set of cases) and the fuzz target
//! `fuzz/fuzz_targets/differential.rs` (arbitrary ones). It starts, on the caller's tokio
//! runtime: a raw-socket worker on 127.0.0.1 that records every request it receives (head and
//! body, as bytes) and answers with bytes the case gives; a real `Pool` with two ready workers
//! that both point at it (so that a retry has somewhere to go); and two pairs of real
//! `Proxy`s over that pool, one proxy of each pair serving with the narrow path first
//! (`Codecs::NarrowThenHyper`, what baton runs) and the other with hyper's alone
//! (`Codecs::HyperOnly`). The pairs differ in configuration: request buffering on and an
//! untrusted client, request buffering off and a trusted one.
//!
//! A case is one request (its head and body, whole) and the worker's answer to it. It is sent
//! on a new connection to each proxy of a pair in turn; the two must give the worker the same
//! requests (method, target, version, headers as a multiset with names compared without
//! case, and body), and the client the same answer (status, headers as a multiset, `Date`'s
//! value aside, the body's framing and its bytes) or the same silence.

#![allow(dead_code)]

use baton::config::Config;
use baton::listen::Listener;
use baton::metrics::Metrics;
use baton::pool::{Limits, Pool, Worker};
use baton::proxy::{Codecs, Proxy};
use baton::spawn::{ExitReason, Generation, OutputTail, StartedWorker, WorkerId};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a client waits for the rest of an answer. Answers come in a millisecond; this
/// bounds only a case that gets none (both proxies must then be silent).
const WAIT: Duration = Duration::from_millis(1500);
/// How long the worker waits for the rest of a request.
const WORKER_WAIT: Duration = Duration::from_secs(2);
/// Between the two input parts of a fuzz input or a corpus file.
pub const SEPARATOR: &[u8] = b"\n--answer--\n";
/// What the worker answers when a case gives nothing.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: a\r\n\r\nok";

/// One request as the worker received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub line: String,
    /// Lower-case names with their values (bytes shown as `escape_ascii` shows them), sorted.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// What the client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// No answer: the connection closed, or nothing came in time.
    Nothing,
    /// Bytes that are not an HTTP/1.1 answer head.
    Garbage(String),
    Answer {
        status: u16,
        /// Lower-case names with their values (`date`'s value blanked), sorted; the framing
        /// headers apart.
        headers: Vec<(String, String)>,
        /// `length`, `chunked`, `close` or `none`.
        framing: &'static str,
        body: String,
        /// The body ended as its framing says (not cut).
        whole: bool,
    },
}

/// What one proxy did with a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub worker: Vec<Seen>,
    pub client: Got,
}

#[derive(Default)]
struct WorkerState {
    answer: Mutex<Vec<u8>>,
    seen: Mutex<Vec<Seen>>,
}

pub struct Harness {
    /// (what the pair is, narrow-then-hyper proxy, hyper-only proxy)
    pairs: Vec<(&'static str, SocketAddr, SocketAddr)>,
    worker: Arc<WorkerState>,
    /// Held so that the workers' `exited` watch never fires.
    _exit: watch::Sender<Option<ExitReason>>,
}

impl Harness {
    pub async fn start() -> Harness {
        let state = Arc::new(WorkerState::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind worker");
        let worker_addr = listener.local_addr().expect("worker address");
        tokio::spawn(serve_worker(listener, state.clone()));

        let (pool, exit) = two_ready_workers(worker_addr);
        let mut pairs = Vec::new();
        for (name, extra) in [
            ("buffered, untrusted client", "request_buffering = true\n"),
            (
                "streamed, trusted client",
                "request_buffering = false\nresponse_buffering = false\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
            ),
        ] {
            let text = format!(
                "name = \"differential\"\n[app]\ncommand = [\"true\"]\n[listen]\n\
                 max_header_size = \"8KiB\"\nheader_timeout = \"5s\"\nclient_body_timeout = \"2s\"\n\
                 buffer_memory = \"16KiB\"\nmax_body_size = \"64KiB\"\n{extra}"
            );
            let config = Config::parse(&text, std::path::Path::new("differential.toml"))
                .expect("differential config");
            let mut addrs = Vec::new();
            for codecs in [Codecs::NarrowThenHyper, Codecs::HyperOnly] {
                let proxy = Proxy::with_codecs(
                    pool.clone(),
                    &config,
                    64,
                    Arc::new(Metrics::default()),
                    codecs,
                );
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
                addrs.push(l.local_addr().expect("proxy address"));
                tokio::spawn(proxy.serve(Listener::Tcp(l), None, CancellationToken::new()));
            }
            pairs.push((name, addrs[0], addrs[1]));
        }
        Harness {
            pairs,
            worker: state,
            _exit: exit,
        }
    }

    /// Send one case through every pair; `Err` describes the first difference.
    pub async fn compare(&self, request: &[u8], answer: &[u8]) -> Result<(), String> {
        *self.worker.answer.lock().unwrap() = answer.to_vec();
        let head = is_head(request);
        for (name, narrow, hyper) in &self.pairs {
            let a = self.outcome(*narrow, request, head).await;
            let b = self.outcome(*hyper, request, head).await;
            if a != b {
                return Err(format!(
                    "{name}: the two codecs differ\nrequest: {:?}\nanswer: {:?}\n\
                     narrow path: {a:?}\nhyper's path: {b:?}",
                    String::from_utf8_lossy(request),
                    String::from_utf8_lossy(answer),
                ));
            }
        }
        Ok(())
    }

    /// What every proxy does with a case.
    pub async fn all_outcomes(&self, request: &[u8], answer: &[u8]) -> Vec<Outcome> {
        *self.worker.answer.lock().unwrap() = answer.to_vec();
        let mut out = Vec::new();
        for (_, narrow, hyper) in &self.pairs {
            for proxy in [narrow, hyper] {
                out.push(self.outcome(*proxy, request, is_head(request)).await);
            }
        }
        out
    }

    /// What one proxy does with a case.
    pub async fn outcome(&self, proxy: SocketAddr, request: &[u8], head: bool) -> Outcome {
        self.worker.seen.lock().unwrap().clear();
        let client = ask(proxy, request, head).await;
        // The worker records a request before it answers: what it saw is there now.
        let mut worker = std::mem::take(&mut *self.worker.seen.lock().unwrap());
        worker.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        Outcome { worker, client }
    }
}

/// A real pool with two ready workers that both point at `addr` (so that a retry has
/// somewhere to go), and the sender that keeps their `exited` watch from firing.
pub fn two_ready_workers(addr: SocketAddr) -> (Arc<Pool>, watch::Sender<Option<ExitReason>>) {
    let pool = Pool::new(Limits {
        concurrency: 0,
        max_queue: 4,
    });
    let (exit, exited) = watch::channel(None);
    for id in 1..=2 {
        let process = StartedWorker {
            pid: None,
            unit: None,
            exited: exited.clone(),
            output: OutputTail::default(),
        };
        pool.insert(Worker::new(WorkerId(id), Generation(1), addr, process));
        pool.mark_ready(WorkerId(id));
    }
    (pool, exit)
}

/// Split a fuzz input or corpus file into its request and the worker's answer.
pub fn split(input: &[u8]) -> (&[u8], &[u8]) {
    match input.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(i) => (&input[..i], &input[i + SEPARATOR.len()..]),
        None => (input, OK),
    }
}

/// The first request in `input`, whole (head, and the body its head frames), or `None`
/// when it is not all there: a case never leaves a proxy waiting for bytes that will not
/// come.
pub fn whole_request(input: &[u8]) -> Option<&[u8]> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        // Not a request at all: both must refuse it alike.
        Err(_) => return Some(input),
        Ok(httparse::Status::Partial) => return None,
    };
    let chunked = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let rest = &input[len..];
    if chunked {
        let mut c = baton::h1::Chunked::default();
        let mut used = 0;
        while used < rest.len() && !c.is_done() {
            match c.decode(&rest[used..]) {
                Ok((n, _)) => used += n,
                // Malformed: refused alike, once it is read.
                Err(_) => return Some(input),
            }
        }
        return c.is_done().then_some(&input[..len + used]);
    }
    let length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| baton::policy::content_length(h.value));
    match length {
        Some(n) if (rest.len() as u64) < n => None,
        Some(n) => Some(&input[..len + n as usize]),
        None => Some(&input[..len]),
    }
}

fn is_head(request: &[u8]) -> bool {
    request.starts_with(b"HEAD ")
}

async fn serve_worker(l: TcpListener, state: Arc<WorkerState>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(WORKER_WAIT, worker_conn(s, state)).await;
        });
    }
}

/// One worker connection: read a request, record it, answer with the case's bytes, close.
async fn worker_conn(mut s: TcpStream, state: Arc<WorkerState>) {
    let mut buf = Vec::new();
    let (seen, _) = loop {
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(parsed) = parse_request(&buf) {
            break parsed;
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    state.seen.lock().unwrap().push(seen);
    let answer = state.answer.lock().unwrap().clone();
    let _ = s.write_all(&answer).await;
    let _ = s.shutdown().await;
}

/// A whole request the worker received: its line, headers and (decoded) body.
fn parse_request(buf: &[u8]) -> Option<(Seen, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let line = format!(
        "{} {} HTTP/1.{}",
        req.method.unwrap_or(""),
        req.path.unwrap_or(""),
        req.version.unwrap_or(9)
    );
    let mut fields: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), text(h.value)))
        .collect();
    fields.sort();
    let rest = &buf[len..];
    let (body, used) = if fields.iter().any(|(n, _)| n == "transfer-encoding") {
        let mut c = baton::h1::Chunked::default();
        let mut data = Vec::new();
        let mut used = 0;
        while used < rest.len() && !c.is_done() {
            let (n, d) = c.decode(&rest[used..]).ok()?;
            if let Some(r) = d {
                data.extend_from_slice(&rest[used..][r]);
            }
            used += n;
        }
        if !c.is_done() {
            return None;
        }
        (data, used)
    } else {
        let n = fields
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| baton::policy::content_length(v.as_bytes()))
            .unwrap_or(0) as usize;
        if rest.len() < n {
            return None;
        }
        (rest[..n].to_vec(), n)
    };
    Some((
        Seen {
            line,
            headers: fields,
            body: text(&body),
        },
        len + used,
    ))
}

/// Send `request` on a new connection, and read the answer as a client would.
async fn ask(proxy: SocketAddr, request: &[u8], head: bool) -> Got {
    let Ok(mut s) = TcpStream::connect(proxy).await else {
        return Got::Nothing;
    };
    if s.write_all(request).await.is_err() {
        return Got::Nothing;
    }
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut eof = false;
    loop {
        if let Some(got) = read_answer(&buf, head, eof) {
            return got;
        }
        if eof {
            return if buf.is_empty() {
                Got::Nothing
            } else {
                Got::Garbage(text(&buf))
            };
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            // Nothing more in time: what came is what the client got.
            Err(_) => eof = true,
        }
    }
}

/// The answer in `buf`, once it is all there (or cut: `eof`).
fn read_answer(buf: &[u8], head: bool, eof: bool) -> Option<Got> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if !eof => return None,
        _ => return Some(Got::Garbage(text(buf))),
    };
    let status = resp.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        // An interim answer (hyper's `100 Continue`): the final one follows.
        return read_answer(&buf[len..], head, eof);
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => length = baton::policy::content_length(h.value),
            "transfer-encoding" => chunked = true,
            "date" => fields.push((name, "*".into())),
            _ => fields.push((name, text(h.value))),
        }
    }
    fields.sort();
    let rest = &buf[len..];
    let no_body = head || status == 204 || status == 304 || status == 101;
    let (framing, body, whole) = if no_body {
        ("none", Vec::new(), true)
    } else if chunked {
        let mut c = baton::h1::Chunked::default();
        let mut data = Vec::new();
        let mut used = 0;
        while used < rest.len() && !c.is_done() {
            match c.decode(&rest[used..]) {
                Ok((n, d)) => {
                    if let Some(r) = d {
                        data.extend_from_slice(&rest[used..][r]);
                    }
                    used += n;
                }
                Err(_) => break,
            }
        }
        if !c.is_done() && !eof {
            return None;
        }
        ("chunked", data, c.is_done())
    } else if let Some(n) = length {
        if (rest.len() as u64) < n && !eof {
            return None;
        }
        let n = (n as usize).min(rest.len());
        ("length", rest[..n].to_vec(), Some(n as u64) == length)
    } else {
        if !eof {
            return None;
        }
        ("close", rest.to_vec(), true)
    };
    // baton's own answers name the worker that failed; the pool, not the codec, chose it.
    let mut body = text(&body);
    for id in ["1", "2"] {
        body = body.replace(&format!("worker {id} "), "worker N ");
    }
    // A cut answer is compared by its head and the fact that it was cut: how many of its
    // bytes got out before the cut is each codec's buffering, not a decision.
    if !whole {
        body = "(cut)".into();
    }
    Some(Got::Answer {
        status,
        headers: fields,
        framing,
        body,
        whole,
    })
}

/// Bytes as text, exactly (`escape_ascii`).
fn text(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}
