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
    /// Another process listens on the worker's port.
    PortTaken {
        port: u16,
        owner: u32,
    },
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(r) => write!(f, "{r} before it was ready"),
            NotReady::PortTaken { port, owner } => {
                let name = std::fs::read_to_string(format!("/proc/{owner}/comm"))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_default();
                write!(
                    f,
                    "could not have its port {port}: process {owner} ({name}) already listens there"
                )
            }
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
        let mut pause = Duration::from_millis(5);
        loop {
            if probe_once(addr, http_path).await {
                return;
            }
            tokio::time::sleep(pause).await;
            // A refused connect on loopback costs microseconds: poll often, so that a worker is
            // seen ready within ~10 ms of listening (the roll waits on this for every worker).
            pause = (pause * 2).min(Duration::from_millis(10));
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

/// Which process holds the listening TCP socket on 127.0.0.1:`port` (or the wildcard address),
/// from /proc. `None` when it cannot be told (no such listener, or /proc unreadable).
pub fn port_owner(port: u16) -> Option<u32> {
    let inode = listening_inode(port)?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

fn listening_inode(port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    let wanted = format!("{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let Some((addr, p)) = local.rsplit_once(':') else {
                continue;
            };
            // 127.0.0.1 is 0100007F in the table's byte order; the wildcard is all zeros.
            let ours = addr == "0100007F" || addr.chars().all(|c| c == '0');
            if *state == LISTEN && p == wanted && ours {
                return inode.parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_process_that_listens_on_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(port_owner(port), Some(std::process::id()));
        drop(l);
        assert_eq!(port_owner(port), None);
    }
}
