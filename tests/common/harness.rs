//! A real `baton run` (process backend) managing the bundled demo app, release directories the
//! tests deploy by swapping a `current` symlink as an operator would, and the CLI against it.
#![allow(dead_code)]

use super::config::TestConfig;
use super::procs::children_of;
use baton::control::client;
use baton::status::Snapshot;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// A test that cannot run on this machine (`why`): it says so loudly and passes, or fails
/// when BATON_E2E_REQUIRED is set, as `.ci/run` does: CI runs as root with everything a test
/// needs, so a skip there is a bug. The one way every test skips.
pub fn skip(what: &str, why: &str) {
    assert!(
        std::env::var_os("BATON_E2E_REQUIRED").is_none(),
        "the {what} test must run here but cannot: {why}"
    );
    eprintln!(
        "\n!!!!! SKIPPING the {what} test: {why} !!!!! (set BATON_E2E_REQUIRED=1 to make this an error)\n"
    );
}

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
    /// Boots and answers /health, but answers 500 to this percentage of other requests.
    Errors(u32),
    /// Like `Errors`, from this many milliseconds after it started listening.
    ErrorsAfter(u32, u64),
    /// Boots and answers /health, but leaves every other request unanswered, from this many
    /// milliseconds after it started listening.
    HangsAfter(u64),
    /// Answers every request but /health this many milliseconds later.
    Slow(u64),
    /// Fails this share (in %) of its requests, and answers them after a heavy-tailed time
    /// around this median, in milliseconds (the demo's `varied`): a real app's spread.
    FlakyAndVaried(u32, u64),
}

/// A tokio runtime for a test's own clients, beside the harness (which blocks on its own).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Debian's gunicorn (installed here when missing: the test suite installs what it needs).
pub fn gunicorn() -> String {
    debian_tool("gunicorn", "gunicorn")
}

/// A command from a Debian package, installed when missing (waiting for the dpkg lock, as
/// another test may be installing at the same moment).
pub fn debian_tool(command: &str, package: &str) -> String {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let install = format!(
            "(apt-get install -y -qq -o DPkg::Lock::Timeout=600 {package} || (apt-get update -qq -o DPkg::Lock::Timeout=600 && apt-get install -y -qq -o DPkg::Lock::Timeout=600 {package})) >/dev/null"
        );
        let ok = Command::new("sh")
            .args(["-c", &install])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not install Debian's {package} package");
    }
    command.into()
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
        let command: toml::Value = format!("c = {command}")
            .parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("the test's command is not a TOML array: {e}"))
            .remove("c")
            .unwrap_or_else(|| toml::Value::Array(Vec::new()));
        let mut cfg = TestConfig::parse(extra)
            .or("name", "test")
            .set("listen.address", addr.to_string())
            .or("app.command", command)
            .or(
                "app.directory",
                b.dir.path().join("current").display().to_string(),
            )
            .or("control.socket", control.display().to_string())
            // Every roll of these tests runs its canary phase, briefly.
            .or("canary.duration", "1s");
        // A test that shapes the pool says everything about it.
        if !cfg.has("workers") {
            cfg = cfg
                .set("workers.count", workers as i64)
                .set("workers.concurrency", 0);
        }
        let text = cfg.render();
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
            b.wait_status(
                Duration::from_secs(30),
                &format!("{workers} workers ready after baton's start"),
                |s| s.workers.iter().filter(|w| w.state == "ready").count() == workers,
            );
        } else {
            b.wait_status(
                Duration::from_secs(30),
                "baton's control socket answering after its start",
                |_| true,
            );
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
            Release::Errors(percent) => {
                std::fs::write(rel.join("demo-mode"), format!("errors {percent}%")).unwrap()
            }
            Release::HangsAfter(ms) => {
                std::fs::write(rel.join("demo-mode"), format!("hangs after {ms}ms")).unwrap()
            }
            Release::FlakyAndVaried(percent, ms) => {
                std::fs::write(rel.join("demo-mode"), format!("errors {percent}%")).unwrap();
                std::fs::write(rel.join("demo-latency"), format!("varied {ms}ms")).unwrap()
            }
            Release::Slow(ms) => {
                std::fs::write(rel.join("demo-mode"), format!("slow {ms}ms")).unwrap()
            }
            Release::ErrorsAfter(percent, ms) => std::fs::write(
                rel.join("demo-mode"),
                format!("errors {percent}% after {ms}ms"),
            )
            .unwrap(),
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
            if let Some(parent) = rel.join(name).parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
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

    pub fn wait_until(&self, limit: Duration, f: impl FnMut(&Snapshot) -> bool) -> Snapshot {
        self.wait_status(limit, "the condition", f)
    }

    /// Poll the status until `f` holds; past `limit`, fail saying `what` never happened, with
    /// the last status and baton's log.
    pub fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        mut f: impl FnMut(&Snapshot) -> bool,
    ) -> Snapshot {
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
                    "{what}: not within {limit:?}; last status: {:#?}\nlog:\n{}",
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

/// Poll `f` every 10 ms until it holds; past `limit`, fail saying `what` never happened. The
/// wait a test uses for anything it cannot read from baton's status (a file, a socket, a
/// process).
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
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

/// Read one answer head from a keep-alive connection; what came before it closed, if it did.
pub fn read_head(s: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            return Err(String::from_utf8_lossy(&head).into_owned());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The body that follows `head`, by its Content-Length (none: empty).
pub fn read_body(s: &mut TcpStream, head: &str) -> String {
    let len: usize = head
        .to_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// Read one Content-Length response from a keep-alive connection; returns its body.
pub fn read_response(s: &mut TcpStream) -> String {
    match read_head(s) {
        Ok(head) => read_body(s, &head),
        Err(partial) => format!("<closed after {partial:?}>"),
    }
}
