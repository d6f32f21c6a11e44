//! A real browser against baton's HTTPS edge: Debian's headless Chromium (installed here when
//! missing) loads a page of the demo app from a real `baton run` serving `[tls]` with a
//! certificate made here, trusted by its public key alone
//! (`--ignore-certificate-errors-spki-list`, every other check of the certificate stays on).
//! The page's script writes the protocol the browser used for it (`nextHopProtocol`) into the
//! DOM, which `--dump-dom` prints: the app's answer arrived, over HTTP/2.

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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it (what `openssl` computes for HPKP pins).
fn spki_sha256(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64 -w0",
        )
        .arg("sh")
        .arg(cert)
        .output()
        .unwrap();
    let pin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && pin.len() == 44,
        "no SPKI pin for {}: {pin} {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    pin
}

/// Chromium's `--dump-dom` of `url`, with `localhost:port` sent to 127.0.0.1 and the
/// certificate whose key has `pin` trusted: (the DOM, what Chromium said on stderr). Panics
/// with both when Chromium fails or does not finish within 90 s.
fn chromium_dom(
    chromium: &str,
    profile: &Path,
    port: u16,
    pin: &str,
    url: &str,
) -> (String, String) {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--ignore-certificate-errors-spki-list={pin}"))
        .arg(format!(
            "--host-resolver-rules=MAP localhost:{port} 127.0.0.1:{port}"
        ))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes on threads, so that a chatty stderr never blocks the browser.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (dom, log) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium ({status:?}) did not load {url}:\nstdout:\n{dom}\nstderr:\n{log}"
    );
    (dom, log)
}

#[test]
fn chromium_loads_a_page_over_https_by_http2() {
    let chromium = debian_tool("chromium", "chromium");
    debian_tool("openssl", "openssl");
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "site", &["localhost"], false);
    let port = free_port();
    let b = Baton::start(2, "0s", &tls_section(port, &cert, &key));
    let pin = spki_sha256(&cert);

    let profile = dir.path().join("profile");
    let url = format!("https://localhost:{port}/page");
    let (dom, log) = chromium_dom(&chromium, &profile, port, &pin, &url);
    let context = || {
        format!(
            "DOM:\n{dom}\nchromium's stderr:\n{log}\nbaton log:\n{}",
            b.log()
        )
    };
    // The app's answer, which the app got over baton's TLS edge...
    assert!(
        dom.contains(r#"<p id="release">hello from release r1</p>"#),
        "{}",
        context()
    );
    assert!(
        dom.contains(r#"<p id="forwarded">x-forwarded-proto: https</p>"#),
        "{}",
        context()
    );
    // ...and the page's script ran in the browser, which says it spoke HTTP/2.
    assert!(
        dom.contains(r#"<p id="protocol">protocol: h2</p>"#),
        "{}",
        context()
    );

    // The pin is what made the certificate trusted: with another key's pin, Chromium refuses
    // the self-signed certificate (its error page instead of the app's).
    let (other, _) = certificate(dir.path(), "other", &["localhost"], false);
    let other_pin = spki_sha256(&other);
    assert_ne!(other_pin, pin);
    let (dom, log) = chromium_dom(
        &chromium,
        &dir.path().join("profile2"),
        port,
        &other_pin,
        &url,
    );
    // Chromium up to 1xx dumped its error page's DOM; newer headless builds (156 in Debian
    // 12's security updates) dump nothing and say "Page load failed: <error>" on stderr. Either
    // way the error must be this one, and no byte of the app's page may come out.
    let refused = dom.contains("net::ERR_CERT_AUTHORITY_INVALID")
        || (dom.trim().is_empty()
            && log.contains("Page load failed: net::ERR_CERT_AUTHORITY_INVALID"));
    assert!(
        refused && !dom.contains("hello from release") && !dom.contains("protocol: h2"),
        "an untrusted certificate was accepted, or another error came:\n{dom}\n{log}"
    );
}
