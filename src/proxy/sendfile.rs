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

/// The most one `sendfile` call sends before the task yields (what nginx's
/// `sendfile_max_chunk` bounds, at 2 MiB). One call for a whole large file kept a runtime
/// thread in the kernel for hundreds of microseconds a poll (on loopback its softirq delivers
/// the bytes to the reader too), and tokio looks for new I/O events only every so many polls:
/// at 1 MiB and 16 connections both cores sat idle 3 % of the time while requests waited.
/// Measured on loopback (bench/README.md, "sendfile a chunk at a time"), 1 MiB answers a
/// second by chunk: whole file 3,850, 128 KiB 4,000, 64 KiB 5,600, 32 KiB 8,600, 16 KiB
/// 5,000 (nginx 3,700); the CPU per answer fell with them. A slow client's socket fills long
/// before a chunk ends, so there it changes nothing.
const CHUNK: u64 = 32 * 1024;

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

    /// Send bytes `offset..offset+len` of `file`, [`CHUNK`] bytes a call at most, yielding
    /// between calls so that the thread's other tasks and new I/O events are not kept waiting
    /// by one large file; `sent` counts what the socket took. A client that takes nothing for
    /// `limit` is given up; so is a file that shrank (the answer is cut, never padded).
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
            let count = (end - at).min(CHUNK) as usize;
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
                    if at < end {
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(limit).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::io::Write;
    use std::task::Poll;
    use tokio::io::AsyncReadExt;

    /// A large file goes a chunk a poll, even when the socket would take more at once: the
    /// thread's other tasks and new I/O events get their turn between chunks.
    #[tokio::test]
    async fn a_large_file_goes_one_chunk_a_poll() {
        let (a, mut b) = UnixStream::pair().unwrap();
        // Room for more than one chunk (the kernel caps it, at twice 208 KiB by default).
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &(1 << 20)).unwrap();
        let bytes: Vec<u8> = (0..4 * CHUNK).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let mut sent = 0;
        let socket = Socket::Unix(&a);
        let mut got = vec![0u8; 4 * CHUNK as usize];
        {
            let send = socket.send_file(&file, 0, 4 * CHUNK, Duration::from_secs(10), &mut sent);
            tokio::pin!(send);
            let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "the whole file went in one poll");
            let mut n = 0;
            // The socket's own read: tokio's knows no readiness before its driver ran.
            while let Ok(k) = nix::unistd::read(&b, &mut got[n..]) {
                if k == 0 {
                    break;
                }
                n += k;
            }
            assert_eq!(n as u64, CHUNK, "one chunk a poll");
            let (r, read) = tokio::join!(send, b.read_exact(&mut got[n..]));
            r.unwrap();
            read.unwrap();
        }
        assert_eq!(got, bytes);
        assert_eq!(sent, 4 * CHUNK);
    }
}
