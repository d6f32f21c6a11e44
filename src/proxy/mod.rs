//! The HTTP/1.1 reverse proxy: every client request goes to a ready worker chosen by the pool.
//!
//! Client connections (and their keep-alive) belong to baton; connections to workers are pooled
//! separately, so draining a worker never closes a client's connection. Bodies stream both ways.
//! A request that could not reach a worker is retried once on another worker when that is safe
//! (idempotent method, no body).

mod exchange;
mod narrow;

use crate::buffer::{self, BodyError, BodyFailure};
use crate::h1::Framing;
use crate::listen::Listener;
use crate::pool::{Lease, Pool, Rejected};
use crate::spawn::WorkerId;
use crate::upstream::{RawBody, UpstreamError};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type ProxyBody = UnsyncBoxBody<Bytes, BodyError>;

pub struct Proxy {
    pool: Arc<Pool>,
    header_timeout: Duration,
    max_header_size: usize,
    /// One permit per open client connection (`[listen] max_connections`).
    connections: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
    metrics: Arc<crate::metrics::Metrics>,
    /// Peers whose forwarding headers are believed (`[listen] trusted_proxies`).
    trusted_proxies: Vec<ipnet::IpNet>,
    request_buffering: bool,
    response_buffering: bool,
    limits: buffer::Limits,
    send_timeout: Duration,
    tunnel_idle_timeout: Duration,
    /// Every connection and every upgraded tunnel, so that shutdown can wait for all of them.
    tasks: TaskTracker,
}

impl Proxy {
    /// `max_connections`: client connections at once (the config's, fitted to the descriptor
    /// limit by the manager).
    pub fn new(
        pool: Arc<Pool>,
        config: &crate::config::Config,
        max_connections: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Proxy> {
        let listen = &config.listen;
        Arc::new(Proxy {
            pool,
            header_timeout: listen.header_timeout.get(),
            max_header_size: usize::try_from(listen.max_header_size.0).unwrap_or(usize::MAX),
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            max_connections,
            metrics,
            trusted_proxies: listen.trusted_proxies.clone(),
            request_buffering: listen.request_buffering,
            response_buffering: listen.response_buffering,
            limits: crate::buffer::Limits::from_config(&config.listen),
            send_timeout: listen.send_timeout.get(),
            tunnel_idle_timeout: listen.tunnel_idle_timeout.get(),
            tasks: TaskTracker::new(),
        })
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.connections.available_permits())
    }

    /// The tracker of every connection and tunnel this proxy serves.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Accept connections until `stop` fires; each is tracked so shutdown can wait for it.
    pub async fn serve(self: Arc<Self>, listener: Listener, stop: CancellationToken) {
        let tracker = self.tasks.clone();
        loop {
            // At the connection limit, stop accepting: new clients wait in the kernel's backlog
            // rather than being refused, and everyone already connected keeps full speed.
            let permit = tokio::select! {
                _ = stop.cancelled() => return,
                p = self.connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = accept(&listener) => a,
            };
            match accepted {
                Ok(Accepted::Tcp(stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = self.clone().connection(stream, Some(peer), stop.clone());
                    tracker.spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
                Ok(Accepted::Unix(stream)) => {
                    let conn = self.clone().connection(stream, None, stop.clone());
                    tracker.spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: pause rather than spin, keep serving the others.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection<S>(
        self: Arc<Self>,
        stream: S,
        peer: Option<SocketAddr>,
        stop: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.clone();
        // An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d: compare and forward
        // it as the IPv4 address it is.
        let peer = peer.map(|p| SocketAddr::new(p.ip().to_canonical(), p.port()));
        // What this connection's requests say of their client, made once.
        let peer = Peer {
            ip: peer.and_then(|p| HeaderValue::try_from(p.ip().to_string()).ok()),
            trusted: match peer {
                Some(p) => self.trusted_proxies.iter().any(|n| n.contains(&p.ip())),
                None => true,
            },
        };
        // The common requests first, as bytes; hyper takes over at the first other one.
        let mut io = buffer::SendTimeout::new(stream, self.send_timeout);
        let io = match self.narrow(&mut io, &peer, &stop).await {
            narrow::Ended::Closed => return,
            narrow::Ended::Hyper(prefix) => narrow::Rewound::new(prefix, io),
        };
        let svc = service_fn(move |req| proxy.clone().handle(req, peer.clone()));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            // hyper's read buffer bounds memory; the exact limit is checked per request below.
            .max_buf_size(self.max_header_size.saturating_mul(2).max(8192))
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.cancelled() => {
                // Finish the request in flight, answer it with `Connection: close`, then close.
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        };
        if let Err(e) = result {
            tracing::debug!("client connection ended: {e}");
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = std::time::Instant::now();
        let resp = match self.forward(req, &peer).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
        self.metrics
            .request(resp.status().as_u16(), started.elapsed());
        Ok(resp)
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: &Peer,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let uri = req.uri();
        let uri_len = uri.path_and_query().map_or(1, |p| p.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len());
        if uri_len > self.max_header_size {
            return Err(ProxyError::UriTooLong(uri_len, self.max_header_size));
        }
        // The whole request line counts: method, target and version.
        let head: usize = req.method().as_str().len()
            + uri_len
            + " HTTP/1.1\r\n ".len()
            + req
                .headers()
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if head > self.max_header_size {
            return Err(ProxyError::HeadTooLarge(head, self.max_header_size));
        }
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        if req.method() == Method::TRACE {
            return Err(ProxyError::Trace);
        }
        // HTTP/1.1 needs exactly one Host (RFC 9112 3.2); HTTP/1.0 may go without.
        let hosts = req.headers().get_all(header::HOST).iter().count();
        if hosts > 1 || (hosts == 0 && req.version() == http::Version::HTTP_11) {
            return Err(ProxyError::NoHost);
        }
        if let Some(host) = req.headers().get(header::HOST)
            && !crate::h1::is_valid_host(host.as_bytes())
        {
            return Err(ProxyError::BadHost);
        }
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Only origin-form ("/path") and absolute-form ("http://host/path") targets reach a
        // worker; anything else ("abc", "host:80", "*") would be guessed at.
        let path = match parts.uri.path_and_query() {
            Some(p) if p.as_str().starts_with('/') => p.clone(),
            None if parts.uri.scheme().is_some() => PathAndQuery::from_static("/"),
            Some(p) if p.as_str() == "*" && parts.method == Method::OPTIONS => {
                return Ok(server_options());
            }
            _ => return Err(ProxyError::BadTarget),
        };
        strip_hop_by_hop(&mut parts.headers, upgrade);
        add_forwarded(&mut parts.headers, peer);
        let has_body = !has_no_body(&body);
        // Set when a streamed request body fails on the client's side (a malformed chunk, a
        // stall): then the client, not the worker, is to blame.
        let client_fault = buffer::Fault::default();
        let retryable = !upgrade && is_idempotent(&parts.method) && !has_body;
        // Too large by its own account: 413 before reading (and before the `100 Continue` that
        // hyper sends on the first read), buffered or streamed.
        if has_body && content_length(&parts.headers).is_some_and(|n| n > self.limits.max_body) {
            return Err(ProxyError::Body(BodyFailure::TooLarge(
                self.limits.max_body,
            )));
        }
        // The body's framing towards the worker: its exact length when known, else chunked.
        let (body, length): (Option<ProxyBody>, Option<u64>) = if !has_body {
            (None, None)
        } else if self.request_buffering {
            // The whole body first: a client that trickles costs memory or a file, never a
            // worker. The worker gets the exact length, however the client framed it.
            let buffered = buffer::read_request_body(body, &self.limits)
                .await
                .map_err(ProxyError::Body)?;
            let n = buffered.len();
            (
                Some(buffer::BufferedBody::new(buffered).boxed_unsync()),
                Some(n),
            )
        } else {
            // Streamed: a chunked body that grows past max_body_size is cut with a 413.
            let n = body.size_hint().exact();
            let streamed = buffer::ClientBody::new(
                body,
                self.limits.body_timeout,
                self.limits.max_body,
                client_fault.clone(),
            );
            (Some(streamed.boxed_unsync()), n)
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        let close = !retryable && !upgrade;
        let head = worker_head(&parts, &path, body.is_some().then_some(length), close);
        let mut req = exchange::Outgoing {
            bytes: &head,
            chunked: body.is_some() && length.is_none(),
            body,
            retryable,
            head: parts.method == Method::HEAD,
            upgrade,
            fault: Some(client_fault),
        };
        let lease = self.lease(None).await?;
        let mut answer = BytesMut::new();
        let mut out = Vec::new();
        let exchange::Answered { lease, stream, fin } = self
            .exchange(lease, &mut req, &mut answer, &mut out)
            .await?;
        let (rparts, switched) = response_head(&out, fin.status).ok_or_else(|| {
            ProxyError::bad_gateway(
                &lease,
                &UpstreamError::Answer("its answer head cannot be forwarded"),
            )
        })?;

        if switched {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::bad_gateway(
                    &lease,
                    &UpstreamError::Answer("it switched protocols unasked"),
                ));
            };
            let crate::upstream::Upstream::Whole(stream) = stream else {
                return Err(ProxyError::bad_gateway(
                    &lease,
                    &UpstreamError::Answer("it switched protocols before it read the request"),
                ));
            };
            let websocket = rparts
                .headers
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            self.tasks.spawn(tunnel(
                client_upgrade,
                stream,
                answer.freeze(),
                lease,
                self.tunnel_idle_timeout,
                websocket,
            ));
            let empty = Empty::new().map_err(|n| match n {}).boxed_unsync();
            return Ok(Response::from_parts(rparts, empty));
        }
        let empty = || Empty::new().map_err(|n| match n {}).boxed_unsync();
        if fin.body == Framing::None {
            // No body (HEAD, 204, 304): the worker is free now.
            let n = answer.len();
            lease.conns.finish(stream, !fin.close, n > 0);
            drop(lease);
            return Ok(Response::from_parts(rparts, empty()));
        }
        if let Framing::Length(n) = fin.body
            && answer.len() as u64 >= n
        {
            // The common case: the whole answer came with its head. The worker is free now,
            // and the head and body go to the client in one write.
            let extra = answer.len() as u64 > n;
            let body = answer.split_to(n as usize).freeze();
            lease.conns.finish(stream, !fin.close, extra);
            drop(lease);
            return Ok(Response::from_parts(
                rparts,
                Full::new(body).map_err(|n| match n {}).boxed_unsync(),
            ));
        }
        let body = RawBody::new(stream, answer, fin.body, lease.conns.clone(), !fin.close);
        if self.response_buffering {
            // The rest of the worker's answer is read as fast as it comes; its lease goes back
            // when it ends, whatever the client's pace.
            let body = buffer::spool(body, self.limits.clone(), move |_| drop(lease));
            return Ok(Response::from_parts(rparts, body.boxed_unsync()));
        }
        Ok(Response::from_parts(
            rparts,
            LeasedBody {
                inner: body,
                _lease: lease,
            }
            .boxed_unsync(),
        ))
    }

    /// A worker for one request, waiting in the queue if need be. When this is dropped before
    /// the pool answers, the client has closed its connection while its request waited (hyper
    /// notices that, as the narrow path does): the request leaves the queue, no worker sees
    /// it, and it is counted as abandoned.
    async fn lease(&self, exclude: Option<WorkerId>) -> Result<Lease, ProxyError> {
        struct Waiting<'a>(Option<&'a crate::metrics::Metrics>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if let Some(m) = self.0 {
                    m.abandoned();
                }
            }
        }
        let mut waiting = Waiting(Some(&self.metrics));
        let lease = self.pool.acquire(exclude).await;
        waiting.0 = None;
        lease.map_err(ProxyError::NoWorker)
    }
}

/// The request head for the worker: the client's method, the origin-form target, its headers
/// (hop-by-hop ones already dropped, forwarding ones set), the body's framing (`Some(None)`: a
/// body of unknown length, sent chunked), and `Connection: close` for a request whose stream
/// must carry nothing else.
fn worker_head(
    parts: &http::request::Parts,
    path: &PathAndQuery,
    body: Option<Option<u64>>,
    close: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        crate::h1::header(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    match body {
        Some(Some(n)) => crate::h1::header(&mut out, b"content-length", n.to_string().as_bytes()),
        Some(None) => crate::h1::header(&mut out, b"transfer-encoding", b"chunked"),
        None => {}
    }
    if close {
        crate::h1::header(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The client's answer head as hyper's server takes it, from the head `h1::answer` (or
/// `h1::switched`) wrote: hyper frames the body itself, so `Transfer-Encoding` is left to it.
/// `true` with a protocol switch.
fn response_head(out: &[u8], status: u16) -> Option<(http::response::Parts, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; crate::h1::MAX_HEADERS + 4];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(out).ok()?;
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).ok()?;
    let switched = status == 101;
    let map = r.headers_mut();
    for h in resp.headers.iter() {
        if !switched && h.name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        map.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    Some((r.into_parts().0, switched))
}

/// The options a `Connection:` header lists, over all its lines.
fn connection_options(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Why a request got no answer from a worker; each becomes a plain-text error response.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("baton: {0}")]
    NoWorker(Rejected),
    #[error(
        "baton: bad request target (origin-form \"/path\" or absolute-form \"http://host/path\")"
    )]
    BadTarget,
    #[error("baton: a request needs exactly one Host header")]
    NoHost,
    #[error("baton: the Host header is not a host name or address with an optional port")]
    BadHost,
    #[error("baton: CONNECT is not supported (baton is a reverse proxy, not a forward proxy)")]
    Connect,
    #[error(
        "baton: TRACE is not supported (it would echo the request, credentials included, to the page that sent it)"
    )]
    Trace,
    #[error("baton: worker {worker} failed to answer: {cause}")]
    BadGateway { worker: WorkerId, cause: String },
    #[error(
        "baton: worker {0} was stopped by a restart after drain_timeout while this request was in flight"
    )]
    Cut(WorkerId),
    #[error("baton: the request target is {0} bytes; the limit is {1} (listen.max_header_size)")]
    UriTooLong(usize, usize),
    #[error("baton: the request head is {0} bytes; the limit is {1} (listen.max_header_size)")]
    HeadTooLarge(usize, usize),
    #[error("baton: {0}")]
    Body(BodyFailure),
}

impl ProxyError {
    fn bad_gateway(lease: &Lease, e: &UpstreamError) -> ProxyError {
        let mut cause = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            cause = format!("{cause}: {s}");
            src = s.source();
        }
        tracing::warn!(
            worker = lease.worker.0,
            "worker {} failed to answer: {cause}",
            lease.worker
        );
        ProxyError::BadGateway {
            worker: lease.worker,
            cause,
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let status = match &self {
            ProxyError::NoWorker(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadTarget | ProxyError::NoHost | ProxyError::BadHost => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Connect | ProxyError::Trace => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UriTooLong(..) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadTooLarge(..) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadGateway { .. } | ProxyError::Cut(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Body(BodyFailure::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Body(BodyFailure::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Body(BodyFailure::Malformed(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Body(BodyFailure::Io(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = error_response(status, &self.to_string());
        match self {
            ProxyError::NoWorker(Rejected::QueueFull(_)) => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::Connect | ProxyError::Trace => {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
            }
            // The rest of the body is not read: the connection cannot go on.
            ProxyError::Body(_) => {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        r
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// Copy bytes both ways after a protocol switch (WebSocket); the lease is held meanwhile, so a
/// tunnel that idles for `idle` is closed (a WebSocket with a close frame, 1001 "going away"),
/// as is one whose worker baton stopped after `drain_timeout`. `early`: what the worker sent
/// right after its `101`, which the client gets first.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: tokio::net::TcpStream,
    early: Bytes,
    lease: Lease,
    idle: Duration,
    websocket: bool,
) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(worker = lease.worker.0, "upgrade failed: {e}");
            return;
        }
    };
    let activity = buffer::Activity::default();
    let mut client = buffer::Watched::new(TokioIo::new(client), activity.clone());
    let mut upstream = buffer::Watched::new(upstream, activity.clone());
    use tokio::io::AsyncWriteExt;
    let idled = tokio::select! {
        _ = async {
            if client.write_all(&early).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        } => false,
        _ = activity.idle_for(idle) => true,
        _ = lease.cut() => false,
    };
    if websocket && (idled || lease.was_cut()) {
        // A close frame from the server side (unmasked): code 1001, going away.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = client.write_all(&[0x88, 0x02, 0x03, 0xe9]).await;
            let _ = client.shutdown().await;
        })
        .await;
    }
    if idled {
        tracing::info!(
            worker = lease.worker.0,
            "closed an upgraded connection idle for {} (listen.tunnel_idle_timeout)",
            humantime::format_duration(idle)
        );
    }
    drop(lease);
}

const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

/// `OPTIONS *`: a question about the server, answered by baton itself.
fn server_options() -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
    r
}

pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn has_no_body(body: &Incoming) -> bool {
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && connection_options(h).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Headers that describe one hop, not the message (RFC 9110 7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Nearly always none is there: one pass over the names, rather than nine hash lookups.
    if !keep_upgrade && !h.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = connection_options(h)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        let kept = is_protected(&name) || (keep_upgrade && name == header::UPGRADE);
        if !kept {
            h.remove(name);
        }
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(name);
    }
    h.remove(KEEP_ALIVE);
    h.remove(PROXY_CONNECTION);
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// End-to-end headers that baton and the worker rely on: a client's `Connection:` list cannot
/// remove them (`Connection: host` would hide the Host the client sent).
fn is_protected(n: &HeaderName) -> bool {
    n == header::HOST
        || n == header::CONTENT_LENGTH
        || n == header::CONTENT_TYPE
        || n == header::CONTENT_ENCODING
        || n == header::COOKIE
        || n == header::AUTHORIZATION
        || n == header::EXPECT
        || n == X_FORWARDED_FOR
        || n == X_FORWARDED_HOST
        || n == X_FORWARDED_PROTO
        || n == FORWARDED
        || n == X_REAL_IP
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    crate::h1::is_hop_by_hop(n.as_str().as_bytes())
}

/// What baton knows of a client connection, worked out once per connection.
#[derive(Clone, Debug)]
struct Peer {
    /// The client's IP as a header value; `None` on a Unix socket.
    ip: Option<HeaderValue>,
    /// A configured trusted proxy (`[listen] trusted_proxies`) or a local process on a Unix
    /// socket: its forwarding headers are kept and extended; anyone else's are replaced.
    trusted: bool,
}

/// Set the forwarding headers: what baton saw, never what an untrusted client claims.
fn add_forwarded(h: &mut HeaderMap, peer: &Peer) {
    let prior = if peer.trusted && h.contains_key(&X_FORWARDED_FOR) {
        // Several X-Forwarded-For lines are one list (RFC 9110 5.3).
        // An empty line adds nobody to the list.
        let joined: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        (!joined.is_empty()).then(|| joined.join(", "))
    } else {
        None
    };
    // An untrusted client's forwarding headers, and anyone's lookalike of a header baton
    // frames by or sets (`X_Forwarded_For`, `Content_Length`: see `h1::is_lookalike`), never
    // reach a worker.
    let dropped = |n: &HeaderName| {
        let n = n.as_str().as_bytes();
        crate::h1::is_lookalike(n) || (!peer.trusted && crate::h1::is_forwarding(n))
    };
    if h.keys().any(dropped) {
        let names: Vec<HeaderName> = h.keys().filter(|n| dropped(n)).cloned().collect();
        for name in names {
            h.remove(&name);
        }
    }
    let value = match (prior, &peer.ip) {
        (Some(prev), Some(ip)) => {
            HeaderValue::try_from(format!("{prev}, {}", ip.to_str().unwrap_or_default())).ok()
        }
        (Some(prev), None) => HeaderValue::try_from(prev).ok(),
        (None, ip) => ip.clone(),
    };
    match value {
        Some(v) => {
            h.insert(X_FORWARDED_FOR, v);
        }
        None => {
            h.remove(&X_FORWARDED_FOR);
        }
    }
    if !h.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = h.get(header::HOST).cloned()
    {
        h.insert(X_FORWARDED_HOST, host);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// A worker's answer body streamed to the client as it comes (no response buffering): it
/// holds the worker's lease, which goes back when the body ends or is dropped.
struct LeasedBody {
    inner: RawBody,
    /// Held for its drop.
    _lease: Lease,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BodyError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("example"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
    }

    #[test]
    fn connection_cannot_remove_end_to_end_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, cookie, authorization, x-other"),
        );
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["host"], "example");
        assert_eq!(h["cookie"], "a=1");
        assert_eq!(h["authorization"], "Basic x");
        assert!(!h.contains_key("x-other"));
    }

    fn client(trusted: bool) -> Peer {
        Peer {
            ip: Some(HeaderValue::from_static("192.0.2.7")),
            trusted,
        }
    }

    #[test]
    fn a_trusted_proxys_forwarding_headers_are_merged_and_extended() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(header::HOST, HeaderValue::from_static("example.org"));
        add_forwarded(&mut h, &client(true));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.org");
    }

    #[test]
    fn an_empty_forwarded_for_adds_nobody() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(""));
        add_forwarded(&mut h, &client(true));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
    }

    #[test]
    fn an_untrusted_clients_forwarding_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::HOST, HeaderValue::from_static("example.org"));
        add_forwarded(&mut h, &client(false));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "example.org");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-real-ip"));
    }
}
