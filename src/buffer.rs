//! Buffering between slow clients and workers: what nginx's `proxy_request_buffering` and
//! `proxy_buffering` do, so that a client that trickles an upload or never reads its answer
//! costs baton memory or a temporary file, never a worker.
//!
//! - A request body is received whole before a worker is leased ([`read_request_body`]): in
//!   memory up to `buffer_memory`, the rest in an unlinked temporary file, at most
//!   `max_body_size`, each read within `client_body_timeout`.
//! - A response body is read from the worker as fast as the worker writes it ([`spool`]) and
//!   handed to the client as fast as the client takes it; what the client has not taken yet
//!   waits in memory up to `buffer_memory`, then in a temporary file up to `max_response_buffer`
//!   (beyond that the worker waits). The worker is free when its response has ended, not when
//!   the client has read it. Nothing waits for a buffer to fill: every chunk is forwarded as
//!   soon as it arrives, so streams (server-sent events) keep their latency, and in the common
//!   case (a fast client) chunks pass through memory without a copy.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The error type of every body baton passes on.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The limits buffering works within (from `[listen]`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of one body kept in memory before the rest goes to a temporary file.
    pub memory: usize,
    /// Largest request body accepted (413 beyond).
    pub max_body: u64,
    /// Most of one response kept for a client that has not read it.
    pub max_response: u64,
    /// Longest wait between two reads of a request body (408 beyond).
    pub body_timeout: Duration,
    /// Where temporary files go (they are unlinked at once).
    pub directory: PathBuf,
}

impl Limits {
    /// The buffering limits `[listen]` sets.
    pub fn from_config(l: &crate::config::ListenConfig) -> Limits {
        Limits {
            memory: usize::try_from(l.buffer_memory.0).unwrap_or(usize::MAX),
            max_body: l.max_body_size.0,
            max_response: l.max_response_buffer.0,
            body_timeout: l.client_body_timeout.get(),
            directory: l
                .buffer_directory
                .clone()
                .unwrap_or_else(std::env::temp_dir),
        }
    }
}

/// Why a request body could not be received.
#[derive(Debug, thiserror::Error)]
pub enum BodyFailure {
    #[error("the request body is larger than {0} bytes (listen.max_body_size)")]
    TooLarge(u64),
    #[error("the request body stalled for {} (listen.client_body_timeout)", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("malformed request body: {0}")]
    Malformed(String),
    #[error("cannot buffer the request body: {0}")]
    Io(#[from] std::io::Error),
}

/// A request body received whole.
pub enum Buffered {
    Memory(VecDeque<Bytes>, u64),
    File(Arc<File>, u64),
}

impl Buffered {
    pub fn len(&self) -> u64 {
        match self {
            Buffered::Memory(_, n) | Buffered::File(_, n) => *n,
        }
    }
}

/// Receive a whole request body within the limits.
pub async fn read_request_body<B>(mut body: B, limits: &Limits) -> Result<Buffered, BodyFailure>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut chunks = VecDeque::new();
    let mut in_memory = 0usize;
    let mut total = 0u64;
    let mut file: Option<Arc<File>> = None;
    loop {
        let frame = match tokio::time::timeout(limits.body_timeout, body.frame()).await {
            Err(_) => return Err(BodyFailure::Timeout(limits.body_timeout)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyFailure::Malformed(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not forwarded
        };
        total += data.len() as u64;
        if total > limits.max_body {
            return Err(BodyFailure::TooLarge(limits.max_body));
        }
        match &file {
            None if in_memory + data.len() <= limits.memory => {
                in_memory += data.len();
                chunks.push_back(data);
            }
            _ => {
                let f = match &file {
                    Some(f) => f.clone(),
                    None => {
                        let f = Arc::new(temp_file(limits).await?);
                        // What was kept in memory goes first in the file.
                        let head: Vec<Bytes> = chunks.drain(..).collect();
                        write_at(&f, 0, head).await?;
                        file = Some(f.clone());
                        f
                    }
                };
                let at = total - data.len() as u64;
                write_at(&f, at, vec![data]).await?;
            }
        }
    }
    Ok(match file {
        Some(f) => Buffered::File(f, total),
        None => Buffered::Memory(chunks, total),
    })
}

async fn temp_file(limits: &Limits) -> std::io::Result<File> {
    let dir = limits.directory.clone();
    blocking(move || tempfile::tempfile_in(dir)).await
}

async fn write_at(file: &Arc<File>, at: u64, chunks: Vec<Bytes>) -> std::io::Result<()> {
    let file = file.clone();
    blocking(move || {
        let mut at = at;
        for c in chunks {
            file.write_all_at(&c, at)?;
            at += c.len() as u64;
        }
        Ok(())
    })
    .await
}

async fn read_at(file: &Arc<File>, at: u64, len: usize) -> std::io::Result<Bytes> {
    let file = file.clone();
    blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at)?;
        Ok(Bytes::from(buf))
    })
    .await
}

/// File I/O off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Chunks read back from a temporary file.
const FILE_CHUNK: usize = 64 << 10;

type ReadFuture = Pin<Box<dyn std::future::Future<Output = std::io::Result<Bytes>> + Send>>;

/// Read back the next chunk (at most `FILE_CHUNK`) of the `left` bytes from `at` on.
fn read_chunk(file: Arc<File>, at: u64, left: u64) -> ReadFuture {
    let n = left.min(FILE_CHUNK as u64) as usize;
    Box::pin(async move { read_at(&file, at, n).await })
}

/// A buffered request body sent on to a worker, with its exact length.
pub struct BufferedBody {
    source: Buffered,
    offset: u64,
    reading: Option<ReadFuture>,
}

impl BufferedBody {
    pub fn new(source: Buffered) -> BufferedBody {
        BufferedBody {
            source,
            offset: 0,
            reading: None,
        }
    }
}

impl Body for BufferedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match &mut this.source {
            Buffered::Memory(chunks, _) => {
                Poll::Ready(chunks.pop_front().map(|c| Ok(Frame::data(c))))
            }
            Buffered::File(file, len) => {
                if this.reading.is_none() {
                    if this.offset >= *len {
                        return Poll::Ready(None);
                    }
                    this.reading = Some(read_chunk(file.clone(), this.offset, *len - this.offset));
                }
                let Some(reading) = this.reading.as_mut() else {
                    return Poll::Ready(None);
                };
                match reading.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(r) => {
                        this.reading = None;
                        Poll::Ready(Some(match r {
                            Ok(b) => {
                                this.offset += b.len() as u64;
                                Ok(Frame::data(b))
                            }
                            Err(e) => Err(e.into()),
                        }))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Buffered::Memory(c, _) => c.is_empty(),
            Buffered::File(_, len) => self.offset >= *len,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let left = match &self.source {
            Buffered::Memory(c, _) => c.iter().map(|b| b.len() as u64).sum(),
            Buffered::File(_, len) => len - self.offset,
        };
        SizeHint::with_exact(left)
    }
}

/// What one response has buffered for its client.
#[derive(Default)]
struct SpoolState {
    /// The oldest data, in memory.
    memory: VecDeque<Bytes>,
    memory_bytes: usize,
    /// Newer data, in a temporary file: `file_read..file_written` is unread. While the file
    /// is in use every new chunk goes there, so the order is memory, then file.
    file: Option<Arc<File>>,
    file_read: u64,
    file_written: u64,
    file_in_use: bool,
    /// A chunk is on its way into the file (its bytes are not counted in `file_written` yet):
    /// the reader must not take the file as caught up meanwhile.
    file_writing: bool,
    /// The worker's body ended (with an error, if it failed).
    ended: Option<Result<(), String>>,
    /// The client side is gone.
    closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

struct Spool {
    state: Mutex<SpoolState>,
    limits: Limits,
}

impl Spool {
    fn lock(&self) -> std::sync::MutexGuard<'_, SpoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Read `body` from the worker as fast as it comes, buffering what the client has not taken;
/// `finished(complete)` runs as soon as the worker's body has ended (`complete`: read to its
/// end without error) — that is when the worker's lease goes back. Returns the client's body.
pub fn spool<B>(
    body: B,
    limits: Limits,
    finished: impl FnOnce(bool) + Send + 'static,
) -> SpooledBody
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let hint = body.size_hint();
    let spool = Arc::new(Spool {
        state: Mutex::new(SpoolState::default()),
        limits,
    });
    tokio::spawn(pump(body, spool.clone(), finished));
    SpooledBody {
        spool,
        reading: None,
        hint,
        done: false,
    }
}

async fn pump<B>(mut body: B, spool: Arc<Spool>, finished: impl FnOnce(bool))
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let result = loop {
        let frame = match body.frame().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(e.to_string()),
            Some(Ok(f)) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not forwarded
        };
        if data.is_empty() {
            continue;
        }
        match store(&spool, data).await {
            Ok(true) => {}
            Ok(false) => break Err("the client went away".into()),
            Err(e) => break Err(format!("cannot buffer the response: {e}")),
        }
    };
    let complete = result.is_ok();
    {
        let mut s = spool.lock();
        s.ended = Some(result);
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
    finished(complete);
}

/// Put one chunk where the client will find it; false when the client is gone.
async fn store(spool: &Arc<Spool>, data: Bytes) -> std::io::Result<bool> {
    let len = data.len();
    // Memory while there is room and the file is not in use.
    let file_at = {
        let mut s = spool.lock();
        if s.closed {
            return Ok(false);
        }
        // One chunk is always let through memory (its size is bounded by the HTTP parser's
        // read buffer): a fast client then never costs a file write.
        if !s.file_in_use && (s.memory_bytes == 0 || s.memory_bytes + len <= spool.limits.memory) {
            s.memory_bytes += len;
            s.memory.push_back(data);
            if let Some(w) = s.reader.take() {
                w.wake();
            }
            return Ok(true);
        }
        s.file_in_use = true;
        s.file_writing = true;
        s.file_written
    };
    // Beyond `max_response` unread bytes the worker waits for the client.
    std::future::poll_fn(|cx| {
        let mut s = spool.lock();
        let unread = s.file_written - s.file_read;
        if s.closed || unread + len as u64 <= spool.limits.max_response || unread == 0 {
            Poll::Ready(())
        } else {
            s.writer = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    let existing = spool.lock().file.clone();
    let file = match existing {
        Some(f) => f,
        None => {
            let f = Arc::new(temp_file(&spool.limits).await?);
            spool.lock().file = Some(f.clone());
            f
        }
    };
    let written = write_at(&file, file_at, vec![data]).await;
    let mut s = spool.lock();
    s.file_writing = false;
    written?;
    s.file_written = file_at + len as u64;
    if let Some(w) = s.reader.take() {
        w.wake();
    }
    Ok(!s.closed)
}

/// The client's side of a spooled response.
pub struct SpooledBody {
    spool: Arc<Spool>,
    reading: Option<ReadFuture>,
    hint: SizeHint,
    done: bool,
}

impl Drop for SpooledBody {
    fn drop(&mut self) {
        let mut s = self.spool.lock();
        s.closed = true;
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }
}

impl Body for SpooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(reading) = this.reading.as_mut() {
            return match reading.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => {
                    this.reading = None;
                    match r {
                        Ok(b) => {
                            let mut s = this.spool.lock();
                            s.file_read += b.len() as u64;
                            if s.file_read == s.file_written && !s.file_writing {
                                // Caught up: back to memory, and the file is reused from its start.
                                s.file_in_use = false;
                                s.file_read = 0;
                                s.file_written = 0;
                            }
                            if let Some(w) = s.writer.take() {
                                w.wake();
                            }
                            Poll::Ready(Some(Ok(Frame::data(b))))
                        }
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    }
                }
            };
        }
        let mut s = this.spool.lock();
        if let Some(b) = s.memory.pop_front() {
            s.memory_bytes -= b.len();
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if s.file_read < s.file_written
            && let Some(file) = s.file.clone()
        {
            let at = s.file_read;
            let left = s.file_written - at;
            drop(s);
            this.reading = Some(read_chunk(file, at, left));
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match &s.ended {
            // A file write may still be on its way: only the end counts once all is read.
            Some(Ok(())) if !s.file_in_use || s.file_read == s.file_written => {
                this.done = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                let e = e.clone();
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            _ => {
                s.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// What went wrong on the client's side of a streamed request body, if anything.
#[derive(Clone, Default)]
pub struct Fault(Arc<Mutex<Option<BodyFailure>>>);

impl Fault {
    fn set(&self, f: BodyFailure) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert(f);
    }

    pub fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    pub fn take(&self) -> BodyFailure {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| BodyFailure::Malformed("the request body failed".into()))
    }
}

/// A request body streamed to the worker (`request_buffering = false`): each read must come
/// within `timeout`, and a failure is recorded as the client's.
pub struct ClientBody<B> {
    inner: B,
    timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `max_body_size` holds for a streamed body too: bytes still allowed.
    allowed: u64,
    max_body: u64,
    fault: Fault,
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, timeout: Duration, max_body: u64, fault: Fault) -> ClientBody<B> {
        ClientBody {
            inner,
            timeout,
            stall: None,
            allowed: max_body,
            max_body,
            fault,
        }
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                let f = BodyFailure::Malformed(e.to_string());
                let msg = f.to_string();
                this.fault.set(f);
                Poll::Ready(Some(Err(msg.into())))
            }
            Poll::Ready(other) => {
                this.stall = None;
                if let Some(Ok(data)) = other.as_ref().map(|r| r.as_ref().map(Frame::data_ref))
                    && let Some(data) = data
                {
                    let len = data.len() as u64;
                    if len > this.allowed {
                        let f = BodyFailure::TooLarge(this.max_body);
                        let msg = f.to_string();
                        this.fault.set(f);
                        return Poll::Ready(Some(Err(msg.into())));
                    }
                    this.allowed -= len;
                }
                Poll::Ready(other.map(|r| r.map_err(|_| BodyError::from("unreachable"))))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    let f = BodyFailure::Timeout(timeout);
                    let msg = f.to_string();
                    this.fault.set(f);
                    return Poll::Ready(Some(Err(msg.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection whose writes must make progress within `limit` (nginx's
/// `send_timeout`): a client that takes no byte for that long is closed, whatever baton has
/// buffered for it.
pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client read nothing within listen.send_timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When bytes last moved through a tunnel, either way.
#[derive(Clone)]
pub struct Activity {
    base: tokio::time::Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: tokio::time::Instant::now(),
            last_ms: Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.base
                + Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
            let deadline = last + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records its activity.
pub struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Activity) -> Watched<T> {
        Watched { inner, activity }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn limits(memory: usize) -> Limits {
        Limits {
            memory,
            max_body: 1 << 20,
            max_response: 1 << 20,
            body_timeout: Duration::from_millis(200),
            directory: std::env::temp_dir(),
        }
    }

    fn chunks(n: usize, size: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
            .collect()
    }

    fn stream(
        c: Vec<Bytes>,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Unpin>
    {
        StreamBody::new(futures_util::stream::iter(
            c.into_iter().map(|b| Ok(Frame::data(b))),
        ))
    }

    async fn collect(b: impl Body<Data = Bytes, Error = BodyError>) -> Vec<u8> {
        b.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_request_body_spills_to_a_file_and_comes_back_whole() {
        let data = chunks(40, 1000);
        let want: Vec<u8> = data.concat();
        let small = read_request_body(stream(data.clone()), &limits(1 << 20))
            .await
            .unwrap();
        assert!(matches!(small, Buffered::Memory(..)));
        let big = read_request_body(stream(data), &limits(4096))
            .await
            .unwrap();
        assert!(matches!(big, Buffered::File(..)));
        assert_eq!(big.len(), want.len() as u64);
        let body = BufferedBody::new(big);
        assert_eq!(body.size_hint().exact(), Some(want.len() as u64));
        assert_eq!(collect(body).await, want);
        assert_eq!(collect(BufferedBody::new(small)).await, want);
    }

    #[tokio::test]
    async fn a_request_body_over_the_limit_is_refused() {
        let r = read_request_body(stream(chunks(2000, 1000)), &limits(4096)).await;
        assert!(matches!(r, Err(BodyFailure::TooLarge(_))), "{:?}", r.err());
    }

    /// A client that sends one byte, then nothing.
    struct Stall(bool);

    impl Body for Stall {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_request_body_times_out() {
        let r = read_request_body(Stall(false), &limits(4096)).await;
        assert!(matches!(r, Err(BodyFailure::Timeout(_))));
    }

    #[tokio::test]
    async fn a_response_is_read_whole_before_the_client_takes_it() {
        let data = chunks(100, 1000);
        let want: Vec<u8> = data.concat();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let body = spool(stream(data), limits(4096), move |complete| {
            let _ = tx.send(complete);
        });
        // The worker's side finishes although the client has read nothing yet.
        assert!(rx.await.unwrap());
        assert_eq!(collect(body).await, want);
    }

    /// A worker that writes fast and a client that reads in fits and starts: memory, file,
    /// back to memory, back-pressure at `max_response` — and every byte once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reader_gets_every_byte_once_in_order() {
        for round in 0..5u64 {
            let data: Vec<Bytes> = (0..2000u64)
                .map(|i| {
                    let len = 1 + ((i * 7919 + round * 31) % 3000) as usize;
                    Bytes::from(
                        (0..len)
                            .map(|j| (i as usize + j) as u8)
                            .collect::<Vec<u8>>(),
                    )
                })
                .collect();
            let want: Vec<u8> = data.concat();
            let mut l = limits(4096);
            l.max_response = 64 << 10;
            let mut body = spool(stream(data), l, |_| {});
            let mut got = Vec::with_capacity(want.len());
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                got.extend_from_slice(&frame.unwrap().into_data().unwrap());
                n += 1;
                if n.is_multiple_of(3 + round) {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            assert_eq!(got.len(), want.len(), "round {round}");
            assert!(got == want, "round {round}: bytes differ");
        }
    }

    #[tokio::test]
    async fn a_small_response_passes_through_memory() {
        let body = spool(
            Full::new(Bytes::from_static(b"hello")),
            limits(4096),
            |_| {},
        );
        assert_eq!(collect(body).await, b"hello");
    }
}
