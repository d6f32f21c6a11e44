//! Readiness: a worker gets requests only once it answers.
//!
//! With `readiness.http_path`, a GET must answer with a status below 500; without it, a TCP
//! connect is enough. A worker that exits first, or misses the deadline, is a spawn failure.

use crate::spawn::{ExitReason, StartedWorker};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Why a worker never became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    Exited(ExitReason),
    Timeout(Duration),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(r) => write!(f, "{r} before it was ready"),
            NotReady::Timeout(t) => write!(
                f,
                "was not ready within {} (readiness.timeout)",
                humantime::format_duration(*t)
            ),
        }
    }
}

/// Wait until the worker at `addr` is ready, it exits, or `timeout` passes.
pub async fn wait_ready(
    addr: SocketAddr,
    http_path: Option<&str>,
    worker: &StartedWorker,
    timeout: Duration,
) -> Result<(), NotReady> {
    let probe = async {
        let mut pause = Duration::from_millis(20);
        loop {
            if probe_once(addr, http_path).await {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    };
    tokio::select! {
        reason = worker.wait_exit() => Err(NotReady::Exited(reason)),
        r = tokio::time::timeout(timeout, probe) => match r {
            // A worker that answered and died at once is not ready.
            Ok(()) => match worker.exit_reason() {
                Some(reason) => Err(NotReady::Exited(reason)),
                None => Ok(()),
            },
            Err(_) => Err(NotReady::Timeout(timeout)),
        },
    }
}

async fn probe_once(addr: SocketAddr, http_path: Option<&str>) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let Some(path) = http_path else {
            return Some(true);
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "baton-readiness")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status().as_u16() < 500)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}
