//! A request body streamed from its client (request buffering off): its per-read timeout,
//! its size limit, and what went wrong on the client's side (`Fault`), so that the client,
//! not the worker, is blamed.

use super::BodyError;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use super::BodyFailure;

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
