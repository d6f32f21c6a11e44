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
//!
//! One file per concern: the request body received whole (`request`), the response spool
//! (`spool`), a request body streamed from its client with its faults (`client`), and the
//! client connection's own bounds (`stream`: the send timeout, a tunnel's activity).

mod client;
mod request;
mod spool;
mod stream;

pub use client::{ClientBody, Fault};
pub use request::{BodyFailure, BufferedBody, read_request_body};
pub use spool::spool;
pub use stream::{Activity, SendTimeout, Watched};

use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
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

pub(super) async fn temp_file(limits: &Limits) -> std::io::Result<File> {
    let dir = limits.directory.clone();
    blocking(move || tempfile::tempfile_in(dir)).await
}

pub(super) async fn write_at(file: &Arc<File>, at: u64, chunks: Vec<Bytes>) -> std::io::Result<()> {
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

pub(super) async fn read_at(file: &Arc<File>, at: u64, len: usize) -> std::io::Result<Bytes> {
    let file = file.clone();
    blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at)?;
        Ok(Bytes::from(buf))
    })
    .await
}

/// File I/O off the runtime's threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Chunks read back from a temporary file.
pub(super) const FILE_CHUNK: usize = 64 << 10;

pub(super) type ReadFuture =
    Pin<Box<dyn std::future::Future<Output = std::io::Result<Bytes>> + Send>>;

/// Read back the next chunk (at most `FILE_CHUNK`) of the `left` bytes from `at` on.
pub(super) fn read_chunk(file: Arc<File>, at: u64, left: u64) -> ReadFuture {
    let n = left.min(FILE_CHUNK as u64) as usize;
    Box::pin(async move { read_at(&file, at, n).await })
}

#[cfg(test)]
mod tests;
