//! baton under a real systemd 252, booted in a container, installed from its own .deb and
//! driven with `systemctl` and `journalctl` the way an operator does; the load comes from the
//! host (the container shares its network).
//!
//! Needs root and systemd-nspawn (tests/e2e/container.sh installs it). Where the machine cannot
//! run it the test says so loudly and passes; with BATON_E2E_REQUIRED=1 (set by .ci/run) it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/container.sh");
const APP: &str = "demo";
const WORKERS: usize = 4;

struct Container {
    name: String,
}

impl Container {
    fn boot(name: &str) -> Container {
        let _ = Command::new(SCRIPT).args(["stop", name]).output();
        let out = Command::new(SCRIPT).args(["boot", name]).output().unwrap();
        assert!(
            out.status.success(),
            "boot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Container { name: name.into() }
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new(SCRIPT)
            .args(["exec", &self.name, "--"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Run a shell line inside; panics with its output when it fails.
    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "`{script}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn copy_in(&self, host: &Path, path: &str) {
        let out = Command::new(SCRIPT)
            .args(["copy-in", &self.name])
            .arg(host)
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Write `text` to `path` inside, as an operator's editor would.
    fn write(&self, path: &str, text: &str) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), text).unwrap();
        self.copy_in(tmp.path(), path);
    }

    fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl --no-pager -u {unit}"))
    }

    /// Worker units that are loaded and not inactive, by name.
    fn worker_units(&self) -> BTreeSet<String> {
        let out = self.exec(&[
            "systemctl",
            "list-units",
            "--no-legend",
            "--plain",
            "--all",
            &format!("baton-{APP}-w*.service"),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[2] != "inactive" && f[2] != "failed").then(|| f[0].to_owned())
            })
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).args(["stop", &self.name]).output();
    }
}

/// Sample the number of live worker units while something happens.
struct UnitSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<usize>,
}

impl UnitSampler {
    fn start(name: &str) -> UnitSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let c = Container { name: name.into() };
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::SeqCst) {
                peak = peak.max(c.worker_units().len());
                std::thread::sleep(Duration::from_millis(50));
            }
            std::mem::forget(c); // not ours to stop
            peak
        });
        UnitSampler { stop, handle }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

fn can_run() -> bool {
    common::e2e::can_run("systemd")
}

/// Build the .deb with `packaging/dist.sh` (or take BATON_E2E_DEB) at the given version.
fn build_deb(version: &str) -> PathBuf {
    if version == "default"
        && let Some(p) = std::env::var_os("BATON_E2E_DEB")
    {
        return PathBuf::from(p);
    }
    common::e2e::dist(common::e2e::Package::Deb, version)
}

/// Build the .rpm with `packaging/dist.sh` at the given version ("default": Cargo.toml's).
fn build_rpm(version: &str) -> PathBuf {
    common::e2e::dist(common::e2e::Package::Rpm, version)
}

fn config(port: u16) -> String {
    format!(
        r#"name = "{APP}"
[app]
command = ["/usr/bin/baton", "demo-app", "--port", "{{port}}", "--boot-time", "2s"]
directory = "/srv/{APP}/current"
[workers]
count = {WORKERS}
concurrency = 0
[readiness]
http_path = "/"
timeout = "8s"
# A short canary keeps the test's rolls quick; the judge is the same.
[canary]
duration = "3s"
[spawner]
backend = "systemd"
memory_max = "512MiB"
cpu_quota = "150%"
no_new_privileges = true
protect_system = "full"
# listen address for runs outside systemd; under systemd the socket unit's {port} is used
[listen]
address = "127.0.0.1:{port}"
"#
    )
}

/// The app's config in /etc/baton and the socket's address in a drop-in, as an operator writes
/// them after installing a package (`tmp`: where the files are made before they go in; its
/// demo.toml is the config, for a test that puts it back later).
fn configure_app(c: &Container, port: u16, tmp: &Path) {
    std::fs::write(tmp.join("demo.toml"), config(port)).unwrap();
    std::fs::write(
        tmp.join("listen.conf"),
        format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"),
    )
    .unwrap();
    c.copy_in(&tmp.join("demo.toml"), &format!("/etc/baton/{APP}.toml"));
    c.sh(&format!(
        "mkdir -p /etc/systemd/system/baton@{APP}.socket.d"
    ));
    c.copy_in(
        &tmp.join("listen.conf"),
        &format!("/etc/systemd/system/baton@{APP}.socket.d/listen.conf"),
    );
}

fn deploy(c: &Container, release: &str, mode: Option<&str>) {
    let dir = format!("/srv/{APP}/releases/{release}");
    let mode = mode
        .map(|m| format!("echo {m} > {dir}/demo-mode && "))
        .unwrap_or_default();
    c.sh(&format!(
        "mkdir -p {dir} && {mode}ln -sfn {dir} /srv/{APP}/current.new && mv -T /srv/{APP}/current.new /srv/{APP}/current"
    ));
}

fn assert_clean(report: &LoadReport, what: &str, c: &Container) {
    assert_eq!(
        report.failed,
        0,
        "{what}: failed requests {:?}\njournal:\n{}",
        report.errors,
        c.journal(&format!("baton@{APP}.service"))
    );
    assert!(report.ok > 200, "{what}: too little load: {report:?}");
}

#[test]
fn baton_under_systemd_from_its_deb() {
    if !can_run() {
        return;
    }
    let _serial = serial();
    let deb = build_deb("default");
    let c = Container::boot("baton-e2e");
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let unit = format!("baton@{APP}.service");

    // Install as an operator does: the package, a config, the socket's address.
    c.copy_in(&deb, "/tmp/baton.deb");
    c.sh("dpkg -i /tmp/baton.deb");
    // The installed units as systemd itself reads them: no finding at all, and a sandbox whose
    // exposure systemd rates below 5 ("OK"); the scores are printed for the record.
    let units = [
        format!("baton@{APP}.service"),
        format!("baton@{APP}.socket"),
        format!("baton-restart@{APP}.path"),
        format!("baton-restart@{APP}.service"),
    ];
    let verify = c.exec(
        &[
            &["systemd-analyze", "verify", "--man=no"][..],
            &units.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    let said = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    for u in [&units[0], &units[3]] {
        let report = c.sh(&format!("systemd-analyze security {u}"));
        let overall = report
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no score for {u}: {report}"));
        eprintln!("systemd-analyze security: {}", overall.trim());
        let score: f64 = overall
            .split(':')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unreadable score: {overall}"));
        assert!(score < 5.0, "{u} is exposed: {overall}");
    }
    // The config file's man page, made from docs/config.md, as an operator reads it.
    let page = c.sh("MANWIDTH=100 man -P cat baton.toml 2>&1");
    assert!(
        page.contains("BATON.TOML(5)")
            && page.contains("[LISTEN]")
            && page.contains("shutdown_delay"),
        "man baton.toml:\n{page}"
    );
    assert!(c.sh("man -w baton-restart").contains("baton-restart.1"));
    let tmp = tempfile::tempdir().unwrap();
    configure_app(&c, port, tmp.path());
    // A watchdog that kills baton unless it pings (WATCHDOG=1) every 3 s, all test long.
    std::fs::write(
        tmp.path().join("watchdog.conf"),
        "[Service]\nWatchdogSec=3s\n",
    )
    .unwrap();
    c.sh(&format!(
        "mkdir -p /etc/systemd/system/baton@{APP}.service.d"
    ));
    c.copy_in(
        &tmp.path().join("watchdog.conf"),
        &format!("/etc/systemd/system/baton@{APP}.service.d/watchdog.conf"),
    );
    deploy(&c, "r1", None);
    c.sh("systemctl daemon-reload");
    c.sh(&format!("systemctl start baton@{APP}.socket"));
    assert_eq!(
        c.exec(&["systemctl", "is-active", &unit]).stdout,
        b"inactive\n",
        "socket activation: the service waits for the first connection"
    );

    // The first request starts the service; each worker is its own unit, cgroup and journal.
    let (status, body) = get(&format!("http://{addr}/"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from release r1"), "{body}");
    // The first ready worker answered; the others are ready moments later.
    let mut status_text = String::new();
    for _ in 0..100 {
        status_text = c.sh(&format!("systemctl show -p StatusText --value {unit}"));
        if status_text.contains("4/4 workers ready, generation 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        status_text.contains("4/4 workers ready, generation 1"),
        "{status_text}\n{}",
        c.journal(&unit)
    );
    let first = c.worker_units();
    assert_eq!(first.len(), WORKERS, "{first:?}");
    for u in &first {
        let props = c.sh(&format!(
            "systemctl show -p MemoryMax -p CPUQuotaPerSecUSec -p NoNewPrivileges -p ProtectSystem -p Slice -p CollectMode -p CPUWeight {u}"
        ));
        for want in [
            "MemoryMax=536870912",
            "CPUQuotaPerSecUSec=1.500000s",
            "NoNewPrivileges=yes",
            "ProtectSystem=full",
            "CollectMode=inactive-or-failed",
            // Booted at CPUWeight=20 (boot_cpu_weight = "low"), raised once ready.
            "CPUWeight=100",
        ] {
            assert!(props.contains(want), "{u}: {want} not in\n{props}");
        }
        let cgroup = c.sh(&format!("systemctl show -p ControlGroup --value {u}"));
        assert_eq!(cgroup.trim(), format!("/baton.slice/baton-{APP}.slice/{u}"));
        assert!(
            c.journal(u)
                .contains("demo-app: release \"r1\" listening on"),
            "journal of {u}"
        );
    }

    // 1. A rolling reload under load: zero failed requests, every worker unit new.
    deploy(&c, "r2", None);
    let load = Load::start(addr, 16, "/", Duration::from_secs(20));
    let sampler = UnitSampler::start(&c.name);
    std::thread::sleep(Duration::from_millis(500));
    let reload = c.exec(&["systemctl", "reload", &unit]);
    let peak = sampler.stop();
    let report = load.stop();
    assert!(
        reload.status.success(),
        "reload failed: {}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert_clean(&report, "rolling reload", &c);
    let second = c.worker_units();
    assert_eq!(second.len(), WORKERS);
    assert!(
        second.is_disjoint(&first),
        "every worker unit is new: {first:?} -> {second:?}"
    );
    assert!(
        peak <= WORKERS + 1,
        "{peak} worker units at once; at most {} allowed",
        WORKERS + 1
    );
    assert!(get(&format!("http://{addr}/")).1.contains("release r2"));

    // 2. A broken release: the reload fails, nobody notices, systemd and the journal say why.
    deploy(&c, "bad", Some("exit"));
    let load = Load::start(addr, 16, "/", Duration::from_secs(20));
    let reload = c.exec(&["systemctl", "reload", &unit]);
    let report = load.stop();
    assert!(
        !reload.status.success(),
        "a reload onto a broken release must fail"
    );
    assert_clean(&report, "broken reload", &c);
    assert_eq!(c.worker_units(), second, "the old workers keep serving");
    let status = c.exec(&["systemctl", "status", "--no-pager", &unit]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("Status: \"RESISTING DEPLOYMENT ERROR since ")
            && status.contains("exited with status 1"),
        "{status}"
    );
    let failures = c.sh("journalctl --no-pager MESSAGE_ID=7d1b3a9e2c5f4e8a9b0c6d2e4f1a3b5c");
    assert!(
        failures.contains("exited with status 1 before it was ready"),
        "{failures}"
    );
    let resisting = c.sh("journalctl --no-pager MESSAGE_ID=a3f04c2b8e1d4d6f9c7b5e2a1d0c8f36");
    assert!(
        resisting.contains("resisting deployment error"),
        "{resisting}"
    );
    let explained = c.sh("journalctl --no-pager -x MESSAGE_ID=a3f04c2b8e1d4d6f9c7b5e2a1d0c8f36");
    assert!(
        explained.len() > resisting.len(),
        "the catalog explains the entry (journalctl -x)"
    );
    let baton_status = c.sh(&format!("baton status --config /etc/baton/{APP}.toml"));
    assert!(
        baton_status.contains("Resisting deployment error: worker "),
        "{baton_status}"
    );

    // A good release recovers fully.
    deploy(&c, "r3", None);
    let reload = c.exec(&["systemctl", "reload", &unit]);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    let third = c.worker_units();
    assert!(third.is_disjoint(&second) && third.len() == WORKERS);
    assert!(
        c.sh(&format!("systemctl show -p StatusText --value {unit}"))
            .contains("4/4 workers ready")
    );

    // 2b. A release that answers, then dies 0.4 s later: resisted, never listed ready dead.
    deploy(&c, "crashy", Some("crash 400ms"));
    let load = Load::start(addr, 16, "/", Duration::from_secs(20));
    let reload = c.exec(&["systemctl", "reload", &unit]);
    let report = load.stop();
    assert!(
        !reload.status.success(),
        "a release that dies is never a success"
    );
    assert_clean(
        &report,
        "reload onto a release that dies after answering",
        &c,
    );
    assert_eq!(c.worker_units(), third, "the old workers keep serving");
    let snap = c.sh(&format!(
        "baton status --json --config /etc/baton/{APP}.toml"
    ));
    let snap: baton::status::Snapshot = serde_json::from_str(&snap).unwrap();
    assert!(
        snap.resisting_deployment_error
            .as_ref()
            .is_some_and(|r| r.reason.contains("after it became ready")),
        "{snap:#?}"
    );
    assert!(
        snap.workers
            .iter()
            .all(|w| w.state == "ready" && w.generation < snap.generation + 2)
    );

    // 2b'. A release that boots and answers its probe but fails a tenth of its visitors (a
    // database configuration error, from 1.5 s after it listens: after its readiness probe,
    // within the canary's 3 s from its first request): the canary judge stops it, the reload
    // fails, the old workers keep serving.
    deploy(&c, "dberror", Some("errors 10% after 1500ms"));
    let load = Load::start(addr, 16, "/", Duration::from_secs(20));
    let reload = c.exec(&["systemctl", "reload", &unit]);
    let report = load.stop();
    println!(
        "a release failing 10 % of its requests under systemd: {} of {} requests failed",
        report.failed,
        report.ok + report.failed
    );
    assert!(
        !reload.status.success(),
        "a release that fails its visitors is not rolled out"
    );
    assert!(
        (report.failed as f64) < 0.02 * (report.ok + report.failed) as f64,
        "{report:?}"
    );
    assert_eq!(c.worker_units(), third, "the old workers keep serving");
    let rejected = c.sh(&format!(
        "journalctl -u baton@{APP}.service MESSAGE_ID=4b9d2e7f1a6c4c3e8f0a5d7b2c9e1f64 -o cat"
    ));
    assert!(
        rejected.contains("rejecting generation") && rejected.contains("canary judge"),
        "{rejected}"
    );
    assert!(
        c.sh(&format!("systemctl show -p StatusText --value {unit}"))
            .contains("RESISTING DEPLOYMENT ERROR"),
    );

    // 2c. gunicorn (Debian's), the most common Python deployment, with the default readiness:
    // the edited config is applied by the reload itself.
    let gunicorn_config = config(port)
        .replace(
            r#"command = ["/usr/bin/baton", "demo-app", "--port", "{port}", "--boot-time", "2s"]"#,
            r#"command = ["gunicorn", "--bind", "127.0.0.1:{port}", "--workers", "1", "app:app"]"#,
        )
        .replace("http_path = \"/\"\n", "");
    assert!(gunicorn_config.contains("gunicorn") && !gunicorn_config.contains("http_path"));
    std::fs::write(tmp.path().join("gunicorn.toml"), &gunicorn_config).unwrap();
    c.copy_in(
        &tmp.path().join("gunicorn.toml"),
        &format!("/etc/baton/{APP}.toml"),
    );
    let app_py = "import os\ndef app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [('hello from release ' + os.path.basename(os.getcwd()) + ' (gunicorn)\\n').encode()]\n";
    deploy(&c, "py1", None);
    std::fs::write(tmp.path().join("app.py"), app_py).unwrap();
    c.copy_in(
        &tmp.path().join("app.py"),
        &format!("/srv/{APP}/releases/py1/app.py"),
    );
    let load = Load::start(addr, 16, "/", Duration::from_secs(20));
    let reload = c.exec(&["systemctl", "reload", &unit]);
    let report = load.stop();
    assert!(
        reload.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&reload.stderr),
        c.journal(&unit)
    );
    assert_clean(&report, "reload to gunicorn with an edited config", &c);
    assert!(
        get(&format!("http://{addr}/"))
            .1
            .contains("release py1 (gunicorn)")
    );
    let python = c.worker_units();
    // A syntax error: gunicorn binds, fails to import, exits 3. Resisted, nobody notices.
    deploy(&c, "py-broken", None);
    std::fs::write(
        tmp.path().join("broken.py"),
        "def app(environ, start_response)\n",
    )
    .unwrap();
    c.copy_in(
        &tmp.path().join("broken.py"),
        &format!("/srv/{APP}/releases/py-broken/app.py"),
    );
    let load = Load::start(addr, 16, "/", Duration::from_secs(20));
    let reload = c.exec(&["systemctl", "reload", &unit]);
    let report = load.stop();
    assert!(
        !reload.status.success(),
        "a gunicorn release with a syntax error is resisted"
    );
    assert_clean(&report, "reload onto a gunicorn syntax error", &c);
    assert_eq!(c.worker_units(), python);
    assert!(
        get(&format!("http://{addr}/"))
            .1
            .contains("release py1 (gunicorn)")
    );
    // A broken config: the reload fails with the file's error and changes nothing.
    let mut broken = gunicorn_config.clone();
    broken.push_str("[restart]\nmax_surge = \"lots\"\n");
    std::fs::write(tmp.path().join("broken.toml"), broken).unwrap();
    c.copy_in(
        &tmp.path().join("broken.toml"),
        &format!("/etc/baton/{APP}.toml"),
    );
    let reload = c.exec(&["systemctl", "reload", &unit]);
    assert!(!reload.status.success());
    assert!(
        c.journal(&unit).contains("restart.max_surge"),
        "the journal names the bad key"
    );
    assert_eq!(c.worker_units(), python, "nothing changed");
    assert_eq!(
        c.sh(&format!("systemctl is-active {unit}")).trim(),
        "active"
    );
    // Back to the demo app for the rest.
    c.copy_in(
        &tmp.path().join("demo.toml"),
        &format!("/etc/baton/{APP}.toml"),
    );
    deploy(&c, "r3", None);
    let reload = c.exec(&["systemctl", "reload", &unit]);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    let third = c.worker_units();
    assert!(get(&format!("http://{addr}/")).1.contains("release r3"));

    // 3. `systemctl restart` of baton under load: no connection refused, the workers untouched.
    let load = Load::start_resending(addr, 16, "/", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    c.sh(&format!("systemctl restart {unit}"));
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert_clean(&report, "restart of baton", &c);
    assert_eq!(
        c.worker_units(),
        third,
        "the worker units survive a restart of baton"
    );
    assert!(
        c.journal(&unit)
            .contains(&format!("adopted {WORKERS} running workers"))
    );

    // Passenger's restart.txt, the systemd way: touching the file reloads the app.
    c.sh(&format!("systemctl start baton-restart@{APP}.path"));
    c.sh(&format!("touch /srv/{APP}/restart.txt"));
    let mut rolled = false;
    for _ in 0..100 {
        let line = c.sh(&format!("systemctl show -p StatusText --value {unit}"));
        if line.contains("4/4 workers ready, generation") && c.worker_units().is_disjoint(&third) {
            rolled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        rolled,
        "touching restart.txt rolled the workers\n{}",
        c.journal(&unit)
    );
    c.sh(&format!("systemctl stop baton-restart@{APP}.path"));

    // `baton unit NAME --install` for operators who prefer NAME.service to baton@NAME.
    c.sh("baton unit shop --install && systemctl daemon-reload");
    let reload = c.sh("systemctl show -p ExecReload --value shop.service");
    assert!(
        reload.contains("/usr/bin/baton restart --wait --config /etc/baton/shop.toml"),
        "{reload}"
    );
    assert!(
        c.sh("systemctl show -p Requires --value shop.service")
            .contains("shop.socket")
    );

    // 4. An upgrade to a newer package under load: no failed request, the socket never closes.
    let socket_since = c.sh(&format!(
        "systemctl show -p ActiveEnterTimestampMonotonic --value baton@{APP}.socket"
    ));
    let newer = build_deb("99.0.0");
    c.copy_in(&newer, "/tmp/baton-new.deb");
    let load = Load::start_resending(addr, 16, "/", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    c.sh("dpkg -i /tmp/baton-new.deb");
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert_clean(&report, "package upgrade", &c);
    assert!(
        c.sh("dpkg-query -W -f '${Version}' baton")
            .starts_with("99.0.0")
    );
    assert_eq!(
        c.sh(&format!(
            "systemctl show -p ActiveEnterTimestampMonotonic --value baton@{APP}.socket"
        )),
        socket_since,
        "the listening socket was never restarted"
    );
    assert_eq!(
        c.sh(&format!("systemctl is-active {unit}")).trim(),
        "active"
    );

    // The watchdog never fired: baton pinged it all along.
    assert!(
        !c.journal(&unit).contains("Watchdog timeout"),
        "{}",
        c.journal(&unit)
    );
    assert_eq!(
        c.sh(&format!("systemctl show -p NRestarts --value {unit}"))
            .trim(),
        "0"
    );

    // 5. Stop: no worker unit left.
    c.sh(&format!("systemctl stop baton@{APP}.socket {unit}"));
    assert!(c.worker_units().is_empty(), "{:?}", c.worker_units());

    // 6. Remove and purge leave nothing running.
    c.sh(&format!(
        "systemctl start baton@{APP}.socket && systemctl start {unit}"
    ));
    assert_eq!(c.worker_units().len(), WORKERS);
    c.sh("dpkg --purge baton");
    assert!(c.worker_units().is_empty());
    // (Empty slices may stay loaded; they hold no process.)
    let left = c.sh(
        "systemctl list-units --no-legend --plain 'baton*.service' 'baton*.socket' 'baton*.path'",
    );
    assert!(left.trim().is_empty(), "units left after purge: {left}");
}

/// `systemd --user`: baton as a user service talks to the session bus and its workers are
/// transient units of the user manager.
#[test]
fn baton_under_a_user_manager() {
    if !can_run() {
        return;
    }
    let _serial = serial();
    let c = Container::boot("baton-e2e-user");
    let port = free_port();
    c.copy_in(Path::new(BATON), "/usr/bin/baton");
    c.sh("useradd -m app && loginctl enable-linger app");
    c.sh("mkdir -p /home/app/.config/systemd/user");
    c.write(
        "/home/app/udemo.toml",
        &format!(
            "name = \"udemo\"\n[listen]\naddress = \"127.0.0.1:{port}\"\n[app]\ncommand = [\"/usr/bin/baton\", \"demo-app\", \"--port\", \"{{port}}\", \"--boot-time\", \"200ms\"]\n[workers]\ncount = 2\n[spawner]\nbackend = \"systemd\"\n"
        ),
    );
    c.write(
        "/home/app/.config/systemd/user/udemo.service",
        "[Service]\nType=notify\nExecStart=/usr/bin/baton run --config /home/app/udemo.toml\nExecReload=/usr/bin/baton restart --wait --config /home/app/udemo.toml\nRuntimeDirectory=baton/udemo\n",
    );
    c.sh("chown -R app:app /home/app");
    // The user manager starts with the linger; wait for its bus.
    let mut up = false;
    for _ in 0..50 {
        if c.exec(&["systemctl", "--user", "-M", "app@", "is-system-running"])
            .status
            .code()
            != Some(1)
        {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(up, "the user manager of app did not come up");
    let user = |cmd: &str| c.sh(&format!("systemctl --user -M app@ {cmd}"));
    user("daemon-reload");
    user("start udemo.service");
    assert!(
        user("show -p StatusText --value udemo.service")
            .contains("2/2 workers ready, generation 1")
    );
    let units = user("list-units --no-legend --plain 'baton-udemo-w*'");
    assert_eq!(units.lines().count(), 2, "{units}");
    assert!(units.contains("baton-udemo-w1.service"), "{units}");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).0, 200);
    user("reload udemo.service");
    let units = user("list-units --no-legend --plain 'baton-udemo-w*'");
    assert!(
        units.contains("generation 2") && units.lines().count() == 2,
        "{units}"
    );
    user("stop udemo.service");
    // Stopping the service leaves no worker unit behind.
    assert!(
        user("list-units --no-legend --plain 'baton-udemo-w*'")
            .trim()
            .is_empty()
    );
}

/// `[log] access = "journal"` under a real journald: each request is an entry of the
/// service's own, with the fields docs/config.md promises an operator filters on
/// (`journalctl -u NAME STATUS=200 REQUEST_ID=...`).
#[test]
fn the_access_log_in_the_journal() {
    if !can_run() {
        return;
    }
    let _serial = serial();
    let c = Container::boot("baton-e2e-journal");
    let port = free_port();
    c.copy_in(Path::new(BATON), "/usr/bin/baton");
    c.write(
        "/etc/jdemo.toml",
        &format!(
            "name = \"jdemo\"\n[listen]\naddress = \"127.0.0.1:{port}\"\n[app]\ncommand = [\"/usr/bin/baton\", \"demo-app\", \"--port\", \"{{port}}\", \"--boot-time\", \"200ms\"]\n[workers]\ncount = 1\n[spawner]\nbackend = \"process\"\n[log]\naccess = \"journal\"\n"
        ),
    );
    c.write(
        "/etc/systemd/system/jdemo.service",
        "[Service]\nType=notify\nExecStart=/usr/bin/baton run --config /etc/jdemo.toml\n",
    );
    c.sh("systemctl daemon-reload && systemctl start jdemo.service");
    // One request with its own id, one given baton's.
    for id in [Some("e2e-journal-42"), None] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let extra = id.map_or(String::new(), |id| format!("X-Request-Id: {id}\r\n"));
        std::io::Write::write_all(
            &mut s,
            format!("GET /journal-test HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: e2e\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // The writer takes entries every 20 ms; journald indexes them a moment later.
    let mut entries = String::new();
    for _ in 0..50 {
        entries = c.sh(
            "journalctl --no-pager -u jdemo.service SYSLOG_IDENTIFIER=baton STATUS=200 -o json",
        );
        if entries.contains("/journal-test") && entries.matches("/journal-test").count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines: Vec<serde_json::Value> = entries
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("/journal-test"))
        })
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "two access entries in the journal: {entries}"
    );
    let own = &lines[0];
    assert_eq!(own["REQUEST_ID"], "e2e-journal-42", "{own}");
    assert_eq!(own["STATUS"], "200", "{own}");
    assert_eq!(own["GENERATION"], "1", "{own}");
    assert!(own["WORKER"].as_str().is_some(), "{own}");
    let message = own["MESSAGE"].as_str().unwrap();
    assert!(
        message.contains("\"GET /journal-test HTTP/1.1\" 200")
            && message.contains("\"e2e\"")
            && message.ends_with(" e2e-journal-42"),
        "{message}"
    );
    // baton's own id: 32 hex digits, the same in the field and the line.
    let given = lines[1]["REQUEST_ID"].as_str().unwrap();
    assert!(
        given.len() == 32 && given.bytes().all(|b| b.is_ascii_hexdigit()),
        "{given}"
    );
    assert!(lines[1]["MESSAGE"].as_str().unwrap().ends_with(given));
    // journalctl finds the entry by the id, as docs/config.md says an operator does.
    let found = c.sh("journalctl --no-pager -u jdemo.service REQUEST_ID=e2e-journal-42 -o cat");
    assert_eq!(found.lines().count(), 1, "{found}");
    c.sh("systemctl stop jdemo.service");
}

/// The .rpm's scriptlets against a real systemd: Debian's `rpm` installs it (with `--nodeps`:
/// Debian's rpm database knows none of the packages it requires, systemd and glibc, which the
/// container has), systemd sees the units, an upgrade under load keeps the socket open and
/// fails no request, and an erase stops the service and leaves the operator's /etc/baton.
#[test]
fn the_rpm_under_systemd() {
    if !can_run() {
        return;
    }
    let _serial = serial();
    let rpm = build_rpm("default");
    let c = Container::boot("baton-e2e-rpm");
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let unit = format!("baton@{APP}.service");
    c.copy_in(&rpm, "/tmp/baton.rpm");
    c.sh("rpm -i --nodeps /tmp/baton.rpm");
    let files = c.sh("systemctl list-unit-files --no-legend 'baton*'");
    for u in ["baton@.service", "baton@.socket", "baton-restart@.path"] {
        assert!(files.contains(u), "systemd does not see {u}: {files}");
    }
    assert!(c.sh("test -d /etc/baton && echo yes").contains("yes"));
    let tmp = tempfile::tempdir().unwrap();
    configure_app(&c, port, tmp.path());
    deploy(&c, "r1", None);
    c.sh(&format!(
        "systemctl daemon-reload && systemctl enable --now baton@{APP}.socket && systemctl start {unit}"
    ));
    let (status, body) = get(&format!("http://{addr}/"));
    assert_eq!(status, 200, "{body}");

    // An upgrade under load: the service restarts on the new binary, the socket never closes.
    let socket_since = c.sh(&format!(
        "systemctl show -p ActiveEnterTimestampMonotonic --value baton@{APP}.socket"
    ));
    let newer = build_rpm("99.0.0");
    c.copy_in(&newer, "/tmp/baton-new.rpm");
    let load = Load::start_resending(addr, 16, "/", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let said = c.sh("rpm -U --nodeps /tmp/baton-new.rpm 2>&1");
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert_clean(&report, "rpm upgrade", &c);
    assert!(
        said.contains(&format!("restarting {unit} on the new version")),
        "{said}"
    );
    assert!(c.sh("rpm -q baton").starts_with("baton-99.0.0"));
    assert_eq!(
        c.sh(&format!(
            "systemctl show -p ActiveEnterTimestampMonotonic --value baton@{APP}.socket"
        )),
        socket_since,
        "the listening socket was never restarted"
    );
    assert_eq!(
        c.sh(&format!("systemctl is-active {unit}")).trim(),
        "active"
    );
    eprintln!(
        "rpm upgrade under load: {} requests, {} failed",
        report.ok, report.failed
    );

    // Erase: the service and its socket stop, no worker is left, the config stays.
    c.sh("rpm -e --nodeps baton");
    for u in [unit.clone(), format!("baton@{APP}.socket")] {
        let state = c.exec(&["systemctl", "is-active", &u]);
        assert_ne!(
            String::from_utf8_lossy(&state.stdout).trim(),
            "active",
            "{u} still active"
        );
    }
    assert!(c.worker_units().is_empty(), "{:?}", c.worker_units());
    assert!(
        c.sh(&format!("cat /etc/baton/{APP}.toml"))
            .contains("[app]"),
        "the operator's config was removed"
    );
    assert!(c.exec(&["test", "-e", "/usr/bin/baton"]).status.code() == Some(1));
}

/// The certificate a new HTTPS client of 127.0.0.1:`port` gets (OpenSSL's `s_client`, no
/// session resumed), as its SHA-256 fingerprint; "" when the handshake fails.
fn served_fingerprint(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl s_client -connect 127.0.0.1:$1 -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256",
        )
        .arg("sh")
        .arg(port.to_string())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The SHA-256 fingerprint of a PEM certificate file, as `served_fingerprint` prints it.
fn fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// HTTPS from the packaged units, as README's "HTTPS and HTTP/2" sets it up: the
/// baton-https@APP.socket with its address in a drop-in, a drop-in of baton@APP.service that
/// makes it inherit that socket and gives it the certificate and key as systemd credentials
/// (`LoadCredential=`, read as `%d/...` by `[tls] certificates`). curl --http2 inside gets the
/// app's answer over h2; OpenSSL from the host shows which certificate a new client gets.
///
/// What systemd 252 does with credentials is pinned here: it copies them when the service
/// starts and never again, so a reload serves the certificate of the last start, and
/// `systemctl restart` (which refuses no connection: systemd holds both sockets and baton
/// adopts its workers) is what takes up replaced credential files. Certificates read from
/// paths are re-read by every reload: a replaced one is served to new connections at once, and
/// a broken one fails the reload while the one in force keeps serving.
#[test]
fn https_socket_and_certificates_under_systemd() {
    if !can_run() {
        return;
    }
    let _serial = serial();
    let deb = build_deb("default");
    let c = Container::boot("baton-e2e-https");
    let (port, https) = (free_port(), free_port());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let unit = format!("baton@{APP}.service");
    c.copy_in(&deb, "/tmp/baton.deb");
    c.sh("dpkg -i /tmp/baton.deb");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let certs: Vec<(PathBuf, PathBuf)> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| certificate(dir, n, &["localhost"], false))
        .collect();
    let fingerprints: Vec<String> = certs.iter().map(|(crt, _)| fingerprint(crt)).collect();
    // The app, its sockets, and the service's drop-in, written as an operator would.
    let app_config = |certificates: &str| {
        format!(
            r#"name = "{APP}"
[listen]
address = "127.0.0.1:{port}"
[app]
command = ["/usr/bin/baton", "demo-app", "--port", "{{port}}", "--boot-time", "200ms"]
directory = "/srv/{APP}/current"
[workers]
count = 2
concurrency = 0
[canary]
duration = "1s"
[spawner]
backend = "systemd"
[tls]
certificates = [{certificates}]
"#
        )
    };
    let files = [
        (
            "demo.toml",
            format!("/etc/baton/{APP}.toml"),
            app_config(r#"{ cert = "%d/site.crt", key = "%d/site.key" }"#),
        ),
        (
            "listen.conf",
            format!("/etc/systemd/system/baton@{APP}.socket.d/listen.conf"),
            format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"),
        ),
        (
            "https-listen.conf",
            format!("/etc/systemd/system/baton-https@{APP}.socket.d/listen.conf"),
            format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{https}\n"),
        ),
        (
            "https.conf",
            format!("/etc/systemd/system/baton@{APP}.service.d/https.conf"),
            format!(
                "[Unit]\nRequires=baton-https@{APP}.socket\nAfter=baton-https@{APP}.socket\n\
                 [Service]\nSockets=baton@{APP}.socket baton-https@{APP}.socket\n\
                 LoadCredential=site.crt:/etc/baton/tls/site.crt\n\
                 LoadCredential=site.key:/etc/baton/tls/site.key\n"
            ),
        ),
    ];
    c.sh(&format!(
        "mkdir -p /etc/baton/tls /etc/systemd/system/baton@{APP}.socket.d \
         /etc/systemd/system/baton-https@{APP}.socket.d /etc/systemd/system/baton@{APP}.service.d"
    ));
    for (name, path, text) in &files {
        std::fs::write(dir.join(name), text).unwrap();
        c.copy_in(&dir.join(name), path);
    }
    // Certificate files readable by root only; `which` names them in the container.
    let install = |which: usize, crt: &str, key: &str| {
        c.copy_in(&certs[which].0, &format!("/etc/baton/tls/{crt}"));
        c.copy_in(&certs[which].1, &format!("/etc/baton/tls/{key}"));
        c.sh(&format!(
            "chmod 0600 /etc/baton/tls/{crt} /etc/baton/tls/{key}"
        ));
    };
    install(0, "site.crt", "site.key");
    for (i, (crt, _)) in certs.iter().enumerate() {
        c.copy_in(crt, &format!("/root/{i}.crt"));
    }
    deploy(&c, "r1", None);
    c.sh("systemctl daemon-reload");
    // The units with the drop-ins, as systemd reads them: no finding.
    let verify = c.exec(&[
        "systemd-analyze",
        "verify",
        "--man=no",
        &unit,
        &format!("baton-https@{APP}.socket"),
    ]);
    let said = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    c.sh(&format!(
        "systemctl enable --now baton@{APP}.socket baton-https@{APP}.socket"
    ));
    // curl inside the container, HTTP/2 by ALPN over the HTTPS socket, trusting certificate
    // `ca` only: (the body, "CODE VERSION").
    let curl = |ca: usize, path: &str| {
        let out = c.sh(&format!(
            "curl -sS --max-time 30 --http2 --cacert /root/{ca}.crt \
             --resolve localhost:{https}:127.0.0.1 -w '\\n%{{http_code}} %{{http_version}}' \
             https://localhost:{https}{path}"
        ));
        let (body, tail) = out.rsplit_once('\n').unwrap();
        (body.to_owned(), tail.to_owned())
    };

    // 1. The first HTTPS connection starts the service (socket activation through the
    // https socket), which gets the app's answer to it over HTTP/2.
    assert_eq!(
        c.exec(&["systemctl", "is-active", &unit]).stdout,
        b"inactive\n"
    );
    let (body, tail) = curl(0, "/");
    assert_eq!(tail, "200 2", "{body}\n{}", c.journal(&unit));
    assert!(body.starts_with("hello from release r1"), "{body}");
    let (body, tail) = curl(0, "/headers");
    assert_eq!(tail, "200 2", "{body}");
    assert!(
        body.starts_with("GET /headers HTTP/1.1\n") && body.contains("x-forwarded-proto: https\n"),
        "{body}"
    );
    // The plain socket serves plain HTTP beside it.
    let (status, body) = get(&format!("http://{addr}/headers"));
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert_eq!(served_fingerprint(https), fingerprints[0]);
    let journal = c.journal(&unit);
    assert!(
        journal.contains("certificates in force: localhost (until ")
            && journal.contains(&format!("/run/credentials/{unit}/site.crt")),
        "the certificate in force, read from the credential, is logged:\n{journal}"
    );

    // 2. The credential files replaced (certificate b), then a reload: it succeeds, but
    // systemd 252 copied the credentials when the service started and does not copy them
    // again, so new clients still get certificate a.
    install(1, "site.crt", "site.key");
    let reload = c.exec(&["systemctl", "reload", &unit]);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert_eq!(
        served_fingerprint(https),
        fingerprints[0],
        "systemd refreshed the credentials on reload: README's HTTPS section can say so"
    );
    // A restart of baton takes them up, under load without a failed request: systemd
    // holds both sockets, and the workers are adopted.
    let workers = c.worker_units();
    let load = Load::start_resending(addr, 8, "/", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    c.sh(&format!("systemctl restart {unit}"));
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert_eq!(
        report.failed,
        0,
        "{:?}\n{}",
        report.errors,
        c.journal(&unit)
    );
    assert!(report.ok > 50, "too little load: {report:?}");
    assert_eq!(c.worker_units(), workers, "the workers were adopted");
    assert_eq!(served_fingerprint(https), fingerprints[1]);
    let (body, tail) = curl(1, "/");
    assert_eq!(tail, "200 2", "{body}");
    assert!(body.starts_with("hello from release r1"), "{body}");

    // 3. Certificates read from paths (root-only files: baton runs as root): the config now
    // names them, and the reload applies it (certificate c).
    install(2, "paths.crt", "paths.key");
    std::fs::write(
        dir.join("paths.toml"),
        app_config(r#"{ cert = "/etc/baton/tls/paths.crt", key = "/etc/baton/tls/paths.key" }"#),
    )
    .unwrap();
    c.copy_in(&dir.join("paths.toml"), &format!("/etc/baton/{APP}.toml"));
    deploy(&c, "r2", None);
    let reload = c.exec(&["systemctl", "reload", &unit]);
    assert!(
        reload.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&reload.stderr),
        c.journal(&unit)
    );
    assert_eq!(served_fingerprint(https), fingerprints[2]);
    let (body, tail) = curl(2, "/");
    assert_eq!(tail, "200 2", "{body}");
    assert!(body.starts_with("hello from release r2"), "{body}");
    // Renewed in place (certificate d), as certbot does: the next reload serves it.
    install(3, "paths.crt", "paths.key");
    let reload = c.exec(&["systemctl", "reload", &unit]);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert_eq!(served_fingerprint(https), fingerprints[3]);
    assert_eq!(curl(3, "/").1, "200 2");

    // 4. A broken renewal (the new certificate with the old key): the reload fails and says
    // why, the service stays up, new clients still get certificate d.
    c.copy_in(&certs[0].0, "/etc/baton/tls/paths.crt");
    let reload = c.exec(&["systemctl", "reload", &unit]);
    assert!(
        !reload.status.success(),
        "a reload onto a certificate that does not match its key must fail"
    );
    let journal = c.journal(&unit);
    assert!(
        journal.contains("a certificate cannot be used, nothing was changed"),
        "{journal}"
    );
    assert_eq!(
        c.sh(&format!("systemctl is-active {unit}")).trim(),
        "active"
    );
    assert_eq!(served_fingerprint(https), fingerprints[3]);
    let (body, tail) = curl(3, "/");
    assert_eq!(tail, "200 2", "{body}");
    assert!(body.starts_with("hello from release r2"), "{body}");
}
