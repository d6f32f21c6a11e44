use super::request::Buffered;
use super::*;
use http_body_util::BodyExt;
use http_body_util::{Full, StreamBody};
use hyper::body::{Body, Frame};
use std::pin::Pin;
use std::task::{Context, Poll};

fn limits(memory: usize) -> Limits {
    Limits {
        memory,
        max_body: 1 << 20,
        max_response: 1 << 20,
        body_timeout: Duration::from_millis(200),
        directory: std::env::temp_dir(),
    }
}

fn chunks(n: usize, size: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
        .collect()
}

fn stream(
    c: Vec<Bytes>,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Unpin> {
    StreamBody::new(futures_util::stream::iter(
        c.into_iter().map(|b| Ok(Frame::data(b))),
    ))
}

async fn collect(b: impl Body<Data = Bytes, Error = BodyError>) -> Vec<u8> {
    b.collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn a_request_body_spills_to_a_file_and_comes_back_whole() {
    let data = chunks(40, 1000);
    let want: Vec<u8> = data.concat();
    let small = read_request_body(stream(data.clone()), &limits(1 << 20))
        .await
        .unwrap();
    assert!(matches!(small, Buffered::Memory(..)));
    let big = read_request_body(stream(data), &limits(4096))
        .await
        .unwrap();
    assert!(matches!(big, Buffered::File(..)));
    assert_eq!(big.len(), want.len() as u64);
    let body = BufferedBody::new(big);
    assert_eq!(body.size_hint().exact(), Some(want.len() as u64));
    assert_eq!(collect(body).await, want);
    assert_eq!(collect(BufferedBody::new(small)).await, want);
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_refused() {
    let r = read_request_body(stream(chunks(2000, 1000)), &limits(4096)).await;
    assert!(matches!(r, Err(BodyFailure::TooLarge(_))), "{:?}", r.err());
}

/// A client that sends one byte, then nothing.
struct Stall(bool);

impl Body for Stall {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.0 {
            Poll::Pending
        } else {
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_request_body_times_out() {
    let r = read_request_body(Stall(false), &limits(4096)).await;
    assert!(matches!(r, Err(BodyFailure::Timeout(_))));
}

#[tokio::test]
async fn a_response_is_read_whole_before_the_client_takes_it() {
    let data = chunks(100, 1000);
    let want: Vec<u8> = data.concat();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let body = spool(stream(data), limits(4096), move |complete| {
        let _ = tx.send(complete);
    });
    // The worker's side finishes although the client has read nothing yet.
    assert!(rx.await.unwrap());
    assert_eq!(collect(body).await, want);
}

/// A worker that writes fast and a client that reads in fits and starts: memory, file,
/// back to memory, back-pressure at `max_response` — and every byte once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_once_in_order() {
    for round in 0..5u64 {
        let data: Vec<Bytes> = (0..2000u64)
            .map(|i| {
                let len = 1 + ((i * 7919 + round * 31) % 3000) as usize;
                Bytes::from(
                    (0..len)
                        .map(|j| (i as usize + j) as u8)
                        .collect::<Vec<u8>>(),
                )
            })
            .collect();
        let want: Vec<u8> = data.concat();
        let mut l = limits(4096);
        l.max_response = 64 << 10;
        let mut body = spool(stream(data), l, |_| {});
        let mut got = Vec::with_capacity(want.len());
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            n += 1;
            if n.is_multiple_of(3 + round) {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        assert_eq!(got.len(), want.len(), "round {round}");
        assert!(got == want, "round {round}: bytes differ");
    }
}

#[tokio::test]
async fn a_small_response_passes_through_memory() {
    let body = spool(
        Full::new(Bytes::from_static(b"hello")),
        limits(4096),
        |_| {},
    );
    assert_eq!(collect(body).await, b"hello");
}
