//! The narrow path of a client connection: while its requests are the common kind (see
//! [`crate::h1`]), baton reads and writes their bytes itself, with plain streams to the
//! workers; at the first request it does not take, hyper serves the connection from that
//! request's first byte on. Same rules as hyper's path: a small body received whole before
//! the lease, one retry of a request that got no answer (if it may be sent again), pooled
//! worker connections for retryable requests only, the answer read from the worker at once
//! and spooled for a slow client, the head, body and send timeouts, and `Connection: close`
//! once baton stops.

use super::Leased;
use super::exchange::{Answered, Outgoing, date};
use super::{Peer, Proxy, ProxyError};
use crate::buffer::{self, BodyFailure};
use crate::h1::{self, Final, Framing};
use crate::policy;
use crate::upstream::{RawBody, Upstream};
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Body;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// How long an idle client connection may still bring a request once baton stops.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// The longest request body the narrow path takes (with request buffering, and within
/// `buffer_memory` and `max_body_size`); a longer one goes to hyper's path, which spools it to
/// a file. Most form posts and API calls fit.
const MAX_BODY: usize = 64 * 1024;

/// How a client connection's narrow path ended.
pub(super) enum Ended {
    /// The connection is done (closed by either side, or an error).
    Closed,
    /// A request the narrow path does not take: hyper serves the rest, starting with these
    /// bytes.
    Hyper(Bytes),
}

/// Buffers a connection keeps from one request to the next.
struct Scratch {
    /// What the client sent and baton has not served yet.
    input: BytesMut,
    /// The head for the worker.
    up: Vec<u8>,
    /// The head for the client.
    out: Vec<u8>,
    /// What the worker sent.
    answer: BytesMut,
    /// The access log's line of the request (when there is a log), begun when its head
    /// was read.
    entry: crate::access::Entry,
    /// A buffer grew past `KEEP` for this request.
    grown: bool,
}

/// A buffer larger than this is dropped between requests, so that an idle connection keeps
/// what a common request needs, not what its largest one did.
const KEEP: usize = 16 * 1024;

impl Scratch {
    /// Between two requests: give back what a large request or answer made the buffers grow
    /// to (the bytes of a next request already read are kept).
    fn shrink(&mut self) {
        self.entry.trim();
        // Capacities say little here: a `BytesMut` that was advanced past a large head or
        // body reports only what is left after it, while holding the whole allocation.
        if !std::mem::take(&mut self.grown) {
            return;
        }
        self.input = BytesMut::from(&self.input[..]);
        self.up = Vec::new();
        self.out = Vec::new();
        self.answer = BytesMut::new();
    }
}

impl Proxy {
    #[allow(
        clippy::too_many_lines,
        reason = "the narrow path's one loop over a keep-alive connection (read a head, answer a \
                  static file or lease a worker, exchange, relay): its scratch buffers and \
                  deadlines live across the loop, and this hot path reads in the order a request \
                  takes it"
    )]
    pub(super) async fn narrow<S>(&self, io: &mut S, peer: &Peer, stop: &CancellationToken) -> Ended
    where
        S: AsyncRead + AsyncWrite + Unpin + super::sendfile::RawSocket,
    {
        let mut s = Scratch {
            input: BytesMut::new(),
            up: Vec::new(),
            out: Vec::new(),
            answer: BytesMut::new(),
            entry: crate::access::Entry::default(),
            grown: false,
        };
        let base = peer.client();
        let hsts = self
            .hsts
            .as_ref()
            .filter(|_| peer.https)
            .map(HeaderValue::as_bytes);
        // Without request buffering a body streams to the worker: hyper's path does that.
        let max_body = if self.request_buffering {
            MAX_BODY
                .min(self.limits.memory)
                .min(usize::try_from(self.limits.max_body).unwrap_or(usize::MAX))
        } else {
            0
        };
        loop {
            // A head must be all there within header_timeout (an idle keep-alive connection
            // too), as with hyper.
            let deadline = tokio::time::Instant::now() + self.header_timeout;
            let mut id = [0u8; 32];
            let request_id = self.new_request_id(&mut id);
            let client = crate::policy::Client { request_id, ..base };
            let simple = loop {
                if !s.input.is_empty() {
                    match h1::request(&s.input, client, &self.policy, max_body, &mut s.up) {
                        h1::Request::Simple(r) => break r,
                        h1::Request::Other => return Ended::Hyper(s.input.freeze()),
                        h1::Request::Partial => {}
                    }
                }
                if s.input.capacity() - s.input.len() < 1024 {
                    s.input.reserve(4096);
                }
                let idle = s.input.is_empty();
                // Reading first: a request already in the socket when baton begins to stop is
                // served (its answer says `Connection: close`), not cut. An idle connection
                // gets STOP_GRACE for a request already on its way (a client that had its
                // last answer a moment before sends the next at once), then is closed.
                let read = tokio::select! {
                    biased;
                    r = io.read_buf(&mut s.input) => Some(r),
                    _ = tokio::time::sleep_until(deadline) => return Ended::Closed,
                    _ = stop.cancelled(), if idle => None,
                };
                let read = match read {
                    Some(r) => r,
                    None => match tokio::time::timeout(STOP_GRACE, io.read_buf(&mut s.input)).await
                    {
                        Ok(r) => r,
                        Err(_) => return Ended::Closed,
                    },
                };
                match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => {}
                }
            };
            // While the head's bytes are in the cache.
            self.begin_entry(
                &s.input[..simple.len],
                &simple,
                peer,
                request_id,
                &mut s.entry,
            );
            let target = s.input[..simple.len]
                .split(|b| *b == b' ')
                .nth(1)
                .unwrap_or_default();
            if let Some(assets) = self.asset_for(target) {
                // A static file: answered here, from the same `assets` decision as on
                // hyper's path. A body (a GET with one) is hyper's to read.
                if simple.body > 0 {
                    return Ended::Hyper(s.input.freeze());
                }
                let started = Instant::now();
                let (method, path, fields) = asset_request(&s.input[..simple.len]);
                let answer = assets.answer(&method, &path, &fields).await;
                s.input.advance(simple.len);
                let close = simple.close || stop.is_cancelled();
                let mut sent = 0;
                let how = Head {
                    head: simple.head,
                    close,
                    hsts,
                };
                let (status, ok) = match answer {
                    Ok(a) => {
                        let ok = self.write_asset(io, &a, how, &mut s.out, &mut sent).await;
                        (a.status, ok)
                    }
                    Err(refusal) => {
                        let resp = super::refused(refusal);
                        let status = resp.status().as_u16();
                        (
                            status,
                            write_answer(io, resp, how, &mut s.out, &mut sent).await,
                        )
                    }
                };
                let took = started.elapsed();
                self.answered(&mut s.entry, status, sent, took, None);
                if !ok || close {
                    let _ = io.shutdown().await;
                    return Ended::Closed;
                }
                s.shrink();
                continue;
            }
            let started = Instant::now();
            s.input.advance(simple.len);
            let mut upstream = None;
            let mut sent = 0u64;
            // The whole request, body included, is here before a worker is leased (request
            // buffering), and the body follows the head in one write to the worker.
            let answered = match self.receive(io, simple.body, &mut s.input).await {
                Err(None) => return Ended::Closed,
                Err(Some(e)) => Err(e),
                Ok(()) => {
                    s.grown |= simple.len + simple.body > KEEP;
                    s.up.extend_from_slice(&s.input[..simple.body]);
                    s.input.advance(simple.body);
                    match self.lease_watching(io, &mut s.input).await {
                        Ok(Some(lease)) => {
                            let Scratch {
                                up,
                                answer,
                                out,
                                input,
                                ..
                            } = &mut s;
                            let mut req = Outgoing {
                                bytes: up,
                                body: None,
                                chunked: false,
                                retryable: simple.retryable,
                                head: simple.head,
                                upgrade: false,
                                fault: None,
                            };
                            let (leased, worker, generation) =
                                (Instant::now(), lease.worker.0, lease.generation.0);
                            let exchange = self.exchange(lease, &mut req, answer, out);
                            let Some(answered) = self.watching(io, input, exchange).await else {
                                // Nobody would read the answer: the worker's stream is closed
                                // and its slot given back now. No answer, so no log line: as
                                // on hyper's path.
                                tracing::debug!(
                                    "a client closed its connection while a worker had its request"
                                );
                                return Ended::Closed;
                            };
                            if answered.is_ok() {
                                upstream = Some(crate::access::Upstream {
                                    worker,
                                    generation,
                                    time: leased.elapsed(),
                                });
                            }
                            answered
                        }
                        Ok(None) => {
                            tracing::debug!(
                                "a client closed its connection while its request waited for a worker"
                            );
                            return Ended::Closed;
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            let (status, keep) = match answered {
                Ok(Answered { lease, stream, fin }) => {
                    s.grown |= fin.len + s.answer.len() > KEEP || s.out.len() > KEEP;
                    let status = fin.status;
                    // Decided as the answer leaves, not when the request came: baton may have
                    // begun to stop while the worker answered, and a client told nothing would
                    // send its next request on a connection about to close.
                    let close = simple.close || stop.is_cancelled();
                    if close {
                        add_header(&mut s.out, b"connection", b"close");
                    }
                    if let Some(hsts) = hsts {
                        add_header(&mut s.out, b"strict-transport-security", hsts);
                    }
                    (
                        status,
                        self.relay(io, lease, stream, fin, &mut s, &mut sent).await && !close,
                    )
                }
                Err(e) => {
                    let resp = e.into_response();
                    let status = resp.status().as_u16();
                    if !simple.head {
                        sent = resp.body().size_hint().exact().unwrap_or(0);
                    }
                    let close = simple.close
                        || stop.is_cancelled()
                        || resp.headers().contains_key(http::header::CONNECTION);
                    (
                        status,
                        write_error(
                            io,
                            resp,
                            Head {
                                head: simple.head,
                                close,
                                hsts,
                            },
                            &mut s.out,
                        )
                        .await
                            && !close,
                    )
                }
            };
            let took = started.elapsed();
            self.answered(&mut s.entry, status, sent, took, upstream);
            if !keep {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
            s.shrink();
        }
    }

    /// Begin the request's access log entry (when there is a log) from its `head`, just
    /// parsed.
    fn begin_entry(
        &self,
        head: &[u8],
        req: &h1::Simple,
        peer: &Peer,
        request_id: Option<&[u8]>,
        entry: &mut crate::access::Entry,
    ) {
        if let Some(log) = self.access_log() {
            let client = peer.ip.as_ref().map(HeaderValue::as_bytes);
            let r =
                crate::access::Request::from_head(head, &req.spans, client, peer.https, request_id);
            log.begin(entry, &r);
        }
    }

    /// A request answered (by a worker, a static file or baton itself): counted in the
    /// metrics, and its begun entry finished and logged when there is a log.
    fn answered(
        &self,
        entry: &mut crate::access::Entry,
        status: u16,
        sent: u64,
        took: std::time::Duration,
        upstream: Option<crate::access::Upstream>,
    ) {
        self.metrics.request(status, took);
        if let Some(log) = self.access_log() {
            entry.status = status;
            entry.bytes = sent;
            entry.duration = took;
            entry.upstream = upstream;
            log.log(entry);
        }
    }

    /// Read the rest of the request's body (`need` bytes at the start of `input`) into
    /// `input`, each read within `client_body_timeout` (408 beyond, as on hyper's path).
    /// `Err(None)`: the client closed its connection (or reset it) before its body was all
    /// there.
    async fn receive<S>(
        &self,
        io: &mut S,
        need: usize,
        input: &mut BytesMut,
    ) -> Result<(), Option<ProxyError>>
    where
        S: AsyncRead + Unpin,
    {
        if input.len() < need {
            input.reserve(need - input.len());
        }
        while input.len() < need {
            let timeout = self.limits.body_timeout;
            match tokio::time::timeout(timeout, io.read_buf(input)).await {
                Err(_) => return Err(Some(ProxyError::Body(BodyFailure::Timeout(timeout)))),
                Ok(Ok(0) | Err(_)) => return Err(None),
                Ok(Ok(_)) => {}
            }
        }
        Ok(())
    }

    /// A worker for a request, or `None` when the client closed its connection (or reset it)
    /// while the request waited in the queue: nobody would read the answer, and a
    /// single-threaded worker would spend its time on it while live clients wait. As nginx
    /// does, a client that shuts down only its sending side counts as gone. Bytes the client
    /// pipelines meanwhile are kept for its next request, up to `max_header_size`; beyond,
    /// the connection is no longer watched until a worker is free.
    async fn lease_watching<S>(
        &self,
        io: &mut S,
        input: &mut BytesMut,
    ) -> Result<Option<Leased>, ProxyError>
    where
        S: AsyncRead + Unpin,
    {
        // The pool first: when a worker is free, the client is not even looked at.
        self.watching(io, input, self.lease(None)).await.transpose()
    }

    /// `work` (a lease, a worker's exchange), or `None` when the client closed its connection
    /// (or reset it) first, `work` polled first: dropping `work` closes the worker's stream and gives its lease back at once,
    /// so a visitor who gave up on a hanging page does not hold a worker for ever. Bytes the
    /// client pipelines meanwhile are kept for its next request, up to `max_header_size`.
    async fn watching<S, T>(
        &self,
        io: &mut S,
        input: &mut BytesMut,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T>
    where
        S: AsyncRead + Unpin,
    {
        tokio::pin!(work);
        loop {
            let watch = input.len() < self.max_header_size;
            if watch && input.capacity() - input.len() < 1024 {
                input.reserve(4096);
            }
            tokio::select! {
                biased;
                done = &mut work => return Some(done),
                read = io.read_buf(input), if watch => match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
            }
        }
    }

    /// Give the answer to the client. The worker is free as soon as its answer is all read:
    /// at once when it came with its head, else when the spool has it. False when the
    /// connection cannot go on.
    async fn relay<S>(
        &self,
        io: &mut S,
        lease: Leased,
        stream: Upstream,
        fin: Final,
        s: &mut Scratch,
        sent: &mut u64,
    ) -> bool
    where
        S: AsyncWrite + Unpin,
    {
        let whole = match fin.body {
            Framing::None => Some(0),
            Framing::Length(n) if n <= s.answer.len() as u64 => Some(n as usize),
            _ => None,
        };
        if let Some(n) = whole {
            // The common case: the whole answer is here. The worker is free now, and the
            // head and body go to the client in one write.
            lease.conns.finish(stream, !fin.close, s.answer.len() > n);
            drop(lease);
            let ok = write_two(io, &s.out, &s.answer[..n]).await.is_ok();
            if ok {
                *sent = n as u64;
            }
            s.answer.clear();
            return ok;
        }
        // The rest of the worker's buffer is left to the body: a new one for the next answer.
        let body = RawBody::new(
            stream,
            std::mem::take(&mut s.answer),
            fin.body,
            lease.conns.clone(),
            !fin.close,
        )
        .stalled_after(lease.request_timeout);
        let chunked = !matches!(fin.body, Framing::Length(_));
        if io.write_all(&s.out).await.is_err() {
            return false;
        }
        if self.response_buffering {
            let spooled = buffer::spool(body, self.limits.clone(), move |_| drop(lease));
            write_body(io, spooled, chunked, sent).await
        } else {
            let ok = write_body(io, body, chunked, sent).await;
            drop(lease);
            ok
        }
    }
}

/// Add a header line to a whole head (before its closing empty line).
fn add_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.truncate(head.len().saturating_sub(2));
    policy::header(head, name, value);
    head.extend_from_slice(b"\r\n");
}

/// Write two buffers, in one `writev` when the socket takes them.
async fn write_two<S: AsyncWrite + Unpin>(io: &mut S, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    if b.is_empty() {
        return io.write_all(a).await;
    }
    let n = io
        .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
        .await?;
    if n < a.len() {
        io.write_all(&a[n..]).await?;
        io.write_all(b).await
    } else {
        io.write_all(&b[n - a.len()..]).await
    }
}

/// Copy a body to the client, chunked or as it is (its length is in the head).
async fn write_body<S, B>(io: &mut S, mut body: B, chunked: bool, sent: &mut u64) -> bool
where
    S: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers: not forwarded
            },
            Err(e) => {
                // The client gets a cut answer, as on hyper's path.
                tracing::debug!("answer body failed: {e}");
                return false;
            }
        };
        if data.is_empty() {
            continue;
        }
        let written = if chunked {
            let size = format!("{:x}\r\n", data.len());
            async {
                write_two(io, size.as_bytes(), &data).await?;
                io.write_all(b"\r\n").await
            }
            .await
        } else {
            io.write_all(&data).await
        };
        if written.is_err() {
            return false;
        }
        *sent += data.len() as u64;
    }
    if chunked && io.write_all(b"0\r\n\r\n").await.is_err() {
        return false;
    }
    io.flush().await.is_ok()
}

/// baton's own answer (an error), written as hyper would.
async fn write_error<S: AsyncWrite + Unpin>(
    io: &mut S,
    resp: http::Response<super::ProxyBody>,
    how: Head<'_>,
    out: &mut Vec<u8>,
) -> bool {
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    begin_head(out, parts.status);
    for (name, value) in &parts.headers {
        if name != http::header::CONNECTION {
            policy::header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    policy::header(out, b"content-length", body.len().to_string().as_bytes());
    end_head(out, how);
    let body = if how.head { &[][..] } else { &body[..] };
    write_two(io, out, body).await.is_ok()
}

/// How an answer's head ends: for a HEAD request, with `Connection: close`, with HSTS.
#[derive(Clone, Copy)]
struct Head<'a> {
    head: bool,
    close: bool,
    hsts: Option<&'a [u8]>,
}

/// Start an answer head of baton's own in `out`: its status line.
fn begin_head(out: &mut Vec<u8>, status: http::StatusCode) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// End an answer head of baton's own: `Date`, `Connection: close` when the connection ends
/// after it, HSTS on HTTPS, the blank line.
fn end_head(out: &mut Vec<u8>, how: Head<'_>) {
    policy::header(out, b"date", &date());
    if how.close {
        policy::header(out, b"connection", b"close");
    }
    if let Some(hsts) = how.hsts {
        policy::header(out, b"strict-transport-security", hsts);
    }
    out.extend_from_slice(b"\r\n");
}

impl Proxy {
    /// A static file's answer: the head from the fields made when the file was found, then
    /// the bytes in one write with it (a small file), by `sendfile` (a larger one on a plain
    /// socket), or read a chunk at a time (a larger one over TLS).
    async fn write_asset<S>(
        &self,
        io: &mut S,
        answer: &crate::assets::Answer,
        how: Head<'_>,
        out: &mut Vec<u8>,
        sent: &mut u64,
    ) -> bool
    where
        S: AsyncWrite + Unpin + super::sendfile::RawSocket,
    {
        use crate::assets::Content;
        begin_head(
            out,
            http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK),
        );
        answer.write_h1(out);
        if answer.status != 304 {
            policy::header(
                out,
                b"content-length",
                itoa::Buffer::new().format(answer.length).as_bytes(),
            );
        }
        end_head(out, how);
        let body = if how.head { None } else { answer.body.as_ref() };
        match body {
            None => io.write_all(out).await.is_ok() && io.flush().await.is_ok(),
            Some(Content::Memory(b)) => {
                let ok = write_two(io, out, b).await.is_ok();
                if ok {
                    *sent += b.len() as u64;
                }
                ok
            }
            Some(Content::File(slice)) => {
                if let Some(socket) = io.raw_socket() {
                    if let Err(e) = socket.send_head(out, self.send_timeout).await {
                        tracing::debug!("static answer cut: {e}");
                        return false;
                    }
                    let r = socket
                        .send_file(
                            slice.file(),
                            slice.offset,
                            slice.len,
                            self.send_timeout,
                            sent,
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::debug!("static answer cut: {e}");
                        return false;
                    }
                    return true;
                }
                // Under TLS: read a chunk at a time, as hyper's path sends the same body.
                io.write_all(out).await.is_ok()
                    && write_body(io, super::file_body(slice.clone()), false, sent).await
            }
        }
    }
}

/// What a static file's answer needs of a request head the narrow path took: its method,
/// path and the request headers that shape the answer (conditions, range, encodings).
fn asset_request(head: &[u8]) -> (http::Method, String, http::HeaderMap) {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let _ = req.parse(head);
    let method = req
        .method
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(http::Method::GET);
    // The path alone, as hyper's `uri().path()` gives it.
    let path = req
        .path
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    let mut headers = http::HeaderMap::new();
    for h in req.headers.iter() {
        let name = [
            http::header::IF_NONE_MATCH,
            http::header::IF_MODIFIED_SINCE,
            http::header::RANGE,
            http::header::IF_RANGE,
            http::header::ACCEPT_ENCODING,
        ]
        .into_iter()
        .find(|n| h.name.eq_ignore_ascii_case(n.as_str()));
        if let (Some(name), Ok(value)) = (name, http::HeaderValue::from_bytes(h.value)) {
            headers.append(name, value);
        }
    }
    (method, path, headers)
}

/// baton's own answer whose headers are complete (a static file's: its `Content-Length`
/// says the file's length, also to a HEAD), its body streamed as it comes.
async fn write_answer<S: AsyncWrite + Unpin>(
    io: &mut S,
    resp: http::Response<super::ProxyBody>,
    how: Head<'_>,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> bool {
    let (parts, body) = resp.into_parts();
    begin_head(out, parts.status);
    for (name, value) in &parts.headers {
        if name != http::header::CONNECTION {
            policy::header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if parts.status != http::StatusCode::NOT_MODIFIED
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        let n = body.size_hint().exact().unwrap_or(0);
        policy::header(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    end_head(out, how);
    if io.write_all(out).await.is_err() {
        return false;
    }
    if how.head {
        return io.flush().await.is_ok();
    }
    write_body(io, body, false, sent).await
}

/// A client stream that gives back `prefix` (what the narrow path read but did not serve)
/// before reading on: hyper then sees the connection from that request's first byte.
pub(super) struct Rewound<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewound<S> {
    pub(super) fn new(prefix: Bytes, inner: S) -> Rewound<S> {
        Rewound { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
