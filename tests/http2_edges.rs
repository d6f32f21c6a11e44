//! HTTP/2 and TLS at their edges, against a real `baton run` serving `[tls]`: a CONTINUATION
//! flood and a rapid-reset flood (CVE-2023-44487) cost bounded memory, end the flooding
//! connection and leave everyone else served; `testssl.sh` (Debian's package) finds nothing
//! rated medium or worse in baton's TLS, beyond what a self-signed test certificate is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection that negotiated `h2`, trusting `ca`.
async fn h2_connection(port: u16, ca: &Path) -> Tls {
    let config = client_config(&[ca], &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Whether one more request on a fresh HTTP/2 connection gets the app's answer.
fn others_are_served(port: u16, ca: &Path) -> bool {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .arg(format!("https://localhost:{port}/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout) == "200 2"
}

#[test]
fn a_continuation_flood_ends_its_connection_with_little_read() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let b = Baton::start(1, "0s", &tls_section(port, &cert, &key));
    let pid = b.child.id();
    let before = rss_kib(pid);
    let (sent, got, took) = runtime().block_on(continuation_flood(port, &cert));
    let after = rss_kib(pid);
    eprintln!(
        "continuation flood: {} KiB sent in {took:?} before the connection ended; baton's RSS {before} -> {after} KiB",
        sent / 1024
    );
    assert!(
        sent < 8 << 20,
        "baton read {} KiB of one header block",
        sent / 1024
    );
    // A GOAWAY (frame type 7) came before the close.
    assert!(
        got.windows(4).any(|w| w[3] == 0x7),
        "no GOAWAY in {} bytes",
        got.len()
    );
    assert!(after < before + 32 * 1024, "RSS {before} -> {after} KiB");
    assert!(others_are_served(port, &cert));
}

/// HEADERS that never end: (bytes sent, bytes received, how long) until baton closed.
async fn continuation_flood(port: u16, cert: &Path) -> (usize, Vec<u8>, Duration) {
    let mut tls = h2_connection(port, cert).await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
    // HEADERS without END_HEADERS (:method GET, :scheme https, :path /, indexed), then
    // CONTINUATION frames of 16 KB of literal headers that never end.
    tls.write_all(&frame(0x1, 0x1, 1, &[0x82, 0x87, 0x84]))
        .await
        .unwrap();
    let mut block = Vec::new();
    while block.len() < 16_000 {
        // A literal header without indexing, new name "x-flood", a 100-byte value.
        block.extend_from_slice(&[0x00, 0x07]);
        block.extend_from_slice(b"x-flood");
        block.push(100);
        block.extend_from_slice(&[b'a'; 100]);
    }
    let continuation = frame(0x9, 0, 1, &block);
    let began = Instant::now();
    let mut sent = 0usize;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    // Up to 64 MiB; baton must close long before.
    while sent < 64 << 20 && !reader.is_finished() {
        if wr.write_all(&continuation).await.is_err() {
            break;
        }
        sent += continuation.len();
    }
    drop(wr);
    let got = reader.await.unwrap();
    (sent, got, began.elapsed())
}

#[test]
fn a_rapid_reset_flood_is_bounded_and_others_are_served() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let b = Baton::start(2, "0s", &tls_section(port, &cert, &key));
    let pid = b.child.id();
    let before = rss_kib(pid);
    let (opened, ended, took) = runtime().block_on(rapid_reset(port, &cert));
    let after = rss_kib(pid);
    let processed: u64 = b.status().workers.iter().map(|w| w.processed).sum();
    eprintln!(
        "rapid reset: {opened} streams opened and reset in {took:?}; connection: {ended}; \
         {processed} requests reached a worker; baton's RSS {before} -> {after} KiB"
    );
    // h2's limit on streams reset before they were accepted ends the connection early (a
    // GOAWAY ENHANCE_YOUR_CALM, which the client may meet as a broken pipe when it is still
    // writing), and only a few requests of the flood reached a worker.
    assert!(
        ["ENHANCE_YOUR_CALM", "BrokenPipe", "ConnectionReset"]
            .iter()
            .any(|e| ended.contains(e)),
        "{ended}"
    );
    assert!(
        opened < 10_000 && processed < 100,
        "{opened} opened, {processed} served"
    );
    assert!(after < before + 64 * 1024, "RSS {before} -> {after} KiB");
    assert!(others_are_served(port, &cert));
}

/// Streams opened and reset at once, as fast as they go: (how many, how the connection
/// ended, how long).
async fn rapid_reset(port: u16, cert: &Path) -> (u32, String, Duration) {
    let tls = h2_connection(port, cert).await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let began = Instant::now();
    let mut opened = 0u32;
    while opened < 100_000 && !conn.is_finished() && began.elapsed() < Duration::from_secs(20) {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let req = http::Request::get(format!("https://localhost:{port}/sleep/50"))
            .body(())
            .unwrap();
        let Ok((_answer, mut stream)) = client.send_request(req, true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
        if opened.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    (opened, format!("{ended:?}"), began.elapsed())
}

#[test]
fn testssl_finds_nothing_medium_or_worse() {
    let _serial = serial();
    let testssl = debian_tool("testssl", "testssl.sh");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let extra = format!("{}hsts = \"365d\"\n", tls_section(port, &cert, &key));
    let _b = Baton::start(1, "0s", &extra);
    let json = dir.path().join("testssl.json");
    let out = std::process::Command::new(&testssl)
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--fast",
            "--ip",
            "127.0.0.1",
        ])
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("localhost:{port}"))
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    assert!(
        !text.is_empty(),
        "testssl wrote nothing: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    // What a self-signed test certificate is (not trusted, no OCSP, no CRL, no CT, valid
    // for centuries), and what the app answers (its security headers: X-Frame-Options, CSP),
    // which is the app's to set, not baton's TLS.
    let about_the_test_certificate = |id: &str| {
        id.starts_with("cert_validityPeriod")
            || id.starts_with("cert_revocation")
            || id == "security_headers"
            || id.starts_with("cert_chain_of_trust")
            || id.starts_with("cert_trust")
            || id.starts_with("cert_crl")
            || id.starts_with("cert_ocsp")
            || id.starts_with("cert_certificateTransparency")
            || id.starts_with("cert_caIssuers")
            || id.starts_with("OCSP")
            || id.starts_with("DNS_CAArecord")
    };
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .filter(|f| !about_the_test_certificate(f["id"].as_str().unwrap_or("")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    eprintln!("testssl: {} findings in all", findings.len());
    assert!(bad.is_empty(), "{bad:#?}");
}
