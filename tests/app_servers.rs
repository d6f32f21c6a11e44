//! The judge holds whatever serves the app: four real app servers (Debian's gunicorn and
//! uvicorn, Node, Debian's Puma), each behind baton with its default readiness and settle, at
//! two traffic levels (4 clients pacing a request each 50 ms, and 16 clients as fast as the
//! servers go). At each: an equal release rolls through with no failed request and no false
//! "worse"; a release that answers 500 to a fifth of its pages is refused before the roll ends,
//! the old workers serving; and (at the heavier level, where the canary has answers enough to
//! time) a release 30 ms slower per page is refused for its latency.
//!
//! The servers are installed from Debian's packages when missing, as the suite installs what it
//! needs. Each app reads a `mode` file in its release directory ("errors 20", "slow 30"), which
//! touches every path but the readiness path `/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::time::{Duration, Instant};

const WSGI: &str = r#"import os, random, time
MODE = open("mode").read().split() if os.path.exists("mode") else []

def app(environ, start_response):
    status = 200
    if environ.get("PATH_INFO", "/") != "/" and MODE:
        if MODE[0] == "errors" and random.random() * 100 < float(MODE[1]):
            status = 500
        if MODE[0] == "slow":
            time.sleep(float(MODE[1]) / 1000)
    body = ("%s %d\n" % (os.getcwd(), status)).encode()
    start_response("%d X" % status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

const ASGI: &str = r#"import asyncio, os, random
MODE = open("mode").read().split() if os.path.exists("mode") else []

async def app(scope, receive, send):
    status = 200
    if scope["path"] != "/" and MODE:
        if MODE[0] == "errors" and random.random() * 100 < float(MODE[1]):
            status = 500
        if MODE[0] == "slow":
            await asyncio.sleep(float(MODE[1]) / 1000)
    body = ("%s %d\n" % (os.getcwd(), status)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"#;

const NODE: &str = r#"const http = require("http");
const fs = require("fs");
let mode = [];
try { mode = fs.readFileSync("mode", "utf8").trim().split(/\s+/); } catch (e) {}
http.createServer((req, res) => {
  let status = 200;
  const answer = () => {
    const body = process.cwd() + " " + status + "\n";
    res.writeHead(status, { "content-type": "text/plain", "content-length": Buffer.byteLength(body) });
    res.end(body);
  };
  if (req.url !== "/" && mode[0] === "errors" && Math.random() * 100 < parseFloat(mode[1])) status = 500;
  if (req.url !== "/" && mode[0] === "slow") setTimeout(answer, parseFloat(mode[1])); else answer();
}).listen(parseInt(process.env.PORT, 10), "127.0.0.1");
"#;

const RACK: &str = r##"mode = File.exist?("mode") ? File.read("mode").split : []
run lambda { |env|
  status = 200
  if env["PATH_INFO"] != "/" && !mode.empty?
    status = 500 if mode[0] == "errors" && rand * 100 < mode[1].to_f
    sleep(mode[1].to_f / 1000) if mode[0] == "slow"
  end
  [status, { "content-type" => "text/plain" }, ["#{Dir.pwd} #{status}\n"]]
}
"##;

/// One app server: its command (TOML array) and its app's file.
struct Server {
    name: &'static str,
    command: String,
    file: (&'static str, &'static str),
}

fn gunicorn_server() -> Server {
    Server {
        name: "gunicorn (sync)",
        command: format!(
            r#"["{}", "--bind", "127.0.0.1:{{port}}", "--workers", "1", "app:app"]"#,
            gunicorn()
        ),
        file: ("app.py", WSGI),
    }
}

fn uvicorn_server() -> Server {
    // Debian's package has no `uvicorn` command: the module runs under Debian's Python.
    let found = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import uvicorn"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        debian_tool("baton-test-needs-python3-uvicorn", "python3-uvicorn");
    }
    Server {
        name: "uvicorn",
        command: r#"["/usr/bin/python3", "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--lifespan", "off", "--no-access-log", "app:app"]"#.into(),
        file: ("app.py", ASGI),
    }
}

fn node_server() -> Server {
    Server {
        name: "Node",
        command: format!(r#"["{}", "app.js"]"#, debian_tool("node", "nodejs")),
        file: ("app.js", NODE),
    }
}

/// Puma with `threads` ("1:1": one thread, for an app that is not thread-safe; "" for Puma's
/// default, 0 to 5).
fn puma_server(threads: &str) -> Server {
    let threads = if threads.is_empty() {
        String::new()
    } else {
        format!(r#""--threads", "{threads}", "#)
    };
    Server {
        name: "Puma",
        command: format!(
            r#"["{}", "--bind", "tcp://127.0.0.1:{{port}}", {threads}"--quiet", "config.ru"]"#,
            debian_tool("puma", "puma")
        ),
        file: ("config.ru", RACK),
    }
}

/// A traffic level: how the clients send.
#[derive(Clone, Copy)]
enum Level {
    /// 4 clients, each resting 50 ms after every answer (at most 80 requests a second).
    Light,
    /// 16 clients, back to back.
    Heavy,
}

impl Level {
    fn start(self, baton: &Baton) -> Load {
        match self {
            Level::Light => Load::paced(
                baton.addr,
                4,
                "/page",
                Duration::from_secs(10),
                Duration::from_millis(50),
            ),
            Level::Heavy => Load::start(baton.addr, 16, "/page", Duration::from_secs(10)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Light => "4 paced clients",
            Level::Heavy => "16 clients",
        }
    }
}

/// A roll onto `mode` ("" for an equal release) under `level`: whether `restart --wait`
/// succeeded, its stderr, and the load's report.
fn roll(
    baton: &mut Baton,
    server: &Server,
    level: Level,
    mode: &str,
) -> (bool, String, LoadReport) {
    baton.deploy_files(&[server.file, ("mode", mode)]);
    let load = level.start(baton);
    std::thread::sleep(Duration::from_millis(500));
    let began = Instant::now();
    let out = baton.cli(&["restart", "--wait"]);
    let took = began.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    println!(
        "{} under {}, release {:?}: restart --wait {} in {:.1}s; {} of {} requests failed; {}",
        server.name,
        level.name(),
        if mode.is_empty() { "equal" } else { mode },
        if out.status.success() { "ok" } else { "failed" },
        took.as_secs_f64(),
        report.failed,
        report.ok + report.failed,
        stderr.lines().last().unwrap_or("")
    );
    (out.status.success(), stderr, report)
}

/// After a refused roll: the old generation alone serves, every worker of it ready.
fn assert_old_generation_serves(baton: &Baton, old: u64, workers: usize, what: &str) {
    let s = baton.status();
    let ready: Vec<_> = s
        .workers
        .iter()
        .filter(|w| w.state == "ready" && w.generation == old)
        .collect();
    assert_eq!(ready.len(), workers, "{what}: {s:#?}");
    assert!(s.resisting_deployment_error.is_some(), "{what}: {s:#?}");
}

/// What baton's log says of its canaries: the figures behind a verdict.
fn judged(baton: &Baton) -> String {
    baton
        .log()
        .lines()
        .filter(|l| l.contains("canary"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn judge_holds_behind(server: &Server) {
    let _serial = serial();
    const WORKERS: usize = 3;
    let mut baton = Baton::start_command(WORKERS, &server.command, "", true, |b| {
        b.deploy_files(&[server.file, ("mode", "")])
    });
    for level in [Level::Light, Level::Heavy] {
        let what = format!("{} under {}", server.name, level.name());
        // An equal release: rolls, nobody sees an error, no false "worse".
        let (ok, stderr, report) = roll(&mut baton, server, level, "");
        assert!(ok, "{what}: an equal release was refused: {stderr}");
        assert_eq!(report.failed, 0, "{what}: {report:?}");
        let good = baton.status().generation;

        // A fifth of its pages fail: refused before the roll ends, the old workers serve.
        let (ok, stderr, report) = roll(&mut baton, server, level, "errors 20");
        assert!(
            !ok,
            "{what}: a release failing 20 % of its pages rolled out"
        );
        assert!(stderr.contains("canary judge"), "{what}: {stderr}");
        assert_old_generation_serves(&baton, good, WORKERS, &what);
        // What visitors saw: the errors the canary served until the evidence was strong.
        assert!(report.failed <= 60, "{what}: {report:?}");

        if let Level::Heavy = level {
            // 30 ms slower on every page: refused for its latency, before the roll ends.
            let (ok, stderr, report) = roll(&mut baton, server, level, "slow 30");
            assert!(
                !ok,
                "{what}: a release 30 ms slower rolled out\n{}",
                judged(&baton)
            );
            assert!(
                stderr.contains("slower beyond canary.latency_tolerance"),
                "{what}: {stderr}"
            );
            assert_old_generation_serves(&baton, good, WORKERS, &what);
            assert_eq!(report.failed, 0, "{what}: {report:?}");
        }
    }
}

#[test]
fn the_judge_holds_behind_gunicorn() {
    judge_holds_behind(&gunicorn_server());
}

#[test]
fn the_judge_holds_behind_uvicorn() {
    judge_holds_behind(&uvicorn_server());
}

#[test]
fn the_judge_holds_behind_node() {
    judge_holds_behind(&node_server());
}

#[test]
fn the_judge_holds_behind_puma() {
    judge_holds_behind(&puma_server(""));
}

/// Requests of `clients` keep-alive connections sending GET /page back to back for `time`,
/// after `warm` of the same: how many were answered, and how many of those took longer than
/// `over`.
fn answer_times(
    addr: std::net::SocketAddr,
    clients: usize,
    warm: Duration,
    time: Duration,
    over: Duration,
) -> (u64, u64) {
    use std::io::{Read, Write};
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let began = Instant::now();
                let (mut answered, mut slow) = (0u64, 0u64);
                let mut buf = vec![0u8; 4096];
                while began.elapsed() < warm + time {
                    let t = Instant::now();
                    s.write_all(b"GET /page HTTP/1.1\r\nHost: app\r\n\r\n")
                        .unwrap();
                    // The app's answers are small: the head and body end with the body's newline.
                    let mut got = Vec::new();
                    loop {
                        let n = s.read(&mut buf).unwrap();
                        assert!(n > 0, "baton closed the connection");
                        got.extend_from_slice(&buf[..n]);
                        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
                            && got[end + 4..].ends_with(b"\n")
                        {
                            break;
                        }
                    }
                    if began.elapsed() > warm {
                        answered += 1;
                        slow += u64::from(t.elapsed() > over);
                    }
                }
                (answered, slow)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(a, s), (a2, s2)| (a + a2, s + s2))
}

/// Puma keeps a thread waiting 200 ms on each kept-alive connection for its next request: a
/// proxy that spreads a worker's requests over more connections than it has threads makes
/// them wait for it (single-threaded Puma behind baton served 15 requests a second). baton
/// finds that out from the first such wait and gives each request a connection of its own.
#[test]
fn a_single_threaded_puma_serves_without_waiting_on_its_kept_connections() {
    let _serial = serial();
    let server = puma_server("1:1");
    let baton = Baton::start_command(3, &server.command, "", true, |b| {
        b.deploy_files(&[server.file, ("mode", "")])
    });
    let (answered, slow) = answer_times(
        baton.addr,
        8,
        Duration::from_secs(2),
        Duration::from_secs(3),
        Duration::from_millis(100),
    );
    println!(
        "single-threaded Puma x 3 behind baton, 8 clients: {answered} answers in 3 s, {slow} over 100 ms"
    );
    assert!(answered > 0);
    assert_eq!(
        slow, 0,
        "answers that waited for a thread held on another connection"
    );
}
