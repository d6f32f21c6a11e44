//! The listening sockets: the ones systemd passes (socket activation), else `[listen] address`.
//!
//! With systemd's sockets a restart of baton itself refuses no connection: the kernel keeps
//! queueing them on the socket that systemd holds while baton starts again.

use crate::config::{Config, ListenAddress};
use std::os::fd::AsFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "systemd passed socket {index} ({name}), which is neither a TCP nor a Unix stream socket"
    )]
    BadPassedSocket { index: usize, name: String },
    #[error(
        "no socket was passed by systemd (LISTEN_FDS) and the config has no [listen] address (nor [tls] address)"
    )]
    NoAddress,
    /// A passed socket left inheritable would keep the app's port open in every worker after
    /// baton let it go: better not to start.
    #[error("cannot make socket {index} ({name}) passed by systemd close-on-exec")]
    Inheritable {
        index: usize,
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot listen on {address}: {error}")]
    Bind {
        address: String,
        error: std::io::Error,
    },
}

pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix".into()),
        }
    }
}

/// The listening sockets, plain HTTP and HTTPS.
pub struct Listeners {
    pub plain: Vec<Listener>,
    /// HTTPS: the sockets systemd names `https` (`FileDescriptorName=https`), else
    /// `[tls] address`.
    pub tls: Vec<Listener>,
}

/// The name of a socket systemd passes for HTTPS.
pub const HTTPS: &str = "https";

/// Open the listeners for `config`: systemd's when it passes any, else the config's
/// addresses.
pub fn open(config: &Config) -> Result<Listeners, ListenError> {
    let passed = from_systemd()?;
    if !passed.is_empty() {
        let (tls, plain): (Vec<_>, Vec<_>) = passed.into_iter().partition(|(_, n)| n == HTTPS);
        return Ok(Listeners {
            plain: plain.into_iter().map(|(l, _)| l).collect(),
            tls: tls.into_iter().map(|(l, _)| l).collect(),
        });
    }
    let plain = config.listen.address.as_ref().map(bind).transpose()?;
    let tls = config
        .tls
        .address
        .map(|a| bind(&ListenAddress::Tcp(a)))
        .transpose()?;
    if plain.is_none() && tls.is_none() {
        return Err(ListenError::NoAddress);
    }
    Ok(Listeners {
        plain: plain.into_iter().collect(),
        tls: tls.into_iter().collect(),
    })
}

fn bind(address: &ListenAddress) -> Result<Listener, ListenError> {
    let err = |error| ListenError::Bind {
        address: address.to_string(),
        error,
    };
    match address {
        ListenAddress::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            tokio::net::TcpListener::from_std(l)
                .map(Listener::Tcp)
                .map_err(err)
        }
        ListenAddress::Unix(path) => {
            clear_stale_socket(path).map_err(err)?;
            let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            tokio::net::UnixListener::from_std(l)
                .map(Listener::Unix)
                .map_err(err)
        }
    }
}

/// Make room for a Unix socket at `path`: a socket left by a process that is gone blocks
/// bind() and is removed; one that answers is in use; anything that is not a socket is never
/// touched (a typo in a config must not cost the operator a file).
pub fn clear_stale_socket(path: &Path) -> std::io::Result<()> {
    crate::config::not_a_foreign_file(path)
        .map_err(|m| std::io::Error::new(std::io::ErrorKind::AlreadyExists, m))?;
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process answers there",
        ));
    }
    std::fs::remove_file(path)
}

fn from_systemd() -> Result<Vec<(Listener, String)>, ListenError> {
    let names: Vec<String> = sd_notify::listen_fds_with_names()
        .map(|it| it.map(|(_, n)| n).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    for index in 0..fds.len() {
        let name = names
            .get(index)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let bad = || ListenError::BadPassedSocket {
            index,
            name: name.clone(),
        };
        let inheritable = |source| ListenError::Inheritable {
            index,
            name: name.clone(),
            source,
        };
        let listener = if let Ok(Some(l)) = fds.take_tcp_listener(index) {
            l.set_nonblocking(true).map_err(|_| bad())?;
            no_inherit(&l).map_err(inheritable)?;
            Listener::Tcp(tokio::net::TcpListener::from_std(l).map_err(|_| bad())?)
        } else if let Ok(Some(l)) = fds.take_unix_listener(index) {
            l.set_nonblocking(true).map_err(|_| bad())?;
            no_inherit(&l).map_err(inheritable)?;
            Listener::Unix(tokio::net::UnixListener::from_std(l).map_err(|_| bad())?)
        } else {
            return Err(bad());
        };
        tracing::info!(
            "listening on {} (socket {name:?} from systemd)",
            listener.describe()
        );
        out.push((listener, name));
    }
    Ok(out)
}

/// systemd passes sockets without close-on-exec; workers must not inherit them, or a worker
/// would keep the app's port open after baton let it go.
fn no_inherit(fd: &impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};

    #[test]
    fn a_passed_socket_is_made_close_on_exec() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // As systemd passes it: inheritable.
        fcntl(&l, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        no_inherit(&l).unwrap();
        let flags = FdFlag::from_bits_truncate(fcntl(&l, FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
    }

    #[test]
    fn a_socket_that_stays_inheritable_is_an_error_with_its_cause() {
        let e = ListenError::Inheritable {
            index: 0,
            name: "http".into(),
            source: nix::Error::EBADF,
        };
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause, Some(nix::Error::EBADF.to_string()));
        assert!(e.to_string().contains("close-on-exec"), "{e}");
    }
}
