//! Connections to one worker: plain streams, written and read by `proxy` with `h1`, a few
//! kept idle per worker. They are owned by the worker's pool entry and reached through its
//! lease, so a request finds its connection without a shared lock or a hash, and a worker that
//! leaves the pool takes exactly its own connections with it.
//!
//! Reuse is the safety rule of the proxy (the decision itself is [`reusable`]): a stream goes
//! back only after a request that could be sent again anywhere (idempotent, no body) got a
//! whole answer on it that invites no extra bytes, read exactly to its end. Any other request
//! gets a fresh stream with `Connection: close`, so nothing a worker leaves unread (a body it
//! ignored) can be taken for a next request. A worker caught sending bytes beyond an answer is
//! no longer trusted with reused streams at all: one misbehaving answer then costs at most the
//! bytes already on their way, never a stream of other clients' answers.

use crate::spawn::{Generation, WorkerId};
use bytes::Bytes;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long a worker may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections older than this are not reused: app servers close idle keep-alive
/// connections after a few seconds (gunicorn 2 s, Node 5 s), and one closed under a request is
/// a retry. Idempotent body-less requests are retried anyway; this keeps that rare.
const IDLE_REUSE: Duration = Duration::from_secs(2);
/// Idle connections kept per worker (with `concurrency = 0`; see [`Conns::new`] otherwise).
const MAX_IDLE: usize = 64;
/// Bounds of the rest a stream gets between two requests (see [`Conns::answered`]).
const MIN_QUIET: Duration = Duration::from_micros(100);
const MAX_QUIET: Duration = Duration::from_millis(100);
/// Two answers on new streams this late, and later than 20 times the fastest the worker
/// answered lately, within [`HELD_AGAIN`], are taken for a worker that keeps a thread waiting
/// on each kept-alive connection: Puma waits 200 ms for the next request on the connection it answered, so with
/// fewer threads than connections a request on another one waits until a thread gives up.
/// Such a worker gets a connection per request from then on (see `Conns::holds`); a false
/// alarm (a slow page on a new stream) costs a connect per request, as nginx's default.
const HELD: Duration = Duration::from_millis(50);
/// A second late answer on a new stream within this of the first is what finds it out.
const HELD_AGAIN: Duration = Duration::from_secs(10);
/// Answers on reused streams learned from before one can be found out of turn.
const LEARN: u32 = 8;
/// The floor is the fastest of the last `WINDOW` to `2 * WINDOW` answers: a page type that
/// is much faster than the others (a redirect, a 304) keeps it low as long as it is served
/// one time in a hundred, and an app that became slower for good moves it within 256
/// answers.
const WINDOW: u32 = 128;

/// Why a worker could not be sent a request, or its answer not read.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the worker closed the connection before it answered")]
    Closed,
    #[error("the worker closed the connection before its answer ended")]
    EndedEarly,
    #[error("{0}")]
    Answer(&'static str),
    #[error(
        "it answered {took:?} after the request on a reused connection, sooner than it ever answers \
         ({floor:?} at least): a stray answer, not this one; the connection is closed"
    )]
    OutOfTurn { took: Duration, floor: Duration },
    #[error("no answer within request_timeout ({})", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("its answer stopped for request_timeout ({})", humantime::format_duration(*.0))]
    Stalled(Duration),
    #[error(transparent)]
    Chunked(#[from] crate::h1::ChunkError),
    #[error("the request body failed: {0}")]
    RequestBody(crate::buffer::BodyError),
}

/// Whether the stream that carried an answer may carry another request (RFC 9112 9.3, and
/// what a worker can get wrong). Only for a request that could be sent again anywhere
/// (`retryable`: idempotent, no body), never after an answer that invites bytes the framing
/// does not count (an answer to `HEAD`, an interim `1xx`, a `204` or `304`: a worker that
/// sends a body with them anyway would have it read as the next answer), and only when the
/// worker keeps the connection and delimits its body.
pub fn reusable(retryable: bool, head: bool, interim: bool, fin: &crate::h1::Final) -> bool {
    use crate::h1::Framing;
    retryable
        && !head
        && !interim
        && !fin.close
        && !matches!(fin.status, 204 | 304)
        && matches!(fin.body, Framing::Length(_) | Framing::Chunked)
}

/// The idle streams of one worker, and whether it is still trusted with reused ones.
pub struct Conns {
    worker: WorkerId,
    generation: Generation,
    idle: Idle<TcpStream>,
    /// Idle streams beyond which a new stream replaces the longest idle one (see
    /// [`Conns::stream`]).
    keep: usize,
    /// The app's server holds a thread on each kept-alive connection (see
    /// [`Conns::answered`]; found out by one worker, shared by all of the app's, as they run
    /// the same server): each request gets a connection of its own, closed after its answer,
    /// which frees the thread at once (what nginx does without `keepalive`).
    holds: std::sync::Arc<AtomicBool>,
    /// When the worker last answered late on a new stream (see [`Conns::late_again`]).
    late: Mutex<Option<std::time::Instant>>,
    /// Set once the worker sent bytes beyond an answer: one request per connection since.
    distrusted: AtomicBool,
    /// The worker's usual answer time, in µs (see [`Conns::answered`]).
    usual: AtomicU64,
    /// The fastest answer, in µs, of the current window of [`WINDOW`] answers and of the one
    /// before (which is which: the count in `seen`); `u64::MAX` for none yet.
    mins: [AtomicU64; 2],
    /// Answers learned from.
    seen: std::sync::atomic::AtomicU32,
    /// Answers on reused streams the floor was learned from, up to [`LEARN`].
    learned: std::sync::atomic::AtomicU32,
    /// What its answers came to, for the canary judge.
    pub outcomes: std::sync::Arc<crate::canary::Counter>,
}

/// Idle streams, the longest idle first.
struct Idle<T>(Mutex<std::collections::VecDeque<(T, Instant)>>);

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Idle(Mutex::new(std::collections::VecDeque::new()))
    }
}

impl<T> Idle<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(T, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The one that came back last among those that have rested for `quiet` (and for less
    /// than `IDLE_REUSE`): the streams in use stay as few as the rest allows, and the others
    /// age out.
    fn pop(&self, quiet: Duration) -> Option<T> {
        let mut idle = self.lock();
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= IDLE_REUSE)
        {
            idle.pop_front();
        }
        // Oldest first: the rested ones are a prefix.
        let rested =
            idle.partition_point(|(_, since)| now.saturating_duration_since(*since) >= quiet);
        let i = rested.checked_sub(1)?;
        idle.remove(i).map(|(conn, _)| conn)
    }

    /// Keep one, up to `MAX_IDLE`.
    fn push(&self, conn: T) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push_back((conn, Instant::now()));
        }
    }

    /// Close the longest idle ones until at most `keep` are left (see [`Conns::stream`]).
    fn trim(&self, keep: usize) {
        let mut idle = self.lock();
        while idle.len() > keep {
            idle.pop_front();
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

/// Whether anything waits to be read on a stream, asked of the kernel (a peek that does not
/// wait), not tokio's readiness, which can lag behind what has arrived. A close reads as
/// something too: such a stream is of no use either.
fn has_input(stream: &TcpStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    !matches!(
        recv(stream.as_raw_fd(), &mut [0u8; 1], flags),
        Err(nix::errno::Errno::EAGAIN)
    )
}

impl Conns {
    /// The connections of a worker that takes `concurrency` requests at once (0: any number).
    pub fn new(
        worker: WorkerId,
        generation: Generation,
        outcomes: std::sync::Arc<crate::canary::Counter>,
        concurrency: usize,
        holds: std::sync::Arc<AtomicBool>,
    ) -> Conns {
        Conns {
            worker,
            generation,
            idle: Idle::default(),
            keep: match concurrency {
                0 => MAX_IDLE,
                c => c.saturating_mul(2).min(MAX_IDLE),
            },
            holds,
            late: Mutex::new(None),
            distrusted: AtomicBool::new(false),
            usual: AtomicU64::new(0),
            mins: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            seen: std::sync::atomic::AtomicU32::new(0),
            learned: std::sync::atomic::AtomicU32::new(0),
            outcomes,
        }
    }

    /// A stream for one request: an idle one when `reuse` allows (a request that may be sent
    /// again) and the worker is trusted, else a new one. `true` with a reused one.
    pub async fn stream(
        &self,
        addr: SocketAddr,
        reuse: bool,
    ) -> Result<(TcpStream, bool), UpstreamError> {
        let quiet = self.quiet();
        let reuse = reuse && !self.holds.load(Ordering::Relaxed);
        while reuse && let Some(stream) = self.idle.pop(quiet) {
            // Taken only when there is nothing to read on it: not the worker's close of an
            // idle connection, and not bytes it sent beyond its last answer, which would be
            // read as the answer to this request, someone else's.
            if !has_input(&stream) {
                return Ok((stream, true));
            }
            if has_input_data(&stream) {
                self.distrust("sent bytes on an idle connection, beyond its last answer");
            }
        }
        // A threaded app server holds a thread on each kept-alive connection for a while
        // after its answer (Puma 5 and 6: up to 200 ms, waiting for the next request there),
        // so a worker must not be spread over more connections than it has threads: with
        // every thread waiting on an idle one, a request on a new connection waits until one
        // gives up. Streams rest about one and a half answers, so each request slot needs
        // three in turn; beyond two idle ones per slot, the longest idle is closed first
        // (which frees its thread at once) rather than kept beside a new one.
        self.idle.trim(self.keep);
        connect_stream(addr).await.map(|s| (s, false))
    }

    /// Give back a stream whose answer was read to its end, when [`reusable`] said so;
    /// `extra`: bytes came after the answer's end, a worker talking out of turn: the stream
    /// is closed and the worker distrusted.
    pub fn put(&self, stream: TcpStream, extra: bool) {
        // Bytes that come later are seen when the stream is taken again, after its rest.
        if extra {
            self.distrust("sent more than its answer");
            return;
        }
        if !self.distrusted.load(Ordering::Relaxed) && !self.holds.load(Ordering::Relaxed) {
            self.idle.push(stream);
        }
    }

    /// A worker answered a request `latency` after it was written, on a stream it had
    /// answered on before when `reused`. `Err` when that answer came out of turn: sooner than
    /// a quarter of the fastest the worker answered lately (of its last 128 to 256 answers), on
    /// a reused stream. A quarter, not a half: a fast app (100 µs) answers twice as fast as its
    /// recent best now and then when the machine's load drops, and a false alarm costs a GET
    /// sent twice. Such an answer was on its way
    /// before the request was (a stray answer, or the worker's answer to the stream's previous
    /// request when a stray one was taken for it): it is not the client's, the stream is not
    /// used again (the answer to this request, coming later, goes with it), and the request,
    /// which a reused stream only carries when it may be sent again, is sent again on a new
    /// stream. That is what stops a chain: without it, every answer on the stream would be
    /// the previous request's, each arriving as soon as its request left.
    ///
    /// Otherwise the time is learned from. A stream rests for one and a half times the
    /// worker's usual answer time before it is reused (no less than 100 µs): a worker that answered out of turn later than the floor
    /// allows is still working on the request whose answer was taken, and its real answer
    /// then arrives while the stream rests, where the check before reuse sees it, rather than
    /// as the answer to whoever is next. The usual time is a moving average (an eighth of each
    /// new answer), not the slowest: under load the slowest answers are the machine's, and a
    /// rest that long would leave no stream to reuse. The real answer comes sooner than the
    /// usual time after the stray one (which came later than a quarter of the floor), so one
    /// and a half covers it with room to spare, while a slot of a worker that answers back to
    /// back turns over three streams, no more (see [`Conns::stream`]).
    pub fn answered(&self, latency: Duration, reused: bool) -> Result<(), UpstreamError> {
        let us = (latency.as_micros().min(u128::from(u64::MAX)) as u64).max(1);
        let floor = self.floor();
        let learned = self.learned.load(Ordering::Relaxed);
        if reused && learned >= LEARN && us < floor / 4 {
            return Err(UpstreamError::OutOfTurn {
                took: latency,
                floor: Duration::from_micros(floor),
            });
        }
        if !reused
            && floor != u64::MAX
            && latency >= HELD
            && us > floor.saturating_mul(20)
            && self.late_again()
            && !self.holds.swap(true, Ordering::Relaxed)
        {
            self.idle.clear();
            tracing::info!(
                worker = self.worker.0,
                generation = self.generation.0,
                "worker {} (generation {}) answered on a new connection {} ms late, as an app \
                 server that keeps a thread waiting on each kept-alive connection does (Puma); \
                 from now on each request to the app's workers gets a connection of its own, \
                 closed after its answer",
                self.worker,
                self.generation.0,
                latency.as_millis()
            );
        }
        // Every answer the worker gave in turn counts, a new stream's too: a minimum can only
        // be lowered by an honest answer.
        let seen = self.seen.fetch_add(1, Ordering::Relaxed);
        let current = &self.mins[((seen / WINDOW) % 2) as usize];
        if seen.is_multiple_of(WINDOW) {
            current.store(us, Ordering::Relaxed);
        } else {
            current.fetch_min(us, Ordering::Relaxed);
        }
        if reused && learned < LEARN {
            self.learned.store(learned + 1, Ordering::Relaxed);
        }
        let old = self.usual.load(Ordering::Relaxed);
        let new = if old == 0 {
            us
        } else {
            (old - old / 8).saturating_add(us / 8)
        };
        self.usual.store(new, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a late answer on a new stream (see [`HELD`]) is the second within
    /// [`HELD_AGAIN`]: a worker that holds threads does it again at once, a machine that
    /// stalled for a moment (a burst of CPU, swapping) does not.
    fn late_again(&self) -> bool {
        let mut first = self.late.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match *first {
            Some(at) if now.duration_since(at) <= HELD_AGAIN => true,
            _ => {
                *first = Some(now);
                false
            }
        }
    }

    /// The fastest the worker answered lately, in µs (`u64::MAX`: not known).
    fn floor(&self) -> u64 {
        self.mins[0]
            .load(Ordering::Relaxed)
            .min(self.mins[1].load(Ordering::Relaxed))
    }

    /// How long a stream rests before it is reused (see [`Conns::answered`]).
    fn quiet(&self) -> Duration {
        Duration::from_micros(self.usual.load(Ordering::Relaxed).saturating_mul(3) / 2)
            .clamp(MIN_QUIET, MAX_QUIET)
    }

    /// The answer on `stream` was read to its end: keep the stream when `keep` ([`reusable`]),
    /// and distrust the worker when bytes came after the end (`extra`), whether or not the
    /// stream was to be kept.
    pub fn finish(&self, stream: Upstream, keep: bool, extra: bool) {
        if let (Upstream::Whole(stream), true) = (stream, keep) {
            self.put(stream, extra);
        } else if extra {
            self.distrust("sent more than its answer");
        }
    }

    /// From now on every request to this worker gets a connection of its own; logged once.
    pub fn distrust(&self, what: &str) {
        self.idle.clear();
        if !self.distrusted.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                worker = self.worker.0,
                generation = self.generation.0,
                "worker {} (generation {}) {what}; its connections are no longer reused",
                self.worker,
                self.generation.0
            );
        }
    }

    /// Close every idle connection (the worker is draining).
    pub fn close_idle(&self) {
        self.idle.clear();
    }
}

impl crate::pool::Attachment for Conns {
    fn close_idle(&self) {
        Conns::close_idle(self);
    }
}

/// Bytes (not a close) wait to be read on a stream.
fn has_input_data(stream: &TcpStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    matches!(recv(stream.as_raw_fd(), &mut [0u8; 1], flags), Ok(n) if n > 0)
}

/// The task that writes a request while its answer is read, and what it gives back.
pub type Writer = tokio_util::task::AbortOnDropHandle<(
    tokio::net::tcp::OwnedWriteHalf,
    Result<(), UpstreamError>,
)>;

/// A worker's stream once a request went out on it: whole, or (when the worker answered
/// before the request was all written) its reading half, while a task goes on writing the
/// request, which ends with the answer (the worker may be echoing the body as it comes).
pub enum Upstream {
    Whole(TcpStream),
    Split {
        read: tokio::net::tcp::OwnedReadHalf,
        /// The task still writing the request, aborted if the answer ends first.
        writer: Option<Writer>,
        /// The writing half once the request is all written: kept, since dropping it would
        /// end the request stream (a FIN) while the answer is still coming, and some servers
        /// then cut the answer.
        written: Option<tokio::net::tcp::OwnedWriteHalf>,
    },
}

impl Upstream {
    pub fn split(read: tokio::net::tcp::OwnedReadHalf, writer: Writer) -> Upstream {
        Upstream::Split {
            read,
            writer: Some(writer),
            written: None,
        }
    }
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Whole(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Split {
                read,
                writer,
                written,
            } => {
                if let Some(w) = writer.as_mut()
                    && let Poll::Ready(done) = Pin::new(w).poll(cx)
                {
                    *writer = None;
                    match done {
                        // The client's body failed: the worker's answer to a request it
                        // never got whole is cut, and the stream closed with it.
                        Ok((_, Err(UpstreamError::RequestBody(e)))) => {
                            return Poll::Ready(Err(std::io::Error::other(format!(
                                "the request body failed: {e}"
                            ))));
                        }
                        // Written, or the worker stopped reading (it answered early).
                        Ok((half, _)) => *written = Some(half),
                        Err(e) => return Poll::Ready(Err(std::io::Error::other(e))),
                    }
                }
                Pin::new(read).poll_read(cx, buf)
            }
        }
    }
}

/// A new stream to a worker.
pub async fn connect_stream(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout(addr)),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A worker's answer body read from its stream, by its framing. The stream goes back to the
/// worker's idle ones when the body ended exactly where its framing said and `keep` is set
/// ([`reusable`]); bytes beyond the end distrust the worker.
pub struct RawBody {
    stream: Option<Upstream>,
    buf: bytes::BytesMut,
    framing: RawFraming,
    conns: std::sync::Arc<Conns>,
    keep: bool,
    done: bool,
    /// `request_timeout`: the longest the worker may pause between two pieces of its answer
    /// (a stream, a long download, is bounded between bytes, not in total).
    stall: Option<Duration>,
    /// Armed when a read waits, reset by every piece that comes.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum RawFraming {
    Length(u64),
    Chunked(crate::h1::Chunked),
    UntilClose,
}

impl RawBody {
    /// `buf`: what was read after the head. `None` framing (no body) is not a body.
    pub fn new(
        stream: Upstream,
        buf: bytes::BytesMut,
        framing: crate::h1::Framing,
        conns: std::sync::Arc<Conns>,
        keep: bool,
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
            conns,
            keep,
            done: false,
            stall: None,
            timer: None,
        }
    }

    /// Fail the body when the worker sends nothing for `limit` (`None`: wait as long as it
    /// takes).
    pub fn stalled_after(mut self, limit: Option<Duration>) -> RawBody {
        self.stall = limit;
        self
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(stream) = self.stream.take() {
            self.conns.finish(stream, self.keep, !self.buf.is_empty());
        }
        // Not to keep a large buffer for as long as the client takes to read the answer.
        self.buf = bytes::BytesMut::new();
    }

    fn fail(
        &mut self,
        e: UpstreamError,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, UpstreamError>>> {
        // The worker cut its answer: the visitor got half a page.
        self.conns.outcomes.record(crate::canary::Outcome::Cut);
        self.done = true;
        self.stream = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl hyper::body::Body for RawBody {
    type Data = Bytes;
    type Error = UpstreamError;

    #[allow(
        clippy::too_many_lines,
        reason = "one poll loop over the answer's framing and the socket read that refills it: a \
                  body's state machine, read whole"
    )]
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
                Poll::Pending => {
                    let Some(limit) = this.stall else {
                        return Poll::Pending;
                    };
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return this.fail(UpstreamError::Stalled(limit));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return this.fail(e.into()),
                Poll::Ready(Ok(0)) => {
                    if matches!(this.framing, RawFraming::UntilClose) {
                        this.done = true;
                        this.stream = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(UpstreamError::EndedEarly);
                }
                Poll::Ready(Ok(_)) => {
                    if let (Some(timer), Some(limit)) = (this.timer.as_mut(), this.stall) {
                        timer.as_mut().reset(tokio::time::Instant::now() + limit);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::{Final, Framing};
    use tokio::io::AsyncWriteExt;

    fn fin(status: u16, body: Framing, close: bool) -> Final {
        Final {
            len: 0,
            status,
            body,
            close,
        }
    }

    #[test]
    fn a_stream_is_reused_only_after_an_answer_that_invites_no_extra_bytes() {
        let ok = fin(200, Framing::Length(5), false);
        assert!(reusable(true, false, false, &ok));
        assert!(reusable(
            true,
            false,
            false,
            &fin(200, Framing::Chunked, false)
        ));
        // A request that could not be sent again, a HEAD, an interim answer before it.
        assert!(!reusable(false, false, false, &ok));
        assert!(!reusable(
            true,
            true,
            false,
            &fin(200, Framing::None, false)
        ));
        assert!(!reusable(true, false, true, &ok));
        // No body by its status, the worker closes, or the body ends with the connection.
        assert!(!reusable(
            true,
            false,
            false,
            &fin(204, Framing::None, false)
        ));
        assert!(!reusable(
            true,
            false,
            false,
            &fin(304, Framing::None, false)
        ));
        assert!(!reusable(
            true,
            false,
            false,
            &fin(200, Framing::Length(5), true)
        ));
        assert!(!reusable(
            true,
            false,
            false,
            &fin(200, Framing::UntilClose, false)
        ));
    }

    /// A worker on loopback: the server side of each connection baton makes.
    async fn worker() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = tx.send(s);
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn a_stream_rests_before_reuse_and_bytes_on_it_distrust_the_worker() {
        let (addr, mut accepted) = worker().await;
        let conns = Conns::new(
            WorkerId(1),
            Generation(1),
            Default::default(),
            1,
            Default::default(),
        );
        let (a, reused) = conns.stream(addr, true).await.unwrap();
        assert!(!reused);
        let mut a_worker = accepted.recv().await.unwrap();
        conns.put(a, false);
        // Just back: it rests (1 ms at least), so the next request gets a new stream.
        let (b, reused) = conns.stream(addr, true).await.unwrap();
        assert!(!reused, "a stream was reused before it rested");
        let _b_worker = accepted.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Rested and quiet: reused.
        let (a, reused) = conns.stream(addr, true).await.unwrap();
        assert!(reused);
        conns.put(b, false);
        conns.put(a, false);
        // The worker writes on an idle stream (the one a request would take next): that
        // stream is not taken, and the worker is trusted with reused streams no more, even
        // those that stayed quiet.
        a_worker.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (_, reused) = conns.stream(addr, true).await.unwrap();
        assert!(!reused);
        assert!(conns.distrusted.load(Ordering::Relaxed));
        let (c, _) = conns.stream(addr, true).await.unwrap();
        conns.put(c, false);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (_, reused) = conns.stream(addr, true).await.unwrap();
        assert!(!reused, "a distrusted worker's stream was kept");
    }

    #[test]
    fn an_answer_sooner_than_the_worker_ever_answers_is_out_of_turn_on_a_reused_stream() {
        let conns = Conns::new(
            WorkerId(1),
            Generation(1),
            Default::default(),
            1,
            Default::default(),
        );
        // New streams answered slowly (a thread started per connection), and nothing is
        // judged until reused streams were learned from.
        conns.answered(Duration::from_millis(30), false).unwrap();
        conns.answered(Duration::from_micros(3), true).unwrap();
        let conns = Conns::new(
            WorkerId(1),
            Generation(1),
            Default::default(),
            1,
            Default::default(),
        );
        for _ in 0..LEARN + 50 {
            conns.answered(Duration::from_millis(1), true).unwrap();
        }
        // A stray answer that was waiting when the request left, or one that came a tenth of
        // the way into the worker's usual time: not this request's.
        for us in [3, 100, 249] {
            let e = conns.answered(Duration::from_micros(us), true).unwrap_err();
            assert!(matches!(e, UpstreamError::OutOfTurn { .. }), "{us}: {e}");
        }
        // Not learned from: the floor is where it was.
        assert!(conns.answered(Duration::from_micros(249), true).is_err());
        // Half the floor or more: an honest, fast answer, which lowers it.
        conns.answered(Duration::from_micros(600), true).unwrap();
        conns.answered(Duration::from_micros(310), true).unwrap();
        // A new stream cannot carry a stray answer: its time is always the worker's.
        conns.answered(Duration::from_micros(100), false).unwrap();
        conns.answered(Duration::from_micros(60), true).unwrap();
        // A cheap page among slow ones (one in a hundred) keeps the floor low: its next
        // answers are never taken for stray ones.
        for i in 0..1000 {
            let us = if i % 100 == 0 { 2_000 } else { 40_000 };
            conns.answered(Duration::from_micros(us), true).unwrap();
        }
        // An app that became slower for good moves the floor within two windows.
        for _ in 0..2 * WINDOW {
            conns.answered(Duration::from_secs(1), true).unwrap();
        }
        assert!(conns.answered(Duration::from_millis(100), true).is_err());
    }

    #[tokio::test]
    async fn a_worker_that_holds_a_thread_per_connection_gets_a_connection_per_request() {
        let conns = Conns::new(
            WorkerId(1),
            Generation(1),
            Default::default(),
            1,
            Default::default(),
        );
        for _ in 0..20 {
            conns.answered(Duration::from_micros(300), true).unwrap();
        }
        // A slow answer on a kept stream is a slow page, not a thread held elsewhere.
        conns.answered(Duration::from_millis(200), true).unwrap();
        assert!(!conns.holds.load(Ordering::Relaxed));
        for _ in 0..30 {
            conns.answered(Duration::from_micros(300), true).unwrap();
        }
        // A new stream's answer 40 ms late: a slow page still (below HELD).
        conns.answered(Duration::from_millis(40), false).unwrap();
        assert!(!conns.holds.load(Ordering::Relaxed));
        // Puma with every thread waiting on a kept connection: the new one waited ~200 ms;
        // once may be the machine, twice in a row is the worker.
        conns.answered(Duration::from_millis(190), false).unwrap();
        assert!(!conns.holds.load(Ordering::Relaxed));
        conns.answered(Duration::from_millis(170), false).unwrap();
        assert!(conns.holds.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_stream_rests_one_and_a_half_times_the_workers_usual_answer_time() {
        let conns = Conns::new(
            WorkerId(1),
            Generation(1),
            Default::default(),
            1,
            Default::default(),
        );
        assert_eq!(conns.quiet(), MIN_QUIET);
        conns.answered(Duration::from_millis(4), false).unwrap();
        assert_eq!(conns.quiet(), Duration::from_millis(6));
        // One slow answer moves it by an eighth, not to itself.
        conns.answered(Duration::from_millis(68), false).unwrap();
        assert_eq!(
            conns.quiet(),
            Duration::from_micros((4000 * 7 / 8 + 68_000 / 8) * 3 / 2)
        );
        for _ in 0..100 {
            conns.answered(Duration::from_micros(20), false).unwrap();
        }
        assert_eq!(conns.quiet(), MIN_QUIET, "at least 100 µs");
        for _ in 0..100 {
            conns.answered(Duration::from_secs(10), false).unwrap();
        }
        assert_eq!(conns.quiet(), MAX_QUIET);
    }
}
