//! The client side of the control socket, for `baton status`, `restart` and `resume`.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach baton at {path}: {error} (is `baton run` running for this app, and may you use its socket?)"
    )]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("control socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Incoming,
}

pub async fn request(socket: &Path, method: Method, path: &str) -> Result<Reply, ClientError> {
    let proto = |message: String| ClientError::Protocol {
        path: socket.to_owned(),
        message,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|error| ClientError::Connect {
            path: socket.to_owned(),
            error,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| proto(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "baton")
        .body(Empty::<Bytes>::new())
        .map_err(|e| proto(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| proto(e.to_string()))?;
    Ok(Reply {
        status: resp.status(),
        body: resp.into_body(),
    })
}

impl Reply {
    /// The whole body as text.
    pub async fn text(self) -> Result<String, hyper::Error> {
        let bytes = self.body.collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The next complete line of a streamed body, `None` at its end.
    pub async fn next_line(&mut self, buf: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                _ => {
                    if buf.is_empty() {
                        return None;
                    }
                    let line = String::from_utf8_lossy(buf).trim_end().to_owned();
                    buf.clear();
                    return Some(line);
                }
            }
        }
    }
}
