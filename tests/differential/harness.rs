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
//!
//! The HTTP/2 arm: the narrow-then-hyper proxy of each pair also serves HTTPS (a self-signed
//! certificate made here, loaded by `baton::tls::Certificates`), and a case with an HTTP/2
//! form ([`h2_form`]) is sent there over HTTP/1.1 (ALPN `http/1.1`) and over HTTP/2 (ALPN
//! `h2`, the `h2` crate's client): the worker must get the same requests and the client the
//! same status, headers and body, modulo what HTTP/2 by definition cannot carry (see
//! [`Harness::compare_h2`]). Both go over TLS, so both say `X-Forwarded-Proto: https`.

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
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// HTTP/2: the stream was reset before an answer head, with this reason.
    Reset(String),
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
    /// (what the pair is, narrow-then-hyper proxy, hyper-only proxy, the narrow-then-hyper
    /// proxy's HTTPS listener)
    pairs: Vec<(&'static str, SocketAddr, SocketAddr, SocketAddr)>,
    worker: Arc<WorkerState>,
    /// TLS clients offering `http/1.1` and `h2`.
    clients: [tokio_rustls::TlsConnector; 2],
    /// Held so that the workers' `exited` watch never fires.
    _exit: watch::Sender<Option<ExitReason>>,
    /// Holds the certificate's files.
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        let state = Arc::new(WorkerState::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind worker");
        let worker_addr = listener.local_addr().expect("worker address");
        tokio::spawn(serve_worker(listener, state.clone()));

        let (pool, exit) = two_ready_workers(worker_addr);
        let (certs, clients, dir) = certificate();
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
                if codecs == Codecs::NarrowThenHyper {
                    // The same proxy over HTTPS: HTTP/1.1 or HTTP/2 by ALPN.
                    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
                    addrs.push(l.local_addr().expect("proxy address"));
                    tokio::spawn(proxy.clone().serve(
                        Listener::Tcp(l),
                        Some(certs.clone()),
                        CancellationToken::new(),
                    ));
                }
                tokio::spawn(proxy.serve(Listener::Tcp(l), None, CancellationToken::new()));
            }
            pairs.push((name, addrs[0], addrs[2], addrs[1]));
        }
        Harness {
            pairs,
            worker: state,
            clients,
            _exit: exit,
            _dir: dir,
        }
    }

    /// Send one case through every pair; `Err` describes the first difference.
    pub async fn compare(&self, request: &[u8], answer: &[u8]) -> Result<(), String> {
        *self.worker.answer.lock().unwrap() = answer.to_vec();
        let head = is_head(request);
        for (name, narrow, hyper, _) in &self.pairs {
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
        for (_, narrow, hyper, _) in &self.pairs {
            for proxy in [narrow, hyper] {
                out.push(self.outcome(*proxy, request, is_head(request)).await);
            }
        }
        out
    }

    /// What one proxy does with a case.
    pub async fn outcome(&self, proxy: SocketAddr, request: &[u8], head: bool) -> Outcome {
        self.outcome_of(ask(proxy, request, head)).await
    }

    /// What the worker saw while `client` ran, and what the client got.
    async fn outcome_of(&self, client: impl std::future::Future<Output = Got>) -> Outcome {
        self.worker.seen.lock().unwrap().clear();
        let client = client.await;
        // The worker records a request before it answers: what it saw is there now.
        let mut worker = std::mem::take(&mut *self.worker.seen.lock().unwrap());
        worker.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        Outcome { worker, client }
    }

    /// Send one case over HTTPS to the narrow-then-hyper proxy of every pair, as HTTP/1.1
    /// and in its HTTP/2 form ([`h2_form`]); `Err` describes the first difference, or why the
    /// case has no HTTP/2 form.
    ///
    /// The same, modulo what HTTP/2 by definition cannot carry: the names the HTTP/1.1
    /// request's `Connection:` lists are left out of what the worker got (hop-by-hop there;
    /// HTTP/2 has no `Connection:`, so they are end-to-end fields); the client's answer is
    /// compared without its `Connection:` field and its framing (HTTP/2 frames a body in DATA
    /// frames; `Content-Length` aside). A request HTTP/2 itself refuses as malformed (a stream
    /// reset with PROTOCOL_ERROR before it reaches baton, RFC 9113 8.1.1, or the connection
    /// ended with no answer), or by baton with a 400, is the same decision as baton's or
    /// hyper's own 4xx on HTTP/1.1 when the worker gets nothing either way; an answer cut
    /// short is the
    /// same as a stream reset with INTERNAL_ERROR before its head (see below).
    pub async fn compare_h2(&self, request: &[u8], answer: &[u8]) -> Result<(), String> {
        let form = h2_form(request).map_err(|why| format!("no HTTP/2 form: {why}"))?;
        *self.worker.answer.lock().unwrap() = answer.to_vec();
        let head = is_head(request);
        for (name, _, _, https) in &self.pairs {
            let a = self
                .outcome_of(ask_tls(*https, &self.clients[0], request, head))
                .await;
            let b = self
                .outcome_of(ask_h2(*https, &self.clients[1], &form))
                .await;
            let (a, b) = (as_h2(a, &form.listed), as_h2(b, &form.listed));
            // Refused as malformed: by `h2` itself, or by baton where hyper's HTTP/1.1 server
            // refused it with a 400 of its own (no text). A request HTTP/1.1 refuses for
            // another reason first (a CONNECT's 405) may be malformed to `h2` too (a field
            // value it cannot take ends the connection: no answer at all): refused either way.
            let refused_alike = (matches!(&a.client, Got::Answer { status: 400, body, .. } if body.is_empty())
                && (b.client == Got::Reset("PROTOCOL_ERROR".into())
                    || matches!(&b.client, Got::Answer { status: 400, .. }))
                || matches!(
                    &a.client,
                    Got::Answer {
                        status: 400..=499,
                        ..
                    }
                ) && matches!(&b.client, Got::Reset(r) if r == "PROTOCOL_ERROR")
                || matches!(
                    &a.client,
                    Got::Answer {
                        status: 400..=499,
                        ..
                    }
                ) && b.client == Got::Nothing)
                && a.worker.is_empty()
                && b.worker.is_empty();
            // A cut answer: HTTP/2's RST_STREAM may reach the client library before it gave
            // out the head that came just before it (`h2` then reports the reset alone).
            let cut_alike = matches!(&a.client, Got::Answer { whole: false, .. })
                && b.client == Got::Reset("INTERNAL_ERROR".into())
                && a.worker == b.worker;
            if a != b && !refused_alike && !cut_alike {
                return Err(format!(
                    "{name}: HTTP/1.1 and HTTP/2 differ\nrequest: {:?}\nHTTP/2 form: {:?}\n\
                     answer: {:?}\nHTTP/1.1: {a:?}\nHTTP/2:   {b:?}",
                    String::from_utf8_lossy(request),
                    form,
                    String::from_utf8_lossy(answer),
                ));
            }
        }
        Ok(())
    }
}

/// An outcome as HTTP/2 can show it (see [`Harness::compare_h2`]).
fn as_h2(mut o: Outcome, listed: &[String]) -> Outcome {
    for seen in &mut o.worker {
        seen.headers.retain(|(n, _)| !listed.contains(n));
    }
    if let Got::Answer {
        headers, framing, ..
    } = &mut o.client
    {
        headers.retain(|(n, _)| n != "connection");
        *framing = "-";
    }
    o
}

/// A self-signed certificate for `localhost` (rcgen, ECDSA P-256), loaded as `[tls]` names
/// it; TLS clients that trust it, offering `http/1.1` and `h2`; the directory of its files.
fn certificate() -> (
    Arc<baton::tls::Certificates>,
    [tokio_rustls::TlsConnector; 2],
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
    let text = format!(
        "name = \"differential\"\n[app]\ncommand = [\"true\"]\n\
         [tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        cert_path.display(),
        key_path.display()
    );
    let config = Config::parse(&text, std::path::Path::new("differential.toml")).expect("tls");
    let certs = baton::tls::Certificates::load(&config.tls).expect("load the certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert.der().to_vec()))
        .expect("trust the certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clients = [&b"http/1.1"[..], b"h2"].map(|alpn| {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(c))
    });
    (Arc::new(certs), clients, dir)
}

/// Why a case has no HTTP/2 form ([`h2_form`]).
pub mod no_h2 {
    pub const MALFORMED: &str = "malformed as HTTP/1.1 (a bad request line, white space before \
         a field's colon, an obsolete line fold): nothing HTTP/2 could carry";
    pub const PARTIAL: &str = "not a whole request head";
    pub const HTTP10: &str = "HTTP/1.0: HTTP/2 has no version, and an HTTP/1.0 request may go \
         without a Host";
    pub const TARGET_FORM: &str = "a target neither origin-form, absolute-form nor `*`: \
         HTTP/2's :path cannot carry it (RFC 9113 8.3.1)";
    pub const ABSOLUTE_WITHOUT_HOST: &str = "an absolute-form target without a Host: its \
         authority becomes HTTP/2's :authority, which stands for the Host HTTP/1.1 requires \
         (RFC 9112 3.2), so its HTTP/2 form is a valid request where it is not";
    pub const BAD_CHUNKS: &str =
        "a malformed chunked body: HTTP/2 has no chunks, so nothing it sends is malformed so";
    pub const URI: &str = "a target `http::Uri` refuses: the HTTP/2 client cannot send it";
    pub const METHOD: &str = "a method `http::Method` refuses";
    pub const UPGRADE: &str = "a protocol switch (Upgrade): HTTP/2 has none (RFC 9113 8.6)";
    pub const CODING: &str =
        "a Transfer-Encoding other than chunked: HTTP/2 has no transfer codings";
    pub const FIELD: &str = "a field name or value `http` refuses: the HTTP/2 client cannot \
         send it";
}

/// An HTTP/1.1 request as an HTTP/2 client sends it.
#[derive(Debug)]
pub struct H2Form {
    pub request: http::Request<()>,
    pub body: Vec<u8>,
    /// The body is all there: the stream ends with it.
    pub end: bool,
    /// The names the HTTP/1.1 request's `Connection:` fields list (lower-case).
    pub listed: Vec<String>,
}

/// The HTTP/2 form of an HTTP/1.1 request, or why it has none (a [`no_h2`] reason): the
/// method; the target as `:path` (`:scheme` and `:authority` too for an absolute-form one);
/// a single Host that is a URI authority as `:authority` (as browsers send it), any other
/// Host as `host` fields; the other fields as they are (names lower-cased), but for the
/// connection-specific ones HTTP/2 forbids (`Connection`, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding`, `Upgrade`, a `TE` other than `trailers`; RFC 9113 8.2.2); the body as
/// its framing delimits it (a chunked one decoded, with no length), the stream ending with it
/// when it is all there.
pub fn h2_form(input: &[u8]) -> Result<H2Form, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(no_h2::PARTIAL),
        Err(_) => return Err(no_h2::MALFORMED),
    };
    if req.version != Some(1) {
        return Err(no_h2::HTTP10);
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(no_h2::MALFORMED);
    };
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| no_h2::METHOD)?;
    let fields = &*req.headers;
    let is = |h: &httparse::Header<'_>, n: &str| h.name.eq_ignore_ascii_case(n);
    let listed: Vec<String> = fields
        .iter()
        .filter(|h| is(h, "connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if listed.iter().any(|t| t == "upgrade") && fields.iter().any(|h| is(h, "upgrade")) {
        return Err(no_h2::UPGRADE);
    }
    let codings: Vec<&[u8]> = fields
        .iter()
        .filter(|h| is(h, "transfer-encoding"))
        .map(|h| baton_trim(h.value))
        .collect();
    let chunked = !codings.is_empty();
    if chunked && !codings.iter().all(|c| c.eq_ignore_ascii_case(b"chunked")) {
        return Err(no_h2::CODING);
    }
    let hosts: Vec<&[u8]> = fields
        .iter()
        .filter(|h| is(h, "host"))
        .map(|h| h.value)
        .collect();
    let authority = match hosts.as_slice() {
        [h] if !h.is_empty() && method != http::Method::CONNECT => {
            http::uri::Authority::try_from(*h).ok()
        }
        _ => None,
    };
    let uri = if target.starts_with('/') || target == "*" {
        match &authority {
            Some(a) => http::Uri::builder()
                .scheme("https")
                .authority(a.clone())
                .path_and_query(target)
                .build()
                .map_err(|_| no_h2::URI)?,
            None => http::Uri::try_from(target).map_err(|_| no_h2::URI)?,
        }
    } else if target.contains("://") && hosts.is_empty() {
        return Err(no_h2::ABSOLUTE_WITHOUT_HOST);
    } else if target.contains("://") || method == http::Method::CONNECT {
        http::Uri::try_from(target).map_err(|_| no_h2::URI)?
    } else {
        return Err(no_h2::TARGET_FORM);
    };
    let host_in_authority = authority.is_some() && !target.contains("://");
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .map_err(|_| no_h2::URI)?;
    for h in fields.iter() {
        let name = h.name.to_ascii_lowercase();
        let skip = matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) || (name == "te" && h.value != b"trailers")
            || (name == "host" && host_in_authority)
            // A chunked body's length is its chunks' (RFC 9112 6.3): a Content-Length beside
            // it is not passed on.
            || (name == "content-length" && chunked);
        if skip {
            continue;
        }
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| no_h2::FIELD)?;
        let value = http::HeaderValue::from_bytes(h.value).map_err(|_| no_h2::FIELD)?;
        request.headers_mut().append(name, value);
    }
    let rest = &input[len..];
    let (body, end) = if chunked {
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
                Err(_) => return Err(no_h2::BAD_CHUNKS),
            }
        }
        let done = c.is_done();
        // hyper reads a request's chunks strictly (CRLF after each size line and each chunk's
        // data), where h1::Chunked (made for workers' answers) takes bare LFs as nginx does:
        // a body only the lenient reading accepts is malformed to the HTTP/1.1 front.
        if done && !strict_chunks(&rest[..used]) {
            return Err(no_h2::BAD_CHUNKS);
        }
        (data, done)
    } else {
        let lengths: Vec<&[u8]> = fields
            .iter()
            .filter(|h| is(h, "content-length"))
            .map(|h| h.value)
            .collect();
        match lengths.as_slice() {
            [] => (Vec::new(), true),
            [v] => match baton::policy::content_length(v) {
                Some(n) => {
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    (rest[..n.min(rest.len())].to_vec(), rest.len() >= n)
                }
                None => (rest.to_vec(), true),
            },
            _ => (rest.to_vec(), true),
        }
    };
    Ok(H2Form {
        request,
        body,
        end,
        listed,
    })
}

fn baton_trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// A real pool with two ready workers that both point at `addr` (so that a retry has
/// somewhere to go), and the sender that keeps their `exited` watch from firing.
pub fn two_ready_workers(addr: SocketAddr) -> (Arc<Pool>, watch::Sender<Option<ExitReason>>) {
    let pool = Pool::new(Limits {
        concurrency: 0,
        max_queue: 4,
        max_queue_time: None,
        request_timeout: None,
        max_request_time: None,
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
    let Ok(s) = TcpStream::connect(proxy).await else {
        return Got::Nothing;
    };
    ask_on(s, request, head).await
}

/// [`ask`], over HTTPS with ALPN `http/1.1`.
async fn ask_tls(
    proxy: SocketAddr,
    client: &tokio_rustls::TlsConnector,
    request: &[u8],
    head: bool,
) -> Got {
    let Ok(s) = TcpStream::connect(proxy).await else {
        return Got::Nothing;
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    match tokio::time::timeout(WAIT, client.connect(name, s)).await {
        Ok(Ok(tls)) => ask_on(tls, request, head).await,
        Ok(Err(e)) => Got::Garbage(format!("TLS handshake failed: {e}")),
        Err(_) => Got::Garbage("no TLS handshake in time".into()),
    }
}

/// Send the HTTP/2 form of a request on a new HTTPS connection (ALPN `h2`), and read the
/// answer as a client would.
async fn ask_h2(proxy: SocketAddr, client: &tokio_rustls::TlsConnector, form: &H2Form) -> Got {
    let Ok(s) = TcpStream::connect(proxy).await else {
        return Got::Nothing;
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = match tokio::time::timeout(WAIT, client.connect(name, s)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Got::Garbage(format!("TLS handshake failed: {e}")),
        Err(_) => return Got::Garbage("no TLS handshake in time".into()),
    };
    let (send, conn) = match h2::client::handshake(tls).await {
        Ok(h) => h,
        Err(e) => return Got::Garbage(format!("HTTP/2 handshake failed: {e}")),
    };
    let conn = tokio::spawn(conn);
    let got = tokio::time::timeout(WAIT, async {
        let mut send = match send.ready().await {
            Ok(s) => s,
            Err(e) => return Got::Garbage(format!("HTTP/2 connection not ready: {e}")),
        };
        let ends = form.end && form.body.is_empty();
        let (answer, mut stream) = match send.send_request(form.request.clone(), ends) {
            Ok(r) => r,
            Err(e) => return Got::Garbage(format!("the h2 client refused the request: {e}")),
        };
        if !form.body.is_empty() {
            let _ = stream.send_data(bytes::Bytes::from(form.body.clone()), form.end);
        }
        let answer = match answer.await {
            Ok(a) => a,
            Err(e) => {
                return match e.reason() {
                    Some(reason) => Got::Reset(format!("{reason:?}")),
                    None => Got::Nothing,
                };
            }
        };
        let (parts, mut body) = answer.into_parts();
        let mut data = Vec::new();
        let whole = loop {
            match body.data().await {
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                Some(Err(_)) => break false,
                None => break true,
            }
        };
        drop(stream);
        let mut fields: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter(|(n, _)| *n != http::header::CONTENT_LENGTH)
            .map(|(n, v)| {
                let v = if *n == http::header::DATE {
                    "*".into()
                } else {
                    text(v.as_bytes())
                };
                (n.as_str().to_owned(), v)
            })
            .collect();
        fields.sort();
        Got::Answer {
            status: parts.status.as_u16(),
            headers: fields,
            framing: "-",
            body: answer_body(&data, whole),
            whole,
        }
    })
    .await
    .unwrap_or(Got::Nothing);
    conn.abort();
    got
}

/// Send `request` on `s`, and read the answer as a client would.
async fn ask_on<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8], head: bool) -> Got {
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
    Some(Got::Answer {
        status,
        headers: fields,
        framing,
        body: answer_body(&body, whole),
        whole,
    })
}

/// An answer's body as compared.
fn answer_body(body: &[u8], whole: bool) -> String {
    // A cut answer is compared by its head and the fact that it was cut: how many of its
    // bytes got out before the cut is each codec's buffering, not a decision.
    if !whole {
        return "(cut)".into();
    }
    // baton's own answers name the worker that failed; the pool, not the codec, chose it.
    let mut body = text(body);
    for id in ["1", "2"] {
        body = body.replace(&format!("worker {id} "), "worker N ");
    }
    body
}

/// Bytes as text, exactly (`escape_ascii`).
fn text(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// Chunks framed with CRLF throughout: `SIZE[;ext]CRLF DATA CRLF ... 0[;ext]CRLF (trailers) CRLF`.
fn strict_chunks(mut b: &[u8]) -> bool {
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let line = &b[..eol];
        if line.contains(&b'\n') || line.contains(&b'\r') {
            return false;
        }
        let size = line.split(|c| *c == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        else {
            return false;
        };
        b = &b[eol + 2..];
        if size == 0 {
            // Trailer lines, then the empty line; every line ends with CRLF.
            loop {
                let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
                    return false;
                };
                if eol == 0 {
                    return true;
                }
                // A trailer is a field (`name: value`), as hyper reads it.
                let line = &b[..eol];
                let name = line.split(|c| *c == b':').next().unwrap_or_default();
                if line.contains(&b'\n')
                    || name.len() == line.len()
                    || name.is_empty()
                    || !name
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c))
                {
                    return false;
                }
                b = &b[eol + 2..];
            }
        }
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return false;
        }
        b = &b[size + 2..];
    }
}
