//! A request body received whole before a worker is leased: memory, then an unlinked
//! temporary file, at most `max_body_size`, each read within `client_body_timeout`.

use super::{BodyError, Limits};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::fs::File;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{ReadFuture, read_chunk, temp_file, write_at};

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
