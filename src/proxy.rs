//! The HTTP/1.1 reverse proxy: every client request goes to a ready worker chosen by the pool.
//!
//! Client connections (and their keep-alive) belong to baton; connections to workers are pooled
//! separately, so draining a worker never closes a client's connection. Bodies stream both ways.
//! A request that could not reach a worker is retried once on another worker when that is safe
//! (idempotent method, no body).

use crate::listen::Listener;
use crate::pool::{Lease, Pool, Rejected};
use crate::spawn::WorkerId;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

pub struct Proxy {
    pool: Arc<Pool>,
    client: Client<HttpConnector, ProxyBody>,
    header_timeout: Duration,
    max_header_size: usize,
    /// One permit per open client connection (`[listen] max_connections`).
    connections: Arc<tokio::sync::Semaphore>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Proxy {
    pub fn new(
        pool: Arc<Pool>,
        listen: &crate::config::ListenConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Proxy> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Arc::new(Proxy {
            pool,
            client,
            header_timeout: listen.header_timeout.get(),
            max_header_size: usize::try_from(listen.max_header_size.0).unwrap_or(usize::MAX),
            connections: Arc::new(tokio::sync::Semaphore::new(listen.max_connections.get())),
            metrics,
        })
    }

    /// Accept connections until `stop` fires; each is tracked so shutdown can wait for it.
    pub async fn serve(
        self: Arc<Self>,
        listener: Listener,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) {
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
        // The X-Forwarded-For value for this connection's requests, made once.
        let peer_ip = peer.and_then(|p| HeaderValue::try_from(p.ip().to_string()).ok());
        let svc = service_fn(move |req| proxy.clone().handle(req, peer_ip.clone()));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            // hyper's read buffer bounds memory; the exact limit is checked per request below.
            .max_buf_size(self.max_header_size.saturating_mul(2).max(8192))
            .serve_connection(TokioIo::new(stream), svc)
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
        peer: Option<HeaderValue>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = std::time::Instant::now();
        let resp = match self.forward(req, peer).await {
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
        peer: Option<HeaderValue>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let uri = req.uri();
        let uri_len = uri.path_and_query().map_or(1, |p| p.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len());
        if uri_len > self.max_header_size {
            return Err(ProxyError::UriTooLong(uri_len, self.max_header_size));
        }
        let head: usize = uri_len
            + req
                .headers()
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if head > self.max_header_size {
            return Err(ProxyError::HeadTooLarge(head, self.max_header_size));
        }
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        add_forwarded(&mut parts.headers, peer);
        // Only origin-form ("/path") and absolute-form targets reach a worker; anything else
        // (e.g. "*") would make a URI without the worker's port.
        let path = match parts.uri.path_and_query() {
            Some(p) if p.as_str().starts_with('/') => p.clone(),
            None => PathAndQuery::from_static("/"),
            Some(p) if p.as_str() == "*" && parts.method == Method::OPTIONS => {
                return Ok(server_options());
            }
            Some(_) => return Err(ProxyError::BadTarget),
        };
        let retryable = !upgrade && is_idempotent(&parts.method) && has_no_body(&body);

        let lease = self.lease(None).await?;
        // The worker's own authority and the client's path: no formatting, no parsing, and no
        // target can make a URI without the worker's port.
        let build = |authority: &Authority, body: ProxyBody| {
            let mut target = http::uri::Parts::default();
            target.scheme = Some(Scheme::HTTP);
            target.authority = Some(authority.clone());
            target.path_and_query = Some(path.clone());
            let uri = Uri::from_parts(target).map_err(|_| ProxyError::BadTarget)?;
            let mut r = Request::new(body);
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = uri;
            *r.headers_mut() = parts.headers.clone();
            Ok::<_, ProxyError>(r)
        };
        let first = self
            .client
            .request(build(&lease.authority, body.boxed())?)
            .await;
        let (resp, lease) = match first {
            Ok(resp) => (resp, lease),
            Err(_) if lease.was_cut() => return Err(ProxyError::Cut(lease.worker)),
            Err(e) if retryable => {
                tracing::warn!(
                    worker = lease.worker.0,
                    "request to worker {} failed ({e}); retrying on another worker",
                    lease.worker
                );
                let failed = lease.worker;
                drop(lease);
                let lease = self.lease(Some(failed)).await?;
                let empty = Empty::<Bytes>::new().map_err(|n| match n {}).boxed();
                match self.client.request(build(&lease.authority, empty)?).await {
                    Ok(resp) => (resp, lease),
                    Err(e) => return Err(ProxyError::bad_gateway(&lease, &e)),
                }
            }
            Err(e) => return Err(ProxyError::bad_gateway(&lease, &e)),
        };

        let mut resp = resp;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream, lease));
            let mut switched = Response::new(Empty::new().map_err(|n| match n {}).boxed());
            *switched.status_mut() = resp.status();
            *switched.headers_mut() = resp.headers().clone();
            return Ok(switched);
        }
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers, false);
        Ok(Response::from_parts(
            rparts,
            LeasedBody {
                inner: rbody,
                _lease: lease,
            }
            .boxed(),
        ))
    }

    async fn lease(&self, exclude: Option<WorkerId>) -> Result<Lease, ProxyError> {
        self.pool
            .acquire(exclude)
            .await
            .map_err(ProxyError::NoWorker)
    }
}

/// Why a request got no answer from a worker; each becomes a plain-text error response.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("baton: {0}")]
    NoWorker(Rejected),
    #[error("baton: bad request target")]
    BadTarget,
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
}

impl ProxyError {
    fn bad_gateway(lease: &Lease, e: &hyper_util::client::legacy::Error) -> ProxyError {
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
            ProxyError::BadTarget => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong(..) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadTooLarge(..) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadGateway { .. } | ProxyError::Cut(_) => StatusCode::BAD_GATEWAY,
        };
        let mut r = error_response(status, &self.to_string());
        if matches!(self, ProxyError::NoWorker(Rejected::QueueFull(_))) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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

/// Copy bytes both ways after a protocol switch (WebSocket); the lease is held meanwhile.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    lease: Lease,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(worker = lease.worker.0, "upgrade failed: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    drop(lease);
}

/// `OPTIONS *`: a question about the server, answered by baton itself.
fn server_options() -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed());
    r.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
    );
    r
}

pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|n| match n {})
            .boxed(),
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
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn has_no_body(body: &Incoming) -> bool {
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Headers that describe one hop, not the message (RFC 9110 7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Nearly always none is there: one pass over the names, rather than nine hash lookups.
    if !keep_upgrade && !h.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if !(keep_upgrade && name == header::UPGRADE) {
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

fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::UPGRADE
        || n == header::TE
        || n == header::TRAILER
        || n == header::TRANSFER_ENCODING
        || n == header::PROXY_AUTHORIZATION
        || n == header::PROXY_AUTHENTICATE
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}

/// `peer` is the client's IP as a header value (made once per connection).
fn add_forwarded(h: &mut HeaderMap, peer: Option<HeaderValue>) {
    if let Some(ip) = peer {
        let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => {
                HeaderValue::try_from(format!("{prev}, {}", ip.to_str().unwrap_or_default())).ok()
            }
            None => Some(ip),
        };
        if let Some(v) = value {
            h.insert(X_FORWARDED_FOR, v);
        }
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// A worker's response body that returns the worker's lease when the body ends or is dropped.
struct LeasedBody {
    inner: Incoming,
    _lease: Lease,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, Some(HeaderValue::from_static("192.0.2.7")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
