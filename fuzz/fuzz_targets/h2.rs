//! `h2`: arbitrary HTTP/2 frames from a client, into baton's HTTP/2 server.
//!
//! Each input is written, after the client connection preface and an empty SETTINGS frame
//! (`common/h2_frames.rs`), to an in-memory stream served by `Proxy::serve_h2_stream`: the
//! code an HTTPS connection runs once ALPN chose `h2` (hyper's HTTP/2 server with baton's
//! bounds, every stream through the policy and the exchange with a worker). Behind it, the
//! proxies of `common/front.rs` (buffering and streaming, over a real pool with two ready
//! workers pointing at the tiny worker of `common/worker.rs`), so a request that parses is
//! admitted or refused by the policy and forwarded. Each input goes to both proxies.
//!
//! The client reads the server's frames until every stream the input ended (END_STREAM) has
//! an end of its own (an answer or a reset), a GOAWAY, the end of the connection, or
//! `ANSWER_WAIT`; then it closes.
//!
//! Asserts: nothing panics, on any thread (libfuzzer-sys's panic hook aborts the process);
//! the server's first frame is its SETTINGS; and the connection ends within `END_WAIT` of its
//! client's leaving, whatever the input left half done.

#![no_main]

#[path = "common/front.rs"]
mod front;
#[path = "common/h2_frames.rs"]
mod h2_frames;
#[path = "../../tests/differential/harness.rs"]
mod harness;
#[path = "common/worker.rs"]
mod worker;

use baton::proxy::Proxy;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// How long the client waits for the ends it is owed. Answers come in a millisecond; this
/// bounds only an input whose streams the server leaves open.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How long the connection may outlive its client.
const END_WAIT: Duration = Duration::from_secs(3);
const PEER: &str = "192.0.2.1:40000";

fn front() -> &'static front::Front {
    static F: OnceLock<front::Front> = OnceLock::new();
    F.get_or_init(|| front::start(""))
}

async fn one(proxy: Arc<Proxy>, input: &[u8]) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let peer: SocketAddr = PEER.parse().expect("peer address");
    let conn = tokio::spawn(proxy.serve_h2_stream(server, peer, CancellationToken::new()));
    let awaited = h2_frames::ended_streams(input);
    let (mut rd, mut wr) = tokio::io::split(client);
    // Written while the answers are read: the server may answer, or stop reading, before it
    // has all of the input.
    let write = tokio::time::timeout(ANSWER_WAIT, async {
        let _ = wr.write_all(h2_frames::PREFACE).await;
        let _ = wr.write_all(input).await;
    });
    let (_, got) = tokio::join!(
        write,
        h2_frames::read_answers(&mut rd, &awaited, ANSWER_WAIT)
    );
    if let Err(e) = got {
        panic!("the HTTP/2 server's answer is not HTTP/2: {e}");
    }
    drop((rd, wr));
    if tokio::time::timeout(END_WAIT, conn).await.is_err() {
        panic!("the HTTP/2 connection did not end within {END_WAIT:?} of its client's leaving");
    }
}

fuzz_target!(|input: &[u8]| {
    let f = front();
    for proxy in &f.proxies {
        f.rt.block_on(one(proxy.clone(), input));
    }
});
