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
    /// `readiness.timeout` passed; what the last probe of `addr` saw.
    Timeout {
        after: Duration,
        addr: SocketAddr,
        last: Attempt,
    },
    /// Another process listens on the worker's port.
    PortTaken {
        port: u16,
        uid: Option<u32>,
    },
    /// It answered, then its process was gone before it could take requests.
    DiedAfterProbe,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(r) => write!(f, "{r} before it was ready"),
            NotReady::PortTaken { port, uid } => {
                write!(
                    f,
                    "could not have its port {port}: a process that is not the worker's already listens there"
                )?;
                match uid {
                    Some(uid) => write!(f, " (uid {uid})"),
                    None => Ok(()),
                }
            }
            NotReady::DiedAfterProbe => {
                f.write_str("exited just after it answered its readiness probe")
            }
            NotReady::Timeout { after, addr, last } => {
                write!(
                    f,
                    "was not ready within {} (readiness.timeout): ",
                    humantime::format_duration(*after)
                )?;
                match last {
                    Attempt::Refused => write!(
                        f,
                        "nothing listened on {addr}, the port baton gave it (in PORT, and for {{port}} in app.command)"
                    ),
                    Attempt::NoAnswer(path) => {
                        write!(
                            f,
                            "it took connections on {addr} but never answered GET {path}"
                        )
                    }
                    Attempt::Status(path, status) => {
                        write!(f, "GET {path} on {addr} answered {status}")
                    }
                    Attempt::Ready => write!(f, "it answered on {addr} as the timeout passed"),
                }
            }
        }
    }
}

/// What one readiness probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Nothing listens on the worker's port (yet).
    Refused,
    /// A connection, but no HTTP answer to the probe's path (within 2 s, or not HTTP).
    NoAnswer(String),
    /// An answer of 500 or more.
    Status(String, u16),
    /// Ready (a TCP probe: the connect alone).
    Ready,
}

/// How the supervisor learns that a worker is ready: the seam where its unit tests put a
/// scripted probe, so the supervisor's logic runs on paused time without sockets.
#[async_trait::async_trait]
pub trait Probe: Send + Sync + 'static {
    /// Wait until the worker at `addr` is ready, it exits, or `timeout` passes.
    async fn ready(
        &self,
        addr: SocketAddr,
        http_path: Option<&str>,
        worker: &StartedWorker,
        timeout: Duration,
    ) -> Result<(), NotReady>;
}

/// The real probe: [`wait_ready`] over loopback.
pub struct NetworkProbe;

#[async_trait::async_trait]
impl Probe for NetworkProbe {
    async fn ready(
        &self,
        addr: SocketAddr,
        http_path: Option<&str>,
        worker: &StartedWorker,
        timeout: Duration,
    ) -> Result<(), NotReady> {
        wait_ready(addr, http_path, worker, timeout).await
    }
}

/// Wait until the worker at `addr` is ready, it exits, or `timeout` passes.
pub async fn wait_ready(
    addr: SocketAddr,
    http_path: Option<&str>,
    worker: &StartedWorker,
    timeout: Duration,
) -> Result<(), NotReady> {
    let last = std::sync::Mutex::new(Attempt::Refused);
    let probe = async {
        let mut pause = Duration::from_millis(5);
        loop {
            let attempt = probe_once(addr, http_path).await;
            if attempt == Attempt::Ready {
                return;
            }
            *last.lock().unwrap_or_else(|e| e.into_inner()) = attempt;
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
            Err(_) => Err(NotReady::Timeout {
                after: timeout,
                addr,
                last: last.into_inner().unwrap_or_else(|e| e.into_inner()),
            }),
        },
    }
}

async fn probe_once(addr: SocketAddr, http_path: Option<&str>) -> Attempt {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return Attempt::Refused;
    };
    let Some(path) = http_path else {
        return Attempt::Ready;
    };
    let no_answer = || Attempt::NoAnswer(path.to_owned());
    let ask = async {
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
        Some(resp.status().as_u16())
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Some(status)) if status < 500 => Attempt::Ready,
        Ok(Some(status)) => Attempt::Status(path.to_owned(), status),
        _ => no_answer(),
    }
}

/// Whether the TCP socket listening on `port` (loopback or wildcard) is held by one of `pids`:
/// what answers on a worker's port must be the worker, not a stray. `None` when it cannot be
/// told (no such listener, or sock_diag unavailable).
///
/// The listener is found with a sock_diag query for listening sockets only, so its cost does
/// not grow with the machine's connections (a `/proc/net/tcp` read walks every TIME_WAIT socket:
/// seconds under connection-per-request load); then only the worker's own processes' file
/// descriptors are read. Blocking: call it from `spawn_blocking`.
pub fn port_holder(port: u16, pids: &[u32]) -> PortHolder {
    let sockets = match diag::listening(port) {
        Ok(s) if !s.is_empty() => s,
        _ => return PortHolder::Unknown,
    };
    let needles: Vec<String> = sockets
        .iter()
        .map(|(inode, _)| format!("socket:[{inode}]"))
        .collect();
    if pids.iter().any(|pid| holds(*pid, &needles)) {
        return PortHolder::Worker;
    }
    PortHolder::Other {
        uid: sockets.first().map(|(_, uid)| *uid),
    }
}

/// Who holds a worker's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortHolder {
    /// One of the worker's processes.
    Worker,
    /// Someone else: a process of this uid.
    Other { uid: Option<u32> },
    /// It cannot be told.
    Unknown,
}

fn holds(pid: u32, needles: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| needles.iter().any(|n| l.as_os_str() == n.as_str()))
    })
}

/// A minimal NETLINK_SOCK_DIAG client: the inodes of TCP sockets in LISTEN on a port.
mod diag {
    use std::io;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u32 = 10;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct SockId {
        sport: [u8; 2],
        dport: [u8; 2],
        src: [u32; 4],
        dst: [u32; 4],
        interface: u32,
        cookie: [u32; 2],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Request {
        len: u32,
        kind: u16,
        flags: u16,
        seq: u32,
        pid: u32,
        family: u8,
        protocol: u8,
        ext: u8,
        pad: u8,
        states: u32,
        id: SockId,
    }

    /// inet_diag_msg, after the 16-byte nlmsghdr.
    const MSG_HEAD: usize = 16;
    const UID_AT: usize = 4 + std::mem::size_of::<SockId>() + 12;
    const INODE_AT: usize = UID_AT + 4;

    /// (inode, uid) of the listening sockets on `port`, IPv4 and IPv6.
    pub fn listening(port: u16) -> io::Result<Vec<(u64, u32)>> {
        let mut found = Vec::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    libc::NETLINK_SOCK_DIAG,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor that nothing else owns.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            let req = Request {
                len: std::mem::size_of::<Request>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
                seq: 1,
                family: family as u8,
                protocol: libc::IPPROTO_TCP as u8,
                states: 1 << TCP_LISTEN,
                ..Request::default()
            };
            // SAFETY: req is a plain repr(C) value of the given size.
            let sent = unsafe {
                libc::send(
                    raw,
                    (&req as *const Request).cast(),
                    std::mem::size_of::<Request>(),
                    0,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; 32 << 10];
            'recv: loop {
                // SAFETY: buf is writable for its length.
                let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut msg = &buf[..n as usize];
                if msg.is_empty() {
                    break;
                }
                while msg.len() >= MSG_HEAD {
                    let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
                    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
                    if kind == NLMSG_DONE {
                        break 'recv;
                    }
                    if kind == NLMSG_ERROR || len < MSG_HEAD || len > msg.len() {
                        return Err(io::Error::other("sock_diag answered with an error"));
                    }
                    let body = &msg[MSG_HEAD..len];
                    if body.len() >= INODE_AT + 4 {
                        let sport = u16::from_be_bytes([body[4], body[5]]);
                        if sport == port && local_is_ours(family, &body[8..24]) {
                            let uid = u32::from_ne_bytes(
                                body[UID_AT..UID_AT + 4].try_into().unwrap_or_default(),
                            );
                            let inode = u32::from_ne_bytes(
                                body[INODE_AT..INODE_AT + 4].try_into().unwrap_or_default(),
                            );
                            found.push((u64::from(inode), uid));
                        }
                    }
                    // Messages are 4-byte aligned.
                    let step = (len + 3) & !3;
                    msg = msg.get(step..).unwrap_or_default();
                }
            }
        }
        Ok(found)
    }

    /// Loopback or wildcard: the addresses a worker listens on.
    fn local_is_ours(family: i32, src: &[u8]) -> bool {
        if family == libc::AF_INET {
            src[..4] == [127, 0, 0, 1] || src[..4] == [0, 0, 0, 0]
        } else {
            let loopback: [u8; 16] = std::net::Ipv6Addr::LOCALHOST.octets();
            src == loopback || src.iter().all(|b| *b == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_whether_a_port_is_held_by_given_processes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(port_holder(port, &[std::process::id()]), PortHolder::Worker);
        assert!(matches!(port_holder(port, &[1]), PortHolder::Other { .. }));
        drop(l);
        assert_eq!(
            port_holder(port, &[std::process::id()]),
            PortHolder::Unknown
        );
    }
}
