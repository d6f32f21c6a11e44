//! Sending a file's bytes to a client with `sendfile(2)`: from the page cache to the socket,
//! with no read into baton's memory, no copy and no trip to the blocking pool, as nginx's
//! `sendfile on`. Only where the bytes written to the socket are what the client receives:
//! a plain TCP or Unix socket, never TLS (no kTLS here), which reads the file instead.

use crate::buffer::SendTimeout;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// A client stream that may say which socket its bytes go to as they are.
pub(crate) trait RawSocket {
    /// The socket, when bytes written to it reach the client unchanged; `None` under TLS.
    fn raw_socket(&self) -> Option<Socket<'_>> {
        None
    }
}

/// A plain client socket.
#[derive(Clone, Copy)]
pub(crate) enum Socket<'a> {
    Tcp(&'a TcpStream),
    Unix(&'a UnixStream),
}

impl RawSocket for TcpStream {
    fn raw_socket(&self) -> Option<Socket<'_>> {
        Some(Socket::Tcp(self))
    }
}

impl RawSocket for UnixStream {
    fn raw_socket(&self) -> Option<Socket<'_>> {
        Some(Socket::Unix(self))
    }
}

impl<S> RawSocket for tokio_rustls::server::TlsStream<S> {}

impl<S: RawSocket> RawSocket for SendTimeout<S> {
    fn raw_socket(&self) -> Option<Socket<'_>> {
        self.get_ref().raw_socket()
    }
}

impl Socket<'_> {
    async fn writable(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.writable().await,
            Socket::Unix(s) => s.writable().await,
        }
    }

    /// One non-blocking write by `f`; `WouldBlock` when the socket's buffer is full.
    fn try_write<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> io::Result<R>) -> io::Result<R> {
        match self {
            Socket::Tcp(s) => s.try_io(Interest::WRITABLE, || f(s.as_fd())),
            Socket::Unix(s) => s.try_io(Interest::WRITABLE, || f(s.as_fd())),
        }
    }

    /// Wait until the socket takes bytes again, at most `limit` (the client's send timeout).
    async fn wait(&self, limit: Duration) -> io::Result<()> {
        match tokio::time::timeout(limit, self.writable()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing within listen.send_timeout",
            )),
        }
    }

    /// Write `head` whole, telling the kernel more follows (`MSG_MORE`), so that the head
    /// and the file's first bytes leave in one segment despite `TCP_NODELAY`.
    pub(crate) async fn send_head(&self, head: &[u8], limit: Duration) -> io::Result<()> {
        use nix::sys::socket::{MsgFlags, send};
        let mut done = 0;
        while done < head.len() {
            match self.try_write(|fd| {
                send(
                    fd.as_raw_fd(),
                    &head[done..],
                    MsgFlags::from_bits_retain(nix::libc::MSG_MORE),
                )
                .map_err(io::Error::from)
            }) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(limit).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Send bytes `offset..offset+len` of `file`; `sent` counts what the socket took. A
    /// client that takes nothing for `limit` is given up; so is a file that shrank (the
    /// answer is cut, never padded).
    pub(crate) async fn send_file(
        &self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
        limit: Duration,
        sent: &mut u64,
    ) -> io::Result<()> {
        let end = offset.saturating_add(len);
        let mut at = offset;
        while at < end {
            // At most 1 GiB a call: sendfile(2) sends no more than 0x7ffff000 bytes anyway.
            let count = usize::try_from((end - at).min(1 << 30)).unwrap_or(1 << 30);
            let r = self.try_write(|fd| {
                let mut off = i64::try_from(at).map_err(|_| io::ErrorKind::InvalidInput)?;
                nix::sys::sendfile::sendfile(fd, file, Some(&mut off), count)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was sent",
                    ));
                }
                Ok(n) => {
                    at += n as u64;
                    *sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(limit).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
