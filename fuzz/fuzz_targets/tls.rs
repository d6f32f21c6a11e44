//! `tls`: a client's bytes into baton's TLS front (`Proxy::serve_tls_stream`: what `serve`
//! runs for each connection of an HTTPS listener), over an in-memory stream.
//!
//! Once per process: a self-signed certificate (rcgen, ECDSA P-256, for `localhost`) loaded
//! by `baton::tls::Certificates` as `[tls]` names it (with `hsts`), and the proxies of
//! `common/front.rs` (buffering and streaming, a real pool, the tiny worker of
//! `common/worker.rs`). The first byte of an input chooses what the rest is (its value
//! modulo 3), and each input goes to both proxies:
//!
//! - 0: the client's raw bytes from the first one (a ClientHello, records, garbage), then the
//!   client's EOF. The server's bytes must be TLS records (content type 20-24, version 3.x),
//!   and the connection must end.
//! - 1: a real handshake (rustls, ALPN `http/1.1`; session resumption on, so baton's cache
//!   and tickets are used too), then the rest as the plaintext of an HTTPS connection: the
//!   narrow path and hyper's with the peer marked `https`. An answer must start with an
//!   HTTP/1.x status line.
//! - 2: a real handshake with ALPN `h2`, which must be chosen, then the rest as HTTP/2
//!   frames after the preface, as in the `h2` target.
//!
//! Asserts also: nothing panics, on any thread; a real client's handshake with the
//! certificate in force succeeds; and the connection ends within `END_WAIT` of its client's
//! leaving.

#![no_main]

#[path = "common/front.rs"]
mod front;
#[path = "common/h2_frames.rs"]
mod h2_frames;
#[path = "../../tests/differential/harness.rs"]
mod harness;
#[path = "common/worker.rs"]
mod worker;

use baton::tls::Certificates;
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long a client waits for an answer (they come in a millisecond; this bounds only an
/// input that gets none) and for a handshake.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How long the connection may outlive its client.
const END_WAIT: Duration = Duration::from_secs(3);
const PEER: &str = "192.0.2.1:40000";

struct State {
    front: front::Front,
    certs: Arc<Certificates>,
    /// Client configurations offering `http/1.1` and `h2`.
    clients: [tokio_rustls::TlsConnector; 2],
    /// Holds the certificate's files.
    _dir: tempfile::TempDir,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("certificate parameters")
            .self_signed(&key)
            .expect("certificate");
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        let tls = format!(
            "[tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\nhsts = \"1d\"\n",
            cert_path.display(),
            key_path.display()
        );
        let front = front::start(&tls);
        let config = baton::config::Config::parse(
            &format!("name = \"fuzz\"\n[app]\ncommand = [\"true\"]\n{tls}"),
            std::path::Path::new("fuzz.toml"),
        )
        .expect("tls config");
        let certs = Arc::new(Certificates::load(&config.tls).expect("load the certificate"));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .expect("trust the certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let clients = [&b"http/1.1"[..], b"h2"].map(|alpn| {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = vec![alpn.to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(c))
        });
        State {
            front,
            certs,
            clients,
            _dir: dir,
        }
    })
}

/// The server's bytes are TLS records: each header's content type is one of TLS 1.2/1.3's
/// (change_cipher_spec, alert, handshake, application_data, heartbeat) and its version 3.x.
fn check_records(mut out: &[u8]) {
    while out.len() >= 5 {
        assert!(
            (20..=24).contains(&out[0]) && out[1] == 3,
            "the TLS server wrote a record header {:02x?}",
            &out[..5]
        );
        let len = usize::from(u16::from_be_bytes([out[3], out[4]]));
        out = &out[(5 + len).min(out.len())..];
    }
}

async fn raw(s: &State, proxy: Arc<baton::proxy::Proxy>, input: &[u8]) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let conn = serve(s, proxy, server);
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = tokio::time::timeout(ANSWER_WAIT, async {
        let _ = wr.write_all(input).await;
        let _ = wr.shutdown().await;
    });
    let read = tokio::time::timeout(ANSWER_WAIT, async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    });
    let (_, out) = tokio::join!(write, read);
    if let Ok(out) = out {
        check_records(&out);
    }
    drop((rd, wr));
    ended(conn).await;
}

async fn after_handshake(s: &State, proxy: Arc<baton::proxy::Proxy>, h2: bool, input: &[u8]) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let conn = serve(s, proxy, server);
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = match tokio::time::timeout(
        ANSWER_WAIT,
        s.clients[usize::from(h2)].connect(name, client),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => panic!("a real client's handshake failed: {e}"),
        Err(_) => panic!("a real client's handshake did not end within {ANSWER_WAIT:?}"),
    };
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let want: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    assert_eq!(alpn.as_deref(), Some(want), "ALPN");
    let (mut rd, mut wr) = tokio::io::split(tls);
    if h2 {
        let awaited = h2_frames::ended_streams(input);
        let write = tokio::time::timeout(ANSWER_WAIT, async {
            let _ = wr.write_all(h2_frames::PREFACE).await;
            let _ = wr.write_all(input).await;
            let _ = wr.flush().await;
        });
        let read = h2_frames::read_answers(&mut rd, &awaited, ANSWER_WAIT);
        let (_, got) = tokio::join!(write, read);
        if let Err(e) = got {
            panic!("the HTTP/2 server's answer is not HTTP/2: {e}");
        }
    } else {
        // A whole head waits for its answer with the connection open (hyper drops a request
        // whose client half-closes); anything else is followed by the client's close, so
        // the server answers what it can and sees the client leave.
        let complete = head_is_complete(input);
        let write = tokio::time::timeout(ANSWER_WAIT, async {
            let _ = wr.write_all(input).await;
            let _ = wr.flush().await;
            if !complete {
                let _ = wr.shutdown().await;
            }
        });
        let read = tokio::time::timeout(ANSWER_WAIT, async {
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            while answer.len() < 9 {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                }
            }
            answer
        });
        let (_, answer) = tokio::join!(write, read);
        if let Ok(answer) = answer {
            let n = answer.len().min(9);
            assert!(
                [&b"HTTP/1.1 "[..], b"HTTP/1.0 "]
                    .iter()
                    .any(|line| answer[..n] == line[..n]),
                "the HTTPS answer does not start with an HTTP/1.x status line: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    drop((rd, wr));
    ended(conn).await;
}

fn head_is_complete(data: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    matches!(
        httparse::Request::new(&mut headers).parse(data),
        Ok(httparse::Status::Complete(_))
    )
}

fn serve<S>(s: &State, proxy: Arc<baton::proxy::Proxy>, stream: S) -> tokio::task::JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let certs = s.certs.clone();
    let peer: SocketAddr = PEER.parse().expect("peer address");
    tokio::spawn(async move {
        proxy
            .serve_tls_stream(stream, peer, &certs, CancellationToken::new())
            .await;
    })
}

async fn ended(conn: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(END_WAIT, conn).await.is_err() {
        panic!("the HTTPS connection did not end within {END_WAIT:?} of its client's leaving");
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let s = state();
    for proxy in &s.front.proxies {
        let proxy = proxy.clone();
        match mode % 3 {
            0 => s.front.rt.block_on(raw(s, proxy, rest)),
            1 => s.front.rt.block_on(after_handshake(s, proxy, false, rest)),
            _ => s.front.rt.block_on(after_handshake(s, proxy, true, rest)),
        }
    }
});
