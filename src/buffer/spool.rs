//! The response spool: a worker's answer read as fast as it comes, handed to the client as
//! fast as it takes it (memory, then a temporary file, at most `max_response_buffer`).

use super::{BodyError, Limits};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::fs::File;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::{ReadFuture, read_chunk, temp_file, write_at};

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
