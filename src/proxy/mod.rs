//! The HTTP/1.1 reverse proxy: every client request goes to a ready worker chosen by the pool.
//!
//! Client connections (and their keep-alive) belong to baton; connections to workers are pooled
//! separately, so draining a worker never closes a client's connection. Bodies stream both ways.
//! A request that could not reach a worker is retried once on another worker when that is safe
//! (idempotent method, no body).

mod exchange;
mod narrow;
mod refused;
mod sendfile;

use crate::buffer::{self, BodyError, BodyFailure};
use crate::h1::Framing;
use crate::listen::Listener;
use crate::policy;
use crate::pool::{Lease, Pool, Rejected};
use crate::spawn::WorkerId;
use crate::upstream::{Conns, RawBody, UpstreamError};
use crate::util::hex16;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
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
    /// What every request head is held to, on every path.
    policy: policy::Limits,
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
    codecs: Codecs,
    /// `[tls] redirect_http`: the HTTPS port plain requests are sent to.
    redirect_to: std::sync::OnceLock<u16>,
    /// `[tls] hsts`: the `Strict-Transport-Security` of every HTTPS answer.
    hsts: Option<HeaderValue>,
    /// `[static]`: the paths baton answers from the generations' files.
    assets: std::sync::OnceLock<Arc<crate::assets::Assets>>,
    /// `[log] access`: every request's entry goes there.
    access: std::sync::OnceLock<Arc<crate::access::AccessLog>>,
    /// `[log] request_id`: requests without a valid `X-Request-Id` get one.
    request_ids: bool,
    /// The app's server keeps a thread waiting on each kept-alive connection (found out by
    /// one worker, true of them all: see [`crate::upstream::Conns`]).
    holds: Arc<std::sync::atomic::AtomicBool>,
}

/// Which codecs serve a client connection's requests. Both make the same decisions (one
/// policy); the narrow path is only cheaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codecs {
    /// The narrow HTTP/1.1 path while requests are the common kind, then hyper (always, in
    /// baton).
    NarrowThenHyper,
    /// hyper from the first byte: for the differential test, which holds the two to the same
    /// behaviour, and for benchmarks.
    HyperOnly,
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
        Proxy::with_codecs(
            pool,
            config,
            max_connections,
            metrics,
            Codecs::NarrowThenHyper,
        )
    }

    /// [`Proxy::new`], with the codecs given.
    pub fn with_codecs(
        pool: Arc<Pool>,
        config: &crate::config::Config,
        max_connections: usize,
        metrics: Arc<crate::metrics::Metrics>,
        codecs: Codecs,
    ) -> Arc<Proxy> {
        let listen = &config.listen;
        Arc::new(Proxy {
            pool,
            header_timeout: listen.header_timeout.get(),
            max_header_size: usize::try_from(listen.max_header_size.0).unwrap_or(usize::MAX),
            policy: policy::Limits {
                max_head: usize::try_from(listen.max_header_size.0).unwrap_or(usize::MAX),
                max_body: listen.max_body_size.0,
            },
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
            codecs,
            redirect_to: std::sync::OnceLock::new(),
            assets: std::sync::OnceLock::new(),
            access: std::sync::OnceLock::new(),
            request_ids: config.log.request_ids(),
            holds: Arc::default(),
            hsts: Some(config.tls.hsts.get().as_secs())
                .filter(|s| *s > 0)
                .and_then(|s| HeaderValue::try_from(format!("max-age={s}")).ok()),
        })
    }

    /// Answer every plain HTTP request with a `301` to the same host and path on HTTPS, on
    /// this port (`[tls] redirect_http`).
    pub fn redirect_http_to(&self, port: u16) {
        let _ = self.redirect_to.set(port);
    }

    /// Answer the paths of `[static]` from files (the supervisor pins their directories).
    pub fn serve_assets(&self, assets: Arc<crate::assets::Assets>) {
        let _ = self.assets.set(assets);
    }

    /// Log every request to this access log.
    pub fn serve_access(&self, log: Arc<crate::access::AccessLog>) {
        let _ = self.access.set(log);
    }

    pub(crate) fn access_log(&self) -> Option<&crate::access::AccessLog> {
        self.access.get().map(|a| a.as_ref())
    }

    /// A new request id into `buf`, when requests get ids: 128 bits as 32 hex digits (as
    /// nginx's `$request_id`): a random prefix of this process and thread, and the thread's
    /// counter, so ids never repeat and cost no system call and no memory shared between the
    /// proxy's threads (one counter for all of them cost a cache line passed to and fro).
    pub(crate) fn new_request_id<'b>(&self, buf: &'b mut [u8; 32]) -> Option<&'b [u8]> {
        use std::cell::Cell;
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        static THREADS: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            /// This thread's prefix, its digits made once, and the count of ids it made.
            static NEXT: Cell<Option<([u8; 16], u64)>> = const { Cell::new(None) };
        }
        if !self.request_ids {
            return None;
        }
        let (prefix, n) = NEXT.get().unwrap_or_else(|| {
            // RandomState is seeded from the operating system's randomness; the pid and the
            // thread's number make each thread's prefix its own.
            let mut h = SEED.get_or_init(Default::default).build_hasher();
            h.write_u64(std::process::id().into());
            h.write_u64(THREADS.fetch_add(1, Ordering::Relaxed));
            (hex16(h.finish()), 0)
        });
        NEXT.set(Some((prefix, n.wrapping_add(1))));
        let (head, tail) = buf.split_at_mut(16);
        head.copy_from_slice(&prefix);
        tail.copy_from_slice(&hex16(n));
        Some(&buf[..])
    }

    /// The static files, when `target` is one of them.
    pub(crate) fn asset_for(&self, target: &[u8]) -> Option<&crate::assets::Assets> {
        self.assets
            .get()
            .map(|a| a.as_ref())
            .filter(|a| a.claims(target))
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
    /// With `tls`, each connection is HTTPS: HTTP/2 when the client's ALPN asks for it, else
    /// HTTP/1.1 as on a plain socket.
    pub async fn serve(
        self: Arc<Self>,
        listener: Listener,
        tls: Option<Arc<crate::tls::Certificates>>,
        stop: CancellationToken,
    ) {
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
                    let proxy = self.clone();
                    let stop = stop.clone();
                    let tls = tls.clone();
                    tracker.spawn(async move {
                        match tls {
                            Some(certs) => proxy.secure(stream, peer, &certs, stop).await,
                            None => proxy.connection(stream, Some(peer), false, stop).await,
                        }
                        drop(permit);
                    });
                }
                Ok(Accepted::Unix(stream)) => {
                    let conn = self.clone().connection(stream, None, false, stop.clone());
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

    /// What a connection's requests say of their client, made once.
    fn peer(&self, addr: Option<SocketAddr>, https: bool) -> Peer {
        // An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d: compare and forward
        // it as the IPv4 address it is.
        let addr = addr.map(|p| SocketAddr::new(p.ip().to_canonical(), p.port()));
        Peer {
            ip: addr.and_then(|p| HeaderValue::try_from(p.ip().to_string()).ok()),
            trusted: match addr {
                Some(p) => self.trusted_proxies.iter().any(|n| n.contains(&p.ip())),
                None => true,
            },
            https,
        }
    }

    /// One HTTPS client connection over any byte stream, served exactly as `serve` serves an
    /// accepted socket with `tls` (handshake, then HTTP/2 or HTTP/1.1 by ALPN), but without
    /// the listener's connection permit and task tracker. For the fuzz targets (`tls`, `h2`)
    /// and the differential test, which drive baton's TLS front through an in-memory stream
    /// (`tokio::io::duplex`): no socket, no port, and a connection that ends with its input.
    /// Not for serving.
    #[doc(hidden)]
    pub async fn serve_tls_stream<S>(
        self: Arc<Self>,
        stream: S,
        addr: SocketAddr,
        certs: &crate::tls::Certificates,
        stop: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.secure(stream, addr, certs, stop).await;
    }

    /// One HTTP/2 client connection over any byte stream (prior knowledge: the client's
    /// preface comes first), served by the code an HTTPS connection that chose `h2` by ALPN
    /// runs after its handshake (peer marked `https`). As [`Proxy::serve_tls_stream`], for
    /// the fuzz targets and tests only: baton serves HTTP/2 over TLS alone.
    #[doc(hidden)]
    pub async fn serve_h2_stream<S>(
        self: Arc<Self>,
        stream: S,
        addr: SocketAddr,
        stop: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.http2(stream, addr, stop).await;
    }

    /// An HTTPS connection: the handshake (within `header_timeout`, as a head must be), then
    /// HTTP/2 or HTTP/1.1 as the client's ALPN chose.
    async fn secure<S>(
        self: Arc<Self>,
        stream: S,
        addr: SocketAddr,
        certs: &crate::tls::Certificates,
        stop: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = tokio::select! {
            h = tokio::time::timeout(self.header_timeout, certs.acceptor().accept(stream)) => h,
            _ = stop.cancelled() => return,
        };
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake with {addr} failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake with {addr} not done within header_timeout");
                return;
            }
        };
        let alpn = tls.get_ref().1.alpn_protocol();
        if alpn == Some(crate::tls::ACME_TLS_ALPN) {
            // A TLS-ALPN-01 validator: the handshake was the answer; it sends no request.
            let mut tls = tls;
            let _ = tokio::time::timeout(
                self.header_timeout,
                tokio::io::AsyncWriteExt::shutdown(&mut tls),
            )
            .await;
        } else if alpn == Some(b"h2") {
            self.http2(tls, addr, stop).await;
        } else {
            self.connection(tls, Some(addr), true, stop).await;
        }
    }

    /// An HTTP/2 connection (over TLS): every stream goes through hyper's path, under the
    /// same policy, limits, queue and retries as HTTP/1.1. HTTP/2's own bounds: streams at
    /// once, the header list, reset floods (CVE-2023-44487) and CONTINUATION floods (h2's
    /// own limits), and the send timeout on the connection. The header list h2 takes is
    /// twice `max_header_size`, as hyper's HTTP/1.1 read buffer is: the exact limit is the
    /// policy's, which answers 414 or 431 as it does on HTTP/1.1 (h2 alone would refuse a
    /// smaller head, since it counts 32 bytes more per field, and with a bare 431).
    async fn http2<S>(self: Arc<Self>, stream: S, addr: SocketAddr, stop: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer(Some(addr), true);
        let proxy = self.clone();
        let io = buffer::SendTimeout::new(stream, self.send_timeout);
        let svc = service_fn(move |req| proxy.clone().handle(req, peer.clone()));
        let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_STREAMS)
            .max_header_list_size(
                u32::try_from(self.max_header_size.saturating_mul(2)).unwrap_or(u32::MAX),
            )
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(256)
            .serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.cancelled() => {
                // GOAWAY: the streams in flight finish, no new one starts.
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        };
        if let Err(e) = result {
            tracing::debug!("HTTP/2 connection from {addr} ended: {e}");
        }
    }

    async fn connection<S>(
        self: Arc<Self>,
        stream: S,
        peer: Option<SocketAddr>,
        https: bool,
        stop: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static + sendfile::RawSocket,
    {
        let proxy = self.clone();
        let peer = self.peer(peer, https);
        // The common requests first, as bytes; hyper takes over at the first other one.
        let mut io = buffer::SendTimeout::new(stream, self.send_timeout);
        // A plain connection that is only ever redirected goes to hyper's path at once.
        let redirected = !https && self.redirect_to.get().is_some();
        let ended = match self.codecs {
            Codecs::NarrowThenHyper if !redirected => self.narrow(&mut io, &peer, &stop).await,
            _ => narrow::Ended::Hyper(Bytes::new()),
        };
        let (io, refusals) = match ended {
            narrow::Ended::Closed => return,
            narrow::Ended::Hyper(prefix) => {
                let refusals = refused::Refusals::new(self.access.get(), &prefix, &peer);
                (narrow::Rewound::new(prefix, io), refusals)
            }
        };
        let served = refused::Refusals::served(refusals.as_ref());
        let svc = service_fn(move |req| {
            served.mark();
            proxy.clone().handle(req, peer.clone())
        });
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
            if let Some(r) = &refusals {
                r.ended(&e);
            }
            tracing::debug!("client connection ended: {e}");
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = std::time::Instant::now();
        // Whether the client asked to close is the policy's to say, not hyper's own reading
        // (which skips a `Connection:` line that is not UTF-8, and lets a later line undo an
        // earlier `close`): the narrow path closes on the same answers. HTTP/2 has no
        // `Connection:` at all.
        let h2 = req.version() == http::Version::HTTP_2;
        let head = req.method() == Method::HEAD;
        let close = !h2 && policy::asks_close(req.headers());
        let mut id = [0u8; 32];
        let request_id = self.new_request_id(&mut id);
        let (parts, body) = req.into_parts();
        let entry = self.access.get().map(|log| {
            log.entry(&crate::access::Request::from_parts(
                &parts,
                peer.ip.as_ref().map(HeaderValue::as_bytes),
                peer.https,
                request_id.map(|generated| policy::request_id(&parts.headers).unwrap_or(generated)),
            ))
        });
        let req = Request::from_parts(parts, body);
        let mut resp = match self.forward(req, &peer, request_id).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
        if close && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if h2 {
            // Connection-specific headers are malformed in HTTP/2 (RFC 9113 8.2.2).
            resp.headers_mut().remove(header::CONNECTION);
            if head && !resp.body().is_end_stream() {
                // An answer to HEAD has no content (RFC 9110 9.3.2). hyper's HTTP/1.1 server
                // leaves out the body of baton's own answers (a 502, a 503, a 4xx); its
                // HTTP/2 server sends it, and an HTTP/2 client takes that for a malformed
                // answer and resets the stream (RFC 9113 8.1.1). The length stays, as
                // HTTP/1.1 gives it.
                if let Some(n) = resp.body().size_hint().exact()
                    && !resp.headers().contains_key(header::CONTENT_LENGTH)
                {
                    resp.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                *resp.body_mut() = Empty::new().map_err(|n| match n {}).boxed_unsync();
            }
        }
        if peer.https
            && let Some(hsts) = &self.hsts
        {
            resp.headers_mut()
                .append(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        self.metrics
            .request(resp.status().as_u16(), started.elapsed());
        if let (Some(log), Some(mut entry)) = (self.access.get(), entry) {
            entry.status = resp.status().as_u16();
            entry.upstream = resp.extensions().get::<crate::access::Upstream>().copied();
            let (parts, body) = resp.into_parts();
            let body = Logged {
                inner: body,
                entry: Some(entry),
                log: log.clone(),
                started,
            };
            return Ok(Response::from_parts(parts, body.boxed_unsync()));
        }
        Ok(resp)
    }

    #[allow(
        clippy::too_many_lines,
        reason = "hyper's request path in the order a request takes it (admit, the body's \
                  framing, exchange, upgrade or answer body): each step uses what the one before \
                  made"
    )]
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: &Peer,
        request_id: Option<&[u8]>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // The policy every way in asks: forwarded (how), or answered by baton (why).
        let adm = policy::admit(&request_head(&req), &self.policy).map_err(ProxyError::Own)?;
        if !peer.https
            && let Some(port) = self.redirect_to.get()
        {
            return Ok(redirect(&request_head(&req), *port));
        }
        if let Some(assets) = self.assets.get()
            && assets.claims(req.uri().path().as_bytes())
        {
            return Ok(asset(assets, req.method(), req.uri().path(), req.headers()).await);
        }
        let client_upgrade = adm.upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        // Set when a streamed request body fails on the client's side (a malformed chunk, a
        // stall): then the client, not the worker, is to blame.
        let client_fault = buffer::Fault::default();
        // The body's framing towards the worker: its exact length when known, else chunked.
        let (body, sent): (Option<ProxyBody>, policy::Sent) = if !adm.has_body() {
            let sent = match adm.body {
                policy::Body::Length(n) => policy::Sent::Length(n),
                _ => policy::Sent::None,
            };
            (None, sent)
        } else if self.request_buffering {
            // The whole body first: a client that trickles costs memory or a file, never a
            // worker. The worker gets the exact length, however the client framed it.
            let buffered = buffer::read_request_body(body, &self.limits)
                .await
                .map_err(ProxyError::Body)?;
            let n = buffered.len();
            (
                Some(buffer::BufferedBody::new(buffered).boxed_unsync()),
                policy::Sent::Length(n),
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
            let sent = n.map_or(policy::Sent::Chunked, policy::Sent::Length);
            (Some(streamed.boxed_unsync()), sent)
        };
        let mut head = Vec::with_capacity(512);
        let client = policy::Client {
            request_id,
            ..peer.client()
        };
        policy::worker_head(&parts_head(&parts), &adm, client, sent, &mut head);
        let mut req = exchange::Outgoing {
            bytes: &head,
            chunked: sent == policy::Sent::Chunked,
            body,
            retryable: adm.retryable(),
            head: adm.head,
            upgrade: adm.upgrade,
            fault: Some(client_fault),
        };
        let lease = self.lease(None).await?;
        let leased = std::time::Instant::now();
        let mut answer = BytesMut::new();
        let mut out = Vec::new();
        let exchange::Answered { lease, stream, fin } = self
            .exchange(lease, &mut req, &mut answer, &mut out)
            .await?;
        let (mut rparts, switched) = response_head(&out, fin.status).ok_or_else(|| {
            ProxyError::bad_gateway(
                &lease,
                &UpstreamError::Answer("its answer head cannot be forwarded"),
            )
        })?;
        // For the access log: who answered (the worker of the last try), how soon.
        rparts.extensions.insert(crate::access::Upstream {
            worker: lease.worker.0,
            generation: lease.generation.0,
            time: leased.elapsed(),
        });

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
        let body = RawBody::new(stream, answer, fin.body, lease.conns.clone(), !fin.close)
            .stalled_after(lease.request_timeout);
        if self.response_buffering {
            // The rest of the worker's answer is read as fast as it comes; its lease goes back
            // when it ends, whatever the client's pace.
            let body = buffer::spool(body, self.limits.clone(), move |_| drop(lease));
            return Ok(Response::from_parts(
                rparts,
                FlushBeforeCut::new(body).boxed_unsync(),
            ));
        }
        Ok(Response::from_parts(
            rparts,
            FlushBeforeCut::new(LeasedBody {
                inner: body,
                _lease: lease,
            })
            .boxed_unsync(),
        ))
    }

    /// A worker for one request, waiting in the queue if need be. When this is dropped before
    /// the pool answers, the client has closed its connection while its request waited (hyper
    /// notices that, as the narrow path does): the request leaves the queue, no worker sees
    /// it, and it is counted as abandoned.
    async fn lease(&self, exclude: Option<WorkerId>) -> Result<Leased, ProxyError> {
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
        if let Err(Rejected::QueueTimeout(_)) = lease {
            self.metrics.limit(crate::metrics::Limit::MaxQueueTime);
        }
        let lease = lease.map_err(ProxyError::NoWorker)?;
        // The worker's connections live with it in the pool, made at its first lease.
        let conns = lease
            .attached(|| {
                Conns::new(
                    lease.worker,
                    lease.generation,
                    lease.outcomes.clone(),
                    self.pool.concurrency(),
                    self.holds.clone(),
                )
            })
            .ok_or(ProxyError::NoWorker(Rejected::ShuttingDown))?;
        Ok(Leased { lease, conns })
    }
}

/// A lease with the worker's connections (see [`crate::upstream::Conns`]).
pub(crate) struct Leased {
    lease: Lease,
    /// The worker's connections: a request takes one, and gives it back when reusable.
    pub conns: Arc<Conns>,
}

impl std::ops::Deref for Leased {
    type Target = Lease;

    fn deref(&self) -> &Lease {
        &self.lease
    }
}

/// A request head as hyper parsed it, for the policy.
fn request_head(req: &Request<Incoming>) -> policy::RequestHead<'_, HeaderMap> {
    let mut head = head_of(req.method(), req.uri(), req.version(), req.headers());
    if req.version() == http::Version::HTTP_2 {
        head.body_follows = Some(!req.body().is_end_stream());
    }
    head
}

fn parts_head(parts: &http::request::Parts) -> policy::RequestHead<'_, HeaderMap> {
    head_of(&parts.method, &parts.uri, parts.version, &parts.headers)
}

fn head_of<'a>(
    method: &'a Method,
    uri: &'a http::Uri,
    version: http::Version,
    headers: &'a HeaderMap,
) -> policy::RequestHead<'a, HeaderMap> {
    let target = match uri.path_and_query() {
        Some(p) if p.as_str().starts_with('/') => policy::Target::Path(p.as_str()),
        None if uri.scheme().is_some() => policy::Target::Path("/"),
        Some(p) if p.as_str() == "*" => policy::Target::Asterisk,
        _ => policy::Target::Invalid,
    };
    policy::RequestHead {
        method: method.as_str(),
        target,
        // The authority (HTTP/2's `:authority`, an absolute-form target's) is counted by the
        // policy, as the Host field it stands for.
        target_len: uri.path_and_query().map_or(1, |p| p.as_str().len()),
        http10: version == http::Version::HTTP_10,
        body_follows: None,
        authority: uri.authority().map(|a| a.as_str()),
        fields: headers,
    }
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

/// Why a request got no answer from a worker; each becomes a plain-text error response.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("baton: {0}")]
    NoWorker(Rejected),
    /// Answered by baton itself (see [`policy::OwnAnswer`]).
    #[error("{0}")]
    Own(policy::OwnAnswer),
    #[error("baton: worker {worker} failed to answer: {cause}")]
    BadGateway { worker: WorkerId, cause: String },
    #[error("baton: worker {worker} did not answer within request_timeout ({})", humantime::format_duration(*.limit))]
    GatewayTimeout { worker: WorkerId, limit: Duration },
    #[error(
        "baton: worker {0} was stopped by a restart after drain_timeout while this request was in flight"
    )]
    Cut(WorkerId),
    #[error("baton: {0}")]
    Body(BodyFailure),
}

impl ProxyError {
    fn bad_gateway(lease: &crate::pool::Lease, e: &UpstreamError) -> ProxyError {
        let mut cause = e.to_string();
        let mut src = std::error::Error::source(e);
        // Each cause once: an error whose text already says its source's is not followed by
        // it again ("Connection reset by peer: Connection reset by peer").
        while let Some(s) = src {
            let text = s.to_string();
            if !cause.contains(&text) {
                cause = format!("{cause}: {text}");
            }
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

    /// A worker that had the whole request for `limit` without beginning its answer: the
    /// visitor gets a 504, and the journal says which request it was (its request line).
    fn timed_out(lease: &crate::pool::Lease, request: &[u8], limit: Duration) -> ProxyError {
        let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(&line[..line.len().min(200)]);
        tracing::warn!(
            worker = lease.worker.0,
            generation = lease.generation.0,
            "worker {} (generation {}) did not answer \"{line}\" within request_timeout ({}): 504",
            lease.worker,
            lease.generation.0,
            humantime::format_duration(limit)
        );
        ProxyError::GatewayTimeout {
            worker: lease.worker,
            limit,
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let status = match &self {
            ProxyError::NoWorker(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Own(own) => {
                StatusCode::from_u16(own.status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ProxyError::BadGateway { .. } | ProxyError::Cut(_) => StatusCode::BAD_GATEWAY,
            ProxyError::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Body(BodyFailure::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Body(BodyFailure::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Body(BodyFailure::Malformed(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Body(BodyFailure::Io(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = error_response(status, &self.to_string());
        match self {
            ProxyError::NoWorker(Rejected::QueueFull(_) | Rejected::QueueTimeout(_)) => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::Own(own) => {
                if let Some(allow) = own.allow() {
                    r.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static(allow));
                }
                if own.closes() {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
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
    lease: Leased,
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

/// `[tls] redirect_http`: a `301` to the same host and target on HTTPS.
fn redirect(head: &policy::RequestHead<'_, HeaderMap>, port: u16) -> Response<ProxyBody> {
    // The request's authority wins over its Host, as for the worker.
    let host = head
        .authority
        .map(str::as_bytes)
        .or(head.fields.get(header::HOST).map(HeaderValue::as_bytes))
        .unwrap_or_default();
    let path = match head.target {
        policy::Target::Path(p) => p,
        _ => "/",
    };
    let mut location = Vec::with_capacity(host.len() + path.len() + 16);
    policy::https_location(host, path, port, &mut location);
    let mut r = error_response(
        StatusCode::MOVED_PERMANENTLY,
        "baton: this site is served over HTTPS",
    );
    if let Ok(v) = HeaderValue::from_bytes(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A static file's answer (`[static]`): the file's bytes, or why there are none.
async fn asset(
    assets: &crate::assets::Assets,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<ProxyBody> {
    let answer = match assets.answer(method, path, headers).await {
        Ok(a) => a,
        Err(refusal) => return refused(refusal),
    };
    let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    for (n, v) in answer.headers() {
        h.append(n, v);
    }
    if answer.status != 304 {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(answer.length));
    }
    *r.body_mut() = match answer.body {
        Some(crate::assets::Content::File(slice)) => file_body(slice),
        Some(crate::assets::Content::Memory(b)) => {
            Full::new(b).map_err(|n| match n {}).boxed_unsync()
        }
        None => Empty::new().map_err(|n| match n {}).boxed_unsync(),
    };
    r
}

/// Why a static request has no file: 400, 404, 405 or 503.
fn refused(refusal: crate::assets::Refusal) -> Response<ProxyBody> {
    use crate::assets::Refusal;
    match refusal {
        Refusal::BadPath => error_response(StatusCode::BAD_REQUEST, "bad path"),
        Refusal::NotFound => error_response(StatusCode::NOT_FOUND, "not found"),
        Refusal::Busy => error_response(StatusCode::SERVICE_UNAVAILABLE, "too many files open"),
        Refusal::Method => {
            let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
    }
}

/// A larger file's bytes when they cannot go by `sendfile` (HTTPS, HTTP/2, hyper's path):
/// read [`FILE_CHUNK`] at a time in the blocking pool as the client takes them (the
/// client's send timeout bounds a reader that takes none).
fn file_body(slice: crate::assets::Slice) -> ProxyBody {
    use futures_util::TryStreamExt;
    let start = slice.offset;
    let stream = futures_util::stream::try_unfold((slice, start), |(slice, at)| async move {
        if at >= slice.offset + slice.len {
            return Ok(None);
        }
        let chunk = slice.read(at, FILE_CHUNK).await?;
        let next = at + chunk.len() as u64;
        Ok(Some((Frame::data(chunk), (slice, next))))
    })
    .map_err(|e: std::io::Error| -> BodyError { Box::new(e) });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// How much of a file one trip to the blocking pool reads: large enough that the trips cost
/// little beside the copying, small enough that a connection holds little at once.
const FILE_CHUNK: usize = 256 * 1024;

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

/// What baton knows of a client connection, worked out once per connection.
#[derive(Clone, Debug)]
struct Peer {
    /// The client's IP as a header value; `None` on a Unix socket.
    ip: Option<HeaderValue>,
    /// A configured trusted proxy (`[listen] trusted_proxies`) or a local process on a Unix
    /// socket: its forwarding headers are kept and extended; anyone else's are replaced.
    trusted: bool,
    /// It came over TLS.
    https: bool,
}

impl Peer {
    fn client(&self) -> policy::Client<'_> {
        policy::Client {
            ip: self.ip.as_ref().map(HeaderValue::as_bytes),
            trusted: self.trusted,
            https: self.https,
            request_id: None,
        }
    }
}

/// An answer body that counts the bytes it gives, and hands the request's access log entry
/// over when it ends (or is dropped: a client that left mid-answer is logged too).
struct Logged<B> {
    inner: B,
    entry: Option<crate::access::Entry>,
    log: Arc<crate::access::AccessLog>,
    started: std::time::Instant,
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some(mut e) = self.entry.take() {
            e.duration = self.started.elapsed();
            self.log.log(&e);
        }
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let (Some(data), Some(e)) = (frame.data_ref(), self.entry.as_mut())
        {
            e.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Streams at once on one HTTP/2 connection (nginx's `http2_max_concurrent_streams`).
const H2_STREAMS: u32 = 128;

/// An answer body for hyper's server that lets out what it already gave before it fails (a
/// worker that died mid-answer): hyper writes a head together with the first data and, when
/// the body then fails, drops the connection without flushing them, where the narrow path
/// has sent each byte as it came. `Pending` once before the error makes hyper flush (its
/// dispatch loop flushes after a write that cannot go on), so the client gets the same cut
/// answer on both paths (tests/differential.rs).
struct FlushBeforeCut<B> {
    inner: B,
    failed: Option<BodyError>,
}

impl<B> FlushBeforeCut<B> {
    fn new(inner: B) -> FlushBeforeCut<B> {
        FlushBeforeCut {
            inner,
            failed: None,
        }
    }
}

impl<B> Body for FlushBeforeCut<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A worker's answer body streamed to the client as it comes (no response buffering): it
/// holds the worker's lease, which goes back when the body ends or is dropped.
struct LeasedBody {
    inner: RawBody,
    /// Held for its drop.
    _lease: Leased,
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
