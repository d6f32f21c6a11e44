//! HTTPS and HTTP/2 at the edge, with real clients: curl (`--http2`, `--http1.1`), OpenSSL's
//! `s_client`, Python's `ssl`, nghttp2's `h2load` and wrk, against a real `baton run` serving
//! `[tls]` with certificates made here (ECDSA P-256, self-signed). A certificate replaced by a
//! reload leaves open connections alone; a broken one fails the reload and the old one keeps
//! serving; one that cannot be used keeps baton from starting.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// curl over HTTPS: (body, the HTTP version it spoke).
fn curl(port: u16, ca: &Path, version: &str, path: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", version, "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {version}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = text.rsplit_once('\n').unwrap();
    (body.to_owned(), tail.to_owned())
}

#[test]
fn clients_get_the_app_over_https_by_http2_and_http11() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let b = Baton::start(2, "0s", &tls_section(port, &cert, &key));

    // curl, HTTP/2 by ALPN: the app's answer, with what baton tells the app of the request.
    let (body, tail) = curl(
        port,
        &cert,
        "--http2",
        "/headers",
        &["-H", "Cookie: a=1", "-H", "Cookie: b=2"],
    );
    assert_eq!(tail, "200 2", "{body}");
    assert!(body.starts_with("GET /headers HTTP/1.1"), "{body}");
    for line in [
        "x-forwarded-proto: https\n",
        &format!("host: localhost:{port}\n"),
        "x-forwarded-for: 127.0.0.1\n",
        // HTTP/2 sends each cookie apart; an HTTP/1.1 app gets them as one (RFC 9113 8.2.3).
        "cookie: a=1; b=2\n",
    ] {
        assert!(body.contains(line), "{line:?} missing in {body}");
    }
    // An HTTP/2 upload of unknown length (curl -T - from a pipe: no Content-Length): its
    // body ends with its stream, and reaches the app whole.
    let mut upload = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-T", "-"])
        .arg(format!("https://localhost:{port}/echo"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    upload
        .stdin
        .take()
        .unwrap()
        .write_all(b"a body of unknown length")
        .unwrap();
    let out = upload.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a body of unknown length"
    );
    // curl, HTTP/1.1 over TLS (the narrow path serves it, as on a plain socket).
    let (body, tail) = curl(port, &cert, "--http1.1", "/headers", &[]);
    assert_eq!(tail, "200 1.1", "{body}");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    // Plain HTTP on the other socket is still plain.
    let (status, body) = get(&b.url("/headers"));
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");

    // OpenSSL: TLS 1.3, h2 chosen by ALPN, the certificate verifies.
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(["-alpn", "h2,http/1.1", "-CAfile"])
        .arg(&cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(s_client.stdin.take());
    let out = s_client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["ALPN protocol: h2", "Verify return code: 0 (ok)", "TLSv1.3"] {
        assert!(text.contains(want), "{want:?} missing in {text}");
    }
    // TLS 1.1 and older are refused (the handshake fails: no cipher was agreed).
    let old = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-tls1_1",
        ])
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&old.stdout);
    assert!(
        !old.status.success() && text.contains("Cipher is (NONE)"),
        "TLS 1.1 was accepted: {text}"
    );

    // Python's ssl, HTTP/1.1 by ALPN, keep-alive: two requests on one connection.
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile="{cert}")
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="localhost")
f = s.makefile("rb")
for path in ("/", "/headers"):
    s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path).encode())
    status = f.readline().decode().strip()
    length = 0
    while True:
        line = f.readline().decode().strip()
        if not line:
            break
        if line.lower().startswith("content-length:"):
            length = int(line.split(":")[1])
    body = f.read(length).decode()
    print(status, s.version(), s.selected_alpn_protocol(), body.splitlines()[0])
"#,
        cert = cert.display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("HTTP/1.1 200 OK TLSv1.3 http/1.1 hello from release"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("HTTP/1.1 200 OK TLSv1.3 http/1.1 GET /headers"),
        "{text}"
    );
}

/// A TLS client of our own (rustls), which keeps its connection open across a reload and
/// shows the certificate it was given.
struct Client {
    config: Arc<rustls::ClientConfig>,
    port: u16,
}

struct Conn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Client {
    fn new(port: u16, trusted: &[&Path]) -> Client {
        let config = client_config(trusted, &[]);
        Client {
            config: Arc::new(config),
            port,
        }
    }

    fn connect(&self) -> Result<Conn, String> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(self.config.clone(), name).unwrap();
        let sock = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut c = Conn {
            tls: rustls::StreamOwned::new(conn, sock),
        };
        // The handshake happens with the first request.
        c.get("/").map(|_| c)
    }
}

impl Conn {
    /// One keep-alive request: the status line.
    fn get(&mut self, path: &str) -> Result<String, String> {
        write!(self.tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.tls.read_exact(&mut byte).map_err(|e| e.to_string())?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.tls.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok(head.lines().next().unwrap_or("").to_owned())
    }

    /// The certificate the server presented.
    fn certificate(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

fn der(path: &Path) -> Vec<u8> {
    let cert: rustls::pki_types::CertificateDer =
        rustls::pki_types::pem::PemObject::from_pem_file(path).unwrap();
    cert.to_vec()
}

#[test]
fn a_reload_replaces_the_certificate_without_dropping_a_connection_and_a_broken_one_fails_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "live", &["localhost"], false);
    let first = der(&cert);
    let saved = dir.path().join("first.crt");
    std::fs::copy(&cert, &saved).unwrap();
    let port = free_port();
    let b = Baton::start(1, "0s", &tls_section(port, &cert, &key));

    // Renewed in place, as certbot does: same paths, a new certificate and key.
    let renewed = tempfile::tempdir().unwrap();
    let (new_cert, new_key) = certificate(renewed.path(), "new", &["localhost"], false);
    let second = der(&new_cert);
    let client = Client::new(port, &[&saved, &new_cert]);
    let mut open = client.connect().unwrap();
    assert_eq!(open.certificate(), first);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let out = b.cli(&["restart", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The connection that was open keeps working, with the certificate it began with.
    assert_eq!(open.get("/").unwrap(), "HTTP/1.1 200 OK");
    assert_eq!(open.certificate(), first);
    // A new one gets the new certificate.
    let fresh = client.connect().unwrap();
    assert_eq!(fresh.certificate(), second);
    let log = b.log();
    assert!(
        log.contains("certificates in force: localhost (until"),
        "{log}"
    );

    // A broken certificate, and an expired one: the reload fails and says why, and the
    // certificate in force keeps serving.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = b.cli(&["restart", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("a certificate cannot be used, nothing was changed"),
        "{err}"
    );
    assert_eq!(client.connect().unwrap().certificate(), second);

    let (expired, expired_key) = certificate(renewed.path(), "old", &["localhost"], true);
    std::fs::copy(&expired, &cert).unwrap();
    std::fs::copy(&expired_key, &key).unwrap();
    let out = b.cli(&["restart", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("expired on"), "{err}");
    assert_eq!(client.connect().unwrap().certificate(), second);
    // And the key of another certificate.
    std::fs::copy(&new_cert, &cert).unwrap();
    let out = b.cli(&["restart", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot be used with the certificate"), "{err}");
    assert_eq!(open.get("/").unwrap(), "HTTP/1.1 200 OK");
}

#[test]
fn baton_does_not_start_with_a_certificate_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "old", &["localhost"], true);
    let config = dir.path().join("app.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"expired\"\n[app]\ncommand = [\"{BATON}\", \"demo-app\", \"--port\", \"{{port}}\"]\n[control]\nsocket = \"{}\"\n{}",
            dir.path().join("c.sock").display(),
            tls_section(free_port(), &cert, &key)
        ),
    )
    .unwrap();
    let out = Command::new(BATON)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot serve HTTPS") && err.contains("expired on"),
        "{err}"
    );
    // check-config says the same before anything runs.
    let out = Command::new(BATON)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("expired on"), "{err}");
}

/// h2load's summary line: (done, succeeded, failed, errored, 2xx).
fn h2load_counts(text: &str) -> (u64, u64, u64, u64, u64) {
    let num = |line: &str, word: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or("");
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or("");
    let requests = requests.trim_start_matches("requests:");
    let codes = codes.trim_start_matches("status codes:");
    (
        num(requests, "done"),
        num(requests, "succeeded"),
        num(requests, "failed"),
        num(requests, "errored"),
        num(codes, "2xx"),
    )
}

#[test]
fn a_rolling_restart_under_https_load_fails_no_request_on_http2_or_http11() {
    let _serial = serial();
    let h2load = debian_tool("h2load", "nghttp2-client");
    let wrk = debian_tool("wrk", "wrk");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let b = Baton::start(3, "500ms", &tls_section(port, &cert, &key));
    let url = format!("https://127.0.0.1:{port}/");
    // HTTP/2: 8 connections with 10 streams each, for the whole roll.
    let h2 = Command::new(&h2load)
        .args(["-c", "8", "-m", "10", "-D", "8", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // HTTP/1.1 over TLS, keep-alive.
    let h1 = Command::new(&wrk)
        .args(["-t", "2", "-c", "8", "-d", "8s", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let out = b.cli(&["restart", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h2 = h2.wait_with_output().unwrap();
    let h1 = h1.wait_with_output().unwrap();
    let h2_text = String::from_utf8_lossy(&h2.stdout);
    let (done, succeeded, failed, errored, ok) = h2load_counts(&h2_text);
    assert!(done > 1000, "{h2_text}");
    assert_eq!((failed, errored), (0, 0), "{h2_text}");
    assert_eq!((succeeded, ok), (done, done), "{h2_text}");
    assert!(h2_text.contains("Application protocol: h2"), "{h2_text}");
    let h1_text = String::from_utf8_lossy(&h1.stdout);
    assert!(h1_text.contains("requests in"), "{h1_text}");
    for bad in ["Socket errors", "Non-2xx"] {
        assert!(!h1_text.contains(bad), "{h1_text}");
    }
    let status = b.status();
    assert!(
        status.workers.iter().all(|w| w.generation == 2),
        "{status:?}"
    );
}

#[test]
fn baton_s_stop_finishes_the_http2_streams_in_flight() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let mut b = Baton::start(1, "0s", &tls_section(port, &cert, &key));
    let slow = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(format!("https://localhost:{port}/sleep/1500"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let status = b.terminate();
    let out = slow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(status.success(), "{}", b.log());
    assert!(
        text.ends_with("200 2"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_client_that_opens_tls_and_sends_nothing_is_closed_within_header_timeout() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let extra = format!(
        "[listen]\nheader_timeout = \"1s\"\n{}",
        tls_section(port, &cert, &key)
    );
    let _b = Baton::start(1, "0s", &extra);
    // Nothing at all, and half a ClientHello: each is closed after header_timeout.
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(first).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let began = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let waited = began.elapsed();
        assert_eq!(n, 0, "{first:?}: got {:?}", &buf[..n]);
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{first:?}: closed after {waited:?}"
        );
    }
}

#[test]
fn plain_http_is_redirected_to_https_and_https_answers_carry_hsts() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let extra = format!(
        "{}redirect_http = true\nhsts = \"365d\"\n",
        tls_section(port, &cert, &key)
    );
    let b = Baton::start(1, "0s", &extra);
    // Plain HTTP: a 301 to the same host and target on the HTTPS port, no worker asked.
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.write_all(b"GET /cart?item=3 HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n")
        .unwrap();
    let answer = read_head(&mut s).unwrap();
    assert!(answer.starts_with("HTTP/1.1 301"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains(&format!(
            "location: https://shop.example:{port}/cart?item=3\r\n"
        )),
        "{answer}"
    );
    assert!(b.status().workers.iter().all(|w| w.processed == 0));
    // HTTPS, either version, either path: the app's answer with Strict-Transport-Security.
    for version in ["--http2", "--http1.1"] {
        let (body, tail) = curl(port, &cert, version, "/", &["-D", "-"]);
        assert!(tail.starts_with("200"), "{tail}");
        assert!(
            body.to_ascii_lowercase()
                .contains("strict-transport-security: max-age=31536000\r\n"),
            "{version}: {body}"
        );
    }
}

#[test]
fn an_upgrade_works_over_tls() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    let _b = Baton::start(1, "0s", &tls_section(port, &cert, &key));
    // HTTP/1.1 by ALPN (no h2 offered): a WebSocket-style upgrade, then bytes both ways
    // through the TLS connection and baton's tunnel.
    let config = Arc::new(client_config(&[&cert], &[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"ping over tls and the tunnel").unwrap();
    let mut got = [0u8; 28];
    tls.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping over tls and the tunnel");
}

/// A client that gives up on a hanging request frees its worker at once over TLS too, on
/// HTTP/1.1 (the narrow path behind TLS) and HTTP/2 (issue 36): with one worker taking one
/// request at a time, the next request is answered at once.
#[test]
fn a_client_that_leaves_frees_its_worker_over_tls_and_http2() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "a", &["localhost"], false);
    let port = free_port();
    // One worker, one request at a time (the default concurrency).
    let _b = Baton::start(1, "0s", &tls_section(port, &cert, &key));
    // HTTP/1.1 over TLS: the client sends its request and closes.
    let config = Arc::new(client_config(&[&cert], &[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /hang HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(tls);
    for version in ["--http1.1", "--http2"] {
        let started = std::time::Instant::now();
        let (body, tail) = curl(port, &cert, version, "/", &[]);
        assert!(body.contains("hello"), "{version}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{version}: answered after {:?} ({tail})",
            started.elapsed()
        );
    }
    // HTTP/2: a stream whose client gives up (curl's --max-time) is reset, and its worker
    // is free again.
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "0.5", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/hang"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "/hang answered");
    for version in ["--http2", "--http1.1"] {
        let started = std::time::Instant::now();
        let (body, _) = curl(port, &cert, version, "/", &[]);
        assert!(body.contains("hello"), "{version}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{version} after an HTTP/2 client gave up: answered after {:?}",
            started.elapsed()
        );
    }
}
