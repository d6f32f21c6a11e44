//! Connections to one worker: a small pool of HTTP/1.1 keep-alive connections per worker,
//! owned by the worker's pool entry and reached through its lease, so a request finds its
//! connection without a shared lock or a hash, and a worker that leaves the pool takes exactly
//! its own connections with it.
//!
//! Reuse is the safety rule of the proxy: a connection goes back to the pool only after a
//! request that could be retried anywhere (idempotent, no body) got a whole response on it.
//! Any other request gets a fresh connection that the worker closes after its answer, so
//! nothing a worker leaves unread (a body it ignored) can be taken for a next request, and a
//! request that must not be sent twice never meets a connection the worker has just closed.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the proxy sends to a worker.
pub type RequestBody = UnsyncBoxBody<Bytes, crate::buffer::BodyError>;

/// How long a worker may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections older than this are not reused: app servers close idle keep-alive
/// connections after a few seconds (gunicorn 2 s, Node 5 s), and one closed under a request is
/// a retry. Idempotent body-less requests are retried anyway; this keeps that rare.
const IDLE_REUSE: Duration = Duration::from_secs(2);
/// Idle connections kept per worker.
const MAX_IDLE: usize = 64;

/// Why a worker could not be sent a request.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the worker closed the connection before it answered")]
    Closed,
    #[error("the worker closed the connection before its answer ended")]
    EndedEarly,
    #[error("{0}")]
    Answer(&'static str),
    #[error("{0}")]
    Chunked(#[from] crate::h1::ChunkError),
}

/// One connection to a worker, checked out for one request.
pub struct Conn {
    sender: SendRequest<RequestBody>,
}

impl Conn {
    pub async fn send(
        &mut self,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        Ok(self.sender.send_request(req).await?)
    }
}

/// The idle connections of one worker: hyper's, for the requests hyper serves, and plain
/// streams, for the narrow path (`h1`), which writes and reads the bytes itself.
#[derive(Default)]
pub struct Conns {
    idle: Idle<SendRequest<RequestBody>>,
    raw: Idle<TcpStream>,
}

/// Idle connections of one kind, the newest last.
struct Idle<T>(Mutex<Vec<(T, Instant)>>);

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Idle(Mutex::new(Vec::new()))
    }
}

impl<T> Idle<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(T, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest one that idled less than `IDLE_REUSE`.
    fn pop(&self) -> Option<T> {
        let mut idle = self.lock();
        let now = Instant::now();
        while let Some((conn, since)) = idle.pop() {
            if now.saturating_duration_since(since) < IDLE_REUSE {
                return Some(conn);
            }
            // The rest are older still (pushed earlier): drop them all.
            idle.clear();
        }
        None
    }

    /// Keep one, up to `MAX_IDLE`.
    fn push(&self, conn: T) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conns")
    }
}

impl Conns {
    /// A connection for one request: an idle one when `reuse` allows, else a new one.
    pub async fn get(&self, addr: SocketAddr, reuse: bool) -> Result<Conn, UpstreamError> {
        if reuse {
            while let Some(mut sender) = self.idle.pop() {
                if sender.is_closed() {
                    continue;
                }
                // Ready as soon as its task has seen the previous response end (at once, or
                // after a moment); an error means the worker closed it.
                if sender.ready().await.is_ok() {
                    return Ok(Conn { sender });
                }
            }
        }
        connect(addr).await.map(|sender| Conn { sender })
    }

    /// Give back a connection whose response was read to its end.
    pub fn put(&self, conn: Conn) {
        if !conn.sender.is_closed() {
            self.idle.push(conn.sender);
        }
    }

    /// Close every idle connection (the worker is draining).
    pub fn close_idle(&self) {
        self.idle.clear();
        self.raw.clear();
    }

    /// A stream for one narrow-path request (always one that may be sent again): an idle one,
    /// else a new one.
    pub async fn get_stream(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        while let Some(stream) = self.raw.pop() {
            // A stream is taken only when there is nothing to read on it: not the worker's
            // close of an idle connection, and not bytes it sent beyond its last answer,
            // which would be read as the answer to this request, someone else's. The kernel
            // is asked (a peek that does not wait), not tokio's readiness, which can lag
            // behind what has arrived.
            use nix::sys::socket::{MsgFlags, recv};
            use std::os::fd::AsRawFd;
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            match recv(stream.as_raw_fd(), &mut [0u8; 1], flags) {
                Err(nix::errno::Errno::EAGAIN) => return Ok(stream),
                Ok(n) if n > 0 => tracing::warn!(
                    "worker at {addr} sent more than its answer on an idle connection; \
                     the connection is closed"
                ),
                _ => {}
            }
        }
        connect_stream(addr).await
    }

    /// A new plain stream to the worker, for a request that must not meet a pooled
    /// connection the worker may be closing (one that would not be sent again).
    pub async fn new_stream(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        connect_stream(addr).await
    }

    /// Give back a stream whose answer was read exactly to its end.
    pub fn put_stream(&self, stream: TcpStream) {
        self.raw.push(stream);
    }
}

async fn connect_stream(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout(addr)),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<RequestBody>, UpstreamError> {
    let stream = connect_stream(addr).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(EarlyAnswer::new(stream)))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("worker connection ended: {e}");
        }
    });
    Ok(sender)
}

/// A worker's socket on which a failed write is not the end: a worker may answer before it has
/// read the whole request body (a 404 or 413 to a large upload) and close its end, and then
/// writing the rest of the body fails. The answer it sent is what the client must get, so the
/// rest of the body is discarded and reading goes on: either the answer is there, or the read
/// reports the closed connection.
struct EarlyAnswer {
    inner: TcpStream,
    write_failed: bool,
}

impl EarlyAnswer {
    fn new(inner: TcpStream) -> EarlyAnswer {
        EarlyAnswer {
            inner,
            write_failed: false,
        }
    }

    /// A write error that only says the worker closed its end becomes "written": `done`.
    fn absorb<T>(&mut self, r: Poll<std::io::Result<T>>, done: T) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                self.write_failed = true;
                Poll::Ready(Ok(done))
            }
            other => other,
        }
    }
}

impl AsyncRead for EarlyAnswer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for EarlyAnswer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.write_failed {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.absorb(r, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.write_failed {
            return Poll::Ready(Ok(len));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.absorb(r, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.write_failed {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.absorb(r, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// A worker's answer body read from a plain stream (the narrow path), by its framing. The
/// stream goes back to the worker's idle ones when the body ended exactly where its framing
/// said (and `home` is set: the worker keeps the connection open).
pub struct RawBody {
    stream: Option<TcpStream>,
    buf: bytes::BytesMut,
    framing: RawFraming,
    home: Option<std::sync::Arc<Conns>>,
    done: bool,
}

enum RawFraming {
    Length(u64),
    Chunked(crate::h1::Chunked),
    UntilClose,
}

impl RawBody {
    /// `buf`: what was read after the head. `None` framing (no body) is not a body.
    pub fn new(
        stream: TcpStream,
        buf: bytes::BytesMut,
        framing: crate::h1::Framing,
        home: Option<std::sync::Arc<Conns>>,
    ) -> RawBody {
        let framing = match framing {
            crate::h1::Framing::None => RawFraming::Length(0),
            crate::h1::Framing::Length(n) => RawFraming::Length(n),
            crate::h1::Framing::Chunked => RawFraming::Chunked(crate::h1::Chunked::default()),
            crate::h1::Framing::UntilClose => RawFraming::UntilClose,
        };
        RawBody {
            stream: Some(stream),
            buf,
            framing,
            home,
            done: false,
        }
    }

    fn finish(&mut self) {
        self.done = true;
        if let (Some(stream), Some(home)) = (self.stream.take(), self.home.take())
            && self.buf.is_empty()
        {
            home.put_stream(stream);
        }
    }

    fn fail(
        &mut self,
        e: UpstreamError,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, UpstreamError>>> {
        self.done = true;
        self.stream = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl hyper::body::Body for RawBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, UpstreamError>>> {
        use bytes::Buf;
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match &mut this.framing {
                RawFraming::Length(0) => {
                    this.finish();
                    continue;
                }
                RawFraming::Length(left) if !this.buf.is_empty() => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(this.buf.len());
                    let data = this.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                }
                RawFraming::Chunked(c) if !this.buf.is_empty() => {
                    let (used, data) = match c.decode(&this.buf) {
                        Ok(d) => d,
                        Err(e) => return this.fail(e.into()),
                    };
                    let data = match data {
                        Some(r) => {
                            this.buf.advance(r.start);
                            Some(this.buf.split_to(r.end - r.start).freeze())
                        }
                        None => {
                            this.buf.advance(used);
                            None
                        }
                    };
                    if c.is_done() {
                        this.finish();
                    }
                    match data {
                        Some(d) if !d.is_empty() => {
                            return Poll::Ready(Some(Ok(hyper::body::Frame::data(d))));
                        }
                        _ => continue,
                    }
                }
                RawFraming::UntilClose if !this.buf.is_empty() => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                }
                _ => {}
            }
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 4096 {
                this.buf.reserve(16 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e.into()),
                Poll::Ready(Ok(0)) => {
                    if matches!(this.framing, RawFraming::UntilClose) {
                        this.done = true;
                        this.stream = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(UpstreamError::EndedEarly);
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.framing {
            RawFraming::Length(n) => hyper::body::SizeHint::with_exact(n),
            _ => hyper::body::SizeHint::default(),
        }
    }
}
