//! Issue 26's browser check of `[static]` (SPEC scenario 16): a real headless Chromium loads a
//! page whose HTML references its release's fingerprinted stylesheet and script, over and over,
//! while baton rolls r1 → r2 → r1, and not one load misses an asset, and not one asset request
//! reaches a worker.
//!
//! The page is the demo app's `/shop` (src/demo.rs): it links the names in its release's
//! `shop-assets` file under `/assets/`, and answers 500 (and says so on its stderr, which baton
//! logs) to any `/assets/` request that reaches it. Each release's stylesheet sets a custom
//! property to its own name, its script writes its own name into the page.
//!
//! One Chromium session runs a driver page (a static file of the release, same origin as
//! `/shop`) that loads `/shop` in an iframe, one load after another, and after each load reads
//! the frame: the release that rendered it, the stylesheet applied (`getComputedStyle`) and
//! the text the script wrote. It posts that to a listener of this test, whose answer says go on
//! or stop. The assets are served `no-cache` here (`immutable` matches nothing), so that every
//! load asks baton for both files again (a revalidation baton answers 304 only when it has the
//! file): with the default year of caching, Chromium asks once per name (4 asset requests in
//! 600 loads) and a roll could lose a file unseen. baton's JSON access log shows that every
//! load's assets were asked for and that baton, not a worker, answered each.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fingerprint of each release's assets.
const R1: &str = "aaaa1111";
const R2: &str = "bbbb2222";

/// Loads `/shop?load=N` in an iframe, one after another, and posts what each frame shows to
/// `http://127.0.0.1:REPORT/` (`?report=REPORT`); stops when the answer is `stop`.
const DRIVER: &str = r#"<!doctype html>
<html><head><title>driver</title></head><body>
<p id="status">starting</p>
<script>
const report = "http://127.0.0.1:" + new URLSearchParams(location.search).get("report") + "/";
function load(i) {
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    const timer = setTimeout(() => {
      frame.remove();
      resolve({ i, error: "no load event within 10 s" });
    }, 10000);
    frame.onload = () => {
      clearTimeout(timer);
      const d = frame.contentDocument, w = frame.contentWindow;
      const p = d.getElementById("release");
      const s = d.getElementById("script");
      resolve({
        i,
        release: p ? p.textContent : null,
        stylesheet: p ? w.getComputedStyle(p).getPropertyValue("--stylesheet").trim() : null,
        script: s ? s.textContent : null,
        assets: Array.from(d.querySelectorAll("link[rel=stylesheet], script[src]"),
          (e) => e.getAttribute("href") || e.getAttribute("src")),
        resources: w.performance.getEntriesByType("resource")
          .map((e) => [new URL(e.name).pathname, e.responseStatus]),
        page: p ? null : d.documentElement.outerHTML.slice(0, 400),
      });
      frame.remove();
    };
    frame.src = "/shop?load=" + i;
    document.body.appendChild(frame);
  });
}
(async () => {
  for (let i = 0; ; i++) {
    const result = await load(i);
    let answer = "";
    try {
      const r = await fetch(report, { method: "POST", body: JSON.stringify(result) });
      answer = await r.text();
    } catch (e) {}
    document.getElementById("status").textContent = "load " + i;
    if (answer === "stop") break;
  }
})();
</script>
</body></html>
"#;

/// A release whose `/shop` uses `app-HASH.css` and `app-HASH.js`.
fn release(hash: &str) -> Vec<(String, String)> {
    vec![
        (
            "shop-assets".into(),
            format!("app-{hash}.css\napp-{hash}.js\n"),
        ),
        (
            format!("public/assets/app-{hash}.css"),
            format!("#release {{ --stylesheet: app-{hash}; color: rgb(0, 128, 0) }}\n"),
        ),
        (
            format!("public/assets/app-{hash}.js"),
            format!("document.getElementById(\"script\").textContent = \"app-{hash}.js ran\";\n"),
        ),
        ("public/assets/driver.html".into(), DRIVER.into()),
    ]
}

/// One page load, as the driver saw it, and when its report arrived.
struct Load {
    at: Instant,
    report: Value,
}

/// Listens for the driver's reports; answers `stop` once `stop` is set.
fn listen_reports(
    listener: TcpListener,
    loads: Arc<Mutex<Vec<Load>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0;
            let mut line = String::new();
            let mut request = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if request.is_empty() {
                    request = line.clone();
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if !request.starts_with("POST ") || reader.read_exact(&mut body).is_err() {
                continue;
            }
            // Not JSON: kept as the text, which the checks count as a failed load.
            let report = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            loads.lock().unwrap().push(Load {
                at: Instant::now(),
                report,
            });
            let answer = if stop.load(Ordering::SeqCst) {
                "stop"
            } else {
                "go"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    })
}

/// Headless Chromium, in a process group of its own, ended (the whole group) when dropped.
struct Chromium(std::process::Child);

impl Chromium {
    fn open(chromium: &str, profile: &Path, url: &str) -> Chromium {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(profile.with_extension("log")).unwrap();
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        Chromium(child)
    }

    fn close(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        for _ in 0..50 {
            if self.0.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.close();
    }
}

/// Point `current` at an existing release, as `cap deploy:rollback` does.
fn point_current(b: &Baton, release: &str) {
    let tmp = b.dir.path().join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(b.dir.path().join("releases").join(release), &tmp).unwrap();
    std::fs::rename(&tmp, b.dir.path().join("current")).unwrap();
}

fn deploy(b: &mut Baton, hash: &str) {
    let files = release(hash);
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    b.deploy_files(&refs);
}

/// Wait until `n` loads have been reported after `since`.
fn wait_loads(loads: &Mutex<Vec<Load>>, since: Instant, n: usize, context: impl Fn() -> String) {
    let start = Instant::now();
    while loads
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.at > since)
        .count()
        < n
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fewer than {n} page loads reported in 30 s\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The resources a load fetched, by path: the browser lists them by start time, and two
/// fetches begun in the same millisecond come in either order (Chromium 156 sometimes lists
/// the script first), which says nothing about whether baton served them.
fn sorted_resources(report: &Value) -> Value {
    let mut resources = report["resources"].as_array().cloned().unwrap_or_default();
    resources.sort_by_key(|a| a.to_string());
    Value::Array(resources)
}

#[test]
fn chromium_gets_every_asset_of_both_releases_through_rolls_r1_r2_r1() {
    let chromium = debian_tool("chromium", "chromium");
    let _serial = serial();
    let scratch = tempfile::tempdir().unwrap();
    let access = scratch.path().join("access.log");
    let extra = format!(
        "[static]\ndirectory = \"public\"\nprefixes = [\"/assets\"]\nimmutable = \"^$\"\n\n\
         [log]\naccess = \"{}\"\nformat = \"json\"\n",
        access.display()
    );
    let command = format!(r#"["{BATON}", "demo-app", "--port", "{{port}}"]"#);
    let mut b = Baton::start_command(2, &command, &extra, true, |b| deploy(b, R1));
    // A generation's files are served once one of its workers is ready.
    std::thread::sleep(Duration::from_millis(700));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let report_port = listener.local_addr().unwrap().port();
    let loads = Arc::new(Mutex::new(Vec::<Load>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let _listening = listen_reports(listener, loads.clone(), stop.clone());
    let profile = scratch.path().join("profile");
    let mut browser = Chromium::open(
        &chromium,
        &profile,
        &b.url(&format!("/assets/driver.html?report={report_port}")),
    );
    let context = |b: &Baton| {
        format!(
            "chromium:\n{}\nbaton log:\n{}",
            std::fs::read_to_string(profile.with_extension("log")).unwrap_or_default(),
            b.log()
        )
    };

    // Steady on r1, then roll to r2, then back to r1 (`current` pointed at r1 again), each
    // roll while Chromium loads the page.
    let begin = Instant::now();
    wait_loads(&loads, begin, 10, || context(&b));
    let mut rolls = Vec::new();
    for (to, hash) in [("r2", R2), ("r1", R1)] {
        if to == "r2" {
            deploy(&mut b, R2);
        } else {
            point_current(&b, to);
        }
        let started = Instant::now();
        let out = b.cli(&["restart", "--wait"]);
        let ended = Instant::now();
        assert!(
            out.status.success(),
            "restart to {to}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            context(&b)
        );
        rolls.push((to, hash, started, ended));
        wait_loads(&loads, ended, 10, || context(&b));
    }
    stop.store(true, Ordering::SeqCst);
    let stopped = Instant::now();
    wait_loads(&loads, stopped, 1, || context(&b));
    browser.close();
    let elapsed = begin.elapsed();

    let loads = loads.lock().unwrap();
    let hash_of = |release: &str| match release {
        "release r1" => Some(R1),
        "release r2" => Some(R2),
        _ => None,
    };
    // Every load: a page of r1 or r2, its own release's stylesheet applied and script run.
    let mut failed = Vec::new();
    for load in loads.iter() {
        let r = &load.report;
        let release = r["release"].as_str().unwrap_or("");
        let ok = hash_of(release).is_some_and(|hash| {
            r["stylesheet"] == format!("app-{hash}")
                && r["script"] == format!("app-{hash}.js ran")
                && r["assets"]
                    == serde_json::json!([
                        format!("/assets/app-{hash}.css"),
                        format!("/assets/app-{hash}.js")
                    ])
                && sorted_resources(r)
                    == serde_json::json!([
                        [format!("/assets/app-{hash}.css"), 200],
                        [format!("/assets/app-{hash}.js"), 200]
                    ])
        });
        if !ok {
            failed.push(r.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} page loads missed an asset (or the page):\n{}\n{}",
        failed.len(),
        loads.len(),
        failed.join("\n"),
        context(&b)
    );
    // Each roll was watched while both releases served: a page of the old release came after
    // one of the new release.
    for (i, (to, new, started, ended)) in rolls.iter().enumerate() {
        let during: Vec<&str> = loads
            .iter()
            .filter(|l| l.at >= *started && l.at <= *ended)
            .filter_map(|l| hash_of(l.report["release"].as_str().unwrap_or("")))
            .collect();
        let old = if i == 0 { R1 } else { R2 };
        let first_new = during.iter().position(|h| h == new);
        assert!(
            first_new.is_some_and(|n| during[n..].contains(&old)),
            "no page of the old release (app-{old}) after one of the new (app-{new}) during \
             the roll to {to} ({:?}): {during:?}",
            *ended - *started
        );
    }
    let last = loads.last().unwrap();
    assert_eq!(last.report["release"], "release r1");

    // No worker saw an asset request; baton answered every one, and each load asked for both.
    assert!(
        !b.log().contains("reached the worker"),
        "an asset request reached a worker:\n{}",
        b.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(&access).unwrap();
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let target = |e: &Value| e["target"].as_str().unwrap_or("").to_owned();
    let pages = entries
        .iter()
        .filter(|e| target(e).starts_with("/shop"))
        .count();
    let mut assets = 0;
    for e in entries
        .iter()
        .filter(|e| target(e).starts_with("/assets/app-"))
    {
        assets += 1;
        assert!(
            e["worker"].is_null() && matches!(e["status"].as_u64(), Some(200 | 304)),
            "an asset not answered by baton from its files: {e}"
        );
    }
    assert!(
        pages >= loads.len() && assets >= 2 * loads.len(),
        "{} loads reported, {pages} pages and {assets} assets in the access log",
        loads.len()
    );
    eprintln!(
        "{} page loads in {elapsed:?} ({assets} asset requests, all baton's); rolls took {:?}",
        loads.len(),
        rolls.iter().map(|r| r.3 - r.2).collect::<Vec<_>>()
    );
}
