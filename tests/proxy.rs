//! The proxy path: streamed bodies, protocol upgrades, forwarding headers, and a worker that
//! dies under load.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn bodies_stream_both_ways() {
    let _serial = serial();
    // Without request buffering (the opt-out for streaming uploads).
    let baton = Baton::start(1, "100ms", "[listen]\nrequest_buffering = false\n");
    let addr = baton.addr;
    runtime().block_on(async move {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        // A chunked upload whose first chunk must come back before the last is sent: only a
        // streaming proxy can do that.
        let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let body = StreamBody::new(futures_util::stream::unfold(
            chunks_rx,
            |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
            },
        ));
        let req = hyper::Request::post("/echo")
            .header("host", "x")
            .body(body)
            .unwrap();
        chunks_tx
            .send(Bytes::from_static(b"first-chunk;"))
            .await
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first chunk comes back while the upload is still open")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(&first[..], b"first-chunk;");
        let big = Bytes::from(vec![b'x'; 4 << 20]);
        chunks_tx.send(big).await.unwrap();
        drop(chunks_tx);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest.len(), 4 << 20);
    });
}

#[test]
fn upgrades_pass_through() {
    let _serial = serial();
    let baton = Baton::start(1, "100ms", "");
    let addr = baton.addr;
    runtime().block_on(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("upgrade: echo"),
            "{head}"
        );
        s.write_all(b"ping over the tunnel").await.unwrap();
        let mut got = vec![0u8; 20];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"ping over the tunnel");
    });
}

#[test]
fn forwarding_headers_are_set() {
    let _serial = serial();
    let baton = Baton::start(1, "100ms", "");
    let (status, body) = get(&baton.url("/"));
    assert_eq!(status, 200);
    assert!(body.contains("(x-forwarded-for 127.0.0.1)"), "{body}");
}

#[test]
fn a_worker_killed_under_load_is_replaced_and_clients_see_no_error() {
    let _serial = serial();
    let baton = Baton::start(4, "300ms", "");
    let victim = baton.status().workers[1].pid.unwrap();
    let load = Load::start(baton.addr, 8, "/", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = baton.wait_until(Duration::from_secs(10), |s| {
        s.workers.iter().filter(|w| w.state == "ready").count() == 4
            && s.workers.iter().all(|w| w.pid != Some(victim))
    });
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}\n{}", report.errors, baton.log());
    assert!(report.ok > 500, "{report:?}");
    assert_eq!(
        s.generation, 1,
        "a replacement comes from the same generation"
    );
    assert!(
        baton.log().contains("was killed by SIGKILL") && baton.log().contains("replacing it"),
        "{}",
        baton.log()
    );
}
