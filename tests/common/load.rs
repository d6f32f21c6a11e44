//! A load generator of keep-alive HTTP/1.1 connections that counts every failure.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the load generator saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// Requests resent on a new connection because the server had closed the idle keep-alive
    /// connection they were sent on (what every HTTP client does, RFC 9112 9.3.1).
    pub resent: u64,
    /// Connections the server closed between requests.
    pub closed_by_server: u64,
    /// Of the failed requests, those whose answer broke off: the connection closed after the
    /// request had gone and before its answer ended (what a client sees of a worker that died
    /// in the middle of its answer). Not a 5xx, a timeout or a refused connection.
    pub cut: u64,
    pub errors: Vec<String>,
    /// Bodies seen, to tell which release answered.
    pub bodies_with: Vec<(String, u64)>,
}

impl LoadReport {
    /// What baton promises its clients while workers die under them (README, "Behaviour worth
    /// knowing"): a request that could not reach its worker, or that its worker closed or reset
    /// before any answer, is sent again (once, on another worker when one is free); only an
    /// answer the worker had begun can be cut short, and it reaches the client as far as it
    /// came. So every failure must be an answer cut short (never a 5xx, a timeout or a closed
    /// connection without an answer), and there can be no more of those than answers were
    /// being written when a worker died: one per death for the apps of these tests, whose
    /// small answers leave in one write.
    pub fn assert_only_answers_cut_by(&self, deaths: usize, context: &str) {
        assert!(
            self.failed == self.cut && self.cut <= deaths as u64,
            "{} of {} requests failed ({} of them answers cut short) while {deaths} workers \
             died: only an answer in progress may fail when its worker dies, one per death at \
             most; {:?}\n{context}",
            self.failed,
            self.ok + self.failed,
            self.cut,
            self.errors
        );
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<LoadReport>>,
}

impl Load {
    /// `connections` keep-alive connections, each sending GET `path` back to back; a request
    /// fails on a transport error, a non-200 answer, or no answer within `timeout`.
    pub fn start(addr: SocketAddr, connections: usize, path: &str, timeout: Duration) -> Load {
        Self::start_with(addr, connections, path, timeout, false)
    }

    /// Like `start`, but a GET on a reused keep-alive connection that the server closed before
    /// answering is sent again on a new connection (counted in `resent`), as browsers and
    /// HTTP libraries do. Only for a restart of the manager itself, which must close them.
    pub fn start_resending(
        addr: SocketAddr,
        connections: usize,
        path: &str,
        timeout: Duration,
    ) -> Load {
        Self::start_with(addr, connections, path, timeout, true)
    }

    /// Like `start`, but each connection rests `gap` after every answer: a light, steady
    /// traffic (`connections` / `gap` requests a second at most) rather than as much as the
    /// server takes.
    pub fn paced(
        addr: SocketAddr,
        connections: usize,
        path: &str,
        timeout: Duration,
        gap: Duration,
    ) -> Load {
        Self::spawn(addr, connections, path, timeout, false, gap)
    }

    fn start_with(
        addr: SocketAddr,
        connections: usize,
        path: &str,
        timeout: Duration,
        resend: bool,
    ) -> Load {
        Self::spawn(addr, connections, path, timeout, resend, Duration::ZERO)
    }

    fn spawn(
        addr: SocketAddr,
        connections: usize,
        path: &str,
        timeout: Duration,
        resend: bool,
        gap: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                let path = path.to_owned();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(connection_loop(addr, path, stop, timeout, resend, gap))
                })
            })
            .collect();
        Load { stop, handles }
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for h in self.handles {
            let r = h.join().unwrap();
            total.ok += r.ok;
            total.failed += r.failed;
            total.resent += r.resent;
            total.closed_by_server += r.closed_by_server;
            total.cut += r.cut;
            total.errors.extend(r.errors);
        }
        total
    }
}

enum Resend {
    /// The connection was closed before any byte of the answer: safe to send again.
    Closed(String),
    /// The connection closed before the answer's end, after its head.
    Cut(String),
    No(String),
}

async fn connection_loop(
    addr: SocketAddr,
    path: String,
    stop: Arc<AtomicBool>,
    timeout: Duration,
    resend_allowed: bool,
    gap: Duration,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    // Answers received on the current connection.
    let mut answered = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if sender.is_none() {
            answered = 0;
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                    Ok((tx, conn)) => {
                        tokio::spawn(conn);
                        sender = Some(tx);
                    }
                    Err(e) => {
                        report.failed += 1;
                        report.errors.push(format!("handshake: {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    report.failed += 1;
                    report.errors.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(tx) = sender.as_mut() else { continue };
        if tx.ready().await.is_err() {
            // The server closed the connection between requests (after `Connection: close`):
            // no request was lost; open a new one as any client does.
            report.closed_by_server += 1;
            sender = None;
            continue;
        }
        let req = hyper::Request::get(path.as_str())
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let attempt = async {
            let resp = tx.send_request(req).await.map_err(|e| {
                if e.is_canceled() || e.is_incomplete_message() {
                    Resend::Closed(format!("request: {e}"))
                } else {
                    Resend::No(format!("request: {e}"))
                }
            })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Resend::Cut(format!("body: {e}")))?
                .to_bytes();
            if status != 200 {
                return Err(Resend::No(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                )));
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => {
                report.ok += 1;
                answered += 1;
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
            }
            Ok(Err(Resend::Closed(_))) if resend_allowed && answered > 0 => {
                report.resent += 1;
                sender = None;
            }
            Ok(Err(failure)) => {
                let e = match failure {
                    Resend::Cut(e) => {
                        report.cut += 1;
                        e
                    }
                    Resend::Closed(e) | Resend::No(e) => e,
                };
                report.failed += 1;
                if report.errors.len() < 20 {
                    report.errors.push(e);
                }
                sender = None;
            }
            Err(_) => {
                report.failed += 1;
                report.errors.push(format!("no answer within {timeout:?}"));
                sender = None;
            }
        }
    }
    report
}
