//! One exchange with a worker, for both ways in (the narrow path and hyper's): lease → send →
//! at most one retry → the answer head, with the reuse decision made once
//! ([`crate::upstream::reusable`]) and carried in [`Final::close`].
//!
//! The request goes out as bytes on a plain stream and the answer head is read with
//! [`h1::answer`], so every rule about what a worker may answer (framing, interim answers,
//! hop-by-hop headers, a malformed or ambiguous head: a 502) exists once, whichever path the
//! client came by.

use super::Leased;
use super::{Proxy, ProxyBody, ProxyError};
use crate::buffer::Fault;
use crate::canary::Outcome;
use crate::h1::{self, Answer, Final};
use crate::upstream::{Upstream, UpstreamError};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A request as it goes to a worker.
pub(super) struct Outgoing<'a> {
    /// The head for the worker (and, on the narrow path, the whole body after it).
    pub bytes: &'a [u8],
    /// A body that follows `bytes` (hyper's path), written as it comes; `None` once sent.
    pub body: Option<ProxyBody>,
    /// `body` is written chunked (its length is not known).
    pub chunked: bool,
    /// Idempotent and without a body: it may go on a reused stream, and be sent again to
    /// another worker when the first gave no answer. Any other request goes on a new stream
    /// with `Connection: close`, and is sent again only if it never left baton.
    pub retryable: bool,
    /// A `HEAD`: the answer has no body, whatever its headers say.
    pub head: bool,
    /// The client asked to switch protocols: a `101` is the answer it wants.
    pub upgrade: bool,
    /// Set when a streamed body fails on the client's side: the client, not the worker, is
    /// to blame.
    pub fault: Option<Fault>,
}

/// The answer head of one exchange: the worker's stream, its head for the client in `out`,
/// and what was read beyond the head in `answer`.
pub(super) struct Answered {
    pub lease: Leased,
    pub stream: Upstream,
    pub fin: Final,
}

/// Why a request got no answer from a worker, and whether any of it reached the worker.
struct Failed {
    error: UpstreamError,
    sent: bool,
    /// It failed on a reused stream the worker had closed or reset meanwhile: a race of
    /// keep-alive, not something the release did (not counted by the canary judge).
    stale: bool,
}

impl From<UpstreamError> for Failed {
    fn from(error: UpstreamError) -> Failed {
        Failed {
            error,
            sent: true,
            stale: false,
        }
    }
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Failed {
        UpstreamError::from(e).into()
    }
}

impl Proxy {
    /// Send the request to `first`'s worker and read its answer head; one retry, on another
    /// worker when one is free (else on the same one, on a new stream), when there was no
    /// answer and the request is retryable or never left baton. The client's head is left in
    /// `out`, what was read after the worker's head in `answer`.
    pub(super) async fn exchange(
        &self,
        first: Leased,
        req: &mut Outgoing<'_>,
        answer: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<Answered, ProxyError> {
        let mut failed = None;
        let mut first = Some(first);
        loop {
            let lease = match first.take() {
                Some(lease) => lease,
                None => self.lease(failed).await?,
            };
            let result = ask(&lease, req, failed.is_some(), answer, out).await;
            // What the worker did with it, for the canary judge: a failure that baton (a cut
            // after drain_timeout) or the client (its body failed) caused is not the worker's.
            match &result {
                Ok((_, fin)) => lease.outcomes.record(Outcome::Answered(fin.status)),
                Err(f)
                    if f.stale
                        || lease.was_cut()
                        || req.fault.as_ref().is_some_and(Fault::is_set) => {}
                Err(_) => lease.outcomes.record(Outcome::NoAnswer),
            }
            match result {
                Ok((stream, fin)) => return Ok(Answered { lease, stream, fin }),
                // Cut by baton: a worker stopped after drain_timeout, or one whose pages hang
                // (its canary refused); a request that may be sent again goes to another
                // worker, as after any other failure.
                Err(_)
                    if lease.was_cut()
                        && !(lease.cut_as_hung() && req.retryable && failed.is_none()) =>
                {
                    return Err(ProxyError::Cut(lease.worker));
                }
                // The worker has the request and is still at it: sent again, it would wait
                // as long again, and a worker that hangs would get every retry.
                Err(Failed {
                    error: UpstreamError::Timeout(limit),
                    ..
                }) => {
                    self.metrics.limit(crate::metrics::Limit::RequestTimeout);
                    let e = ProxyError::timed_out(&lease, req.bytes, limit);
                    stuck(lease);
                    return Err(e);
                }
                Err(_) if req.fault.as_ref().is_some_and(Fault::is_set) => {
                    let fault = req.fault.take().map(|f| f.take());
                    if let Some(failure) = fault {
                        return Err(ProxyError::Body(failure));
                    }
                }
                Err(Failed { error: e, sent, .. })
                    if failed.is_none() && (req.retryable || !sent) =>
                {
                    tracing::warn!(
                        worker = lease.worker.0,
                        "request to worker {} failed ({e}); retrying",
                        lease.worker
                    );
                    failed = Some(lease.worker);
                }
                Err(Failed { error: e, .. }) => return Err(ProxyError::bad_gateway(&lease, &e)),
            }
        }
    }
}

/// One request on one worker stream (a reused one only for a retryable request, and not for
/// its retry): write it, read the answer's head (interim answers skipped), and decide whether
/// the stream may be reused (`Final::close` says it may not).
async fn ask(
    lease: &Leased,
    req: &mut Outgoing<'_>,
    retry: bool,
    answer: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<(Upstream, Final), Failed> {
    let (stream, reused) = lease
        .conns
        .stream(lease.addr, req.retryable && safe(req.bytes) && !retry)
        .await
        .map_err(|error| Failed {
            error,
            sent: false,
            stale: false,
        })?;
    send(lease, req, stream, reused, answer, out)
        .await
        .map_err(|mut f| {
            f.stale = reused
                && matches!(
                    f.error,
                    UpstreamError::Closed | UpstreamError::Io(_) | UpstreamError::OutOfTurn { .. }
                );
            f
        })
}

/// The rest of [`ask`], on the stream it took.
async fn send(
    lease: &Leased,
    req: &mut Outgoing<'_>,
    mut stream: tokio::net::TcpStream,
    reused: bool,
    answer: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<(Upstream, Final), Failed> {
    let asked = std::time::Instant::now();
    let limit = lease.request_timeout;
    let (stream, (mut fin, interim)) = if req.body.is_none() && req.bytes.len() <= AT_ONCE {
        // Fits the socket buffers: written at once, then the answer is read.
        // A worker may answer a body before it has read it all (a 413) and close its end: the
        // answer is what the client must get, so a failed write of a body is not the end.
        if let Err(e) = stream.write_all(req.bytes).await
            && req.retryable
        {
            return Err(e.into());
        }
        // The request is the worker's from here: its time runs.
        let read = read_answer(&mut stream, req.head, req.upgrade, answer, out);
        let answered = within(limit, read).await?;
        (Upstream::Whole(stream), answered)
    } else {
        // A larger request, or one whose body comes as the client sends it, is written by a
        // task while the answer is read: a worker that answers before it has read it all (a
        // 413) and then neither reads nor closes would otherwise hold the write, and the
        // answer, for ever; one that answers as the body comes (an echo, a stream) gets the
        // rest of it while its answer is relayed.
        let (mut rd, mut wr) = stream.into_split();
        let bytes = Bytes::copy_from_slice(req.bytes);
        let chunked = req.chunked;
        let mut body = req.body.take();
        // Aborted when dropped: a client that leaves (or a 504) must not leave a task blocked
        // on a worker that reads nothing, holding the body and the stream.
        let mut writer = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let written = async {
                write_within(&mut wr, &bytes, limit).await?;
                if let Some(body) = body.as_mut() {
                    write_body(&mut wr, body, chunked, limit).await?;
                }
                Ok::<(), UpstreamError>(())
            }
            .await;
            (wr, written)
        }));
        let mut written = None;
        // The worker's time runs once it has the whole request: a slow upload is the
        // client's (bounded by client_body_timeout), not the worker's.
        let deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(deadline);
        let answered = {
            let read = read_answer(&mut rd, req.head, req.upgrade, answer, out);
            tokio::pin!(read);
            loop {
                tokio::select! {
                    () = &mut deadline, if written.is_some() && limit.is_some() => {
                        let limit = limit.unwrap_or_default();
                        return Err(UpstreamError::Timeout(limit).into());
                    }
                    w = &mut writer, if written.is_none() => {
                        let (wr, result) = w.map_err(std::io::Error::other)?;
                        match result {
                            // The client's body failed: nothing the worker says counts.
                            Err(e @ UpstreamError::RequestBody(_)) => return Err(e.into()),
                            // The worker took none of what baton had for it in
                            // request_timeout, and has not answered either: its time is up.
                            Err(e @ UpstreamError::Timeout(_)) => return Err(e.into()),
                            Err(e) if req.retryable => return Err(e.into()),
                            _ => {}
                        }
                        written = Some(wr);
                        if let Some(limit) = limit {
                            deadline.as_mut().reset(tokio::time::Instant::now() + limit);
                        }
                    }
                    fin = &mut read => break fin?,
                }
            }
        };
        let (mut fin, interim) = answered;
        let stream = match written {
            Some(wr) => Upstream::Whole(rd.reunite(wr).map_err(std::io::Error::other)?),
            None => {
                // Answered before the request was all written: the stream ends with this
                // answer.
                fin.close = true;
                Upstream::split(rd, writer)
            }
        };
        (stream, (fin, interim))
    };
    let took = asked.elapsed();
    lease.conns.answered(took, reused)?;
    // For the judge: a fast 5xx counts as quickly as any answer.
    lease.outcomes.record_latency(took);
    fin.close |= !crate::upstream::reusable(req.retryable, req.head, interim, &fin);
    Ok((stream, fin))
}

/// Requests up to this long (without a body to stream) are written before the answer is
/// read; others while it is.
const AT_ONCE: usize = 16 * 1024;

/// A worker that left a request unanswered: at `max_request_time` from the request's start
/// it is marked stuck (the supervisor replaces it). Until then the lease is held, since the
/// worker is most likely still at the request (a single-threaded one takes no other).
fn stuck(lease: Leased) {
    let Some(limit) = lease.max_request_time else {
        return;
    };
    let left = limit.saturating_sub(lease.since.elapsed());
    if left.is_zero() {
        lease.stuck();
        return;
    }
    // Not tracked with the connections: baton's shutdown does not wait for it.
    tokio::spawn(async move {
        tokio::time::sleep(left).await;
        lease.stuck();
    });
}

/// The worker head `bytes` asks with a safe method (GET, HEAD, OPTIONS). Only those ride a
/// reused stream: an answer found out of turn there is not relayed and the request is sent
/// again, which must never run a PUT or a DELETE twice (they are idempotent, but their second
/// answer, a 404, would not be the first one's).
fn safe(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GET ") || bytes.starts_with(b"HEAD ") || bytes.starts_with(b"OPTIONS ")
}

/// `read` within `limit` (`request_timeout`; `None`: no limit).
async fn within<T>(
    limit: Option<Duration>,
    read: impl std::future::Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    match limit {
        None => read.await,
        Some(limit) => match tokio::time::timeout(limit, read).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(limit).into()),
        },
    }
}

/// Read a worker's answer head (interim answers skipped, and reported): the client's head is
/// left in `out`, the rest of what was read in `answer`.
async fn read_answer<R: AsyncRead + Unpin>(
    stream: &mut R,
    head: bool,
    upgrade: bool,
    answer: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<(Final, bool), Failed> {
    answer.clear();
    let date = date();
    let mut interim = false;
    loop {
        if answer.capacity() - answer.len() < 4096 {
            answer.reserve(8 * 1024);
        }
        if stream.read_buf(answer).await? == 0 {
            return Err(UpstreamError::Closed.into());
        }
        loop {
            if upgrade && let Some(fin) = h1::switched(answer, out) {
                answer.advance(fin.len);
                return Ok((fin, interim));
            }
            // `Connection: close`, when it is due, is added as the head leaves.
            match h1::answer(answer, head, &date, false, out) {
                Answer::Partial => break,
                Answer::Interim(n) => {
                    interim = true;
                    answer.advance(n);
                }
                Answer::Bad(why) => return Err(UpstreamError::Answer(why).into()),
                Answer::Final(fin) => {
                    answer.advance(fin.len);
                    return Ok((fin, interim));
                }
            }
        }
    }
}

/// Write a request body as it comes from the client: as it is (its length is in the head) or
/// chunked. A failed read of the client's body is `RequestBody`.
async fn write_body<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    body: &mut ProxyBody,
    chunked: bool,
    limit: Option<Duration>,
) -> Result<(), UpstreamError> {
    // Waiting for the client's next piece is the client's time (client_body_timeout);
    // each write is the worker's.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(UpstreamError::RequestBody)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not forwarded
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            write_within(wr, format!("{:x}\r\n", data.len()).as_bytes(), limit).await?;
            write_within(wr, &data, limit).await?;
            write_within(wr, b"\r\n", limit).await?;
        } else {
            write_within(wr, &data, limit).await?;
        }
    }
    if chunked {
        write_within(wr, b"0\r\n\r\n", limit).await?;
    }
    Ok(())
}

/// Write `data` to a worker, which must take it within `limit` (`request_timeout`; `None`: no
/// limit): a worker that reads nothing of a request baton holds whole (a buffered upload)
/// would otherwise hold the request, and its client, until `max_request_time` replaced it.
async fn write_within<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    data: &[u8],
    limit: Option<Duration>,
) -> Result<(), UpstreamError> {
    match limit {
        None => Ok(wr.write_all(data).await?),
        Some(limit) => match tokio::time::timeout(limit, wr.write_all(data)).await {
            Ok(written) => Ok(written?),
            Err(_) => Err(UpstreamError::Timeout(limit)),
        },
    }
}

/// `Date:` for answers whose worker gave none, formatted once a second per thread.
pub(super) fn date() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs && at != 0 {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        c.set((secs, text));
        text
    })
}
