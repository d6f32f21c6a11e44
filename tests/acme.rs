//! ACME against a real CA: Debian's `pebble` (Let's Encrypt's test server), with
//! `pebble-challtestsrv` as its DNS (every name is 127.0.0.1), validating by TLS-ALPN-01 on
//! baton's own HTTPS socket. Certificates live 60 s here, so a renewal is seen in seconds.
//!
//! baton starts with no certificate, obtains one, serves it (a client that trusts only
//! pebble's root gets the app), renews it, keeps serving it while pebble is down during a
//! renewal, obtains again once pebble is back (a new pebble forgets every account: baton makes
//! a new one), and after a restart serves the certificate it kept, with pebble down.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A CA and a certificate it signed for pebble's own HTTPS (its directory), as PEM files.
fn pebble_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test CA of pebble's directory");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("pebble-ca.pem"),
        dir.join("pebble.crt"),
        dir.join("pebble.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// pebble and its DNS, stopped on drop.
struct Pebble {
    ca: Child,
    dns: Child,
    config: PathBuf,
    dns_port: u16,
    log: PathBuf,
}

impl Pebble {
    fn start(dir: &Path, port: u16, tls_port: u16) -> Pebble {
        debian_tool("pebble", "pebble");
        let (_, cert, key) = pebble_tls(dir);
        let config = dir.join("pebble.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{}",
                "certificate": "{}", "privateKey": "{}", "httpPort": {}, "tlsPort": {tls_port},
                "ocspResponderURL": "", "externalAccountBindingRequired": false,
                "certificateValidityPeriod": 60}}}}"#,
                free_port(),
                cert.display(),
                key.display(),
                free_port(),
            ),
        )
        .unwrap();
        let dns_port = free_port();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut p = Pebble {
            ca: Command::new("true").spawn().unwrap(),
            dns,
            config,
            dns_port,
            log: dir.join("pebble.log"),
        };
        p.ca = p.spawn_ca();
        wait_for(Duration::from_secs(20), "pebble listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        p
    }

    fn spawn_ca(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            // Validate at once, and never refuse a nonce: the test is about baton, not about
            // pebble's ways of testing clients' patience.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn stop_ca(&mut self) {
        let _ = self.ca.kill();
        let _ = self.ca.wait();
    }

    fn start_ca(&mut self) {
        self.ca = self.spawn_ca();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop_ca();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The certificate a new TLS client of `port` gets for `name`: (serial, issuer), or None
/// when the handshake fails.
fn served(port: u16, name: &str) -> Option<(String, String)> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -serial -issuer"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let serial = text.lines().find_map(|l| l.strip_prefix("serial="))?;
    let issuer = text.lines().find_map(|l| l.strip_prefix("issuer="))?;
    Some((serial.to_owned(), issuer.trim().to_owned()))
}

/// curl over HTTPS trusting only `root`: the app's answer, or curl's error.
fn curl(port: u16, name: &str, root: &Path) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .arg(format!("https://{name}:{port}/"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn baton_obtains_serves_and_renews_its_certificate_from_pebble() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (acme_port, https_port) = (free_port(), free_port());
    let mut pebble = Pebble::start(dir.path(), acme_port, https_port);
    let storage = dir.path().join("acme");
    let tls = format!(
        "[tls]\naddress = \"127.0.0.1:{https_port}\"\n\
         acme = {{ domains = [\"shop.test\"], contact = [\"mailto:ops@shop.test\"], \
         directory = \"https://localhost:{acme_port}/dir\", directory_ca = \"{}\", \
         storage = \"{}\", renew_before = \"50s\" }}\n",
        dir.path().join("pebble-ca.pem").display(),
        storage.display()
    );

    // Start with no certificate: obtained within seconds, from pebble's intermediate.
    let b = Baton::start(1, "0s", &tls);
    let mut first = None;
    wait_for(Duration::from_secs(60), "a certificate from pebble", || {
        first = served(https_port, "shop.test");
        first.is_some()
    });
    let (serial1, issuer) = first.unwrap();
    assert!(issuer.contains("Pebble Intermediate"), "{issuer}");
    // Served from the moment it is in force; its journal line follows.
    wait_for(
        Duration::from_secs(10),
        "the certificate's log line",
        || {
            b.log()
                .contains("certificate obtained from https://localhost")
        },
    );
    assert!(
        b.log().contains("3d7e9a1c5b2f4e8d9a6c1f0b7e3d5a29"),
        "{}",
        b.log()
    );

    // A client that trusts pebble's root alone (from its management API) gets the app.
    let root = dir.path().join("pebble-root.pem");
    let mgmt = std::fs::read_to_string(&pebble.config).unwrap();
    let mgmt_port: u16 = mgmt
        .split("managementListenAddress\": \"127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    // Asked until it answers (pebble may open its management listener a moment after the
    // ACME one); pebble's own log is in the message if it never does.
    let asked = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(dir.path().join("pebble-ca.pem"))
            .arg(format!("https://localhost:{mgmt_port}/roots/0"))
            .arg("-o")
            .arg(&root)
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "pebble's roots: {}\npebble's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&pebble.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let answer = curl(https_port, "shop.test", &root).unwrap();
    assert!(answer.starts_with("hello from release r1"), "{answer}");

    // Kept readable by baton alone.
    use std::os::unix::fs::PermissionsExt;
    for f in ["account.json", "key.pem", "certificate.pem"] {
        let mode = std::fs::metadata(storage.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f}: {mode:o}");
    }
    assert_eq!(
        std::fs::metadata(&storage).unwrap().permissions().mode() & 0o077,
        0
    );

    // Renewed 10 s after issue (renew_before = 50s of 60s).
    let mut second = None;
    wait_for(Duration::from_secs(40), "a renewal", || {
        second = served(https_port, "shop.test").filter(|(s, _)| *s != serial1);
        second.is_some()
    });
    let (serial2, _) = second.unwrap();
    // The new certificate serves from the moment it is in force; its journal line follows.
    wait_for(Duration::from_secs(10), "the renewal's log line", || {
        b.log().contains("certificate renewed from")
    });

    // pebble down at the next renewal: it fails, is logged, and the certificate in force
    // keeps serving.
    pebble.stop_ca();
    wait_for(Duration::from_secs(40), "a failed renewal", || {
        b.log().contains("cannot renew a certificate for shop.test")
    });
    assert!(
        b.log().contains("b5f1c8e2a9d34f7b8e6a2c0d9f4b1e73"),
        "{}",
        b.log()
    );
    assert!(
        b.log().contains("keeps serving; next attempt in"),
        "{}",
        b.log()
    );
    assert_eq!(served(https_port, "shop.test").unwrap().0, serial2);
    let answer = curl(https_port, "shop.test", &root).unwrap();
    assert!(answer.starts_with("hello from release r1"), "{answer}");

    // pebble back (a new one: new roots, no accounts): baton makes a new account and renews.
    pebble.start_ca();
    let mut third = None;
    wait_for(
        Duration::from_secs(60),
        "a renewal once pebble is back",
        || {
            third = served(https_port, "shop.test").filter(|(s, _)| *s != serial2);
            third.is_some()
        },
    );
    let (serial3, _) = third.unwrap();
    assert!(
        b.log().contains("the CA no longer knows the account"),
        "{}",
        b.log()
    );
    assert_eq!(b.log().matches("ACME account").count(), 2, "{}", b.log());
    drop(b);

    // A restart of baton serves the kept certificate at once, with pebble down.
    pebble.stop_ca();
    let b = Baton::start(1, "0s", &tls);
    assert_eq!(
        served(https_port, "shop.test").map(|(s, _)| s),
        Some(serial3.clone()),
        "{}",
        b.log()
    );
}
