//! Test harness: a real `baton run` (process backend) managing the bundled demo app, a real
//! HTTP load generator with keep-alive connections, and release directories the tests deploy
//! by swapping a `current` symlink, as an operator would.
#![allow(dead_code)]

use baton::control::client;
use baton::status::Snapshot;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// Tests that put load on the machine run one at a time, so timings stay meaningful on 2 cores.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a release behaves at boot (the demo app reads `demo-mode` in its directory).
#[derive(Clone, Copy, Debug)]
pub enum Release {
    Good,
    ExitsAtBoot,
    NeverReady,
    /// Serves, then crashes half a second later.
    CrashesAfterReady,
    /// Hands its port to a stray process in another process group.
    StrayOnPort,
    /// Serves, then crashes this many milliseconds after it started listening.
    CrashesSoonAfterReady(u64),
}

/// Debian's gunicorn (installed here when missing: the test suite installs what it needs).
pub fn gunicorn() -> String {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        if Command::new("gunicorn").arg("--version").output().is_ok() {
            return;
        }
        let ok = Command::new("sh")
            .args([
                "-c",
                "(apt-get install -y -qq gunicorn || (apt-get update -qq && apt-get install -y -qq gunicorn)) >/dev/null",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not install Debian's gunicorn package");
    });
    "gunicorn".into()
}

pub struct Baton {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub control: PathBuf,
    pub config: PathBuf,
    pub child: Child,
    releases: u32,
}

impl Baton {
    /// Start `baton run` with `workers` demo workers taking `boot` to boot, plus extra config
    /// sections (TOML) appended as given, and wait until all workers are ready.
    pub fn start(workers: usize, boot: &str, extra: &str) -> Baton {
        Self::start_release(workers, boot, extra, Release::Good, true)
    }

    /// Like `start`, with the first release of the given kind; waits for all workers to be
    /// ready only when `wait` is set.
    pub fn start_release(
        workers: usize,
        boot: &str,
        extra: &str,
        release: Release,
        wait: bool,
    ) -> Baton {
        let command =
            format!(r#"["{BATON}", "demo-app", "--port", "{{port}}", "--boot-time", "{boot}"]"#);
        Self::start_command(workers, &command, extra, wait, |b| b.deploy(release))
    }

    /// `baton run` with `command` (a TOML array) as the app, the first release made by
    /// `deploy`; waits until `workers` are ready when `wait` is set.
    pub fn start_command(
        workers: usize,
        command: &str,
        extra: &str,
        wait: bool,
        deploy: impl FnOnce(&mut Baton),
    ) -> Baton {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let control = dir.path().join("control.sock");
        let config = dir.path().join("app.toml");
        let mut b = Baton {
            dir,
            addr,
            control: control.clone(),
            config: config.clone(),
            child: Command::new("true").spawn().unwrap(),
            releases: 0,
        };
        deploy(&mut b);
        let has_workers = extra.contains("[workers]");
        let workers_section = if has_workers {
            String::new()
        } else {
            format!("[workers]\ncount = {workers}\nconcurrency = 0\n")
        };
        // A [listen] section in `extra` gets the address; otherwise one is added here.
        let (listen_section, extra) = if extra.contains("[listen]\n") {
            (
                String::new(),
                extra.replace("[listen]\n", &format!("[listen]\naddress = \"{addr}\"\n")),
            )
        } else {
            (
                format!("[listen]\naddress = \"{addr}\"\n"),
                extra.to_owned(),
            )
        };
        let text = format!(
            r#"name = "test"
{listen_section}[app]
command = {command}
directory = "{current}"
[control]
socket = "{control}"
{workers_section}{extra}
"#,
            current = b.dir.path().join("current").display(),
            control = control.display(),
        );
        std::fs::write(&config, text).unwrap();
        b.child = Command::new(BATON)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(b.dir.path().join("baton.log")).unwrap())
            .spawn()
            .unwrap();
        if wait {
            b.wait_until(Duration::from_secs(30), |s| {
                s.workers.iter().filter(|w| w.state == "ready").count() == workers
            });
        } else {
            b.wait_until(Duration::from_secs(30), |_| true);
        }
        b
    }

    /// Make a new release directory and point `current` at it.
    pub fn deploy(&mut self, release: Release) {
        self.releases += 1;
        let rel = self.dir.path().join(format!("releases/r{}", self.releases));
        std::fs::create_dir_all(&rel).unwrap();
        match release {
            Release::Good => {}
            Release::ExitsAtBoot => std::fs::write(rel.join("demo-mode"), "exit").unwrap(),
            Release::NeverReady => std::fs::write(rel.join("demo-mode"), "hang").unwrap(),
            Release::CrashesAfterReady => std::fs::write(rel.join("demo-mode"), "crash").unwrap(),
            Release::StrayOnPort => std::fs::write(rel.join("demo-mode"), "stray").unwrap(),
            Release::CrashesSoonAfterReady(ms) => {
                std::fs::write(rel.join("demo-mode"), format!("crash {ms}ms")).unwrap()
            }
        }
        let link = self.dir.path().join("current");
        let tmp = self.dir.path().join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&rel, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
    }

    /// Make a new release directory holding `files` and point `current` at it.
    pub fn deploy_files(&mut self, files: &[(&str, &str)]) {
        self.releases += 1;
        let rel = self.dir.path().join(format!("releases/r{}", self.releases));
        std::fs::create_dir_all(&rel).unwrap();
        for (name, text) in files {
            std::fs::write(rel.join(name), text).unwrap();
        }
        let link = self.dir.path().join("current");
        let tmp = self.dir.path().join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&rel, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
    }

    pub fn release_name(&self) -> String {
        format!("r{}", self.releases)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baton.log")).unwrap_or_default()
    }

    pub fn status(&self) -> Snapshot {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(status_async(&self.control))
            .unwrap_or_else(|e| panic!("status: {e}\nbaton log:\n{}", self.log()))
    }

    pub fn wait_until(&self, limit: Duration, mut f: impl FnMut(&Snapshot) -> bool) -> Snapshot {
        let start = Instant::now();
        loop {
            if let Ok(Some(code)) = self.child_status() {
                panic!("baton exited ({code}) while waiting\nlog:\n{}", self.log());
            }
            if let Ok(s) = self.try_status()
                && f(&s)
            {
                return s;
            }
            if start.elapsed() > limit {
                panic!(
                    "condition not met within {limit:?}; last status: {:#?}\nlog:\n{}",
                    self.try_status().ok(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn child_status(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // try_wait needs &mut; peek through /proc instead.
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(if stat.contains(") Z ") {
            Some(std::os::unix::process::ExitStatusExt::from_raw(0))
        } else {
            None
        })
    }

    pub fn try_status(&self) -> Result<Snapshot, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(status_async(&self.control))
    }

    /// Run a baton client command against this instance (e.g. `["restart", "--wait"]`).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BATON)
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()
            .unwrap()
    }

    /// Worker processes alive right now (children of baton), counted from /proc.
    pub fn child_processes(&self) -> usize {
        children_of(self.child.id())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.child.wait().unwrap()
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn status_async(control: &Path) -> Result<Snapshot, String> {
    let reply = client::request(control, http::Method::GET, "/status")
        .await
        .map_err(|e| e.to_string())?;
    let text = reply.text().await.map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

pub fn children_of(pid: u32) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(1) == Some(&pid.to_string().as_str()) && fields.first() != Some(&"Z") {
                n += 1;
            }
        }
    }
    n
}

/// What the load generator saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// Requests resent on a new connection because the server had closed the idle keep-alive
    /// connection they were sent on (what every HTTP client does, RFC 9112 9.3.1).
    pub resent: u64,
    /// Connections the server closed between requests.
    pub closed_by_server: u64,
    pub errors: Vec<String>,
    /// Bodies seen, to tell which release answered.
    pub bodies_with: Vec<(String, u64)>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<LoadReport>>,
}

impl Load {
    /// `connections` keep-alive connections, each sending GET `path` back to back; a request
    /// fails on a transport error, a non-200 answer, or no answer within `timeout`.
    pub fn start(addr: SocketAddr, connections: usize, path: &str, timeout: Duration) -> Load {
        Self::start_with(addr, connections, path, timeout, false)
    }

    /// Like `start`, but a GET on a reused keep-alive connection that the server closed before
    /// answering is sent again on a new connection (counted in `resent`), as browsers and
    /// HTTP libraries do. Only for a restart of the manager itself, which must close them.
    pub fn start_resending(
        addr: SocketAddr,
        connections: usize,
        path: &str,
        timeout: Duration,
    ) -> Load {
        Self::start_with(addr, connections, path, timeout, true)
    }

    fn start_with(
        addr: SocketAddr,
        connections: usize,
        path: &str,
        timeout: Duration,
        resend: bool,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                let path = path.to_owned();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(connection_loop(addr, path, stop, timeout, resend))
                })
            })
            .collect();
        Load { stop, handles }
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for h in self.handles {
            let r = h.join().unwrap();
            total.ok += r.ok;
            total.failed += r.failed;
            total.resent += r.resent;
            total.closed_by_server += r.closed_by_server;
            total.errors.extend(r.errors);
        }
        total
    }
}

enum Resend {
    /// The connection was closed before any byte of the answer: safe to send again.
    Closed(String),
    No(String),
}

async fn connection_loop(
    addr: SocketAddr,
    path: String,
    stop: Arc<AtomicBool>,
    timeout: Duration,
    resend_allowed: bool,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    // Answers received on the current connection.
    let mut answered = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if sender.is_none() {
            answered = 0;
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                    Ok((tx, conn)) => {
                        tokio::spawn(conn);
                        sender = Some(tx);
                    }
                    Err(e) => {
                        report.failed += 1;
                        report.errors.push(format!("handshake: {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    report.failed += 1;
                    report.errors.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(tx) = sender.as_mut() else { continue };
        if tx.ready().await.is_err() {
            // The server closed the connection between requests (after `Connection: close`):
            // no request was lost; open a new one as any client does.
            report.closed_by_server += 1;
            sender = None;
            continue;
        }
        let req = hyper::Request::get(path.as_str())
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let attempt = async {
            let resp = tx.send_request(req).await.map_err(|e| {
                if e.is_canceled() || e.is_incomplete_message() {
                    Resend::Closed(format!("request: {e}"))
                } else {
                    Resend::No(format!("request: {e}"))
                }
            })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Resend::No(format!("body: {e}")))?
                .to_bytes();
            if status != 200 {
                return Err(Resend::No(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                )));
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => {
                report.ok += 1;
                answered += 1;
            }
            Ok(Err(Resend::Closed(_))) if resend_allowed && answered > 0 => {
                report.resent += 1;
                sender = None;
            }
            Ok(Err(Resend::Closed(e) | Resend::No(e))) => {
                report.failed += 1;
                if report.errors.len() < 20 {
                    report.errors.push(e);
                }
                sender = None;
            }
            Err(_) => {
                report.failed += 1;
                report.errors.push(format!("no answer within {timeout:?}"));
                sender = None;
            }
        }
    }
    report
}

/// Sample the number of worker processes in the background, keeping the peak.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<usize>,
}

impl PeakSampler {
    pub fn start(baton_pid: u32) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::SeqCst) {
                peak = peak.max(children_of(baton_pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        PeakSampler { stop, handle }
    }

    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// One GET, returning status and body.
pub fn get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let uri: hyper::Uri = url.parse().unwrap();
        let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
        let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(uri.path())
            .header("host", addr)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}
