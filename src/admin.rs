//! Bounds for the small listeners (the control socket and the `[metrics]` port): a connection
//! limit and a header timeout, like the proxy's, so that idle or trickling connections there
//! cost a bounded number of descriptors and never starve the proxy or each other.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one admin listener serves at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client of an admin listener may take to send a request head (also the idle
/// limit of a kept-alive connection between requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The permits of one listener.
#[derive(Clone)]
pub struct Gate(Arc<Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(Semaphore::new(MAX_CONNECTIONS)))
    }
}

impl Gate {
    /// Wait for room for one more connection (call before `accept`).
    pub async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().acquire_owned().await.ok()
    }
}

/// hyper's HTTP/1 server as the admin listeners use it.
pub fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 << 10);
    b
}
